"""2-D max / average / sum pooling on the vector engine.

Padding is explicit (legalize pads with -inf for max, 0 for avg and sum). "sum" is the
window sum: frontends scale it by a per-window divisor map where the divisor varies
(count_include_pad=False, ceil_mode), or chain it over axes (3-D pooling).

"argmax" gives max pooling's indices (int64): a second input holds each output's window
taps as flat input indices [OH, OW, kh*kw] (an int32 constant); per tile, m = reduce_max(win),
then reduce_min(where(win == m, taps, +big)): the first maximum in window order, as PyTorch.
Each tile loads one strided window view of the input, [n_t, c_t, oh_t, ow_t, kh, kw] with
strides [sN, sC, sh*sH, sw*sW, sH, sW], into a [n_t, c_t, oh_t, ow_t, kh*kw] scratchpad
tile (the DMA engine reads the window box once and expands it), then reduces the last
axis: reduce_max straight into the output tile, or reduce_sum and a multiply by 1/(kh*kw).
"""
from __future__ import annotations

import math

from vnpu.dtypes import DType
from vnpu.isa.instructions import HbmRef, SramRef, VecOp
from vnpu.isa.program import KernelLaunch
from vnpu.kernels.base import KernelContext, kernel, sub_ref
from vnpu.kernels.conv2d import _check_attrs, _elem_off, touched, window_traffic
from vnpu.kernels.stream import StreamTile, box_tiles, emit_streaming, tile_budget


@kernel("pool2d")
def pool2d_kernel(ctx: KernelContext) -> KernelLaunch:
    x, out = ctx.inputs[0], ctx.outputs[0]
    a = ctx.node.attrs
    kind = a["kind"]
    if kind == "argmax":
        return _argmax_pool(ctx)
    if kind not in ("max", "avg", "sum"):
        raise NotImplementedError(f"pool2d kind {kind!r}")
    sh, sw, dh, dw = _check_attrs(ctx)
    kh, kw = a["kernel"]
    khw = kh * kw
    n, c, oh, ow = out.shape
    sN, sC, sH, sW = x.strides
    per_elem = 2 * khw * x.dtype.itemsize + 2 * out.dtype.itemsize + (4 if kind != "max" else 0)
    tiles = []
    cache: dict[tuple, int] = {}
    for (n0, c0, h0, w0), (tn, tc, th, tw) in box_tiles((n, c, oh, ow), tile_budget(ctx, per_elem, out.numel)):
        win = HbmRef(_elem_off(x, (n0, c0, h0 * sh, w0 * sw)), x.dtype, (tn, tc, th, tw, kh, kw),
                     (sN, sC, sh * sH, sw * sW, dh * sH, dw * sW))
        rows = touched(h0, th, sh, kh, dh)
        cols = touched(w0, tw, sw, kw, dw)
        key = (tn, tc, tuple(r - rows[0] for r in rows), cols[-1] - cols[0])
        if key not in cache:
            cache[key] = window_traffic(ctx.chip, x, [(tn, sN), (tc, sC)], rows, cols)
        o_ref = HbmRef(_elem_off(out, (n0, c0, h0, w0)), out.dtype, (tn, tc, th, tw), out.strides)
        tiles.append(StreamTile([(win, (tn, tc, th, tw, khw))], o_ref, (tn, tc, th, tw), [cache[key]]))
    bufs: dict[str, SramRef] = {}

    def setup(b) -> None:
        if kind != "max":
            mx = max((t.out_shape for t in tiles), key=math.prod)
            bufs["sum"] = b.alloc(DType.fp32, mx + (1,))

    def compute(b, loaded: list[SramRef], out_t: SramRef, tile: StreamTile, waits: tuple, signal: int) -> None:
        shape = out_t.shape
        if kind == "max":
            b.emit(VecOp("reduce_max", sub_ref(out_t, shape + (1,)), (loaded[0],), waits=waits, signal=signal))
        else:
            s = sub_ref(bufs["sum"], shape + (1,))
            b.emit(VecOp("reduce_sum", s, (loaded[0],), waits=waits))
            b.emit(VecOp("mul", out_t, (sub_ref(s, shape), 1.0 / khw if kind == "avg" else 1.0), signal=signal))

    flops = out.numel * khw
    min_bytes = x.footprint_bytes() + out.numel * out.dtype.itemsize
    return emit_streaming(ctx, tiles, compute, setup, "pool", ["pool2d", kind], flops, min_bytes)


def _argmax_pool(ctx: KernelContext) -> KernelLaunch:
    x, taps, out = ctx.inputs[0], ctx.inputs[1], ctx.outputs[0]
    a = ctx.node.attrs
    sh, sw, dh, dw = _check_attrs(ctx)
    kh, kw = a["kernel"]
    khw = kh * kw
    n, c, oh, ow = out.shape
    sN, sC, sH, sW = x.strides
    tS = taps.strides
    per_elem = 2 * khw * x.dtype.itemsize + 2 * khw * 4 + 4 * khw + 4 + 2 * out.dtype.itemsize
    tiles = []
    cache: dict[tuple, int] = {}
    for (n0, c0, h0, w0), (tn, tc, th, tw) in box_tiles((n, c, oh, ow), tile_budget(ctx, per_elem, out.numel)):
        win = HbmRef(_elem_off(x, (n0, c0, h0 * sh, w0 * sw)), x.dtype, (tn, tc, th, tw, kh, kw),
                     (sN, sC, sh * sH, sw * sW, dh * sH, dw * sW))
        rows = touched(h0, th, sh, kh, dh)
        cols = touched(w0, tw, sw, kw, dw)
        key = (tn, tc, tuple(r - rows[0] for r in rows), cols[-1] - cols[0])
        if key not in cache:
            cache[key] = window_traffic(ctx.chip, x, [(tn, sN), (tc, sC)], rows, cols)
        t_ref = HbmRef(_elem_off(taps, (h0, w0, 0)), taps.dtype, (th, tw, khw), tS)
        o_ref = HbmRef(_elem_off(out, (n0, c0, h0, w0)), out.dtype, (tn, tc, th, tw), out.strides)
        tiles.append(StreamTile([(win, (tn, tc, th, tw, khw)), (t_ref, (1, 1, th, tw, khw))], o_ref, (tn, tc, th, tw),
                                [cache[key], -1]))
    bufs: dict[str, SramRef] = {}

    def setup(b) -> None:
        mx = max((t.out_shape for t in tiles), key=math.prod)
        bufs["m"] = b.alloc(DType.fp32, mx + (1,))
        bufs["sel"] = b.alloc(DType.fp32, mx + (khw,))

    def compute(b, loaded: list[SramRef], out_t: SramRef, tile: StreamTile, waits: tuple, signal: int) -> None:
        shape = out_t.shape
        m = sub_ref(bufs["m"], shape + (1,))
        sel = sub_ref(bufs["sel"], shape + (khw,))
        b.emit(VecOp("reduce_max", m, (loaded[0],), waits=waits))
        b.emit(VecOp("eq", sel, (loaded[0], m)))
        b.emit(VecOp("where", sel, (sel, loaded[1], float(2 ** 30))))
        b.emit(VecOp("reduce_min", m, (sel,)))
        b.emit(VecOp("cast", out_t, (sub_ref(m, shape),), signal=signal))

    flops = 4 * out.numel * khw
    min_bytes = x.footprint_bytes() + taps.footprint_bytes() + out.numel * out.dtype.itemsize
    return emit_streaming(ctx, tiles, compute, setup, "pool", ["pool2d", "argmax"], flops, min_bytes)
