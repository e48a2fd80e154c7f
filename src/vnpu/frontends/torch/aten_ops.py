"""One entry per Core-ATen op: how it lowers onto vnpu IR ops.

A handler receives the ImportContext and the op's arguments (IR Values for tensors,
Python objects otherwise) and returns the result Value(s), or None to fall back to host.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from vnpu.dtypes import DType, torch_to_dtype
from vnpu.frontends.torch.importer import ImportContext as Cx, aten
from vnpu.ir.graph import Value


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
    if transposed or x.type.rank != 4:
        return None  # conv1d/3d and transposed convolutions run on the host
    attrs = {"stride": tuple(stride), "padding": ((padding[0], padding[0]), (padding[1], padding[1])),
             "dilation": tuple(dilation), "groups": groups}
    y = cx.emit("conv2d", [x, w], attrs)
    if bias is not None:
        y = cx.emit("add", [y, cx.emit("reshape", [bias], {"shape": [bias.shape[0], 1, 1]})])
    return y


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


@aten("native_batch_norm.default", "_native_batch_norm_legit.no_stats")
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
@aten("max_pool2d_with_indices.default")
def _max_pool(cx: Cx, x: Value, kernel: list, stride: list | None = None, padding: Any = 0, dilation: Any = 1,
              ceil_mode: bool = False) -> tuple | None:
    k = tuple(kernel) if len(kernel) == 2 else (kernel[0], kernel[0])
    s = tuple(stride) if stride else k
    s = s if len(s) == 2 else (s[0], s[0])
    p = padding if isinstance(padding, (list, tuple)) else [padding, padding]
    p = p if len(p) == 2 else [p[0], p[0]]
    d = dilation if isinstance(dilation, (list, tuple)) else [dilation]
    if ceil_mode or any(v != 1 for v in d):
        return None
    y = cx.emit("pool2d", [x], {"kind": "max", "kernel": k, "stride": s, "padding": ((p[0], p[0]), (p[1], p[1]))})
    return (y, None)


@aten("avg_pool2d.default")
def _avg_pool(cx: Cx, x: Value, kernel: list, stride: list | None = None, padding: Any = 0, ceil_mode: bool = False,
              count_include_pad: bool = True, divisor_override: Any = None) -> Value | None:
    k = tuple(kernel) if len(kernel) == 2 else (kernel[0], kernel[0])
    s = tuple(stride) if stride else k
    p = padding if isinstance(padding, (list, tuple)) else [padding, padding]
    p = p if len(p) == 2 else [p[0], p[0]]
    if ceil_mode or divisor_override or (not count_include_pad and any(p)):
        return None
    return cx.emit("pool2d", [x], {"kind": "avg", "kernel": k, "stride": tuple(s), "padding": ((p[0], p[0]), (p[1], p[1]))})


@aten("_adaptive_avg_pool2d.default", "adaptive_avg_pool2d.default")
def _adaptive_avg(cx: Cx, x: Value, out_size: list) -> Value | None:
    h, w = x.shape[2], x.shape[3]
    oh, ow = out_size
    if (oh, ow) == (1, 1):
        return cx.emit("reduce", [x], {"kind": "mean", "axes": [2, 3], "keepdim": True})
    if h % oh or w % ow:
        return None
    k = (h // oh, w // ow)
    return cx.emit("pool2d", [x], {"kind": "avg", "kernel": k, "stride": k, "padding": ((0, 0), (0, 0))})


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
    if len(live) > 1:
        return _index_leading(cx, x, indices)
    if len(live) != 1 or not isinstance(live[0][1], Value) or live[0][1].dtype == DType.bool:
        return None
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
    if any(p < 0 for p in pad):
        return None
    if not any(pad):
        return x
    pads = [(0, 0)] * x.type.rank
    for i in range(len(pad) // 2):
        pads[x.type.rank - 1 - i] = (pad[2 * i], pad[2 * i + 1])
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
    if accumulate or len(live) != 1 or not isinstance(live[0][1], Value) or live[0][1].type.rank != 1:
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
    size = [int(s) for s in size]
    if storage_offset not in (None, 0) or math.prod(size) != math.prod(x.shape):
        return None
    dense = 1
    for d, s in zip(reversed(size), reversed([int(s) for s in stride])):
        if d != 1 and s != dense:
            return None
        dense *= d
    return cx.emit("reshape", [x], {"shape": size})


def _index_leading(cx: Cx, x: Value, indices: list) -> Value | None:
    """x[i0, i1, ..., ik-1] with integer index tensors on the k leading dims (broadcast
    together; HF's padding masks and pooled-token picks): one gather of x's leading dims
    flattened, at the linear index sum_j i_j * stride_j (negative indices wrapped)."""
    k = len(indices)
    if any(not isinstance(v, Value) or v.dtype not in (DType.int64, DType.int32) for v in indices) or k > x.type.rank:
        return None
    lead = x.shape[:k]
    flat = cx.emit("reshape", [x], {"shape": [math.prod(lead)] + list(x.shape[k:])})
    linear = None
    for j, v in enumerate(indices):
        v = cx.cast(v, DType.int64)
        if not (v.is_const and (v.data >= 0).all()):
            wrapped = cx.emit("add", [v, cx.const(lead[j], DType.int64)])
            v = cx.emit("where", [cx.emit("lt", [v, cx.const(0, DType.int64)]), wrapped, v])
        stride = math.prod(lead[j + 1:])
        term = v if stride == 1 else cx.emit("mul", [v, cx.const(stride, DType.int64)])
        linear = term if linear is None else cx.emit("add", [linear, term])
    return cx.emit("gather", [flat, linear], {"axis": 0})
