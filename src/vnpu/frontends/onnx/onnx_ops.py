"""One entry per ONNX op type: how it lowers onto vnpu IR ops.

A handler receives the OnnxContext, the node's inputs (IR Values, None for an omitted
optional input) and its attributes, and returns the output Value(s), or None to run the
node on the host. Lowerings mirror frontends/torch/aten_ops.py (Conv -> conv2d + bias add,
BatchNormalization -> per-channel mul + add, Gemm -> matmul with the transposed weight
folded...), so that a model compiles to the same program whichever framework it came from.
"""
from __future__ import annotations

import math

import numpy as np

from vnpu.dtypes import DType
from vnpu.frontends import spatial
from vnpu.frontends.spatial import same_pads
from vnpu.frontends.onnx.importer import OnnxContext as Cx, _elem_dtype, onnx_op
from vnpu.ir.graph import Value

Ins = list[Value | None]  # a node's inputs; None for an omitted optional input


def _axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


# -- elementwise ---------------------------------------------------------------------------
def _same(cx: Cx, a: Value, b: Value) -> tuple[Value, Value]:
    # ONNX requires equal input types; constants exported in another width are cast here
    if a.dtype != b.dtype:
        if b.is_const:
            b = cx.cast(b, a.dtype)
        else:
            a = cx.cast(a, b.dtype)
    return a, b


def _binary(ir_op: str, int_ok: bool = True):
    def h(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
        a, b = _same(cx, ins[0], ins[1])
        if not int_ok and not a.dtype.is_float:
            return None
        return cx.emit(ir_op, [a, b])
    return h


for _t, _op in [("Add", "add"), ("Sub", "sub"), ("Mul", "mul"), ("Equal", "eq"), ("Less", "lt"),
                ("LessOrEqual", "le"), ("Greater", "gt"), ("GreaterOrEqual", "ge"), ("And", "and"), ("Or", "or")]:
    onnx_op(_t)(_binary(_op))
# integer Div truncates in ONNX (the IR's div is true division): integer runtime Divs run on the host
onnx_op("Div")(_binary("div", int_ok=False))


@onnx_op("Mod")
def _mod(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    a, b = _same(cx, ins[0], ins[1])
    # fmod=1 is C fmod (sign of the dividend); fmod=0 is Python's (sign of the divisor) for ints
    return cx.emit("fmod" if attrs.get("fmod", 0) == 1 else "remainder", [a, b])


@onnx_op("Pow")
def _pow(cx: Cx, ins: Ins, attrs: dict) -> Value:
    x, e = ins
    if e.is_const and e.type.numel == 1 and x.dtype.is_float:
        return cx.pow_by_constant(x, float(np.asarray(e.data, np.float64).reshape(-1)[0]))
    return cx.emit("pow", [x, cx.cast(e, x.dtype)])


def _variadic(ir_op: str):
    def h(cx: Cx, ins: Ins, attrs: dict) -> Value:
        acc = ins[0]
        for v in ins[1:]:
            acc = cx.emit(ir_op, list(_same(cx, acc, v)))
        return acc
    return h


onnx_op("Max")(_variadic("maximum"))
onnx_op("Min")(_variadic("minimum"))
onnx_op("Sum")(_variadic("add"))


@onnx_op("Mean")
def _mean(cx: Cx, ins: Ins, attrs: dict) -> Value:
    s = _variadic("add")(cx, ins, attrs)
    return cx.emit("div", [s, cx.const(len(ins), s.dtype)]) if len(ins) > 1 else s


def _unary(ir_op: str, float_only: bool = True):
    def h(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
        x = ins[0]
        if float_only and not x.dtype.is_float:
            return None
        return cx.emit(ir_op, [x])
    return h


for _t, _op in [("Relu", "relu"), ("Sigmoid", "sigmoid"), ("Tanh", "tanh"), ("Exp", "exp"), ("Log", "log"),
                ("Sqrt", "sqrt"), ("Reciprocal", "reciprocal"), ("Erf", "erf"), ("Sin", "sin"), ("Cos", "cos"),
                ("Floor", "floor"), ("Ceil", "ceil"), ("Round", "round"), ("HardSwish", "hardswish")]:
    onnx_op(_t)(_unary(_op))
for _t, _op in [("Neg", "neg"), ("Abs", "abs"), ("Sign", "sign")]:
    onnx_op(_t)(_unary(_op, float_only=False))


@onnx_op("Not")
def _not(cx: Cx, ins: Ins, attrs: dict) -> Value:
    return cx.emit("not", [ins[0]])


@onnx_op("Identity", "Dropout")
def _identity(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    training = len(ins) > 2 and ins[2] is not None and not (ins[2].is_const and not bool(np.asarray(ins[2].data)))
    ratio = ins[1] if len(ins) > 1 else None
    if training and not (ratio is not None and ratio.is_const and float(np.asarray(ratio.data)) == 0):
        return None  # Dropout in training mode draws a random mask
    if cx.node.op_type == "Dropout" and len(cx.node.output) > 1 and cx.node.output[1]:
        return ins[0], cx.const(np.ones(ins[0].shape, bool), DType.bool)  # inference: every element kept
    return ins[0]


@onnx_op("Gelu")
def _gelu(cx: Cx, ins: Ins, attrs: dict) -> Value:
    return cx.emit("gelu_tanh" if attrs.get("approximate", "none") == "tanh" else "gelu", [ins[0]])


@onnx_op("HardSigmoid")
def _hardsigmoid(cx: Cx, ins: Ins, attrs: dict) -> Value:
    x = ins[0]
    alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
    if math.isclose(alpha, 1 / 6, rel_tol=1e-6) and beta == 0.5:
        return cx.emit("hardsigmoid", [x])  # PyTorch's hardsigmoid
    y = cx.emit("add", [cx.emit("mul", [x, cx.const(alpha, x.dtype)]), cx.const(beta, x.dtype)])
    return cx.emit("clamp", [y], {"min": 0.0, "max": 1.0})


@onnx_op("LeakyRelu")
def _leaky_relu(cx: Cx, ins: Ins, attrs: dict) -> Value:
    x = ins[0]
    alpha = float(attrs.get("alpha", 0.01))
    return cx.emit("where", [cx.emit("gt", [x, cx.const(0, x.dtype)]), x, cx.emit("mul", [x, cx.const(alpha, x.dtype)])])


@onnx_op("PRelu")
def _prelu(cx: Cx, ins: Ins, attrs: dict) -> Value:
    x, slope = _same(cx, ins[0], ins[1])
    if slope.type.rank == 1 and x.type.rank > 2 and slope.shape[0] == x.shape[1] != x.shape[-1]:
        slope = _reshape_to(cx, slope, [x.shape[1]] + [1] * (x.type.rank - 2))  # one slope per channel
    return cx.emit("where", [cx.emit("gt", [x, cx.const(0, x.dtype)]), x, cx.emit("mul", [x, slope])])


@onnx_op("Elu")
def _elu(cx: Cx, ins: Ins, attrs: dict) -> Value:
    x = ins[0]
    alpha = float(attrs.get("alpha", 1.0))
    neg = cx.emit("mul", [cx.emit("sub", [cx.emit("exp", [x]), cx.const(1, x.dtype)]), cx.const(alpha, x.dtype)])
    return cx.emit("where", [cx.emit("gt", [x, cx.const(0, x.dtype)]), x, neg])


@onnx_op("Clip")
def _clip(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x = ins[0]
    lo_v, hi_v = (ins[1] if len(ins) > 1 else None), (ins[2] if len(ins) > 2 else None)
    if not x.dtype.is_float or any(v is not None and not v.is_const for v in (lo_v, hi_v)):
        # bounds known only at run time (or integer data): elementwise max / min
        y = x
        if lo_v is not None:
            y = cx.emit("maximum", [y, cx.cast(lo_v, x.dtype)])
        if hi_v is not None:
            y = cx.emit("minimum", [y, cx.cast(hi_v, x.dtype)])
        return y
    bounds = []
    for v in (lo_v, hi_v):
        bounds.append(None if v is None else float(np.asarray(v.data, np.float64).reshape(-1)[0]))
    lo, hi = bounds
    if lo is None and hi is None:
        return x
    if lo == 0 and hi is None:
        return cx.emit("relu", [x])
    return cx.emit("clamp", [x], {"min": lo, "max": hi})


@onnx_op("Where")
def _where(cx: Cx, ins: Ins, attrs: dict) -> Value:
    c, a, b = ins
    a, b = _same(cx, a, b)
    return cx.emit("where", [cx.cast(c, DType.bool), a, b])


@onnx_op("Cast")
def _cast(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    from vnpu.frontends.onnx.ops_quant import NARROW_INTS, cast_to_narrow_int

    to = int(attrs["to"])
    if to in NARROW_INTS:  # 4-/2-bit targets are stored in int8: their range is not int8's
        return cast_to_narrow_int(cx, ins[0], to)
    return cx.cast(ins[0], _elem_dtype(to))


@onnx_op("CastLike")
def _cast_like(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    from vnpu.frontends.onnx.ops_quant import NARROW_INTS, cast_to_narrow_int, onnx_elem_type

    to = onnx_elem_type(cx, cx.node.input[1])
    if to in NARROW_INTS:
        return cast_to_narrow_int(cx, ins[0], to)
    return cx.cast(ins[0], ins[1].dtype)


# -- linear algebra ---------------------------------------------------------------------------
@onnx_op("MatMul")
def _matmul(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    a, b = ins
    if not a.dtype.is_float:
        return None
    # 1-D operands: numpy.matmul semantics, a vector becomes a one-row (or one-column) matrix
    if a.type.rank == 1 and b.type.rank == 1:
        y = cx.emit("matmul", [_reshape_to(cx, a, [1, a.shape[0]]), _reshape_to(cx, b, [b.shape[0], 1])])
        return _reshape_to(cx, y, [])
    if a.type.rank == 1:
        y = cx.emit("matmul", [cx.emit("reshape", [a], {"shape": [1, a.shape[0]]}), b])
        return cx.emit("reshape", [y], {"shape": list(y.shape[:-2]) + [y.shape[-1]]})
    if b.type.rank == 1:
        y = cx.emit("matmul", [a, cx.emit("reshape", [b], {"shape": [b.shape[0], 1]})])
        return cx.emit("reshape", [y], {"shape": list(y.shape[:-1])})
    if a.type.rank > 2 and b.type.rank == 2:
        # [..., M, K] @ [K, N] as one 2-D matmul over the flattened rows, as PyTorch's linear/matmul
        # decompose it: the same IR, so the same passes apply (sibling Q/K/V matmuls merge)
        rows = a.type.numel // a.shape[-1]
        y = cx.emit("matmul", [_reshape_to(cx, a, [rows, a.shape[-1]]), b])
        return _reshape_to(cx, y, list(a.shape[:-1]) + [b.shape[1]])
    return cx.emit("matmul", [a, b])


@onnx_op("Gemm")
def _gemm(cx: Cx, ins: Ins, attrs: dict) -> Value:
    a, b = ins[0], ins[1]
    c = ins[2] if len(ins) > 2 else None
    if attrs.get("transA", 0):
        a = _transpose(cx, [a], {"perm": [1, 0]})  # a constant is stored transposed once
    if attrs.get("transB", 0):
        b = _transpose(cx, [b], {"perm": [1, 0]})
    y = cx.emit("matmul", [a, b])
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    if alpha != 1:
        y = cx.emit("mul", [y, cx.const(alpha, y.dtype)])
    if c is not None and beta != 0:
        if beta != 1:
            c = cx.emit("mul", [c, cx.const(beta, c.dtype)])
        y = cx.emit("add", [y, c])
    return y


def _conv_pads(attrs: dict, spatial: list[int], kernel: list[int], stride: list[int], dilation: list[int]) -> list[tuple[int, int]] | None:
    """(before, after) padding per spatial dim from `pads` or `auto_pad`."""
    auto = attrs.get("auto_pad", "NOTSET")
    n = len(spatial)
    if auto in ("NOTSET", ""):
        p = list(attrs.get("pads", [0] * (2 * n)))
        return [(int(p[i]), int(p[i + n])) for i in range(n)]
    if auto == "VALID":
        return [(0, 0)] * n
    return same_pads(auto, spatial, kernel, stride, dilation)


@onnx_op("Conv")
def _conv(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    """1-D, 2-D and 3-D convolution (frontends/spatial.py)."""
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    nd = x.type.rank - 2
    if not 1 <= nd <= 3 or not x.dtype.is_float:
        return None
    kernel = list(attrs.get("kernel_shape", w.shape[2:]))
    stride = list(attrs.get("strides", [1] * nd))
    dilation = list(attrs.get("dilations", [1] * nd))
    pads = _conv_pads(attrs, list(x.shape[2:]), kernel, stride, dilation)
    return spatial.conv(cx, x, w, bias, stride, pads, dilation, int(attrs.get("group", 1)))


@onnx_op("BatchNormalization")
def _batch_norm(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x, scale_, b, mean, var = ins[:5]
    if attrs.get("training_mode", 0) or not all(v.is_const for v in (scale_, b, mean, var)):
        return _batch_norm_runtime(cx, ins, attrs)
    eps = float(attrs.get("epsilon", 1e-5))
    scale = np.asarray(scale_.data, np.float64) / np.sqrt(np.asarray(var.data, np.float64) + eps)
    shift = np.asarray(b.data, np.float64) - np.asarray(mean.data, np.float64) * scale
    shape = (x.shape[1],) + (1,) * (x.type.rank - 2)
    s = cx.g.add_const("bn_scale", scale.reshape(shape).astype(np.float32), x.dtype)
    t = cx.g.add_const("bn_shift", shift.reshape(shape).astype(np.float32), x.dtype)
    return cx.emit("add", [cx.emit("mul", [x, s]), t])


# -- normalization, softmax, reductions -----------------------------------------------------------
@onnx_op("LayerNormalization")
def _layer_norm(cx: Cx, ins: Ins, attrs: dict) -> Value:
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    axis = _axis(int(attrs.get("axis", -1)), x.type.rank)
    n = x.type.rank - axis
    norm_shape = x.shape[axis:]

    def param(v: Value | None) -> Value | None:
        if v is None or v.shape == norm_shape:
            return v
        return cx.emit("expand", [v], {"shape": list(norm_shape)}) if not v.is_const else \
            cx.g.add_const(v.name, np.broadcast_to(v.data, norm_shape).copy(), v.dtype)

    w, b = param(w), param(b)
    ins_ = [x] + [v for v in (w, b) if v is not None]
    eps = float(attrs.get("epsilon", 1e-5))
    y = cx.emit("layer_norm", ins_, {"axis_count": n, "eps": eps, "has_weight": w is not None, "has_bias": b is not None})
    if not any(cx.node.output[1:]):
        return y
    # the Mean and InvStdDev outputs (training exports keep them): reductions over the normalized axes
    axes = list(range(axis, x.type.rank))
    mean = cx.emit("reduce", [x], {"kind": "mean", "axes": axes, "keepdim": True})
    d = cx.emit("sub", [x, mean])
    var = cx.emit("reduce", [cx.emit("mul", [d, d])], {"kind": "mean", "axes": axes, "keepdim": True})
    return y, mean, cx.emit("rsqrt", [cx.emit("add", [var, cx.const(eps, x.dtype)])])


def _group_norm(cx: Cx, x: Value, groups: int, scale: Value, bias: Value, eps: float) -> Value | None:
    """Normalize each (sample, group) over its channels and positions: a reshape to
    [N, groups, rest], the chip's layer_norm over the last axis, then the per-channel affine."""
    n, c = x.shape[0], x.shape[1]
    if c % groups or not x.dtype.is_float:
        return None
    v = _reshape_to(cx, x, [n, groups, x.type.numel // (n * groups)])
    v = cx.emit("layer_norm", [v], {"axis_count": 1, "eps": eps, "has_weight": False, "has_bias": False})
    v = _reshape_to(cx, v, list(x.shape))
    per_channel = (c,) + (1,) * (x.type.rank - 2)
    s = _reshape_to(cx, scale, list(per_channel)) if scale.type.numel == c else None
    b = _reshape_to(cx, bias, list(per_channel)) if bias.type.numel == c else None
    if s is None or b is None:
        return None
    return cx.emit("add", [cx.emit("mul", [v, cx.cast(s, x.dtype)]), cx.cast(b, x.dtype)])


@onnx_op("InstanceNormalization")
def _instance_norm(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x, scale, bias = ins
    return _group_norm(cx, x, x.shape[1], scale, bias, float(attrs.get("epsilon", 1e-5)))


@onnx_op("GroupNormalization")
def _group_norm_op(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x, scale, bias = ins
    groups = int(attrs["num_groups"])
    if scale.type.numel == groups != x.shape[1]:  # opset 18: one scale per group, repeated over its channels
        if not (scale.is_const and bias.is_const):
            return None
        rep = x.shape[1] // groups
        scale = cx.g.add_const(scale.name, np.repeat(np.asarray(scale.data), rep), scale.dtype)
        bias = cx.g.add_const(bias.name, np.repeat(np.asarray(bias.data), rep), bias.dtype)
    return _group_norm(cx, x, groups, scale, bias, float(attrs.get("epsilon", 1e-5)))


def _softmax(log: bool):
    def h(cx: Cx, ins: Ins, attrs: dict) -> Value:
        x = ins[0]
        return cx.emit("softmax", [x], {"axis": _axis(int(attrs.get("axis", -1)), x.type.rank), "log": log})
    return h


onnx_op("Softmax")(_softmax(False))
onnx_op("LogSoftmax")(_softmax(True))


def _reduce_axes(cx: Cx, ins: Ins, attrs: dict, rank: int) -> list[int] | None:
    """Axes from the attribute (older opsets) or the second input (ReduceSum 13+, the rest 18+);
    [] means reduce nothing when noop_with_empty_axes is set. None: axes known only at run time."""
    if "axes" in attrs:
        axes = list(attrs["axes"])
    elif len(ins) > 1 and ins[1] is not None:
        axes = cx.ints(ins[1])
        if axes is None:
            return None
    else:
        axes = []
    if not axes:
        return [] if attrs.get("noop_with_empty_axes", 0) else list(range(rank))
    return sorted(_axis(int(a), rank) for a in axes)


def _reduce(kind: str):
    def h(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
        x = ins[0]
        axes = _reduce_axes(cx, ins, attrs, x.type.rank)
        if axes is None or (kind in ("sum", "mean") and not x.dtype.is_float):
            return None
        if not axes:
            return x
        return cx.emit("reduce", [x], {"kind": kind, "axes": axes, "keepdim": bool(attrs.get("keepdims", 1))})
    return h


for _t, _k in [("ReduceMean", "mean"), ("ReduceSum", "sum"), ("ReduceMax", "max"), ("ReduceMin", "min")]:
    onnx_op(_t)(_reduce(_k))


@onnx_op("ReduceSumSquare")
def _reduce_sum_square(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x = ins[0]
    sq = cx.emit("mul", [x, x])
    return _reduce("sum")(cx, [sq] + list(ins[1:]), attrs)


@onnx_op("ReduceL2")
def _reduce_l2(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    s = _reduce_sum_square(cx, ins, attrs)
    return None if s is None else cx.emit("sqrt", [s])


@onnx_op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(cx: Cx, ins: Ins, attrs: dict) -> Value:
    x = ins[0]
    kind = "mean" if cx.node.op_type == "GlobalAveragePool" else "max"
    return cx.emit("reduce", [x], {"kind": kind, "axes": list(range(2, x.type.rank)), "keepdim": True})


# -- pooling ----------------------------------------------------------------------------------
def _pool(kind: str):
    def h(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
        x = ins[0]
        nd = x.type.rank - 2
        with_indices = len(cx.node.output) > 1 and bool(cx.node.output[1])
        if not 1 <= nd <= 3:
            return None
        k = [int(v) for v in attrs["kernel_shape"]]
        s = [int(v) for v in attrs.get("strides", [1] * nd)]
        d = [int(v) for v in attrs.get("dilations", [1] * nd)]
        pads = _conv_pads(attrs, list(x.shape[2:]), k, s, d)
        if with_indices:
            return spatial.max_pool_with_indices(cx, x, k, s, pads, d, bool(attrs.get("ceil_mode", 0)),
                                                 whole_tensor=True, column_major=bool(attrs.get("storage_order", 0)))
        return spatial.pool(cx, x, kind, k, s, pads, d, bool(attrs.get("ceil_mode", 0)),
                            bool(attrs.get("count_include_pad", 0)))
    return h


onnx_op("MaxPool")(_pool("max"))
onnx_op("AveragePool")(_pool("avg"))


# -- gather -----------------------------------------------------------------------------------
@onnx_op("Gather")
def _gather(cx: Cx, ins: Ins, attrs: dict) -> Value:
    x, idx = ins
    axis = _axis(int(attrs.get("axis", 0)), x.type.rank)
    if idx.is_const:
        ids = np.asarray(idx.data).astype(np.int64)
        ids = np.where(ids < 0, ids + x.shape[axis], ids)
        flat = ids.reshape(-1)
        if flat.size and np.array_equal(flat, np.arange(flat[0], flat[0] + flat.size)):
            # a contiguous run is a slice (a scalar index a select, as PyTorch's x[:, 0])
            s = cx.emit("slice", [x], {"axis": axis, "start": int(flat[0]), "end": int(flat[0]) + flat.size, "step": 1})
            shape = list(x.shape[:axis]) + list(ids.shape) + list(x.shape[axis + 1:])
            return s if tuple(shape) == s.shape else cx.emit("reshape", [s], {"shape": shape})
        idx = cx.g.add_const(idx.name, ids, DType.int64)
    return cx.emit("gather", [x, cx.cast(idx, DType.int64) if idx.dtype not in (DType.int64, DType.int32) else idx],
                   {"axis": axis})


# -- shapes, views and data movement --------------------------------------------------------------
@onnx_op("Shape")
def _shape(cx: Cx, ins: Ins, attrs: dict) -> Value:
    shape = list(ins[0].shape)
    start, end = attrs.get("start", 0), attrs.get("end", None)
    return cx.const(np.array(shape[slice(start, end)], np.int64), DType.int64)


@onnx_op("Size")
def _size(cx: Cx, ins: Ins, attrs: dict) -> Value:
    return cx.const(np.array(ins[0].type.numel, np.int64), DType.int64)


def _reshape_to(cx: Cx, x: Value, shape: list[int]) -> Value:
    if tuple(shape) == x.shape:
        return x
    if x.is_const:
        return cx.g.add_const(x.name, np.asarray(x.data).reshape(shape), x.dtype)
    return cx.emit("reshape", [x], {"shape": list(shape)})


@onnx_op("Reshape")
def _reshape(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x = ins[0]
    shape = cx.ints(ins[1])
    if shape is None:
        return None
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        shape[shape.index(-1)] = x.type.numel // max(known, 1)
    return _reshape_to(cx, x, shape)


@onnx_op("Flatten")
def _flatten(cx: Cx, ins: Ins, attrs: dict) -> Value:
    x = ins[0]
    axis = _axis(int(attrs.get("axis", 1)), x.type.rank)
    return _reshape_to(cx, x, [math.prod(x.shape[:axis]), math.prod(x.shape[axis:])])


@onnx_op("Squeeze")
def _squeeze(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x = ins[0]
    axes = attrs.get("axes") if "axes" in attrs else cx.ints(ins[1] if len(ins) > 1 else None)
    if axes is None and len(ins) > 1 and ins[1] is not None:
        return None
    ds = {_axis(a, x.type.rank) for a in axes} if axes else {i for i, d in enumerate(x.shape) if d == 1}
    return _reshape_to(cx, x, [d for i, d in enumerate(x.shape) if i not in ds])


@onnx_op("Unsqueeze")
def _unsqueeze(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x = ins[0]
    axes = attrs.get("axes") if "axes" in attrs else cx.ints(ins[1])
    if axes is None:
        return None
    rank = x.type.rank + len(axes)
    shape = list(x.shape)
    for a in sorted(_axis(a, rank) for a in axes):
        shape.insert(a, 1)
    return _reshape_to(cx, x, shape)


@onnx_op("Transpose")
def _transpose(cx: Cx, ins: Ins, attrs: dict) -> Value:
    x = ins[0]
    perm = [int(p) for p in attrs.get("perm", list(reversed(range(x.type.rank))))]
    if perm == list(range(x.type.rank)):
        return x
    if x.is_const:
        return cx.g.add_const(x.name + "_t", np.ascontiguousarray(np.transpose(x.data, perm)), x.dtype)
    return cx.emit("permute", [x], {"perm": perm})


@onnx_op("Expand")
def _expand(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x = ins[0]
    shape = cx.ints(ins[1])
    if shape is None:
        return None
    from vnpu.ir.ops import broadcast_shapes

    out = broadcast_shapes(x.shape, tuple(shape))  # ONNX Expand broadcasts both ways
    if out == x.shape:
        return x
    if x.type.rank < len(out):
        x = _reshape_to(cx, x, [1] * (len(out) - x.type.rank) + list(x.shape))
    return cx.emit("expand", [x], {"shape": list(out)})


@onnx_op("Tile")
def _tile(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    """Each tiled axis d of size n becomes [r, n] (a size-1 axis inserted before it, broadcast to r),
    then merged to r * n: the whole axis repeated r times."""
    x = ins[0]
    reps = cx.ints(ins[1])
    if reps is None:
        return None
    if all(r == 1 for r in reps):
        return x
    grown: list[int] = []
    merged: list[int] = []
    for d, r in zip(x.shape, reps):
        grown += [r, d]
        merged.append(r * d)
    v = _reshape_to(cx, x, [s for d in x.shape for s in (1, d)])
    v = cx.emit("expand", [v], {"shape": grown})
    return cx.emit("reshape", [v], {"shape": merged})


@onnx_op("Concat")
def _concat(cx: Cx, ins: Ins, attrs: dict) -> Value:
    xs = [v for v in ins if v is not None and v.type.numel > 0]
    axis = _axis(int(attrs["axis"]), xs[0].type.rank)
    dt = xs[0].dtype
    xs = [cx.cast(v, dt) for v in xs]
    return xs[0] if len(xs) == 1 else cx.emit("concat", xs, {"axis": axis})


@onnx_op("Slice")
def _slice(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x = ins[0]
    starts, ends = cx.ints(ins[1]), cx.ints(ins[2])
    axes = cx.ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(starts or [])))
    steps = cx.ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts or [])
    if starts is None or ends is None or axes is None or steps is None or any(s == 0 for s in steps):
        return None  # run-time bounds: host
    y = x
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = _axis(a, x.type.rank)
        n = x.shape[a]
        if st < 0:  # a reversed slice: a gather of the constant indices
            y = _take(cx, y, a, np.arange(*slice(s, e, st).indices(n)))
            continue
        lo, hi, _ = slice(s, e, st).indices(n)  # ONNX clamps like Python slicing for positive steps
        hi = max(hi, lo)
        if (lo, hi, st) == (0, n, 1):
            continue
        y = cx.emit("slice", [y], {"axis": a, "start": lo, "end": hi, "step": st})
    return y


@onnx_op("Split")
def _split(cx: Cx, ins: Ins, attrs: dict) -> tuple | None:
    x = ins[0]
    axis = _axis(int(attrs.get("axis", 0)), x.type.rank)
    n = x.shape[axis]
    if "split" in attrs:
        sizes = list(attrs["split"])
    elif len(ins) > 1 and ins[1] is not None:
        sizes = cx.ints(ins[1])
        if sizes is None:
            return None
    else:
        parts = int(attrs.get("num_outputs", len(cx.node.output)))
        chunk = -(-n // parts)  # ceil: the last part is the smaller one (opset 18)
        sizes = [min(chunk, n - i * chunk) for i in range(parts)]
    outs, start = [], 0
    for s in sizes:
        outs.append(x if s == n else cx.emit("slice", [x], {"axis": axis, "start": start, "end": start + s, "step": 1}))
        start += s
    return tuple(outs)


@onnx_op("Pad")
def _pad(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x = ins[0]
    mode = attrs.get("mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        return None
    pads = cx.ints(ins[1])
    value_v = ins[2] if len(ins) > 2 else None
    axes = cx.ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(x.type.rank))
    if pads is None or axes is None:
        return None
    if value_v is not None and not value_v.is_const and value_v.type.numel:
        # a fill value known only at run time: pad with 0, then select the value outside the interior
        y = _pad(cx, [x, ins[1], None] + list(ins[3:]), attrs)
        if y is None or y is x:
            return y
        k = len(axes)
        full = [(0, 0)] * x.type.rank
        for i, a in enumerate(axes):
            full[_axis(a, x.type.rank)] = (pads[i], pads[i + k])
        if mode != "constant" or any(p < 0 for p in pads):
            return None
        inside = cx.const(np.pad(np.ones(x.shape, bool), full), DType.bool)
        return cx.emit("where", [inside, y, _reshape_to(cx, cx.cast(value_v, x.dtype), [1] * x.type.rank)])
    if any(p < 0 for p in pads):  # negative pads crop
        value = 0.0 if value_v is None or value_v.type.numel == 0 else float(np.asarray(value_v.data).reshape(-1)[0])
        return _pad_by_index(cx, x, pads, axes, mode, value)
    value = 0.0 if value_v is None or value_v.type.numel == 0 else float(np.asarray(value_v.data).reshape(-1)[0])
    k = len(axes)
    full = [(0, 0)] * x.type.rank
    for i, a in enumerate(axes):
        full[_axis(a, x.type.rank)] = (pads[i], pads[i + k])
    if not any(lo or hi for lo, hi in full):
        return x
    if mode != "constant":
        return spatial.pad_mode(cx, x, full, mode)
    return cx.emit("pad", [x], {"pads": full, "value": value})


# -- Resize: nearest and (bi)linear as constant-index gathers; integer nearest upsampling as a broadcast
def _source_coords(mode: str, out_n: int, in_n: int, scale: float) -> np.ndarray:
    """Source coordinate of each output position (ONNX Resize); align_corners spans the unrounded
    output length in_n * scale, as the ONNX reference does when scales (not sizes) are given."""
    o = np.arange(out_n, dtype=np.float64)
    if mode == "half_pixel":
        return (o + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (o + 0.5) / scale - 0.5 if out_n > 1 else np.zeros(out_n)
    if mode == "align_corners":
        span = in_n * scale - 1
        return o * (in_n - 1) / span if span != 0 else np.zeros(out_n)
    if mode == "asymmetric":
        return o / scale
    if mode == "half_pixel_symmetric":
        adj = out_n / (scale * in_n)
        return in_n * (1 - adj) / 2 + (o + 0.5) / scale - 0.5
    raise ValueError(mode)


def _nearest(x: np.ndarray, how: str) -> np.ndarray:
    if how == "floor":
        return np.floor(x)
    if how == "ceil":
        return np.ceil(x)
    if how == "round_prefer_ceil":
        return np.floor(x + 0.5)
    return np.ceil(x - 0.5)  # round_prefer_floor (the default)


@onnx_op("Resize")
def _resize(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x = ins[0]
    mode = attrs.get("mode", "nearest")
    ctm = attrs.get("coordinate_transformation_mode", "half_pixel")
    if mode not in ("nearest", "linear", "cubic") or ctm not in ("half_pixel", "pytorch_half_pixel", "align_corners",
                                                                 "asymmetric", "half_pixel_symmetric",
                                                                 "tf_crop_and_resize") \
            or (attrs.get("antialias", 0) and mode == "nearest"):
        return None
    policy = attrs.get("keep_aspect_ratio_policy", "stretch")
    if policy not in ("stretch", "not_larger", "not_smaller"):
        return None
    scales_v = ins[2] if len(ins) > 2 else None
    sizes_v = ins[3] if len(ins) > 3 else None
    rank = x.type.rank
    axes = [_axis(int(a), rank) for a in attrs.get("axes", range(rank))]
    if sizes_v is not None and sizes_v.type.numel:
        given = cx.ints(sizes_v)
        if given is None:
            return None
        sizes = list(x.shape)
        for a, v in zip(axes, given):
            sizes[a] = v
        scales = [s / d for s, d in zip(sizes, x.shape)]
        if policy != "stretch":  # one scale for all resized axes (the smaller / larger), sizes rounded half up
            one = (min if policy == "not_larger" else max)(scales[a] for a in axes)
            scales = [one if a in axes else 1.0 for a in range(rank)]
            sizes = [int(one * x.shape[a] + 0.5) if a in axes else x.shape[a] for a in range(rank)]
    elif scales_v is not None and scales_v.is_const and scales_v.type.numel:
        scales = [1.0] * rank
        for a, v in zip(axes, np.asarray(scales_v.data).reshape(-1)):
            scales[a] = float(v)
        sizes = [int(math.floor(d * s)) for d, s in zip(x.shape, scales)]
    else:
        return None
    roi = None
    if ctm == "tf_crop_and_resize":
        roi_v = ins[1] if len(ins) > 1 else None
        if roi_v is None or not roi_v.is_const:
            return None
        r = np.asarray(roi_v.data, np.float32).reshape(-1)  # float32 arithmetic, as onnxruntime: rounding ties agree
        roi = {a: (r[i], r[i + len(axes)]) for i, a in enumerate(axes)}
    y = x
    for a in range(rank):
        if sizes[a] == x.shape[a] and scales[a] == 1 and (roi is None or roi.get(a, (0.0, 1.0)) == (0.0, 1.0)):
            continue
        if roi is not None:  # crop box [start, end] (normalized) resized to sizes[a]
            lo, hi = roi.get(a, (0.0, 1.0))
            lo, hi = np.float32(lo), np.float32(hi)
            o = np.arange(sizes[a], dtype=np.float32)
            n1 = np.float32(x.shape[a] - 1)
            src = (lo * n1 + o * (hi - lo) * n1 / np.float32(sizes[a] - 1) if sizes[a] > 1
                   else np.full(sizes[a], np.float32(0.5) * (lo + hi) * n1)).astype(np.float64)
        else:
            src = _source_coords(ctm, sizes[a], x.shape[a], scales[a])
        if mode == "nearest":
            nm = attrs.get("nearest_mode", "round_prefer_floor")
            up = scales[a]
            if ctm == "asymmetric" and nm == "floor" and up == int(up) and sizes[a] == x.shape[a] * int(up):
                y = _repeat_each(cx, y, a, int(up))  # integer upsampling: no gather needed
                continue
            idx = np.clip(_nearest(src, nm), 0, x.shape[a] - 1).astype(np.int64)
            y = cx.emit("gather", [y, cx.const(idx, DType.int64)], {"axis": a})
        elif attrs.get("antialias", 0):  # the filter widened by 1 / scale when downscaling
            y = spatial.interpolate_matrix(cx, y, a, spatial.antialias_interp_matrix(
                src, x.shape[a], mode, scales[a], float(attrs.get("cubic_coeff_a", -0.75)),
                bool(attrs.get("exclude_outside", 0))))
        else:  # linear / cubic: one matmul with the constant interpolation matrix (frontends/spatial.py)
            y = spatial.interpolate(cx, y, mode, {a: src}, cubic_a=float(attrs.get("cubic_coeff_a", -0.75)),
                                    exclude_outside=bool(attrs.get("exclude_outside", 0)))
        if roi is not None and (np.any(src < 0) or np.any(src > x.shape[a] - 1)):
            outside = ((src < 0) | (src > x.shape[a] - 1)).reshape([-1 if i == a else 1 for i in range(rank)])
            y = cx.emit("where", [cx.const(outside, DType.bool), cx.const(float(attrs.get("extrapolation_value", 0.0)),
                                                                          y.dtype), y])
    return y


def _repeat_each(cx: Cx, x: Value, axis: int, r: int) -> Value:
    """Each element repeated r times along `axis`: reshape to [..., n, 1, ...], broadcast, merge."""
    shape = list(x.shape)
    v = cx.emit("reshape", [x], {"shape": shape[:axis + 1] + [1] + shape[axis + 1:]})
    v = cx.emit("expand", [v], {"shape": shape[:axis + 1] + [r] + shape[axis + 1:]})
    return cx.emit("reshape", [v], {"shape": shape[:axis] + [shape[axis] * r] + shape[axis + 1:]})


# -- spatial ops: conv/pool/norm/interpolate (kernels) --------------------------------------------
@onnx_op("ConvTranspose")
def _conv_transpose(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    """1-D, 2-D and 3-D transposed convolution (zero insertion + flipped-weight conv, frontends/spatial.py)."""
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    nd = x.type.rank - 2
    if not 1 <= nd <= 3 or not x.dtype.is_float:
        return None
    kernel = [int(k) for k in attrs.get("kernel_shape", w.shape[2:])]
    stride = [int(s) for s in attrs.get("strides", [1] * nd)]
    dilation = [int(d) for d in attrs.get("dilations", [1] * nd)]
    out_pad = [int(p) for p in attrs.get("output_padding", [0] * nd)]
    auto = attrs.get("auto_pad", "NOTSET")
    spatial_in = list(x.shape[2:])
    if "output_shape" in attrs or auto in ("SAME_UPPER", "SAME_LOWER"):
        target = (list(attrs["output_shape"])[-nd:] if "output_shape" in attrs
                  else [i * s for i, s in zip(spatial_in, stride)])
        pads = []
        for a in range(nd):
            total = stride[a] * (spatial_in[a] - 1) + out_pad[a] + (kernel[a] - 1) * dilation[a] + 1 - int(target[a])
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2  # NOTSET with output_shape: as SAME_LOWER
            pads.append((lo, total - lo))
    elif auto == "VALID":
        pads = [(0, 0)] * nd
    else:
        p = list(attrs.get("pads", [0] * (2 * nd)))
        pads = [(int(p[i]), int(p[i + nd])) for i in range(nd)]
    return spatial.conv_transpose(cx, x, cx.cast(w, x.dtype), bias, stride, pads, dilation, out_pad,
                                  int(attrs.get("group", 1)))


@onnx_op("LpPool")
def _lp_pool(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    """(sum over the window of |x|^p)^(1/p): abs and power elementwise around a window-sum pool."""
    x = ins[0]
    nd = x.type.rank - 2
    if not 1 <= nd <= 3 or not x.dtype.is_float:
        return None
    p = float(attrs.get("p", 2))
    k = [int(v) for v in attrs["kernel_shape"]]
    s = [int(v) for v in attrs.get("strides", [1] * nd)]
    d = [int(v) for v in attrs.get("dilations", [1] * nd)]
    pads = _conv_pads(attrs, list(x.shape[2:]), k, s, d)
    v = cx.pow_by_constant(cx.emit("abs", [x]), p)
    v = spatial.pool(cx, v, "avg", k, s, pads, d, bool(attrs.get("ceil_mode", 0)), True, divisor_override=1)
    return cx.pow_by_constant(v, 1.0 / p)


@onnx_op("GlobalLpPool")
def _global_lp_pool(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x = ins[0]
    if not x.dtype.is_float:
        return None
    p = float(attrs.get("p", 2))
    v = cx.pow_by_constant(cx.emit("abs", [x]), p)
    v = cx.emit("reduce", [v], {"kind": "sum", "axes": list(range(2, x.type.rank)), "keepdim": True})
    return cx.pow_by_constant(v, 1.0 / p)


@onnx_op("MeanVarianceNormalization")
def _mvn(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    """(x - mean) / sqrt(var + 1e-9) over `axes` (default: batch and spatial dims, per channel)."""
    x = ins[0]
    if not x.dtype.is_float:
        return None
    axes = [_axis(int(a), x.type.rank) for a in attrs.get("axes", [0, 2, 3])]
    return spatial.normalize_axes(cx, x, axes, 1e-9)


@onnx_op("Upsample")
def _upsample(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    """The pre-opset-10 Resize: scales (attribute or input), nearest or linear, asymmetric coordinates."""
    x = ins[0]
    if "scales" in attrs:
        scales = [float(v) for v in attrs["scales"]]
    elif len(ins) > 1 and ins[1] is not None and ins[1].is_const:
        scales = [float(v) for v in np.asarray(ins[1].data).reshape(-1)]
    else:
        return None
    mode = attrs.get("mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear"):
        return None
    scales_c = cx.const(np.asarray(scales, np.float32), DType.fp32)
    return _resize(cx, [x, None, scales_c], {"mode": "linear" if mode != "nearest" else "nearest",
                                             "coordinate_transformation_mode": "asymmetric",
                                             "nearest_mode": "floor"})


@onnx_op("GridSample")
def _grid_sample(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    mode = {"linear": "bilinear", "cubic": "bicubic"}.get(attrs.get("mode", "bilinear"), attrs.get("mode", "bilinear"))
    return spatial.grid_sample(cx, ins[0], ins[1], mode, attrs.get("padding_mode", "zeros"),
                               bool(attrs.get("align_corners", 0)), onnx_borders=True)


# -- elementwise math family (opinfo) ------------------------------------------------------------
for _t, _op in [("Tan", "tan"), ("Asin", "asin"), ("Acos", "acos"), ("Atan", "atan"), ("Sinh", "sinh"),
                ("Cosh", "cosh"), ("Asinh", "asinh"), ("Acosh", "acosh"), ("Atanh", "atanh"), ("Softsign", "softsign"),
                ("Mish", "mish")]:
    onnx_op(_t)(_unary(_op))


@onnx_op("Selu")
def _selu(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x = ins[0]
    if not x.dtype.is_float:
        return None
    alpha = float(attrs.get("alpha", 1.67326319217681884765625))
    gamma = float(attrs.get("gamma", 1.05070102214813232421875))
    return cx.emit("elu", [x], {"alpha": alpha, "scale": gamma})


@onnx_op("Celu")
def _celu(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    alpha = float(attrs.get("alpha", 1.0))
    if alpha == 0 or not ins[0].dtype.is_float:
        return None
    return cx.emit("elu", [ins[0]], {"alpha": alpha, "input_scale": 1.0 / alpha})


@onnx_op("Softplus")
def _softplus(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    # log(1 + exp(x)); past x = 20 it equals x to fp32 precision (PyTorch's default threshold)
    return cx.emit("softplus", [ins[0]], {"beta": 1.0, "threshold": 20.0}) if ins[0].dtype.is_float else None


@onnx_op("ThresholdedRelu")
def _thresholded_relu(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    if not ins[0].dtype.is_float:
        return None
    return cx.emit("threshold", [ins[0]], {"threshold": float(attrs.get("alpha", 1.0)), "value": 0.0})


@onnx_op("Shrink")
def _shrink(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    """x - bias above lambd, x + bias below -lambd, 0 between (hardshrink: bias 0; softshrink: bias = lambd)."""
    x = ins[0]
    if not x.dtype.is_float:
        return None
    lambd, bias = float(attrs.get("lambd", 0.5)), float(attrs.get("bias", 0.0))
    if bias == 0:
        return cx.emit("hardshrink", [x], {"lambd": lambd})
    if bias == lambd:
        return cx.emit("softshrink", [x], {"lambd": lambd})
    zero = cx.const(0.0, x.dtype)
    lo = cx.emit("where", [cx.emit("lt", [x, cx.const(-lambd, x.dtype)]), cx.emit("add", [x, cx.const(bias, x.dtype)]), zero])
    return cx.emit("where", [cx.emit("gt", [x, cx.const(lambd, x.dtype)]), cx.emit("sub", [x, cx.const(bias, x.dtype)]), lo])


@onnx_op("IsNaN")
def _isnan(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    return cx.emit("isnan", [ins[0]]) if ins[0].dtype.is_float else None


@onnx_op("IsInf")
def _isinf(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x = ins[0]
    if not x.dtype.is_float:
        return None
    pos, neg = int(attrs.get("detect_positive", 1)), int(attrs.get("detect_negative", 1))
    if pos and neg:
        return cx.emit("isinf", [x])
    if pos or neg:
        return cx.emit("isposinf" if pos else "isneginf", [x])
    return cx.const(np.zeros(x.shape, bool), DType.bool)  # detects neither sign



# -- onnx backend suite coverage (onnxsuite) ----------------------------------------------------
def _last_axis(cx: Cx, x: Value, axis: int) -> tuple[Value, list[int] | None]:
    """x with `axis` moved last (a permute), and the permutation (None when already last)."""
    r = x.type.rank
    if axis == r - 1:
        return x, None
    perm = [i for i in range(r) if i != axis] + [axis]
    return cx.emit("permute", [x], {"perm": perm}), perm


def _undo(cx: Cx, x: Value, perm: list[int] | None) -> Value:
    if perm is None:
        return x
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return cx.emit("permute", [x], {"perm": inv})


def _take(cx: Cx, x: Value, axis: int, idx: np.ndarray) -> Value:
    """x indexed along `axis` by constant indices (a gather; a slice when they are a run)."""
    idx = np.asarray(idx, np.int64)
    if idx.size and np.array_equal(idx, np.arange(idx[0], idx[0] + idx.size)):
        if idx[0] == 0 and idx.size == x.shape[axis]:
            return x
        return cx.emit("slice", [x], {"axis": axis, "start": int(idx[0]), "end": int(idx[0]) + idx.size, "step": 1})
    return cx.emit("gather", [x, cx.const(idx, DType.int64)], {"axis": axis})


def _argmax_keepdims(cx: Cx, x: Value, axis: int, largest: bool, last_index: bool) -> Value:
    """int64 index of the largest (smallest) element along `axis`, that axis kept with size 1:
    the chip's top-1 over the last axis (ties: the lower index; select_last_index reverses first)."""
    v, perm = _last_axis(cx, x, axis)
    if perm is not None:
        v = cx.emit("copy", [v])  # the top-k kernel reads evenly spaced rows
    if not largest:
        v = cx.emit("neg", [v])
    n = v.shape[-1]
    if last_index:
        v = _take(cx, v, v.type.rank - 1, np.arange(n - 1, -1, -1))
    idx = cx.g.add_node("topk", [v], {"k": 1}, name=cx.node_label).outputs[1]
    if last_index:
        idx = cx.emit("sub", [cx.const(n - 1, DType.int64), idx])
    return _undo(cx, idx, perm)


def _arg(largest: bool):
    def h(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
        x = ins[0]
        if not x.dtype.is_float or x.type.rank == 0:
            return None
        axis = _axis(int(attrs.get("axis", 0)), x.type.rank)
        idx = _argmax_keepdims(cx, x, axis, largest, bool(attrs.get("select_last_index", 0)))
        if not attrs.get("keepdims", 1):
            idx = _reshape_to(cx, idx, [d for i, d in enumerate(idx.shape) if i != axis])
        return idx
    return h


onnx_op("ArgMax")(_arg(True))
onnx_op("ArgMin")(_arg(False))


def _iota(n: int, axis: int, rank: int) -> np.ndarray:
    shape = [1] * rank
    shape[axis] = n
    return np.arange(n, dtype=np.int64).reshape(shape)


@onnx_op("Hardmax")
def _hardmax(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x = ins[0]
    if not x.dtype.is_float or x.type.rank == 0:
        return None
    axis = _axis(int(attrs.get("axis", -1)), x.type.rank)
    idx = _argmax_keepdims(cx, x, axis, True, False)
    hit = cx.emit("eq", [cx.const(_iota(x.shape[axis], axis, x.type.rank), DType.int64), idx])
    return cx.cast(hit, x.dtype)


@onnx_op("TopK")
def _topk_op(cx: Cx, ins: Ins, attrs: dict) -> tuple | None:
    x = ins[0]
    k = cx.ints(ins[1])
    if k is None or not x.dtype.is_float or x.type.rank == 0:
        return None
    k = k[0]
    axis = _axis(int(attrs.get("axis", -1)), x.type.rank)
    largest = bool(attrs.get("largest", 1))
    v, perm = _last_axis(cx, x, axis)
    if perm is not None:
        v = cx.emit("copy", [v])  # the top-k kernel reads evenly spaced rows
    if not largest:
        v = cx.emit("neg", [v])
    if k == 0 or k > v.shape[-1]:
        return None
    vals, idx = cx.g.add_node("topk", [v], {"k": k}, name=cx.node_label).outputs
    if not largest:
        vals = cx.emit("neg", [vals])
    return _undo(cx, vals, perm), _undo(cx, idx, perm)


def _flat_index_base(shape: tuple[int, ...], idx_shape: tuple[int, ...], axis: int) -> tuple[np.ndarray, int]:
    """For GatherElements: each position's flat offset into `shape` with its `axis` coordinate
    zero, and the stride of `axis`."""
    strides = [int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(len(shape))]
    grids = np.indices(idx_shape, dtype=np.int64)
    base = sum(grids[d] * strides[d] for d in range(len(shape)) if d != axis)
    return np.asarray(base, np.int64).reshape(idx_shape), strides[axis]


def _wrap_negative(cx: Cx, idx: Value, n: int | Value) -> Value:
    """Negative indices counted from the end (n + i)."""
    idx = cx.cast(idx, DType.int64)
    if idx.is_const:
        a = np.asarray(idx.data, np.int64)
        return cx.const(np.where(a < 0, a + n, a), DType.int64)
    zero = cx.const(0, DType.int64)
    nv = n if isinstance(n, Value) else cx.const(n, DType.int64)
    return cx.emit("where", [cx.emit("lt", [idx, zero]), cx.emit("add", [idx, nv]), idx])


@onnx_op("GatherElements")
def _gather_elements(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x, idx = ins
    if x.type.rank == 0 or idx.type.rank != x.type.rank:
        return None
    axis = _axis(int(attrs.get("axis", 0)), x.type.rank)
    base, stride = _flat_index_base(x.shape, idx.shape, axis)
    idx = _wrap_negative(cx, idx, x.shape[axis])
    if idx.is_const:
        flat = cx.const(np.asarray(idx.data) * stride + base, DType.int64)
    else:
        flat = cx.emit("add", [cx.emit("mul", [idx, cx.const(stride, DType.int64)]), cx.const(base, DType.int64)])
    return cx.emit("gather", [_reshape_to(cx, x, [x.type.numel]), flat], {"axis": 0})


@onnx_op("GatherND")
def _gather_nd(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x, idx = ins
    b = int(attrs.get("batch_dims", 0))
    m = idx.shape[-1] if idx.type.rank else 0
    if idx.type.rank < 1 or m == 0 or b + m > x.type.rank:
        return None
    inner = x.shape[b:b + m]
    strides = [int(np.prod(inner[j + 1:], dtype=np.int64)) for j in range(m)]
    rows = int(np.prod(x.shape[:b + m], dtype=np.int64))
    table = _reshape_to(cx, x, [rows] + list(x.shape[b + m:]))
    pos_shape = idx.shape[:-1]
    # the batch coordinates of each index tuple select a block of prod(inner) rows
    grids = np.indices(pos_shape, dtype=np.int64) if pos_shape else np.zeros((0,), np.int64)
    bflat = np.zeros(pos_shape, np.int64)
    for d in range(b):
        bflat = bflat * x.shape[d] + grids[d]
    base = bflat * int(np.prod(inner, dtype=np.int64))
    if idx.is_const:
        a = np.asarray(idx.data, np.int64)
        a = np.where(a < 0, a + np.asarray(inner, np.int64), a)
        flat = cx.const(base + (a * np.asarray(strides, np.int64)).sum(-1), DType.int64)
    else:
        acc = cx.const(base, DType.int64)
        for j in range(m):
            col = cx.emit("slice", [cx.cast(idx, DType.int64)], {"axis": idx.type.rank - 1, "start": j, "end": j + 1, "step": 1})
            col = _reshape_to(cx, _wrap_negative(cx, col, inner[j]), list(pos_shape))
            acc = cx.emit("add", [acc, cx.emit("mul", [col, cx.const(strides[j], DType.int64)])])
        flat = acc
    return cx.emit("gather", [table, flat], {"axis": 0})


@onnx_op("OneHot")
def _one_hot(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    idx, depth_v, values = ins
    if not depth_v.is_const:
        return None  # the output's size known only at run time
    depth = int(np.asarray(depth_v.data).reshape(-1)[0])  # any numeric type
    rank = idx.type.rank + 1
    axis = _axis(int(attrs.get("axis", -1)), rank)
    i = _wrap_negative(cx, idx, depth)
    i = _reshape_to(cx, i, list(i.shape[:axis]) + [1] + list(i.shape[axis:]))
    hit = cx.emit("eq", [i, cx.const(_iota(depth, axis, rank), DType.int64)])
    off = _reshape_to(cx, _take(cx, values, 0, np.array([0])), [1] * rank)
    on = _reshape_to(cx, _take(cx, values, 0, np.array([1])), [1] * rank)
    return cx.emit("where", [hit, on, off])


@onnx_op("EyeLike")
def _eye_like(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x = ins[0]
    if x.type.rank != 2:
        return None
    dt = _elem_dtype(int(attrs["dtype"])) if "dtype" in attrs else x.dtype
    return cx.const(np.eye(x.shape[0], x.shape[1], int(attrs.get("k", 0))), dt)


@onnx_op("Trilu")
def _trilu(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x = ins[0]
    k = 0
    if len(ins) > 1 and ins[1] is not None:
        ks = cx.ints(ins[1])
        if ks is None:
            return None
        k = ks[0]
    if x.type.rank < 2:
        return None
    n, m = x.shape[-2:]
    i, j = np.arange(n)[:, None], np.arange(m)[None, :]
    keep = (j - i >= k) if attrs.get("upper", 1) else (j - i <= k)
    return cx.emit("where", [cx.const(keep, DType.bool), x, cx.const(0, x.dtype)])


@onnx_op("CumSum")
def _cumsum(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    """A running sum along the axis as a matmul with a triangular 0/1 matrix."""
    x = ins[0]
    ax = cx.ints(ins[1])
    if ax is None or not x.dtype.is_float or x.type.rank == 0:
        return None
    axis = _axis(ax[0], x.type.rank)
    v, perm = _last_axis(cx, x, axis)
    n = v.shape[-1]
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    excl, rev = bool(attrs.get("exclusive", 0)), bool(attrs.get("reverse", 0))
    tri = (i > j if excl else i >= j) if rev else (i < j if excl else i <= j)
    y = _matmul(cx, [v, cx.const(tri.astype(np.float32), x.dtype)], {})
    return _undo(cx, y, perm)


@onnx_op("LpNormalization")
def _lp_normalization(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x = ins[0]
    if not x.dtype.is_float:
        return None
    axis = _axis(int(attrs.get("axis", -1)), x.type.rank)
    p = int(attrs.get("p", 2))
    if p not in (1, 2):
        return None
    a = cx.emit("abs", [x]) if p == 1 else cx.emit("mul", [x, x])
    norm = cx.emit("reduce", [a], {"kind": "sum", "axes": [axis], "keepdim": True})
    if p == 2:
        norm = cx.emit("sqrt", [norm])
    zero = cx.const(0, x.dtype)
    return cx.emit("where", [cx.emit("eq", [norm, zero]), zero, cx.emit("div", [x, norm])])



@onnx_op("DepthToSpace")
def _depth_to_space(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x = ins[0]
    if x.type.rank != 4:
        return None
    b = int(attrs["blocksize"])
    n, c, h, w = x.shape
    if attrs.get("mode", "DCR") == "DCR":
        v = _reshape_to(cx, x, [n, b, b, c // (b * b), h, w])
        v = cx.emit("permute", [v], {"perm": [0, 3, 4, 1, 5, 2]})
    else:
        v = _reshape_to(cx, x, [n, c // (b * b), b, b, h, w])
        v = cx.emit("permute", [v], {"perm": [0, 1, 4, 2, 5, 3]})
    return cx.emit("reshape", [v], {"shape": [n, c // (b * b), h * b, w * b]})


@onnx_op("SpaceToDepth")
def _space_to_depth(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x = ins[0]
    if x.type.rank != 4:
        return None
    b = int(attrs["blocksize"])
    n, c, h, w = x.shape
    v = _reshape_to(cx, x, [n, c, h // b, b, w // b, b])
    perm = [0, 3, 5, 1, 2, 4] if attrs.get("mode", "DCR") == "DCR" else [0, 1, 3, 5, 2, 4]
    v = cx.emit("permute", [v], {"perm": perm})
    return cx.emit("reshape", [v], {"shape": [n, c * b * b, h // b, w // b]})


def _reduce_kind_then(kind: str, pre: str | None = None, post: str | None = None):
    """ReduceL1 (sum of abs), ReduceLogSum (log of sum): an elementwise op before / after a reduce."""
    def h(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
        x = ins[0]
        if not x.dtype.is_float:
            return None
        axes = _reduce_axes(cx, ins, attrs, x.type.rank)
        if axes is None:
            return None
        v = cx.emit(pre, [x]) if pre else x
        if not axes:
            return cx.emit(post, [v]) if post else v
        y = cx.emit("reduce", [v], {"kind": kind, "axes": axes, "keepdim": bool(attrs.get("keepdims", 1))})
        return cx.emit(post, [y]) if post else y
    return h


onnx_op("ReduceL1")(_reduce_kind_then("sum", pre="abs"))
onnx_op("ReduceLogSum")(_reduce_kind_then("sum", post="log"))


@onnx_op("ReduceLogSumExp")
def _reduce_log_sum_exp(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x = ins[0]
    if not x.dtype.is_float:
        return None
    axes = _reduce_axes(cx, ins, attrs, x.type.rank)
    if axes is None:
        return None
    if not axes:
        return x
    m = cx.emit("reduce", [x], {"kind": "max", "axes": axes, "keepdim": True})
    s = cx.emit("reduce", [cx.emit("exp", [cx.emit("sub", [x, m])])], {"kind": "sum", "axes": axes, "keepdim": True})
    y = cx.emit("add", [cx.emit("log", [s]), m])
    if not attrs.get("keepdims", 1):
        y = _reshape_to(cx, y, [d for i, d in enumerate(x.shape) if i not in axes])
    return y


@onnx_op("ReduceProd")
def _reduce_prod(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    """A product as a chain of multiplies of the slices along each reduced axis (short axes only)."""
    x = ins[0]
    axes = _reduce_axes(cx, ins, attrs, x.type.rank)
    if axes is None or not x.dtype.is_float or any(x.shape[a] > 64 for a in axes):
        return None
    if not axes:
        return x
    y = x
    for a in axes:
        acc = cx.emit("slice", [y], {"axis": a, "start": 0, "end": 1, "step": 1})
        for i in range(1, y.shape[a]):
            acc = cx.emit("mul", [acc, cx.emit("slice", [y], {"axis": a, "start": i, "end": i + 1, "step": 1})])
        y = acc
    if not attrs.get("keepdims", 1):
        y = _reshape_to(cx, y, [d for i, d in enumerate(x.shape) if i not in axes])
    return y


@onnx_op("RMSNormalization")
def _rms_normalization(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x, scale = ins[0], ins[1]
    if not x.dtype.is_float or x.type.rank == 0:
        return None
    axis = _axis(int(attrs.get("axis", -1)), x.type.rank)
    eps = float(attrs.get("epsilon", 1e-5))
    norm = {"eps": eps, "axis_count": 1, "has_weight": False, "has_bias": False, "rms": True}
    scale = cx.cast(scale, x.dtype)
    if axis == x.type.rank - 1 and scale.shape == x.shape[-1:]:
        return cx.emit("rms_norm", [x, scale], {**norm, "has_weight": True})
    inner = int(np.prod(x.shape[axis:], dtype=np.int64))
    v = _reshape_to(cx, x, [int(np.prod(x.shape[:axis], dtype=np.int64)), inner])
    v = _reshape_to(cx, cx.emit("rms_norm", [v], norm), list(x.shape))
    return cx.emit("mul", [v, scale])


@onnx_op("RotaryEmbedding")
def _rotary_embedding(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x, cos, sin = ins[:3]
    pos = ins[3] if len(ins) > 3 else None
    if x.type.rank not in (3, 4) or not x.dtype.is_float:
        return None
    v = x if x.type.rank == 3 else cx.emit("permute", [x], {"perm": [0, 2, 1, 3]})  # [B, S, ...]
    b, s = v.shape[:2]
    if v.type.rank == 3:
        heads = int(attrs.get("num_heads", 0))
        if not heads:
            return None
        v = _reshape_to(cx, v, [b, s, heads, v.shape[2] // heads])
    d = v.shape[3]
    rd = int(attrs.get("rotary_embedding_dim", 0)) or d
    if pos is not None:
        cos = cx.emit("gather", [cos, cx.cast(pos, DType.int64)], {"axis": 0})
        sin = cx.emit("gather", [sin, cx.cast(pos, DType.int64)], {"axis": 0})
    cos = _reshape_to(cx, cx.cast(cos, x.dtype), [b, s, 1, rd // 2])
    sin = _reshape_to(cx, cx.cast(sin, x.dtype), [b, s, 1, rd // 2])
    rot = _take(cx, v, 3, np.arange(rd))
    if attrs.get("interleaved", 0):
        x1, x2 = _take(cx, rot, 3, np.arange(0, rd, 2)), _take(cx, rot, 3, np.arange(1, rd, 2))
    else:
        x1, x2 = _take(cx, rot, 3, np.arange(rd // 2)), _take(cx, rot, 3, np.arange(rd // 2, rd))
    real = cx.emit("sub", [cx.emit("mul", [cos, x1]), cx.emit("mul", [sin, x2])])
    imag = cx.emit("add", [cx.emit("mul", [sin, x1]), cx.emit("mul", [cos, x2])])
    if attrs.get("interleaved", 0):
        pair = [_reshape_to(cx, t, list(t.shape) + [1]) for t in (real, imag)]
        rot = _reshape_to(cx, cx.emit("concat", pair, {"axis": 4}), [b, s, v.shape[2], rd])
    else:
        rot = cx.emit("concat", [real, imag], {"axis": 3})
    y = rot if rd == d else cx.emit("concat", [rot, _take(cx, v, 3, np.arange(rd, d))], {"axis": 3})
    if x.type.rank == 3:
        return _reshape_to(cx, y, list(x.shape))
    return cx.emit("permute", [y], {"perm": [0, 2, 1, 3]})


def _pad_by_index(cx: Cx, x: Value, pads: list[int], axes: list[int], mode: str, value: float = 0.0) -> Value | None:
    """Pad in reflect / edge / wrap mode (and negative pads, which crop) as one constant-index
    gather per padded axis; constant mode with negative pads crops then pads."""
    k = len(axes)
    y = x
    for i, a in enumerate(axes):
        a = _axis(a, x.type.rank)
        lo, hi = pads[i], pads[i + k]
        n = y.shape[a]
        pos = np.arange(-lo, n + hi)
        if mode == "constant":
            keep = pos[(pos >= 0) & (pos < n)]
            y = _take(cx, y, a, keep)
            before, after = max(lo, 0), max(hi, 0)
            if before or after:
                full = [(0, 0)] * y.type.rank
                full[a] = (before, after)
                y = cx.emit("pad", [y], {"pads": full, "value": value})
            continue
        if n == 0:
            return None
        if mode == "edge":
            idx = np.clip(pos, 0, n - 1)
        elif mode == "wrap":
            idx = np.mod(pos, n)
        elif mode == "reflect":
            if n == 1:
                idx = np.zeros_like(pos)
            else:
                period = 2 * (n - 1)
                r = np.mod(pos, period)
                idx = np.where(r < n, r, period - r)
        else:
            return None
        y = _take(cx, y, a, idx)
    return y


_MASKED = -1e30  # a finite "minus infinity" for masked scores: exp underflows to 0 without inf - inf


@onnx_op("Attention")
def _attention(cx: Cx, ins: Ins, attrs: dict) -> tuple | None:
    """ONNX Attention (opset 23/24) composed from matmul, softmax and elementwise ops: 3-D inputs
    split into heads, past K/V concatenated, GQA heads repeated, scale, softcap, boolean or
    additive mask, causal (bottom-right aligned), nonpad_kv_seqlen padding; fully masked rows
    give 0. Outputs Y, present K/V and the requested qk_matmul_output."""
    q, k, v = ins[:3]
    mask = ins[3] if len(ins) > 3 else None
    past_k = ins[4] if len(ins) > 4 else None
    past_v = ins[5] if len(ins) > 5 else None
    nonpad = ins[6] if len(ins) > 6 else None
    if not q.dtype.is_float or q.type.rank not in (3, 4) or (past_k is None) != (past_v is None):
        return None
    dt = q.dtype
    rank3 = q.type.rank == 3

    def heads(t: Value, n: int) -> Value:
        b, s_, hid = t.shape
        return cx.emit("permute", [_reshape_to(cx, t, [b, s_, n, hid // n])], {"perm": [0, 2, 1, 3]})

    if rank3:
        hq, hkv = int(attrs.get("q_num_heads", 0)), int(attrs.get("kv_num_heads", 0))
        if not hq or not hkv:
            return None
        q, k, v = heads(q, hq), heads(k, hkv), heads(v, hkv)
    k, v = cx.cast(k, dt), cx.cast(v, dt)
    if past_k is not None:
        k = cx.emit("concat", [cx.cast(past_k, dt), k], {"axis": 2})
        v = cx.emit("concat", [cx.cast(past_v, dt), v], {"axis": 2})
    present_k, present_v = k, v
    b, hq, s, d = q.shape
    hkv, kv_len = k.shape[1], k.shape[2]
    if hq != hkv:
        if hq % hkv:
            return None
        r = hq // hkv

        def repeat(t: Value) -> Value:
            t5 = _reshape_to(cx, t, [b, hkv, 1, kv_len, t.shape[3]])
            t5 = cx.emit("expand", [t5], {"shape": [b, hkv, r, kv_len, t.shape[3]]})
            return cx.emit("reshape", [t5], {"shape": [b, hq, kv_len, t.shape[3]]})
        k, v = repeat(k), repeat(v)
    scale = attrs.get("scale")
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(d)
    kt = cx.emit("permute", [k], {"perm": [0, 1, 3, 2]})
    scores = cx.emit("matmul", [cx.emit("mul", [q, cx.const(scale, dt)]), kt])
    qk_raw = scores
    softcap = float(attrs.get("softcap", 0.0) or 0.0)
    if softcap > 0:
        scores = cx.emit("mul", [cx.emit("tanh", [cx.emit("mul", [scores, cx.const(1.0 / softcap, dt)])]),
                                 cx.const(softcap, dt)])
    capped = scores
    # the additive bias [.., S, L]: the mask (bool -> 0 / masked), then causal and padding terms
    bias: Value | None = None
    if mask is not None:
        if mask.shape[-1] < kv_len:  # a mask shorter than the keys is padded with "masked"
            full = [(0, 0)] * (mask.type.rank - 1) + [(0, kv_len - mask.shape[-1])]
            mask = cx.emit("pad", [mask], {"pads": full, "value": 0.0 if mask.dtype == DType.bool else _MASKED})
        if mask.dtype == DType.bool:
            bias = cx.emit("where", [mask, cx.const(0, dt), cx.const(_MASKED, dt)])
        else:
            bias = cx.emit("maximum", [cx.cast(mask, dt), cx.const(_MASKED, dt)])  # -inf -> the finite floor
    i_idx = np.arange(s, dtype=np.int64).reshape(s, 1)
    j_idx = np.arange(kv_len, dtype=np.int64).reshape(1, kv_len)
    if attrs.get("is_causal", 0):
        if past_k is None and nonpad is not None:
            # per-batch offset nonpad[b] - S: allowed iff j - i <= offset
            off = cx.emit("sub", [_reshape_to(cx, cx.cast(nonpad, DType.int64), [b, 1, 1, 1]), cx.const(s, DType.int64)])
            allowed = cx.emit("le", [cx.const((j_idx - i_idx).reshape(1, 1, s, kv_len), DType.int64), off])
            causal = cx.emit("where", [allowed, cx.const(0, dt), cx.const(_MASKED, dt)])
        else:
            offset = past_k.shape[2] if past_k is not None else 0
            causal = cx.const(np.where(j_idx <= i_idx + offset, 0.0, _MASKED).astype(np.float32), dt)
        bias = causal if bias is None else cx.emit("add", [bias, causal])
    left, right = int(attrs.get("left_window_size", -1)), int(attrs.get("right_window_size", -1))
    if left >= 0 or right >= 0:
        # a sliding window around the query's absolute position p = offset + i: p - left <= j <= p + right
        def window_allowed(diff: np.ndarray) -> np.ndarray:
            ok = np.ones(diff.shape, bool)
            if left >= 0:
                ok &= diff <= left
            if right >= 0:
                ok &= -diff <= right
            return ok
        if past_k is None and nonpad is not None:
            off = cx.emit("sub", [_reshape_to(cx, cx.cast(nonpad, DType.int64), [b, 1, 1, 1]), cx.const(s, DType.int64)])
            diff = cx.emit("add", [cx.const((i_idx - j_idx).reshape(1, 1, s, kv_len), DType.int64), off])
            ok = None
            if left >= 0:
                ok = cx.emit("le", [diff, cx.const(left, DType.int64)])
            if right >= 0:
                r_ok = cx.emit("ge", [diff, cx.const(-right, DType.int64)])
                ok = r_ok if ok is None else cx.emit("and", [ok, r_ok])
            win = cx.emit("where", [ok, cx.const(0, dt), cx.const(_MASKED, dt)])
        else:
            offset = past_k.shape[2] if past_k is not None else 0
            win = cx.const(np.where(window_allowed(i_idx + offset - j_idx), 0.0, _MASKED).astype(np.float32), dt)
        bias = win if bias is None else cx.emit("add", [bias, win])
    if nonpad is not None:
        keep = cx.emit("lt", [cx.const(np.arange(kv_len, dtype=np.int64).reshape(1, 1, 1, kv_len), DType.int64),
                              _reshape_to(cx, cx.cast(nonpad, DType.int64), [b, 1, 1, 1])])
        pad_bias = cx.emit("where", [keep, cx.const(0, dt), cx.const(_MASKED, dt)])
        bias = pad_bias if bias is None else cx.emit("add", [bias, pad_bias])
    biased = scores if bias is None else cx.emit("add", [scores, bias])
    if bias is not None:
        biased = cx.emit("maximum", [biased, cx.const(_MASKED, dt)])  # sums of floors stay finite
    probs = cx.emit("softmax", [biased], {"axis": 3, "log": False})
    if bias is not None:  # a row with every key masked gives 0, not a uniform average
        row_max = cx.emit("reduce", [bias], {"kind": "max", "axes": [bias.type.rank - 1], "keepdim": True})
        probs = cx.emit("where", [cx.emit("le", [row_max, cx.const(_MASKED / 2, dt)]), cx.const(0, dt), probs])
    y = cx.emit("matmul", [probs, v])
    if rank3:
        y = cx.emit("permute", [y], {"perm": [0, 2, 1, 3]})
        y = cx.emit("reshape", [y], {"shape": [b, s, hq * v.shape[3]]})
    outs = [y, present_k, present_v]
    if len(cx.node.output) > 3 and cx.node.output[3]:
        mode = int(attrs.get("qk_matmul_output_mode", 0))
        if mode == 0:
            qk = qk_raw
        elif mode == 1:
            qk = capped
        elif mode == 2:
            qk = biased if bias is None else cx.emit(
                "where", [cx.emit("le", [biased, cx.const(_MASKED / 2, dt)]), cx.const(-np.inf, dt), biased])
        else:
            qk = probs
        outs.append(qk)
    return tuple(outs)


# -- recurrent layers unrolled over the static sequence length ------------------------------------
_RNN_ACTS = {"sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu"}
_RNN_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
_RNN_DEFAULT_ACTS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}


def _rnn_rows(cx: Cx, t: Value, start: int, size: int) -> Value:
    """Columns [start, start + size) of a [B, G*H] gate block (or of a [G*H] bias)."""
    return cx.emit("slice", [t], {"axis": t.type.rank - 1, "start": start, "end": start + size, "step": 1})


def _rnn_direction(cx: Cx, kind: str, xw: list[Value], r_t: Value, rb: Value | None, p: Value | None,
                   h: Value, c: Value | None, acts: list[str], hs: int, linear_before_reset: bool,
                   clip: float | None, lens: Value | None = None) -> tuple[list[Value], Value, Value | None]:
    """One direction's steps: xw[t] = x_t W^T + Wb ([B, G*H]); returns every h_t, the last h and c.
    With run-time lengths lens [B, 1] (forward only), a batch entry past its length keeps its
    state and outputs 0."""
    def act(i: int, v: Value) -> Value:
        return cx.emit(_RNN_ACTS[acts[i].lower()], [v])

    def clipped(v: Value) -> Value:
        return v if clip is None else cx.emit("clamp", [v], {"min": -clip, "max": clip})

    hs_out = []
    for step_i, x_t in enumerate(xw):
        h_prev, c_prev = h, c
        hr = cx.emit("matmul", [h, r_t])
        if rb is not None:
            hr = cx.emit("add", [hr, rb])
        if kind == "RNN":
            h = act(0, clipped(cx.emit("add", [x_t, hr])))
        elif kind == "GRU":
            z = act(0, clipped(cx.emit("add", [_rnn_rows(cx, x_t, 0, hs), _rnn_rows(cx, hr, 0, hs)])))
            r = act(0, clipped(cx.emit("add", [_rnn_rows(cx, x_t, hs, hs), _rnn_rows(cx, hr, hs, hs)])))
            if linear_before_reset:
                hh = cx.emit("mul", [r, _rnn_rows(cx, hr, 2 * hs, hs)])
            else:
                # (r * h) R_h^T + Rb_h: its own matmul with the candidate rows of R
                hh = cx.emit("matmul", [cx.emit("mul", [r, h]), cx.emit("slice", [r_t], {"axis": 1, "start": 2 * hs,
                                                                                         "end": 3 * hs, "step": 1})])
                if rb is not None:
                    hh = cx.emit("add", [hh, _rnn_rows(cx, rb, 2 * hs, hs)])
            cand = act(1, clipped(cx.emit("add", [_rnn_rows(cx, x_t, 2 * hs, hs), hh])))
            one = cx.const(1, h.dtype)
            h = cx.emit("add", [cx.emit("mul", [cx.emit("sub", [one, z]), cand]), cx.emit("mul", [z, h])])
        else:  # LSTM, gates i, o, f, c
            g = cx.emit("add", [x_t, hr])
            gi, go, gf, gc = (_rnn_rows(cx, g, k * hs, hs) for k in range(4))
            if p is not None:
                gi = cx.emit("add", [gi, cx.emit("mul", [_rnn_rows(cx, p, 0, hs), c])])
                gf = cx.emit("add", [gf, cx.emit("mul", [_rnn_rows(cx, p, 2 * hs, hs), c])])
            i, f = act(0, clipped(gi)), act(0, clipped(gf))
            c = cx.emit("add", [cx.emit("mul", [f, c]), cx.emit("mul", [i, act(1, clipped(gc))])])
            if p is not None:
                go = cx.emit("add", [go, cx.emit("mul", [_rnn_rows(cx, p, hs, hs), c])])
            h = cx.emit("mul", [act(0, clipped(go)), act(2, c)])
        if lens is not None:
            live = cx.emit("gt", [lens, cx.const(step_i, DType.int64)])  # [B, 1]
            hs_out.append(cx.emit("where", [live, h, cx.const(0, h.dtype)]))
            h = cx.emit("where", [live, h, h_prev])
            if c is not None:
                c = cx.emit("where", [live, c, c_prev])
            continue
        hs_out.append(h)
    return hs_out, h, c


def _rnn(cx: Cx, ins: Ins, attrs: dict) -> tuple | None:
    """ONNX RNN / GRU / LSTM unrolled: x W^T for all steps in one matmul, then per step a
    matmul with R^T and the gate arithmetic; forward, reverse and bidirectional."""
    kind = cx.node.op_type
    x, w, r = ins[:3]
    get = lambda i: ins[i] if len(ins) > i else None  # noqa: E731
    bias, seq_lens, h0 = get(3), get(4), get(5)
    c0, peep = (get(6), get(7)) if kind == "LSTM" else (None, None)
    if not x.dtype.is_float or x.type.rank != 3 or attrs.get("input_forget", 0):
        return None
    direction = attrs.get("direction", "forward")
    nd = 2 if direction == "bidirectional" else 1
    hs = int(attrs["hidden_size"])
    gates = _RNN_GATES[kind]
    nacts = len(_RNN_DEFAULT_ACTS[kind])
    acts = list(attrs.get("activations", _RNN_DEFAULT_ACTS[kind] * nd))
    if any(a.lower() not in _RNN_ACTS for a in acts) or len(acts) != nacts * nd:
        return None
    layout = int(attrs.get("layout", 0))
    if layout:
        x = cx.emit("permute", [x], {"perm": [1, 0, 2]})
    seq, batch, isz = x.shape
    run_lens = None
    if seq_lens is not None:
        lens = cx.ints(seq_lens)
        if lens is None or any(n != seq for n in lens):
            if direction != "forward":
                return None  # ragged sequences reversed: each within its own length
            run_lens = _reshape_to(cx, cx.cast(seq_lens, DType.int64), [batch, 1])
    clip = float(attrs["clip"]) if "clip" in attrs else None
    dt = x.dtype
    xs = _reshape_to(cx, x, [seq * batch, isz])
    y_dirs, h_last, c_last = [], [], []
    for d in range(nd):
        def pick(v: Value | None) -> Value | None:
            if v is None:
                return None
            one = _take(cx, cx.cast(v, dt), 0, np.array([d]))
            return _reshape_to(cx, one, list(v.shape[1:]))

        w_d, r_d = pick(w), pick(r)
        w_t = _transpose(cx, [w_d], {"perm": [1, 0]})
        r_t = _transpose(cx, [r_d], {"perm": [1, 0]})
        if not w_t.is_const:
            w_t = cx.emit("copy", [w_t])
        if not r_t.is_const:
            r_t = cx.emit("copy", [r_t])
        xw = cx.emit("matmul", [xs, w_t])  # [S*B, G*H]
        rb = None
        if bias is not None:
            b_d = pick(bias)
            xw = cx.emit("add", [xw, _take(cx, b_d, 0, np.arange(gates * hs))])
            rb = _take(cx, b_d, 0, np.arange(gates * hs, 2 * gates * hs))
        steps = [cx.emit("slice", [xw], {"axis": 0, "start": t * batch, "end": (t + 1) * batch, "step": 1})
                 for t in range(seq)]
        reverse = direction == "reverse" or d == 1
        if reverse:
            steps = steps[::-1]
        h = pick(h0) if h0 is not None else cx.const(np.zeros((batch, hs), np.float32), dt)
        c = None
        if kind == "LSTM":
            c = pick(c0) if c0 is not None else cx.const(np.zeros((batch, hs), np.float32), dt)
        p = pick(peep) if peep is not None else None
        outs, h, c = _rnn_direction(cx, kind, steps, r_t, rb, p, h, c, acts[d * nacts:(d + 1) * nacts], hs,
                                    bool(attrs.get("linear_before_reset", 0)), clip, run_lens)
        if reverse:
            outs = outs[::-1]
        y_dirs.append(cx.emit("concat", [_reshape_to(cx, o, [1, 1, batch, hs]) for o in outs], {"axis": 0})
                      if seq > 1 else _reshape_to(cx, outs[0], [1, 1, batch, hs]))
        h_last.append(_reshape_to(cx, h, [1, batch, hs]))
        if c is not None:
            c_last.append(_reshape_to(cx, c, [1, batch, hs]))
    cat = lambda vs, ax: vs[0] if len(vs) == 1 else cx.emit("concat", vs, {"axis": ax})  # noqa: E731
    y, y_h = cat(y_dirs, 1), cat(h_last, 0)
    y_c = cat(c_last, 0) if c_last else None
    if layout:
        y = cx.emit("permute", [y], {"perm": [2, 0, 1, 3]})
        y_h = cx.emit("permute", [y_h], {"perm": [1, 0, 2]})
        if y_c is not None:
            y_c = cx.emit("permute", [y_c], {"perm": [1, 0, 2]})
    return (y, y_h) if y_c is None else (y, y_h, y_c)


onnx_op("RNN", "GRU", "LSTM")(_rnn)


def _batch_norm_runtime(cx: Cx, ins: Ins, attrs: dict) -> Value | tuple | None:
    """BatchNormalization with parameters known only at run time, or in training mode (batch
    statistics; outputs Y and the updated running mean and variance)."""
    x, scale, b, mean, var = ins[:5]
    if not x.dtype.is_float or x.type.rank < 2:
        return None
    eps = float(attrs.get("epsilon", 1e-5))
    per_channel = [x.shape[1]] + [1] * (x.type.rank - 2)
    ch = lambda v: _reshape_to(cx, cx.cast(v, x.dtype), per_channel)  # noqa: E731
    training = bool(attrs.get("training_mode", 0))
    if training:
        axes = [0] + list(range(2, x.type.rank))
        bmean = cx.emit("reduce", [x], {"kind": "mean", "axes": axes, "keepdim": True})
        d = cx.emit("sub", [x, bmean])
        bvar = cx.emit("reduce", [cx.emit("mul", [d, d])], {"kind": "mean", "axes": axes, "keepdim": True})
        m, v = bmean, bvar
    else:
        m, v = ch(mean), ch(var)
        d = cx.emit("sub", [x, m])
    inv = cx.emit("rsqrt", [cx.emit("add", [v, cx.const(eps, x.dtype)])])
    y = cx.emit("add", [cx.emit("mul", [d, cx.emit("mul", [inv, ch(scale)])]), ch(b)])
    if not training:
        return y
    mom = float(attrs.get("momentum", 0.9))

    def running(old: Value, batch: Value) -> Value:
        new = cx.emit("add", [cx.emit("mul", [cx.cast(old, x.dtype), cx.const(mom, x.dtype)]),
                              cx.emit("mul", [_reshape_to(cx, batch, [x.shape[1]]), cx.const(1 - mom, x.dtype)])])
        return new
    return y, running(mean, bmean), running(var, bvar)


@onnx_op("LRN")
def _lrn(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    """Local response normalization across channels: the window sum of squares as `size`
    shifted slices of the channel-padded square."""
    x = ins[0]
    if not x.dtype.is_float or x.type.rank < 3:
        return None
    size = int(attrs["size"])
    alpha, beta, bias = float(attrs.get("alpha", 1e-4)), float(attrs.get("beta", 0.75)), float(attrs.get("bias", 1.0))
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = cx.emit("mul", [x, x])
    full = [(0, 0)] * x.type.rank
    full[1] = (lo, hi)
    padded = cx.emit("pad", [sq], {"pads": full, "value": 0.0}) if lo or hi else sq
    c = x.shape[1]
    acc = None
    for k in range(size):
        part = cx.emit("slice", [padded], {"axis": 1, "start": k, "end": k + c, "step": 1})
        acc = part if acc is None else cx.emit("add", [acc, part])
    den = cx.emit("add", [cx.emit("mul", [acc, cx.const(alpha / size, x.dtype)]), cx.const(bias, x.dtype)])
    return cx.emit("mul", [x, cx.pow_by_constant(den, -beta)])


@onnx_op("SwiGLU")
def _swiglu(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    a, b = ins[0], ins[1]
    if not a.dtype.is_float or a.shape != b.shape:
        return None
    alpha = float(attrs.get("alpha", 1.0))
    z = a if alpha == 1 else cx.emit("mul", [a, cx.const(alpha, a.dtype)])
    return cx.emit("mul", [cx.emit("mul", [a, cx.emit("sigmoid", [z])]), b])


def _einsum_terms(eq: str, ranks: list[int]) -> tuple[list[str], str] | None:
    """'ij,jk->ik' -> (['ij', 'jk'], 'ik'), with '...' expanded to upper-case letters."""
    eq = eq.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        return None
    ell = 0
    out_terms = []
    for t, r in zip(terms, ranks):
        if "..." in t:
            n = r - (len(t) - 3)
            ell = max(ell, n)
            t = t.replace("...", "".join(chr(ord("A") + 26 - n + i) for i in range(n)))
        if len(t) != r:
            return None
        out_terms.append(t)
    ell_letters = "".join(chr(ord("A") + 26 - ell + i) for i in range(ell))
    if arrow:
        rhs = rhs.replace("...", ell_letters)
    else:
        letters = "".join(out_terms)
        rhs = ell_letters + "".join(sorted(c for c in set(letters) if c.islower() and letters.count(c) == 1))
    return out_terms, rhs


@onnx_op("Einsum")
def _einsum(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    """One or two operands without repeated indices inside an operand: sums over indices used
    once, then one batched matmul (batch = indices of both operands and the output, contracted =
    both, not the output), permuted to the output order."""
    xs = [v for v in ins if v is not None]
    if not all(v.dtype.is_float for v in xs) or len(xs) not in (1, 2):
        return None
    parsed = _einsum_terms(str(attrs["equation"]), [v.type.rank for v in xs])
    if parsed is None:
        return None
    terms, out = parsed
    if any(len(set(t)) != len(t) for t in terms + [out]):
        return None  # diagonals / traces
    dims: dict[str, int] = {}
    for t, v in zip(terms, xs):
        for c, n in zip(t, v.shape):
            if dims.get(c, n) != n and n != 1 and dims[c] != 1:
                return None
            dims[c] = max(dims.get(c, 1), n)

    def sum_out(v: Value, t: str, keep: set[str]) -> tuple[Value, str]:
        axes = [i for i, c in enumerate(t) if c not in keep]
        if not axes:
            return v, t
        v = cx.emit("reduce", [v], {"kind": "sum", "axes": axes, "keepdim": False})
        return v, "".join(c for c in t if c in keep)

    def arrange(v: Value, t: str, order: str) -> Value:
        perm = [t.index(c) for c in order]
        return _transpose(cx, [v], {"perm": perm}) if perm != list(range(len(perm))) else v

    if len(xs) == 1:
        v, t = sum_out(xs[0], terms[0], set(out))
        return arrange(v, t, out)
    (a, b), (ta, tb) = xs, terms
    a, ta = sum_out(a, ta, set(tb) | set(out))
    b, tb = sum_out(b, tb, set(ta) | set(out))
    batch = [c for c in out if c in ta and c in tb]
    contract = [c for c in ta if c in tb and c not in out]
    left = [c for c in ta if c not in tb]
    right = [c for c in tb if c not in ta]
    if any(c not in out for c in left + right):
        return None
    sz = lambda cs: int(np.prod([dims[c] for c in cs], dtype=np.int64))  # noqa: E731

    def as3(v: Value, t: str, first: list[str], second: list[str]) -> Value:
        v = arrange(v, t, "".join(batch + first + second))
        want = [dims[c] for c in batch + first + second]
        if list(v.shape) != want:
            v = cx.emit("expand", [v], {"shape": want})
        if not v.is_const and (first or second):
            v = cx.emit("copy", [v]) if v.producer is not None and v.producer.op in ("permute", "expand") else v
        return _reshape_to(cx, v, [sz(batch), sz(first), sz(second)])

    a3 = as3(a, ta, left, contract)
    b3 = as3(b, tb, contract, right)
    y = cx.emit("matmul", [a3, b3])
    y = _reshape_to(cx, y, [dims[c] for c in batch + left + right])
    return arrange(y, "".join(batch + left + right), out)


# -- scatters with run-time indices, as one-hot matmuls (small tensors) --------------------------
_SCATTER_MAX_ONE_HOT = 1 << 20  # positions x rows of the one-hot matrix


def _scatter_rows(cx: Cx, data: Value, rows_at: Value, upd: Value, reduction: str) -> Value | None:
    """data [R, C] with row rows_at[p] combined with upd[p] ([P] int64, [P, C]): a one-hot
    [P, R] matrix, a matmul for the placed (summed) rows, a where for which rows are hit."""
    r, c = data.shape
    p = rows_at.shape[0]
    if p * r > _SCATTER_MAX_ONE_HOT or (reduction == "mul" and p > 64):
        return None
    dt = data.dtype
    onehot = cx.emit("eq", [_reshape_to(cx, rows_at, [p, 1]), cx.const(np.arange(r, dtype=np.int64).reshape(1, r), DType.int64)])
    oh = cx.cast(onehot, dt)
    hit = cx.emit("gt", [_reshape_to(cx, cx.emit("reduce", [oh], {"kind": "max", "axes": [0], "keepdim": False}), [r, 1]),
                         cx.const(0, dt)])
    if reduction in ("none", "add"):
        placed = cx.emit("matmul", [cx.emit("copy", [cx.emit("permute", [oh], {"perm": [1, 0]})]), upd])
        return cx.emit("where", [hit, placed, data]) if reduction == "none" else cx.emit("add", [data, placed])
    if reduction in ("max", "min"):
        fill = cx.const(-np.inf if reduction == "max" else np.inf, dt)
        cand = cx.emit("where", [_reshape_to(cx, onehot, [p, r, 1]), _reshape_to(cx, upd, [p, 1, c]), fill])
        best = cx.emit("reduce", [cand], {"kind": reduction, "axes": [0], "keepdim": False})
        comb = cx.emit("maximum" if reduction == "max" else "minimum", [data, best])
        return cx.emit("where", [hit, comb, data])
    if reduction == "mul":
        acc = data
        for i in range(p):
            row_hit = cx.emit("slice", [onehot], {"axis": 0, "start": i, "end": i + 1, "step": 1})
            factor = cx.emit("where", [_reshape_to(cx, row_hit, [r, 1]),
                                       cx.emit("slice", [upd], {"axis": 0, "start": i, "end": i + 1, "step": 1}),
                                       cx.const(1, dt)])
            acc = cx.emit("mul", [acc, factor])
        return acc
    return None


@onnx_op("ScatterElements")
def _scatter_elements(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x, idx, upd = ins
    if not x.dtype.is_float or x.type.rank == 0 or idx.type.rank != x.type.rank or idx.type.numel == 0:
        return None
    axis = _axis(int(attrs.get("axis", 0)), x.type.rank)
    base, stride = _flat_index_base(x.shape, idx.shape, axis)
    i = _wrap_negative(cx, idx, x.shape[axis])
    flat = cx.emit("add", [cx.emit("mul", [i, cx.const(stride, DType.int64)]), cx.const(base, DType.int64)]) \
        if not i.is_const else cx.const(np.asarray(i.data) * stride + base, DType.int64)
    n = idx.type.numel
    y = _scatter_rows(cx, _reshape_to(cx, x, [x.type.numel, 1]), _reshape_to(cx, flat, [n]),
                      _reshape_to(cx, cx.cast(upd, x.dtype), [n, 1]), attrs.get("reduction", "none"))
    return None if y is None else _reshape_to(cx, y, list(x.shape))


@onnx_op("ScatterND")
def _scatter_nd(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x, idx, upd = ins
    m = idx.shape[-1] if idx.type.rank else 0
    if not x.dtype.is_float or idx.type.rank < 1 or m == 0 or m > x.type.rank:
        return None
    inner = x.shape[:m]
    strides = [int(np.prod(inner[j + 1:], dtype=np.int64)) for j in range(m)]
    rows = int(np.prod(inner, dtype=np.int64))
    rest = int(np.prod(x.shape[m:], dtype=np.int64))
    p = int(np.prod(idx.shape[:-1], dtype=np.int64))
    i64 = cx.cast(idx, DType.int64)
    acc = None
    for j in range(m):
        col = _reshape_to(cx, _wrap_negative(cx, _take(cx, i64, idx.type.rank - 1, np.array([j])), inner[j]), [p])
        term = cx.emit("mul", [col, cx.const(strides[j], DType.int64)]) if strides[j] != 1 else col
        acc = term if acc is None else cx.emit("add", [acc, term])
    y = _scatter_rows(cx, _reshape_to(cx, x, [rows, rest]), acc, _reshape_to(cx, cx.cast(upd, x.dtype), [p, rest]),
                      attrs.get("reduction", "none"))
    return None if y is None else _reshape_to(cx, y, list(x.shape))


@onnx_op("ReverseSequence")
def _reverse_sequence(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    """Each batch entry's first lens[b] steps reversed: a GatherElements along the time axis with
    source index lens[b] - 1 - t for t < lens[b], t after."""
    x, lens = ins
    ta, ba = int(attrs.get("time_axis", 0)), int(attrs.get("batch_axis", 1))
    rank = x.type.rank
    if rank < 2 or {ta, ba} == {ta} or x.type.numel == 0:
        return None
    t_shape = [1] * rank
    t_shape[ta] = x.shape[ta]
    b_shape = [1] * rank
    b_shape[ba] = x.shape[ba]
    t = cx.const(np.arange(x.shape[ta], dtype=np.int64).reshape(t_shape), DType.int64)
    n = _reshape_to(cx, cx.cast(lens, DType.int64), b_shape)
    src = cx.emit("where", [cx.emit("lt", [t, n]), cx.emit("sub", [cx.emit("sub", [n, cx.const(1, DType.int64)]), t]), t])
    src = cx.emit("expand", [src], {"shape": list(x.shape)})
    return _gather_elements(cx, [x, src], {"axis": ta})


@onnx_op("TensorScatter")
def _tensor_scatter(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    """A KV-cache write: update's steps placed at write_indices[b] (+ step, modulo the cache length
    in circular mode) along `axis`, through the one-hot scatter."""
    cache, upd = ins[0], ins[1]
    wi = ins[2] if len(ins) > 2 else None
    if not cache.dtype.is_float or cache.type.rank < 2:
        return None
    axis = _axis(int(attrs.get("axis", -2)), cache.type.rank)
    if axis == 0:
        return None
    base, stride = _flat_index_base(cache.shape, upd.shape, axis)
    steps = _iota(upd.shape[axis], axis, cache.type.rank)
    pos = cx.const(steps, DType.int64)
    if wi is not None:
        start = _reshape_to(cx, cx.cast(wi, DType.int64), [cache.shape[0]] + [1] * (cache.type.rank - 1))
        pos = cx.emit("add", [pos, start])
    if attrs.get("mode", "linear") == "circular":
        pos = cx.emit("fmod", [pos, cx.const(cache.shape[axis], DType.int64)])  # indices are >= 0
    flat = cx.emit("add", [cx.emit("mul", [pos, cx.const(stride, DType.int64)]), cx.const(base, DType.int64)])
    n = upd.type.numel
    y = _scatter_rows(cx, _reshape_to(cx, cache, [cache.type.numel, 1]), _reshape_to(cx, flat, [n]),
                      _reshape_to(cx, cx.cast(upd, cache.dtype), [n, 1]), "none")
    return None if y is None else _reshape_to(cx, y, list(cache.shape))


@onnx_op("CausalConvWithState")
def _causal_conv_with_state(cx: Cx, ins: Ins, attrs: dict) -> tuple | None:
    """A depthwise causal 1-D convolution over [past_state | input]: k shifted slices times the
    per-channel taps, bias, optional SiLU; the last k - 1 steps are the new state."""
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    past = ins[3] if len(ins) > 3 else None
    act = attrs.get("activation", "none")
    if not x.dtype.is_float or x.type.rank != 3 or w.type.rank != 3 or w.shape[1] != 1 or act not in ("none", "silu", "swish"):
        return None
    b, c, length = x.shape
    k = w.shape[2]
    if k > 1:
        state = past if past is not None else cx.const(np.zeros((b, c, k - 1), np.float32), x.dtype)
        padded = cx.emit("concat", [cx.cast(state, x.dtype), x], {"axis": 2})
    else:
        padded = x
    y = None
    for j in range(k):
        tap = _reshape_to(cx, _take(cx, cx.cast(w, x.dtype), 2, np.array([j])), [1, c, 1])
        term = cx.emit("mul", [cx.emit("slice", [padded], {"axis": 2, "start": j, "end": j + length, "step": 1}), tap])
        y = term if y is None else cx.emit("add", [y, term])
    if bias is not None:
        y = cx.emit("add", [y, _reshape_to(cx, cx.cast(bias, x.dtype), [1, c, 1])])
    if act != "none":
        y = cx.emit("silu", [y])
    total = padded.shape[2]
    present = cx.emit("slice", [padded], {"axis": 2, "start": total - (k - 1), "end": total, "step": 1}) if k > 1 \
        else cx.const(np.zeros((b, c, 0), np.float32), x.dtype)
    return y, present


@onnx_op("LinearAttention")
def _linear_attention(cx: Cx, ins: Ins, attrs: dict) -> tuple | None:
    """Recurrent linear attention unrolled over the static sequence: per step the state
    [B, Hkv, dk, dv] decays (gated), takes the delta-rule correction (delta), adds k^T v, and the
    query reads it (GQA: the state repeated over the query heads of its group)."""
    q, k, v = ins[:3]
    get = lambda i: ins[i] if len(ins) > i else None  # noqa: E731
    past, decay, beta = get(3), get(4), get(5)
    rule = attrs.get("update_rule", "gated_delta")
    hq, hkv = int(attrs.get("q_num_heads", 0)), int(attrs.get("kv_num_heads", 0))
    if not q.dtype.is_float or q.type.rank != 3 or not hq or not hkv or hq % hkv:
        return None
    gating, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
    if (gating and decay is None) or (delta and beta is None):
        return None
    dt = q.dtype
    b, t, _ = q.shape
    dk, dv = q.shape[2] // hq, v.shape[2] // hkv
    group = hq // hkv

    def heads(x: Value, n: int) -> Value:  # [B, T, n*D] -> [B, n, T, D]
        return cx.emit("permute", [_reshape_to(cx, cx.cast(x, dt), [b, t, n, x.shape[2] // n])], {"perm": [0, 2, 1, 3]})

    q4, k4, v4 = heads(q, hq), heads(k, hkv), heads(v, hkv)
    decay4 = heads(decay, hkv) if gating else None  # [B, Hkv, T, 1 or dk]
    beta4 = heads(beta, beta.shape[2]) if delta else None  # [B, Hb, T, 1]
    scale = float(attrs.get("scale", 0.0) or 0.0) or 1.0 / math.sqrt(dk)
    state = cx.cast(past, dt) if past is not None else cx.const(np.zeros((b, hkv, dk, dv), np.float32), dt)
    step = lambda x, i: cx.emit("slice", [x], {"axis": 2, "start": i, "end": i + 1, "step": 1})  # noqa: E731
    outs = []
    for i in range(t):
        k_t, v_t = step(k4, i), step(v4, i)
        if gating:
            g = step(decay4, i)
            state = cx.emit("mul", [state, _reshape_to(cx, cx.emit("exp", [g]), [b, hkv, g.shape[3], 1])])
        if delta:
            retrieved = cx.emit("matmul", [k_t, state])  # [B, Hkv, 1, dv]
            v_t = cx.emit("mul", [step(beta4, i), cx.emit("sub", [v_t, retrieved])])
        state = cx.emit("add", [state, cx.emit("mul", [_reshape_to(cx, k_t, [b, hkv, dk, 1]), v_t])])
        read = state
        if group > 1:
            read = cx.emit("expand", [_reshape_to(cx, state, [b, hkv, 1, dk, dv])], {"shape": [b, hkv, group, dk, dv]})
            read = cx.emit("reshape", [read], {"shape": [b, hq, dk, dv]})
        outs.append(cx.emit("matmul", [step(q4, i), read]))
    y = outs[0] if t == 1 else cx.emit("concat", outs, {"axis": 2})  # [B, Hq, T, dv]
    y = cx.emit("mul", [y, cx.const(scale, dt)])
    y = cx.emit("reshape", [cx.emit("permute", [y], {"perm": [0, 2, 1, 3]})], {"shape": [b, t, hq * dv]})
    return y, state


@onnx_op("Col2Im")
def _col2im(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x = ins[0]
    image, block = cx.ints(ins[1]), cx.ints(ins[2])
    if image is None or block is None or not x.dtype.is_float:
        return None
    nd = len(image)
    p = [int(v) for v in attrs.get("pads", [0] * (2 * nd))]
    return spatial.col2im(cx, x, image, block, [int(v) for v in attrs.get("dilations", [1] * nd)],
                          [(p[i], p[i + nd]) for i in range(nd)], [int(v) for v in attrs.get("strides", [1] * nd)])


@onnx_op("Swish")
def _swish(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    """x * sigmoid(alpha * x) (opset 24), from existing IR ops: SiLU when alpha is 1."""
    x = ins[0]
    if not x.dtype.is_float:
        return None
    alpha = float(attrs.get("alpha", 1.0))
    if alpha == 1:
        return cx.emit("silu", [x])
    return cx.emit("mul", [x, cx.emit("sigmoid", [cx.emit("mul", [x, cx.const(alpha, x.dtype)])])])
