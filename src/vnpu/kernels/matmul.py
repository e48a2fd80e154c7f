"""Batched matmul (with fused epilogue) on the GEMM pipeline."""
from __future__ import annotations

import itertools
import math

import numpy as np

from vnpu.dtypes import PACKED_ELEMENTS, QUANT_MATMUL_ACC, DType
from vnpu.isa.instructions import DmaLoad, HbmRef, VecOp
from vnpu.isa.program import KernelLaunch
from vnpu.kernels.base import CoreBuilder, Expr, KernelContext, KernelError, kernel, sub_ref
from vnpu.kernels.fold_stream import emit_fold_stream
from vnpu.kernels.gemm import GemmChunk, GemmTile, ResidentA, choose_gemm_tiling, emit_gemm
from vnpu.kernels.quantize_rows import mx_quantize_ops
from vnpu.kernels.views import broadcast_to, reshape


F32 = DType.fp32


def _at(ref: HbmRef, idx: tuple[int, ...], r0: int, rn: int, c0: int, cn: int) -> HbmRef:
    """The [rn, cn] block at (r0, c0) of batch element `idx` of a [..., R, C] view."""
    st = ref.strides
    off = sum(i * s for i, s in zip(idx, st)) + r0 * st[-2] + c0 * st[-1]
    return HbmRef(ref.offset + off * ref.dtype.itemsize, ref.dtype, (rn, cn), st[-2:])


def epilogue_of(ctx: KernelContext, n_main: int) -> tuple[Expr, list[HbmRef], list[float | None]]:
    """The node's fused epilogue: its expression and, per extra operand, ref or immediate."""
    out_dt = ctx.outputs[0].dtype
    expr = ctx.node.attrs.get("epilogue") or Expr(1, (), out_dt)
    refs = ctx.inputs[n_main:]
    scalars = ctx.scalars[n_main:]
    return expr, refs, scalars


def _tiles(batch: list[int], m: int, n: int, k: int, tiling, epi: list, out: HbmRef, chunk) -> list[GemmTile]:
    """The output tiles of a (batched) GEMM under `tiling`, each with its K chunks made by
    chunk(batch index, m0, mt, k0, kt, n0, nt) and its epilogue operands' views."""
    tiles = []
    for idx in itertools.product(*(range(d) for d in batch)):
        for m0 in range(0, m, tiling.mt):
            mt = min(tiling.mt, m - m0)
            for n0 in range(0, n, tiling.nt):
                nt = min(tiling.nt, n - n0)
                chunks = [chunk(idx, m0, mt, k0, min(tiling.kt, k - k0), n0, nt) for k0 in range(0, k, tiling.kt)]
                tiles.append(GemmTile(chunks, [_at(e, idx, m0, mt, n0, nt) if e is not None else None for e in epi],
                                      _at(out, idx, m0, mt, n0, nt), mt, nt))
    return tiles


@kernel("matmul")
def matmul_kernel(ctx: KernelContext) -> KernelLaunch:
    if "wq_bits" in ctx.node.attrs:
        return _weight_only(ctx)
    if "mx_block" in ctx.node.attrs:
        return _block_scaled(ctx)
    if "aq_fmt" in ctx.node.attrs:
        return _prologue_quantized(ctx)
    a_ref, b_ref = ctx.inputs[0], ctx.inputs[1]
    out = ctx.outputs[0]
    *batch, m, n = out.shape
    k = a_ref.shape[-1]
    a = broadcast_to(a_ref, tuple(batch) + (m, k))
    b = broadcast_to(b_ref, tuple(batch) + (k, n))
    expr, epi_refs, epi_scalars = epilogue_of(ctx, 2)
    epi = [broadcast_to(r, out.shape) if s is None else None for r, s in zip(epi_refs, epi_scalars)]
    groups = math.prod(batch) if batch else 1
    # int8 / fp8 operands stream in their own format at its matrix rate; others in the program's dtype
    op_dt = a_ref.dtype if a_ref.dtype in QUANT_MATMUL_ACC else ctx.dtype
    if op_dt in QUANT_MATMUL_ACC and not ctx.chip.supports(op_dt):
        raise KernelError(f"matmul {ctx.node.name}: chip {ctx.chip.name} has no {op_dt} matrix rate "
                          f"(its formats: {', '.join(d.value for d in ctx.chip.core.matrix.rate)})")
    if k == 0:  # frontends lower an empty contraction to zeros; the GEMM pipeline needs K >= 1
        raise KernelError(f"matmul {ctx.node.name}: inner dimension is 0 ({a_ref.shape} @ {b_ref.shape})")
    if (ctx.chip.core.matrix.mapping == "fold_stream" and not batch and not expr.steps
            and out.dtype == DType.fp32 and op_dt not in QUANT_MATMUL_ACC):
        return emit_fold_stream(ctx, a, b, out, 2 * m * n * k, (a_ref.numel + b_ref.numel) * ctx.dtype.itemsize
                                + out.numel * out.dtype.itemsize)
    n_temps = max(len(expr.steps) - 1, 0)
    tiling = choose_gemm_tiling(ctx.chip, groups, m, k, n, op_dt, out.dtype.itemsize,
                                sum(e is not None for e in epi), n_temps)
    tiles = _tiles(batch, m, n, k, tiling, epi, out, lambda idx, m0, mt, k0, kt, n0, nt: GemmChunk(
        _at(a, idx, m0, mt, k0, kt), _at(b, idx, k0, kt, n0, nt), mt, kt, nt))
    flops = 2 * groups * m * n * k
    isz = op_dt.itemsize
    min_bytes = (a_ref.numel + b_ref.numel) * isz + out.numel * out.dtype.itemsize + sum(
        r.footprint_bytes() for r, s in zip(epi_refs, epi_scalars) if s is None)
    return emit_gemm(ctx, tiles, tiling, expr, epi_scalars, "matmul", flops, min_bytes, op_dt)


def _weight_only(ctx: KernelContext) -> KernelLaunch:
    """a @ dequant(Wq): the GEMM pipeline with B streamed quantized from HBM (int8, or int4 two
    per byte) with its group scales; on a chip whose PEs hold packed weights (packed_weight_bits)
    the array takes them as they are, otherwise the vector engine dequantizes each chunk into the
    B tile (emit_gemm's weight_only mode). HBM traffic is the packed bytes; the array runs in the
    program's dtype. K chunks are whole groups (or, one group per channel, any part of it)."""
    a_ref, q_ref, s_ref = ctx.inputs[0], ctx.inputs[1], ctx.inputs[2]
    out = ctx.outputs[0]
    bits, group = int(ctx.node.attrs["wq_bits"]), int(ctx.node.attrs["wq_group"])
    pack = 8 // bits
    *batch, m, n = out.shape
    k = a_ref.shape[-1]
    a = broadcast_to(a_ref, tuple(batch) + (m, k))
    q = broadcast_to(q_ref, tuple(batch) + (k // pack, n))
    sc = broadcast_to(s_ref, tuple(batch) + (k // group, n))
    expr, epi_refs, epi_scalars = epilogue_of(ctx, 3)
    epi = [broadcast_to(r, out.shape) if s is None else None for r, s in zip(epi_refs, epi_scalars)]
    groups = math.prod(batch) if batch else 1
    dt = ctx.dtype
    b_stage = 1 / pack + 4 / group  # staged bytes per weight: the quantized value and its share of a scale
    n_temps = max(len(expr.steps) - 1, 0)
    in_pe = bits in ctx.chip.core.matrix.packed_weight_bits  # the PEs hold the packed weights: no vector dequant
    tiling = choose_gemm_tiling(ctx.chip, groups, m, k, n, dt, out.dtype.itemsize, sum(e is not None for e in epi),
                                n_temps, k_quantum=group if group < k else pack, b_scale=b_stage / dt.itemsize,
                                b_stage=b_stage,  # chunks are whole groups (per-channel: one group, any chunk)
                                weight_pack=16 // bits if in_pe else 1)
    tiles = _tiles(batch, m, n, k, tiling, epi, out, lambda idx, m0, mt, k0, kt, n0, nt: GemmChunk(
        _at(a, idx, m0, mt, k0, kt), _at(q, idx, k0 // pack, kt // pack, n0, nt), mt, kt, nt,
        b_scale=_at(sc, idx, k0 // group, -(-kt // group), n0, nt)))
    flops = 2 * groups * m * n * k
    min_bytes = (a_ref.numel * a_ref.dtype.itemsize + q_ref.numel + s_ref.numel * 4 + out.numel * out.dtype.itemsize
                 + sum(r.footprint_bytes() for r, s in zip(epi_refs, epi_scalars) if s is None))
    return emit_gemm(ctx, tiles, tiling, expr, epi_scalars, "matmul", flops, min_bytes, dt, weight_only=(bits, group),
                     packed_weights=in_pe)


def _block_scaled(ctx: KernelContext) -> KernelLaunch:
    """OCP MX: xq [..., M, K] @ wq [K, N] in fp8 e4m3 or packed fp4 (pairs along K) with E8M0
    scales per block of K on both; the array runs the element format at its rate and applies the
    scales per block (isa MatMul.block). K chunks are whole blocks; HBM traffic is the packed
    bytes plus one scale byte per block."""
    a_ref, b_ref, sa_ref, sb_ref = ctx.inputs[:4]
    out = ctx.outputs[0]
    blk = int(ctx.node.attrs["mx_block"])
    fmt = a_ref.dtype
    if fmt not in ctx.chip.core.matrix.block_scaled:
        raise KernelError(f"matmul {ctx.node.name}: chip {ctx.chip.name} has no block-scaled (MX) {fmt} matrix "
                          f"format (its block-scaled formats: {', '.join(d.value for d in ctx.chip.core.matrix.block_scaled) or 'none'})")
    pack = PACKED_ELEMENTS.get(fmt, 1)
    *batch, m, n = out.shape
    k = a_ref.shape[-1] * pack
    a = broadcast_to(a_ref, tuple(batch) + (m, k // pack))
    b = broadcast_to(b_ref, tuple(batch) + (k // pack, n))
    sa = broadcast_to(sa_ref, tuple(batch) + (m, k // blk))
    sb = broadcast_to(sb_ref, tuple(batch) + (k // blk, n))
    expr, epi_refs, epi_scalars = epilogue_of(ctx, 4)
    epi = [broadcast_to(r, out.shape) if s is None else None for r, s in zip(epi_refs, epi_scalars)]
    groups = math.prod(batch) if batch else 1
    per_elem = 1 / pack + 1 / blk  # HBM bytes per operand element: the packed value and its share of a scale
    b_traffic = _b_row_traffic(ctx.chip.hbm.burst_bytes, fmt, blk)
    tiling = choose_gemm_tiling(ctx.chip, groups, m, k, n, fmt, out.dtype.itemsize, sum(e is not None for e in epi),
                                max(len(expr.steps) - 1, 0), k_quantum=blk, a_scale=per_elem, b_scale=b_traffic,
                                ab_scales=1 / blk)
    tiles = _tiles(batch, m, n, k, tiling, epi, out, lambda idx, m0, mt, k0, kt, n0, nt: GemmChunk(
        _at(a, idx, m0, mt, k0 // pack, kt // pack), _at(b, idx, k0 // pack, kt // pack, n0, nt), mt, kt, nt,
        b_scale=_at(sb, idx, k0 // blk, kt // blk, n0, nt), a_scale=_at(sa, idx, m0, mt, k0 // blk, kt // blk)))
    flops = 2 * groups * m * n * k
    min_bytes = (a_ref.numel + b_ref.numel + sa_ref.numel + sb_ref.numel + out.numel * out.dtype.itemsize
                 + sum(r.footprint_bytes() for r, s in zip(epi_refs, epi_scalars) if s is None))
    return emit_gemm(ctx, tiles, tiling, expr, epi_scalars, "matmul", flops, min_bytes, fmt, mx_block=blk)


def _b_row_traffic(burst: int, fmt: DType, blk: int):
    """HBM bytes per staged B element of an [kt, nt] weight tile in `fmt` (with E8M0 scales per
    `blk` rows when blk > 0): rows narrower than a burst cost a whole burst."""
    pack = PACKED_ELEMENTS.get(fmt, 1)

    def traffic(nt: int) -> float:
        data = max(1.0, burst * pack / (nt * fmt.itemsize)) / pack
        return data + (max(1.0, burst / nt) / blk if blk else 0.0)
    return traffic


def prologue_reserved_bytes(rows: int, k: int, in_dt: DType, fmt: DType) -> int:
    """Scratchpad bytes a prologue-quantized GEMM keeps resident per core: the raw rows, their
    quantized copy and scales, an fp32 working tile, the row statistics."""
    pack = PACKED_ELEMENTS.get(fmt, 1)
    return rows * k * (in_dt.itemsize + 4) + rows * (k // pack) + rows * (k // 32 + 1) + 12 * rows + 64 * 64


def _prologue_quantized(ctx: KernelContext) -> KernelLaunch:
    """A decode-sized a @ Wq whose activation quantization runs in the GEMM's prologue instead of a
    quantize_rows launch: every core loads all M rows of a (K chunk by K chunk), quantizes them in
    its scratchpad — per token (amax over the row, q = cast(clamp(round(x * qmax / amax)))), or per
    OCP MX block of 32 (E8M0 scales) — and its pipeline then streams only the weight. Per token, the
    accumulator is multiplied by each row's amax / qmax before the epilogue (which applies the
    weight's scales); MX scales apply in the array."""
    attrs = ctx.node.attrs
    fmt, qmax, blk = DType(attrs["aq_fmt"]), float(attrs["aq_qmax"]), int(attrs.get("aq_block", 0))
    a_ref, w_ref = ctx.inputs[0], ctx.inputs[1]
    sw_ref = ctx.inputs[2] if blk else None
    out = ctx.outputs[0]
    chip = ctx.chip
    pack = PACKED_ELEMENTS.get(fmt, 1)
    k, n = a_ref.shape[-1], w_ref.shape[1]
    rows = math.prod(a_ref.shape[:-1])
    a2, out2 = reshape(a_ref, (rows, k)), reshape(out, (rows, n))
    if a2 is None or out2 is None:
        raise KernelError(f"matmul {ctx.node.name}: rows of {a_ref.shape} are not one strided 2-D view")
    if not chip.supports(fmt) or (blk and fmt not in chip.core.matrix.block_scaled):
        raise KernelError(f"matmul {ctx.node.name}: chip {chip.name} has no {'block-scaled ' if blk else ''}{fmt} matrix format")
    expr, epi_refs, epi_scalars = epilogue_of(ctx, 3 if blk else 2)
    epi = [reshape(broadcast_to(r, out.shape), (rows, n)) if s is None else None for r, s in zip(epi_refs, epi_scalars)]
    reserved = prologue_reserved_bytes(rows, k, a_ref.dtype, fmt)
    b_traffic = _b_row_traffic(chip.hbm.burst_bytes, fmt, blk)
    n_temps = max(len(expr.steps) - 1, 0)
    tiling = choose_gemm_tiling(chip, 1, rows, k, n, fmt, out.dtype.itemsize, sum(e is not None for e in epi),
                                n_temps + (0 if blk else 1), k_quantum=blk or 1, a_scale=0.0, b_scale=b_traffic,
                                ab_scales=1 / blk if blk else 0.0, m_cands=[rows], reserved_bytes=reserved)
    if tiling.mt < rows:
        raise KernelError(f"matmul {ctx.node.name}: {rows} rows do not fit one tile of a prologue-quantized GEMM")
    chunks = [(k0, min(tiling.kt, k - k0)) for k0 in range(0, k, tiling.kt)]
    wq = broadcast_to(w_ref, (k // pack, n))
    sw = broadcast_to(sw_ref, (k // blk, n)) if blk else None
    tiles = _tiles([], rows, n, k, tiling, epi, out2, lambda idx, m0, mt, k0, kt, n0, nt: GemmChunk(
        _at(a2, idx, m0, mt, k0, kt), _at(wq, idx, k0 // pack, kt // pack, n0, nt), mt, kt, nt,
        b_scale=_at(sw, idx, k0 // blk, kt // blk, n0, nt) if sw is not None else None))
    floor = float(np.finfo(np.float32).tiny) * qmax

    def prologue(b: CoreBuilder) -> ResidentA:
        raw = [b.alloc(a_ref.dtype, (rows, kc)) for _, kc in chunks]
        q = [b.alloc(fmt, (rows, kc // pack)) for _, kc in chunks]
        tmp = b.alloc(F32, (rows, tiling.kt))
        LOADED, READY = b.sem(), b.sem()
        for (k0, kc), r in zip(chunks, raw):
            b.emit(DmaLoad(_at(a2, (), 0, rows, k0, kc), r, signal=LOADED))
        ops: list = []
        if blk:  # each chunk's blocks are independent
            qs = [b.alloc(DType.e8m0, (rows, kc // blk)) for _, kc in chunks]
            amax = b.alloc(F32, (rows, tiling.kt // blk))
            for (k0, kc), r, qc, sc in zip(chunks, raw, q, qs):
                ops += mx_quantize_ops(fmt, qmax, int(attrs["aq_emax"]), rows, kc, blk, r, qc, sc,
                                       sub_ref(tmp, (rows, kc)), sub_ref(amax, (rows, kc // blk)))
            row_scale = None
        else:  # per token: the row's amax over every chunk, then one scale per row
            amax, part, inv, row_scale = (b.alloc(F32, (rows, 1)) for _ in range(4))
            qs = None
            for i, ((k0, kc), r) in enumerate(zip(chunks, raw)):
                t = sub_ref(tmp, (rows, kc))
                ops += [("abs", t, (r,), {}, ()), ("reduce_max", amax if i == 0 else part, (t,), {}, ())]
                if i:
                    ops.append(("maximum", amax, (amax, part), {}, ()))
            ops += [("maximum", amax, (amax, floor), {}, ()), ("div", inv, (qmax, amax), {}, ()),
                    ("div", row_scale, (amax, qmax), {}, ())]
            for (k0, kc), r, qc in zip(chunks, raw, q):
                t = sub_ref(tmp, (rows, kc))
                ops.append(("mul", t, (r, inv), {}, ()))
                if fmt == DType.int8:
                    ops.append(("round", t, (t,), {}, ()))
                ops += [("clamp", t, (t,), {"min": -qmax, "max": qmax}, ()), ("cast", qc, (t,), {"dtype": fmt}, ())]
        for i, (op, dst, srcs, at, views) in enumerate(ops):
            b.emit(VecOp(op, dst, srcs, tuple(at.items()), views,
                         waits=((LOADED, len(chunks)),) if i == 0 else (), signal=READY if i == len(ops) - 1 else -1))
        return ResidentA(q, qs, READY, row_scale)

    flops = 2 * rows * n * k
    min_bytes = (a_ref.footprint_bytes() + w_ref.numel * fmt.itemsize + (sw_ref.numel if sw_ref is not None else 0)
                 + out.numel * out.dtype.itemsize + sum(r.footprint_bytes() for r, s in zip(epi_refs, epi_scalars) if s is None))
    return emit_gemm(ctx, tiles, tiling, expr, epi_scalars, "matmul", flops, min_bytes, fmt, mx_block=blk,
                     resident_a=prologue)


__all__ = ["matmul_kernel", "epilogue_of", "prologue_reserved_bytes"]
