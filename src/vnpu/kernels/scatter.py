"""index_write: rows of `src` written in place into `dest` at runtime indices (KV-cache append).

dest is seen as [outer..., N, inner...] along the written axis; for each outer index the
table [N, inner] receives src's rows [n, inner] at the n positions in `index` (int, HBM).
Per tile (one outer index, a chunk of rows): DMA the index chunk and the src rows into
scratchpad, then one DmaScatter writes the rows to their positions. Tiles are
double-buffered: tile t+1 loads while tile t scatters. Bytes moved: the new rows only,
never the whole cache.

With attrs["quant"] (a quantized KV cache, compiler/kv_cache.py) each row (one token's head) is
quantized on its way in, on the vector engine in fp32: amax = max(max|x|, floor) over the row;
part "values" writes cast(clamp(x * (qmax / amax), +-qmax)) in the cache's format (the cast rounds
to nearest even: quantize_rows' arithmetic), part "scale" writes amax / qmax into the [..., 1]
scale cache. The two parts are sibling kernels of one launch (compiler/siblings.py).
"""
from __future__ import annotations

import math

import numpy as np

from vnpu.dtypes import DType
from vnpu.isa.instructions import DmaLoad, DmaScatter, HbmRef, VecOp
from vnpu.isa.program import KernelLaunch
from vnpu.kernels.base import CoreBuilder, KernelContext, kernel, sub_ref

F32 = DType.fp32


def _outer_offset(shape: tuple[int, ...], strides: tuple[int, ...], flat: int) -> int:
    off = 0
    for d, st in zip(reversed(shape), reversed(strides)):
        off += (flat % d) * st
        flat //= d
    return off


@kernel("index_write")
def index_write_kernel(ctx: KernelContext) -> KernelLaunch:
    dest, idx, src = ctx.inputs
    ax = ctx.node.attrs["axis"]
    quant = ctx.node.attrs.get("quant")
    outer = dest.shape[:ax]
    inner = dest.shape[ax + 1:]
    s_inner = src.shape[ax + 1:]
    n_rows = dest.shape[ax]
    n = idx.shape[0]
    e = math.prod(inner)
    es = math.prod(s_inner)
    osz = dest.dtype.itemsize
    cap = ctx.chip.core.scratchpad.bytes
    per_row = 2 * es * src.dtype.itemsize + 2 * idx.dtype.itemsize
    if quant is not None:  # fp32 work tile, the quantized tile, the row's amax (per row of src's last axis)
        per_row += es * 4 + e * osz + 2 * 4 * (es // s_inner[-1])
    rows = max(1, min(n, (cap // 2 - 256) // max(1, per_row)))
    tiles = [(o, r0, min(rows, n - r0)) for o in range(math.prod(outer)) for r0 in range(0, n, rows)]
    per_core: list[list[tuple[int, int, int]]] = [[] for _ in range(ctx.cores)]
    for i, t in enumerate(tiles):
        per_core[i * ctx.cores // max(len(tiles), 1)].append(t)
    streams = []
    for core_tiles in per_core:
        b = CoreBuilder(ctx.chip)
        if not core_tiles:
            streams.append(b.finish())
            continue
        ibuf = [b.alloc(idx.dtype, (rows,)) for _ in range(2)]
        sbuf = [b.alloc(src.dtype, (rows, es)) for _ in range(2)]
        if quant is not None:
            QD = b.sem()
            lead = (rows,) + s_inner[:-1]
            work = b.alloc(F32, lead + s_inner[-1:])
            amax = b.alloc(F32, lead + (1,))
            inv = b.alloc(F32, lead + (1,))
            qbuf = [b.alloc(dest.dtype, (rows, e)) for _ in range(2)]
        LD, SC = b.sem(), b.sem()
        for t, (o, r0, rn) in enumerate(core_tiles):
            w = ((SC, t - 1),) if t >= 2 else ()
            i_view = HbmRef(idx.offset + r0 * idx.strides[0] * idx.dtype.itemsize, idx.dtype, (rn,), idx.strides)
            s_off = src.offset + (_outer_offset(outer, src.strides[:ax], o) + r0 * src.strides[ax]) * src.dtype.itemsize
            s_view = HbmRef(s_off, src.dtype, (rn,) + s_inner, (src.strides[ax],) + src.strides[ax + 1:])
            table = HbmRef(dest.offset + _outer_offset(outer, dest.strides[:ax], o) * osz, dest.dtype,
                           (n_rows,) + inner, (dest.strides[ax],) + dest.strides[ax + 1:])
            it, st = sub_ref(ibuf[t % 2], (rn,)), sub_ref(sbuf[t % 2], (rn, es))
            b.emit(DmaLoad(i_view, it, waits=w))
            b.emit(DmaLoad(s_view, st, signal=LD))
            if quant is not None:
                st = _quantize_tile(b, quant, sub_ref(st, (rn,) + s_inner), sub_ref(work, (rn,) + s_inner),
                                    sub_ref(amax, (rn,) + lead[1:] + (1,)), sub_ref(inv, (rn,) + lead[1:] + (1,)),
                                    sub_ref(qbuf[t % 2], (rn, e)), ((LD, t + 1),) + (((SC, t - 1),) if t >= 2 else ()),
                                    QD)
                b.emit(DmaScatter(st, it, table, waits=((QD, t + 1),), signal=SC))
                continue
            b.emit(DmaScatter(st, it, table, waits=((LD, t + 1),), signal=SC))
        streams.append(b.finish())
    min_bytes = (idx.numel * idx.dtype.itemsize * max(1, math.prod(outer)) + src.numel * src.dtype.itemsize
                 + math.prod(outer) * n * e * osz)
    return KernelLaunch(ctx.node.name, "scatter", ["index_write"], streams, 0, min_bytes, ctx.dtype)



def _quantize_tile(b: CoreBuilder, quant: dict, x, work, amax, inv, out, waits: tuple, signal: int):
    """The rows of x quantized into `out` (part "values") or their scales (part "scale")."""
    qmax = float(quant["qmax"])
    floor = float(np.finfo(np.float32).tiny) * qmax  # an all-zero row: any scale gives q = 0
    ops = [("abs", work, (x,), ()), ("reduce_max", amax, (work,), ()), ("maximum", amax, (amax, floor), ())]
    if quant["part"] == "scale":
        ops.append(("div", sub_ref(out, amax.shape), (amax, qmax), ()))
    else:
        fmt = DType(quant["fmt"])
        ops += [("div", inv, (qmax, amax), ()), ("mul", work, (x, inv), ()),
                ("clamp", work, (work,), (("min", -qmax), ("max", qmax)))]
        if not fmt.is_float:
            ops.append(("round", work, (work,), ()))
        ops.append(("cast", sub_ref(out, work.shape), (work,), (("dtype", fmt),)))
    for i, (op, dst, srcs, at) in enumerate(ops):
        b.emit(VecOp(op, dst, srcs, at, waits=waits if i == 0 else (), signal=signal if i == len(ops) - 1 else -1))
    return out
