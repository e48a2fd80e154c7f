"""MoE routing in one kernel: softmax over the router logits, top-k experts, and (Qwen3-MoE's
norm_topk_prob) the top-k weights divided by their sum.

Per tile of P whole rows [P, E] (rows dealt round-robin over the cores, double-buffered):
    m = max(x); t = exp(x - m); s = 1 / sum(t); p = t * s          (the softmax kernel's steps)
    v = topk_values(p, k); i = topk_indices(p, k)                  (the topk kernel's steps)
    w = v / sum(v)                                                 (with normalize)
then w and i are stored. p, v and sum(v) sit in scratchpad buffers of the dtypes the unfused
softmax / topk / sum kernels store them in, so every rounding, and so every result, is the
same as the four-kernel chain's, in one launch instead of four.

With attrs route (the compiler folded the moe_route node in), a few rows (decode) run as one
tile on one core, which then computes the grouped-matmul schedule (moe_route_* vector ops, as
kernels/moe.py's moe_route) from the ids still in its scratchpad: five kernels in one. More
rows keep the router on all cores and add moe_route's own launch.
"""
from __future__ import annotations

import math

from vnpu.dtypes import DType
from vnpu.ir.graph import Node
from vnpu.ir.ops import moe_tiles
from vnpu.isa.instructions import DmaLoad, DmaStore, VecOp
from vnpu.isa.program import KernelLaunch
from vnpu.kernels.base import CoreBuilder, KernelContext, deal_round_robin, kernel, sub_ref
from vnpu.kernels.stream import aligned as aligned_bytes
from vnpu.kernels.moe import moe_route_kernel
from vnpu.kernels.topk import _rows_view

F32 = DType.fp32
# with the expert schedule (attrs route), up to this many token rows run on one core, the
# schedule computed from the ids in its scratchpad (decode); more take a second launch
ROUTE_ONE_CORE_ROWS = 64


@kernel("moe_router")
def moe_router_kernel(ctx: KernelContext) -> KernelLaunch | list[KernelLaunch]:
    x = ctx.inputs[0]
    w_out, i_out = ctx.outputs[:2]
    tables = ctx.outputs[2:]
    a = ctx.node.attrs
    route = a.get("route")
    k = int(a["k"])
    norm = bool(a.get("normalize"))
    p_dt = DType(a.get("prob_dtype", x.dtype))
    s_dt = DType(a.get("sum_dtype", F32))
    e = x.shape[-1]
    rows = math.prod(x.shape[:-1])
    cap = ctx.chip.core.scratchpad.bytes
    # per row: 2 x tiles, fp32 exp temp, probabilities, 2 x (values, weights, ids), row scalars
    per_row = (2 * aligned_bytes(e * x.dtype.itemsize) + aligned_bytes(4 * e) + aligned_bytes(e * p_dt.itemsize)
               + 2 * (k * p_dt.itemsize + k * w_out.dtype.itemsize + 8 * k) + 3 * 8 + 64)
    if per_row > cap * 0.9:
        raise NotImplementedError(f"moe_router: {e} experts per row exceed the scratchpad")
    r_attrs = ()
    if route is not None:
        r_attrs = (("experts", route["experts"]), ("k", k), ("rows", route["rows"]),
                   ("tiles", moe_tiles(rows * k, route["experts"], route["rows"])))
        table_bytes = sum(aligned_bytes(t.numel * t.dtype.itemsize) for t in tables)
        if rows * per_row + table_bytes > cap * 0.9 or rows > ROUTE_ONE_CORE_ROWS:
            # too many rows for one core: the router over all cores, then moe_route's own launch
            launch = moe_router_kernel(KernelContext(ctx.chip, ctx.dtype, Node(ctx.node.op, [], [], {
                kk: v for kk, v in a.items() if kk != "route"}, ctx.node.name), ctx.inputs, ctx.outputs[:2],
                ctx.scalars))
            sub = KernelContext(ctx.chip, ctx.dtype, Node("moe_route", [], [], dict(route), f"{ctx.node.name}_route"),
                                [i_out], list(tables), [None])
            return [launch, moe_route_kernel(sub)]
    # with the schedule, all rows in one tile on one core: the ids stay in its scratchpad
    p = rows if route is not None else max(1, min(rows, int(cap * 0.9) // per_row, math.ceil(rows / ctx.cores)))
    tiles = [(r0, min(p, rows - r0)) for r0 in range(0, rows, p)]
    streams = []
    for core_tiles in deal_round_robin(tiles, ctx.cores):
        b = CoreBuilder(ctx.chip)
        if not core_tiles:
            streams.append(b.finish())
            continue
        xb = [b.alloc(x.dtype, (p, e)) for _ in range(2)]
        tb = b.alloc(F32, (p, e))
        pb = b.alloc(p_dt, (p, e))
        mb = b.alloc(F32, (p, 1))
        sb = b.alloc(F32, (p, 1))
        nb = b.alloc(s_dt, (p, 1))
        vb = [b.alloc(p_dt, (p, k)) for _ in range(2)]
        wb = [b.alloc(w_out.dtype, (p, k)) for _ in range(2)] if norm or w_out.dtype != p_dt else vb
        ib = [b.alloc(DType.int64, (p, k)) for _ in range(2)]
        rtb = [b.alloc(t.dtype, t.shape) for t in tables]
        LD, CMP, ST = b.sem(), b.sem(), b.sem()
        for t, (r0, rn) in enumerate(core_tiles):
            s = t % 2
            xt = sub_ref(xb[s], (rn, e))
            tt, pt = sub_ref(tb, (rn, e)), sub_ref(pb, (rn, e))
            m, sm, ns = sub_ref(mb, (rn, 1)), sub_ref(sb, (rn, 1)), sub_ref(nb, (rn, 1))
            vt, wt, it = sub_ref(vb[s], (rn, k)), sub_ref(wb[s], (rn, k)), sub_ref(ib[s], (rn, k))
            b.emit(DmaLoad(_rows_view(x, r0, rn, e), xt, waits=((CMP, t - 1),) if t >= 2 else (), signal=LD))
            ops = [VecOp("reduce_max", m, (xt,)), VecOp("sub", tt, (xt, m)), VecOp("exp", tt, (tt,)),
                   VecOp("reduce_sum", sm, (tt,)), VecOp("reciprocal", sm, (sm,)), VecOp("mul", pt, (tt, sm)),
                   VecOp("topk_values", vt, (pt,), (("k", k),)), VecOp("topk_indices", it, (pt,), (("k", k),))]
            if norm:
                ops += [VecOp("reduce_sum", ns, (vt,)), VecOp("div", wt, (vt, ns))]
            elif wt is not vt:
                ops.append(VecOp("identity", wt, (vt,)))
            for op, buf in zip(("moe_route_experts", "moe_route_tokens", "moe_route_slots"), rtb):
                ops.append(VecOp(op, buf, (it,), r_attrs))
            ops[0].waits = ((LD, t + 1),) + (((ST, 2 * (t - 1)),) if t >= 2 else ())
            ops[-1].signal = CMP
            for op in ops:
                b.emit(op)
            b.emit(DmaStore(wt, _rows_view(w_out, r0, rn, k), waits=((CMP, t + 1),), signal=ST))
            b.emit(DmaStore(it, _rows_view(i_out, r0, rn, k), signal=ST))
            for buf, t_ref in zip(rtb, tables):
                b.emit(DmaStore(buf, t_ref))
        streams.append(b.finish())
    min_bytes = (x.numel * x.dtype.itemsize + w_out.numel * (w_out.dtype.itemsize + 8)
                 + sum(t.numel * t.dtype.itemsize for t in tables))
    flops = x.numel * 6 + rows * k * (2 if norm else 0)
    return KernelLaunch(ctx.node.name, "moe", ["softmax", "topk"] + (["reduce_sum", "div"] if norm else [])
                        + (["moe_route"] if tables else []), streams, flops, min_bytes, ctx.dtype)
