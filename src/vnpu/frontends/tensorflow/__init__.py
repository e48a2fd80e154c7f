"""TensorFlow / Keras frontend: tf2onnx to ONNX, then the ONNX frontend. Needs the `tensorflow` extra."""
from vnpu.frontends.tensorflow.converter import TensorFlowModelError, tensorflow_to_onnx

__all__ = ["tensorflow_to_onnx", "TensorFlowModelError"]
