"""ONNX quantization lowerings (frontends/onnx/ops_quant.py) on the chip, strict (no host
fallback), against onnxruntime (the reference for quantized models) or, where onnxruntime
has no kernel or cannot take the tensors, onnx.reference."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto as T, helper as h, numpy_helper as nh  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

import vnpu  # noqa: E402

RNG = np.random.default_rng(7)


def _model(nodes: list, inputs: dict[str, np.ndarray], outputs: list[str], inits: list, opset: int = 21) -> Any:
    ins = [h.make_tensor_value_info(n, h.np_dtype_to_tensor_dtype(a.dtype), list(a.shape)) for n, a in inputs.items()]
    outs = [h.make_tensor_value_info(n, T.UNDEFINED, None) for n in outputs]
    g = h.make_graph(nodes, "quant", ins, outs, initializer=inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 10  # opset 21's IR version (onnxruntime checks it)
    return onnx.shape_inference.infer_shapes(m)  # the outputs' types


def _vnpu(model: Any, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = vnpu.from_onnx(model, strict=True)  # strict: every node lowers onto the chip
    return cm.run_numpy(list(inputs.values()))


def _ort(model: Any, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, inputs)


def _same_ints(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    np.testing.assert_array_equal(got.astype(np.int64), want.astype(np.int64))


# -- QuantizeLinear / DequantizeLinear ----------------------------------------------------------
def test_quantize_int4_per_axis_roundtrip_saturates_and_rounds_half_even() -> None:
    x = np.array([[2.5, 3.5, -2.5, -3.5, 100, -100, 0.5, 1.5],
                  [1, 2, 3, 4, 5, -6, -0.25, 0.75]], np.float32)
    model = _model([h.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=0),
                    h.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=0)], {"x": x}, ["y"],
                   [nh.from_array(np.array([1.0, 0.5], np.float32), "s"), h.make_tensor("z", T.INT4, [2], [0, 1])])
    (got,) = _vnpu(model, {"x": x})
    (want,) = _ort(model, {"x": x})
    np.testing.assert_array_equal(got, want)
    assert got[0].tolist() == [2, 4, -2, -4, 7, -8, 0, 2]  # ties to even; int4 saturates at [-8, 7]


@pytest.mark.parametrize("zp", [np.uint8(128), np.int8(-3), np.int16(1000), np.uint16(40000)], ids=lambda z: z.dtype.name)
def test_quantize_per_tensor_types(zp: np.generic) -> None:
    x = np.concatenate([np.array([0.5, 1.5, 2.5, -0.5, -1.5, 1e9, -1e9], np.float32),
                        RNG.normal(0, 300, 40).astype(np.float32)])
    model = _model([h.make_node("QuantizeLinear", ["x", "s", "z"], ["q"])], {"x": x}, ["q"],
                   [nh.from_array(np.float32(0.5), "s"), nh.from_array(np.array(zp), "z")])
    _same_ints(_vnpu(model, {"x": x})[0], _ort(model, {"x": x})[0])


def test_dequantize_blocked_int4_weight_runtime_scale() -> None:
    """Blocked int4 weights (5 columns in blocks of 2: the last block is short) with the
    scale fed at run time: the scale's expansion over the blocks runs on the chip."""
    w = RNG.integers(-8, 8, (4, 5))
    s = (RNG.random((4, 3)) + 0.1).astype(np.float32)
    model = _model([h.make_node("DequantizeLinear", ["w", "s", "z"], ["y"], axis=1, block_size=2)], {"s": s}, ["y"],
                   [h.make_tensor("w", T.INT4, [4, 5], w.ravel().tolist()),
                    h.make_tensor("z", T.INT4, [4, 3], RNG.integers(-2, 3, 12).tolist())])
    np.testing.assert_array_equal(_vnpu(model, {"s": s})[0], _ort(model, {"s": s})[0])


def test_quantize_dequantize_blocked_uint8_runtime() -> None:
    x = RNG.normal(0, 4, (3, 8)).astype(np.float32)
    s = (RNG.random((3, 2)) * 0.1 + 0.02).astype(np.float32)
    z = RNG.integers(100, 150, (3, 2)).astype(np.uint8)
    model = _model([h.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1, block_size=4),
                    h.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1, block_size=4)],
                   {"x": x, "s": s, "z": z}, ["q", "y"], [])
    q, y = _vnpu(model, {"x": x, "s": s, "z": z})
    q_ref, y_ref = _ort(model, {"x": x, "s": s, "z": z})
    _same_ints(q, q_ref)
    np.testing.assert_array_equal(y, y_ref)


def test_dequantize_int32_per_axis() -> None:
    x = np.array([[1 << 30, -(1 << 30) + 7, 123456789], [5, -5, 0]], np.int32)
    s = np.array([1e-6, 0.5], np.float32)
    model = _model([h.make_node("DequantizeLinear", ["x", "s"], ["y"], axis=0)], {"x": x}, ["y"],
                   [nh.from_array(s, "s")])
    np.testing.assert_array_equal(_vnpu(model, {"x": x})[0], _ort(model, {"x": x})[0])


def test_dynamic_quantize_linear() -> None:
    for x in (RNG.normal(1, 3, (4, 7)).astype(np.float32), np.abs(RNG.normal(0, 1, (9,))).astype(np.float32),
              np.zeros((2, 3), np.float32)):
        model = _model([h.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])], {"x": x}, ["y", "s", "z"], [])
        y, s, z = _vnpu(model, {"x": x})
        y_ref, s_ref, z_ref = _ort(model, {"x": x})
        _same_ints(y, y_ref)
        np.testing.assert_array_equal(s, s_ref)
        _same_ints(z, z_ref)


# -- QLinearMatMul / QLinearConv ----------------------------------------------------------------
@pytest.mark.parametrize("a_type,b_type", [(np.uint8, np.uint8), (np.int8, np.int8), (np.uint8, np.int8)],
                         ids=["u8u8", "s8s8", "u8s8"])
def test_qlinear_matmul_zero_points_per_column_scale(a_type: type, b_type: type) -> None:
    ai, bi = np.iinfo(a_type), np.iinfo(b_type)
    a = RNG.integers(ai.min, ai.max + 1, (2, 3, 40)).astype(a_type)
    b = RNG.integers(bi.min, bi.max + 1, (40, 6)).astype(b_type)
    inits = [nh.from_array(np.float32(0.02), "as"), nh.from_array(np.array(ai.min + 120, a_type), "az"), nh.from_array(b, "b"),
             nh.from_array((RNG.random(6) * 0.01 + 0.001).astype(np.float32), "bs"),
             nh.from_array(np.array(bi.min + 131, b_type), "bz"),
             nh.from_array(np.float32(0.05), "ys"), nh.from_array(np.array(ai.min + 128, a_type), "yz")]
    model = _model([h.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])], {"a": a}, ["y"], inits)
    got = _vnpu(model, {"a": a})[0]
    if a_type == b_type:
        _same_ints(got, _ort(model, {"a": a})[0])
    # uint8 x int8: onnxruntime's x86 u8s8 kernel saturates int16 pair sums (pmaddubsw), so it is
    # not exact for full-range data; onnx.reference computes the int32 product exactly
    _same_ints(got, ReferenceEvaluator(model).run(None, {"a": a})[0])


def test_qlinear_matmul_accumulates_exactly_past_2_24() -> None:
    """Running sums past 2^24 with a small total: the first 2048 products of 127 x ~125 add up
    to ~32M, the next 2048 take it back to a few units. fp32 accumulation rounds the sum to
    even numbers past 2^24; the chunked contraction keeps it int32-exact, and with unit scales
    the int8 output is the exact sum."""
    half = 2048
    a = np.concatenate([np.full(half, 127), np.full(half, -127)]).astype(np.int8)
    a[half + 5] = -126  # the total: b[half + 5] (odd), or its negation on the second row
    a = np.stack([a, -a])
    b = RNG.integers(115, 128, (half, 2))
    b = np.concatenate([b, b]).astype(np.int8)
    b[5] = b[half + 5] = 121
    inits = [nh.from_array(np.float32(1.0), "as"), nh.from_array(np.int8(0), "az"),
             nh.from_array(np.float32(1.0), "bs"), nh.from_array(np.int8(0), "bz"),
             nh.from_array(np.float32(1.0), "ys"), nh.from_array(np.int8(0), "yz")]
    model = _model([h.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])],
                   {"a": a, "b": b}, ["y"], inits)
    got = _vnpu(model, {"a": a, "b": b})[0]
    exact = a.astype(np.int64) @ b.astype(np.int64)
    assert np.all(np.abs(exact) <= 127) and np.any(exact % 2)
    _same_ints(got, exact)
    _same_ints(got, _ort(model, {"a": a, "b": b})[0])


def test_qlinear_conv_per_channel_bias_and_long_contraction() -> None:
    """uint8 activations, int8 weights with per-output-channel scales and zero points, int32
    bias, 64 channels x 3x3 taps: the contraction (576 products up to 255 * 130) exceeds 2^24
    in the worst case, so it runs in channel chunks added in int32."""
    x = RNG.integers(0, 256, (1, 64, 6, 5)).astype(np.uint8)
    w = RNG.integers(-128, 128, (4, 64, 3, 3)).astype(np.int8)
    bias = RNG.integers(-50000, 50000, 4).astype(np.int32)
    inits = [nh.from_array(np.float32(0.01), "xs"), nh.from_array(np.uint8(130), "xz"), nh.from_array(w, "w"),
             nh.from_array((RNG.random(4) * 0.01 + 0.002).astype(np.float32), "ws"),
             nh.from_array(np.array([0, 2, -3, 1], np.int8), "wz"),
             nh.from_array(np.float32(0.8), "ys"), nh.from_array(np.uint8(100), "yz"), nh.from_array(bias, "b")]
    node = h.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"], pads=[1, 0, 1, 2],
                       strides=[1, 2])
    model = _model([node], {"x": x}, ["y"], inits)
    got = _vnpu(model, {"x": x})[0]
    # uint8 x int8 with weight zero points: onnx.reference (onnxruntime's u8s8 kernel saturates
    # int16 pair sums on x86, see the matmul test)
    _same_ints(got, ReferenceEvaluator(model).run(None, {"x": x})[0])


def test_qlinear_conv_uint8_against_onnxruntime() -> None:
    x = RNG.integers(0, 256, (2, 8, 7, 7)).astype(np.uint8)
    w = RNG.integers(0, 256, (6, 4, 3, 3)).astype(np.uint8)
    inits = [nh.from_array(np.float32(0.01), "xs"), nh.from_array(np.uint8(130), "xz"), nh.from_array(w, "w"),
             nh.from_array((RNG.random(6) * 0.01 + 0.002).astype(np.float32), "ws"),
             nh.from_array(RNG.integers(100, 150, 6).astype(np.uint8), "wz"),
             nh.from_array(np.float32(0.3), "ys"), nh.from_array(np.uint8(100), "yz"),
             nh.from_array(RNG.integers(-5000, 5000, 6).astype(np.int32), "b")]
    node = h.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"], pads=[1, 1, 1, 1],
                       group=2)
    model = _model([node], {"x": x}, ["y"], inits)
    _same_ints(_vnpu(model, {"x": x})[0], _ort(model, {"x": x})[0])


# -- Cast to 4-/2-bit integers --------------------------------------------------------------------
def test_cast_float_to_int4_out_of_range() -> None:
    """ONNX leaves float -> int out of range undefined; vnpu follows onnx.reference (the
    conformance suite's expected data): truncation toward zero, out of range (NaN, inf) -> 0.
    onnxruntime rounds and wraps instead, so onnx.reference is the reference here."""
    x = np.array([7.9, -8.9, 8.0, -9.0, 15.9, 16.0, 2.5, -2.5, -0.9, np.nan, np.inf, -np.inf, 1e9], np.float32)
    for to in (T.INT4, T.UINT4, T.INT2, T.UINT2):
        model = _model([h.make_node("Cast", ["x"], ["q"], to=to), h.make_node("Cast", ["q"], ["y"], to=T.FLOAT)],
                       {"x": x}, ["y"], [], opset=21)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (want,) = ReferenceEvaluator(model).run(None, {"x": x})
        np.testing.assert_array_equal(_vnpu(model, {"x": x})[0], want)
    got = _vnpu(_model([h.make_node("Cast", ["x"], ["q"], to=T.INT4)], {"x": x}, ["q"], [], opset=21), {"x": x})[0]
    assert got.tolist() == [7, -8, 0, 0, 0, 0, 2, -2, 0, 0, 0, 0, 0]


def test_cast_int_to_int4_wraps() -> None:
    """Integer -> 4-bit: the low bits, two's complement (the spec's fixed point -> fixed point rule)."""
    x = np.array([20, -20, 9, -9, 7, -8, 15, 16], np.int32)
    model = _model([h.make_node("Cast", ["x"], ["q"], to=T.INT4), h.make_node("Cast", ["q"], ["y"], to=T.INT32)],
                   {"x": x}, ["y"], [])
    got = _vnpu(model, {"x": x})[0]
    _same_ints(got, _ort(model, {"x": x})[0])
    assert got.tolist() == [4, -4, -7, 7, 7, -8, -1, 0]
