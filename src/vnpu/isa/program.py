"""A compiled Program: kernel launches over per-core instruction streams, plus the HBM map."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from vnpu.dtypes import DType
from vnpu.isa.instructions import CoreStream, HbmRef, SramRef


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
    # Launches with equal keys take the same time (see timing_key); set by the compiler.
    timing_key: str | None = None


def _shape_only(v: Any) -> Any:
    """An instruction field with addresses dropped: what its cost can depend on."""
    if isinstance(v, HbmRef):
        return ("H", v.shape, v.strides, v.dtype.value)
    if isinstance(v, SramRef):
        return ("S", v.shape, v.dtype.value)
    if isinstance(v, tuple):
        return tuple(_shape_only(x) for x in v)
    if isinstance(v, np.ndarray):
        return ("A", v.shape, str(v.dtype))
    return v


def timing_key(launch: KernelLaunch) -> str:
    """A digest of everything the timing of a launch depends on: per core and queue, each
    instruction's type, shapes, strides, dtypes, byte overrides, flags and waits/signals,
    but not its HBM or scratchpad addresses. Each launch starts on an idle chip after a
    barrier, so launches with equal keys (a transformer's identical layers, a ResNet
    stage's repeated blocks) take the same cycles and timing-only runs simulate one of them."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((launch.kind, launch.dtype.value, launch.flops, launch.min_hbm_bytes)).encode())
    for cs in launch.cores:
        h.update(repr(("core", cs.semaphores)).encode())
        for q, instrs in cs.queues.items():
            h.update(repr((q, len(instrs))).encode())
            for ins in instrs:
                h.update(repr((type(ins).__name__,) + tuple(_shape_only(getattr(ins, f.name)) for f in fields(ins))).encode())
    return h.hexdigest()


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


Launch = KernelLaunch | HostLaunch


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

    def user_inputs(self) -> list[tuple[str, HbmRef]]:
        """The inputs a caller passes on each run (persistent state is not among them)."""
        state = {n for n, _ in self.state}
        return [(n, r) for n, r in zip(self.input_names, self.inputs) if n not in state]

    def instruction_count(self) -> int:
        return sum(len(c) for l in self.launches if isinstance(l, KernelLaunch) for c in l.cores)
