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
    return cx.emit("fmod", [a, b]) if attrs.get("fmod", 0) == 1 else None


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
    if len(ins) > 2 and ins[2] is not None and not (ins[2].is_const and not bool(np.asarray(ins[2].data))):
        return None  # Dropout in training mode
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
    bounds = []
    for v in (ins[1] if len(ins) > 1 else None, ins[2] if len(ins) > 2 else None):
        if v is not None and not v.is_const:
            return None  # bounds known only at run time
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
def _cast(cx: Cx, ins: Ins, attrs: dict) -> Value:
    return cx.cast(ins[0], _elem_dtype(int(attrs["to"])))


@onnx_op("CastLike")
def _cast_like(cx: Cx, ins: Ins, attrs: dict) -> Value:
    return cx.cast(ins[0], ins[1].dtype)


# -- linear algebra ---------------------------------------------------------------------------
@onnx_op("MatMul")
def _matmul(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    a, b = ins
    if not a.dtype.is_float:
        return None
    # 1-D operands: numpy.matmul semantics, a vector becomes a one-row (or one-column) matrix
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
    out = []
    for size, k, s, d in zip(spatial, kernel, stride, dilation):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
        out.append((lo, total - lo))
    return out


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
        return None
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
    return cx.emit("layer_norm", ins_, {"axis_count": n, "eps": float(attrs.get("epsilon", 1e-5)),
                                         "has_weight": w is not None, "has_bias": b is not None})


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
        if not 1 <= nd <= 3 or (with_indices and attrs.get("storage_order", 0)):
            return None  # column-major indices: host
        k = [int(v) for v in attrs["kernel_shape"]]
        s = [int(v) for v in attrs.get("strides", [1] * nd)]
        d = [int(v) for v in attrs.get("dilations", [1] * nd)]
        pads = _conv_pads(attrs, list(x.shape[2:]), k, s, d)
        if with_indices:
            return spatial.max_pool_with_indices(cx, x, k, s, pads, d, bool(attrs.get("ceil_mode", 0)),
                                                 whole_tensor=True)
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
    if starts is None or ends is None or axes is None or steps is None or any(s < 1 for s in steps):
        return None  # run-time bounds or reversed slices: host
    y = x
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = _axis(a, x.type.rank)
        n = x.shape[a]
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
    if pads is None or axes is None or (value_v is not None and not value_v.is_const) or any(p < 0 for p in pads):
        return None
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
    o = np.arange(out_n, dtype=np.float64)
    if mode == "half_pixel":
        return (o + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (o + 0.5) / scale - 0.5 if out_n > 1 else np.zeros(out_n)
    if mode == "align_corners":
        return o * (in_n - 1) / (out_n - 1) if out_n > 1 else np.zeros(out_n)
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
            or attrs.get("antialias", 0) or attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        return None  # antialiasing: host
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
        if sizes[a] == x.shape[a] and scales[a] == 1 and (roi is None or roi[a] == (0.0, 1.0)):
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
                               bool(attrs.get("align_corners", 0)))


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
