"""Runtime: compiled models, host fallback, artifacts."""
from vnpu.runtime.compiled import ArtifactError, CompiledModel, ModelInfo

__all__ = ["CompiledModel", "ModelInfo", "ArtifactError"]
