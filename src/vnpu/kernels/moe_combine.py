"""The MoE combine in one kernel: out[t] = sum_k w[t, k] * y[t, k] (+ the residual r[t]).

Work items (P tokens, Hc hidden columns) are dealt round-robin over the cores (at batch-1
decode the hidden columns are split so that every core streams a share). Per item, loads
y [P, K, Hc], w [P, K, 1] (and r [P, 1, Hc]), then on the vector engine
    m = y * w            (rounded to the product's dtype, as the unfused mul kernel stores it)
    s = sum_k m          (a reduction over the middle axis of [P, K, Hc], as the reduce kernel
                          does it; rounded to the sum's dtype)
    o = s + r            (with the residual)
and stores o. Buffers are double-buffered so loads and stores overlap the vector work. One
launch instead of three, with the same results.
"""
from __future__ import annotations

import math

from vnpu.dtypes import DType
from vnpu.isa.instructions import DmaLoad, DmaStore, HbmRef, VecOp
from vnpu.isa.program import KernelLaunch
from vnpu.kernels.base import CoreBuilder, KernelContext, deal_round_robin, kernel, sub_ref
from vnpu.kernels.stream import aligned


def _token_cols(ref: HbmRef, t: int, h: int) -> tuple[int, int]:
    """(token stride, column stride) of a tensor with t*h elements seen as [t, h]: its leading
    dims must flatten to the tokens and its trailing dims to the columns."""
    dims = [(d, s) for d, s in zip(ref.shape, ref.strides) if d != 1]

    def merged(group: list[tuple[int, int]]) -> int | None:
        if not group:
            return 0
        for (_, s0), (d1, s1) in zip(group, group[1:]):
            if s0 != s1 * d1:
                return None
        return group[-1][1]

    for i in range(len(dims) + 1):
        if math.prod(d for d, _ in dims[:i]) == t and math.prod(d for d, _ in dims[i:]) == h:
            ts, cs = merged(dims[:i]), merged(dims[i:])
            if ts is not None and cs is not None:
                return ts, cs
    raise ValueError(f"moe_combine: {ref.shape} with strides {ref.strides} is not a [{t}, {h}] view")


@kernel("moe_combine")
def moe_combine_kernel(ctx: KernelContext) -> KernelLaunch:
    y, w = ctx.inputs[:2]
    res = ctx.inputs[2] if len(ctx.inputs) > 2 else None
    out = ctx.outputs[0]
    a = ctx.node.attrs
    m_dt, s_dt = DType(a["mul_dtype"]), DType(a["sum_dtype"])
    t, k, h = y.shape
    cores = ctx.cores
    cap = int(ctx.chip.core.scratchpad.bytes * 0.9)

    def need(p: int, hc: int) -> int:
        n = 2 * (aligned(p * k * hc * y.dtype.itemsize) + aligned(p * k * w.dtype.itemsize)
                 + aligned(p * hc * out.dtype.itemsize))
        n += aligned(p * k * hc * m_dt.itemsize) + aligned(p * hc * s_dt.itemsize)
        if res is not None:
            n += 2 * aligned(p * hc * res.dtype.itemsize)
        return n

    p = max(1, math.ceil(t / cores))
    col_items = max(1, cores // t) if t < cores else 1
    hc = min(h, max(64, math.ceil(h / col_items)))
    while need(p, hc) > cap:
        if hc > 64:
            hc = math.ceil(hc / 2)
        elif p > 1:
            p = math.ceil(p / 2)
        else:
            raise NotImplementedError(f"moe_combine: top-{k} rows of {h} do not fit the scratchpad")
    items = [(t0, min(p, t - t0), h0, min(hc, h - h0)) for t0 in range(0, t, p) for h0 in range(0, h, hc)]
    ots, ocs = _token_cols(out, t, h)
    rts, rcs = _token_cols(res, t, h) if res is not None else (0, 0)
    ys, wst = y.strides, w.strides
    n_ld = 3 if res is not None else 2
    streams = []
    for core_items in deal_round_robin(items, cores):
        b = CoreBuilder(ctx.chip)
        if not core_items:
            streams.append(b.finish())
            continue
        yb = [b.alloc(y.dtype, (p, k, hc)) for _ in range(2)]
        wb = [b.alloc(w.dtype, (p, k, 1)) for _ in range(2)]
        rb = [b.alloc(res.dtype, (p, 1, hc)) for _ in range(2)] if res is not None else None
        ob = [b.alloc(out.dtype, (p, 1, hc)) for _ in range(2)]
        mb = b.alloc(m_dt, (p, k, hc))
        sb = b.alloc(s_dt, (p, 1, hc))
        LD, CMP, ST = b.sem(), b.sem(), b.sem()
        for j, (t0, pn, h0, hn) in enumerate(core_items):
            s = j % 2
            yt, wt, ot = sub_ref(yb[s], (pn, k, hn)), sub_ref(wb[s], (pn, k, 1)), sub_ref(ob[s], (pn, 1, hn))
            mt, st = sub_ref(mb, (pn, k, hn)), sub_ref(sb, (pn, 1, hn))
            lw = ((CMP, j - 1),) if j >= 2 else ()
            yv = HbmRef(y.offset + (t0 * ys[0] + h0 * ys[2]) * y.dtype.itemsize, y.dtype, (pn, k, hn), ys)
            wv = HbmRef(w.offset + t0 * wst[0] * w.dtype.itemsize, w.dtype, (pn, k, 1), wst)
            b.emit(DmaLoad(yv, yt, waits=lw, signal=LD))
            b.emit(DmaLoad(wv, wt, signal=LD))
            ops = [VecOp("mul", mt, (yt, wt))]
            if res is not None:
                rt = sub_ref(rb[s], (pn, 1, hn))
                rv = HbmRef(res.offset + (t0 * rts + h0 * rcs) * res.dtype.itemsize, res.dtype, (pn, 1, hn),
                            (rts, 0, rcs))
                b.emit(DmaLoad(rv, rt, signal=LD))
                ops += [VecOp("reduce_sum", st, (mt,), (("axis", 1),)), VecOp("add", ot, (st, rt))]
            else:
                ops.append(VecOp("reduce_sum", ot, (mt,), (("axis", 1),)))
            ops[0].waits = ((LD, n_ld * (j + 1)),) + (((ST, j - 1),) if j >= 2 else ())
            ops[-1].signal = CMP
            for op in ops:
                b.emit(op)
            ov = HbmRef(out.offset + (t0 * ots + h0 * ocs) * out.dtype.itemsize, out.dtype, (pn, 1, hn),
                        (ots, 0, ocs))
            b.emit(DmaStore(ot, ov, waits=((CMP, j + 1),), signal=ST))
        streams.append(b.finish())
    isz = y.dtype.itemsize
    min_bytes = (y.numel * isz + w.numel * w.dtype.itemsize + out.numel * out.dtype.itemsize
                 + (res.numel * res.dtype.itemsize if res is not None else 0))
    flops = 2 * y.numel + (out.numel if res is not None else 0)
    return KernelLaunch(ctx.node.name, "moe", ["mul", "reduce_sum"] + (["add"] if res is not None else []),
                        streams, flops, min_bytes, ctx.dtype)
