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

from vnpu.chip.schema import Chip
from vnpu.dtypes import DType
from vnpu.isa import cost
from vnpu.isa.instructions import DmaLoad, DmaStore, HbmRef, MatMul
from vnpu.isa.program import KernelLaunch
from vnpu.kernels.base import CoreBuilder, Expr, KernelContext, emit_expr, expr_temps, sub_ref


@dataclass
class GemmChunk:
    a: HbmRef  # its row-major flattening is the [mt, kt] A tile
    b: HbmRef  # [kt, nt]
    mt: int
    kt: int
    nt: int
    a_bytes: int = -1  # HBM traffic of the A load when it differs from its footprint (im2col)


@dataclass
class GemmTile:
    chunks: list[GemmChunk]
    epilogue: list[HbmRef | None]  # per epilogue operand: its [mt, nt] view, None for immediates
    out: HbmRef  # its row-major flattening is the [mt, nt] output tile
    mt: int
    nt: int


@dataclass(frozen=True)
class GemmTiling:
    mt: int
    kt: int
    nt: int
    est_cycles: float


def gemm_sram_bytes(mt: int, kt: int, nt: int, in_size: int, out_size: int, n_epi: int, n_temps: int) -> int:
    return (2 * mt * kt * in_size + 2 * kt * nt * in_size + 2 * mt * nt * 4
            + 2 * n_epi * mt * nt * 4 + n_temps * mt * nt * 4 + 2 * mt * nt * out_size + 64 * 16)


def _candidates(dim: int, base: list[int]) -> list[int]:
    c = sorted({min(v, dim) for v in base})
    return c


def choose_gemm_tiling(chip: Chip, groups: int, m: int, k: int, n: int, dtype: DType, out_size: int,
                       n_epi: int = 0, n_temps: int = 0, k_quantum: int = 1) -> GemmTiling:
    """Picks (mt, kt, nt) minimizing the estimated kernel time among tilings that fit.

    Estimate: the slowest of per-core matrix time, HBM time for all operand traffic, and
    per-core DMA time, plus the pipeline fill (first chunk's load and last tile's drain).
    `k_quantum` keeps kt a multiple of e.g. kh*kw for convolutions.
    """
    r, c = chip.core.matrix.rows, chip.core.matrix.cols
    isz = dtype.itemsize
    cap = chip.core.scratchpad.bytes
    hbm_bpc = chip.hbm_bytes_per_cycle
    dma_bpc = chip.core.dma_bytes_per_cycle
    lat = cost.hbm_latency_cycles(chip)
    m_c = _candidates(m, [16, 32, 64, 128, 256, 512, 1024, 2048])
    n_c = _candidates(n, [c // 2, c, 2 * c, 4 * c, 8 * c])
    kq = max(k_quantum, 1)
    k_c = sorted({min(k, max(kq, v // kq * kq)) for v in [r, 2 * r, 4 * r, 8 * r, 16 * r, 32 * r, 64 * r, k]})
    best: GemmTiling | None = None
    for mt in m_c:
        for nt in n_c:
            for kt in k_c:
                if gemm_sram_bytes(mt, kt, nt, isz, out_size, n_epi, n_temps) > cap:
                    continue
                tiles = groups * math.ceil(m / mt) * math.ceil(n / nt)
                chunks = math.ceil(k / kt)
                per_core_tiles = math.ceil(tiles / chip.cores)
                mm = cost.matmul_cycles(chip, mt, kt, nt, dtype)
                compute = per_core_tiles * chunks * mm
                chunk_bytes = (mt * kt + kt * nt) * isz
                traffic = tiles * (chunks * chunk_bytes + mt * nt * out_size * (1 + n_epi))
                mem = traffic / hbm_bpc
                dma = per_core_tiles * (chunks * chunk_bytes) / dma_bpc
                fill = lat + chunk_bytes / dma_bpc + mm + lat + mt * nt * out_size / dma_bpc
                est = max(compute, mem, dma) + fill + 4 * per_core_tiles * chunks
                if best is None or est < best.est_cycles * 0.999:
                    best = GemmTiling(mt, kt, nt, est)
    if best is None:
        raise RuntimeError(f"no GEMM tiling of {m}x{k}x{n} fits a {cap}-byte scratchpad")
    return best


def emit_gemm(ctx: KernelContext, tiles: list[GemmTiling | GemmTile], tiling: GemmTiling, expr: Expr,
              epi_scalars: list[float | None], kind: str, flops: int, min_bytes: int) -> KernelLaunch:
    """Lowers GEMM tiles onto the cores (round-robin) as double-buffered pipelines."""
    chip = ctx.chip
    dt = ctx.dtype
    out_dt = ctx.outputs[0].dtype
    n_epi = len(epi_scalars)
    per_core: list[list[GemmTile]] = [[] for _ in range(chip.cores)]
    for i, t in enumerate(tiles):
        per_core[i % chip.cores].append(t)
    streams = []
    mt_max, kt_max, nt_max = tiling.mt, tiling.kt, tiling.nt
    for core_tiles in per_core:
        b = CoreBuilder(chip)
        if not core_tiles:
            streams.append(b.finish())
            continue
        abuf = [b.alloc(dt, (mt_max, kt_max)) for _ in range(2)]
        bbuf = [b.alloc(dt, (kt_max, nt_max)) for _ in range(2)]
        acc = [b.alloc(DType.fp32, (mt_max, nt_max)) for _ in range(2)]
        epi = [[b.alloc(r.dtype if r is not None else DType.fp32, (mt_max, nt_max)) if r is not None else None
                for r in core_tiles[0].epilogue] for _ in range(2)]
        outb = [b.alloc(out_dt, (mt_max, nt_max)) for _ in range(2)]
        temps = expr_temps(b, expr, (mt_max, nt_max))
        LOADED, MM, EPL, EPD, ST = (b.sem() for _ in range(5))
        j = 0
        has_epi_loads = any(r is not None for r in core_tiles[0].epilogue)
        for t, tile in enumerate(core_tiles):
            s = t % 2
            for ci, ch in enumerate(tile.chunks):
                js = j % 2
                a_t = sub_ref(abuf[js], (ch.mt, ch.kt))
                b_t = sub_ref(bbuf[js], (ch.kt, ch.nt))
                w = ((MM, j - 1),) if j >= 2 else ()
                b.emit(DmaLoad(ch.a, a_t, ch.a_bytes, waits=w))
                b.emit(DmaLoad(ch.b, b_t, waits=w, signal=LOADED))
                mw = [(LOADED, j + 1)]
                if ci == 0 and t >= 2:
                    mw.append((EPD, t - 1))
                b.emit(MatMul(a_t, b_t, sub_ref(acc[s], (ch.mt, ch.nt)), accumulate=ci > 0, waits=tuple(mw), signal=MM))
                j += 1
            shape = (tile.mt, tile.nt)
            operands: list = [sub_ref(acc[s], shape)]
            loads = [(i, r) for i, r in enumerate(tile.epilogue) if r is not None]
            for li, (i, r) in enumerate(loads):
                w = ((EPD, t - 1),) if t >= 2 and li == 0 else ()
                b.emit(DmaLoad(r, sub_ref(epi[s][i], shape), waits=w, signal=EPL if li == len(loads) - 1 else -1))
            for i in range(n_epi):
                operands.append(sub_ref(epi[s][i], shape) if tile.epilogue[i] is not None else epi_scalars[i])
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
