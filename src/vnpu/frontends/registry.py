"""What every frontend shares: its per-op lowering table and the result of an import."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from vnpu.ir.graph import Graph

Handler = Callable[..., Any]


def registrar(table: dict[str, Handler]) -> Callable[..., Callable[[Handler], Handler]]:
    """A decorator that registers a lowering under one or more op names in `table`,
    e.g. aten = registrar(ATEN); @aten("addmm.default")."""
    def register(*names: str) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            for n in names:
                table[n] = fn
            return fn
        return deco
    return register


@dataclass
class ImportResult:
    graph: Graph
    fallback_ops: dict[str, int] = field(default_factory=dict)
    folded: int = 0
    opset: int = 0  # ONNX imports: the model's opset (0 for other frontends)
