"""One entry per Core-ATen op: how it lowers onto vnpu IR ops.

A handler receives the ImportContext and the op's arguments (IR Values for tensors,
Python objects otherwise) and returns the result Value(s), or None to fall back to host.
"""
from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
import torch

from vnpu.dtypes import DType, torch_to_dtype
from vnpu.frontends import spatial
from vnpu.frontends.torch.importer import ImportContext as Cx, aten, op_name
from vnpu.ir.graph import Value
from vnpu.ir.ops import broadcast_shapes


def _dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


def _dims(ds: Any, rank: int) -> list[int]:
    if rank == 0:  # a 0-d tensor: dim 0 / -1 names the tensor itself, nothing to reduce
        return []
    if ds is None:
        return list(range(rank))
    if isinstance(ds, int):
        ds = [ds]
    return sorted(_dim(d, rank) for d in ds)


def _promote(cx: Cx, *xs: Any) -> list[Value]:
    """Casts tensor/scalar operands to the dtype PyTorch computes in for this node."""
    tensors = [x for x in xs if isinstance(x, Value)]
    # result dtype of the op's inputs (comparisons output bool but compute in the promoted type)
    fake = [torch.empty((), dtype=_TORCH[x.dtype]) if isinstance(x, Value) and x.type.rank == 0 else
            torch.empty((1,), dtype=_TORCH[x.dtype]) if isinstance(x, Value) else x for x in xs]
    try:
        dt = torch_to_dtype(torch.result_type(*fake)) if len(fake) == 2 else cx.out_dtype()
    except Exception:
        dt = tensors[0].dtype if tensors else cx.out_dtype()
    return [cx.tensor(x, dt) for x in xs]


_TORCH = {DType.fp32: torch.float32, DType.bf16: torch.bfloat16, DType.fp16: torch.float16, DType.int64: torch.int64,
          DType.int32: torch.int32, DType.int8: torch.int8, DType.bool: torch.bool}


# -- elementwise ----------------------------------------------------------------------
def _binary(ir_op: str):
    def h(cx: Cx, a: Any, b: Any, *, alpha: Any = 1) -> Value:
        a_, b_ = _promote(cx, a, b)
        if alpha != 1:
            b_ = cx.emit("mul", [b_, cx.const(alpha, b_.dtype)])
        return cx.emit(ir_op, [a_, b_])
    return h


for _name, _op in [("add", "add"), ("sub", "sub"), ("mul", "mul"), ("div", "div"), ("maximum", "maximum"),
                   ("minimum", "minimum"), ("pow", "pow"), ("eq", "eq"), ("ne", "ne"), ("lt", "lt"), ("le", "le"),
                   ("gt", "gt"), ("ge", "ge"), ("fmod", "fmod"), ("logical_and", "and"), ("logical_or", "or"),
                   ("bitwise_and", "and"), ("bitwise_or", "or")]:
    # pow.Scalar is (Scalar base, Tensor exponent): its own entry (_pow_scalar_base)
    aten(f"{_name}.Tensor", f"{_name}.default", *([f"{_name}.Scalar"] if _name != "pow" else []))(_binary(_op))


@aten("rsub.Scalar", "rsub.Tensor")
def _rsub(cx: Cx, a: Any, b: Any, alpha: Any = 1) -> Value:
    a_, b_ = _promote(cx, a, b)
    if alpha != 1:
        a_ = cx.emit("mul", [a_, cx.const(alpha, a_.dtype)])
    return cx.emit("sub", [b_, a_])


@aten("div.Tensor_mode")
def _div_mode(cx: Cx, a: Any, b: Any, *, rounding_mode: str | None = None) -> Value | None:
    a_, b_ = _promote(cx, a, b)
    if rounding_mode is None:
        return cx.emit("div", [a_, b_])
    if rounding_mode == "floor":
        return cx.emit("floordiv", [a_, b_])
    if rounding_mode == "trunc" and a_.dtype.is_float:
        return cx.emit("trunc", [cx.emit("div", [a_, b_])])
    return None


@aten("pow.Tensor_Scalar")
def _pow_scalar(cx: Cx, x: Value, e: float) -> Value:
    return cx.pow_by_constant(x, e)


def _unary(ir_op: str):
    def h(cx: Cx, x: Value) -> Value:
        if ir_op in ("not",) or not x.dtype.is_float:
            return cx.emit(ir_op, [x])
        return cx.emit(ir_op, [cx.cast(x, cx.out_dtype())])
    return h


for _name, _op in [("relu", "relu"), ("neg", "neg"), ("tanh", "tanh"), ("sigmoid", "sigmoid"), ("silu", "silu"),
                   ("exp", "exp"), ("log", "log"), ("sqrt", "sqrt"), ("rsqrt", "rsqrt"), ("erf", "erf"), ("abs", "abs"),
                   ("reciprocal", "reciprocal"), ("sin", "sin"), ("cos", "cos"), ("floor", "floor"), ("ceil", "ceil"),
                   ("round", "round"), ("sign", "sign"), ("hardswish", "hardswish"), ("hardsigmoid", "hardsigmoid"),
                   ("logical_not", "not"), ("bitwise_not", "not")]:
    aten(f"{_name}.default")(_unary(_op))


@aten("gelu.default")
def _gelu(cx: Cx, x: Value, approximate: str = "none") -> Value:
    return cx.emit("gelu_tanh" if approximate == "tanh" else "gelu", [x])


@aten("clamp.default", "hardtanh.default", "clamp_min.default", "clamp_max.default")
def _clamp(cx: Cx, x: Value, lo: Any = None, hi: Any = None) -> Value | None:
    if isinstance(lo, Value) or isinstance(hi, Value):
        return None
    name = cx.node.target._schema.name  # type: ignore[union-attr]
    if name.endswith("clamp_max"):
        lo, hi = None, lo
    if name.endswith("hardtanh"):
        lo = -1.0 if lo is None else lo
        hi = 1.0 if hi is None else hi
    if lo == 0 and hi is None:
        return cx.emit("relu", [x])
    return cx.emit("clamp", [x], {"min": None if lo is None else float(lo), "max": None if hi is None else float(hi)})


@aten("where.self", "where.ScalarSelf", "where.ScalarOther", "where.Scalar")
def _where(cx: Cx, c: Value, a: Any, b: Any) -> Value:
    dt = cx.out_dtype()
    return cx.emit("where", [cx.cast(c, DType.bool), cx.tensor(a, dt), cx.tensor(b, dt)])


@aten("masked_fill.Scalar", "masked_fill.Tensor")
def _masked_fill(cx: Cx, x: Value, mask: Value, value: Any) -> Value:
    return cx.emit("where", [cx.cast(mask, DType.bool), cx.tensor(value, x.dtype), x])


@aten("_to_copy.default", "to.dtype", "_to_dim_order_copy.default")
def _to_copy(cx: Cx, x: Value, *args: Any, **kwargs: Any) -> Value:
    return cx.cast(x, cx.out_dtype())


@aten("clone.default", "alias.default", "lift_fresh_copy.default", "detach.default", "contiguous.default",
      "dropout.default")
def _identity(cx: Cx, x: Value, *args: Any, **kwargs: Any) -> Value:
    return x


# -- linear algebra ---------------------------------------------------------------------
@aten("mm.default", "bmm.default", "matmul.default")
def _mm(cx: Cx, a: Value, b: Value) -> Value:
    if a.shape and a.shape[-1] == 0:  # an empty contraction: zeros
        return cx.const(np.zeros(cx.meta_type().shape), cx.out_dtype())
    return cx.emit("matmul", [a, b])


@aten("addmm.default")
def _addmm(cx: Cx, bias: Value, a: Value, b: Value, *, beta: Any = 1, alpha: Any = 1) -> Value:
    y = _mm(cx, a, b)
    if alpha != 1:
        y = cx.emit("mul", [y, cx.const(alpha, y.dtype)])
    if beta != 1:
        bias = cx.emit("mul", [bias, cx.const(beta, bias.dtype)])
    return cx.emit("add", [y, bias])


@aten("linear.default")
def _linear(cx: Cx, x: Value, w: Value, bias: Value | None = None) -> Value:
    wt = cx.emit("permute", [w], {"perm": [1, 0]})
    y = cx.emit("matmul", [x, wt])
    return cx.emit("add", [y, bias]) if bias is not None else y


@aten("convolution.default")
def _conv(cx: Cx, x: Value, w: Value, bias: Value | None, stride: list, padding: list, dilation: list,
          transposed: bool, output_padding: list, groups: int) -> Value | None:
    """1-D, 2-D and 3-D convolution and transposed convolution (frontends/spatial.py)."""
    nd = x.type.rank - 2
    if not 1 <= nd <= 3:
        return None
    stride, dilation = _per_dim(stride, nd), _per_dim(dilation, nd)
    pads = [(p, p) for p in _per_dim(padding, nd)]
    if transposed:
        return spatial.conv_transpose(cx, x, w, bias, stride, pads, dilation, _per_dim(output_padding, nd), groups)
    return spatial.conv(cx, x, w, bias, stride, pads, dilation, groups)


@aten("_native_batch_norm_legit_no_training.default")
def _bn_inference(cx: Cx, x: Value, w: Value | None, b: Value | None, mean: Value, var: Value, momentum: float,
                  eps: float) -> tuple | None:
    if not (mean.is_const and var.is_const and (w is None or w.is_const) and (b is None or b.is_const)):
        from vnpu.frontends.torch.aten_misc import batch_norm_running_stats  # stats known at run time

        if not x.dtype.is_float or x.type.rank < 2:
            return None
        empty = cx.const(np.zeros(cx.meta_type(1).shape), x.dtype)
        return (batch_norm_running_stats(cx, x, w, b, mean, var, eps), empty, empty)
    scale = 1.0 / np.sqrt(var.data.astype(np.float64) + eps)
    if w is not None:
        scale = scale * w.data
    shift = -mean.data * scale + (b.data if b is not None else 0.0)
    shape = (x.shape[1],) + (1,) * (x.type.rank - 2)
    s = cx.g.add_const("bn_scale", scale.reshape(shape).astype(np.float32), x.dtype)
    t = cx.g.add_const("bn_shift", shift.reshape(shape).astype(np.float32), x.dtype)
    y = cx.emit("add", [cx.emit("mul", [x, s]), t])
    return (y, mean, var)


@aten("native_batch_norm.default")
def _bn(cx: Cx, x: Value, w: Value | None, b: Value | None, mean: Value, var: Value, training: bool, momentum: float,
        eps: float) -> tuple | None:
    if training:
        return None
    return _bn_inference(cx, x, w, b, mean, var, momentum, eps)


# -- normalization, softmax, reductions -----------------------------------------------------
@aten("native_layer_norm.default")
def _layer_norm(cx: Cx, x: Value, shape: list, w: Value | None, b: Value | None, eps: float) -> tuple:
    ins = [x] + [v for v in (w, b) if v is not None]
    attrs = {"axis_count": len(shape), "eps": float(eps), "has_weight": w is not None, "has_bias": b is not None}
    y = cx.emit("layer_norm", ins, attrs)
    used = {u.args[1] for u in cx.node.users if u.target is operator.getitem}  # type: ignore[union-attr]
    if not used & {1, 2}:
        return (y, None, None)
    # the saved statistics, when the graph reads them: mean and 1/sqrt(var + eps), keepdim over the normalized dims
    axes = list(range(x.type.rank - len(shape), x.type.rank))
    mean = cx.emit("reduce", [x], {"kind": "mean", "axes": axes, "keepdim": True})
    d = cx.emit("sub", [x, mean])
    var = cx.emit("reduce", [cx.emit("mul", [d, d])], {"kind": "mean", "axes": axes, "keepdim": True})
    rstd = cx.emit("rsqrt", [cx.emit("add", [var, cx.const(float(eps), x.dtype)])])
    return (y, mean, rstd)


@aten("_softmax.default", "softmax.int")
def _softmax(cx: Cx, x: Value, dim: int, half_to_float: bool = False) -> Value:
    return cx.emit("softmax", [x], {"axis": _dim(dim, x.type.rank), "log": False})


@aten("_log_softmax.default", "log_softmax.int")
def _log_softmax(cx: Cx, x: Value, dim: int, half_to_float: bool = False) -> Value:
    return cx.emit("softmax", [x], {"axis": _dim(dim, x.type.rank), "log": True})


def _is_bool_valued(x: Value) -> bool:
    """x holds only 0 and 1: a bool, or an integer cast of one (count_nonzero's sum)."""
    if x.dtype == DType.bool:
        return True
    p = x.producer
    return p is not None and p.op == "cast" and p.inputs[0].dtype == DType.bool


def _reduce(kind: str):
    def h(cx: Cx, x: Value, dims: Any = None, keepdim: bool = False, *, dtype: Any = None) -> Value | None:
        axes = _dims(dims if dims not in ([], ()) else None, x.type.rank)
        if kind in ("sum", "mean") and not x.dtype.is_float:
            if not _is_bool_valued(x):
                return None  # integer sums beyond 2^24 are not exact in the fp32 reduction
            if not axes:
                return cx.cast(x, cx.out_dtype())
            y = cx.emit("reduce", [cx.cast(x, DType.fp32)], {"kind": kind, "axes": axes, "keepdim": bool(keepdim)})
            return cx.cast(y, cx.out_dtype())
        if not axes:  # a 0-d input: the reduction of one element is itself
            return x
        return cx.emit("reduce", [x], {"kind": kind, "axes": axes, "keepdim": bool(keepdim)})
    return h


aten("mean.dim", "mean.default")(_reduce("mean"))
aten("sum.dim_IntList", "sum.default")(_reduce("sum"))
aten("amax.default")(_reduce("max"))
aten("amin.default")(_reduce("min"))


@aten("var.correction", "var.dim")
def _var(cx: Cx, x: Value, dims: Any = None, *args: Any, correction: Any = 1, keepdim: bool = False) -> Value:
    axes = _dims(dims, x.type.rank)
    n = 1
    for a in axes:
        n *= x.shape[a]
    mean = cx.emit("reduce", [x], {"kind": "mean", "axes": axes, "keepdim": True})
    d = cx.emit("sub", [x, mean])
    s = cx.emit("reduce", [cx.emit("mul", [d, d])], {"kind": "sum", "axes": axes, "keepdim": bool(keepdim)})
    corr = 1 if correction is None else correction
    return cx.emit("div", [s, cx.const(max(n - corr, 0), x.dtype)])  # n <= correction: 0/0 = NaN, as PyTorch


# -- pooling ------------------------------------------------------------------------------
def _per_dim(v: Any, nd: int) -> list[int]:
    """A per-spatial-dim int list from an int or a 1- or nd-element list."""
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return [int(t) for t in (v * nd if len(v) == 1 else v)]


def _uses_output(cx: Cx, i: int) -> bool:
    """Whether anything reads output i of the node being lowered (a max pool's indices)."""
    return any(u.target is operator.getitem and u.args[1] == i and u.users for u in cx.node.users)


@aten("max_pool2d_with_indices.default", "max_pool3d_with_indices.default", "max_pool1d_with_indices.default")
def _max_pool(cx: Cx, x: Value, kernel: list, stride: list | None = None, padding: Any = 0, dilation: Any = 1,
              ceil_mode: bool = False) -> tuple | None:
    nd = len(kernel) if len(kernel) > 1 else x.type.rank - 2
    if not 1 <= nd <= 3:
        return None
    k = _per_dim(kernel, nd)
    s = _per_dim(stride, nd) if stride else k
    args = (k, s, [(p, p) for p in _per_dim(padding, nd)], _per_dim(dilation, nd), bool(ceil_mode))
    if _uses_output(cx, 1):  # the indices
        return spatial.max_pool_with_indices(cx, x, *args)
    return (spatial.pool(cx, x, "max", *args), None)


@aten("avg_pool2d.default", "avg_pool3d.default", "avg_pool1d.default")
def _avg_pool(cx: Cx, x: Value, kernel: list, stride: list | None = None, padding: Any = 0, ceil_mode: bool = False,
              count_include_pad: bool = True, divisor_override: Any = None) -> Value | None:
    nd = len(kernel) if len(kernel) > 1 else x.type.rank - 2
    if not 1 <= nd <= 3:
        return None
    k = _per_dim(kernel, nd)
    s = _per_dim(stride, nd) if stride else k
    return spatial.pool(cx, x, "avg", k, s, [(p, p) for p in _per_dim(padding, nd)], None, bool(ceil_mode),
                        bool(count_include_pad), int(divisor_override) if divisor_override else None)


@aten("_adaptive_avg_pool2d.default", "adaptive_avg_pool2d.default", "_adaptive_avg_pool3d.default",
      "adaptive_avg_pool3d.default", "adaptive_avg_pool1d.default")
def _adaptive_avg(cx: Cx, x: Value, out_size: list) -> Value | None:
    return spatial.adaptive_pool(cx, x, "avg", list(out_size))


# -- gather ----------------------------------------------------------------------------------
@aten("embedding.default")
def _embedding(cx: Cx, w: Value, idx: Value, padding_idx: int = -1, *args: Any) -> Value:
    return cx.emit("gather", [w, idx], {"axis": 0})


@aten("index_select.default")
def _index_select(cx: Cx, x: Value, dim: int, idx: Value) -> Value:
    if x.type.rank == 0:  # a 0-d source is a 1-element vector here
        x = cx.emit("reshape", [x], {"shape": [1]})
    if idx.type.rank == 0:  # a 0-d index selects one slice and keeps the dim
        idx = cx.emit("reshape", [idx], {"shape": [1]})
    y = cx.emit("gather", [x, idx], {"axis": _dim(dim, x.type.rank)})
    want = list(cx.meta_type().shape)
    return y if list(y.shape) == want else cx.emit("reshape", [y], {"shape": want})


@aten("index.Tensor")
def _index(cx: Cx, x: Value, indices: list) -> Value | None:
    live = [(i, v) for i, v in enumerate(indices) if v is not None]
    if len(live) > 1:
        out = _index_leading(cx, x, indices)  # runtime index tensors on the leading dims: one gather
        if out is not None:
            return out
    if len(live) != 1 or not isinstance(live[0][1], Value) or live[0][1].dtype == DType.bool:
        return _index_separable(cx, x, indices)
    return cx.emit("gather", [x, live[0][1]], {"axis": live[0][0]})


@aten("gather.default")
def _gather_along(cx: Cx, x: Value, dim: int, index: Value, *, sparse_grad: bool = False) -> Value | None:
    """torch.gather along the last axis (sampling picks each row's chosen candidate id): x's rows
    flattened into one vector, each index offset by its row's start, then the gather kernel on axis 0."""
    r = x.type.rank
    if not isinstance(index, Value) or index.type.rank != r or r == 0:
        return None
    if _dim(dim, r) != r - 1 or tuple(index.shape[:-1]) != tuple(x.shape[:-1]):
        return _gather_any(cx, x, _dim(dim, r), index)
    n = x.shape[-1]
    rows = math.prod(x.shape[:-1])
    flat = cx.emit("reshape", [x], {"shape": [rows * n]})
    starts = cx.const((np.arange(rows, dtype=np.int64) * n).reshape(tuple(index.shape[:-1]) + (1,)), index.dtype)
    at = cx.g.add_node("add", [index, starts], {}, name=f"{cx.node.name}_row_offsets").output
    return cx.emit("gather", [flat, at], {"axis": 0})


# -- views and data movement -----------------------------------------------------------------
def _resolve_shape(shape: list, numel: int) -> list[int]:
    shape = [int(s) for s in shape]
    if -1 in shape:
        known = 1
        for s in shape:
            if s != -1:
                known *= s
        shape[shape.index(-1)] = numel // max(known, 1)
    return shape


@aten("view.default", "_unsafe_view.default", "reshape.default")
def _view(cx: Cx, x: Value, shape: list) -> Value:
    shape = _resolve_shape(shape, x.type.numel)
    if tuple(shape) == x.shape:
        return x
    return cx.emit("reshape", [x], {"shape": shape})


@aten("permute.default")
def _permute(cx: Cx, x: Value, dims: list) -> Value:
    perm = [_dim(d, x.type.rank) for d in dims]
    if perm == list(range(x.type.rank)):
        return x
    return cx.emit("permute", [x], {"perm": perm})


@aten("t.default")
def _t(cx: Cx, x: Value) -> Value:
    return x if x.type.rank < 2 else cx.emit("permute", [x], {"perm": [1, 0]})


@aten("transpose.int")
def _transpose(cx: Cx, x: Value, a: int, b: int) -> Value:
    perm = list(range(x.type.rank))
    a, b = _dim(a, x.type.rank), _dim(b, x.type.rank)
    perm[a], perm[b] = perm[b], perm[a]
    return cx.emit("permute", [x], {"perm": perm})


@aten("expand.default")
def _expand(cx: Cx, x: Value, shape: list, *, implicit: bool = False) -> Value:
    lead = len(shape) - x.type.rank
    out = [x.shape[i - lead] if s == -1 else int(s) for i, s in enumerate(shape)]
    if tuple(out) == x.shape:
        return x
    return cx.emit("expand", [x], {"shape": out})


@aten("unsqueeze.default")
def _unsqueeze(cx: Cx, x: Value, dim: int) -> Value:
    d = _dim(dim, x.type.rank + 1)
    shape = list(x.shape)
    shape.insert(d, 1)
    return cx.emit("reshape", [x], {"shape": shape})


@aten("squeeze.dim", "squeeze.dims", "squeeze.default")
def _squeeze(cx: Cx, x: Value, dims: Any = None) -> Value:
    ds = set(_dims(dims, x.type.rank))
    shape = [s for i, s in enumerate(x.shape) if not (i in ds and s == 1)]
    if tuple(shape) == x.shape:
        return x
    return cx.emit("reshape", [x], {"shape": shape})


@aten("flatten.using_ints")
def _flatten(cx: Cx, x: Value, start: int = 0, end: int = -1) -> Value:
    return _view(cx, x, list(cx.meta_type().shape))


@aten("slice.Tensor")
def _slice(cx: Cx, x: Value, dim: int = 0, start: Any = None, end: Any = None, step: int = 1) -> Value:
    d = _dim(dim, x.type.rank)
    n = x.shape[d]
    s, e, _ = slice(start, end, step).indices(n)
    e = max(e, s)
    if (s, e, step) == (0, n, 1):
        return x
    return cx.emit("slice", [x], {"axis": d, "start": s, "end": e, "step": step})


@aten("select.int")
def _select(cx: Cx, x: Value, dim: int, index: int) -> Value:
    d = _dim(dim, x.type.rank)
    i = index + x.shape[d] if index < 0 else index
    s = cx.emit("slice", [x], {"axis": d, "start": i, "end": i + 1, "step": 1})
    shape = [v for j, v in enumerate(x.shape) if j != d]
    return cx.emit("reshape", [s], {"shape": shape})


@aten("split_with_sizes.default", "split.Tensor")
def _split(cx: Cx, x: Value, sizes: Any, dim: int = 0) -> tuple:
    d = _dim(dim, x.type.rank)
    n = x.shape[d]
    if isinstance(sizes, int):
        sizes = [min(sizes, n - i) for i in range(0, n, sizes)]
    outs = []
    start = 0
    for s in sizes:
        outs.append(cx.emit("slice", [x], {"axis": d, "start": start, "end": start + s, "step": 1}))
        start += s
    return tuple(outs)


@aten("cat.default")
def _cat(cx: Cx, xs: list, dim: int = 0) -> Value:
    xs = [x for x in xs if x.type.numel > 0]
    dt = cx.out_dtype()
    xs = [cx.cast(x, dt) for x in xs]
    if len(xs) == 1:
        return xs[0]
    return cx.emit("concat", xs, {"axis": _dim(dim, xs[0].type.rank)})


@aten("constant_pad_nd.default")
def _pad(cx: Cx, x: Value, pad: list, value: float = 0.0) -> Value | None:
    if not any(pad):
        return x
    pads = [(0, 0)] * x.type.rank
    for i in range(len(pad) // 2):
        d, lo, hi = x.type.rank - 1 - i, int(pad[2 * i]), int(pad[2 * i + 1])
        if lo < 0 or hi < 0:  # negative padding crops (fold's decomposition undoes its padding so)
            x = cx.emit("slice", [x], {"axis": d, "start": max(-lo, 0), "end": x.shape[d] + min(hi, 0), "step": 1})
        pads[d] = (max(lo, 0), max(hi, 0))
    if not any(lo or hi for lo, hi in pads):
        return x
    return cx.emit("pad", [x], {"pads": pads, "value": float(value)})


# -- shape queries (Dynamo graphs call x.size(d)); programs are compiled for concrete shapes
@aten("sym_size.int")
def _sym_size(cx: Cx, x: Value, dim: int) -> int:
    return int(x.shape[_dim(dim, x.type.rank)])


@aten("sym_numel.default")
def _sym_numel(cx: Cx, x: Value) -> int:
    return int(x.type.numel)


# -- checks with no runtime effect ---------------------------------------------------------
@aten("_assert_tensor_metadata.default")
def _assert_metadata(cx: Cx, *args: Any, **kwargs: Any) -> tuple:
    return ()  # a trace-time dtype/shape assertion; the importer already checks every shape


# -- LLM ops ------------------------------------------------------------------------------------
@aten("index_put.default", "index_put_.default")
def _index_put(cx: Cx, x: Value, indices: list, values: Value, accumulate: bool = False) -> Value | None:
    """x[..., idx, ...] = values along the one indexed axis: in place on persistent state (a KV
    cache's index_copy_), into a fresh copy otherwise (compiler.memory.copy_on_write)."""
    from vnpu.frontends.torch.aten_scatter import index_put_scatter  # general indices: one-hot scatter

    live = [(i, v) for i, v in enumerate(indices) if v is not None]
    if accumulate:
        return _index_put_accumulate(cx, x, indices, values) or index_put_scatter(cx, x, indices, values, True)
    if len(live) != 1 or not isinstance(live[0][1], Value) or live[0][1].type.rank != 1:
        return index_put_scatter(cx, x, indices, values, False)
    ax, idx = live[0]
    if idx.dtype == DType.bool:
        return index_put_scatter(cx, x, indices, values, False)
    want = x.shape[:ax] + (idx.shape[0],) + x.shape[ax + 1:]
    if values.shape != want:
        if values.type.numel != 1 and values.shape != want[len(want) - values.type.rank:]:
            return index_put_scatter(cx, x, indices, values, False)
        values = cx.emit("expand", [values], {"shape": list(want)})
    return cx.emit("index_write", [x, idx, cx.cast(values, x.dtype)], {"axis": ax})


@aten("index_copy.default", "index_copy_.default")
def _index_copy(cx: Cx, x: Value, dim: int, index: Value, source: Value) -> Value | None:
    """x.index_copy(dim, index, source): the ATen-level form of a KV-cache append."""
    indices: list = [None] * x.type.rank
    indices[_dim(dim, x.type.rank)] = index
    return _index_put(cx, x, indices, source)


@aten("causal_attention.default")
def _causal_attention(cx: Cx, q: Value, k: Value, v: Value, q_pos: Value, scale: float) -> Value:
    return cx.emit("attention", [q, k, v, q_pos], {"scale": float(scale)})


@aten("all_reduce.default")
def _all_reduce(cx: Cx, x: Value) -> Value:
    """vnpu::all_reduce: the sum of x over the chips serving the model (a collective launch)."""
    return cx.emit("all_reduce", [x])


@aten("scaled_dot_product_attention.default")
def _sdpa(cx: Cx, q: Value, k: Value, v: Value, attn_mask: Any = None, dropout_p: float = 0.0,
          is_causal: bool = False, *, scale: float | None = None, enable_gqa: bool = False) -> Value | None:
    """Without a mask: the fused attention kernel (is_causal: query i sees keys 0..i, PyTorch's
    top-left alignment). With a mask: softmax(q k^T * scale + mask) v on matmul/softmax kernels."""
    if dropout_p != 0.0 or q.type.rank != 4 or k.type.rank != 4:
        return None
    s = float(scale) if scale is not None else q.shape[-1] ** -0.5
    if q.shape[1] != k.shape[1] and not enable_gqa:
        return None
    if attn_mask is None:
        ins = [q, k, v]
        if is_causal:
            ins.append(cx.const(np.arange(q.shape[2], dtype=np.int64), DType.int64))
        out = cx.emit("attention", ins, {"scale": s})  # [B, S, H, D]
        return cx.emit("permute", [out], {"perm": [0, 2, 1, 3]})
    if is_causal or q.shape[1] != k.shape[1]:
        return None
    kt = cx.emit("permute", [k], {"perm": [0, 1, 3, 2]})
    scores = cx.emit("mul", [cx.emit("matmul", [q, kt]), cx.const(s, q.dtype)])
    if attn_mask.dtype == DType.bool:
        scores = cx.emit("where", [attn_mask, scores, cx.const(float("-inf"), q.dtype)])
    else:
        scores = cx.emit("add", [scores, cx.cast(attn_mask, q.dtype)])
    probs = cx.emit("softmax", [scores], {"axis": 3, "log": False})
    return cx.emit("matmul", [probs, v])


MOE_ROWS_MAX = 64  # routed rows per grouped-matmul tile


@aten("moe_experts.default")
def _moe_experts(cx: Cx, x: Value, idx: Value, w: Value, gate_up: Value, down: Value) -> Value:
    """Routed experts as grouped matmuls: schedule tiles per expert (moe_route), run each tile's
    SwiGLU expert on the rows routed to it (moe_ffn), then combine out[t] = sum_k w[t,k] * y[t*K+k]."""
    t, k = idx.shape
    e = gate_up.shape[0]
    # rows per tile: about the expected slots per expert, a power of two
    rows = min(MOE_ROWS_MAX, 1 << max(0, math.ceil(t * k / e) - 1).bit_length())
    route = cx.g.add_node("moe_route", [idx], {"experts": e, "rows": rows}, name=f"{cx.node.name}_route")
    tile_e, tile_tok, tile_slot = route.outputs
    ffn = cx.g.add_node("moe_ffn", [x, tile_e, tile_tok, tile_slot, gate_up, down], {"slots": t * k},
                        name=f"{cx.node.name}_ffn")
    y = ffn.outputs[0]  # outputs[1] is the kernel's scratch (activations between its two launches)
    y = cx.emit("slice", [y], {"axis": 0, "start": 0, "end": t * k, "step": 1})
    y = cx.emit("reshape", [y], {"shape": [t, k, x.shape[1]]})
    wk = cx.emit("reshape", [cx.cast(w, x.dtype)], {"shape": [t, k, 1]})
    return cx.emit("reduce", [cx.emit("mul", [y, wk])], {"kind": "sum", "axes": [1], "keepdim": False})


# -- transformers' own MoE experts path: sort, histc, cumsum, grouped_mm (lead) ----------------------
@aten("histc.default")
def _histc(cx: Cx, x: Value, bins: int = 100, min: float = 0.0, max: float = 0.0) -> Value | None:
    """Counts per bin, as torch computes them on the CPU: bin = floor((x - min) * bins / (max - min)),
    x == max in the last bin, values outside [min, max] dropped. A one-hot compare against the bin
    ids summed over the elements (vector engine), so nothing data-dependent is left."""
    if max <= min or not x.dtype.is_float:
        return None  # min == max takes the data's range: data-dependent edges
    flat = cx.emit("reshape", [cx.cast(x, DType.fp32)], {"shape": [x.type.numel, 1]})
    lo, hi = cx.const(float(min), DType.fp32), cx.const(float(max), DType.fp32)
    pos = cx.emit("div", [cx.emit("mul", [cx.emit("sub", [flat, lo]), cx.const(float(bins), DType.fp32)]),
                          cx.const(float(max - min), DType.fp32)])
    b = cx.emit("minimum", [cx.emit("floor", [pos]), cx.const(float(bins - 1), DType.fp32)])
    valid = cx.emit("and", [cx.emit("ge", [flat, lo]), cx.emit("le", [flat, hi])])
    ids = cx.const(np.arange(bins, dtype=np.float32).reshape(1, bins), DType.fp32)
    hit = cx.emit("and", [cx.emit("eq", [b, ids]), valid])
    counts = cx.emit("reduce", [cx.cast(hit, DType.fp32)], {"kind": "sum", "axes": [0], "keepdim": False})
    return cx.cast(counts, cx.out_dtype())


@aten("grouped_mm_fallback.default")
def _grouped_mm(cx: Cx, x: Value, w: Value, offs: Value) -> Value | None:
    """transformers::grouped_mm_fallback: rows of x [S, K], sorted by expert, times their group's
    w [E, K, N]; offs [E] the groups' cumulative ends. Each row's expert (the offsets at or before
    it) goes through moe_route into the grouped-matmul schedule, and moe_matmul runs only the
    routed experts' weights; rows past offs[-1] (expert-parallel sentinels) come out zero, as in
    the reference loop."""
    if x.type.rank != 2 or w.type.rank != 3 or offs.type.rank != 1:
        return None
    s, k = x.shape
    e, _, n = w.shape
    if s == 0:
        return None
    rows_i = cx.const(np.arange(s, dtype=np.int64).reshape(s, 1), DType.int64)
    ends = cx.emit("reshape", [cx.cast(offs, DType.int64)], {"shape": [1, e]})
    before = cx.cast(cx.emit("le", [ends, rows_i]), DType.fp32)  # [S, E]: groups ending at or before row i
    expert = cx.cast(cx.emit("reduce", [before], {"kind": "sum", "axes": [1], "keepdim": True}), DType.int64)
    expert = cx.emit("minimum", [expert, cx.const(np.int64(e - 1), DType.int64)])
    rows = min(MOE_ROWS_MAX, 1 << max(0, math.ceil(s / e) - 1).bit_length())
    route = cx.g.add_node("moe_route", [expert], {"experts": e, "rows": rows}, name=f"{cx.node.name}_route")
    w_enk = cx.emit("permute", [cx.cast(w, x.dtype)], {"perm": [0, 2, 1]})
    mm = cx.g.add_node("moe_matmul", [x, *route.outputs, w_enk], {"slots": s}, name=cx.node.name)
    y = cx.emit("slice", [mm.outputs[0]], {"axis": 0, "start": 0, "end": s, "step": 1})
    last = cx.emit("slice", [ends], {"axis": 1, "start": e - 1, "end": e, "step": 1})
    inside = cx.emit("lt", [rows_i, last])
    return cx.emit("where", [inside, y, cx.const(np.zeros((), x.dtype.np), x.dtype)])


# -- spatial ops: conv/pool/norm/interpolate (kernels) --------------------------------------------
def _outer_product_indices(indices: list, min_live: int) -> tuple | None:
    """(live (axis, Value) pairs, their int64 arrays broadcast to B, per index the axes of B it
    varies along) when the constant index tensors sit on adjacent axes and vary along disjoint
    axes of B covering every non-unit one (an outer product); None otherwise."""
    live = [(a, v) for a, v in enumerate(indices) if v is not None]
    axes = [a for a, _ in live]
    if (len(live) < min_live or axes != list(range(axes[0], axes[0] + len(axes)))
            or not all(isinstance(v, Value) and v.is_const and not v.dtype.is_float and v.dtype != DType.bool
                       for _, v in live)):
        return None
    arrs = np.broadcast_arrays(*(np.asarray(v.data).astype(np.int64) for _, v in live))
    bshape = arrs[0].shape
    owned: list[list[int]] = []
    for arr in arrs:
        owned.append([d for d in range(arr.ndim) if arr.shape[d] > 1 and not np.all(arr == np.take(arr, [0], axis=d))])
    flat = [d for own in owned for d in own]
    if len(set(flat)) != len(flat) or any(bshape[d] > 1 and d not in flat for d in range(len(bshape))):
        return None
    return live, arrs, owned


def _index_put_accumulate(cx: Cx, x: Value, indices: list, values: Value) -> Value | None:
    """x[..., i0, i1, ...] += values for constant outer-product indices (fold / col2im decomposes
    to this): a scatter-add along one axis with constant indices is a linear map, so one matmul
    per indexed axis with a constant 0/1 [size, positions] matrix (repeated targets sum)."""
    op = _outer_product_indices(indices, 1)
    if op is None or not x.dtype.is_float:
        return None
    live, arrs, owned = op
    a0, nb = live[0][0], arrs[0].ndim
    bshape = arrs[0].shape
    want = tuple(x.shape[:a0]) + tuple(bshape) + tuple(x.shape[live[-1][0] + 1:])
    v = cx.cast(values, x.dtype)
    if v.shape != want:
        if broadcast_shapes(v.shape, want) != want:
            return None
        v = cx.emit("expand", [v], {"shape": list(want)})
    flat = [d for own in owned for d in own]
    perm = list(range(a0)) + [a0 + d for d in flat] + [a0 + d for d in range(nb) if d not in flat] \
        + list(range(a0 + nb, len(want)))
    if perm != list(range(len(want))):
        v = cx.emit("permute", [v], {"perm": perm})
    tail = list(x.shape[live[-1][0] + 1:])
    sizes = [int(np.prod([bshape[d] for d in own])) for own in owned]
    v = spatial.reshape(cx, v, list(x.shape[:a0]) + sizes + tail)  # the B dims of each index merged
    for k, ((a, _), arr, own) in enumerate(zip(live, arrs, owned)):
        sub = arr[tuple(slice(None) if d in own else 0 for d in range(nb))].reshape(-1)
        sub = np.where(sub < 0, sub + x.shape[a], sub)
        if sub.min() < 0 or sub.max() >= x.shape[a]:
            return None
        m = np.zeros((x.shape[a], sub.size))
        m[sub, np.arange(sub.size)] = 1.0
        v = spatial.interpolate_matrix(cx, v, a0 + k, m)
    if x.is_const and not np.any(np.asarray(x.data)):
        return v
    return cx.emit("add", [x, v])


def _index_separable(cx: Cx, x: Value, indices: list) -> Value | None:
    """x[..., i0, i1, ...] with several constant index tensors that vary along disjoint axes of
    their broadcast shape B (an outer product: reflect / replicate padding, nearest / linear
    upsampling and unfold decompose to these): one gather per indexed axis, each with the index
    reduced to its own axes of B, then a permute of the gathered dims into B's order."""
    op = _outer_product_indices(indices, 2)
    if op is None:
        return None
    live, arrs, owned = op
    axes = [a for a, _ in live]
    bshape = arrs[0].shape
    flat = [d for own in owned for d in own]
    y = x
    pos = axes[0]  # where the next indexed axis sits in y
    for (a, _), arr, own in zip(live, arrs, owned):
        sub = arr[tuple(slice(None) if d in own else 0 for d in range(arr.ndim))]  # dims `own`, in order
        sub = np.where(sub < 0, sub + x.shape[a], sub)
        if sub.ndim == 1 and np.array_equal(sub, np.arange(x.shape[a])):
            pos += 1
            continue
        if sub.ndim == 0:
            sub = sub.reshape(1)
            own = []
        y = cx.emit("gather", [y, cx.const(sub, DType.int64)], {"axis": pos})
        if not own:  # a scalar index: drop the axis
            y = cx.emit("reshape", [y], {"shape": list(y.shape[:pos]) + list(y.shape[pos + 1:])})
        pos += len(own)
    block = [d for d in flat]  # B's axes in the order the gathers produced them
    perm_block = sorted(range(len(block)), key=lambda i: block[i])
    if perm_block != list(range(len(block))):
        lead = list(range(axes[0]))
        perm = lead + [axes[0] + i for i in perm_block] + list(range(axes[0] + len(block), y.type.rank))
        y = cx.emit("permute", [y], {"perm": perm})
    out = list(x.shape[:axes[0]]) + list(bshape) + list(x.shape[axes[-1] + 1:])
    return y if tuple(out) == y.shape else cx.emit("reshape", [y], {"shape": out})


@aten("native_group_norm.default")
def _native_group_norm(cx: Cx, x: Value, w: Value | None, b: Value | None, n: int, c: int, hxw: int, groups: int,
                       eps: float) -> tuple:
    y = spatial.group_norm(cx, x, int(groups), w, b, float(eps))
    if not (_uses_output(cx, 1) or _uses_output(cx, 2)):
        return (y, None, None)
    from vnpu.frontends.torch.aten_misc import group_norm_stats

    return (y, *group_norm_stats(cx, x, int(groups), float(eps)))


@aten("_native_batch_norm_legit.no_stats")
def _bn_batch_stats(cx: Cx, x: Value, w: Value | None, b: Value | None, training: bool, momentum: float,
                    eps: float) -> tuple | None:
    """Batch norm with the batch's own statistics (instance norm decomposes to it on the view
    [1, N*C, ...]): per channel over the batch and positions, then the affine."""
    if not training or not x.dtype.is_float:
        return None
    y = spatial.normalize_axes(cx, x, [0] + list(range(2, x.type.rank)), float(eps))
    per_channel = [x.shape[1]] + [1] * (x.type.rank - 2)
    if w is not None:
        y = cx.emit("mul", [y, cx.cast(spatial.reshape(cx, w, per_channel), x.dtype)])
    if b is not None:
        y = cx.emit("add", [y, cx.cast(spatial.reshape(cx, b, per_channel), x.dtype)])
    return (y, None, None)


def _out_spatial(cx: Cx, nd: int) -> list[int]:
    return list(cx.meta_type().shape[-nd:])


def _scales(scale_factors: Any, nd: int) -> list[float | None]:
    if scale_factors is None:
        return [None] * nd
    sf = list(scale_factors) if isinstance(scale_factors, (list, tuple)) else [scale_factors]
    return [float(s) if s else None for s in (sf * nd if len(sf) == 1 else sf)]


def _upsample_nearest(exact: bool):
    def h(cx: Cx, x: Value, output_size: Any = None, *scales: Any) -> Value:
        nd = x.type.rank - 2
        sf = scales[0] if len(scales) == 1 and (scales[0] is None or isinstance(scales[0], (list, tuple))) \
            else [s for s in scales]  # .vec: a list; .default: one float per dim
        outs, sc = _out_spatial(cx, nd), _scales(sf if sf else None, nd)
        idx = {2 + a: spatial.torch_nearest_index(outs[a], x.shape[2 + a], sc[a], exact) for a in range(nd)}
        return spatial.interpolate(cx, x, "nearest", dict.fromkeys(idx, None), nearest_idx=idx)
    return h


for _d in (1, 2, 3):
    aten(f"upsample_nearest{_d}d.vec", f"upsample_nearest{_d}d.default")(_upsample_nearest(False))
    aten(f"_upsample_nearest_exact{_d}d.vec", f"_upsample_nearest_exact{_d}d.default")(_upsample_nearest(True))


def _upsample_interp(mode: str):
    def h(cx: Cx, x: Value, output_size: Any, align_corners: bool, *scales: Any) -> Value:
        nd = x.type.rank - 2
        sf = scales[0] if len(scales) == 1 and (scales[0] is None or isinstance(scales[0], (list, tuple))) \
            else [s for s in scales]
        outs, sc = _out_spatial(cx, nd), _scales(sf if sf else None, nd)
        srcs = {2 + a: spatial.torch_source_coords(outs[a], x.shape[2 + a], bool(align_corners), sc[a],
                                                   mode == "cubic") for a in range(nd)}
        return spatial.interpolate(cx, x, mode, srcs, cubic_a=-0.75)
    return h


aten("upsample_linear1d.vec", "upsample_linear1d.default", "upsample_bilinear2d.vec", "upsample_bilinear2d.default",
     "upsample_trilinear3d.vec", "upsample_trilinear3d.default")(_upsample_interp("linear"))
aten("upsample_bicubic2d.vec", "upsample_bicubic2d.default")(_upsample_interp("cubic"))


@aten("adaptive_max_pool2d.default", "adaptive_max_pool3d.default", "adaptive_max_pool1d.default")
def _adaptive_max(cx: Cx, x: Value, out_size: list) -> tuple | None:
    if _uses_output(cx, 1):  # the indices: a window-table gather and a top-1
        from vnpu.frontends.torch.aten_misc import adaptive_max_pool_with_indices

        return adaptive_max_pool_with_indices(cx, x, list(out_size))
    return (spatial.adaptive_pool(cx, x, "max", list(out_size)), None)


def _pad_mode(mode: str):
    def h(cx: Cx, x: Value, pad: list) -> Value:
        pads = [(0, 0)] * x.type.rank
        for i in range(len(pad) // 2):
            pads[x.type.rank - 1 - i] = (int(pad[2 * i]), int(pad[2 * i + 1]))
        return spatial.pad_mode(cx, x, pads, mode)
    return h


for _d in (1, 2, 3):
    aten(f"reflection_pad{_d}d.default")(_pad_mode("reflect"))
    aten(f"replication_pad{_d}d.default")(_pad_mode("replicate"))
aten("_pad_circular.default")(_pad_mode("circular"))


@aten("grid_sampler_2d.default", "grid_sampler.default")
def _grid_sampler(cx: Cx, x: Value, grid: Value, interpolation_mode: int, padding_mode: int,
                  align_corners: bool) -> Value | None:
    modes, pads = {0: "bilinear", 1: "nearest", 2: "bicubic"}, {0: "zeros", 1: "border", 2: "reflection"}
    return spatial.grid_sample(cx, x, grid, modes[int(interpolation_mode)], pads[int(padding_mode)],
                               bool(align_corners))


@aten("_embedding_bag.default", "_embedding_bag_forward_only.default")
def _embedding_bag(cx: Cx, w: Value, idx: Value, offsets: Value, scale_grad_by_freq: bool = False, mode: int = 0,
                   sparse: bool = False, per_sample_weights: Value | None = None, include_last_offset: bool = False,
                   padding_idx: int = -1) -> tuple | None:
    """Bags with constant offsets (a 2-D input's fixed-size bags, or offsets known at export): the
    rows gathered, then each bag reduced: sum / mean as one matmul with a constant [bags, rows]
    segment matrix, max as a reduction over the bags' rows (a shorter bag repeats its last row)."""
    if any(_uses_output(cx, i) for i in (1, 2, 3)) or idx.type.rank != 1:
        return None
    if not offsets.is_const:  # bag boundaries are data: a run-time membership compare
        from vnpu.frontends.torch.aten_misc import embedding_bag_runtime_offsets

        y = embedding_bag_runtime_offsets(cx, w, idx, offsets, int(mode), per_sample_weights,
                                          bool(include_last_offset), padding_idx)
        return None if y is None else (y, None, None, None)
    n = idx.shape[0]
    starts = [int(o) for o in np.asarray(offsets.data).reshape(-1)]
    ends = starts[1:] + [n]
    if include_last_offset:
        starts, ends = starts[:-1], ends[:-1]
    if padding_idx is not None and padding_idx >= 0:
        return None  # rows equal to padding_idx are skipped: data dependent
    rows = cx.emit("gather", [w, idx], {"axis": 0})  # [n, D]
    if per_sample_weights is not None:
        if int(mode) != 0:
            return None
        rows = cx.emit("mul", [rows, cx.emit("reshape", [cx.cast(per_sample_weights, rows.dtype)], {"shape": [n, 1]})])
    bags = len(starts)
    if int(mode) in (0, 1):
        seg = np.zeros((bags, n), np.float32)
        for b, (s, e) in enumerate(zip(starts, ends)):
            if e > s:
                seg[b, s:e] = 1.0 if int(mode) == 0 else 1.0 / (e - s)
        y = cx.emit("matmul", [cx.const(seg, rows.dtype), rows])
    else:
        if any(e <= s for s, e in zip(starts, ends)):
            return None  # an empty bag's max is 0 in PyTorch
        lmax = max(e - s for s, e in zip(starts, ends))
        pick = np.array([[min(s + t, e - 1) for t in range(lmax)] for s, e in zip(starts, ends)], np.int64)
        g = cx.emit("gather", [rows, cx.const(pick, DType.int64)], {"axis": 0})  # [bags, lmax, D]
        y = cx.emit("reduce", [g], {"kind": "max", "axes": [1], "keepdim": False})
    return (y, None, None, None)


@aten("copy.default")
def _copy(cx: Cx, dst: Value, src: Value, non_blocking: bool = False) -> Value:
    """The functional copy_: src broadcast to dst's shape, in dst's dtype."""
    v = cx.cast(src, dst.dtype)
    return v if v.shape == dst.shape else cx.emit("expand", [v], {"shape": list(dst.shape)})


def _upsample_antialias(mode: str):
    def h(cx: Cx, x: Value, output_size: Any, align_corners: bool, *scales: Any) -> Value | None:
        nd = x.type.rank - 2
        sf = scales[0] if len(scales) == 1 and (scales[0] is None or isinstance(scales[0], (list, tuple))) \
            else [s for s in scales]
        outs, sc = _out_spatial(cx, nd), _scales(sf if sf else None, nd)
        if align_corners:
            return None
        y = x
        for a in range(nd):
            if outs[a] != x.shape[2 + a] or sc[a] not in (None, 1.0):
                m = spatial.antialias_matrix(outs[a], x.shape[2 + a], False, sc[a], mode)
                y = spatial.interpolate_matrix(cx, y, 2 + a, m)
        return y
    return h


aten("_upsample_bilinear2d_aa.vec", "_upsample_bilinear2d_aa.default")(_upsample_antialias("linear"))
aten("_upsample_bicubic2d_aa.vec", "_upsample_bicubic2d_aa.default")(_upsample_antialias("cubic"))


# -- elementwise math family and misc (opinfo) ------------------------------------------------
def _float_in(cx: Cx, x: Value) -> Value:
    """x in the node's (floating) result dtype: integer inputs of float math are promoted first."""
    dt = cx.out_dtype()
    return cx.cast(x, dt) if dt.is_float else x


def _math(ir_op: str, **fixed: Any):
    def h(cx: Cx, x: Value) -> Value:
        return cx.emit(ir_op, [_float_in(cx, x)], dict(fixed))
    return h


for _name, _op in [("log1p", "log1p"), ("expm1", "expm1"), ("log2", "log2"), ("log10", "log10"), ("exp2", "exp2"),
                   ("tan", "tan"), ("asin", "asin"), ("acos", "acos"), ("atan", "atan"), ("sinh", "sinh"),
                   ("cosh", "cosh"), ("asinh", "asinh"), ("acosh", "acosh"), ("atanh", "atanh"),
                   ("erfinv", "erfinv"), ("erfc", "erfc"), ("trunc", "trunc"), ("fix", "trunc"), ("frac", "frac"),
                   ("mish", "mish"), ("square", "square"), ("sgn", "sign"), ("selu", "elu")]:
    if _name == "selu":  # elu with SELU's constants
        aten("selu.default")(_math("elu", alpha=1.6732632423543772848170429916717, scale=1.0507009873554804934193349852946))
    else:
        aten(f"{_name}.default")(_math(_op))


def _predicate(ir_op: str):
    def h(cx: Cx, x: Value) -> Value:
        if not x.dtype.is_float:  # integers are finite numbers: x == x is all true, x != x all false
            return cx.emit("eq" if ir_op == "isfinite" else "ne", [x, x])
        return cx.emit(ir_op, [x])
    return h


for _name in ("isnan", "isinf", "isfinite", "isposinf", "isneginf"):
    aten(f"{_name}.default")(_predicate(_name))


@aten("leaky_relu.default")
def _leaky_relu(cx: Cx, x: Value, negative_slope: float = 0.01) -> Value:
    return cx.emit("leaky_relu", [_float_in(cx, x)], {"slope": float(negative_slope)})


@aten("elu.default")
def _elu(cx: Cx, x: Value, alpha: float = 1.0, scale: float = 1.0, input_scale: float = 1.0) -> Value:
    return cx.emit("elu", [_float_in(cx, x)], {"alpha": float(alpha), "scale": float(scale),
                                                "input_scale": float(input_scale)})


@aten("celu.default")
def _celu(cx: Cx, x: Value, alpha: float = 1.0) -> Value | None:
    if alpha == 0:
        return None
    return cx.emit("elu", [_float_in(cx, x)], {"alpha": float(alpha), "input_scale": 1.0 / float(alpha)})


@aten("softplus.default")
def _softplus(cx: Cx, x: Value, beta: float = 1.0, threshold: float = 20.0) -> Value:
    return cx.emit("softplus", [_float_in(cx, x)], {"beta": float(beta), "threshold": float(threshold)})


@aten("log_sigmoid_forward.default")
def _log_sigmoid_forward(cx: Cx, x: Value) -> tuple:
    return (cx.emit("log_sigmoid", [_float_in(cx, x)]), None)  # the second output is backward's buffer


@aten("hardshrink.default", "softshrink.default")
def _shrink(cx: Cx, x: Value, lambd: float = 0.5) -> Value:
    op = "hardshrink" if cx.node.target._schema.name.endswith("hardshrink") else "softshrink"  # type: ignore[union-attr]
    return cx.emit(op, [_float_in(cx, x)], {"lambd": float(lambd)})


@aten("threshold.default")
def _threshold(cx: Cx, x: Value, threshold: float, value: float) -> Value | None:
    if not x.dtype.is_float:
        return None
    return cx.emit("threshold", [x], {"threshold": float(threshold), "value": float(value)})


@aten("logit.default")
def _logit(cx: Cx, x: Value, eps: float | None = None) -> Value:
    return cx.emit("logit", [_float_in(cx, x)], {"eps": None if eps is None else float(eps)})


@aten("nan_to_num.default")
def _nan_to_num(cx: Cx, x: Value, nan: float | None = None, posinf: float | None = None,
                neginf: float | None = None) -> Value:
    if not x.dtype.is_float:
        return x
    return cx.emit("nan_to_num", [x], {"nan": 0.0 if nan is None else float(nan),
                                       "posinf": None if posinf is None else float(posinf),
                                       "neginf": None if neginf is None else float(neginf)})


@aten("round.decimals")
def _round_decimals(cx: Cx, x: Value, *, decimals: int = 0) -> Value:
    """round(x * 10^d) / 10^d (d < 0: round(x / 10^-d) * 10^-d), half to even, as PyTorch."""
    x = _float_in(cx, x)
    if decimals == 0:
        return cx.emit("round", [x])
    p = cx.const(10.0 ** abs(decimals), x.dtype)
    if decimals > 0:
        return cx.emit("div", [cx.emit("round", [cx.emit("mul", [x, p])]), p])
    return cx.emit("mul", [cx.emit("round", [cx.emit("div", [x, p])]), p])


aten("remainder.Tensor", "remainder.Scalar", "remainder.Scalar_Tensor")(_binary("remainder"))
aten("pow.Tensor_Tensor")(_binary("pow"))
aten("floor_divide.default", "floor_divide.Scalar")(_binary("floordiv"))


def _float_binary(ir_op: str):
    """A binary op PyTorch computes in floating point even for integer inputs (atan2, hypot, ...)."""
    def h(cx: Cx, a: Any, b: Any) -> Value:
        dt = cx.out_dtype()
        return cx.emit(ir_op, [cx.tensor(a, dt), cx.tensor(b, dt)])
    return h


for _name in ("atan2", "hypot", "logaddexp", "copysign", "xlogy"):
    aten(f"{_name}.default", f"{_name}.Tensor", f"{_name}.Scalar_Self", f"{_name}.Scalar_Other", f"{_name}.Scalar")(
        _float_binary(_name))


@aten("pow.Scalar")
def _pow_scalar_base(cx: Cx, base: Any, e: Value) -> Value:
    dt = cx.out_dtype()
    return cx.emit("pow", [cx.tensor(base, dt), cx.tensor(e, dt)])


@aten("logical_xor.default", "bitwise_xor.Tensor")
def _logical_xor(cx: Cx, a: Value, b: Any) -> Value | None:
    if cx.out_dtype() != DType.bool and "logical" not in cx.node.target._schema.name:  # type: ignore[union-attr]
        return None  # integer xor: no bitwise vector op
    return cx.emit("ne", [cx.cast(a, DType.bool), cx.tensor(b, DType.bool)])


@aten("clamp.Tensor", "clamp_min.Tensor", "clamp_max.Tensor")
def _clamp_tensor(cx: Cx, x: Value, lo: Any = None, hi: Any = None) -> Value:
    """min(max(x, lo), hi) with tensor bounds (NaN in x propagates, lo > hi gives hi, as PyTorch)."""
    name = cx.node.target._schema.name  # type: ignore[union-attr]
    if name.endswith("clamp_max"):
        lo, hi = None, lo
    dt = cx.out_dtype()
    y = cx.cast(x, dt)
    if lo is not None:
        y = cx.emit("maximum", [y, cx.tensor(lo, dt)])
    if hi is not None:
        y = cx.emit("minimum", [y, cx.tensor(hi, dt)])
    return y


@aten("with_effects")
def _with_effects(cx: Cx, token: Any, op: Any, *args: Any, **kwargs: Any) -> tuple | None:
    """An effectful op threaded through torch.export's token: run-time checks (linalg's
    error checks, assertions) have no chip counterpart and are dropped; others fall back."""
    name = op_name(op) if isinstance(op, torch._ops.OpOverload) else str(op)
    if name.startswith(("_linalg_check_errors", "_assert", "sym_constrain_range")):
        return (token, None)
    return None


# misc: data movement, reductions and scans lowered onto existing IR ops and kernels
def _to_last(cx: Cx, x: Value, d: int) -> tuple[Value, list[int] | None]:
    """x with dim d moved last (materialized: the topk kernel and matmul read whole rows), and
    the permutation that moves it back (None when d already is last)."""
    r = x.type.rank
    if d == r - 1:
        return x, None
    perm = [i for i in range(r) if i != d] + [d]
    y = cx.emit("copy", [cx.emit("permute", [x], {"perm": perm})])
    back = [0] * r
    for i, p in enumerate(perm):
        back[p] = i
    return y, back


def _from_last(cx: Cx, y: Value, back: list[int] | None) -> Value:
    return y if back is None else cx.emit("permute", [y], {"perm": back})


def _index_along(cx: Cx, x: Value, d: int, idx: np.ndarray) -> Value:
    """x with dim d reindexed by the constant `idx` (a gather along d)."""
    return cx.emit("gather", [x, cx.const(idx.astype(np.int64), DType.int64)], {"axis": d})


@aten("flip.default")
def _flip(cx: Cx, x: Value, dims: list) -> Value:
    for d in _dims(dims, x.type.rank):
        if x.shape[d] > 1:
            x = _index_along(cx, x, d, np.arange(x.shape[d])[::-1].copy())
    return x


@aten("roll.default")
def _roll(cx: Cx, x: Value, shifts: Any, dims: Any = ()) -> Value:
    shifts = [shifts] if isinstance(shifts, int) else list(shifts)
    dims = [dims] if isinstance(dims, int) else list(dims)
    if not dims:  # roll of the flattened tensor
        flat = cx.emit("reshape", [x], {"shape": [x.type.numel]}) if x.type.rank != 1 else x
        y = _roll(cx, flat, shifts[0], [0])
        return y if y.shape == x.shape else cx.emit("reshape", [y], {"shape": list(x.shape)})
    for s, d in zip(shifts, dims):
        d = _dim(d, x.type.rank)
        n = x.shape[d]
        if n and s % n:
            x = _index_along(cx, x, d, (np.arange(n) - s) % n)
    return x


@aten("repeat.default")
def _repeat(cx: Cx, x: Value, repeats: list) -> Value:
    """x.repeat(r): x seen as [1, d0, 1, d1, ...], expanded to [r0, d0, r1, d1, ...], merged pairwise."""
    reps = [int(r) for r in repeats]
    shape = [1] * (len(reps) - x.type.rank) + list(x.shape)
    out = [r * d for r, d in zip(reps, shape)]
    if 0 in out:
        return cx.const(np.zeros(out), x.dtype)
    inter = [v for d in shape for v in (1, d)]
    big = [v for r, d in zip(reps, shape) for v in (r, d)]
    y = cx.emit("reshape", [x], {"shape": inter})
    y = cx.emit("expand", [y], {"shape": big})
    return cx.emit("reshape", [y], {"shape": out})


@aten("full_like.default", "zeros_like.default", "ones_like.default", "empty_like.default")
def _full_like(cx: Cx, x: Value, *args: Any, **kwargs: Any) -> Value:
    """A constant of x's shape (empty_like: zeros; its contents are unspecified)."""
    name = cx.node.target._schema.name  # type: ignore[union-attr]
    value = args[0] if name.endswith("full_like") else (1 if name.endswith("ones_like") else 0)
    t = cx.meta_type()
    return cx.const(np.full(t.shape, value), t.dtype)


@aten("any.dims", "any.dim", "any.default", "all.dims", "all.dim", "all.default")
def _any_all(cx: Cx, x: Value, dims: Any = None, keepdim: bool = False) -> Value:
    """any: max of (x != 0) as 0/1; all: its min."""
    is_any = cx.node.target._schema.name.endswith("any")  # type: ignore[union-attr]
    nz = cx.cast(x, DType.bool) if x.dtype != DType.bool else x
    axes = _dims(dims if dims not in ([], ()) else None, x.type.rank)
    if not axes:
        return nz
    f = cx.cast(nz, DType.fp32)
    r = cx.emit("reduce", [f], {"kind": "max" if is_any else "min", "axes": axes, "keepdim": bool(keepdim)})
    return cx.cast(r, DType.bool)


def _arg_extreme(cx: Cx, x: Value, dim: int | None, keepdim: bool, largest: bool, out: int | None = None) -> Value:
    """argmax / argmin: the topk (k = 1) kernel along `dim` (min: of -x); ties give the lower index.
    `out`: which of the node's outputs the indices are (max.dim: 1)."""
    want = list(cx.meta_type(out).shape)
    if x.type.rank == 0:
        return cx.const(np.zeros(want, np.int64), DType.int64)
    if dim is None:
        x, d = cx.emit("reshape", [x], {"shape": [x.type.numel]}), 0
    else:
        d = _dim(dim, x.type.rank)
    if not x.dtype.is_float:
        x = cx.cast(x, DType.fp32)
    if not largest:
        x = cx.emit("neg", [x])
    y, back = _to_last(cx, x, d)
    idx = cx.g.add_node("topk", [y], {"k": 1}, name=cx.node.name).outputs[1]
    idx = _from_last(cx, idx, back)
    return idx if list(idx.shape) == want else cx.emit("reshape", [idx], {"shape": want})


@aten("argmax.default", "argmin.default")
def _argmax_any(cx: Cx, x: Value, dim: int | None = None, keepdim: bool = False) -> Value:
    largest = cx.node.target._schema.name.endswith("argmax")  # type: ignore[union-attr]
    return _arg_extreme(cx, x, dim, keepdim, largest)


@aten("max.dim", "min.dim")
def _max_dim(cx: Cx, x: Value, dim: int, keepdim: bool = False) -> tuple:
    kind = "max" if cx.node.target._schema.name.endswith("max") else "min"  # type: ignore[union-attr]
    axes = _dims(dim, x.type.rank)
    vals = cx.emit("reduce", [x], {"kind": kind, "axes": axes, "keepdim": bool(keepdim)}) if axes else x
    return (vals, _arg_extreme(cx, x, dim, keepdim, kind == "max", out=1))


@aten("max.default", "min.default")
def _max_all(cx: Cx, x: Value) -> Value:
    kind = "max" if cx.node.target._schema.name.endswith("max") else "min"  # type: ignore[union-attr]
    return x if x.type.rank == 0 else cx.emit("reduce", [x], {"kind": kind, "axes": list(range(x.type.rank)),
                                                              "keepdim": False})


def _topk_along(cx: Cx, x: Value, k: int, d: int, largest: bool) -> tuple[Value, Value]:
    src = x if largest else cx.emit("neg", [x])
    y, back = _to_last(cx, src, d)
    n = cx.g.add_node("topk", [y], {"k": int(k)}, name=cx.node.name)
    vals, idx = n.outputs
    if not largest:
        vals = cx.emit("neg", [vals])
    return _from_last(cx, vals, back), _from_last(cx, idx, back)


@aten("topk.default")
def _topk_any(cx: Cx, x: Value, k: int, dim: int = -1, largest: bool = True, sorted: bool = True) -> tuple | None:
    """Top-k on any axis (moved last around the kernel), smallest-k as the top-k of -x."""
    if x.type.rank == 0 or not x.dtype.is_float:
        return None
    if k == 0:
        t0, t1 = cx.meta_type(0), cx.meta_type(1)
        return (cx.const(np.zeros(t0.shape), t0.dtype), cx.const(np.zeros(t1.shape), t1.dtype))
    return _topk_along(cx, x, k, _dim(dim, x.type.rank), largest)


@aten("sort.default", "sort.stable")
def _sort(cx: Cx, x: Value, *args: Any, **kwargs: Any) -> tuple | None:
    """sort as a top-k with k = n (descending), or of -x (ascending); equal values keep index order."""
    name = cx.node.target._overloadname  # type: ignore[union-attr]
    if name == "stable":
        dim, descending = kwargs.get("dim", -1), kwargs.get("descending", False)
    else:
        dim = args[0] if args else kwargs.get("dim", -1)
        descending = args[1] if len(args) > 1 else kwargs.get("descending", False)
    if x.type.rank == 0:
        return (x, cx.const(np.zeros((), np.int64), DType.int64))
    if x.dtype == DType.bool or x.type.numel == 0:
        return None
    d = _dim(dim, x.type.rank)
    return _topk_along(cx, x, x.shape[d], d, bool(descending))


CUMSUM_MAX = 2048  # longest scan lowered as a matmul against a triangular constant


@aten("cumsum.default")
def _cumsum(cx: Cx, x: Value, dim: int, *, dtype: Any = None) -> Value | None:
    """cumsum along d. Floats: rows (d moved last) times the upper-triangular ones matrix
    U[j, i] = (j <= i), one matmul on the matrix engine (fp32 accumulation). Integers: a
    Hillis-Steele scan, ceil(log2 n) shifted adds, exact in the integer type as torch is."""
    dt = cx.out_dtype()
    if x.type.rank == 0:
        return cx.cast(x, dt)
    d = _dim(dim, x.type.rank)
    n = x.shape[d]
    if x.type.numel == 0 or dt == DType.bool:
        return None
    if not dt.is_float:  # integers: a log-step scan of exact adds on the vector engine
        y = cx.cast(x, dt)
        step = 1
        while step < n:
            zeros = cx.const(np.zeros(y.shape[:d] + (step,) + y.shape[d + 1:], dt.np), dt)
            head = cx.emit("slice", [y], {"axis": d, "start": 0, "end": n - step, "step": 1})
            y = cx.emit("add", [y, cx.emit("concat", [zeros, head], {"axis": d})])
            step *= 2
        return y
    if n > CUMSUM_MAX:
        return None
    y, back = _to_last(cx, cx.cast(x, dt), d)
    if y.type.rank == 1:  # the matmul takes matrices: one row
        y = cx.emit("reshape", [y], {"shape": [1, n]})
    tri = cx.const(np.triu(np.ones((n, n), np.float32)), dt)
    out = _from_last(cx, cx.emit("matmul", [y, tri]), back)
    return out if out.shape == x.shape else cx.emit("reshape", [out], {"shape": list(x.shape)})


def _moments(cx: Cx, x: Value, dims: Any, correction: Any, keepdim: bool) -> tuple[Value, Value]:
    """(var, mean) over dims: mean, then the mean-centred sum of squares / (n - correction)."""
    axes = _dims(dims if dims not in ([], ()) else None, x.type.rank)
    n = math.prod(x.shape[a] for a in axes)
    corr = 1 if correction is None else correction
    if not axes:
        return cx.emit("mul", [x, cx.const(0.0 if n > corr else float("nan"), x.dtype)]), x
    mean = cx.emit("reduce", [x], {"kind": "mean", "axes": axes, "keepdim": True})
    dev = cx.emit("sub", [x, mean])
    s = cx.emit("reduce", [cx.emit("mul", [dev, dev])], {"kind": "sum", "axes": axes, "keepdim": bool(keepdim)})
    var = cx.emit("div", [s, cx.const(max(n - corr, 0), x.dtype)])
    if not keepdim:
        mean = cx.emit("reshape", [mean], {"shape": list(var.shape)})
    return var, mean


@aten("var_mean.correction", "var_mean.dim")
def _var_mean(cx: Cx, x: Value, dims: Any = None, *args: Any, correction: Any = 1, keepdim: bool = False) -> tuple:
    return _moments(cx, x, dims, correction, keepdim)


@aten("std.correction", "std.dim")
def _std(cx: Cx, x: Value, dims: Any = None, *args: Any, correction: Any = 1, keepdim: bool = False) -> Value:
    return cx.emit("sqrt", [_moments(cx, x, dims, correction, keepdim)[0]])


@aten("std_mean.correction")
def _std_mean(cx: Cx, x: Value, dims: Any = None, *, correction: Any = 1, keepdim: bool = False) -> tuple:
    var, mean = _moments(cx, x, dims, correction, keepdim)
    return cx.emit("sqrt", [var]), mean


@aten("linalg_vector_norm.default")
def _vector_norm(cx: Cx, x: Value, ord: float = 2, dim: Any = None, keepdim: bool = False, *,
                 dtype: Any = None) -> Value | None:
    """||x||_p over dims: p = 2 (sqrt of sum of squares), 1, inf / -inf (max / min |x|), 0 (count
    of nonzeros), other p ((sum |x|^p)^(1/p))."""
    if not x.dtype.is_float:
        return None
    axes = _dims(dim if dim not in ([], ()) else None, x.type.rank)
    a = cx.emit("abs", [x])
    if not axes:
        return a if ord != 0 else cx.cast(cx.emit("ne", [x, cx.const(0.0, x.dtype)]), x.dtype)
    attrs = {"axes": axes, "keepdim": bool(keepdim)}
    if x.type.numel == 0 and ord in (math.inf, -math.inf):
        return None
    if ord == math.inf:
        return cx.emit("reduce", [a], {"kind": "max", **attrs})
    if ord == -math.inf:
        return cx.emit("reduce", [a], {"kind": "min", **attrs})
    if ord == 0:
        return cx.emit("reduce", [cx.cast(cx.emit("ne", [x, cx.const(0.0, x.dtype)]), x.dtype)], {"kind": "sum", **attrs})
    if ord == 1:
        return cx.emit("reduce", [a], {"kind": "sum", **attrs})
    if ord == 2:
        return cx.emit("sqrt", [cx.emit("reduce", [cx.emit("mul", [x, x])], {"kind": "sum", **attrs})])
    s = cx.emit("reduce", [cx.pow_by_constant(a, float(ord))], {"kind": "sum", **attrs})
    return cx.pow_by_constant(s, 1.0 / float(ord))


@aten("logsumexp.default")
def _logsumexp(cx: Cx, x: Value, dims: Any = None, keepdim: bool = False) -> Value | None:
    """log(sum(exp(x - m))) + m with m the max (0 where the max is infinite, as PyTorch)."""
    x = _float_in(cx, x)
    axes = _dims(dims if dims not in ([], ()) else None, x.type.rank)
    if not axes:
        return x
    if x.type.numel == 0:
        return None
    m = cx.emit("reduce", [x], {"kind": "max", "axes": axes, "keepdim": True})
    m = cx.emit("where", [cx.emit("isinf", [m]), cx.const(0.0, x.dtype), m])
    s = cx.emit("reduce", [cx.emit("exp", [cx.emit("sub", [x, m])])], {"kind": "sum", "axes": axes, "keepdim": True})
    y = cx.emit("add", [cx.emit("log", [s]), m])
    want = list(cx.meta_type().shape)
    return y if list(y.shape) == want else cx.emit("reshape", [y], {"shape": want})


@aten("prod.dim_int", "prod.default")
def _prod(cx: Cx, x: Value, dim: int | None = None, keepdim: bool = False, *, dtype: Any = None) -> Value | None:
    if not cx.out_dtype().is_float:
        return None
    x = cx.cast(x, cx.out_dtype())
    axes = _dims(dim, x.type.rank)
    if not axes:
        return x
    return cx.emit("reduce", [x], {"kind": "prod", "axes": axes, "keepdim": bool(keepdim)})


@aten("diagonal.default")
def _diagonal(cx: Cx, x: Value, offset: int = 0, dim1: int = 0, dim2: int = 1) -> Value:
    """The diagonal of dims (d1, d2), moved last, as a gather from their flattened [.., n1 * n2] view."""
    r = x.type.rank
    d1, d2 = _dim(dim1, r), _dim(dim2, r)
    n1, n2 = x.shape[d1], x.shape[d2]
    rows = np.arange(max(0, -offset), n1)
    rows = rows[(rows + offset >= 0) & (rows + offset < n2)]
    want = list(cx.meta_type().shape)
    if rows.size == 0:
        return cx.const(np.zeros(want), x.dtype)
    rest = [i for i in range(r) if i not in (d1, d2)]
    y = cx.emit("permute", [x], {"perm": rest + [d1, d2]}) if rest + [d1, d2] != list(range(r)) else x
    y = cx.emit("reshape", [y], {"shape": [x.shape[i] for i in rest] + [n1 * n2]})
    return _index_along(cx, y, len(rest), rows * n2 + rows + offset)


@aten("ldexp.Tensor")
def _ldexp(cx: Cx, x: Value, e: Value) -> Value:
    dt = cx.out_dtype()
    return cx.emit("mul", [cx.tensor(x, dt), cx.emit("exp2", [cx.tensor(e, dt)])])


@aten("fmax.default", "fmin.default")
def _fmax(cx: Cx, a: Value, b: Value) -> Value:
    """maximum / minimum where a NaN operand yields the other one."""
    a_, b_ = _promote(cx, a, b)
    is_max = cx.node.target._schema.name.endswith("fmax")  # type: ignore[union-attr]
    m = cx.emit("maximum" if is_max else "minimum", [a_, b_])
    if not a_.dtype.is_float:
        return m
    return cx.emit("where", [cx.emit("isnan", [a_]), b_, cx.emit("where", [cx.emit("isnan", [b_]), a_, m])])


def _gather_any(cx: Cx, x: Value, d: int, index: Value) -> Value | None:
    """torch.gather on any dim, index smaller than x anywhere: out[p] = x[p with p[d] = index[p]],
    a gather from flattened x at index[p] * stride(d) + the offset of p's other coordinates."""
    if index.type.numel == 0:
        return cx.const(np.zeros(index.shape), x.dtype)
    strides = [math.prod(x.shape[i + 1:]) for i in range(x.type.rank)]
    grid = np.indices(index.shape, dtype=np.int64)
    base = sum(grid[i] * strides[i] for i in range(x.type.rank) if i != d)
    flat = cx.emit("reshape", [x], {"shape": [x.type.numel]}) if x.type.rank != 1 else x
    idx = cx.cast(index, DType.int64)
    if strides[d] != 1:
        idx = cx.emit("mul", [idx, cx.const(strides[d], DType.int64)])
    at = cx.emit("add", [idx, cx.const(np.asarray(base, np.int64), DType.int64)])
    return cx.emit("gather", [flat, at], {"axis": 0})


def _shifted(cx: Cx, y: Value, d: int, k: int, fill: float) -> Value:
    """y shifted k places up dim d, the first k filled with `fill`."""
    n = y.shape[d]
    head = cx.emit("slice", [y], {"axis": d, "start": 0, "end": n - k, "step": 1})
    pads = [(0, 0)] * y.type.rank
    pads[d] = (k, 0)
    return cx.emit("pad", [head], {"pads": pads, "value": float(fill)})


@aten("cumprod.default")
def _cumprod(cx: Cx, x: Value, dim: int, *, dtype: Any = None) -> Value | None:
    """An inclusive scan in log2(n) vector steps (Hillis-Steele): y *= y shifted by 1, 2, 4, ... (ones shifted in)."""
    dt = cx.out_dtype()
    if not dt.is_float:
        return None
    y = cx.cast(x, dt)
    if y.type.rank == 0 or y.type.numel == 0:
        return y
    d = _dim(dim, y.type.rank)
    k = 1
    while k < y.shape[d]:
        y = cx.emit("mul", [y, _shifted(cx, y, d, k, 1.0)])
        k *= 2
    return y


@aten("kthvalue.default")
def _kthvalue(cx: Cx, x: Value, k: int, dim: int = -1, keepdim: bool = False) -> tuple | None:
    """The k-th smallest along dim: the last of the k smallest (topk of -x)."""
    if not x.dtype.is_float or x.type.rank == 0:
        return None
    d = _dim(dim, x.type.rank)
    vals, idx = _topk_along(cx, x, k, d, largest=False)
    outs = []
    for i, v in enumerate((vals, idx)):
        v = cx.emit("slice", [v], {"axis": d, "start": k - 1, "end": k, "step": 1}) if k > 1 else v
        want = list(cx.meta_type(i).shape)
        outs.append(v if list(v.shape) == want else cx.emit("reshape", [v], {"shape": want}))
    return tuple(outs)


@aten("dist.default")
def _dist(cx: Cx, a: Value, b: Value, p: float = 2) -> Value | None:
    """||a - b||_p over all elements."""
    d = cx.emit("sub", list(_promote(cx, a, b)))
    return _vector_norm(cx, d, float(p))


@aten("addmv.default")
def _addmv(cx: Cx, bias: Value, m: Value, v: Value, *, beta: Any = 1, alpha: Any = 1) -> Value:
    """beta * bias + alpha * (m @ v): the vector as a one-column matrix."""
    if m.shape[-1] == 0:
        y = cx.const(np.zeros(m.shape[0]), m.dtype)
    else:
        col = cx.emit("reshape", [v], {"shape": [v.shape[0], 1]})
        y = cx.emit("reshape", [cx.emit("matmul", [m, col])], {"shape": [m.shape[0]]})
    if alpha != 1:
        y = cx.emit("mul", [y, cx.const(alpha, y.dtype)])
    if beta == 0:
        return y if y.shape == tuple(cx.meta_type().shape) else cx.emit("expand", [y], {"shape": list(cx.meta_type().shape)})
    if beta != 1:
        bias = cx.emit("mul", [bias, cx.const(beta, bias.dtype)])
    return cx.emit("add", [y, bias])


@aten("addbmm.default")
def _addbmm(cx: Cx, bias: Value, a: Value, b: Value, *, beta: Any = 1, alpha: Any = 1) -> Value | None:
    """beta * bias + alpha * sum_i a[i] @ b[i]."""
    if a.shape[0] == 0 or a.shape[-1] == 0:
        return None
    y = cx.emit("reduce", [cx.emit("matmul", [a, b])], {"kind": "sum", "axes": [0], "keepdim": False})
    if alpha != 1:
        y = cx.emit("mul", [y, cx.const(alpha, y.dtype)])
    if beta == 0:
        return y
    if beta != 1:
        bias = cx.emit("mul", [bias, cx.const(beta, bias.dtype)])
    return cx.emit("add", [y, bias])


@aten("angle.default")
def _angle(cx: Cx, x: Value) -> Value | None:
    """The angle of a real number: pi below zero, 0 otherwise, NaN for NaN."""
    if not x.dtype.is_float:
        return None
    y = cx.emit("where", [cx.emit("lt", [x, cx.const(0.0, x.dtype)]), cx.const(math.pi, x.dtype), cx.const(0.0, x.dtype)])
    return cx.emit("where", [cx.emit("isnan", [x]), x, y])


@aten("col2im.default")
def _col2im(cx: Cx, x: Value, output_size: list, kernel_size: list, dilation: list, padding: list,
            stride: list) -> Value | None:
    if x.type.rank != 3:
        return None  # unbatched input
    nd = len(output_size)
    return spatial.col2im(cx, x, [int(v) for v in output_size], _per_dim(kernel_size, nd), _per_dim(dilation, nd),
                          [(p, p) for p in _per_dim(padding, nd)], _per_dim(stride, nd))


# -- dynamic shapes / HF models (dyn) --------------------------------------------------------
@aten("_safe_softmax.default")
def _safe_softmax(cx: Cx, x: Value, dim: int, dtype: Any = None) -> Value:
    """Softmax giving 0, not NaN, on rows whose scores are all -inf (fully masked queries, e.g.
    padding): what SDPA's math path calls with a mask under torch.compile."""
    if dtype is not None:
        x = cx.cast(x, torch_to_dtype(dtype))
    axis = _dim(dim, x.type.rank)
    probs = cx.emit("softmax", [x], {"axis": axis, "log": False})
    row_max = cx.emit("reduce", [x], {"kind": "max", "axes": [axis], "keepdim": True})
    masked = cx.emit("eq", [row_max, cx.const(float("-inf"), x.dtype)])
    return cx.emit("where", [masked, cx.const(0.0, x.dtype), probs])


@aten("as_strided.default", "as_strided_.default")
def _as_strided(cx: Cx, x: Value, size: list, stride: list, storage_offset: int | None = None) -> Value | None:
    """Only the restride that is a plain reshape of x's dense row-major data (decompositions
    emit it to set the memory format of a pooled [N, C, 1, 1] result); any other view runs on
    the host."""
    from vnpu.frontends.torch.aten_misc import as_strided_gather  # any other view: a constant-index gather

    size = [int(s) for s in size]
    if storage_offset not in (None, 0) or math.prod(size) != math.prod(x.shape):
        return as_strided_gather(cx, x, size, stride, storage_offset)
    dense = 1
    for d, s in zip(reversed(size), reversed([int(s) for s in stride])):
        if d != 1 and s != dense:
            return as_strided_gather(cx, x, size, stride, storage_offset)
        dense *= d
    return cx.emit("reshape", [x], {"shape": size})


def _index_leading(cx: Cx, x: Value, indices: list) -> Value | None:
    """x[i0, i1, ..., ik-1] (or x[:, ..., i0, ..., ik-1]) with integer index tensors on k adjacent dims (broadcast
    together; HF's padding masks and pooled-token picks): one gather of x's leading dims
    flattened, at the linear index sum_j i_j * stride_j (negative indices wrapped)."""
    # leading full slices (x[:, i, j], DLRM's pairwise-interaction pick) keep their dims in front
    d0 = next((d for d, v in enumerate(indices) if v is not None), len(indices))
    indices = indices[d0:]
    k = len(indices)
    if any(not isinstance(v, Value) or v.dtype not in (DType.int64, DType.int32) for v in indices) or d0 + k > x.type.rank:
        return None
    lead = x.shape[d0:d0 + k]
    flat = cx.emit("reshape", [x], {"shape": list(x.shape[:d0]) + [math.prod(lead)] + list(x.shape[d0 + k:])})
    linear = None
    for j, v in enumerate(indices):
        v = cx.cast(v, DType.int64)
        if not (v.is_const and (v.data >= 0).all()):
            wrapped = cx.emit("add", [v, cx.const(lead[j], DType.int64)])
            v = cx.emit("where", [cx.emit("lt", [v, cx.const(0, DType.int64)]), wrapped, v])
        stride = math.prod(lead[j + 1:])
        term = v if stride == 1 else cx.emit("mul", [v, cx.const(stride, DType.int64)])
        linear = term if linear is None else cx.emit("add", [linear, term])
    return cx.emit("gather", [flat, linear], {"axis": d0})


@aten("unfold.default")
def _unfold_windows(cx: Cx, x: Value, dim: int, size: int, step: int) -> Value | None:
    """Tensor.unfold(dim, size, step): the sliding windows along dim as a new last axis. One
    gather along dim with the constant window indices [W, size] (w * step + j), then the size
    axis moved last: [..., W, ..., size]."""
    r = x.type.rank
    d = _dim(dim, r) if r else 0
    n = x.shape[d] if r else 1
    if size < 1 or step < 1 or size > n:
        return None
    if r == 0:  # a 0-d tensor's one window of size 1
        return cx.emit("reshape", [x], {"shape": [1]})
    w = (n - size) // step + 1
    idx = cx.const((np.arange(w)[:, None] * step + np.arange(size)[None, :]).astype(np.int64), DType.int64)
    if r == 0:
        return None
    g = cx.emit("gather", [x, idx], {"axis": d})  # [..., W, size, ...]
    perm = list(range(d + 1)) + list(range(d + 2, r + 1)) + [d + 1]
    return g if perm == list(range(r + 1)) else cx.emit("permute", [g], {"perm": perm})


@aten("logcumsumexp.default")
def _logcumsumexp(cx: Cx, x: Value, dim: int) -> Value | None:
    """log(cumsum(exp(x))) as a log-step scan of logaddexp (-inf shifted in), without overflow."""
    if not x.dtype.is_float:
        return None
    if x.type.rank == 0 or x.type.numel == 0:
        return x
    d = _dim(dim, x.type.rank)
    y, k = x, 1
    while k < x.shape[d]:
        y = cx.emit("logaddexp", [y, _shifted(cx, y, d, k, -math.inf)])
        k *= 2
    return y


@aten("median.default", "median.dim")
def _median(cx: Cx, x: Value, dim: int | None = None, keepdim: bool = False) -> Any:
    """The lower median: the ((n + 1) // 2)-th smallest (kthvalue), over all elements or along dim."""
    if not x.dtype.is_float or x.type.numel == 0:
        return None
    if dim is None:
        if x.type.rank == 0:
            return x
        flat = cx.emit("reshape", [x], {"shape": [x.type.numel]}) if x.type.rank != 1 else x
        vals, _ = _topk_along(cx, flat, (x.type.numel + 1) // 2, 0, largest=False)
        k = (x.type.numel + 1) // 2
        v = cx.emit("slice", [vals], {"axis": 0, "start": k - 1, "end": k, "step": 1})
        return cx.emit("reshape", [v], {"shape": []})
    if x.type.rank == 0:
        return (x, cx.const(np.zeros((), np.int64), DType.int64))
    return _kthvalue(cx, x, (x.shape[_dim(dim, x.type.rank)] + 1) // 2, dim, keepdim)


@aten("narrow_copy.default")
def _narrow_copy(cx: Cx, x: Value, dim: int, start: int, length: int) -> Value:
    d = _dim(dim, x.type.rank)
    s0 = start + x.shape[d] if start < 0 else start
    return cx.emit("slice", [x], {"axis": d, "start": s0, "end": s0 + length, "step": 1})


@aten("native_dropout.default")
def _native_dropout(cx: Cx, x: Value, p: float, train: bool | None) -> tuple | None:
    """Inference dropout: x and an all-true keep mask (training dropout is random: host)."""
    if train and p > 0:
        return None
    return (x, cx.const(np.ones(x.shape, bool), DType.bool))


@aten("permute_copy.default")
def _permute_copy(cx: Cx, x: Value, dims: list) -> Value:
    return _permute(cx, x, dims)


@aten("slice_scatter.default")
def _slice_scatter(cx: Cx, x: Value, src: Value, dim: int = 0, start: Any = None, end: Any = None,
                   step: int = 1) -> Value | None:
    """x with x[start:end] along dim replaced by src (step 1): a concat of the kept parts and src."""
    d = _dim(dim, x.type.rank)
    s0, e0, _ = slice(start, end, step).indices(x.shape[d])
    if step != 1:
        return None
    e0 = max(e0, s0)
    parts = []
    if s0 > 0:
        parts.append(cx.emit("slice", [x], {"axis": d, "start": 0, "end": s0, "step": 1}))
    parts.append(cx.cast(src, x.dtype))
    if e0 < x.shape[d]:
        parts.append(cx.emit("slice", [x], {"axis": d, "start": e0, "end": x.shape[d], "step": 1}))
    parts = [p for p in parts if p.type.numel > 0]
    if not parts:
        return x
    return parts[0] if len(parts) == 1 else cx.emit("concat", parts, {"axis": d})


@aten("signbit.default")
def _signbit(cx: Cx, x: Value) -> Value:
    if not x.dtype.is_float:
        return cx.emit("lt", [x, cx.const(0, x.dtype)])
    return cx.emit("signbit", [x])


from vnpu.frontends.torch import aten_misc, aten_quant, aten_scatter  # noqa: E402,F401  (register their lowerings)
