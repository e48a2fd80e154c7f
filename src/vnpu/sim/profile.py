"""What a simulated run measured: time, work, traffic, energy, per engine and per kernel."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from vnpu.isa.instructions import QUEUES


def _zero_queues() -> dict[str, float]:
    return {q: 0.0 for q in QUEUES}


@dataclass
class KernelProfile:
    name: str
    kind: str
    ops: list[str]
    start_cycle: float
    cycles: float
    flops: int
    macs: int
    hbm_bytes: int
    sram_bytes: int
    vector_ops: int
    instructions: int
    busy: dict[str, float] = field(default_factory=_zero_queues)  # summed over cores
    stall: dict[str, float] = field(default_factory=_zero_queues)
    hbm_read_bytes: int = 0
    l2_hit_bytes: int = 0  # DMA loads served by L2 (not in hbm_bytes)
    compute_bound_cycles: float = 0.0  # matrix/vector work at peak on all cores
    memory_bound_cycles: float = 0.0  # HBM traffic at peak bandwidth
    energy_j: float = 0.0
    mac_dtype: str = ""  # the format its matrix work ran in (int8, fp8_e4m3, ...): priced per MAC by it
    # weight bytes L2 already held when it began (chip l2.weight_prefetch_bytes): read from HBM while
    # earlier kernels ran, counted in hbm_bytes; its loads of them are L2 hits
    prefetched_bytes: int = 0

    @property
    def roofline_cycles(self) -> float:
        return max(self.compute_bound_cycles, self.memory_bound_cycles)

    @property
    def roofline_fraction(self) -> float:
        """How close this kernel came to its roofline bound (1.0 = at the bound)."""
        return self.roofline_cycles / self.cycles if self.cycles > 0 else 0.0

    @property
    def bound(self) -> str:
        return "compute" if self.compute_bound_cycles >= self.memory_bound_cycles else "memory"


@dataclass
class EnergyBreakdown:
    mac_j: float = 0.0
    vector_j: float = 0.0
    sram_j: float = 0.0
    l2_j: float = 0.0
    hbm_j: float = 0.0
    static_j: float = 0.0

    @property
    def total_j(self) -> float:
        return self.mac_j + self.vector_j + self.sram_j + self.l2_j + self.hbm_j + self.static_j


@dataclass
class Profile:
    chip: str
    clock_hz: float
    cores: int
    cycles: float = 0.0
    flops: int = 0
    macs: int = 0
    hbm_read_bytes: int = 0
    hbm_write_bytes: int = 0
    l2_bytes: int = 0
    sram_bytes: int = 0
    host_bytes: int = 0
    instructions: int = 0
    busy: dict[str, float] = field(default_factory=_zero_queues)
    stall: dict[str, float] = field(default_factory=_zero_queues)
    energy: EnergyBreakdown = field(default_factory=EnergyBreakdown)
    kernels: list[KernelProfile] = field(default_factory=list)
    peak_flops_per_cycle: float = 0.0

    @property
    def seconds(self) -> float:
        return self.cycles / self.clock_hz

    @property
    def hbm_bytes(self) -> int:
        return self.hbm_read_bytes + self.hbm_write_bytes

    @property
    def matrix_utilization(self) -> float:
        """Fraction of peak matrix throughput over the whole run."""
        denom = self.peak_flops_per_cycle * self.cycles
        return self.flops / denom if denom else 0.0

    def engine_utilization(self) -> dict[str, float]:
        denom = self.cycles * self.cores
        return {q: (b / denom if denom else 0.0) for q, b in self.busy.items()}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seconds"] = self.seconds
        d["hbm_bytes"] = self.hbm_bytes
        d["energy"]["total_j"] = self.energy.total_j
        for kd, k in zip(d["kernels"], self.kernels):
            kd["roofline_fraction"] = k.roofline_fraction
            kd["bound"] = k.bound
        return d
