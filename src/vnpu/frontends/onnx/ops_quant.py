"""ONNX lowerings: QuantizeLinear / DequantizeLinear / DynamicQuantizeLinear / QLinearMatMul / QLinearConv and Casts to 2/4-bit integers.

Entries register with `onnx_op` like those in onnx_ops.py; kept in their own module so each family
is one file.

Integer tensors are stored wider than their ONNX type (uint8 / int16 / uint16 in int32, the 4- and
2-bit types one value per byte in int8: importer._elem_dtype), so the range a result saturates to
comes from the ONNX element type of the tensor (`onnx_elem_type`), not from the storage dtype.

Quantization runs on the vector unit in fp32: x / scale (a true division, as the spec computes it),
the IR's `round` (half to even), + zero point, `clamp` to the type's range, then a cast to the
storage type, which is exact because the value is already an in-range integer.

QLinearMatMul / QLinearConv / MatMulInteger / ConvInteger run on the matrix engine with int8
operands and an exact int32 accumulator: uint8 tensors (stored in int32) are shifted by -128 into
int8, the shift folded into their zero point, and the zero points are handled algebraically,
(a - za) @ (b - zb) = a @ b - za * colsum(b) - zb * rowsum(a) + K * za * zb, with the terms of
constants folded at import and the run-time sums as reduces. Convolutions pad x with its zero
point (the pad kernel's fill value) so every window has all its taps, which makes the za term
one constant per output channel. Requantization then follows onnxruntime: the int32 sum as fp32,
times (scale_a * scale_b / scale_y) in fp32, rounded half to even, + zero point, saturated.

The older exact fp32 path stays for the convolutions the int8 kernels cannot take (depthwise:
the int8 depthwise kernel multiplies in int8 and wraps; 3-D): the zero points are subtracted in
fp32 (exact: |q - zp| <= 255) and the contraction is split into chunks whose worst-case sum is
below 2^24, each exact in fp32, added in int32.
"""
from __future__ import annotations

import math
import weakref
from typing import Any

import numpy as np

from vnpu.dtypes import DType
from vnpu.frontends import spatial
from vnpu.frontends.onnx.importer import OnnxContext as Cx, _elem_dtype, onnx_op
from vnpu.frontends.onnx.onnx_ops import _axis, _conv_pads
from vnpu.ir.graph import Value

Ins = list[Value | None]

# ONNX TensorProto element type numbers (onnx.TensorProto), kept here so that importing this module
# does not import onnx
FLOAT, UINT8, INT8, UINT16, INT16, INT32 = 1, 2, 3, 4, 5, 6
UINT4, INT4, UINT2, INT2 = 21, 22, 25, 26

# the integer types QuantizeLinear produces and the range it saturates to
INT_RANGES: dict[int, tuple[int, int]] = {
    UINT8: (0, 255), INT8: (-128, 127), UINT16: (0, 65535), INT16: (-32768, 32767),
    UINT4: (0, 15), INT4: (-8, 7), UINT2: (0, 3), INT2: (-2, 1),
}
NARROW_INTS = {UINT4: 4, INT4: 4, UINT2: 2, INT2: 2}  # type -> bits
EXACT_SUM = float(1 << 24)  # fp32 adds integers exactly while every partial sum stays below this


# -- ONNX element types of the model's tensors --------------------------------------------------
# the import whose types are cached (a weak reference: the cache keeps no model alive), its
# name -> element type table, and whether shape inference has filled it
_types_cache: list[Any] = [lambda: None, {}, False]


def onnx_elem_type(cx: Cx, name: str) -> int | None:
    """The ONNX element type of tensor `name` in the model being imported: as declared (inputs,
    initializers, value_info, outputs), else from ONNX shape inference (run once per import)."""
    model = cx.model
    if model is None or not name:
        return None
    if _types_cache[0]() is not cx:
        g = model.graph
        types = {t.name: int(t.data_type) for t in g.initializer}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                types[vi.name] = int(vi.type.tensor_type.elem_type)
        _types_cache[:] = [weakref.ref(cx), types, False]
    types = _types_cache[1]
    if name not in types and not _types_cache[2]:
        _types_cache[2] = True
        try:
            import onnx

            inferred = onnx.shape_inference.infer_shapes(model)
            for vi in inferred.graph.value_info:
                if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                    types.setdefault(vi.name, int(vi.type.tensor_type.elem_type))
        except Exception:  # noqa: BLE001 - a model shape inference cannot read: types stay unknown
            pass
    return types.get(name)


def _input_type(cx: Cx, i: int) -> int | None:
    return onnx_elem_type(cx, cx.node.input[i]) if i < len(cx.node.input) else None


# -- shared pieces ------------------------------------------------------------------------
def _f32(cx: Cx, v: Value) -> Value:
    return cx.cast(v, DType.fp32)


def _reshape(cx: Cx, v: Value, shape: list[int]) -> Value:
    return spatial.reshape(cx, v, shape)


def _broadcast_param(cx: Cx, p: Value, x: Value, axis: int, block: int) -> Value | None:
    """A scale or zero point shaped to broadcast against x: per tensor (one element), per axis
    (1-D, one per x.shape[axis]) or blocked (x's rank, ceil(D / block) along axis: each entry
    repeated over its block). None when the shapes match none of these."""
    rank = x.type.rank
    if block > 0:
        d = x.shape[axis]
        nb = -(-d // block)
        if p.type.rank != rank or p.shape[axis] != nb or any(p.shape[i] != x.shape[i] for i in range(rank) if i != axis):
            return None
        if p.is_const:
            rep = np.repeat(np.asarray(p.data), block, axis=axis)
            return cx.g.add_const(p.name, np.take(rep, range(d), axis=axis), p.dtype)
        # [.., nb, ..] -> [.., nb, 1, ..] -> expand [.., nb, block, ..] -> [.., nb*block, ..] -> first d
        shape = list(p.shape)
        v = _reshape(cx, p, shape[:axis + 1] + [1] + shape[axis + 1:])
        v = cx.emit("expand", [v], {"shape": shape[:axis + 1] + [block] + shape[axis + 1:]})
        v = _reshape(cx, v, shape[:axis] + [nb * block] + shape[axis + 1:])
        if nb * block != d:
            v = cx.emit("slice", [v], {"axis": axis, "start": 0, "end": d, "step": 1})
        return v
    if p.type.numel == 1 and p.type.rank <= 1:
        return _reshape(cx, p, [])
    if p.type.rank == 1 and rank > 0 and p.shape[0] == x.shape[axis]:
        return _reshape(cx, p, [p.shape[0] if i == axis else 1 for i in range(rank)])
    return None


def _saturate(cx: Cx, y: Value, elem: int) -> Value:
    """An fp32 integer-valued y clamped to the range of ONNX type `elem`, in its storage dtype."""
    lo, hi = INT_RANGES[elem]
    return cx.cast(cx.emit("clamp", [y], {"min": float(lo), "max": float(hi)}), _elem_dtype(elem))


def _quantize(cx: Cx, y: Value, zp: Value | None, elem: int) -> Value:
    """round(y) (half to even) + zp, saturated to `elem`: the last step of every quantizing op."""
    q = cx.emit("round", [y])
    if zp is not None:
        q = cx.emit("add", [q, _f32(cx, zp)])
    return _saturate(cx, q, elem)


# -- QuantizeLinear / DequantizeLinear / DynamicQuantizeLinear ------------------------------------
def _scale_and_zero_point(cx: Cx, x: Value, scale: Value, zp: Value | None,
                          attrs: dict) -> tuple[Value, Value | None] | None:
    """Scale and zero point broadcast against x (per tensor, per `axis`, or per `block_size` block of it)."""
    axis = _axis(int(attrs.get("axis", 1)), x.type.rank)
    block = int(attrs.get("block_size", 0))
    s = _broadcast_param(cx, scale, x, axis, block)
    z = None if zp is None else _broadcast_param(cx, zp, x, axis, block)
    if s is None or (zp is not None and z is None):
        return None
    return s, z


@onnx_op("QuantizeLinear")
def _quantize_linear(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x, scale = ins[0], ins[1]
    zp = ins[2] if len(ins) > 2 else None
    if x.dtype != DType.fp32 or scale.dtype != DType.fp32 or attrs.get("precision", 0) not in (0, FLOAT):
        return None
    elem = _input_type(cx, 2) if zp is not None else int(attrs.get("output_dtype", 0) or UINT8)
    if elem not in INT_RANGES:
        return None  # float8 / float4 outputs
    params = _scale_and_zero_point(cx, x, scale, zp, attrs)
    if params is None:
        return None
    s, z = params
    return _quantize(cx, cx.emit("div", [x, s]), z, elem)


@onnx_op("DequantizeLinear")
def _dequantize_linear(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x, scale = ins[0], ins[1]
    zp = ins[2] if len(ins) > 2 else None
    elem = _input_type(cx, 0)
    if elem not in INT_RANGES and elem != INT32:
        return None  # float8 / float4 inputs
    if scale.dtype != DType.fp32 or int(attrs.get("output_dtype", 0) or FLOAT) != FLOAT:
        return None
    params = _scale_and_zero_point(cx, x, scale, zp, attrs)
    if params is None:
        return None
    s, z = params
    if z is not None and z.is_const and not np.any(z.data):
        z = None
    if elem == INT32:
        # int32 values beyond 2^24 are not exact in fp32: subtract the zero point in int32 first
        d = x if z is None else cx.emit("sub", [x, cx.cast(z, DType.int32)])
        return cx.emit("mul", [_f32(cx, d), s])
    # (x - zp) of 16-bit or narrower integers is exact in fp32
    d = _f32(cx, x) if z is None else cx.emit("sub", [_f32(cx, x), _f32(cx, z)])
    return cx.emit("mul", [d, s])


@onnx_op("DynamicQuantizeLinear")
def _dynamic_quantize_linear(cx: Cx, ins: Ins, attrs: dict) -> tuple[Value, Value, Value] | None:
    """uint8 quantization with the range of x widened to include 0: scale = (max - min) / 255
    (1 when max == min, as onnxruntime), zero point = round(clamp(-min / scale, 0, 255)), as the spec and
    onnxruntime compute them."""
    (x,) = ins
    if x.dtype != DType.fp32 or x.type.numel == 0:
        return None
    every = list(range(x.type.rank))
    zero = cx.const(0.0, DType.fp32)
    if every:
        lo = cx.emit("reduce", [x], {"kind": "min", "axes": every, "keepdim": False})
        hi = cx.emit("reduce", [x], {"kind": "max", "axes": every, "keepdim": False})
    else:
        lo = hi = x
    lo = cx.emit("minimum", [lo, zero])
    hi = cx.emit("maximum", [hi, zero])
    span = cx.emit("sub", [hi, lo])
    # an all-zero x: scale 1 (onnxruntime; the spec's formula divides 0 by 0 for the zero point)
    scale = cx.emit("where", [cx.emit("eq", [span, zero]), cx.const(1.0, DType.fp32),
                              cx.emit("div", [span, cx.const(255.0, DType.fp32)])])
    zp_f = cx.emit("sub", [zero, cx.emit("div", [lo, scale])])
    zp_f = cx.emit("round", [cx.emit("clamp", [zp_f], {"min": 0.0, "max": 255.0})])
    y = _quantize(cx, cx.emit("div", [x, scale]), zp_f, UINT8)
    return y, scale, cx.cast(zp_f, _elem_dtype(UINT8))


# -- the exact fp32 path (convolutions the int8 kernels cannot take: see _conv_acc) -------------
def _max_offset(q: Value, zp: Value | None, elem: int) -> float:
    """The largest |q - zp| the data can give: exact for constant q, else over the type's range."""
    lo, hi = INT_RANGES[elem]
    z = np.asarray(zp.data, np.float64) if zp is not None and zp.is_const else None
    if q.is_const:
        qd = np.asarray(q.data, np.float64)
        if z is None and zp is not None:  # zero point known only at run time: any in-range value
            return float(max(np.max(qd) - lo, hi - np.min(qd))) if qd.size else 0.0
        return float(np.max(np.abs(qd - (z if z is not None else 0.0)))) if qd.size else 0.0
    if z is None:
        return float(hi - lo) if zp is not None else float(max(abs(lo), abs(hi)))
    return float(max(np.max(np.abs(lo - z)), np.max(np.abs(hi - z))))


def _centered(cx: Cx, q: Value, zp: Value | None) -> Value:
    """q - zp in fp32 (exact: both are integers of 16 bits or fewer); a constant stays constant."""
    if zp is None:
        return _f32(cx, q)
    if q.is_const and zp.is_const:
        d = np.asarray(q.data, np.float32) - np.asarray(zp.data, np.float32)
        return cx.g.add_const(q.name, d, DType.fp32)
    return cx.emit("sub", [_f32(cx, q), _f32(cx, zp)])


def _exact_sum(cx: Cx, k: int, bound: float, part: Any) -> Value:
    """sum over a contraction of length k of integer products each at most `bound` in magnitude,
    exact: `part(start, end)` computes the fp32 contraction over [start, end); chunks whose sum
    stays below 2^24 are exact in fp32 and are added in int32 (an fp32 result, integer-valued,
    exact below 2^24; past that rounded once, as the int32 accumulator converted to float is)."""
    step = k if bound == 0 else max(1, int((EXACT_SUM - 1) // bound))
    if step >= k:
        return part(0, k)
    acc = None
    for start in range(0, k, step):
        p = cx.cast(part(start, min(k, start + step)), DType.int32)
        acc = p if acc is None else cx.emit("add", [acc, p])
    return _f32(cx, acc)


def _multiplier(cx: Cx, a_scale: Value, b_scale: Value, y_scale: Value) -> Value:
    """a_scale * b_scale / y_scale in fp32 (onnxruntime's requantization multiplier)."""
    if a_scale.is_const and b_scale.is_const and y_scale.is_const:
        m = np.asarray(a_scale.data, np.float32) * np.asarray(b_scale.data, np.float32) / np.asarray(y_scale.data, np.float32)
        return cx.g.add_const("requant_scale", m.astype(np.float32), DType.fp32)
    return cx.emit("div", [cx.emit("mul", [_f32(cx, a_scale), _f32(cx, b_scale)]), _f32(cx, y_scale)])


def _q8_types(cx: Cx, positions: tuple[int, ...]) -> list[int] | None:
    types = [_input_type(cx, i) for i in positions]
    return types if all(t in (INT8, UINT8) for t in types) else None


# -- integer matmul / conv on the matrix engine ---------------------------------------------------
# A zero point (typed Any below) is a constant (an int64 array, shaped to broadcast against the
# int32 accumulator) or a run-time int32 Value of that shape.


def _wrap_i32(c: np.ndarray) -> np.ndarray:
    """int64 -> int32 with two's-complement wrap, as the int32 accumulator wraps."""
    return ((np.asarray(c, np.int64) + (1 << 31)) % (1 << 32) - (1 << 31)).astype(np.int32)


def _int8_operand(cx: Cx, q: Value, zp: Value | None, elem: int, zp_shape: list[int]) -> tuple[Value, Any]:
    """q as a real int8 tensor and its zero point in the same frame: uint8 data (stored in int32)
    is shifted by -128 and so is its zero point, which leaves q - zp unchanged. The zero point comes
    back as a constant int64 array of `zp_shape`, or a run-time int32 Value of that shape."""
    shift = 128 if elem == UINT8 else 0
    if q.is_const:
        q8 = cx.g.add_const(q.name, (np.asarray(q.data, np.int64) - shift).astype(np.int8), DType.int8)
    elif shift:
        q8 = cx.cast(cx.emit("sub", [cx.cast(q, DType.int32), cx.const(shift, DType.int32)]), DType.int8)
    else:
        q8 = cx.cast(q, DType.int8)
    if zp is None:
        return q8, np.full(zp_shape, -shift, np.int64)
    if zp.is_const:
        return q8, np.asarray(zp.data, np.int64).reshape(zp_shape) - shift
    z = _reshape(cx, cx.cast(zp, DType.int32), zp_shape)
    return q8, (cx.emit("sub", [z, cx.const(shift, DType.int32)]) if shift else z)


def _is_zero(z: Any) -> bool:
    return not isinstance(z, Value) and not np.any(z)


class _IntSum:
    """An int32 accumulator plus terms coef * term, each a constant array or a run-time int32
    Value; the products of two constants are folded into one constant added at the end."""

    def __init__(self, cx: Cx, acc: Value):
        self.cx, self.acc, self.const = cx, acc, np.zeros((), np.int64)

    def _value(self, v: Any) -> Value:
        return v if isinstance(v, Value) else self.cx.const(_wrap_i32(np.asarray(v)), DType.int32)

    def add(self, sign: int, coef: Any, term: Any) -> None:
        if _is_zero(coef) or _is_zero(term):
            return
        if not isinstance(coef, Value) and not isinstance(term, Value):
            self.const = self.const + sign * coef * term
            return
        p = self.cx.emit("mul", [self._value(coef), self._value(term)])
        self.acc = self.cx.emit("add" if sign > 0 else "sub", [self.acc, p])

    def result(self) -> Value:
        if np.any(self.const):
            self.acc = self.cx.emit("add", [self.acc, self.cx.const(_wrap_i32(self.const), DType.int32)])
        return self.acc


def _int_sum(cx: Cx, v: Value, axes: list[int]) -> Any:
    """Sum of an int8 tensor over `axes` (dims kept) in int32: a constant computed here, else a reduce."""
    if v.is_const:
        return np.asarray(v.data, np.int64).sum(axis=tuple(axes), keepdims=True)
    return cx.emit("reduce", [cx.cast(v, DType.int32)], {"kind": "sum", "axes": axes, "keepdim": True})


def _int8_matmul(cx: Cx, a8: Value, za: Any, b8: Value, zb: Any) -> Value:
    """(a - za) @ (b - zb) exactly in int32, for int8 a [..., M, K], b [..., K, N] (rank >= 2) with
    za per tensor or per row ([M, 1]) and zb per tensor or per column ([N]):
    a @ b (int8 on the matrix engine) - za * colsum(b) - zb * rowsum(a) + K * za * zb."""
    k = a8.shape[-1]
    s = _IntSum(cx, cx.emit("matmul", [a8, b8]))
    s.add(-1, za, _int_sum(cx, b8, [b8.type.rank - 2]))
    s.add(-1, zb, _int_sum(cx, a8, [a8.type.rank - 1]))
    if not (_is_zero(za) or _is_zero(zb)):
        s.add(1, za * k if not isinstance(za, Value) else cx.emit("mul", [za, cx.const(k, DType.int32)]), zb)
    return s.result()


def _valid_taps(size: int, out: int, k: int, stride: int, lo: int, dilation: int) -> np.ndarray:
    """[out, k]: 1 where tap i of output position o reads inside the (unpadded) input."""
    pos = np.arange(out)[:, None] * stride - lo + np.arange(k)[None, :] * dilation
    return ((pos >= 0) & (pos < size)).astype(np.int64)


def _int8_conv2d(cx: Cx, x8: Value, zx: Any, w8: Value, zw: Any, stride: list[int],
                 pads: list[tuple[int, int]], dilation: list[int], groups: int) -> Value | None:
    """sum over the window of (x - zx) * (w - zw), exactly in int32, for int8 x [N, C, H, W] and
    w [M, C/g, kh, kw] (zx per tensor, zw per tensor or per output channel, shaped [1, M, 1, 1]),
    padding contributing 0 as in onnxruntime (it pads x with its zero point).
    A constant zx: x is padded with zx (the pad kernel's fill value), so every window has all its
    taps and (x - zx)(w - zw) summed over the window is conv(x, w) - zx * sum(w) - zw * windowsum(x)
    + taps * zx * zw, the zx terms one constant per output channel. A run-time zx (DynamicQuantize-
    Linear's) cannot be a fill value: x is zero-padded and the zx terms count only the in-bounds
    taps (a constant map [M, OH, OW] for a constant weight, else the conv of a ones mask).
    None for depthwise convolutions: the int8 depthwise kernel (vector engine) multiplies in int8 and
    wraps (reported), and they gain nothing from the matrix engine anyway."""
    m, cg, kh, kw = w8.shape
    if groups > 1 and cg == 1:
        return None
    conv_attrs = {"stride": tuple(stride), "dilation": tuple(dilation), "groups": groups}
    padded = any(lo or hi for lo, hi in pads)
    fill = not isinstance(zx, Value)
    xin = x8
    if padded and fill and np.any(zx):
        xin = cx.emit("pad", [x8], {"pads": [(0, 0), (0, 0)] + [tuple(p) for p in pads], "value": float(zx)})
    conv_pads = ((0, 0), (0, 0)) if fill else tuple(tuple(p) for p in pads)

    def conv(w: Value) -> Value:
        return cx.emit("conv2d", [xin, w], {**conv_attrs, "padding": conv_pads})

    acc = conv(w8)
    oh, ow = acc.shape[2], acc.shape[3]
    s = _IntSum(cx, acc)
    if fill or not padded:
        # every tap of every window is present: the zx terms are per output channel
        s.add(-1, zx, _reshape_sum(cx, _int_sum(cx, w8, [1, 2, 3]), [1, m, 1, 1]))
        taps: Any = np.array(cg * kh * kw, np.int64)
    else:
        rv = _valid_taps(x8.shape[2], oh, kh, stride[0], pads[0][0], dilation[0])
        cv = _valid_taps(x8.shape[3], ow, kw, stride[1], pads[1][0], dilation[1])
        if w8.is_const:
            wsum = np.asarray(w8.data, np.int64).sum(axis=1)  # [M, kh, kw]
            inside: Any = np.einsum("mij,hi,wj->mhw", wsum, rv, cv)[None]
        else:  # the conv of an all-ones image (zero-padded) with w: the in-bounds taps' weight sum
            ones = cx.const(np.ones((1,) + tuple(x8.shape[1:]), np.int8), DType.int8)
            inside = cx.emit("conv2d", [ones, w8], {**conv_attrs, "padding": conv_pads})
        s.add(-1, zx, inside)
        taps = (cg * rv.sum(1)[:, None] * cv.sum(1)[None, :])[None, None]  # in-bounds taps per position
    if not _is_zero(zw):
        # window sums of x: a conv with all-ones weights (one output channel per group)
        ones_w = np.ones((1 if groups == 1 else m, cg, kh, kw), np.int8)
        wins = conv(cx.g.add_const("ones", ones_w, DType.int8))
        s.add(-1, zw, wins)
        if not _is_zero(zx):
            s.add(1, zx, taps * zw if not isinstance(zw, Value) else cx.emit("mul", [zw, cx.const(_wrap_i32(taps), DType.int32)]))
    return s.result()


def _reshape_sum(cx: Cx, v: Any, shape: list[int]) -> Any:
    return v.reshape(shape) if isinstance(v, np.ndarray) else _reshape(cx, v, shape)


def _int8_conv(cx: Cx, x8: Value, zx: Any, w8: Value, zw: Any, stride: list[int],
               pads: list[tuple[int, int]], dilation: list[int], groups: int) -> Value | None:
    """_int8_conv2d for 1-D (as 2-D with a unit height) and 2-D convolutions; None for 3-D."""
    nd = x8.type.rank - 2
    if nd == 2:
        return _int8_conv2d(cx, x8, zx, w8, zw, stride, pads, dilation, groups)
    if nd != 1:
        return None  # 3-D: spatial.conv splits the depth taps; not done for int8 operands
    x4 = _reshape(cx, x8, list(x8.shape[:2]) + [1, x8.shape[2]])
    w4 = _reshape(cx, w8, list(w8.shape[:2]) + [1, w8.shape[2]])
    y = _int8_conv2d(cx, x4, zx, w4, zw, [1, stride[0]], [(0, 0), pads[0]], [1, dilation[0]], groups)
    return None if y is None else _reshape(cx, y, [y.shape[0], y.shape[1], y.shape[3]])


def _requantize(cx: Cx, acc: Value, multiplier: Value, y_zp: Value, y_t: int) -> Value:
    """onnxruntime's requantization: the int32 sum as fp32, times the combined scale, rounded half
    to even, + zero point, saturated."""
    return _quantize(cx, cx.emit("mul", [_f32(cx, acc), multiplier]), _reshape(cx, y_zp, []), y_t)


# -- QLinearMatMul / QLinearConv / MatMulInteger / ConvInteger ------------------------------------
def _matmul_params(cx: Cx, a: Value, b: Value) -> tuple[Any, Any]:
    """Shapers for a's per-tensor / per-row and b's per-tensor / per-column parameters (the
    spec's shapes, opset 21): param -> Value shaped to broadcast on [..., M, N], or None."""
    m = a.shape[-2] if a.type.rank >= 2 else 1
    n = b.shape[-1] if b.type.rank >= 2 else 1

    def row_param(p: Value) -> Value | None:
        if p.type.numel == 1:
            return _reshape(cx, p, [])
        return _reshape(cx, p, [m, 1]) if p.type.rank == 1 and p.shape[0] == m and a.type.rank >= 2 else None

    def col_param(p: Value) -> Value | None:
        if p.type.numel == 1:
            return _reshape(cx, p, [])
        return p if p.type.rank == 1 and p.shape[0] == n and b.type.rank >= 2 else None

    return row_param, col_param


def _matmul_acc(cx: Cx, a: Value, az: Value | None, a_t: int, b: Value, bz: Value | None, b_t: int) -> Value:
    """(a - az) @ (b - bz) as int32 on the int8 matrix engine (a, b of 8-bit types; 1-D operands
    as one-row / one-column matrices, numpy.matmul's rule)."""
    ra, rb = a.type.rank, b.type.rank
    a2 = a if ra >= 2 else _reshape(cx, a, [1, a.shape[0]])
    b2 = b if rb >= 2 else _reshape(cx, b, [b.shape[0], 1])
    a8, za = _int8_operand(cx, a2, az, a_t, list(az.shape) if az is not None else [])
    b8, zb = _int8_operand(cx, b2, bz, b_t, list(bz.shape) if bz is not None else [])
    acc = _int8_matmul(cx, a8, za, b8, zb)
    if ra < 2 or rb < 2:
        shape = list(acc.shape)
        if rb < 2:
            shape.pop(-1)
        if ra < 2:
            shape.pop(-2 if rb >= 2 else -1)
        acc = _reshape(cx, acc, shape)
    return acc


@onnx_op("QLinearMatMul")
def _qlinear_matmul(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp = ins[:8]
    types = _q8_types(cx, (0, 3, 7))
    if types is None or any(v is None for v in (a_zp, b_zp, y_zp)) or a.type.rank < 1 or b.type.rank < 1:
        return None
    if any(s.dtype != DType.fp32 for s in (a_scale, b_scale, y_scale)):
        return None
    a_t, b_t, y_t = types
    row_param, col_param = _matmul_params(cx, a, b)
    az, asc = row_param(a_zp), row_param(a_scale)
    bz, bsc = col_param(b_zp), col_param(b_scale)
    if y_zp.type.numel != 1 or y_scale.type.numel != 1 or None in (az, asc, bz, bsc):
        return None
    acc = _matmul_acc(cx, a, az, a_t, b, bz, b_t)
    return _requantize(cx, acc, _multiplier(cx, asc, bsc, _reshape(cx, y_scale, [])), y_zp, y_t)


@onnx_op("MatMulInteger")
def _matmul_integer(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    a, b = ins[0], ins[1]
    a_zp = ins[2] if len(ins) > 2 else None
    b_zp = ins[3] if len(ins) > 3 else None
    a_t, b_t = _input_type(cx, 0), _input_type(cx, 1)
    if a_t not in (INT8, UINT8) or b_t not in (INT8, UINT8) or a.type.rank < 1 or b.type.rank < 1:
        return None
    row_param, col_param = _matmul_params(cx, a, b)
    az = None if a_zp is None else row_param(a_zp)
    bz = None if b_zp is None else col_param(b_zp)
    if (a_zp is not None and az is None) or (b_zp is not None and bz is None):
        return None
    return _matmul_acc(cx, a, az, a_t, b, bz, b_t)


def _conv_geometry(attrs: dict, x: Value, w: Value) -> tuple[list[int], list[tuple[int, int]], list[int], int] | None:
    nd = x.type.rank - 2
    kernel = list(attrs.get("kernel_shape", w.shape[2:]))
    stride = [int(s) for s in attrs.get("strides", [1] * nd)]
    dilation = [int(d) for d in attrs.get("dilations", [1] * nd)]
    pads = _conv_pads(attrs, list(x.shape[2:]), kernel, stride, dilation)
    if pads is None:
        return None
    return stride, [(int(lo), int(hi)) for lo, hi in pads], dilation, int(attrs.get("group", 1))


def _conv_acc(cx: Cx, x: Value, xz: Value | None, x_t: int, w: Value, w_zp: Value | None, w_t: int,
              attrs: dict) -> Value | None:
    """sum over each window of (x - xz) * (w - wz) as int32 (padding contributes 0), xz per tensor,
    w_zp per tensor or per output channel: the int8 conv on the matrix engine, else (depthwise,
    3-D) the exact fp32 path."""
    nd = x.type.rank - 2
    geo = _conv_geometry(attrs, x, w)
    if geo is None or not 1 <= nd <= 3:
        return None
    stride, pads, dilation, groups = geo
    m = w.shape[0]
    if w_zp is not None and not (w_zp.type.numel == 1 or (w_zp.type.rank == 1 and w_zp.shape[0] == m)):
        return None
    zw_shape = [] if w_zp is None or w_zp.type.numel == 1 else [1, m] + [1] * nd
    x8, zx = _int8_operand(cx, x, xz, x_t, [])
    w8, zw = _int8_operand(cx, w, w_zp, w_t, zw_shape)
    acc = _int8_conv(cx, x8, zx, w8, zw, stride, pads, dilation, groups)
    if acc is not None:
        return acc
    # the exact fp32 path: x - xz is zero-padded (padding adds xz to x, as onnxruntime pads)
    wz = None if w_zp is None else (_reshape(cx, w_zp, []) if w_zp.type.numel == 1 else
                                     _reshape(cx, w_zp, [m] + [1] * (w.type.rank - 1)))
    xc, wc = _centered(cx, x, xz), _centered(cx, w, wz)
    cin = w.shape[1]  # input channels per group
    taps = math.prod(w.shape[2:])
    bound = _max_offset(x, xz, x_t) * _max_offset(w, wz, w_t) * taps
    if groups != 1 and bound * cin >= EXACT_SUM:
        return None  # chunking the channels of each group separately: not done

    def part(start: int, end: int) -> Value:
        xs, wss = xc, wc
        if (start, end) != (0, cin):
            xs = cx.emit("slice", [xc], {"axis": 1, "start": start, "end": end, "step": 1})
            wss = spatial._slice(cx, wc, 1, start, end) if not wc.is_const else \
                cx.g.add_const(wc.name, np.ascontiguousarray(np.asarray(wc.data)[:, start:end]), DType.fp32)
        return spatial.conv(cx, xs, wss, None, stride, pads, dilation, groups)

    return cx.cast(_exact_sum(cx, cin, bound, part), DType.int32)


@onnx_op("QLinearConv")
def _qlinear_conv(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp = ins[:8]
    bias = ins[8] if len(ins) > 8 else None
    types = _q8_types(cx, (0, 3, 7))
    nd = x.type.rank - 2
    if types is None or any(v is None for v in (x_zp, w_zp, y_zp)) or not 1 <= nd <= 3:
        return None
    if any(s.dtype != DType.fp32 for s in (x_scale, w_scale, y_scale)):
        return None
    x_t, w_t, y_t = types
    if bias is not None and _input_type(cx, 8) != INT32:
        return None
    m = w.shape[0]
    chan = [m] + [1] * nd  # one per output channel, broadcast over an [N, M, ...] output
    if x_zp.type.numel != 1 or y_zp.type.numel != 1 or x_scale.type.numel != 1 or y_scale.type.numel != 1:
        return None
    if w_scale.type.numel == 1:
        ws = _reshape(cx, w_scale, [])
    elif w_scale.type.rank == 1 and w_scale.shape[0] == m:
        ws = _reshape(cx, w_scale, chan)
    else:
        return None
    acc = _conv_acc(cx, x, _reshape(cx, x_zp, []), x_t, w, w_zp, w_t, attrs)
    if acc is None:
        return None
    if bias is not None:
        acc = cx.emit("add", [acc, _reshape(cx, cx.cast(bias, DType.int32), chan)])  # the int32 bias, added in int32
    return _requantize(cx, acc, _multiplier(cx, _reshape(cx, x_scale, []), ws, _reshape(cx, y_scale, [])), y_zp, y_t)


@onnx_op("ConvInteger")
def _conv_integer(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x, w = ins[0], ins[1]
    x_zp = ins[2] if len(ins) > 2 else None
    w_zp = ins[3] if len(ins) > 3 else None
    x_t, w_t = _input_type(cx, 0), _input_type(cx, 1)
    if x_t not in (INT8, UINT8) or w_t not in (INT8, UINT8) or not 1 <= x.type.rank - 2 <= 3:
        return None
    if x_zp is not None and x_zp.type.numel != 1:
        return None
    return _conv_acc(cx, x, None if x_zp is None else _reshape(cx, x_zp, []), x_t, w, w_zp, w_t, attrs)


# -- Cast / CastLike to 4- and 2-bit integers (called by onnx_ops' Cast and CastLike) ---------------
def cast_to_narrow_int(cx: Cx, x: Value, to: int) -> Value | None:
    """x as ONNX INT4 / UINT4 / INT2 / UINT2 (int8 storage). The spec leaves a float out of the
    target's range undefined; this follows onnx.reference (ml_dtypes): truncate toward zero, and
    an out-of-range result (NaN, inf included) becomes 0. Integers wrap to the low bits (two's
    complement), as the spec says for fixed point -> fixed point."""
    lo, hi = INT_RANGES[to]
    bits = NARROW_INTS[to]
    if x.is_const and x.dtype != DType.bf16:
        d = np.asarray(x.data)
        if d.dtype.kind == "f":
            with np.errstate(invalid="ignore"):
                t = np.trunc(d.astype(np.float64))
                r = np.where((t >= lo) & (t <= hi), t, 0)
        else:
            r = (d.astype(np.int64) - lo) % (1 << bits) + lo
        return cx.g.add_const(x.name, r.astype(np.int8), DType.int8)
    if x.dtype == DType.bool:
        return cx.cast(x, DType.int8)
    if x.dtype.is_float:
        t = cx.emit("trunc", [_f32(cx, x)])
        inside = cx.emit("and", [cx.emit("ge", [t, cx.const(lo, DType.fp32)]), cx.emit("le", [t, cx.const(hi, DType.fp32)])])
        return cx.cast(cx.emit("where", [inside, t, cx.const(0.0, DType.fp32)]), DType.int8)
    v = cx.cast(x, DType.int32)  # int64 -> int32 keeps the low 32 bits, which hold the low `bits`
    w = cx.emit("add", [cx.emit("remainder", [cx.emit("sub", [v, cx.const(lo, DType.int32)]),
                                              cx.const(1 << bits, DType.int32)]), cx.const(lo, DType.int32)])
    return cx.cast(w, DType.int8)
