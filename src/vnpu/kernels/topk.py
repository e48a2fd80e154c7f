"""Top-k along the last axis on the vector engine: greedy sampling (k = 1, argmax over the
vocabulary) and MoE routing (k experts per token).

Per tile of P whole rows: load [P, N], one `topk_values` and one `topk_indices` vector
instruction (a k-deep compare-exchange pass over each row; ties go to the lower index,
as torch.argmax), store values and int64 indices. Tiles are double-buffered.
"""
from __future__ import annotations

import math

from vnpu.dtypes import DType
from vnpu.isa.instructions import DmaLoad, DmaStore, HbmRef, SramRef, VecOp
from vnpu.isa.program import KernelLaunch
from vnpu.kernels import views
from vnpu.kernels.base import CoreBuilder, KernelContext, deal_round_robin, kernel, sub_ref


def _rows_view(ref: HbmRef, r0: int, rn: int, width: int) -> HbmRef:
    """Rows r0..r0+rn of `ref` seen as [rows, width] (leading dims flattened, C order).
    compiler/memory.materialize_views copies an input whose leading dims do not flatten."""
    rows = views.reshape(ref, (math.prod(ref.shape[:-1]), width))
    if rows is None:  # reaching here is a compiler bug
        raise ValueError(f"topk: rows of {ref.shape} with strides {ref.strides} are not evenly spaced")
    return views.slice_dim(rows, 0, r0, r0 + rn)


@kernel("topk")
def topk_kernel(ctx: KernelContext) -> KernelLaunch:
    x = ctx.inputs[0]
    vals, idxs = ctx.outputs
    k = int(ctx.node.attrs["k"])
    n = x.shape[-1]
    rows = math.prod(x.shape[:-1])
    cap = ctx.chip.core.scratchpad.bytes
    per_row = 2 * n * x.dtype.itemsize + 2 * k * (vals.dtype.itemsize + 8) + 256
    if 2 * n * x.dtype.itemsize > cap * 0.8:
        return _chunked_topk(ctx, x, vals, idxs, k, rows, n)
    p = max(1, min(rows, int(cap * 0.9) // per_row, math.ceil(rows / ctx.cores)))
    tiles = [(r0, min(p, rows - r0)) for r0 in range(0, rows, p)]
    streams = []
    for core_tiles in deal_round_robin(tiles, ctx.cores):
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


def _chunked_topk(ctx: KernelContext, x: HbmRef, vals: HbmRef, idxs: HbmRef, k: int, rows: int, n: int) -> KernelLaunch:
    """Rows longer than the scratchpad (a vocabulary on a GPU-sized SM) go through in chunks:
    each chunk's top-k (indices offset to the row) joins the running top-k in a [1, 2k] merge
    buffer, whose top-k becomes the new running one (`take` picks the matching ids). The
    running candidates sit in front, so ties still go to the lower index."""
    cap = ctx.chip.core.scratchpad.bytes
    cw = max(k, min(n, int(cap * 0.35) // x.dtype.itemsize))
    chunks = [(c0, min(cw, n - c0)) for c0 in range(0, n, cw)]
    streams = []
    for my_rows in deal_round_robin(list(range(rows)), ctx.cores):
        b = CoreBuilder(ctx.chip)
        if not my_rows:
            streams.append(b.finish())
            continue
        xb = [b.alloc(x.dtype, (1, cw)) for _ in range(2)]
        mv = b.alloc(DType.fp32, (1, 2 * k))
        mi = b.alloc(DType.int64, (1, 2 * k))
        tv = b.alloc(DType.fp32, (1, k))
        ti = b.alloc(DType.int64, (1, k))
        tp = b.alloc(DType.int64, (1, k))
        LD, CMP, ST = b.sem(), b.sem(), b.sem()
        best_v, best_i = SramRef(mv.offset, DType.fp32, (1, k)), SramRef(mi.offset, DType.int64, (1, k))
        cand_v = SramRef(mv.offset + 4 * k, DType.fp32, (1, k))
        cand_i = SramRef(mi.offset + 8 * k, DType.int64, (1, k))
        j = 0
        for ri, r in enumerate(my_rows):
            for ci, (c0, cn) in enumerate(chunks):
                xt = sub_ref(xb[j % 2], (1, cn))
                rv = _rows_view(x, r, 1, n)
                chunk = HbmRef(rv.offset + c0 * rv.strides[1] * x.dtype.itemsize, x.dtype, (1, cn), rv.strides)
                b.emit(DmaLoad(chunk, xt, waits=((CMP, j - 1),) if j >= 2 else (), signal=LD))
                dv, di = (best_v, best_i) if ci == 0 else (cand_v, cand_i)
                w = [(LD, j + 1)] + ([(ST, 2 * ri)] if ci == 0 and ri >= 1 else [])
                b.emit(VecOp("topk_values", dv, (xt,), (("k", k),), waits=tuple(w)))
                b.emit(VecOp("topk_indices", di, (xt,), (("k", k),)))
                last = VecOp("add", di, (di, float(c0)))
                b.emit(last)
                if ci > 0:
                    b.emit(VecOp("topk_indices", tp, (mv,), (("k", k),)))
                    b.emit(VecOp("topk_values", tv, (mv,), (("k", k),)))
                    b.emit(VecOp("take", ti, (mi, tp)))
                    b.emit(VecOp("identity", best_v, (tv,)))
                    last = VecOp("identity", best_i, (ti,))
                    b.emit(last)
                last.signal = CMP
                j += 1
            b.emit(DmaStore(best_v, _rows_view(vals, r, 1, k), waits=((CMP, j),), signal=ST))
            b.emit(DmaStore(best_i, _rows_view(idxs, r, 1, k), signal=ST))
        streams.append(b.finish())
    min_bytes = x.numel * x.dtype.itemsize + vals.numel * (vals.dtype.itemsize + 8)
    return KernelLaunch(ctx.node.name, "topk", ["topk"], streams, x.numel, min_bytes, ctx.dtype)
