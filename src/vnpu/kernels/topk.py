"""Top-k along the last axis on the vector engine: greedy sampling (k = 1, argmax over the
vocabulary) and MoE routing (k experts per token).

Per tile of P whole rows: load [P, N], one `topk_values` and one `topk_indices` vector
instruction (a k-deep compare-exchange pass over each row; ties go to the lower index,
as torch.argmax), store values and int64 indices. Tiles are double-buffered.
"""
from __future__ import annotations

import math

from vnpu.dtypes import DType
from vnpu.isa.instructions import DmaLoad, DmaStore, HbmRef, VecOp
from vnpu.isa.program import KernelLaunch
from vnpu.kernels.base import CoreBuilder, KernelContext, kernel, sub_ref


def _rows_view(ref: HbmRef, r0: int, rn: int, width: int) -> HbmRef:
    """Rows r0..r0+rn of `ref` seen as [rows, width] (leading dims flattened, C order)."""
    lead = ref.shape[:-1]
    # leading dims must flatten: each stride the product of the inner extents
    st = ref.strides[-1]
    row_stride = ref.strides[-2] if len(lead) else width * st
    expect = row_stride
    for d, s in zip(reversed(lead), reversed(ref.strides[:-1])):
        if d != 1 and s != expect:
            raise ValueError(f"topk: rows of {ref.shape} with strides {ref.strides} are not evenly spaced")
        expect = s * d
    return HbmRef(ref.offset + r0 * row_stride * ref.dtype.itemsize, ref.dtype, (rn, width), (row_stride, st))


@kernel("topk")
def topk_kernel(ctx: KernelContext) -> KernelLaunch:
    x = ctx.inputs[0]
    vals, idxs = ctx.outputs
    k = int(ctx.node.attrs["k"])
    n = x.shape[-1]
    rows = math.prod(x.shape[:-1])
    cap = ctx.chip.core.scratchpad.bytes
    per_row = 2 * n * x.dtype.itemsize + 2 * k * (vals.dtype.itemsize + 8) + 256
    p = max(1, min(rows, int(cap * 0.9) // per_row, math.ceil(rows / ctx.cores)))
    if 2 * n * x.dtype.itemsize > cap * 0.9:
        raise ValueError(f"topk: a row of {n} elements does not fit the {cap}-byte scratchpad")
    tiles = [(r0, min(p, rows - r0)) for r0 in range(0, rows, p)]
    per_core: list[list[tuple[int, int]]] = [[] for _ in range(ctx.cores)]
    for i, t in enumerate(tiles):
        per_core[i % ctx.cores].append(t)
    streams = []
    for core_tiles in per_core:
        b = CoreBuilder(ctx.chip)
        if not core_tiles:
            streams.append(b.finish())
            continue
        xb = [b.alloc(x.dtype, (p, n)) for _ in range(2)]
        vb = [b.alloc(vals.dtype, (p, k)) for _ in range(2)]
        ib = [b.alloc(DType.int64, (p, k)) for _ in range(2)]
        LD, CMP, ST = b.sem(), b.sem(), b.sem()
        for t, (r0, rn) in enumerate(core_tiles):
            s = t % 2
            xt, vt, it = sub_ref(xb[s], (rn, n)), sub_ref(vb[s], (rn, k)), sub_ref(ib[s], (rn, k))
            b.emit(DmaLoad(_rows_view(x, r0, rn, n), xt, waits=((CMP, 2 * t - 2),) if t >= 2 else (), signal=LD))
            w = [(LD, t + 1)] + ([(ST, 2 * (t - 1))] if t >= 2 else [])
            b.emit(VecOp("topk_values", vt, (xt,), (("k", k),), waits=tuple(w), signal=CMP))
            b.emit(VecOp("topk_indices", it, (xt,), (("k", k),), signal=CMP))
            b.emit(DmaStore(vt, _rows_view(vals, r0, rn, k), waits=((CMP, 2 * t + 2),), signal=ST))
            b.emit(DmaStore(it, _rows_view(idxs, r0, rn, k), signal=ST))
        streams.append(b.finish())
    min_bytes = x.numel * x.dtype.itemsize + vals.numel * (vals.dtype.itemsize + 8)
    return KernelLaunch(ctx.node.name, "topk", ["topk"], streams, x.numel, min_bytes, ctx.dtype)
