"""Dynamic per-row (per-token) quantization in one streaming kernel: x [..., K] float ->
q [..., K] int8 / fp8 and the row's dequantization scale [..., 1] fp32.

Per tile of rows, on the vector engine in fp32 (the formula compiler/quantize.py documents):
amax = max(max|x|, floor); inv = qmax / amax; scale = amax / qmax; q = cast(clamp(round(x * inv)))
(no round for fp8: the cast rounds to nearest even; the clamp saturates first). x is read once;
two outputs are stored per tile. Tiles are double-buffered: the loads of tile t+1 and the stores
of tile t-1 overlap the vector work of tile t.
"""
from __future__ import annotations

import math

import numpy as np

from vnpu.dtypes import DType
from vnpu.isa.instructions import DmaLoad, DmaStore, HbmRef, VecOp
from vnpu.isa.program import KernelLaunch
from vnpu.kernels.base import CoreBuilder, KernelContext, KernelError, kernel, sub_ref
from vnpu.kernels.stream import aligned
from vnpu.kernels.views import reshape

F32 = DType.fp32


@kernel("quantize_rows")
def quantize_rows_kernel(ctx: KernelContext) -> KernelLaunch:
    x_ref = ctx.inputs[0]
    q_ref, s_ref = ctx.outputs
    a = ctx.node.attrs
    fmt, qmax = DType(a["fmt"]), float(a["qmax"])
    k = x_ref.shape[-1]
    rows = math.prod(x_ref.shape[:-1])
    x2 = reshape(x_ref, (rows, k))
    q2 = reshape(q_ref, (rows, k))
    s2 = reshape(s_ref, (rows, 1))
    if x2 is None or q2 is None or s2 is None:
        raise KernelError(f"quantize_rows {ctx.node.name}: rows of {x_ref.shape} are not one strided 2-D view")
    isz = x_ref.dtype.itemsize
    per_row = 2 * aligned(k * isz) + aligned(4 * k) + 2 * aligned(k * fmt.itemsize) + 3 * 64
    cap = ctx.chip.core.scratchpad.bytes - 4096
    fit = cap // per_row
    if fit < 1:
        raise KernelError(f"quantize_rows {ctx.node.name}: one row of {k} elements does not fit the "
                          f"{ctx.chip.core.scratchpad.bytes}-byte scratchpad")
    rt = max(1, min(fit, 256, math.ceil(rows / ctx.chip.cores)))
    tiles = [(r0, min(rt, rows - r0)) for r0 in range(0, rows, rt)]
    floor = float(np.finfo(np.float32).tiny) * qmax  # an all-zero row: any scale gives q = 0
    streams = []
    per_core = math.ceil(len(tiles) / ctx.chip.cores)
    for c in range(ctx.chip.cores):
        mine = tiles[c * per_core:(c + 1) * per_core]  # contiguous rows per core: sequential HBM reads
        b = CoreBuilder(ctx.chip)
        if not mine:
            streams.append(b.finish())
            continue
        xb = [b.alloc(x_ref.dtype, (rt, k)) for _ in range(2)]
        qb = [b.alloc(fmt, (rt, k)) for _ in range(2)]
        sb = [b.alloc(F32, (rt, 1)) for _ in range(2)]
        tmp = b.alloc(F32, (rt, k))
        amax = b.alloc(F32, (rt, 1))
        inv = b.alloc(F32, (rt, 1))
        LOADED, COMPUTED, QSTORED, SSTORED = (b.sem() for _ in range(4))
        for t, (r0, n) in enumerate(mine):
            s = t % 2
            x_t, q_t, s_t = sub_ref(xb[s], (n, k)), sub_ref(qb[s], (n, k)), sub_ref(sb[s], (n, 1))
            t_t, m_t, i_t = sub_ref(tmp, (n, k)), sub_ref(amax, (n, 1)), sub_ref(inv, (n, 1))
            src = HbmRef(x2.offset + r0 * x2.strides[0] * isz, x2.dtype, (n, k), x2.strides)
            b.emit(DmaLoad(src, x_t, waits=((COMPUTED, t - 1),) if t >= 2 else (), signal=LOADED))
            w = [(LOADED, t + 1)]
            if t >= 2:  # the stores of tile t-2 have read this slot's q and scale buffers
                w += [(QSTORED, t - 1), (SSTORED, t - 1)]
            ops: list[tuple[str, object, tuple, dict]] = [
                ("abs", t_t, (x_t,), {}),
                ("reduce_max", m_t, (t_t,), {}),
                ("maximum", m_t, (m_t, floor), {}),
                ("div", i_t, (qmax, m_t), {}),
                ("div", s_t, (m_t, qmax), {}),
                ("mul", t_t, (x_t, i_t), {}),
            ]
            if fmt == DType.int8:
                ops.append(("round", t_t, (t_t,), {}))
            ops += [("clamp", t_t, (t_t,), {"min": -qmax, "max": qmax}), ("cast", q_t, (t_t,), {"dtype": fmt})]
            for i, (op, dst, srcs, attrs) in enumerate(ops):
                b.emit(VecOp(op, dst, srcs, tuple(attrs.items()), waits=tuple(w) if i == 0 else (),
                             signal=COMPUTED if i == len(ops) - 1 else -1))
            q_dst = HbmRef(q2.offset + r0 * q2.strides[0] * fmt.itemsize, fmt, (n, k), q2.strides)
            s_dst = HbmRef(s2.offset + r0 * s2.strides[0] * 4, F32, (n, 1), s2.strides)
            b.emit(DmaStore(q_t, q_dst, waits=((COMPUTED, t + 1),), signal=QSTORED))
            b.emit(DmaStore(s_t, s_dst, waits=((COMPUTED, t + 1),), signal=SSTORED))
        streams.append(b.finish())
    min_bytes = x_ref.footprint_bytes() + q_ref.numel * fmt.itemsize + s_ref.numel * 4
    return KernelLaunch(ctx.node.name, "norm", ["quantize_rows"], streams, 0, min_bytes, ctx.dtype)


__all__ = ["quantize_rows_kernel"]
