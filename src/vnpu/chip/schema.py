"""The chip, as data: a validated pydantic schema.

Every preset in `presets/*.toml` is one instance of `Chip`. Figures carry their source
or rationale in the TOML comments and in the `sources` table.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

from vnpu.dtypes import DType


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MatrixEngine(_Strict):
    """A systolic array of rows x cols processing elements."""

    rows: PositiveInt
    cols: PositiveInt
    dataflow: Literal["os", "ws", "is"] = Field(
        description="output-, weight- or input-stationary"
    )
    pipelined_folds: bool = Field(
        True,
        description="the next fold's stationary operand loads while the current fold streams "
        "(double-buffered PEs); false reproduces SCALE-Sim's fold-by-fold timing",
    )
    rate: dict[DType, PositiveFloat] = Field(
        description="MACs per PE per cycle for each supported dtype (bf16 = 1 is the array's native rate)"
    )
    mapping: Literal["tiled", "fold_stream"] = Field(
        "tiled",
        description="how the compiler maps a matmul onto the array: 'tiled' (scratchpad-resident "
        "M x K x N tiles, double-buffered, split over cores; vnpu's default) or 'fold_stream' "
        "(SCALE-Sim's mapping: each fold of the stationary operand streams the whole remaining "
        "dimension through the array in chunks from a double-buffered scratchpad)",
    )


class VectorEngine(_Strict):
    lanes: PositiveInt = Field(description="fp32 element operations per cycle")
    sfu_lanes: PositiveInt = Field(description="transcendental results (exp, erf, rsqrt...) per cycle")


class Scratchpad(_Strict):
    bytes: PositiveInt
    bytes_per_cycle: PositiveInt = Field(description="read+write port bandwidth")


class Core(_Strict):
    matrix: MatrixEngine
    vector: VectorEngine
    scratchpad: Scratchpad
    dma_bytes_per_cycle: PositiveInt = Field(description="one core's DMA engine peak")


class L2(_Strict):
    bytes: PositiveInt = Field(description="capacity; DMA loads of a view moved earlier in the same kernel hit")
    bytes_per_cycle: PositiveInt
    latency_ns: PositiveFloat | None = Field(None, description="hit latency; default half the HBM latency")


class HBM(_Strict):
    bytes: PositiveInt
    bandwidth_gbs: PositiveFloat = Field(description="sustained peak, GB/s (1e9 bytes)")
    latency_ns: PositiveFloat
    burst_bytes: PositiveInt = Field(64, description="access granularity: shorter contiguous runs still cost a burst")


class Link(_Strict):
    bandwidth_gbs: PositiveFloat = Field(description="a chip's aggregate rate on this link in one direction (what it can send while it "
                                          "receives as much), GB/s (1e9 bytes); datasheets often quote both directions summed")
    latency_us: PositiveFloat = Field(description="per transfer, µs (a ring collective pays it every step)")
    energy_pj_per_byte: PositiveFloat | None = Field(
        None,
        description="pJ per byte carried end to end (both ends' SerDes/PHY and any switch hop on the way); "
        "None: not given, no link energy counted",
    )


class Energy(_Strict):
    pj_per_mac: dict[DType, PositiveFloat]
    pj_per_vector_op: PositiveFloat
    pj_per_sram_byte: PositiveFloat
    pj_per_l2_byte: PositiveFloat
    pj_per_hbm_byte: PositiveFloat
    static_w: PositiveFloat


class Chip(_Strict):
    name: str
    description: str
    kind: Literal["design", "datasheet-approximation"] = "design"
    clock_ghz: PositiveFloat
    cores: PositiveInt
    core: Core
    l2: L2
    hbm: HBM
    host_link: Link = Field(description="PCIe/host interface, used by host-fallback ops")
    chip_link: Link | None = Field(None, description="chip-to-chip interconnect per chip")
    energy: Energy
    kernel_launch_us: float = Field(1.0, ge=0, description="chip-wide barrier + dispatch between kernels")
    area_mm2: PositiveFloat | None = None
    sources: dict[str, str] = Field(default_factory=dict)

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
