"""Dynamic per-row (per-token) quantization in one streaming kernel: x [..., K] float ->
q [..., K] int8 / fp8 and the row's dequantization scale [..., 1] fp32.

Per tile of rows, on the vector engine in fp32 (the formula compiler/quantize.py documents):
amax = max(max|x|, floor); inv = qmax / amax; scale = amax / qmax; q = cast(clamp(round(x * inv)))
(no round for fp8: the cast rounds to nearest even; the clamp saturates first). x is read once;
two outputs are stored per tile. Tiles are double-buffered: the loads of tile t+1 and the stores
of tile t-1 overlap the vector work of tile t.

With attrs["block"] (OCP MX), each row splits into blocks of `block` elements, each with its
E8M0 scale [..., K / block]: amax per block; scale = 2^(floor(log2 amax) - attrs["emax"]) (vector op
mx_scale); q = cast(clamp(x / scale, +-qmax)), the division exact (a power of two); fp4 values
are rounded to e2m1 and packed two per byte along K (vector op pack_fp4) -> q [..., K / 2].
"""
from __future__ import annotations

import math

import numpy as np

from vnpu.dtypes import PACKED_ELEMENTS, DType
from vnpu.isa.instructions import DmaLoad, DmaStore, HbmRef, SramRef, VecOp
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
    blk = int(a.get("block", 0))
    pack = PACKED_ELEMENTS.get(fmt, 1)
    k = x_ref.shape[-1]
    kb = k // blk if blk else 1  # scales per row
    rows = math.prod(x_ref.shape[:-1])
    x2 = reshape(x_ref, (rows, k))
    q2 = reshape(q_ref, (rows, k // pack))
    s2 = reshape(s_ref, (rows, kb))
    if x2 is None or q2 is None or s2 is None:
        raise KernelError(f"quantize_rows {ctx.node.name}: rows of {x_ref.shape} are not one strided 2-D view")
    isz = x_ref.dtype.itemsize
    s_dt = s_ref.dtype
    per_row = (2 * aligned(k * isz) + aligned(4 * k) + 2 * aligned(k // pack * fmt.itemsize)
               + 2 * aligned(kb * s_dt.itemsize) + 2 * aligned(4 * kb) + 64)
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
        qb = [b.alloc(fmt, (rt, k // pack)) for _ in range(2)]
        sb = [b.alloc(s_dt, (rt, kb)) for _ in range(2)]
        tmp = b.alloc(F32, (rt, k))
        amax = b.alloc(F32, (rt, kb))
        inv = b.alloc(F32, (rt, kb))
        LOADED, COMPUTED, QSTORED, SSTORED = (b.sem() for _ in range(4))
        for t, (r0, n) in enumerate(mine):
            s = t % 2
            x_t, q_t, s_t = sub_ref(xb[s], (n, k)), sub_ref(qb[s], (n, k // pack)), sub_ref(sb[s], (n, kb))
            t_t, m_t, i_t = sub_ref(tmp, (n, k)), sub_ref(amax, (n, kb)), sub_ref(inv, (n, kb))
            src = HbmRef(x2.offset + r0 * x2.strides[0] * isz, x2.dtype, (n, k), x2.strides)
            b.emit(DmaLoad(src, x_t, waits=((COMPUTED, t - 1),) if t >= 2 else (), signal=LOADED))
            w = [(LOADED, t + 1)]
            if t >= 2:  # the stores of tile t-2 have read this slot's q and scale buffers
                w += [(QSTORED, t - 1), (SSTORED, t - 1)]
            if blk:
                ops = mx_quantize_ops(fmt, qmax, int(a["emax"]), n, k, blk, x_t, q_t, s_t, t_t, m_t)
            else:
                ops = row_quantize_ops(fmt, qmax, floor, x_t, q_t, s_t, t_t, m_t, i_t)
            for i, (op, dst, srcs, attrs, views) in enumerate(ops):
                b.emit(VecOp(op, dst, srcs, tuple(attrs.items()), views, waits=tuple(w) if i == 0 else (),
                             signal=COMPUTED if i == len(ops) - 1 else -1))
            q_dst = HbmRef(q2.offset + r0 * q2.strides[0] * fmt.itemsize, fmt, (n, k // pack), q2.strides)
            s_dst = HbmRef(s2.offset + r0 * s2.strides[0] * s_dt.itemsize, s_dt, (n, kb), s2.strides)
            b.emit(DmaStore(q_t, q_dst, waits=((COMPUTED, t + 1),), signal=QSTORED))
            b.emit(DmaStore(s_t, s_dst, waits=((COMPUTED, t + 1),), signal=SSTORED))
        streams.append(b.finish())
    min_bytes = x_ref.footprint_bytes() + q_ref.numel * fmt.itemsize + s_ref.numel * s_dt.itemsize
    return KernelLaunch(ctx.node.name, "norm", ["quantize_rows"], streams, 0, min_bytes, ctx.dtype)


def row_quantize_ops(fmt: DType, qmax: float, floor: float, x_t: SramRef, q_t: SramRef, s_t: SramRef, t_t: SramRef,
             m_t: SramRef, i_t: SramRef) -> list:
    """One scale per row: amax, inv = qmax / amax, scale = amax / qmax, q = cast(clamp(round(x * inv)))."""
    ops: list = [
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
    return [(op, dst, srcs, attrs, ()) for op, dst, srcs, attrs in ops]


def mx_quantize_ops(fmt: DType, qmax: float, emax: int, n: int, k: int, blk: int, x_t: SramRef, q_t: SramRef, s_t: SramRef,
            t_t: SramRef, m_t: SramRef) -> list:
    """One E8M0 scale per block of `blk` elements: the tiles seen as [n, K / blk, blk] blocks."""
    kb = k // blk
    blocks, per_block = (n, kb, blk), (n, kb, 1)
    m3, s3, t3 = sub_ref(m_t, per_block), sub_ref(s_t, per_block), sub_ref(t_t, blocks)
    last = ("pack_fp4", q_t, (t_t,), {}) if fmt == DType.fp4x2_e2m1 else ("cast", q_t, (t_t,), {"dtype": fmt})
    return [
        ("abs", t_t, (x_t,), {}, ()),
        ("reduce_max", m3, (t_t,), {}, (blocks,)),
        ("mx_scale", s3, (m3,), {"emax": emax}, ()),
        ("div", t3, (x_t, s3), {}, (blocks, per_block)),
        ("clamp", t_t, (t_t,), {"min": -qmax, "max": qmax}, ()),
        (*last, ()),
    ]


__all__ = ["quantize_rows_kernel", "row_quantize_ops", "mx_quantize_ops"]
