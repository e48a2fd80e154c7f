"""Gather along an axis (embedding lookup, index_select) with the DMA engine's gather.

Per tile: load a chunk of indices into scratchpad, DmaGather the picked rows of the table
into scratchpad, store them; no vector work (the store reads the gathered tile directly).
For axis 0 the table is [N, row]. For another axis the table is viewed with the gathered
axis first, [N, inner...], once per outer index (dims before the axis); a tile covers a
box of outer indices (one DmaGather each, all sharing the tile's index chunk) and stores
[outer box, indices, inner] to the output. A row larger than the scratchpad is gathered in
column chunks (the row seen as one strided dim). Out-of-range indices raise IndexError when the
simulator executes the gather (negative ones count from the end, as the DMA engine wraps).
"""
from __future__ import annotations

import math

from vnpu.isa.instructions import HbmRef
from vnpu.isa.program import KernelLaunch
from vnpu.kernels.base import KernelContext, kernel
from vnpu.kernels.stream import GatherLoad, StreamTile, aligned, box_tiles, coalesce, emit_streaming, spread_elems, sub
from vnpu.kernels import views
from vnpu.kernels.views import contiguous_strides


@kernel("gather")
def gather_kernel(ctx: KernelContext) -> KernelLaunch:
    table, idx = ctx.inputs[0], ctx.inputs[1]
    out = ctx.outputs[0]
    axis = ctx.node.attrs.get("axis", 0)
    axis = axis + len(table.shape) if axis < 0 else axis
    outer = table.shape[:axis]
    inner = table.shape[axis + 1:]
    N = table.shape[axis]
    n = idx.numel
    E = math.prod(inner)
    O = math.prod(outer)
    tsz, isz = table.dtype.itemsize, idx.dtype.itemsize
    # table per outer index: [N, *inner] with the gathered axis first
    t_strides = table.strides
    assert tuple(out.strides) == contiguous_strides(out.shape), "gather writes a contiguous output"

    cap = ctx.chip.core.scratchpad.bytes
    ec = E  # row elements gathered per tile: a whole row unless one row does not fit the scratchpad
    # the row as one strided dim, for column chunks of rows larger than the scratchpad
    flat_row = views.reshape(HbmRef(0, table.dtype, inner, t_strides[axis + 1:]), (E,)) if inner else None

    def need(ob: int, k: int) -> int:
        return 2 * aligned(k * isz) + 2 * aligned(ob * k * ec * tsz) + 4 * 64

    if need(1, 1) > cap and flat_row is not None:
        ec = max(1, (cap - 2 * aligned(isz) - 4 * 64) // (2 * tsz) // 64 * 64)
        while ec > 1 and need(1, 1) > cap:
            ec //= 2

    def table_at(o_flat: int, c0: int = 0) -> HbmRef:
        coords = []
        rem = o_flat
        for d in reversed(outer):
            coords.append(rem % d)
            rem //= d
        coords.reverse()
        off = sum(c * s for c, s in zip(coords, t_strides[:axis]))
        if ec == E:
            return HbmRef(table.offset + off * tsz, table.dtype, (N,) + inner, (t_strides[axis],) + t_strides[axis + 1:])
        s_in = flat_row.strides[0]  # type: ignore[union-attr]
        return HbmRef(table.offset + (off + c0 * s_in) * tsz, table.dtype, (N, min(ec, E - c0)), (t_strides[axis], s_in))

    # tile: ob outer indices x k indices; about two tiles per core, within the scratchpad
    target = spread_elems(ctx, O * n * E, min_tile=1024)
    k = max(1, min(n, target // max(ec, 1)))
    while k > 1 and need(1, k) > cap:
        k = max(1, k // 2)
    if need(1, k) > cap:
        raise ValueError(f"gather: one row of {E * tsz} bytes does not fit the scratchpad")
    ob = max(1, min(O, target // max(k * ec, 1)))
    while ob > 1 and need(ob, k) > cap:
        ob = max(1, ob // 2)
    # index boxes (coalesced) and the matching output rows: output = [O, *idx.shape, E], contiguous
    idx_rows = HbmRef(0, idx.dtype, idx.shape, tuple(st * E for st in contiguous_strides(idx.shape)))
    ishape, (idx_v, rows_v) = coalesce(idx.shape, [idx, idx_rows])
    osz = out.dtype.itemsize
    tiles: list[StreamTile] = []
    if out.numel:
        for (o0,), (os_,) in box_tiles((O,), ob):
            for c0 in range(0, E, ec):
                cn = min(ec, E - c0)
                tables = [table_at(o, c0) for o in range(o0, o0 + os_)]
                for starts, sizes in box_tiles(ishape, k):
                    kk = math.prod(sizes)
                    row0 = sum(a * st for a, st in zip(starts, rows_v.strides))
                    store = HbmRef(out.offset + (o0 * n * E + row0 + c0) * osz, out.dtype, (os_,) + tuple(sizes) + (cn,),
                                   (n * E,) + rows_v.strides + (1,))
                    tiles.append(StreamTile([(sub(idx_v, starts, sizes), (kk,)), (GatherLoad(tables, 0), (os_, kk, cn))],
                                            store, (0,)))  # pass-through: no output buffer

    def compute(b, loaded, out_t, tile, waits, signal):
        return loaded[1]  # the gathered rows are the output tile

    min_bytes = idx.footprint_bytes() + 2 * out.numel * out.dtype.itemsize  # indices, rows read, rows written
    return emit_streaming(ctx, tiles, compute, None, "gather", ["gather"], 0, min_bytes)

