"""ONNX models (opset 13 and newer) -> vnpu IR.

Each ONNX op type is lowered by its entry in `onnx_ops.ONNX`, onto the same IR ops the
PyTorch frontend emits for the same computation, so both paths compile to the same program.
Initializers become weights. A node whose inputs are all constants (Shape-driven
subgraphs: Shape -> Gather -> Concat -> Reshape, ConstantOfShape, Range...) is evaluated
once at import time with `onnx.reference`. A node with no entry runs on the host as a
`host_call` (executed there with `onnx.reference`), or is named in one error under strict=True.
Control flow (If, Loop, Scan) is unrolled here too: `import_nodes` imports a subgraph body into
the same graph, its names chaining to the enclosing scope's; sequences and optionals are
compile-time values (`SeqValue`, `OptionalValue`, see ops_control.py), never program inputs
or outputs.
"""
from __future__ import annotations

import warnings
from collections import ChainMap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, MutableMapping, Sequence

import numpy as np

from vnpu.dtypes import DType
from vnpu.frontends.errors import FallbackWarning, UnsupportedOpError, require
from vnpu.frontends.registry import Handler, ImportResult, LoweringContext, registrar
from vnpu.ir.graph import Graph, TensorType, Value

MIN_OPSET = 13
# Control flow is unrolled at import: at most this many subgraph-body nodes are imported per
# model (over every If branch, Loop iteration, Scan step and SequenceMap element, nested included)
MAX_UNROLLED_NODES = 4096
MAX_FOLD_GROWTH = 4  # a folded constant may be at most this many times its inputs (or < 1 MiB)
# Ops whose result is not a function of their inputs: never folded.
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                     "Bernoulli"}


# Ops on sequences and optionals: never folded (their values are not tensors; their
# lowerings in ops_control.py keep them as compile-time lists)
_NON_TENSOR_PREFIXES = ("Sequence", "SplitToSequence", "ConcatFromSequence", "Optional")
# Op types whose lowerings take sequence / optional values as inputs (ops_control.py adds its
# entries when it registers them); any other op reading one is refused by name
TAKES_NON_TENSORS: set[str] = set()


class OnnxModelError(ValueError):
    """The file or ModelProto is not a valid ONNX model (or uses an opset vnpu cannot read)."""


class UnsupportedDTypeError(OnnxModelError):
    """A tensor has an ONNX element type vnpu has no dtype for (2/4-bit ints, 8-bit floats, strings...)."""


class DynamicShapeError(ValueError):
    """A model input has a dimension without a fixed size and no shape was given for it."""


# ONNX TensorProto element types -> vnpu dtypes (wider types are narrowed, like the torch frontend does)
def _elem_dtype(elem: int) -> DType:
    from onnx import TensorProto as T

    table = {T.FLOAT: DType.fp32, T.DOUBLE: DType.fp32, T.FLOAT16: DType.fp16, T.BFLOAT16: DType.bf16,
             T.INT64: DType.int64, T.INT32: DType.int32, T.INT16: DType.int32, T.INT8: DType.int8,
             T.UINT8: DType.int32, T.UINT16: DType.int32, T.UINT32: DType.int64, T.BOOL: DType.bool,
             # 4-/2-bit integers one value per byte in int8 (every value fits); lowerings that depend on the
             # range (QuantizeLinear, Cast) read the ONNX type through OnnxContext.model
             T.INT4: DType.int8, T.UINT4: DType.int8, T.INT2: DType.int8, T.UINT2: DType.int8}
    if elem not in table:
        import onnx

        raise UnsupportedDTypeError(f"ONNX element type {onnx.TensorProto.DataType.Name(elem)} has no vnpu equivalent")
    return table[elem]


def dtype_to_onnx(dt: DType) -> int:
    from onnx import TensorProto as T

    return {DType.fp32: T.FLOAT, DType.fp16: T.FLOAT16, DType.bf16: T.BFLOAT16, DType.int64: T.INT64,
            DType.int32: T.INT32, DType.int8: T.INT8, DType.bool: T.BOOL}[dt]


class SeqValue(list):
    """An ONNX sequence, known at import time: a Python list of tensor Values (its length is
    static; the elements are computed by the program). `elem_dtype` is kept for an empty one."""

    def __init__(self, items: Sequence[Value] = (), elem_dtype: DType | None = None):
        super().__init__(items)
        self.elem_dtype = elem_dtype if elem_dtype is not None or not items else items[0].dtype


@dataclass
class OptionalValue:
    """An ONNX optional, known at import time: its element (a tensor or a sequence) or None."""

    value: Value | SeqValue | None


# what an ONNX name is bound to while importing: a tensor Value, or a sequence / optional
OnnxValue = Value | SeqValue | OptionalValue
Env = MutableMapping[str, OnnxValue]


def value_kind(v: Any) -> str:
    """'tensor', 'sequence' or 'optional': for naming a value where another kind is needed."""
    return "sequence" if isinstance(v, SeqValue) else "optional" if isinstance(v, OptionalValue) else "tensor"


class UnrollLimitError(ValueError):
    """Unrolling control flow would import more than MAX_UNROLLED_NODES subgraph-body nodes."""


@dataclass
class OnnxContext(LoweringContext):
    """What a handler sees: the graph being built and the node being lowered (and, for control
    flow, the names visible to it and the import's bookkeeping, to import subgraph bodies)."""

    g: Graph
    opset: int
    node: Any = None  # onnx.NodeProto
    model: Any = None  # the onnx.ModelProto being imported (ONNX element types of values: ops_quant.onnx_elem_type)
    env: Env = field(default_factory=dict)  # names visible to `node` (a subgraph's env chains to the outer one)
    strict: bool = False
    result: ImportResult | None = None
    unsupported: dict[str, int] = field(default_factory=dict)  # strict=True: op type -> count, raised at the end
    where: dict[str, list[str]] = field(default_factory=dict)  # op type -> node labels not lowered
    unroll_budget: int = MAX_UNROLLED_NODES

    @property
    def node_label(self) -> str:
        n = self.node
        return n.name or (n.output[0] if n is not None and n.output else "node")

    def emit(self, op: str, inputs: list[Value], attrs: dict | None = None) -> Value:
        return self.g.add_node(op, inputs, attrs or {}, name=self.node_label).output

    def const(self, data: Any, dtype: DType) -> Value:
        return self.g.add_const("c", np.asarray(data).astype(dtype.np), dtype)

    def ints(self, v: Value | None) -> list[int] | None:
        """A constant integer tensor input (shape, axes, pads...) as a list; None when absent
        or only known at run time."""
        if v is None or not v.is_const:
            return None
        return [int(i) for i in np.asarray(v.data).reshape(-1)]

    def inline(self, graph: Any, bound: Sequence[OnnxValue | None]) -> list[OnnxValue]:
        """Imports a subgraph body (onnx.GraphProto) into this graph, its inputs bound to `bound`
        and every other name it reads resolved in the enclosing scope; its outputs' values.
        Raises UnrollLimitError when the model's budget of unrolled body nodes is spent."""
        numpy_helper = require("onnx.numpy_helper", "onnx")
        if len(graph.node) > self.unroll_budget:
            raise UnrollLimitError(f"node {self.node_label} ({self.node.op_type}): unrolling its control flow "
                                   f"imports more than {MAX_UNROLLED_NODES} subgraph nodes")
        self.unroll_budget -= len(graph.node)
        local: dict[str, OnnxValue] = {}
        for t in graph.initializer:
            local[t.name] = self.g.add_const(t.name, numpy_helper.to_array(t), _elem_dtype(t.data_type))
        for vi, v in zip(graph.input, bound):
            if v is not None:
                local[vi.name] = v
        env = import_nodes(self, graph.node, ChainMap(local, self.env))
        missing = [o.name for o in graph.output if o.name not in env]
        if missing:
            raise OnnxModelError(f"node {self.node_label} ({self.node.op_type}): subgraph {graph.name!r} output "
                                 f"{missing[0]!r} is not produced by any of its nodes")
        return [env[o.name] for o in graph.output]

    def tentatively(self, build: Callable[[], Any], tolerate: tuple[type[Exception], ...] = (UnrollLimitError,)) -> Any:
        """build()'s result; when it returns None or raises one of `tolerate` (an unroll too
        large; for a branch that may never run, any import error), None, with the nodes it added
        and the fallbacks it recorded undone, so the node is handled as if never tried."""
        n_nodes, budget = len(self.g.nodes), self.unroll_budget
        unsupported = dict(self.unsupported)
        where = {k: list(v) for k, v in self.where.items()}
        res = self.result
        fallback, folded = (dict(res.fallback_ops), res.folded) if res is not None else ({}, 0)
        try:
            out = build()
        except tolerate:
            out = None
        if out is None:
            del self.g.nodes[n_nodes:]
            self.unroll_budget = budget
            self.unsupported.clear()
            self.unsupported.update(unsupported)
            self.where.clear()
            self.where.update(where)
            if res is not None:
                res.fallback_ops.clear()
                res.fallback_ops.update(fallback)
                res.folded = folded
        return out


ONNX: dict[str, Handler] = {}
onnx_op = registrar(ONNX)  # registers the lowering of ONNX op types, e.g. @onnx_op("Conv")


# -- loading and checking ----------------------------------------------------------------
def load_model(model: Any) -> Any:
    """A path, bytes or ModelProto -> a checked ModelProto at opset >= 13."""
    onnx = require("onnx", "onnx")
    if isinstance(model, onnx.ModelProto):
        proto = model
        where = "the ONNX model"
    elif isinstance(model, (bytes, bytearray)):
        where = "the ONNX bytes"
        try:
            proto = onnx.load_model_from_string(bytes(model))
        except Exception as e:  # noqa: BLE001 - protobuf raises several decode errors
            raise OnnxModelError(f"{where} cannot be parsed as ONNX protobuf ({type(e).__name__}: {e})") from None
    elif isinstance(model, (str, Path)):
        path = Path(model)
        where = str(path)
        if not path.is_file():
            raise OnnxModelError(f"{path}: no such ONNX file")
        try:
            proto = onnx.load(str(path))
        except Exception as e:  # noqa: BLE001
            raise OnnxModelError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e}); "
                                 "export it again (torch.onnx.export, tf2onnx)") from None
    else:
        raise TypeError(f"from_onnx takes a path, bytes or onnx.ModelProto, not {type(model).__name__}")
    if not proto.graph.node and not proto.graph.output:
        raise OnnxModelError(f"{where} has an empty graph (is it an ONNX model?)")
    try:
        onnx.checker.check_model(proto)
    except Exception as e:  # noqa: BLE001 - ValidationError and friends
        raise OnnxModelError(f"{where} is not a valid ONNX model: {_first_line(e)}") from None
    opset = _opset(proto)
    if opset == 0 and not any(n.domain in ("", "ai.onnx") for n in proto.graph.node):
        return proto  # only other domains' ops (training, ML): named by strict mode, run on the host otherwise
    if opset < 9 and any(n.op_type == "Scan" and n.domain in ("", "ai.onnx") for n in proto.graph.node):
        # the converter's Scan 8 -> 9 step drops the batch axis from the model's own inputs and
        # outputs, which would change what the program takes and returns: ops_control upgrades them
        from vnpu.frontends.onnx.ops_control import upgrade_scan8

        upgraded = upgrade_scan8(proto, MIN_OPSET)
        if upgraded is None:
            raise UnsupportedOpError({"Scan": 1}, "vnpu/frontends/onnx/ops_control.py",
                                     {"Scan": ["opset-8 Scan (batch axis) with sequence_lens, a dynamic batch or a body "
                                               "reading enclosing values: re-export with opset >= 9"]})
        return upgraded
    if opset < MIN_OPSET:
        try:
            from onnx import version_converter

            proto = version_converter.convert_version(proto, MIN_OPSET)
        except Exception as e:  # noqa: BLE001
            raise OnnxModelError(f"{where} uses opset {opset}; vnpu reads opset {MIN_OPSET} and newer and the "
                                 f"automatic upgrade failed ({_first_line(e)}). Re-export with opset >= {MIN_OPSET}.") from None
    return proto


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def _opset(proto: Any) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def input_specs(proto: Any) -> list[tuple[str, list[int | str | None], DType]]:
    """The model's runtime inputs: (name, dims, dtype), a dim being an int, a symbolic name or None."""
    inits = {t.name for t in proto.graph.initializer}
    specs = []
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise OnnxModelError(f"input {vi.name!r} is not a tensor; vnpu takes tensor inputs only")
        dims: list[int | str | None] = []
        for d in tt.shape.dim:
            dims.append(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None))
        specs.append((vi.name, dims, _elem_dtype(tt.elem_type)))
    return specs


def resolve_input_shapes(proto: Any, input_shapes: Mapping[str, Sequence[int]] | None) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for every input: the model's static dims, `input_shapes` for the rest."""
    given = dict(input_shapes or {})
    specs = input_specs(proto)
    names = {n for n, _, _ in specs}
    unknown = sorted(set(given) - names)
    if unknown:
        raise ValueError(f"input_shapes names {unknown}, which are not inputs of the model; its inputs are {sorted(names)}")
    out: dict[str, tuple[int, ...]] = {}
    for name, dims, _ in specs:
        if name in given:
            shape = tuple(int(d) for d in given[name])
            if len(shape) != len(dims):
                raise ValueError(f"input_shapes[{name!r}] = {shape} has rank {len(shape)}; the model's input has "
                                 f"rank {len(dims)} ({_dims_str(dims)})")
            for i, (d, s) in enumerate(zip(dims, shape)):
                if isinstance(d, int) and d != s:
                    raise ValueError(f"input_shapes[{name!r}] = {shape}: dim {i} is fixed to {d} in the model")
            out[name] = shape
            continue
        for i, d in enumerate(dims):
            if not isinstance(d, int) or d < 0:  # 0 is a static zero-size dim
                raise DynamicShapeError(
                    f"input {name!r} dim {i} ({d or 'unnamed'}) is dynamic in the model ({_dims_str(dims)}) and no "
                    f"shape was given; pass input_shapes={{{name!r}: (...)}} (CLI: --input-shape {name}=D0,D1,...)")
        out[name] = tuple(int(d) for d in dims)  # type: ignore[arg-type]
    return out


def _dims_str(dims: list) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in dims) + "]"


# -- import ------------------------------------------------------------------------------
def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [s.decode() for s in v]
        out[a.name] = v
    return out


def import_onnx(model: Any, input_shapes: Mapping[str, Sequence[int]] | None = None, name: str | None = None,
                strict: bool = False) -> ImportResult:
    # importing the lowering modules registers their handlers
    from vnpu.frontends.onnx import onnx_ops, ops_control, ops_losses, ops_quant, ops_sampling, ops_signal  # noqa: F401
    from vnpu.frontends.onnx.patterns import drop_dead_nodes, lift_gelu, lift_layer_norm

    numpy_helper = require("onnx.numpy_helper", "onnx")
    from vnpu.frontends.onnx.qdq import fuse_qdq

    proto = load_model(model)
    proto, _ = fuse_qdq(proto)  # QDQ groups -> integer matmuls / convs (a copy of the model when any)
    opset = _opset(proto)
    shapes = resolve_input_shapes(proto, input_shapes)
    gname = name or proto.graph.name or "onnx_model"
    g = Graph(gname)
    res = ImportResult(g, opset=opset)
    cx = OnnxContext(g, opset, model=proto, strict=strict, result=res)
    env: dict[str, OnnxValue] = {}
    for t in proto.graph.initializer:
        arr = numpy_helper.to_array(t)
        env[t.name] = g.add_const(t.name, arr, _elem_dtype(t.data_type))
    for iname, _, dt in input_specs(proto):
        env[iname] = g.add_input(iname, TensorType(shapes[iname], dt))
        if env[iname].type.numel == 0:  # a zero-size input holds no data: what it feeds is folded
            env[iname] = _empty(g, env[iname])

    for o in proto.graph.output:
        if not o.type.HasField("tensor_type"):
            raise OnnxModelError(f"output {o.name!r} is not a tensor ({o.type.WhichOneof('value')}); vnpu programs "
                                 "return tensors only")
    import_nodes(cx, proto.graph.node, env)
    unsupported, where = cx.unsupported, cx.where
    if unsupported:
        raise UnsupportedOpError(unsupported, "vnpu/frontends/onnx/onnx_ops.py", where)
    for o in proto.graph.output:
        if o.name not in env:
            raise OnnxModelError(f"graph output {o.name!r} is not produced by any node")
    for o in proto.graph.output:
        if not isinstance(env[o.name], Value):
            raise OnnxModelError(f"graph output {o.name!r} is a {value_kind(env[o.name])}; vnpu programs return "
                                 "tensors only")
    g.outputs = _own_outputs(g, [env[o.name] for o in proto.graph.output])
    lift_gelu(g)
    lift_layer_norm(g)
    drop_dead_nodes(g)
    if res.fallback_ops:
        listing = ", ".join(f"{k} (x{v}: {', '.join(where[k][:3])}{', ...' if len(where[k]) > 3 else ''})"
                            for k, v in sorted(res.fallback_ops.items()))
        warnings.warn(f"vnpu: {len(res.fallback_ops)} ONNX op type(s) run on the host CPU instead of the chip: {listing}",
                      FallbackWarning, stacklevel=3)
    return res


def import_nodes(cx: OnnxContext, nodes: Sequence[Any], env: Env) -> Env:
    """Lowers `nodes` (a model's graph or a subgraph body) in order, reading and binding names
    in `env`; returns env. Each node is folded when its inputs are constants, lowered by its
    ONNX entry, or else run on the host (recorded in cx; strict=True names it at the end)."""
    outer_env, outer_node = cx.env, cx.node
    cx.env = env
    try:
        for node in nodes:
            cx.node = node
            _import_node(cx, node, env)
    finally:
        cx.env, cx.node = outer_env, outer_node
    return env


def _import_node(cx: OnnxContext, node: Any, env: Env) -> None:
    g, opset, res = cx.g, cx.opset, cx.result
    label = cx.node_label
    for i in node.input:
        if i and i not in env:
            raise OnnxModelError(f"node {label} ({node.op_type}) reads {i!r}, which no input, initializer or "
                                 "earlier node provides")
    ins = [env[i] if i else None for i in node.input]
    present = [v for v in ins if v is not None]
    non_tensor = [(n, v) for n, v in zip(node.input, ins) if v is not None and not isinstance(v, Value)]
    out: Any = None
    is_default = node.domain in ("", "ai.onnx")
    has_subgraph = any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute)
    if non_tensor and not (is_default and (node.op_type in TAKES_NON_TENSORS or node.op_type == "Identity")):
        n, v = non_tensor[0]
        raise UnsupportedOpError({node.op_type: 1}, "vnpu/frontends/onnx/ops_control.py",
                                 {node.op_type: [f"{label} (its input {n!r} is a {value_kind(v)}, which neither its "
                                                 "lowering nor the host takes)"]})
    if non_tensor and node.op_type == "Identity":
        out = ins[0]  # a sequence / optional passes through as the same compile-time value
    all_const = not non_tensor and all(v.is_const for v in present)
    if out is None and is_default and all_const and not has_subgraph and node.op_type not in _NONDETERMINISTIC \
            and not node.op_type.startswith(_NON_TENSOR_PREFIXES):
        out = _fold(cx, node, ins, opset)
        if out is not None:
            # a small constant blown up into a large one (Expand, Tile, ConstantOfShape...) is
            # cheaper to compute on the chip than to store as a weight, when there is a lowering
            in_bytes = sum(v.type.nbytes for v in present)
            if node.op_type in ONNX and sum(v.type.nbytes for v in out) > max(MAX_FOLD_GROWTH * in_bytes, 1 << 20):
                out = None
            elif res is not None:
                res.folded += 1
    if out is None and is_default and node.op_type in ONNX:
        out = ONNX[node.op_type](cx, ins, _attrs(node))
    if out is None:
        if non_tensor:
            n, v = non_tensor[0]
            raise UnsupportedOpError({node.op_type: 1}, "vnpu/frontends/onnx/ops_control.py",
                                     {node.op_type: [f"{label} (not lowered for these inputs, and the host cannot "
                                                     f"take its {value_kind(v)} input {n!r})"]})
        out = _host_call(cx, node, ins, opset)
        bucket = cx.unsupported if cx.strict or res is None else res.fallback_ops
        key = node.op_type if is_default else f"{node.domain}.{node.op_type}"
        bucket[key] = bucket.get(key, 0) + 1
        cx.where.setdefault(key, []).append(label)
    outs = list(out) if isinstance(out, (tuple, list)) and not isinstance(out, SeqValue) else [out]
    for oname, v in zip(node.output, outs):
        if oname and v is not None:
            env[oname] = _empty(g, v) if isinstance(v, Value) and v.type.numel == 0 and not v.is_const else v


def _empty(g: Graph, v: Value) -> Value:
    """A zero-size value as a constant (it has no elements to compute)."""
    return g.add_const(v.name, np.zeros(v.shape, v.dtype.np if v.dtype != DType.bf16 else np.float32), v.dtype)


def _own_outputs(g: Graph, outs: list[Value]) -> list[Value]:
    """Graph outputs as values computed by the program: an output that is a graph input, a
    constant, or the same value as an earlier output gets a copy node of its own (each output
    is a buffer the program writes)."""
    seen: set[int] = set()
    fixed = []
    for v in outs:
        if v.is_const or v.producer is None or id(v) in seen:
            v = g.add_node("copy", [v], {}, name=f"{v.name}_output").output
        seen.add(id(v))
        fixed.append(v)
    return fixed


def _node_evaluator(node: Any, opset: int) -> Any:
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(node, opsets={"": opset})


def _declared_type(cx: OnnxContext, name: str, v: Value) -> Any:
    """v's data in its ONNX element type: uint8 / uint16 / int16 are stored in int32, and
    onnx.reference reads a QuantizeLinear's output type from its zero point's."""
    if v.dtype == DType.int32:
        from onnx import helper

        from vnpu.frontends.onnx.ops_quant import UINT8, UINT16, INT16, onnx_elem_type

        elem = onnx_elem_type(cx, name)
        if elem in (UINT8, UINT16, INT16):
            return np.asarray(v.data).astype(helper.tensor_dtype_to_np_dtype(elem))
    return v.data


def _fold(cx: OnnxContext, node: Any, ins: list[Value | None], opset: int) -> tuple[Value, ...] | None:
    feeds = {n: _declared_type(cx, n, v) for n, v in zip(node.input, ins) if n and v is not None}
    try:
        outs = _node_evaluator(node, opset).run(None, feeds)
    except Exception as e:  # noqa: BLE001
        raise OnnxModelError(f"node {cx.node_label} ({node.op_type}) fails on its constant inputs: {_first_line(e)}") from None
    if any(not isinstance(a, np.ndarray) and not np.isscalar(a) for a in outs):
        return None  # a sequence / optional / map: not a tensor constant
    from vnpu.dtypes import from_numpy

    vals = []
    for oname, arr in zip(node.output, outs):
        arr = np.asarray(arr)
        dt = DType.fp32 if arr.dtype == np.float64 else (DType.int64 if arr.dtype == np.uint64 else None)
        try:
            dt = dt or from_numpy(arr.dtype)
        except TypeError:
            dt = DType.int32 if np.issubdtype(arr.dtype, np.integer) else DType.fp32
        vals.append(cx.g.add_const(oname or "folded", arr, dt))
    return tuple(vals)


def _host_call(cx: OnnxContext, node: Any, ins: list[Value | None], opset: int) -> tuple[Value, ...]:
    """A node the chip cannot run, executed on the host with onnx.reference; output types
    come from ONNX shape inference of the node alone (its constant inputs included). The
    enclosing-scope values its subgraphs read are fed to it like inputs."""
    names = [n for n, v in zip(node.input, ins) if n and v is not None]
    inputs = [v for n, v in zip(node.input, ins) if n and v is not None]
    for n in _outer_names(node):
        if n in names:
            continue
        if n not in cx.env:
            raise OnnxModelError(f"node {cx.node_label} ({node.op_type}): a subgraph reads {n!r}, which no enclosing "
                                 "scope provides")
        if not isinstance(cx.env[n], Value):
            raise UnsupportedOpError({node.op_type: 1}, "vnpu/frontends/onnx/ops_control.py",
                                     {node.op_type: [f"{cx.node_label} (its subgraph reads the {value_kind(cx.env[n])} "
                                                     f"{n!r}, which the host cannot take)"]})
        names.append(n)
        inputs.append(cx.env[n])
    out_types = _infer_node(cx, node, names, inputs, opset)
    payload = {"node": node.SerializeToString(), "opset": opset, "input_names": names}
    n = cx.g.add_node("host_call", inputs, {"target": f"onnx:{node.op_type}", "out_types": out_types, "payload": payload},
                      name=cx.node_label)
    return tuple(n.outputs)


def _outer_names(node: Any) -> list[str]:
    """The names a node's subgraphs (nested ones included) read from outside themselves."""
    free: list[str] = []

    def walk(graph: Any, outside: set[str]) -> None:
        local = {vi.name for vi in graph.input} | {t.name for t in graph.initializer}
        for n in graph.node:
            for i in n.input:
                if i and i not in local and i not in outside and i not in free:
                    free.append(i)
            for a in n.attribute:
                for sub in ([a.g] if a.type == a.GRAPH else list(a.graphs) if a.type == a.GRAPHS else []):
                    walk(sub, outside | local)
            local.update(o for o in n.output if o)
        for o in graph.output:
            if o.name not in local and o.name not in outside and o.name not in free:
                free.append(o.name)

    for a in node.attribute:
        for sub in ([a.g] if a.type == a.GRAPH else list(a.graphs) if a.type == a.GRAPHS else []):
            walk(sub, set())
    return free


def _infer_node(cx: OnnxContext, node: Any, names: list[str], ins: list[Value], opset: int) -> list[TensorType]:
    import onnx
    from onnx import helper, numpy_helper

    inputs, inits = [], []
    for n, v in zip(names, ins):
        if not n or v is None:
            continue
        if v.is_const:
            inits.append(numpy_helper.from_array(np.asarray(v.data).astype(v.dtype.np if v.dtype != DType.bf16 else np.float32), n))
        inputs.append(helper.make_tensor_value_info(n, dtype_to_onnx(v.dtype) if v.dtype != DType.bf16 else onnx.TensorProto.FLOAT,
                                                    list(v.shape)))
    outs = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o]
    graph = helper.make_graph([node], "one_node", inputs, outs, initializer=inits)
    opsets = [helper.make_opsetid("", opset)]
    if node.domain not in ("", "ai.onnx"):
        opsets.append(helper.make_opsetid(node.domain, 1))
    types: list[TensorType] = []
    try:
        m = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=opsets), strict_mode=True,
                                              data_prop=True)
        by_name = {vi.name: vi for vi in list(m.graph.output) + list(m.graph.value_info)}
        for o in node.output:
            if not o:
                continue
            tt = by_name[o].type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
            if not tt.HasField("shape") or any(d < 0 for d in dims) or tt.elem_type == 0:
                raise ValueError("not static")
            types.append(TensorType(tuple(int(d) for d in dims), _elem_dtype(tt.elem_type)))
    except Exception:  # noqa: BLE001 - fall through to running the node on zeros
        types = []
    if types:
        return types
    if node.domain not in ("", "ai.onnx"):
        raise UnsupportedOpError({f"{node.domain}.{node.op_type}": 1}, "vnpu/frontends/onnx/onnx_ops.py",
                                 {f"{node.domain}.{node.op_type}": [cx.node_label]})
    # shape inference could not pin the output shape: run the node once on zeros of the right shapes
    feeds = {n: (v.data if v.is_const else np.zeros(v.shape, v.dtype.np if v.dtype != DType.bf16 else np.float32))
             for n, v in zip(names, ins) if n and v is not None}
    try:
        outs = _node_evaluator(node, opset).run(None, feeds)
    except Exception as e:  # noqa: BLE001
        raise UnsupportedOpError({node.op_type: 1}, "vnpu/frontends/onnx/onnx_ops.py",
                                 {node.op_type: [f"{cx.node_label} (its output shape cannot be determined: {_first_line(e)})"]}) from None
    if any(not isinstance(a, (np.ndarray, np.generic)) for a in outs):  # a sequence / optional: not a tensor
        raise UnsupportedOpError({node.op_type: 1}, "vnpu/frontends/onnx/onnx_ops.py",
                                 {node.op_type: [f"{cx.node_label} (its output is not a tensor)"]})
    from vnpu.dtypes import from_numpy

    return [TensorType(tuple(np.asarray(a).shape), from_numpy(np.asarray(a).dtype)) for a in outs]
