"""A compiled Program: kernel launches over per-core instruction streams, plus the HBM map."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vnpu.dtypes import DType
from vnpu.isa.instructions import CoreStream, HbmRef


@dataclass
class KernelLaunch:
    """One kernel on all cores; launches run in order with a chip-wide barrier between them."""

    name: str
    kind: str  # matmul | conv | elementwise | reduce | norm | pool | gather | copy
    ops: list[str]  # IR ops fused into this kernel
    cores: list[CoreStream]
    flops: int = 0
    min_hbm_bytes: int = 0  # compulsory traffic: inputs read once + outputs written once
    dtype: DType = DType.fp32  # compute dtype, selects the matrix rate
    # Launches with equal keys take the same time (compiler.lower.kernel_timing_key sets it).
    timing_key: str | None = None




@dataclass
class HostLaunch:
    """An op run on the host (fallback): inputs copied out of HBM, outputs copied back."""

    name: str
    target: str  # e.g. "torch:aten.sort.default"
    inputs: list[HbmRef]
    outputs: list[HbmRef]
    payload: Any = None  # what the host executor needs (argument template)
    kind: str = "host"
    ops: list[str] = field(default_factory=list)
    flops: int = 0
    min_hbm_bytes: int = 0


@dataclass
class CollectiveLaunch:
    """A chip-to-chip collective (kind "all_reduce": every chip's outputs receive the sum of
    all chips' inputs). Not a kernel: the Device hands it to its collective executor, which a
    multi-chip runner (runtime.tensor_parallel) supplies; one chip alone cannot run it."""

    name: str
    kind: str  # all_reduce
    inputs: list[HbmRef]
    outputs: list[HbmRef]
    ops: list[str] = field(default_factory=list)
    flops: int = 0
    min_hbm_bytes: int = 0


Launch = KernelLaunch | HostLaunch | CollectiveLaunch


@dataclass
class Program:
    chip_name: str
    chip_fingerprint: str
    dtype: DType
    launches: list[Launch]
    hbm_bytes: int  # size of the simulated HBM image this program needs
    inputs: list[HbmRef]
    outputs: list[HbmRef]
    constants: list[tuple[HbmRef, np.ndarray]]  # uploaded once
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    weight_bytes: int = 0
    activation_bytes: int = 0
    state: list[tuple[str, HbmRef]] = field(default_factory=list)  # persistent buffers updated in place (KV cache)
    state_init: list[tuple[HbmRef, np.ndarray]] = field(default_factory=list)  # their contents before the first run
    weight_names: list[str] = field(default_factory=list)  # constants that are model weights (shared by name)
    timing_only: bool = False  # identical kernels share instruction streams: no functional runs

    def user_inputs(self) -> list[tuple[str, HbmRef]]:
        """The inputs a caller passes on each run (persistent state is not among them)."""
        state = {n for n, _ in self.state}
        return [(n, r) for n, r in zip(self.input_names, self.inputs) if n not in state]

    def instruction_count(self) -> int:
        return sum(len(c) for l in self.launches if isinstance(l, KernelLaunch) for c in l.cores)
