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
from vnpu.frontends.torch.importer import ImportContext as Cx, aten
from vnpu.ir.graph import Value
from vnpu.ir.ops import broadcast_shapes


def _dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


def _dims(ds: Any, rank: int) -> list[int]:
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
    aten(f"{_name}.Tensor", f"{_name}.Scalar", f"{_name}.default")(_binary(_op))


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
      "dropout.default", "native_dropout.default")
def _identity(cx: Cx, x: Value, *args: Any, **kwargs: Any) -> Value:
    return x


# -- linear algebra ---------------------------------------------------------------------
@aten("mm.default", "bmm.default", "matmul.default")
def _mm(cx: Cx, a: Value, b: Value) -> Value:
    return cx.emit("matmul", [a, b])


@aten("addmm.default")
def _addmm(cx: Cx, bias: Value, a: Value, b: Value, *, beta: Any = 1, alpha: Any = 1) -> Value:
    y = cx.emit("matmul", [a, b])
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
        return None
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
    return (y, None, None)


@aten("_softmax.default", "softmax.int")
def _softmax(cx: Cx, x: Value, dim: int, half_to_float: bool = False) -> Value:
    return cx.emit("softmax", [x], {"axis": _dim(dim, x.type.rank), "log": False})


@aten("_log_softmax.default", "log_softmax.int")
def _log_softmax(cx: Cx, x: Value, dim: int, half_to_float: bool = False) -> Value:
    return cx.emit("softmax", [x], {"axis": _dim(dim, x.type.rank), "log": True})


def _reduce(kind: str):
    def h(cx: Cx, x: Value, dims: Any = None, keepdim: bool = False, *, dtype: Any = None) -> Value | None:
        axes = _dims(dims if dims not in ([], ()) else None, x.type.rank)
        if kind in ("sum", "mean") and not x.dtype.is_float:
            return None
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
    return cx.emit("div", [s, cx.const(max(n - corr, 1), x.dtype)])


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
    return cx.emit("gather", [x, idx], {"axis": _dim(dim, x.type.rank)})


@aten("index.Tensor")
def _index(cx: Cx, x: Value, indices: list) -> Value | None:
    live = [(i, v) for i, v in enumerate(indices) if v is not None]
    if len(live) != 1 or not isinstance(live[0][1], Value) or live[0][1].dtype == DType.bool:
        return _index_separable(cx, x, indices)
    return cx.emit("gather", [x, live[0][1]], {"axis": live[0][0]})


@aten("gather.default")
def _gather_along(cx: Cx, x: Value, dim: int, index: Value, *, sparse_grad: bool = False) -> Value | None:
    """torch.gather along the last axis (sampling picks each row's chosen candidate id): x's rows
    flattened into one vector, each index offset by its row's start, then the gather kernel on axis 0."""
    r = x.type.rank
    if (_dim(dim, r) != r - 1 or not isinstance(index, Value) or index.type.rank != r
            or tuple(index.shape[:-1]) != tuple(x.shape[:-1])):
        return None
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
    """x[..., idx, ...] = values along the one indexed axis (index_copy_ on a KV cache)."""
    live = [(i, v) for i, v in enumerate(indices) if v is not None]
    if accumulate:
        return _index_put_accumulate(cx, x, indices, values)
    if len(live) != 1 or not isinstance(live[0][1], Value) or live[0][1].type.rank != 1:
        return None
    ax, idx = live[0]
    if idx.dtype == DType.bool:
        return None
    want = x.shape[:ax] + (idx.shape[0],) + x.shape[ax + 1:]
    if values.shape != want:
        if values.type.numel != 1 and values.shape != want[len(want) - values.type.rank:]:
            return None
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


@aten("topk.default")
def _topk(cx: Cx, x: Value, k: int, dim: int = -1, largest: bool = True, sorted: bool = True) -> tuple | None:
    if not largest or _dim(dim, x.type.rank) != x.type.rank - 1:
        return None
    n = cx.g.add_node("topk", [x], {"k": int(k)}, name=cx.node.name)
    return tuple(n.outputs)


@aten("argmax.default")
def _argmax(cx: Cx, x: Value, dim: int | None = None, keepdim: bool = False) -> Value | None:
    if dim is None or _dim(dim, x.type.rank) != x.type.rank - 1:
        return None
    n = cx.g.add_node("topk", [x], {"k": 1}, name=cx.node.name)
    idx = n.outputs[1]
    shape = list(idx.shape) if keepdim else list(idx.shape[:-1])
    return cx.emit("reshape", [idx], {"shape": shape})


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
    return (spatial.group_norm(cx, x, int(groups), w, b, float(eps)), None, None)


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
    if _uses_output(cx, 1):
        return None  # the indices output runs on the host
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
    if not offsets.is_const or any(_uses_output(cx, i) for i in (1, 2, 3)) or idx.type.rank != 1:
        return None  # offsets known only at run time: bag boundaries are data
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


@aten("slice_scatter.default")
def _slice_scatter(cx: Cx, base: Value, src: Value, dim: int = 0, start: Any = None, end: Any = None,
                   step: int = 1) -> Value | None:
    """base with base[start:end] along dim replaced by src (circular padding decomposes to these):
    a concat of the kept parts of base around src."""
    d = _dim(dim, base.type.rank)
    n = base.shape[d]
    s, e, _ = slice(start, end, step).indices(n)
    if step != 1:
        return None
    e = max(e, s)
    parts = []
    if s > 0:
        parts.append(cx.emit("slice", [base], {"axis": d, "start": 0, "end": s, "step": 1}))
    parts.append(cx.cast(src, base.dtype))
    if e < n:
        parts.append(cx.emit("slice", [base], {"axis": d, "start": e, "end": n, "step": 1}))
    return parts[0] if len(parts) == 1 else cx.emit("concat", parts, {"axis": d})


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


@aten("col2im.default")
def _col2im(cx: Cx, x: Value, output_size: list, kernel_size: list, dilation: list, padding: list,
            stride: list) -> Value | None:
    if x.type.rank != 3:
        return None  # unbatched input
    nd = len(output_size)
    return spatial.col2im(cx, x, [int(v) for v in output_size], _per_dim(kernel_size, nd), _per_dim(dilation, nd),
                          [(p, p) for p in _per_dim(padding, nd)], _per_dim(stride, nd))
