"""Cycle cost of each instruction on a given chip: the ISA's latency table in closed form.

Both the compiler's tiling model and the simulator use these, so the tile the compiler
picks is priced exactly as the simulator will run it.
"""
from __future__ import annotations

import math

from vnpu.chip.schema import Chip
from vnpu.dtypes import DType
from vnpu.ir.ops import TRANSCENDENTAL

VECTOR_PIPELINE_CYCLES = 8  # issue-to-result latency of one vector instruction


def systolic_folds(chip: Chip, m: int, k: int, n: int) -> tuple[int, int]:
    """(folds, streamed length T) for an [m,k]@[k,n] product under the array's dataflow.

    OS: each fold pins an R x C block of outputs and streams the K reduction through it.
    WS: each fold pins an R x C block of weights (K x N) and streams the M rows of A.
    IS: each fold pins an R x C block of inputs (K x M) and streams the N columns of B.
    """
    mx = chip.core.matrix
    r, c = mx.rows, mx.cols
    if mx.dataflow == "os":
        return math.ceil(m / r) * math.ceil(n / c), k
    if mx.dataflow == "ws":
        return math.ceil(k / r) * math.ceil(n / c), m
    return math.ceil(k / r) * math.ceil(m / c), n


def stationary_preload_cycles(chip: Chip) -> int:
    """Cycles to shift a fold's stationary block into the array before it can stream.

    WS and IS pin an operand (weights, inputs): R cycles to shift it down the rows. OS pins
    the outputs themselves: the accumulators clear in place, nothing is preloaded.
    """
    return 0 if chip.core.matrix.dataflow == "os" else chip.core.matrix.rows


def matmul_cycles(chip: Chip, m: int, k: int, n: int, dtype: DType,
                  continues: bool = False, drains: bool = True, weight_pack: int = 1) -> int:
    """Cycles for one MatMul instruction.

    Per fold: P cycles to preload the stationary block (P = R for WS/IS, 0 for OS), T cycles
    to stream operands (T / rate for dtypes processed at other than one MAC per PE per
    cycle), then R + C - 2 cycles of skew for the last operand to cross the array and its
    result to leave.
    Without fold pipelining that is the fold-by-fold total  folds * (P + T + R + C - 2),
    SCALE-Sim v3's count plus one (docs/timing.md derives both).
    With it, the next block loads (or the previous outputs drain, for OS) while the current
    fold streams, so folds start every max(T, R) cycles, the last one streams T, and the
    first preload and the last skew are paid once:  P + (folds - 1) * max(T, R) + T + R + C - 2.

    A fold may also span several instructions that stream its T dimension in chunks from a
    double-buffered scratchpad (the `fold_stream` mapping). Such an instruction covers one
    fold; `continues` says the array already holds the stationary block and a full pipeline
    from the previous chunk (no preload), `drains` that this chunk ends the fold (pay the
    skew). A fold streamed in chunks T1..Tn then costs P + sum(Ti) + R + C - 2, the same as
    one instruction streaming all of T.

    A format at rate > 1 (int8 / fp8 at 2 MACs per PE per cycle) packs `rate` consecutive K
    elements into each PE: the contraction is `rate` times shorter in folds (WS/IS: a stationary
    block holds R x rate rows of K; OS: K streams rate elements per cycle), and a preload moves
    `rate` times the elements in the same R cycles, as it moves the same bits. Rates below 1
    (fp32 by multiple passes) stream each fold 1 / rate times.

    `weight_pack` p > 1 (packed weight-only operands, chip `packed_weight_bits`): each PE holds p
    consecutive K weights and runs its MAC p times per streamed row, so folds cover p times the K
    and stream p times longer: a GEMV (one streamed row) moves p times the weights per preload,
    a large-M GEMM keeps the dtype's rate.
    """
    mx = chip.core.matrix
    r, c = mx.rows, mx.cols
    rate = mx.rate[dtype]
    if weight_pack > 1:
        folds, t = systolic_folds(chip, m, math.ceil(k / weight_pack), n)
        t = math.ceil(t * weight_pack / rate)
    elif rate > 1:
        folds, t = systolic_folds(chip, m, math.ceil(k / rate), n)
    else:
        folds, t = systolic_folds(chip, m, k, n)
        t = math.ceil(t / rate)
    preload = stationary_preload_cycles(chip)
    skew = r + c - 2
    if continues or not drains:
        if folds != 1:
            raise ValueError(f"a chunked MatMul must cover exactly one fold; [{m}x{k}]@[{k}x{n}] "
                             f"on a {r}x{c} {mx.dataflow.upper()} array is {folds} folds")
        return (0 if continues else preload) + t + (skew if drains else 0)
    if mx.pipelined_folds:
        return preload + (folds - 1) * max(t, r) + t + skew
    return folds * (preload + t + skew)


def vector_cycles(chip: Chip, op: str, elements: int) -> int:
    """Elementwise work at the vector lanes' rate; transcendentals at the SFU's."""
    v = chip.core.vector
    lanes = v.sfu_lanes if op in TRANSCENDENTAL else v.lanes
    return VECTOR_PIPELINE_CYCLES + math.ceil(elements / lanes)


def dma_transfer_cycles(chip: Chip, nbytes: int) -> float:
    """Time one core's DMA engine needs for nbytes, before HBM sharing."""
    return nbytes / chip.core.dma_bytes_per_cycle


def hbm_latency_cycles(chip: Chip) -> float:
    return chip.hbm.latency_ns * 1e-9 * chip.clock_hz


def l2_latency_cycles(chip: Chip) -> float:
    """An L2 hit's latency: the chip's figure, or half the HBM latency where it gives none."""
    ns = chip.l2.latency_ns if chip.l2.latency_ns is not None else chip.hbm.latency_ns / 2
    return ns * 1e-9 * chip.clock_hz


def hbm_traffic_bytes(chip: Chip, footprint: int, contiguous_run: int) -> int:
    """Bytes HBM actually moves: runs shorter than a burst still cost a whole burst."""
    burst = chip.hbm.burst_bytes
    if contiguous_run >= burst or contiguous_run <= 0:
        return footprint
    return footprint * burst // contiguous_run


def _chip_link(chip: Chip):
    link = chip.chip_link
    if link is None:
        raise ValueError(f"{chip.name} has no chip_link: it cannot be used in a multi-chip configuration")
    return link


# Collectives over `chip_link`. Its bandwidth is a chip's own aggregate rate into the scale-up
# fabric (NVLink to NVSwitch, an HCCS full mesh), each direction; latency is paid per step.


def reduce_scatter_seconds(chip: Chip, nbytes: float, chips: int) -> float:
    """Ring reduce-scatter of an nbytes tensor: n - 1 steps, each moving one nbytes / n chunk
    per chip and paying the link latency. Each chip ends with its reduced nbytes / n."""
    if chips <= 1:
        return 0.0
    link = _chip_link(chip)
    return (chips - 1) * (nbytes / chips / (link.bandwidth_gbs * 1e9) + link.latency_us * 1e-6)


def all_gather_seconds(chip: Chip, nbytes: float, chips: int) -> float:
    """Ring all-gather of an nbytes tensor (each chip holds nbytes / n of it): n - 1 steps
    of one chunk per chip, like the reduce-scatter."""
    return reduce_scatter_seconds(chip, nbytes, chips)


def allreduce_seconds(chip: Chip, nbytes: float, chips: int) -> float:
    """Ring all-reduce of an nbytes tensor over `chips` chips on the chip-to-chip link:
    2 (n - 1) steps, each moving nbytes / n per chip and paying the link latency (a
    reduce-scatter, then an all-gather)."""
    return reduce_scatter_seconds(chip, nbytes, chips) + all_gather_seconds(chip, nbytes, chips)


def alltoall_seconds(chip: Chip, nbytes_per_chip: float, chips: int) -> float:
    """All-to-all where every chip sends nbytes_per_chip, split evenly over the other n - 1
    chips (the bytes it keeps are not counted in nbytes_per_chip).

    Direct (full-bisection) model: nbytes_per_chip / bandwidth + one link latency. The n - 1
    transfers of a chip go out at once, each at bandwidth / (n - 1), which is what a switched
    fabric (NVLink through NVSwitch) or a full mesh with one link per peer (HCCS in an 8-NPU
    server) gives, and what NCCL's all-to-all (all sends and receives posted together) does;
    balanced traffic means each chip also receives nbytes_per_chip, so ingress does not bind
    either. The other common model, pairwise exchange in n - 1 steps of nbytes / (n - 1) each
    paying the latency, has the same bandwidth term on a switched fabric and n - 2 more
    latencies: it is the schedule of a fabric that can only reach one peer at a time at full
    rate, which these chips' links are not (and on a full mesh it would use one link in n - 1).
    """
    if chips <= 1:
        return 0.0
    link = _chip_link(chip)
    return nbytes_per_chip / (link.bandwidth_gbs * 1e9) + link.latency_us * 1e-6
