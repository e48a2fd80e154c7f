"""index_write: rows of `src` written in place into `dest` at runtime indices (KV-cache append).

dest is seen as [outer..., N, inner...] along the written axis; for each outer index the
table [N, inner] receives src's rows [n, inner] at the n positions in `index` (int, HBM).
Per tile (one outer index, a chunk of rows): DMA the index chunk and the src rows into
scratchpad, then one DmaScatter writes the rows to their positions. Tiles are
double-buffered: tile t+1 loads while tile t scatters. Bytes moved: the new rows only,
never the whole cache.
"""
from __future__ import annotations

import math

from vnpu.isa.instructions import DmaLoad, DmaScatter, HbmRef
from vnpu.isa.program import KernelLaunch
from vnpu.kernels.base import CoreBuilder, KernelContext, kernel, sub_ref


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
    outer = dest.shape[:ax]
    inner = dest.shape[ax + 1:]
    n_rows = dest.shape[ax]
    n = idx.shape[0]
    e = math.prod(inner)
    osz = dest.dtype.itemsize
    cap = ctx.chip.core.scratchpad.bytes
    rows = max(1, min(n, (cap // 2 - 256) // max(1, 2 * e * osz + 2 * idx.dtype.itemsize)))
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
        sbuf = [b.alloc(src.dtype, (rows, e)) for _ in range(2)]
        LD, SC = b.sem(), b.sem()
        for t, (o, r0, rn) in enumerate(core_tiles):
            w = ((SC, t - 1),) if t >= 2 else ()
            i_view = HbmRef(idx.offset + r0 * idx.strides[0] * idx.dtype.itemsize, idx.dtype, (rn,), idx.strides)
            s_off = src.offset + (_outer_offset(outer, src.strides[:ax], o) + r0 * src.strides[ax]) * src.dtype.itemsize
            s_view = HbmRef(s_off, src.dtype, (rn,) + inner, (src.strides[ax],) + src.strides[ax + 1:])
            table = HbmRef(dest.offset + _outer_offset(outer, dest.strides[:ax], o) * osz, dest.dtype,
                           (n_rows,) + inner, (dest.strides[ax],) + dest.strides[ax + 1:])
            it, st = sub_ref(ibuf[t % 2], (rn,)), sub_ref(sbuf[t % 2], (rn, e))
            b.emit(DmaLoad(i_view, it, waits=w))
            b.emit(DmaLoad(s_view, st, signal=LD))
            b.emit(DmaScatter(st, it, table, waits=((LD, t + 1),), signal=SC))
        streams.append(b.finish())
    min_bytes = idx.numel * idx.dtype.itemsize * max(1, math.prod(outer)) + 2 * src.numel * src.dtype.itemsize
    return KernelLaunch(ctx.node.name, "scatter", ["index_write"], streams, 0, min_bytes, ctx.dtype)

