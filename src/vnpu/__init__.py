"""vnpu: a software-defined AI inference chip, its compiler and its simulator.

The public names load on first use (PEP 562), so that `import vnpu` — and every CLI command,
`vnpu chips` or a refused `vnpu generate` — does not pay for the compiler and the simulator
before it needs them."""
from __future__ import annotations

import logging
from importlib import import_module
from typing import Any

# torchao (the vnpu[quant] extra, imported by transformers when installed) logs a warning per CUDA
# extension it cannot load on a CPU-only host; none of them is used here
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # torchao's Enum registrations, deprecated in 2.13

__version__ = "0.1.0"

_WHERE = {
    "compile": "vnpu.api", "compile_ir": "vnpu.api", "from_onnx": "vnpu.api", "from_tensorflow": "vnpu.api",
    "generate": "vnpu.api", "vnpu_backend": "vnpu.api",
    "Chip": "vnpu.chip", "ChipError": "vnpu.chip", "list_presets": "vnpu.chip", "load_chip": "vnpu.chip",
    "DType": "vnpu.dtypes",
    "CompiledModel": "vnpu.runtime.compiled", "ArtifactError": "vnpu.runtime.artifact",
}


def load(path: str, chip: Any = None) -> Any:
    """Loads a model saved with CompiledModel.save (no model code needed; no code from the file runs)."""
    from vnpu.chip import load_chip
    from vnpu.runtime.compiled import CompiledModel

    return CompiledModel.load(path, load_chip(chip) if chip is not None else None)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vnpu' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_WHERE))


__all__ = [*_WHERE, "load", "__version__"]
