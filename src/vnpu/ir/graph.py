"""A typed tensor-graph IR: values with static shapes and dtypes, nodes in topological order."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vnpu.dtypes import DType


def shape_only_array(shape: tuple[int, ...], dtype: DType) -> np.ndarray:
    """A stand-in constant with no memory behind it (zero strides): timing-only programs of
    models instantiated on the `meta` device need each weight's shape and dtype, not its data."""
    return np.broadcast_to(np.zeros((), dtype.np), shape)


def is_shape_only(a: np.ndarray) -> bool:
    return a.size > 1 and all(s == 0 for s in a.strides)


@dataclass(frozen=True)
class TensorType:
    shape: tuple[int, ...]
    dtype: DType

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(map(str, self.shape))}]"


class Value:
    """An SSA tensor value. Constants carry their data (`data`); others are computed."""

    __slots__ = ("name", "type", "producer", "data")

    def __init__(self, name: str, type: TensorType, producer: "Node | None" = None, data: np.ndarray | None = None):
        self.name = name
        self.type = type
        self.producer = producer
        self.data = data

    @property
    def is_const(self) -> bool:
        return self.data is not None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> DType:
        return self.type.dtype

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


@dataclass(eq=False)
class Node:
    op: str
    inputs: list[Value]
    outputs: list[Value]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    @property
    def output(self) -> Value:
        assert len(self.outputs) == 1, f"{self.op} has {len(self.outputs)} outputs"
        return self.outputs[0]


class Graph:
    """Nodes in topological order; `inputs` are runtime arguments, constants hang off Values.

    `state` pairs an input that is persistent device state (a KV cache) with the value that
    replaces it after a run; the compiler requires that value to live in the input's own
    buffer (updated in place). `weight_names` names the constants that are model weights
    (the same tensor under the same name in every graph exported from one module), which
    programs sharing a device keep in one copy.
    """

    def __init__(self, name: str = "graph"):
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.nodes: list[Node] = []
        self.state: list[tuple[Value, Value]] = []
        self.state_init: dict[str, np.ndarray] = {}  # state input name -> its contents before the first run
        self.weight_names: set[str] = set()
        self._ids = itertools.count()
        self._names: set[str] = set()

    def _fresh(self, hint: str) -> str:
        hint = "".join(c if c.isalnum() or c == "_" else "_" for c in hint) or "v"
        name = hint
        while name in self._names:
            name = f"{hint}_{next(self._ids)}"
        self._names.add(name)
        return name

    def add_input(self, name: str, type: TensorType) -> Value:
        v = Value(self._fresh(name), type)
        self.inputs.append(v)
        return v

    def add_const(self, name: str, data: np.ndarray, dtype: DType | None = None) -> Value:
        from vnpu.dtypes import from_numpy

        data = np.asarray(data)
        dt = dtype or from_numpy(data.dtype)
        # (ascontiguousarray alone would turn a 0-d scalar into shape (1,))
        data = np.ascontiguousarray(data.astype(dt.np, copy=False)).reshape(data.shape)
        return Value(self._fresh(name), TensorType(tuple(data.shape), dt), data=data)

    def add_node(self, op: str, inputs: list[Value], attrs: dict[str, Any] | None = None, name: str = "") -> Node:
        """Appends a node whose output types come from the op's shape inference."""
        from vnpu.ir.ops import infer_types

        attrs = dict(attrs or {})
        out_types = infer_types(op, [v.type for v in inputs], attrs)
        node = Node(op, list(inputs), [], attrs, name or op)
        node.outputs = [Value(self._fresh(name or op), t, producer=node) for t in out_types]
        self.nodes.append(node)
        return node

    def clone(self) -> "Graph":
        """A structural copy: new Values and Nodes, constant arrays shared (passes replace
        constants, they never write into them)."""
        g = Graph(self.name)
        g._names = set(self._names)
        vmap: dict[int, Value] = {}

        def cp(v: Value) -> Value:
            nv = vmap.get(id(v))
            if nv is None:
                nv = vmap[id(v)] = Value(v.name, v.type, None, v.data)
            return nv

        g.inputs = [cp(v) for v in self.inputs]
        for n in self.nodes:
            nn = Node(n.op, [cp(v) for v in n.inputs], [cp(v) for v in n.outputs], dict(n.attrs), n.name)
            for o in nn.outputs:
                o.producer = nn
            g.nodes.append(nn)
        g.outputs = [cp(v) for v in self.outputs]
        g.state = [(cp(a), cp(b)) for a, b in self.state]
        g.weight_names = set(self.weight_names)
        g.state_init = dict(self.state_init)
        return g

    def constants(self) -> list[Value]:
        seen: dict[int, Value] = {}
        for n in self.nodes:
            for v in n.inputs:
                if v.is_const:
                    seen.setdefault(id(v), v)
        for v in self.outputs:
            if v.is_const:
                seen.setdefault(id(v), v)
        return list(seen.values())

    def replace_uses(self, old: Value, new: Value) -> None:
        """Every use of `old` (node inputs, graph outputs, state updates) becomes `new`."""
        for n in self.nodes:
            n.inputs = [new if v is old else v for v in n.inputs]
        self.outputs = [new if v is old else v for v in self.outputs]
        self.state = [(a, new if b is old else b) for a, b in self.state]

    def splice(self, node: Node, at: Node, removed: list[Node]) -> None:
        """A rewrite of a chain of nodes into one: `node` (built on existing values, its outputs
        the chain's results) takes `at`'s place, the nodes in `removed` leave the graph, and
        `node` becomes the producer of its outputs."""
        for o in node.outputs:
            o.producer = node
        self.nodes[self.nodes.index(at)] = node
        for m in removed:
            self.nodes.remove(m)

    def users(self) -> dict[int, list[Node]]:
        out: dict[int, list[Node]] = {}
        for n in self.nodes:
            for v in n.inputs:
                out.setdefault(id(v), []).append(n)
        return out

    def __str__(self) -> str:
        from vnpu.ir.printer import format_graph

        return format_graph(self)
