"""ONNX frontend: ONNX models (opset >= 13) -> vnpu IR. Needs the `onnx` extra."""
from vnpu.frontends.onnx.importer import (ONNX, DynamicShapeError, ImportResult, OnnxModelError, import_onnx,
                                          input_specs, load_model, resolve_input_shapes)

__all__ = ["import_onnx", "load_model", "input_specs", "resolve_input_shapes", "ImportResult", "OnnxModelError",
           "DynamicShapeError", "ONNX"]
