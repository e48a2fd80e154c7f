"""The compiler: graph passes, fusion, memory planning and kernel lowering."""
from vnpu.compiler.lower import CompileError, compile_graph, optimize
from vnpu.compiler.memory import OutOfMemoryError

__all__ = ["compile_graph", "optimize", "CompileError", "OutOfMemoryError"]
