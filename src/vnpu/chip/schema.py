"""The chip, as data: a validated pydantic schema.

Every preset in `presets/*.toml` is one instance of `Chip`. Figures carry their source
or rationale in the TOML comments and in the `sources` table.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vnpu.dtypes import DType

# Upper bounds on every size and rate: far past any real chip (the presets' largest figures are
# 132 cores, 64x64 arrays, 2 MiB scratchpads, 192 MiB L2, 141 GB HBM, 4.8 TB/s), low enough that
# a typo (an extra 000 or a 1e30) is refused before the simulator allocates or loops on it.
# A functional simulation holds each core's scratchpad and the program's HBM image in host memory.
MAX_CORES = 4096
MAX_ARRAY_DIM = 4096  # systolic array rows or cols
MAX_LANES = 1 << 16
MAX_SCRATCHPAD_BYTES = 1 << 30  # 1 GiB per core
MAX_L2_BYTES = 1 << 40
MAX_HBM_BYTES = 1 << 50  # 1 PiB
MAX_BYTES_PER_CYCLE = 1 << 24
MAX_CLOCK_GHZ = 100.0
MAX_BANDWIDTH_GBS = 1e6  # 1 PB/s
MAX_LATENCY = 1e6  # ns or us
MAX_RATE = 1024.0  # MACs per PE per cycle
MAX_ENERGY = 1e6  # pJ per event, or W of static power

Cores = Annotated[int, Field(gt=0, le=MAX_CORES)]
ArrayDim = Annotated[int, Field(gt=0, le=MAX_ARRAY_DIM)]
Lanes = Annotated[int, Field(gt=0, le=MAX_LANES)]
BytesPerCycle = Annotated[int, Field(gt=0, le=MAX_BYTES_PER_CYCLE)]
Bandwidth = Annotated[float, Field(gt=0, le=MAX_BANDWIDTH_GBS)]
Latency = Annotated[float, Field(gt=0, le=MAX_LATENCY)]
EnergyFigure = Annotated[float, Field(gt=0, le=MAX_ENERGY)]


class _Strict(BaseModel):
    # no inf / nan anywhere (TOML has both): every figure is a finite number
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class MatrixEngine(_Strict):
    """A systolic array of rows x cols processing elements."""

    rows: ArrayDim
    cols: ArrayDim
    dataflow: Literal["os", "ws", "is"] = Field(
        description="output-, weight- or input-stationary"
    )
    pipelined_folds: bool = Field(
        True,
        description="the next fold's stationary operand loads while the current fold streams "
        "(double-buffered PEs); false reproduces SCALE-Sim's fold-by-fold timing",
    )
    rate: dict[DType, Annotated[float, Field(gt=0, le=MAX_RATE)]] = Field(
        description="MACs per PE per cycle for each supported dtype (bf16 = 1 is the array's native rate)"
    )
    block_scaled: list[DType] = Field(
        default_factory=list,
        description="formats the array also runs block-scaled (OCP MX: one E8M0 scale per 32 elements of K "
        "on each operand, applied in the array per block as Blackwell's tensor cores do) at their rate; "
        "MX schemes need their element format here (and in `rate`)",
    )
    packed_weight_bits: list[Literal[4, 8]] = Field(
        default_factory=list,
        description="weight-only formats (int4 / int8 weights with fp32 group scales) the PEs hold packed: "
        "each PE stores 16 / bits weights of consecutive K with their group's scale and time-shares its "
        "MAC over them, so a stationary block holds that many times the weights and a preload moves them "
        "in the same R cycles (a GEMV streams 16 / bits times the weights per fold); empty: the vector "
        "engine dequantizes weight-only tiles before the array multiplies them",
    )
    fp8_accumulator_bits: Annotated[int, Field(ge=8, le=24)] | None = Field(
        None,
        description="significand bits the array's fp8 accumulator keeps (None: a full fp32 accumulator). "
        "Each group of fp8_mma_k products is summed exactly and added to the accumulator, which is "
        "truncated (toward zero) to this many bits; every fp8_promotion_k elements of K the partial sum "
        "is promoted into an fp32 register (Hopper: ~14 bits, promotion every 128 as DeepSeek-V3 and "
        "DeepGEMM do; sim/functional.limited_fp8_matmul)",
    )
    fp8_mma_k: Annotated[int, Field(gt=0, le=4096)] = Field(32, description="fp8 products summed exactly per accumulator step")
    fp8_promotion_k: Annotated[int, Field(gt=0, le=1 << 20)] | None = Field(
        128, description="elements of K after which the limited accumulator is added into fp32 (None: never)")
    mapping: Literal["tiled", "fold_stream"] = Field(
        "tiled",
        description="how the compiler maps a matmul onto the array: 'tiled' (scratchpad-resident "
        "M x K x N tiles, double-buffered, split over cores; vnpu's default) or 'fold_stream' "
        "(SCALE-Sim's mapping: each fold of the stationary operand streams the whole remaining "
        "dimension through the array in chunks from a double-buffered scratchpad)",
    )


class VectorEngine(_Strict):
    lanes: Lanes = Field(description="fp32 element operations per cycle")
    sfu_lanes: Lanes = Field(description="transcendental results (exp, erf, rsqrt...) per cycle")


class Scratchpad(_Strict):
    bytes: Annotated[int, Field(gt=0, le=MAX_SCRATCHPAD_BYTES)]
    bytes_per_cycle: BytesPerCycle = Field(description="read+write port bandwidth")


class Core(_Strict):
    matrix: MatrixEngine
    vector: VectorEngine
    scratchpad: Scratchpad
    dma_bytes_per_cycle: BytesPerCycle = Field(description="one core's DMA engine peak")


class L2(_Strict):
    bytes: Annotated[int, Field(gt=0, le=MAX_L2_BYTES)] = Field(
        description="capacity; DMA loads of a view moved earlier in the same kernel hit")
    bytes_per_cycle: BytesPerCycle
    latency_ns: Latency | None = Field(None, description="hit latency; default half the HBM latency")
    weight_prefetch_bytes: Annotated[int, Field(ge=0, le=MAX_L2_BYTES)] = Field(
        0, description="L2 space the command processor fills ahead of the kernels: while one kernel runs (and "
        "during the launch gap), the HBM time it leaves idle streams the weight tiles that the next kernels "
        "load first into L2, where their loads hit; weights are read-only, so no kernel's output is "
        "needed (as PDL with L2 prefetch on Hopper, or an NPU compiler's cross-layer prefetch). 0: none")

    @model_validator(mode="after")
    def _prefetch_fits(self) -> "L2":
        if self.weight_prefetch_bytes > self.bytes:
            raise ValueError(f"l2.weight_prefetch_bytes ({self.weight_prefetch_bytes}) exceeds l2.bytes ({self.bytes})")
        return self


class HBM(_Strict):
    bytes: Annotated[int, Field(gt=0, le=MAX_HBM_BYTES)]
    bandwidth_gbs: Bandwidth = Field(description="sustained peak, GB/s (1e9 bytes)")
    latency_ns: Latency
    burst_bytes: Annotated[int, Field(gt=0, le=1 << 16)] = Field(64, description="access granularity: shorter contiguous runs still cost a burst")


class Link(_Strict):
    bandwidth_gbs: Bandwidth = Field(description="a chip's aggregate rate on this link in one direction (what it can send while it "
                                          "receives as much), GB/s (1e9 bytes); datasheets often quote both directions summed")
    latency_us: Latency = Field(description="per transfer, µs (a ring collective pays it every step)")
    energy_pj_per_byte: EnergyFigure | None = Field(
        None,
        description="pJ per byte carried end to end (both ends' SerDes/PHY and any switch hop on the way); "
        "None: not given, no link energy counted",
    )


class Energy(_Strict):
    pj_per_mac: dict[DType, EnergyFigure]
    pj_per_vector_op: EnergyFigure
    pj_per_sram_byte: EnergyFigure
    pj_per_l2_byte: EnergyFigure
    pj_per_hbm_byte: EnergyFigure
    static_w: EnergyFigure


class Chip(_Strict):
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(max_length=10_000)
    kind: Literal["design", "datasheet-approximation"] = "design"
    clock_ghz: Annotated[float, Field(gt=0, le=MAX_CLOCK_GHZ)]
    cores: Cores
    core: Core
    l2: L2
    hbm: HBM
    host_link: Link = Field(description="PCIe/host interface, used by host-fallback ops")
    chip_link: Link | None = Field(None, description="chip-to-chip interconnect per chip")
    energy: Energy
    kernel_launch_us: float = Field(1.0, ge=0, le=MAX_LATENCY, description="chip-wide barrier + dispatch between kernels")
    kernel_barrier_us: float | None = Field(
        None, ge=0, le=MAX_LATENCY,
        description="the part of kernel_launch_us that cannot overlap the running kernel: with a hardware "
        "command queue the next kernel is dispatched while the current one runs, and only the chip-wide "
        "barrier remains once it ends (the gap is max(barrier, launch - the kernel's time), the barrier at most "
        "kernel_launch_us); None: "
        "dispatch starts when the kernel ends, the whole kernel_launch_us between kernels")
    area_mm2: Annotated[float, Field(gt=0, le=1e6)] | None = None
    sources: dict[str, str] = Field(default_factory=dict)

    def launch_gap_cycles(self, kernel_cycles: float) -> float:
        """Cycles from the end of a kernel that ran `kernel_cycles` to the start of the next (the
        barrier is part of the launch: a chip whose launch is shorter pays only the launch)."""
        launch = self.kernel_launch_us * 1e-6 * self.clock_hz
        if self.kernel_barrier_us is None:
            return launch
        return max(min(self.kernel_barrier_us * 1e-6 * self.clock_hz, launch), launch - kernel_cycles)

    @model_validator(mode="after")
    def _rates_have_energy(self) -> "Chip":
        missing = [d.value for d in self.core.matrix.rate if d not in self.energy.pj_per_mac]
        if missing:
            raise ValueError(f"energy.pj_per_mac lacks entries for matrix dtypes {missing}")
        return self

    # Derived figures, used by the cost model and reports.
    @property
    def clock_hz(self) -> float:
        return self.clock_ghz * 1e9

    @property
    def hbm_bytes_per_cycle(self) -> float:
        return self.hbm.bandwidth_gbs * 1e9 / self.clock_hz

    def supports(self, dtype: DType) -> bool:
        return dtype in self.core.matrix.rate

    def peak_macs_per_cycle(self, dtype: DType) -> float:
        m = self.core.matrix
        return self.cores * m.rows * m.cols * m.rate[dtype]

    def peak_flops(self, dtype: DType) -> float:
        return 2.0 * self.peak_macs_per_cycle(dtype) * self.clock_hz
