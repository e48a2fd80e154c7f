"""vnpu: a software-defined AI inference chip, its compiler and its simulator."""
from vnpu.api import compile, compile_ir, from_onnx, from_tensorflow, generate, vnpu_backend
from vnpu.chip import Chip, ChipError, list_presets, load_chip
from vnpu.dtypes import DType
from vnpu.runtime.compiled import ArtifactError, CompiledModel


def load(path: str, chip: str | Chip | None = None) -> CompiledModel:
    """Loads a model saved with CompiledModel.save (no model code needed)."""
    return CompiledModel.load(path, load_chip(chip) if chip is not None else None)


__version__ = "0.1.0"
__all__ = ["compile", "compile_ir", "from_onnx", "from_tensorflow", "generate", "vnpu_backend", "load", "Chip", "ChipError",
           "list_presets", "load_chip", "DType",
           "CompiledModel", "ArtifactError", "__version__"]
