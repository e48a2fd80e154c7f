"""Typed tensor-graph IR shared by every frontend and the compiler."""
from vnpu.ir.graph import Graph, Node, TensorType, Value
from vnpu.ir.ops import OPS, IRTypeError, broadcast_shapes, infer_types
from vnpu.ir.printer import format_graph
from vnpu.ir.verify import IRVerifyError, verify

__all__ = ["Graph", "Node", "TensorType", "Value", "OPS", "IRTypeError", "broadcast_shapes", "infer_types", "format_graph", "verify", "IRVerifyError"]
