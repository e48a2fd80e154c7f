"""LayerNorm over the trailing `axis_count` dims, fp32 inside, on the streaming pipeline.

Per tile of whole rows [P, D] (or [P, D, Q], see stream.row_layout):
    mean = sum(x) / D;  xc = x - mean;  var = sum(xc * xc) / D  (biased, as PyTorch);
    y = xc * rsqrt(var + eps) [* weight] [+ bias]
Weight and bias are loaded once per core (static loads) and broadcast over the rows.

Rows longer than the scratchpad holds take two passes over D chunks on one core: pass 1
folds each chunk's mean and centred sum of squares into running ones (Chan et al.'s
parallel variance update, stable unlike E[x^2] - mean^2); pass 2 normalizes each chunk,
loading the matching weight and bias chunks. RMSNorm's pass 1 only sums squares.
"""
from __future__ import annotations

from vnpu.dtypes import DType
from vnpu.isa.instructions import HbmRef, SramRef
from vnpu.isa.program import KernelLaunch
from vnpu.kernels.base import CoreBuilder, KernelContext, kernel, sub_ref
from vnpu.kernels.stream import (
    StreamTile, VecSeq, aligned, emit_streaming, plan_rows, row_layout, row_tiles, spread_elems, vector_flops,
)

F32 = DType.fp32


@kernel("layer_norm", "rms_norm")
def layer_norm_kernel(ctx: KernelContext) -> KernelLaunch:
    """LayerNorm, and RMSNorm (attrs rms: no centring: y = x * rsqrt(mean(x^2) + eps) [* w])."""
    x, out = ctx.inputs[0], ctx.outputs[0]
    a = ctx.node.attrs
    rms = bool(a.get("rms", False))
    n_ax = int(a["axis_count"])
    eps = float(a.get("eps", 1e-5))
    has_w, has_b = bool(a.get("has_weight", False)), bool(a.get("has_bias", False))
    rank = len(x.shape)
    axes = list(range(rank - n_ax, rank))
    params: list[HbmRef] = list(ctx.inputs[1:1 + has_w + has_b])
    # parameters vary only along the normalized dims
    refs = [(x, x.strides), (out, out.strides)] + [(p, (0,) * (rank - n_ax) + tuple(p.strides)) for p in params]
    lay = row_layout(x.shape, axes, refs, ctx.chip.hbm.burst_bytes)
    D = lay.R
    isz, osz = x.dtype.itemsize, out.dtype.itemsize
    psz = sum(p.dtype.itemsize for p in params)

    def need_chunked(p: int, r: int, q: int) -> int:
        n = p * r * q
        return (2 * aligned(n * isz) + 2 * sum(aligned(r * pp.dtype.itemsize) for pp in params)
                + 2 * aligned(n * osz) + 2 * aligned(4 * n) + 8 * aligned(4 * p * q) + 8 * 64)

    def need(p: int, r: int, q: int) -> int:
        if r < D:
            return need_chunked(p, r, q)
        n = p * r * q
        return (2 * aligned(n * isz) + aligned(r * psz) + len(params) * 64 + 2 * aligned(n * osz)
                + 2 * aligned(4 * n) + 8 * aligned(4 * p * q) + 8 * 64)

    cap = ctx.chip.core.scratchpad.bytes
    pc, rc, qc = plan_rows(lay, need, cap, spread_elems(ctx, x.numel), q_min=max(1, ctx.chip.hbm.burst_bytes // isz))
    chunked = rc < D
    pshape = (lambda r: (r, 1)) if lay.three_d else (lambda r: (r,))
    static = None if chunked or not params else [
        (lay.view(2 + i, None, ((0,) * len(lay.red), lay.red), None), pshape(D)) for i in range(len(params))]
    tiles: list[StreamTile] = []
    for grp in (row_tiles(lay, pc, rc, qc) if x.numel else []):
        for ps in ((1, 2) if chunked else (0,)):
            for rt in grp:
                p, r, q = rt.shape
                shape = lay.tile_shape(p, r, q)
                loads = [(lay.view(0, rt.o, rt.r, rt.q), shape)]
                if ps == 2:
                    loads += [(lay.view(2 + i, None, rt.r, None), pshape(r)) for i in range(len(params))]
                store = None if ps == 1 else lay.view(1, rt.o, rt.r, rt.q)
                last = ps != 1 and rt.chunk == rt.chunks - 1
                tiles.append(StreamTile(loads, store, shape, info=(ps, rt), chain=not last))
    temps: dict[str, SramRef] = {}

    def setup(b: CoreBuilder) -> None:
        full = lay.tile_shape(pc, rc, qc)
        rows = lay.tile_shape(pc, 1, qc)
        temps["xc"] = b.alloc(F32, full)
        temps["sq"] = b.alloc(F32, full)
        for k in ("mean", "m2", "t1", "t2", "t3"):
            temps[k] = b.alloc(F32, rows)

    ra = lay.red_attrs
    state = {"n": 0}  # elements folded into the running statistics (pass 1, per row group)

    def scale_shift(v: VecSeq, xc: SramRef, out_t: SramRef, rstd: SramRef, w, bias) -> None:
        """out = xc * rstd [* w] [+ bias]; intermediates in the `sq` temp."""
        y = sub_ref(temps["sq"], xc.shape)
        ops = [("mul", rstd)] + ([("mul", w)] if w is not None else []) + ([("add", bias)] if bias is not None else [])
        cur = xc
        for i, (op, operand) in enumerate(ops):
            dst = out_t if i == len(ops) - 1 else y
            v(op, dst, cur, operand)
            cur = dst

    def compute(b: CoreBuilder, loaded: list[SramRef], out_t: SramRef, tile: StreamTile, waits: tuple, signal: int):
        ps, rt = tile.info
        xs = loaded[0]
        full = xs.shape
        n_b = rt.shape[1]
        rows = lay.tile_shape(full[0], 1, full[2] if lay.three_d else 1)
        mean, m2, t1, t2, t3 = (sub_ref(temps[k], rows) for k in ("mean", "m2", "t1", "t2", "t3"))
        xc, sq = sub_ref(temps["xc"], full), sub_ref(temps["sq"], full)
        pr = loaded[1:1 + len(params)] if ps != 1 else []
        w = pr[0] if has_w and pr else None
        bias = pr[-1] if has_b and pr else None
        v = VecSeq()
        if ps == 0:
            centred = xs  # RMSNorm: no centring
            if not rms:
                v("reduce_sum", mean, xs, **ra)
                v("mul", mean, mean, 1.0 / D)
                v("sub", xc, xs, mean)
                centred = xc
            v("mul", sq, centred, centred)
            v("reduce_sum", m2, sq, **ra)
            v("mul", m2, m2, 1.0 / D)
            v("add", m2, m2, eps)
            v("rsqrt", m2, m2)
            scale_shift(v, centred, out_t, m2, w, bias)
        elif ps == 1 and rms:
            # RMSNorm needs only the running sum of squares (no mean to keep stable)
            v("mul", sq, xs, xs)
            v("reduce_sum", m2 if rt.chunk == 0 else t2, sq, **ra)
            if rt.chunk:
                v("add", m2, m2, t2)
            if rt.chunk == rt.chunks - 1:
                v("mul", m2, m2, 1.0 / D)
                v("add", m2, m2, eps)
                v("rsqrt", m2, m2)
        elif ps == 1:
            if rt.chunk == 0:
                state["n"] = n_b
                v("reduce_sum", mean, xs, **ra)
                v("mul", mean, mean, 1.0 / n_b)
                v("sub", xc, xs, mean)
                v("mul", sq, xc, xc)
                v("reduce_sum", m2, sq, **ra)
            else:
                n_a = state["n"]
                n = n_a + n_b
                state["n"] = n
                v("reduce_sum", t1, xs, **ra)
                v("mul", t1, t1, 1.0 / n_b)  # chunk mean
                v("sub", xc, xs, t1)
                v("mul", sq, xc, xc)
                v("reduce_sum", t2, sq, **ra)  # chunk centred sum of squares
                v("sub", t1, t1, mean)  # delta
                v("mul", t3, t1, n_b / n)
                v("add", mean, mean, t3)
                v("add", m2, m2, t2)
                v("mul", t1, t1, t1)
                v("mul", t1, t1, n_a * n_b / n)
                v("add", m2, m2, t1)
            if rt.chunk == rt.chunks - 1:
                v("mul", m2, m2, 1.0 / D)
                v("add", m2, m2, eps)
                v("rsqrt", m2, m2)
        elif rms:
            scale_shift(v, xs, out_t, m2, w, bias)
        else:
            v("sub", xc, xs, mean)
            scale_shift(v, xc, out_t, m2, w, bias)
        v.emit(b, waits, signal)
        return None

    min_bytes = x.footprint_bytes() + sum(p.footprint_bytes() for p in params) + out.numel * out.dtype.itemsize
    launch = emit_streaming(ctx, tiles, compute, setup, "norm", [ctx.node.op], 0, min_bytes, static=static)
    launch.flops = vector_flops(launch)
    return launch

