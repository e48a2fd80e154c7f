"""A compiled model: call it like the original, profile it, save it to one file and load it back."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vnpu.chip.schema import Chip
from vnpu.dtypes import DType, numpy_to_torch, torch_to_numpy
from vnpu.isa.program import HostLaunch, Program
from vnpu.runtime.artifact import ArtifactError, chip_of, read_artifact, verify_program, write_artifact
from vnpu.runtime.host import execute_host
from vnpu.sim.device import Device
from vnpu.sim.profile import Profile


# NumPy dtype kinds an input may have, by whether the program takes floats (bf16 & co. are kind V)
# or integers/bools (token ids: no silent truncation of floats). Complex, strings, objects: never.
_ACCEPTED_KINDS = {True: "fiubV", False: "iub"}
_NARROW_INTS = ("int4", "uint4", "int2", "uint2")  # ml_dtypes integer types (kind V), taken by value


@dataclass
class ModelInfo:
    name: str
    dtype: DType
    input_shapes: list[tuple[int, ...]]
    output_dtypes: list[DType]  # what the source framework returns (outputs are cast back to these)
    fallback_ops: dict[str, int] = field(default_factory=dict)
    ir_text: str = ""  # the optimized IR, for `vnpu run --show-ir` and debugging
    quant: str = ""  # the post-training quantization scheme it was compiled with ("" = none)
    # with `quant`: [bytes of the weights it quantized at the program's dtype, their bytes quantized + scales]
    quant_bytes: list[int] = field(default_factory=list)


class CompiledModel:
    """Runs a Program on a simulated chip. Weights are uploaded once, when first needed."""

    def __init__(self, program: Program, chip: Chip, info: ModelInfo):
        self.program = program
        self.chip = chip
        self.info = info
        self._device: Device | None = None
        self.last_profile: Profile | None = None
        self._timing: Profile | None = None

    # -- execution ---------------------------------------------------------------------
    def _dev(self) -> Device:
        if self._device is None:
            dev = Device(self.chip, self.program.hbm_bytes, functional=True, host_executor=execute_host)
            for ref, data in self.program.constants + getattr(self.program, "state_init", []):
                dev.write(ref, data)
            self._device = dev
        return self._device

    def run_numpy(self, inputs: list[np.ndarray], trace: bool = False) -> list[np.ndarray]:
        p = self.program
        user = p.user_inputs() if hasattr(p, "state") else list(zip(p.input_names, p.inputs))
        if len(inputs) != len(user):
            raise ValueError(f"{self.info.name} takes {len(user)} input(s), got {len(inputs)}")
        dev = self._dev()
        for i, ((name, ref), x) in enumerate(zip(user, inputs)):
            x = np.asarray(x)
            if x.dtype.name in _NARROW_INTS:  # ml_dtypes 4-/2-bit integers (ONNX INT4 & co.): their values, as int8
                x = x.astype(np.int8)
            if x.dtype.kind not in _ACCEPTED_KINDS[ref.dtype.is_float]:
                raise ValueError(f"input {i} ({name}) has dtype {x.dtype}; this program takes {ref.dtype.value}"
                                 + ("" if ref.dtype.is_float else " (integer values)"))
            if tuple(x.shape) != ref.shape:
                raise ValueError(f"input {i} ({name}) has shape {tuple(x.shape)}; this program was "
                                 f"compiled for {ref.shape}. Recompile for the new shape.")
            dev.write(ref, x.astype(ref.dtype.np, copy=False))
        self.last_profile = dev.run(p, trace=trace)
        self.last_trace = dev.trace_events
        return [dev.read(ref).astype(dt.np, copy=False) for ref, dt in zip(p.outputs, self.info.output_dtypes)]

    def __call__(self, *args: Any) -> Any:
        """Takes torch tensors, TensorFlow tensors or NumPy arrays; returns the same kind."""
        torch_in = any(type(a).__module__.startswith("torch") for a in args)
        tf_in = any(type(a).__module__.startswith("tensorflow") for a in args)
        arrays = [torch_to_numpy(a) if type(a).__module__.startswith("torch") else np.asarray(a) for a in args]
        outs = self.run_numpy(arrays)
        if torch_in:
            outs = [numpy_to_torch(o) for o in outs]
        elif tf_in:
            import tensorflow as tf  # already imported by the caller, who passed TF tensors

            outs = [tf.convert_to_tensor(o) for o in outs]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def profile(self) -> Profile:
        """Timing-only simulation: no tensor data is touched (host ops are priced, not run)."""
        if self._timing is None:
            dev = Device(self.chip, self.program.hbm_bytes, functional=False)
            self._timing = dev.run(self.program)
        return self._timing

    @property
    def has_host_ops(self) -> bool:
        return any(isinstance(l, HostLaunch) for l in self.program.launches)

    # -- artifacts ---------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """One `.vnpu` file of plain data (runtime/artifact.py): loads without the model's code."""
        write_artifact(path, self.program, self.info, self.chip)

    @classmethod
    def load(cls, path: str | Path, chip: Chip | None = None) -> "CompiledModel":
        """Loads a saved model. No code from the file runs: it is decoded as data over vnpu's own
        types and bounds-checked (verify_program) before anything executes it."""
        manifest, program, info = read_artifact(path)
        saved_chip = chip_of(manifest, str(path))
        from vnpu.compiler.lower import chip_fingerprint

        if program.chip_fingerprint != manifest.get("chip_fingerprint") or chip_fingerprint(saved_chip) != program.chip_fingerprint:
            raise ArtifactError(f"{path}: its chip spec does not match the chip the program was compiled for "
                                "(corrupt or crafted). Recompile it.")
        if chip is not None and chip_fingerprint(chip) != program.chip_fingerprint:
            raise ArtifactError(f"{path} was compiled for chip {manifest.get('chip')!r} "
                                f"(fingerprint {program.chip_fingerprint}), not for {chip.name!r}. Recompile it for this chip.")
        verify_program(program, chip or saved_chip, str(path))
        return cls(program, chip or saved_chip, info)
