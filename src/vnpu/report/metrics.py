"""Figures derived from a Profile and its chip, shared by the tables and the JSON report
so that both always show the same numbers."""
from __future__ import annotations

from dataclasses import dataclass, field

from vnpu.chip.schema import Chip
from vnpu.dtypes import DType
from vnpu.isa.instructions import QUEUES
from vnpu.sim.profile import KernelProfile, Profile


@dataclass
class RunMetrics:
    cycles: float
    clock_hz: float
    latency_s: float
    throughput_per_s: float  # samples per second (batch / latency)
    flops: int
    achieved_flops_per_s: float
    peak_flops_per_s: float  # matrix peak at the model's compute dtype
    flops_fraction: float  # achieved / peak (== matrix utilization)
    matrix_utilization: float
    hbm_bytes: int
    hbm_read_bytes: int | None  # None where the simulator does not report the read/write split
    hbm_write_bytes: int | None
    achieved_hbm_bytes_per_s: float
    peak_hbm_bytes_per_s: float
    hbm_fraction: float
    energy_j: float
    energy: dict[str, float]
    average_power_w: float
    kernel_cycles: float  # sum of kernel (and host op) durations
    launch_overhead_cycles: float  # the rest: chip-wide barriers + dispatch between launches
    busy: dict[str, float] = field(default_factory=dict)  # per engine, fraction of cores x cycles
    stall: dict[str, float] = field(default_factory=dict)


def _div(a: float, b: float) -> float:
    return a / b if b else 0.0


def run_metrics(profile: Profile, chip: Chip, dtype: DType | str, batch: int = 1) -> RunMetrics:
    dtype = DType(dtype)
    seconds = profile.seconds if profile.clock_hz else 0.0
    peak_flops = profile.peak_flops_per_cycle * profile.clock_hz
    if not peak_flops and chip.supports(dtype):
        peak_flops = chip.peak_flops(dtype)
    peak_bw = chip.hbm.bandwidth_gbs * 1e9
    hbm, rd, wr = hbm_traffic(profile)
    achieved_bw = _div(hbm, seconds)
    achieved_flops = _div(profile.flops, seconds)
    core_cycles = profile.cycles * profile.cores
    e = profile.energy
    kernel_cycles = sum(k.cycles for k in profile.kernels)
    return RunMetrics(
        cycles=profile.cycles,
        clock_hz=profile.clock_hz,
        latency_s=seconds,
        throughput_per_s=_div(batch, seconds),
        flops=profile.flops,
        achieved_flops_per_s=achieved_flops,
        peak_flops_per_s=peak_flops,
        flops_fraction=_div(achieved_flops, peak_flops),
        matrix_utilization=profile.matrix_utilization,
        hbm_bytes=hbm,
        hbm_read_bytes=rd,
        hbm_write_bytes=wr,
        achieved_hbm_bytes_per_s=achieved_bw,
        peak_hbm_bytes_per_s=peak_bw,
        hbm_fraction=_div(achieved_bw, peak_bw),
        energy_j=e.total_j,
        energy={"mac_j": e.mac_j, "vector_j": e.vector_j, "sram_j": e.sram_j, "l2_j": e.l2_j, "hbm_j": e.hbm_j,
                "static_j": e.static_j},
        average_power_w=_div(e.total_j, seconds),
        kernel_cycles=kernel_cycles,
        launch_overhead_cycles=max(profile.cycles - kernel_cycles, 0.0),
        busy={q: _div(profile.busy.get(q, 0.0), core_cycles) for q in QUEUES},
        stall={q: _div(profile.stall.get(q, 0.0), core_cycles) for q in QUEUES},
    )


def hbm_traffic(profile: Profile) -> tuple[int, int | None, int | None]:
    """(total, read, write) HBM bytes. The per-kernel counts are authoritative (they drive the
    energy model); the run-level read/write split is used only where the simulator fills it."""
    per_kernel = sum(k.hbm_bytes for k in profile.kernels)
    if profile.hbm_bytes:
        return profile.hbm_bytes, profile.hbm_read_bytes, profile.hbm_write_bytes
    return per_kernel, None, None


def is_host(k: KernelProfile) -> bool:
    """A fallback op run on the host CPU rather than on the chip."""
    return k.kind == "host"


def kernels_by_time(profile: Profile) -> list[tuple[int, KernelProfile]]:
    """(launch index, kernel), longest first; ties keep launch order."""
    return sorted(enumerate(profile.kernels), key=lambda ik: (-ik[1].cycles, ik[0]))
