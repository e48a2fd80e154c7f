"""ONNX lowerings: QuantizeLinear / DequantizeLinear / DynamicQuantizeLinear / QLinearMatMul / QLinearConv and Casts to 2/4-bit integers.

Entries register with `onnx_op` like those in onnx_ops.py; kept in their own module so each family
is one file.

Integer tensors are stored wider than their ONNX type (uint8 / int16 / uint16 in int32, the 4- and
2-bit types one value per byte in int8: importer._elem_dtype), so the range a result saturates to
comes from the ONNX element type of the tensor (`onnx_elem_type`), not from the storage dtype.

Quantization runs on the vector unit in fp32: x / scale (a true division, as the spec computes it),
the IR's `round` (half to even), + zero point, `clamp` to the type's range, then a cast to the
storage type, which is exact because the value is already an in-range integer.

QLinearMatMul / QLinearConv subtract the zero points in fp32 (exact: |q - zp| <= 255) and run the
matmul / conv on the matrix engine, whose fp32 accumulation is exact while every partial sum stays
below 2^24. The contraction is split into chunks whose worst-case sum (chunk length x max|a - zp| x
max|b - zp|, from the constant data when there is some, else from the type's range) is below
2^24; each chunk's exact fp32 result is cast to int32 and the chunks are added in int32, so the
accumulator is int32-exact like onnxruntime's. Requantization then follows onnxruntime: the int32
sum as fp32, times (scale_a * scale_b / scale_y) in fp32, rounded half to even, + zero point, clamped.
"""
from __future__ import annotations

import math
import weakref
from typing import Any

import numpy as np

from vnpu.dtypes import DType
from vnpu.frontends import spatial
from vnpu.frontends.onnx.importer import OnnxContext as Cx, _elem_dtype, onnx_op
from vnpu.frontends.onnx.onnx_ops import _axis, _conv_pads, _matmul
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


# -- QLinearMatMul / QLinearConv ----------------------------------------------------------------
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


@onnx_op("QLinearMatMul")
def _qlinear_matmul(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp = ins[:8]
    types = _q8_types(cx, (0, 3, 7))
    if types is None or any(v is None for v in (a_zp, b_zp, y_zp)) or a.type.rank < 1 or b.type.rank < 1:
        return None
    if any(s.dtype != DType.fp32 for s in (a_scale, b_scale, y_scale)):
        return None
    a_t, b_t, y_t = types
    m = a.shape[-2] if a.type.rank >= 2 else 1
    n = b.shape[-1] if b.type.rank >= 2 else 1

    # per-tensor, or one per row of a / column of b (spec, opset 21)
    def row_param(p: Value) -> Value | None:
        if p.type.numel == 1:
            return _reshape(cx, p, [])
        return _reshape(cx, p, [m, 1]) if p.type.rank == 1 and p.shape[0] == m and a.type.rank >= 2 else None

    def col_param(p: Value) -> Value | None:
        if p.type.numel == 1:
            return _reshape(cx, p, [])
        return p if p.type.rank == 1 and p.shape[0] == n and b.type.rank >= 2 else None

    az, asc = row_param(a_zp), row_param(a_scale)
    bz, bsc = col_param(b_zp), col_param(b_scale)
    if y_zp.type.numel != 1 or y_scale.type.numel != 1 or None in (az, asc, bz, bsc):
        return None
    ac, bc = _centered(cx, a, az), _centered(cx, b, bz)
    k = a.shape[-1]
    bound = _max_offset(a, az, a_t) * _max_offset(b, bz, b_t)

    def part(start: int, end: int) -> Value:
        if (start, end) == (0, k):
            return _matmul(cx, [ac, bc], {})
        ak = cx.emit("slice", [ac], {"axis": ac.type.rank - 1, "start": start, "end": end, "step": 1})
        bk = cx.emit("slice", [bc], {"axis": max(bc.type.rank - 2, 0), "start": start, "end": end, "step": 1})
        return _matmul(cx, [ak, bk], {})

    acc = _exact_sum(cx, k, bound, part)
    y = cx.emit("mul", [acc, _multiplier(cx, asc, bsc, _reshape(cx, y_scale, []))])
    return _quantize(cx, y, _reshape(cx, y_zp, []), y_t)


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

    def per_channel(p: Value, shape: list[int]) -> Value | None:
        if p.type.numel == 1:
            return _reshape(cx, p, [])
        return _reshape(cx, p, shape) if p.type.rank == 1 and p.shape[0] == m else None

    if x_zp.type.numel != 1 or y_zp.type.numel != 1 or x_scale.type.numel != 1 or y_scale.type.numel != 1:
        return None
    wz, ws = per_channel(w_zp, [m] + [1] * (w.type.rank - 1)), per_channel(w_scale, chan)
    if wz is None or ws is None:
        return None
    xz = _reshape(cx, x_zp, [])
    groups = int(attrs.get("group", 1))
    kernel = list(attrs.get("kernel_shape", w.shape[2:]))
    stride = list(attrs.get("strides", [1] * nd))
    dilation = list(attrs.get("dilations", [1] * nd))
    pads = _conv_pads(attrs, list(x.shape[2:]), kernel, stride, dilation)
    if pads is None:
        return None
    # padding adds zeros to x - x_zp: the zero point's value, as onnxruntime pads
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

    acc = _exact_sum(cx, cin, bound, part)
    if bias is not None:
        b = _reshape(cx, bias, chan)
        acc = _f32(cx, cx.emit("add", [cx.cast(acc, DType.int32), b]))  # the int32 bias, added in int32
    y = cx.emit("mul", [acc, _multiplier(cx, _reshape(cx, x_scale, []), ws, _reshape(cx, y_scale, []))])
    return _quantize(cx, y, _reshape(cx, y_zp, []), y_t)


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
