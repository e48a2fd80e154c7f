"""What every frontend shares: its per-op lowering table and the result of an import."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from vnpu.dtypes import DType
from vnpu.ir.graph import Graph, Value

Handler = Callable[..., Any]


class LoweringContext:
    """What the frontends' lowering contexts share: a graph being built and emit(); cast() on it."""

    g: Graph

    def emit(self, op: str, inputs: list[Value], attrs: dict | None = None) -> Value:
        raise NotImplementedError

    def pow_by_constant(self, x: Value, p: float) -> Value:
        """x ** p for a constant exponent, as the cheapest op that computes it."""
        if p == 2:
            return self.emit("mul", [x, x])
        if p == 0.5:
            return self.emit("sqrt", [x])
        if p == -0.5:
            return self.emit("rsqrt", [x])
        if p == 1:
            return x
        return self.emit("pow_scalar", [x], {"exponent": float(p)})

    def cast(self, v: Value, dtype: DType) -> Value:
        """`v` in `dtype`: a constant converted at import, a runtime value through a cast node."""
        if v.dtype == dtype:
            return v
        if v.is_const:
            return self.g.add_const(v.name, v.data.astype(dtype.np), dtype)  # type: ignore[union-attr]
        return self.emit("cast", [v], {"dtype": dtype})


def registrar(table: dict[str, Handler]) -> Callable[..., Callable[[Handler], Handler]]:
    """A decorator that registers a lowering under one or more op names in `table`,
    e.g. aten = registrar(ATEN); @aten("addmm.default")."""
    def register(*names: str) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            for n in names:
                if n in table and table[n] is not fn:  # one op, one place
                    raise RuntimeError(f"{n} is lowered twice: {table[n].__qualname__} and {fn.__qualname__}")
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
