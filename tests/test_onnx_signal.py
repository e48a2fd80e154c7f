"""ONNX signal-processing and misc lowerings (ops_signal.py) on the chip, strict=True, against
numpy.fft / numpy.linalg and onnx.reference / onnxruntime."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto as T, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

ort = pytest.importorskip("onnxruntime")

import vnpu  # noqa: E402
from vnpu.frontends.errors import UnsupportedOpError  # noqa: E402

RNG = np.random.default_rng(11)


def _model(op: str, feeds: dict[str, np.ndarray], consts: dict[str, np.ndarray] | None = None,
           inputs: list[str] | None = None, opset: int = 20, **attrs: Any) -> Any:
    consts = consts or {}
    vis = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape)) for n, a in feeds.items()]
    inits = [numpy_helper.from_array(np.asarray(a), n) for n, a in consts.items()]
    node = helper.make_node(op, inputs if inputs is not None else list(feeds) + list(consts), ["y"], **attrs)
    g = helper.make_graph([node], op, vis, [helper.make_tensor_value_info("y", T.UNDEFINED, None)], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    return onnx.shape_inference.infer_shapes(m)


def _run(m: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return vnpu.from_onnx(m, strict=True).run_numpy(list(feeds.values()))[0]


def _reference(m: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return ReferenceEvaluator(m).run(None, feeds)[0]


def _complex(y: np.ndarray) -> np.ndarray:
    return np.stack([y.real, y.imag], axis=-1).astype(np.float32)


# -- DFT against numpy.fft ------------------------------------------------------------------
def _dft_case(opset: int, x: np.ndarray, axis: int, n: int | None, **attrs: Any) -> np.ndarray:
    consts: dict[str, np.ndarray] = {}
    inputs = ["x", ""]
    if n is not None:
        consts["n"] = np.array(n, np.int64)
        inputs[1] = "n"
    if opset >= 20:
        consts["axis"] = np.array(axis, np.int64)
        inputs.append("axis")
    else:
        attrs["axis"] = axis
    return _run(_model("DFT", {"x": x}, consts, inputs, opset=opset, **attrs), {"x": x})


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("n", [None, 5, 12])
@pytest.mark.parametrize("axis", [0, 1, -2])
def test_dft_forward_matches_numpy(opset: int, n: int | None, axis: int) -> None:
    z = (RNG.standard_normal((4, 7, 3)) + 1j * RNG.standard_normal((4, 7, 3))).astype(np.complex64)
    x = _complex(z)
    ax = axis % 4
    out = _dft_case(opset, x, axis, n)
    np.testing.assert_allclose(out, _complex(np.fft.fft(z, n=n, axis=ax)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("n", [None, 6, 15])
def test_real_dft_onesided_and_inverse(opset: int, n: int | None) -> None:
    r = RNG.standard_normal((3, 9, 2)).astype(np.float32)
    x = r[..., None]
    rfft = _dft_case(opset, x, 1, n, onesided=1)
    np.testing.assert_allclose(rfft, _complex(np.fft.rfft(r, n=n, axis=1)), rtol=1e-4, atol=1e-5)
    ifft = _dft_case(opset, x, 1, n, inverse=1)
    np.testing.assert_allclose(ifft, _complex(np.fft.ifft(r, n=n, axis=1)), rtol=1e-4, atol=1e-6)
    z = (RNG.standard_normal((3, 9, 2)) + 1j * RNG.standard_normal((3, 9, 2))).astype(np.complex64)
    cifft = _dft_case(opset, _complex(z), 1, n, inverse=1)
    np.testing.assert_allclose(cifft, _complex(np.fft.ifft(z, n=n, axis=1)), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("n", [None, 8, 11, 20])
def test_irfft_matches_numpy(n: int | None) -> None:
    spec = np.fft.rfft(RNG.standard_normal((2, 10, 3)), axis=1).astype(np.complex64)  # 6 bins
    out = _dft_case(20, _complex(spec), 1, n, inverse=1, onesided=1)
    want = np.fft.irfft(spec, n=n, axis=1)[..., None]
    assert out.shape == want.shape
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


def test_dft_run_time_length_runs_on_the_host() -> None:
    x = RNG.standard_normal((1, 8, 1)).astype(np.float32)
    m = _model("DFT", {"x": x, "n": np.array(8, np.int64)}, inputs=["x", "n"], opset=20)
    with pytest.raises(UnsupportedOpError, match="DFT"):
        vnpu.from_onnx(m, strict=True)


# -- STFT, windows, MelWeightMatrix against onnx.reference --------------------------------------
@pytest.mark.parametrize("window", ["none", "const", "runtime"])
@pytest.mark.parametrize("onesided", [0, 1])
def test_stft_matches_reference(window: str, onesided: int) -> None:
    sig = RNG.standard_normal((2, 64, 1)).astype(np.float32)
    step, length = np.array(6, np.int64), np.array(16, np.int64)
    win = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(16) / 16)).astype(np.float32)
    feeds = {"signal": sig}
    consts = {"step": step, "length": length}
    if window == "runtime":
        feeds["window"] = win
    elif window == "const":
        consts["window"] = win
    inputs = ["signal", "step", "window" if window != "none" else "", "length"]
    m = _model("STFT", feeds, consts, inputs, opset=17, onesided=onesided)
    out = _run(m, feeds)
    ref = _reference(m, feeds)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_window_feeding_stft_folds_into_the_dft() -> None:
    """HannWindow of a constant size folds at import; STFT then takes it as a constant window."""
    sig = RNG.standard_normal((1, 40, 1)).astype(np.float32)
    nodes = [helper.make_node("HannWindow", ["size"], ["w"]),
             helper.make_node("STFT", ["signal", "step", "w"], ["y"])]
    inits = [numpy_helper.from_array(np.array(8, np.int64), "size"), numpy_helper.from_array(np.array(4, np.int64), "step")]
    g = helper.make_graph(nodes, "hann_stft", [helper.make_tensor_value_info("signal", T.FLOAT, [1, 40, 1])],
                          [helper.make_tensor_value_info("y", T.FLOAT, None)], initializer=inits)
    m = onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    np.testing.assert_allclose(_run(m, {"signal": sig}), _reference(m, {"signal": sig}), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("lo,hi", [(0.0, 4096.0), (125.0, 3800.0), (300.0, 2000.0)])
def test_mel_weight_matrix_with_run_time_edges(lo: float, hi: float) -> None:
    feeds = {"lo": np.array(lo, np.float32), "hi": np.array(hi, np.float32)}
    consts = {"mels": np.array(10, np.int32), "dft": np.array(64, np.int32), "rate": np.array(8192, np.int32)}
    m = _model("MelWeightMatrix", feeds, consts, ["mels", "dft", "rate", "lo", "hi"], opset=17)
    out = _run(m, feeds)
    ref = _reference(m, feeds)
    assert out.shape == ref.shape == (33, 10)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


# -- BitCast ------------------------------------------------------------------------------------
def test_bitcast_float_int_round_trip_and_strided_input() -> None:
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
             helper.make_node("BitCast", ["xt"], ["i"], to=T.INT32),
             helper.make_node("Add", ["i", "one"], ["j"]),
             helper.make_node("BitCast", ["j"], ["y"], to=T.FLOAT)]
    g = helper.make_graph(nodes, "bitcast", [helper.make_tensor_value_info("x", T.FLOAT, [3, 4])],
                          [helper.make_tensor_value_info("i", T.INT32, [4, 3]), helper.make_tensor_value_info("y", T.FLOAT, [4, 3])],
                          initializer=[numpy_helper.from_array(np.array(1, np.int32), "one")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 26)])
    i, y = vnpu.from_onnx(m, strict=True).run_numpy([x])
    want_i = np.ascontiguousarray(x.T).view(np.int32)
    np.testing.assert_array_equal(i, want_i)
    np.testing.assert_array_equal(y.view(np.int32), want_i + 1)  # the next float up, bit for bit


# -- CenterCropPad, Compress, Det ----------------------------------------------------------------
@pytest.mark.parametrize("shape,axes", [([5, 9, 3], None), ([10, 4], [0, 1]), ([7, 2], [-2, -1]), ([9], [1])])
def test_center_crop_pad_matches_reference(shape: list[int], axes: list[int] | None) -> None:
    x = RNG.standard_normal((8, 6, 3)).astype(np.float32)
    attrs = {"axes": axes} if axes is not None else {}
    m = _model("CenterCropPad", {"x": x}, {"shape": np.array(shape, np.int64)}, opset=18, **attrs)
    np.testing.assert_array_equal(_run(m, {"x": x}), _reference(m, {"x": x}))


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_compress_with_a_constant_condition(axis: int | None) -> None:
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    n = x.size if axis is None else x.shape[axis]
    cond = RNG.integers(0, 2, n - 1).astype(bool)  # shorter than the axis: the rest is dropped
    cond[0] = True
    attrs = {} if axis is None else {"axis": axis}
    m = _model("Compress", {"x": x}, {"cond": cond}, opset=17, **attrs)
    np.testing.assert_array_equal(_run(m, {"x": x}), np.compress(cond, x, axis=axis))


def test_compress_with_a_run_time_condition_runs_on_the_host() -> None:
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    m = _model("Compress", {"x": x, "cond": np.ones(4, bool)}, opset=17, axis=0)
    with pytest.raises(UnsupportedOpError, match="Compress"):
        vnpu.from_onnx(m, strict=True)


@pytest.mark.parametrize("shape", [(1, 1), (2, 2), (3, 3), (5, 4, 4), (2, 3, 3, 3)])
def test_det_matches_numpy(shape: tuple[int, ...]) -> None:
    x = RNG.standard_normal(shape).astype(np.float32)
    m = _model("Det", {"x": x}, opset=17)
    out = _run(m, {"x": x})
    want = np.linalg.det(x.astype(np.float64))
    assert out.shape == want.shape
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


def test_det_of_a_5x5_runs_on_the_host() -> None:
    x = RNG.standard_normal((5, 5)).astype(np.float32)
    with pytest.raises(UnsupportedOpError, match="Det"):
        vnpu.from_onnx(_model("Det", {"x": x}, opset=17), strict=True)


# -- TfIdfVectorizer -----------------------------------------------------------------------------
POOL = dict(ngram_counts=[0, 4, 8], ngram_indexes=[3, 0, 1, 2, 6, 5, 4, 7],  # output columns out of pool order
            pool_int64s=[2, 3, 5, 4, 5, 6, 7, 8, 3, 5, 4, 2, 5, 6])  # 4 unigrams, 2 bigrams, 2 trigrams


@pytest.mark.parametrize("mode,weights", [("TF", None), ("IDF", None), ("IDF", "w"), ("TFIDF", "w"), ("TFIDF", None)])
@pytest.mark.parametrize("lo,hi,skip", [(1, 1, 0), (1, 2, 3), (2, 3, 1), (3, 3, 2)])
@pytest.mark.parametrize("shape", [(14,), (3, 8)])
def test_tfidf_vectorizer_matches_reference(mode: str, weights: str | None, lo: int, hi: int, skip: int,
                                            shape: tuple[int, ...]) -> None:
    x = RNG.integers(2, 9, shape).astype(np.int64)
    attrs = dict(POOL, mode=mode, min_gram_length=lo, max_gram_length=hi, max_skip_count=skip)
    if weights:
        attrs["weights"] = list(RNG.uniform(0.5, 2.0, 8).astype(np.float32))
    m = _model("TfIdfVectorizer", {"x": x}, opset=17, **attrs)
    out = _run(m, {"x": x})
    # onnxruntime: onnx.reference's IDF / TFIDF needs a weights attribute
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-6)


def test_dft_too_long_for_a_dense_matrix_runs_on_the_host() -> None:
    x = np.zeros((1, 4096, 2), np.float32)
    m = _model("DFT", {"x": x}, opset=17, axis=1)
    with pytest.raises(UnsupportedOpError, match="DFT"):
        vnpu.from_onnx(m, strict=True)
