"""Core-ATen FX graphs (from torch.export or aot_autograd) -> vnpu IR.

Each ATen op is lowered by its entry in `aten_ops.ATEN`. Ops whose tensor inputs are all
constants are evaluated once with PyTorch at import time. Ops with no entry run on the
host as `host_call` nodes (fallback), or are collected into one error under strict=True.
"""
from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx

from vnpu.dtypes import DType, numpy_to_torch, torch_to_dtype, torch_to_numpy
from vnpu.frontends.errors import DataDependentShapeError, FallbackWarning, UnsupportedOpError
from vnpu.frontends.registry import Handler, ImportResult, LoweringContext, registrar
from vnpu.ir.graph import Graph, TensorType, Value, shape_only_array

MAX_FOLD_GROWTH = 4  # a folded constant may be at most this many times its inputs (or < 1 MiB)


def op_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return f"{target._schema.name.split('::')[-1]}.{target._overloadname}"
    return getattr(target, "__name__", str(target))


@dataclass
class ImportContext(LoweringContext):
    g: Graph
    node: fx.Node | None = None
    shape_only: bool = False  # weights are shape-only stand-ins (meta-device model)
    # Values holding a complex tensor as its real view (trailing dim of 2, fp32): complex
    # intermediates (inside torch.fft.irfft, hfft, ...) run on the host between real tensors
    complex_values: set = field(default_factory=set)

    # -- helpers for handlers --------------------------------------------------------
    def emit(self, op: str, inputs: list[Value], attrs: dict | None = None) -> Value:
        name = self.node.name if self.node is not None else op
        return self.g.add_node(op, inputs, attrs or {}, name=name).output

    def const(self, data: np.ndarray | float | int, dtype: DType) -> Value:
        # ints go through astype so that e.g. a Python float fill value truncates like PyTorch
        arr = np.asarray(data, dtype=dtype.np) if dtype.is_float or dtype == DType.bool else np.asarray(data).astype(dtype.np)
        return self.g.add_const("c", arr, dtype)

    def meta_type(self, i: int | None = None) -> TensorType:
        val = self.node.meta["val"]  # type: ignore[union-attr]
        if i is not None:
            val = val[i]
        return TensorType(tuple(int(d) for d in val.shape), torch_to_dtype(val.dtype))

    def out_dtype(self) -> DType:
        val = self.node.meta["val"]  # type: ignore[union-attr]
        if isinstance(val, (tuple, list)):
            val = val[0]
        return torch_to_dtype(val.dtype)

    def tensor(self, x: Any, dtype: DType) -> Value:
        """A Value for a tensor argument or a Python scalar, in `dtype`."""
        if isinstance(x, Value):
            return self.cast(x, dtype)
        return self.const(x, dtype)


ATEN: dict[str, Handler] = {}
aten = registrar(ATEN)  # registers the lowering of ATen overloads, e.g. @aten("addmm.default")
# predicates (context, FX node, its Value operands) -> True for an op on constants that is lowered
# rather than folded at import: aten_quant keeps int8 weights int8 in HBM, dequantized on the chip
KEEP_UNFOLDED: list[Callable[["ImportContext", fx.Node, list[Value]], bool]] = []


def _map(obj: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(o, fn) for o in obj)
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    return fn(obj)


def _values_in(obj: Any) -> list[Value]:
    out: list[Value] = []
    _map(obj, lambda o: out.append(o) if isinstance(o, Value) else None)
    return out


def _shape_of(v: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in v.shape)


def _const_value(g: Graph, name: str, t: torch.Tensor) -> Value:
    dt = torch_to_dtype(t.dtype)
    if t.device.type == "meta":
        return Value(g._fresh(name), TensorType(_shape_of(t), dt), data=shape_only_array(_shape_of(t), dt))
    return g.add_const(name, torch_to_numpy(t), dt)


def import_fx(gm: fx.GraphModule, constants: dict[str, torch.Tensor], name: str = "model",
              strict: bool = False, user_outputs: list[bool] | None = None,
              mutations: dict[str, str] | None = None, weight_placeholders: set[str] | None = None) -> ImportResult:
    """`constants` maps placeholder names to weights (parameters, buffers, lifted constants);
    every other placeholder becomes a runtime input. `mutations` maps the placeholder of a
    buffer the graph updates (a KV cache) to the output node holding its new value: such a
    buffer becomes persistent state (`Graph.state`), not a constant. Constants listed in
    `weight_placeholders` are recorded as model weights (`Graph.weight_names`). Weights on the
    `meta` device import as shape-only constants (timing-only compilation)."""
    from vnpu.frontends.torch import aten_ops  # noqa: F401  (registers the handlers)

    g = Graph(name)
    cx = ImportContext(g)
    mutations = mutations or {}
    shape_only = any(t.device.type == "meta" for t in constants.values())
    cx.shape_only = shape_only
    env: dict[fx.Node, Any] = {}
    res = ImportResult(g)
    unsupported: dict[str, int] = {}
    for node in gm.graph.nodes:
        cx.node = node
        if node.op == "placeholder":
            if node.name in constants and node.name not in mutations:
                env[node] = _const_value(g, node.name, constants[node.name])
                if weight_placeholders is not None and node.name in weight_placeholders:
                    g.weight_names.add(env[node].name)
            else:
                val = node.meta.get("val")
                if not isinstance(val, torch.Tensor):
                    env[node] = val  # a symbolic int or a Python constant
                    continue
                env[node] = g.add_input(node.name, TensorType(_shape_of(val), torch_to_dtype(val.dtype)))
                if node.name in mutations and node.name in constants:  # persistent state: keep its initial value
                    init = _const_value(g, node.name + "_init", constants[node.name])
                    g.state_init[env[node].name] = init.data
            continue
        if node.op == "get_attr":
            t = getattr(gm, node.target)  # type: ignore[arg-type]
            env[node] = g.add_const(node.name, torch_to_numpy(t), torch_to_dtype(t.dtype)) if isinstance(t, torch.Tensor) else t
            continue
        if node.op == "output":
            outs = node.args[0]
            outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
            by_name = {o.name: o for o in outs if isinstance(o, fx.Node)}
            phs = {n.name: n for n in gm.graph.nodes if n.op == "placeholder"}
            for ph, out_name in mutations.items():
                g.state.append((env[phs[ph]], env[by_name[out_name]]))
            if user_outputs is not None:  # drop buffer mutations that torch.export appends
                outs = [o for o, keep in zip(outs, user_outputs) if keep]
            g.outputs = [env[o] if isinstance(o, fx.Node) else cx.const(o, DType.fp32) for o in outs]
            continue
        if node.op != "call_function":
            raise NotImplementedError(f"FX node kind {node.op} ({node.name})")
        args = _map(node.args, lambda a: env[a] if isinstance(a, fx.Node) else a)
        kwargs = _map(node.kwargs, lambda a: env[a] if isinstance(a, fx.Node) else a)
        if node.target is operator.getitem:
            env[node] = None if args[0] is None else args[0][args[1]]
            continue
        vals = _values_in((args, kwargs))
        name_ = op_name(node.target)
        if _is_complex_node(cx, node, vals):  # no chip kernel and no IR dtype: the host, on real views
            env[node] = _host_call(cx, node, args, kwargs)
            bucket = unsupported if strict else res.fallback_ops
            bucket[name_] = bucket.get(name_, 0) + 1
            continue
        if (vals and all(v.is_const for v in vals) and (shape_only or _foldable(node, vals))
                and not any(keep(cx, node, vals) for keep in KEEP_UNFOLDED)):
            env[node] = _fold(cx, node, args, kwargs, vals)
            res.folded += 1
            continue
        if not vals and isinstance(node.target, torch._ops.OpOverload) and isinstance(node.meta.get("val"), torch.Tensor):
            env[node] = _fold(cx, node, args, kwargs, [])  # factory ops: full, arange, zeros...
            res.folded += 1
            continue
        handler = ATEN.get(name_)
        out = None
        if handler is not None:
            out = handler(cx, *args, **kwargs)
        if out is None or out is NotImplemented:
            # a host call either way, so that import goes on and strict mode reports every op
            out = _host_call(cx, node, args, kwargs)
            bucket = unsupported if strict else res.fallback_ops
            bucket[name_] = bucket.get(name_, 0) + 1
        if not isinstance(out, (int, float)):
            _check_meta(node, out)
        env[node] = out
    if unsupported:
        raise UnsupportedOpError(unsupported)
    if res.fallback_ops:
        listing = ", ".join(f"{k} (x{v})" for k, v in sorted(res.fallback_ops.items()))
        warnings.warn(f"vnpu: {len(res.fallback_ops)} op(s) run on the host CPU instead of the chip: {listing}",
                      FallbackWarning, stacklevel=3)
    return res


def _foldable(node: fx.Node, vals: list[Value]) -> bool:
    val = node.meta.get("val")
    vals_t = val if isinstance(val, (tuple, list)) else [val]
    out_bytes = sum(v.numel() * v.element_size() for v in vals_t if isinstance(v, torch.Tensor))
    in_bytes = sum(v.type.nbytes for v in vals)
    return out_bytes <= max(MAX_FOLD_GROWTH * in_bytes, 1 << 20)


def _weight_fold_name(g: Graph, node: fx.Node, vals: list[Value], args: Any, kwargs: Any) -> str | None:
    """A name for a constant folded from weights only (e.g. permute(W) of a Linear), derived
    from its inputs and the op, so that every graph exported from the same module names the
    same folded weight alike (programs sharing a device keep one copy); None otherwise."""
    import hashlib

    if not all(v.name in g.weight_names for v in vals):
        return None
    desc = repr((op_name(node.target), _map((args, kwargs), lambda o: o.name if isinstance(o, Value) else o)))
    return f"{vals[0].name}_{op_name(node.target).split('.')[0]}_{hashlib.sha1(desc.encode()).hexdigest()[:8]}"


def _fold(cx: ImportContext, node: fx.Node, args: Any, kwargs: Any, vals: list[Value]) -> Any:
    """The node evaluated at import; `vals` its Value operands (all constants)."""
    wname = _weight_fold_name(cx.g, node, vals, args, kwargs) if vals else None
    out = _fold_values(cx, node, args, kwargs, wname or node.name)
    if wname is not None:  # the result is a weight too
        for v in _values_in(out):
            if v.is_const:
                cx.g.weight_names.add(v.name)
    return out


def _fold_values(cx: ImportContext, node: fx.Node, args: Any, kwargs: Any, name: str) -> Any:
    if cx.shape_only:  # stand-ins in, stand-ins out: shapes from the tracer's metadata
        def fake(o: Any) -> Any:
            return _const_value(cx.g, name, o) if isinstance(o, torch.Tensor) else o
        val = node.meta.get("val")
        if isinstance(val, (tuple, list)):
            return type(val)(fake(v.to("meta") if isinstance(v, torch.Tensor) else v) for v in val)
        if isinstance(val, torch.Tensor):
            return fake(val.to("meta"))
        return val  # no tensor result (assertions)

    def to_t(o: Any) -> Any:
        return numpy_to_torch(o.data) if isinstance(o, Value) else o

    with torch.no_grad():
        out = node.target(*_map(args, to_t), **_map(kwargs, to_t))  # type: ignore[operator]

    def to_v(o: Any) -> Any:
        return cx.g.add_const(name, torch_to_numpy(o), torch_to_dtype(o.dtype)) if isinstance(o, torch.Tensor) else o

    return _map(out, to_v) if isinstance(out, (tuple, list)) else to_v(out)


class DataDependentValueError(ValueError):
    """A graph computes a Python number from tensor data (`t.item()` of a computed tensor,
    under Dynamo's capture_scalar_outputs): a chip program has fixed shapes and constants."""


def _is_complex_node(cx: ImportContext, node: fx.Node, vals: list[Value]) -> bool:
    val = node.meta.get("val")
    outs = val if isinstance(val, (tuple, list)) else [val]
    return (any(isinstance(v, torch.Tensor) and v.dtype.is_complex for v in outs)
            or any(v.name in cx.complex_values for v in vals))


def _host_call(cx: ImportContext, node: fx.Node, args: Any, kwargs: Any) -> Any:
    val = node.meta.get("val")
    if not all(isinstance(v, torch.Tensor) for v in (val if isinstance(val, (tuple, list)) else [val])):
        raise DataDependentValueError(
            f"vnpu: {node.name} ({op_name(node.target)}) yields a number computed from tensor data ({val}), "
            "which a chip program cannot produce. Leave torch._dynamo.config.capture_scalar_outputs off "
            "(Dynamo then runs the .item() in Python between two compiled graphs) or compute it outside the model.")
    inputs: list[Value] = []

    def templ(o: Any) -> Any:
        if isinstance(o, Value):
            inputs.append(o)
            return ("__vnpu_arg__", len(inputs) - 1)
        if isinstance(o, torch.dtype):
            return ("__torch_dtype__", str(o).split(".")[-1])
        if isinstance(o, (torch.device, torch.memory_format, torch.layout)):
            return None if not isinstance(o, torch.memory_format) else ("__torch_memfmt__", str(o).split(".")[-1])
        return o

    payload = {"args": _map(args, templ), "kwargs": {k: v for k, v in _map(kwargs, templ).items() if v is not None}}
    multi = isinstance(val, (tuple, list))
    vals = list(val) if multi else [val]
    if not all(isinstance(v, torch.Tensor) for v in vals):  # e.g. item(): a scalar read from tensor data
        raise DataDependentShapeError(f"{node.name} ({op_name(node.target)}) gives a Python number computed from "
                                      "tensor values; vnpu programs cannot feed one back into shapes or arguments")
    complex_outs = [i for i, v in enumerate(vals) if v.dtype.is_complex]
    if any(v.dtype != torch.complex64 for v in vals if v.dtype.is_complex):
        torch_to_dtype(next(v.dtype for v in vals if v.dtype.is_complex and v.dtype != torch.complex64))  # raises
    out_types = [TensorType(_shape_of(v) + (2,), DType.fp32) if v.dtype.is_complex
                 else TensorType(_shape_of(v), torch_to_dtype(v.dtype)) for v in vals]
    complex_args = [i for i, v in enumerate(inputs) if v.name in cx.complex_values]
    if complex_outs or complex_args:  # the host rebuilds complex tensors from their real views and back
        payload["complex_args"], payload["complex_outs"] = complex_args, complex_outs
    target = f"torch:{node.target._schema.name}.{node.target._overloadname}"  # type: ignore[union-attr]
    n = cx.g.add_node("host_call", inputs, {"target": target, "out_types": out_types, "payload": payload}, name=node.name)
    cx.complex_values.update(n.outputs[i].name for i in complex_outs)
    return tuple(n.outputs) if multi else n.outputs[0]


def _check_meta(node: fx.Node, out: Any) -> None:
    val = node.meta.get("val")
    if isinstance(out, Value) and isinstance(val, torch.Tensor) and not val.dtype.is_complex:
        if out.shape != _shape_of(val):
            raise AssertionError(f"vnpu importer bug: {node.name} ({op_name(node.target)}) gave shape {out.shape}, "
                                 f"PyTorch says {_shape_of(val)}")


def constant_placeholders(ep: "torch.export.ExportedProgram") -> dict[str, torch.Tensor]:
    """Placeholder name -> weight tensor for an ExportedProgram's lifted parameters/buffers/constants."""
    sig = ep.graph_signature
    consts: dict[str, torch.Tensor] = {}
    sd = ep.state_dict
    for spec in sig.input_specs:
        kind = spec.kind.name
        if kind in ("PARAMETER", "BUFFER"):
            t = sd[spec.target] if spec.target in sd else ep.constants[spec.target]
            consts[spec.arg.name] = t
        elif kind in ("CONSTANT_TENSOR", "CUSTOM_OBJ"):
            consts[spec.arg.name] = ep.constants[spec.target]
        elif kind == "TOKEN":  # the effect token of with_effects: no data, not a user input
            consts[spec.arg.name] = torch.empty(0)
    return consts
