"""2-D convolution: implicit GEMM on the systolic array, depthwise on the vector engine.

The input arrives already padded (the legalize pass inserts an explicit `pad`), so the
kernel only sees stride, dilation and groups.

Implicit GEMM, per group:  out[co, pixel] = W[co, (c, i, j)] @ im2col[(c, i, j), pixel]
  M = output channels, K = input channels x kh x kw, N = output pixels (n, oh, ow).
A pixel tile is a box of output pixels: whole images, a band of whole output rows, or a
run of one row. Its im2col operand is ONE strided DMA view of the padded input,
  [c_t, kh, kw, n_t, oh_t, ow_t] with strides [sC, dh*sH, dw*sW, sN, sh*sH, sw*sW],
whose row-major flattening is the [kt, nt] tile; the DMA engine reads the window box once
and expands the windows into the scratchpad (the load's HBM traffic is the box's).
Output channels on the M side keep the output and residual tiles [co_t, (n, oh, ow)] in
NCHW order, so their DMA runs are whole output rows rather than single elements, and
per-channel epilogue operands (bias, folded BatchNorm) load as [co_t, 1] columns that the
vector engine broadcasts. The weight tile is a transposed view of the [groups, K, O/g]
constant (or a plain view of an OIHW tensor), read as rows of co_t output channels.

Depthwise (groups == C_in) has K = kh*kw and one output channel per group: hopeless on a
systolic array, so it streams on the vector engine: window tile [c_t, oh_t, ow_t, kh*kw]
x per-channel weights [c_t, 1, 1, kh*kw] -> reduce_sum over the taps -> epilogue -> cast.
"""
from __future__ import annotations

import functools
import math
from collections import Counter

from vnpu.chip.schema import Chip
from vnpu.dtypes import QUANT_MATMUL_ACC, DType
from vnpu.isa.instructions import HbmRef, SramRef, VecOp
from vnpu.isa.program import KernelLaunch
from vnpu.kernels.base import KernelContext, KernelError, emit_expr, expr_temps, kernel, sub_ref
from vnpu.kernels.copy import read_traffic
from vnpu.kernels.gemm import GemmChunk, GemmTile, choose_gemm_tiling, emit_gemm
from vnpu.kernels.matmul import epilogue_of
from vnpu.kernels.stream import StreamTile, box_tiles, emit_streaming, tile_budget
from vnpu.kernels.views import broadcast_to


# -- shared by conv2d and pool2d ------------------------------------------------------------
def touched(start: int, count: int, stride: int, k: int, dil: int) -> list[int]:
    """Input indices read by `count` outputs from output index `start`."""
    return sorted({(start + o) * stride + i * dil for o in range(count) for i in range(k)})


def window_traffic(chip: Chip, x: HbmRef, lead: list[tuple[int, int]], rows: list[int], cols: list[int]) -> int:
    """HBM bytes to read a window box once: the `lead` (size, stride) dims (images, channels)
    times the touched input rows times the span of touched columns (bursts cover the skipped
    columns of a strided window anyway). Rows are read either as runs of consecutive touched
    rows or, when cheaper (short rows cost a whole burst each), as one dense box."""
    if not rows or not cols:
        return 0
    sH, sW = x.strides[2], x.strides[3]
    span = cols[-1] - cols[0] + 1

    def boxed(length: int) -> int:
        ref = HbmRef(0, x.dtype, tuple(d for d, _ in lead) + (length, span), tuple(s for _, s in lead) + (sH, sW))
        return read_traffic(chip, ref)

    runs: Counter[int] = Counter()
    r0 = prev = rows[0]
    for r in rows[1:]:
        if r != prev + 1:
            runs[prev - r0 + 1] += 1
            r0 = r
        prev = r
    runs[prev - r0 + 1] += 1
    sparse = sum(cnt * boxed(length) for length, cnt in runs.items())
    return sparse if len(runs) == 1 else min(sparse, boxed(rows[-1] - rows[0] + 1))


def pixel_shape(n: int, oh: int, ow: int, target: int) -> tuple[int, int, int]:
    """A box of about `target` output pixels: whole images, a band of whole rows, or part of a
    row, balanced so that the edge tiles are not slivers."""
    if target >= oh * ow:
        nt = min(n, target // (oh * ow))
        return math.ceil(n / math.ceil(n / nt)), oh, ow
    if target >= ow:
        rt = target // ow
        return 1, math.ceil(oh / math.ceil(oh / rt)), ow
    return 1, 1, math.ceil(ow / math.ceil(ow / target))


def pixel_tiles(n: int, oh: int, ow: int, shape: tuple[int, int, int]) -> list[tuple[int, int, int, int, int, int]]:
    """(n0, n_t, oh0, oh_t, ow0, ow_t) boxes covering the output pixels."""
    tn, th, tw = shape
    return [(n0, min(tn, n - n0), h0, min(th, oh - h0), w0, min(tw, ow - w0))
            for n0 in range(0, n, tn) for h0 in range(0, oh, th) for w0 in range(0, ow, tw)]


def _elem_off(ref: HbmRef, idx: tuple[int, ...]) -> int:
    return ref.offset + sum(i * s for i, s in zip(idx, ref.strides)) * ref.dtype.itemsize


def _cnhw(strides: tuple[int, ...]) -> tuple[int, ...]:
    """NCHW strides reordered for a [channels, images, rows, cols] tile view."""
    return (strides[1], strides[0], strides[2], strides[3])


def _check_attrs(ctx: KernelContext) -> tuple[int, int, int, int]:
    a = ctx.node.attrs
    (pt, pb), (pl, pr) = a.get("padding", ((0, 0), (0, 0)))
    if pt or pb or pl or pr:
        raise KernelError(f"{ctx.node.name}: conv2d/pool2d padding must be made explicit by legalize()")
    sh, sw = a["stride"]
    dh, dw = a.get("dilation", (1, 1))
    return sh, sw, dh, dw


# -- conv2d ------------------------------------------------------------------------------------
@kernel("conv2d")
def conv2d_kernel(ctx: KernelContext) -> KernelLaunch:
    x, w = ctx.inputs[0], ctx.inputs[1]
    out = ctx.outputs[0]
    a = ctx.node.attrs
    sh, sw, dh, dw = _check_attrs(ctx)
    groups = a.get("groups", 1)
    gkn = a.get("weight_gkn")
    o_ch, cg, kh, kw = tuple(gkn) if gkn else w.shape
    n, c_in, _, _ = x.shape
    _, _, oh, ow = out.shape
    if c_in != cg * groups or o_ch % groups:
        raise KernelError(f"{ctx.node.name}: channels {c_in} / {o_ch} do not split into {groups} groups")
    if groups > 1 and cg == 1:
        return _depthwise(ctx, groups, o_ch // groups, kh, kw, sh, sw, dh, dw, gkn is not None)
    og = o_ch // groups
    k_all = cg * kh * kw
    khw = kh * kw
    dt = x.dtype if x.dtype in QUANT_MATMUL_ACC else ctx.dtype  # int8 / fp8 operands at their format's rate
    if dt in QUANT_MATMUL_ACC and not ctx.chip.supports(dt):
        raise KernelError(f"conv2d {ctx.node.name}: chip {ctx.chip.name} has no {dt} matrix rate")
    expr, epi_refs, epi_scalars = epilogue_of(ctx, 2)
    epi = [broadcast_to(r, out.shape) if s is None else None for r, s in zip(epi_refs, epi_scalars)]
    # an operand constant over all output pixels (bias, BatchNorm) loads as a [co_t, 1] column
    compact_pix = [e is not None and all(e.strides[i] == 0 or out.shape[i] == 1 for i in (0, 2, 3)) for e in epi]
    compact_co = [e is not None and (e.strides[1] == 0 or out.shape[1] == 1) for e in epi]
    n_full = sum(e is not None and not cp and not cc for e, cp, cc in zip(epi, compact_pix, compact_co))
    n_temps = max(len(expr.steps) - 1, 0)

    shapes: dict[int, tuple[int, int, int]] = {}
    for target in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096):
        s = pixel_shape(n, oh, ow, target)
        shapes.setdefault(math.prod(s), s)

    def n_tiles(nt: int) -> int:
        tn, th, tw = shapes[nt]
        return math.ceil(n / tn) * math.ceil(oh / th) * math.ceil(ow / tw)

    ct_probe = min(cg, 16)

    @functools.cache
    def b_scale(nt: int) -> float:  # HBM bytes of the window box per scratchpad byte of the im2col tile
        tn, th, tw = shapes[nt]
        rows = [r for r in touched(0, th, sh, kh, dh) if r < x.shape[2]]
        cols = [c for c in touched(0, tw, sw, kw, dw) if c < x.shape[3]]
        box = window_traffic(ctx.chip, x, [(tn, x.strides[0]), (ct_probe, x.strides[1])], rows, cols)
        return box / (ct_probe * khw * tn * th * tw * x.dtype.itemsize)

    @functools.cache
    def a_scale(mt: int) -> float:  # the weight tile is read as kt rows of mt output channels
        if gkn:
            ref = HbmRef(0, w.dtype, (mt, 64), (w.strides[2], w.strides[1]))
        else:
            ref = HbmRef(0, w.dtype, (mt, 64), (w.strides[0], 1))
        return read_traffic(ctx.chip, ref) / (mt * 64 * w.dtype.itemsize)

    tiling = choose_gemm_tiling(ctx.chip, groups, og, k_all, n * oh * ow, dt, out.dtype.itemsize, n_full, n_temps,
                                k_quantum=khw, n_cands=list(shapes), n_tiles=n_tiles,
                                a_scale=a_scale, b_scale=b_scale, pipeline_model=True)
    ct_max = max(1, tiling.kt // khw)
    pix = pixel_tiles(n, oh, ow, shapes[tiling.nt])
    sN, sC, sH, sW = x.strides
    tiles: list[GemmTile] = []
    b_cache: dict[tuple, int] = {}
    for g in range(groups):
        for co0 in range(0, og, tiling.mt):
            mt = min(tiling.mt, og - co0)
            oc0 = g * og + co0
            for n0, tn, h0, th, w0, tw in pix:
                nt = tn * th * tw
                chunks = []
                rows = touched(h0, th, sh, kh, dh)
                cols = touched(w0, tw, sw, kw, dw)
                for c0 in range(0, cg, ct_max):
                    ct = min(ct_max, cg - c0)
                    kt = ct * khw
                    ic0 = g * cg + c0
                    b_ref = HbmRef(_elem_off(x, (n0, ic0, h0 * sh, w0 * sw)), x.dtype, (ct, kh, kw, tn, th, tw),
                                   (sC, dh * sH, dw * sW, sN, sh * sH, sw * sW))
                    key = (ct, tn, tuple(r - rows[0] for r in rows), cols[-1] - cols[0])
                    if key not in b_cache:
                        b_cache[key] = window_traffic(ctx.chip, x, [(tn, sN), (ct, sC)], rows, cols)
                    if gkn:
                        sg, sk, so = w.strides
                        a_ref = HbmRef(w.offset + (g * sg + c0 * khw * sk + co0 * so) * w.dtype.itemsize, w.dtype,
                                       (mt, kt), (so, sk))
                    else:
                        a_ref = HbmRef(_elem_off(w, (oc0, c0, 0, 0)), w.dtype, (mt, ct, kh, kw), w.strides)
                    chunks.append(GemmChunk(a_ref, b_ref, mt, kt, nt, a_bytes=read_traffic(ctx.chip, a_ref),
                                            b_bytes=b_cache[key]))
                epis: list[HbmRef | None] = []
                eshapes: list[tuple[int, int] | None] = []
                for e, cp, cc in zip(epi, compact_pix, compact_co):
                    if e is None:
                        epis.append(None)
                        eshapes.append(None)
                        continue
                    off = _elem_off(e, (n0, oc0, h0, w0))
                    rows_n = 1 if cc else mt
                    if cp:
                        epis.append(HbmRef(off, e.dtype, (rows_n, 1), (e.strides[1], 1)))
                        eshapes.append((rows_n, 1))
                    else:
                        epis.append(HbmRef(off, e.dtype, (rows_n, tn, th, tw), _cnhw(e.strides)))
                        eshapes.append((rows_n, nt))
                o_ref = HbmRef(_elem_off(out, (n0, oc0, h0, w0)), out.dtype, (mt, tn, th, tw), _cnhw(out.strides))
                tiles.append(GemmTile(chunks, epis, o_ref, mt, nt, eshapes))
    flops = 2 * n * o_ch * oh * ow * cg * khw
    min_bytes = (x.footprint_bytes() + w.numel * w.dtype.itemsize + out.numel * out.dtype.itemsize
                 + sum(r.footprint_bytes() for r, s in zip(epi_refs, epi_scalars) if s is None))
    return emit_gemm(ctx, tiles, tiling, expr, epi_scalars, "conv", flops, min_bytes, dt)


def _depthwise(ctx: KernelContext, groups: int, mult: int, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int,
               const_w: bool) -> KernelLaunch:
    """groups == C_in: per output channel o (input channel o // mult), sum over kh*kw taps."""
    x, w = ctx.inputs[0], ctx.inputs[1]
    out = ctx.outputs[0]
    n, _, _, _ = x.shape
    _, o_ch, oh, ow = out.shape
    khw = kh * kw
    expr, epi_refs, epi_scalars = epilogue_of(ctx, 2)
    epi = [broadcast_to(r, out.shape) if s is None else None for r, s in zip(epi_refs, epi_scalars)]
    n_temps = max(len(expr.steps) - 1, 0)
    isz = x.dtype.itemsize
    per_elem = (2 * khw * isz + 4 * khw + 4 + 2 * out.dtype.itemsize + 4 * n_temps
                + sum(2 * e.dtype.itemsize for e in epi if e is not None and (e.strides[2] or e.strides[3])))
    budget = tile_budget(ctx, per_elem, out.numel)
    sN, sC, sH, sW = x.strides
    tiles = []
    cache: dict[tuple, int] = {}
    # boxes over (image, group, oh, ow); each group gives `mult` output channels
    for (n0, g0, h0, w0), (tn, gt, th, tw) in box_tiles((n, groups, oh, ow), max(1, budget // mult)):
        ct = gt * mult
        oc0 = g0 * mult
        win = HbmRef(_elem_off(x, (n0, g0, h0 * sh, w0 * sw)), x.dtype, (tn, gt, mult, th, tw, kh, kw),
                     (sN, sC, 0, sh * sH, sw * sW, dh * sH, dw * sW))
        rows = touched(h0, th, sh, kh, dh)
        cols = touched(w0, tw, sw, kw, dw)
        key = (tn, gt, tuple(r - rows[0] for r in rows), cols[-1] - cols[0])
        if key not in cache:
            cache[key] = window_traffic(ctx.chip, x, [(tn, sN), (gt, sC)], rows, cols)
        if const_w:  # [groups, kh*kw, mult]
            sg, sk, so = w.strides
            wref = HbmRef(w.offset + g0 * sg * w.dtype.itemsize, w.dtype, (gt, mult, khw), (sg, so, sk))
        else:  # OIHW [O, 1, kh, kw]
            ws = w.strides
            wref = HbmRef(_elem_off(w, (oc0, 0, 0, 0)), w.dtype, (ct, kh, kw), (ws[0], ws[2], ws[3]))
        loads = [(win, (tn, ct, th, tw, khw)), (wref, (1, ct, 1, 1, khw))]
        nbytes = [cache[key], read_traffic(ctx.chip, wref)]
        for e in epi:
            if e is None:
                continue
            shp = tuple(1 if e.strides[i] == 0 else d for i, d in enumerate((tn, ct, th, tw)))
            ref = HbmRef(_elem_off(e, (n0, oc0, h0, w0)), e.dtype, shp, e.strides)
            loads.append((ref, shp))
            nbytes.append(read_traffic(ctx.chip, ref))
        o_ref = HbmRef(_elem_off(out, (n0, oc0, h0, w0)), out.dtype, (tn, ct, th, tw), out.strides)
        tiles.append(StreamTile(loads, o_ref, (tn, ct, th, tw), nbytes))
    bufs: dict[str, object] = {}

    def setup(b) -> None:
        mx = max((t.out_shape for t in tiles), key=math.prod)
        bufs["prod"] = b.alloc(DType.fp32, mx + (khw,))
        bufs["red"] = b.alloc(DType.fp32, mx + (1,))
        bufs["temps"] = expr_temps(b, expr, mx)

    def compute(b, loaded: list[SramRef], out_t: SramRef, tile: StreamTile, waits: tuple, signal: int) -> None:
        shape = out_t.shape
        prod = sub_ref(bufs["prod"], shape + (khw,))
        red = sub_ref(bufs["red"], shape + (1,))
        b.emit(VecOp("mul", prod, (loaded[0], loaded[1]), waits=waits))
        b.emit(VecOp("reduce_sum", red, (prod,)))
        it = iter(loaded[2:])
        operands = [sub_ref(red, shape)] + [next(it) if s is None else s for s in epi_scalars]
        emit_expr(b, expr, operands, out_t, bufs["temps"], signal=signal)

    flops = 2 * n * o_ch * oh * ow * khw
    min_bytes = (x.footprint_bytes() + w.numel * w.dtype.itemsize + out.numel * out.dtype.itemsize
                 + sum(r.footprint_bytes() for r, s in zip(epi_refs, epi_scalars) if s is None))
    return emit_streaming(ctx, tiles, compute, setup, "conv", ["conv2d", "depthwise"] + expr.ops, flops, min_bytes)
