"""The GEMM pipeline shared by matmul and convolution, and its tiling cost model.

Per core, for each output tile: stream K-chunks of A and B into double-buffered
scratchpad tiles (DMA in), accumulate on the systolic array into a double-buffered fp32
accumulator (matrix), apply the fused epilogue and cast (vector), store (DMA out).
Semaphores let the loads of chunk j+1 overlap the matmul of chunk j, and the epilogue
and store of tile t overlap the matmuls of tile t+1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from vnpu.chip.schema import Chip
from vnpu.dtypes import PACKED_ELEMENTS, QUANT_MATMUL_ACC, DType
from vnpu.isa import cost
from vnpu.isa.instructions import DmaLoad, DmaStore, HbmRef, MatMul, SramRef, VecOp
from vnpu.isa.program import KernelLaunch
from vnpu.kernels.base import CoreBuilder, Expr, KernelContext, deal_round_robin, emit_expr, expr_temps, sub_ref


@dataclass
class GemmChunk:
    a: HbmRef  # its row-major flattening is the [mt, kt] A tile
    b: HbmRef  # [kt, nt]
    mt: int
    kt: int
    nt: int
    a_bytes: int = -1  # HBM traffic of the A load when it differs from its footprint (im2col)
    b_bytes: int = -1  # likewise for the B load
    # weight-only GEMMs: `b` is the quantized weight block ([kt / pack, nt] int8) and this its
    # group scales ([kt / group, nt] fp32); the vector engine dequantizes them into the B tile
    b_scale: HbmRef | None = None
    # block-scaled (MX) GEMMs: `a` / `b` hold the packed operand blocks ([mt, kt / pack], [kt / pack, nt]),
    # and a_scale / b_scale their E8M0 scales ([mt, kt / block], [kt / block, nt])
    a_scale: HbmRef | None = None


@dataclass
class GemmTile:
    chunks: list[GemmChunk]
    epilogue: list[HbmRef | None]  # per epilogue operand: its [mt, nt] view, None for immediates
    out: HbmRef  # its row-major flattening is the [mt, nt] output tile
    mt: int
    nt: int
    # per epilogue operand: its scratchpad tile shape when not [mt, nt]; a broadcast operand
    # (per-channel bias/scale) loads compactly as [mt, 1] or [1, nt] and the vector engine
    # broadcasts it. None: every loaded operand is a full [mt, nt] tile.
    epi_shapes: list[tuple[int, int] | None] | None = None

    def epi_shape(self, i: int) -> tuple[int, int]:
        s = self.epi_shapes[i] if self.epi_shapes is not None else None
        return s if s is not None else (self.mt, self.nt)


@dataclass
class ResidentA:
    """A GEMM's A operand prepared in each core's scratchpad before its pipeline (a decode GEMM
    quantizing its activation rows in the prologue): per K chunk of the tiling, the A tile (and, MX,
    its E8M0 scale tile); the semaphore the prologue signals once when they are ready; and an
    optional [M, 1] fp32 row scale multiplied into each accumulator before the epilogue."""

    a: list[SramRef]
    a_scale: list[SramRef] | None
    ready: int
    row_scale: SramRef | None = None


@dataclass(frozen=True)
class GemmTiling:
    mt: int
    kt: int
    nt: int
    est_cycles: float
    nbuf: int = 2  # scratchpad buffers per operand: chunk j+nbuf loads while chunk j multiplies


def gemm_sram_bytes(mt: int, kt: int, nt: int, in_size: int, out_size: int, n_epi: int, n_temps: int,
                    nbuf: int = 2, b_stage: float = 0.0, ab_scales: float = 0.0) -> int:
    """Scratchpad bytes of one core's GEMM pipeline; `b_stage`: bytes per B element of a
    weight-only GEMM's staging buffers (quantized weights + their scales); `ab_scales`: bytes
    per A and B element of a block-scaled GEMM's scale buffers."""
    return (nbuf * mt * kt * in_size + nbuf * kt * nt * in_size + 2 * mt * nt * 4
            + 2 * n_epi * mt * nt * 4 + n_temps * mt * nt * 4 + 2 * mt * nt * out_size + 64 * 16
            + math.ceil(nbuf * kt * nt * b_stage) + (nbuf * 64 * 2 if b_stage else 0)
            + (math.ceil(nbuf * (mt + nt) * kt * ab_scales) + nbuf * 64 * 2 if ab_scales else 0))


def pipeline_cycles(chip: Chip, tiles: int, chunks: int, nbuf: int, mm: float, load_bytes: float,
                    epi_bytes: float, vec: float, out_bytes: float, active: int = 1) -> float:
    """One core's time for `tiles` x `chunks` GEMM steps as emit_gemm schedules them.

    Chunk j's loads start when the DMA-in queue is free and the matmul of chunk j-nbuf has
    released its buffer; they land one HBM latency after their transfer; its matmul starts
    when they have landed and the previous matmul is done. Each tile then runs its epilogue
    on the vector engine and stores. `active` cores share the HBM channel, so a core's
    transfers run at most at 1/active of it. Long runs are extrapolated from the steady state.
    """
    lat = cost.hbm_latency_cycles(chip)
    dma = min(chip.core.dma_bytes_per_cycle, chip.hbm_bytes_per_cycle / max(active, 1))
    xfer = load_bytes / dma
    n = tiles * chunks
    sim = min(n, max(4 * chunks, 4 * nbuf, 16))
    ends: list[float] = []
    dq = 0.0
    vec_free = 0.0
    for j in range(sim):
        s = max(dq, ends[j - nbuf] if j >= nbuf else 0.0)
        dq = s + xfer
        st = max(dq + lat, ends[j - 1] if j else 0.0)
        ends.append(st + mm)
        if (j + 1) % chunks == 0:
            dq += epi_bytes / dma
            vec_free = max(vec_free, ends[-1]) + vec
    end = ends[-1]
    if n > sim:
        half = sim // 2
        period = (ends[-1] - ends[half - 1]) / (sim - half)
        end += (n - sim) * period
        vec_free = max(vec_free + (tiles - sim // chunks) * vec, end + vec)
    return max(end + vec, vec_free) + lat + out_bytes / dma


def _candidates(dim: int, base: list[int]) -> list[int]:
    c = sorted({min(v, dim) for v in base})
    return c


def choose_gemm_tiling(chip: Chip, groups: int, m: int, k: int, n: int, dtype: DType, out_size: int,
                       n_epi: int = 0, n_temps: int = 0, k_quantum: int = 1,
                       n_cands: list[int] | None = None, n_tiles: Callable[[int], int] | None = None,
                       a_scale: float | Callable[[int], float] = 1.0, b_scale: float | Callable[[int], float] = 1.0,
                       m_cands: list[int] | None = None, pipeline_model: bool = True,
                       b_stage: float = 0.0, ab_scales: float = 0.0, weight_pack: int = 1,
                       reserved_bytes: int = 0) -> GemmTiling:
    """Picks (mt, kt, nt) minimizing the estimated kernel time among tilings that fit.

    Estimate: the slowest of per-core matrix time, HBM time for all operand traffic, and
    per-core DMA time, plus the pipeline fill (first chunk's load and last tile's drain).
    `k_quantum` keeps kt a multiple of e.g. kh*kw for convolutions. Convolutions also pass
    the N tile sizes they can form (`n_cands`, `n_tiles(nt)` = how many tiles cover N) and
    the HBM bytes per scratchpad byte of the A and B loads (`a_scale`, `b_scale`: an im2col
    tile is expanded kh*kw-fold in the scratchpad but each input byte is read once;
    callables take mt and nt respectively).

    `pipeline_model` prices each candidate with `pipeline_cycles` (HBM latency per chunk,
    the buffer-reuse dependency, epilogue and store drain) and also considers triple
    buffering; small, latency-bound problems (convolutions at batch 1) need it.

    `b_stage` (weight-only GEMMs): staged bytes per B element (quantized weight + scale); the
    caller passes b_scale = HBM bytes per scratchpad byte of B accordingly, and each chunk pays
    the vector engine's dequantization of its B tile, unless `weight_pack` > 1: the PEs hold the
    packed weights (chip packed_weight_bits) and the array's time follows matmul_cycles' weight_pack.
    `reserved_bytes` of the scratchpad hold something else (a resident A operand).
    """
    r, c = chip.core.matrix.rows, chip.core.matrix.cols
    isz = dtype.itemsize
    cap = chip.core.scratchpad.bytes - reserved_bytes
    hbm_bpc = chip.hbm_bytes_per_cycle
    dma_bpc = chip.core.dma_bytes_per_cycle
    lat = cost.hbm_latency_cycles(chip)
    m_c = _candidates(m, m_cands or [16, 32, 64, 128, 256, 512, 1024, 2048])
    n_c = sorted(set(n_cands)) if n_cands else _candidates(n, [c // 2, c, 2 * c, 4 * c, 8 * c])
    kq = max(k_quantum, 1)
    k_c = sorted({min(k, max(kq, v // kq * kq)) for v in [r, 2 * r, 4 * r, 8 * r, 16 * r, 32 * r, 64 * r, k]})
    best: GemmTiling | None = None
    vl = chip.core.vector.lanes
    for mt in m_c:
        as_ = a_scale(mt) if callable(a_scale) else a_scale
        for nt in n_c:
            bs = b_scale(nt) if callable(b_scale) else b_scale
            for kt in k_c:
                for nbuf in ((2, 3) if pipeline_model else (2,)):
                    if gemm_sram_bytes(mt, kt, nt, isz, out_size, n_epi, n_temps, nbuf, b_stage, ab_scales) > cap:
                        continue
                    tiles = groups * math.ceil(m / mt) * (n_tiles(nt) if n_tiles else math.ceil(n / nt))
                    chunks = math.ceil(k / kt)
                    per_core_tiles = math.ceil(tiles / chip.cores)
                    mm = cost.matmul_cycles(chip, mt, kt, nt, dtype, weight_pack=weight_pack)
                    if b_stage and weight_pack == 1:  # the vector engine dequantizes each B tile, in step with the array
                        mm = max(mm, cost.vector_cycles(chip, "dequant", kt * nt))
                    chunk_bytes = (mt * kt * as_ + kt * nt * bs) * isz
                    traffic = tiles * (chunks * chunk_bytes + mt * nt * out_size * (1 + n_epi))
                    mem = traffic / hbm_bpc
                    if pipeline_model:
                        vec = (max(n_temps, 0) + 1) * (8 + mt * nt / vl)
                        core = pipeline_cycles(chip, per_core_tiles, chunks, nbuf, mm, chunk_bytes,
                                               mt * nt * out_size * n_epi, vec, mt * nt * out_size,
                                               min(tiles, chip.cores))
                        est = max(core, mem + 2 * lat) + 4 * per_core_tiles * chunks
                    else:
                        compute = per_core_tiles * chunks * mm
                        dma = per_core_tiles * (chunks * chunk_bytes) / dma_bpc
                        fill = lat + chunk_bytes / dma_bpc + mm + lat + mt * nt * out_size / dma_bpc
                        est = max(compute, mem, dma) + fill + 4 * per_core_tiles * chunks
                    if best is None or est < best.est_cycles * 0.999:
                        best = GemmTiling(mt, kt, nt, est, nbuf)
    if best is None:
        raise RuntimeError(f"no GEMM tiling of {m}x{k}x{n} fits a {cap}-byte scratchpad")
    return best


def emit_gemm(ctx: KernelContext, tiles: list[GemmTiling | GemmTile], tiling: GemmTiling, expr: Expr,
              epi_scalars: list[float | None], kind: str, flops: int, min_bytes: int,
              operand_dtype: DType | None = None, weight_only: tuple[int, int] | None = None,
              mx_block: int = 0, packed_weights: bool = False,
              resident_a: Callable[[CoreBuilder], ResidentA] | None = None) -> KernelLaunch:
    """Lowers GEMM tiles onto the cores (round-robin) as double-buffered pipelines. Operand
    tiles are in `operand_dtype` (default the program's); int8 ones accumulate in int32.

    `weight_only` = (bits, group): each chunk's B arrives quantized (GemmChunk.b, b_scale) into
    staging buffers; one vector `dequant` instruction writes the B tile in the operand dtype,
    and the matmul waits for it. The dequantization of chunk j+1 overlaps the matmul of chunk j.

    With `packed_weights` (chip packed_weight_bits), the weight-only B goes to the array packed
    with its scales (MatMul.b_bits): no vector dequantization, no B tile in the operand dtype.

    `resident_a(builder)` emits each core's A preparation first (its prologue) and returns the
    resident tiles (ResidentA); the pipeline then loads only B.

    `mx_block` > 0: block-scaled operands (OCP MX); each chunk loads A and B (packed fp4: kt / 2
    bytes along K) and their E8M0 scales (GemmChunk.a_scale, b_scale), which the array applies."""
    chip = ctx.chip
    dt = operand_dtype or ctx.dtype
    acc_dt = DType.int32 if QUANT_MATMUL_ACC.get(dt) == DType.int32 else DType.fp32
    out_dt = ctx.outputs[0].dtype
    n_epi = len(epi_scalars)
    streams = []
    mt_max, kt_max, nt_max = tiling.mt, tiling.kt, tiling.nt
    for core_tiles in deal_round_robin(tiles, chip.cores):
        b = CoreBuilder(chip)
        if not core_tiles:
            streams.append(b.finish())
            continue
        nbuf = tiling.nbuf
        epack = PACKED_ELEMENTS.get(dt, 1)  # K elements per stored operand element
        ra = resident_a(b) if resident_a is not None else None
        abuf = [b.alloc(dt, (mt_max, kt_max // epack)) for _ in range(0 if ra else nbuf)]
        bbuf = [b.alloc(dt, (kt_max // epack, nt_max)) for _ in range(0 if packed_weights else nbuf)]
        if mx_block:
            kb_max = -(-kt_max // mx_block)
            sabuf = [b.alloc(DType.e8m0, (mt_max, kb_max)) for _ in range(0 if ra else nbuf)]
            sbbuf = [b.alloc(DType.e8m0, (kb_max, nt_max)) for _ in range(nbuf)]
        if weight_only is not None:
            bits, group = weight_only
            pack = 8 // bits
            qbuf = [b.alloc(DType.int8, (-(-kt_max // pack), nt_max)) for _ in range(nbuf)]
            sbuf = [b.alloc(DType.fp32, (-(-kt_max // group), nt_max)) for _ in range(nbuf)]
            DEQ = b.sem()
        acc = [b.alloc(acc_dt, (mt_max, nt_max)) for _ in range(2)]
        epi_max = [max((t.epi_shape(i) for t in core_tiles), key=math.prod) for i in range(n_epi)]
        epi = [[b.alloc(r.dtype, epi_max[i]) if r is not None else None
                for i, r in enumerate(core_tiles[0].epilogue)] for _ in range(2)]
        outb = [b.alloc(out_dt, (mt_max, nt_max)) for _ in range(2)]
        scaled = [b.alloc(DType.fp32, (mt_max, nt_max)) for _ in range(2 if ra and ra.row_scale else 0)]
        temps = expr_temps(b, expr, (mt_max, nt_max))
        LOADED, MM, EPL, EPD, ST = (b.sem() for _ in range(5))
        j = 0
        has_epi_loads = any(r is not None for r in core_tiles[0].epilogue)
        for t, tile in enumerate(core_tiles):
            s = t % 2
            for ci, ch in enumerate(tile.chunks):
                js = j % nbuf
                b_t = sub_ref(bbuf[js], (ch.kt // epack, ch.nt)) if bbuf else None
                w = ((MM, j + 1 - nbuf),) if j >= nbuf else ()
                if ra is not None:  # A is resident (the prologue made it)
                    a_t = sub_ref(ra.a[ci], (ch.mt, ch.kt // epack))
                else:
                    a_t = sub_ref(abuf[js], (ch.mt, ch.kt // epack))
                    b.emit(DmaLoad(ch.a, a_t, ch.a_bytes, waits=w))
                mx: dict = {}
                if mx_block:
                    kb = ch.kt // mx_block
                    sa_t = sub_ref(ra.a_scale[ci] if ra is not None else sabuf[js], (ch.mt, kb))  # type: ignore[index]
                    mx = {"a_scale": sa_t, "b_scale": sub_ref(sbbuf[js], (kb, ch.nt)), "block": mx_block}
                    if ra is None:
                        b.emit(DmaLoad(ch.a_scale, sa_t, waits=w))
                    b.emit(DmaLoad(ch.b, b_t, ch.b_bytes, waits=w))
                    b.emit(DmaLoad(ch.b_scale, mx["b_scale"], waits=w, signal=LOADED))
                    mw = [(LOADED, j + 1)]
                elif packed_weights and weight_only is not None and ch.b_scale is not None:
                    q_t = sub_ref(qbuf[js], tuple(ch.b.shape))
                    s_t = sub_ref(sbuf[js], tuple(ch.b_scale.shape))
                    b.emit(DmaLoad(ch.b, q_t, ch.b_bytes, waits=w))
                    b.emit(DmaLoad(ch.b_scale, s_t, waits=w, signal=LOADED))
                    b_t = q_t
                    mx = {"b_scale": s_t, "block": group, "b_bits": bits}
                    mw = [(LOADED, j + 1)]
                elif weight_only is not None and ch.b_scale is not None:
                    q_t = sub_ref(qbuf[js], tuple(ch.b.shape))
                    s_t = sub_ref(sbuf[js], tuple(ch.b_scale.shape))
                    b.emit(DmaLoad(ch.b, q_t, ch.b_bytes, waits=w))
                    b.emit(DmaLoad(ch.b_scale, s_t, waits=w, signal=LOADED))
                    b.emit(VecOp("dequant", b_t, (q_t, s_t), (("bits", bits), ("group", group)),
                                 waits=((LOADED, j + 1),), signal=DEQ))
                    mw = [(DEQ, j + 1)]
                else:
                    b.emit(DmaLoad(ch.b, b_t, ch.b_bytes, waits=w, signal=LOADED))
                    mw = [(LOADED, j + 1)]
                if ci == 0 and t >= 2:
                    mw.append((EPD, t - 1))
                if ra is not None and j == 0:
                    mw.append((ra.ready, 1))
                b.emit(MatMul(a_t, b_t, sub_ref(acc[s], (ch.mt, ch.nt)), accumulate=ci > 0, waits=tuple(mw), signal=MM,
                              **mx))
                j += 1
            shape = (tile.mt, tile.nt)
            operands: list = [sub_ref(acc[s], shape)]
            if scaled:  # acc x the activation's row scales (computed by the prologue)
                b.emit(VecOp("mul", sub_ref(scaled[s], shape), (operands[0], sub_ref(ra.row_scale, (tile.mt, 1))),  # type: ignore[union-attr]
                             waits=((MM, j),) + (((ST, t - 1),) if t >= 2 else ())))
                operands[0] = sub_ref(scaled[s], shape)
            loads = [(i, r) for i, r in enumerate(tile.epilogue) if r is not None]
            for li, (i, r) in enumerate(loads):
                w = ((EPD, t - 1),) if t >= 2 and li == 0 else ()
                b.emit(DmaLoad(r, sub_ref(epi[s][i], tile.epi_shape(i)), waits=w,
                               signal=EPL if li == len(loads) - 1 else -1))
            for i in range(n_epi):
                operands.append(sub_ref(epi[s][i], tile.epi_shape(i)) if tile.epilogue[i] is not None
                                else epi_scalars[i])
            vw = [(MM, j)]
            if has_epi_loads:
                vw.append((EPL, t + 1))
            if t >= 2:
                vw.append((ST, t - 1))
            out_t = sub_ref(outb[s], shape)
            emit_expr(b, expr, operands, out_t, temps, waits=tuple(vw), signal=EPD)
            b.emit(DmaStore(out_t, tile.out, waits=((EPD, t + 1),), signal=ST))
        streams.append(b.finish())
    return KernelLaunch(ctx.node.name, kind, [ctx.node.op] + expr.ops, streams, flops, min_bytes, dt)
