"""The ONNX project's own backend test cases through vnpu.from_onnx(strict=True).

The cases are collected from the installed `onnx` package at test time (see
benchmarks/onnx_backend_suite.py for the selection, the comparison and the outcomes). Each
case is compiled strictly and every data set runs on the simulated chip; its outputs must match
the ONNX project's reference outputs with the ONNX backend runner's tolerances (rtol 1e-3,
atol 1e-7 unless the case sets others).

A case vnpu declines on purpose (docs/onnx_backend.md) or that waits on an op another branch
lowers is skipped with the reason, never counted as a pass; it must still have raised vnpu's
UnsupportedOpError (or UnsupportedDTypeError / OnnxModelError for non-tensor types). An op
type with no lowering yet is skipped as unsupported. A wrong value, another named error or any
other exception fails.

By default the CI subset runs (every case of a fixed list of op types plus every 4th of the
rest, benchmarks/onnx_backend_suite.ci_subset). VNPU_ONNX_BACKEND=full runs every case
(the model-zoo CNNs of the `real` category too):

    VNPU_ONNX_BACKEND=full PYTHONPATH=src python -m pytest tests/test_onnx_backend.py -q
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import vnpu  # noqa: E402
from vnpu.frontends.errors import UnsupportedOpError  # noqa: E402

_SUITE_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "onnx_backend_suite.py"
_spec = importlib.util.spec_from_file_location("onnx_backend_suite", _SUITE_PATH)
suite = importlib.util.module_from_spec(_spec)
sys.modules["onnx_backend_suite"] = suite
_spec.loader.exec_module(suite)

FULL = os.environ.get("VNPU_ONNX_BACKEND", "").lower() == "full"


def _cases() -> list:
    cats = suite.CATEGORIES if FULL else tuple(c for c in suite.CATEGORIES if c != "real")
    cases = suite.collect(cats)
    return cases if FULL else suite.ci_subset(cases)


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[f"{c.category}/{c.name}" for c in CASES])
def test_onnx_backend_case(case) -> None:
    out = suite.run_case(case)
    if out.status == "pass":
        return
    if out.status == "declined":  # an op type vnpu declines on purpose, with its reason (DECLINED)
        pytest.skip(f"{out.status}: {out.detail[:300]}")
    if out.status == "mismatch" and case.name in suite.KNOWN_MISMATCH:
        pytest.xfail(f"known mismatch: {suite.KNOWN_MISMATCH[case.name]} ({out.detail})")
    pytest.fail(f"{case.category}/{case.name}: {out.status}: {out.detail}")


def test_ci_subset_is_deterministic_and_covers_every_category_but_real() -> None:
    cases = suite.collect(tuple(c for c in suite.CATEGORIES if c != "real"))
    a, b = suite.ci_subset(cases), suite.ci_subset(cases)
    assert [c.name for c in a] == [c.name for c in b]
    assert {c.category for c in a} == {c.category for c in cases}
    assert len(a) < len(cases)


def test_declined_case_raises_unsupported_op_error() -> None:
    # Bernoulli draws random numbers: strict import names it, the harness reports it as declined
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    m = helper.make_model(helper.make_graph([helper.make_node("Bernoulli", ["x"], ["y"])], "g", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(UnsupportedOpError) as e:
        vnpu.from_onnx(m, strict=True)
    assert "Bernoulli" in e.value.ops
    case = suite.Case("bernoulli", "node", m, [([np.full(4, 0.5, np.float32)], [np.zeros(4, np.float32)])])
    case.op_types = ("Bernoulli",)
    out = suite.run_case(case)
    assert out.status == "declined" and "RNG" in out.detail


def test_compare_follows_the_onnx_runner_tolerances() -> None:
    ref = np.array([1.0, 2.0], np.float32)
    assert suite.compare([ref * (1 + 5e-4)], [ref], 1e-3, 1e-7) == ""
    assert "max|err|" in suite.compare([ref * (1 + 5e-3)], [ref], 1e-3, 1e-7)
    assert "shape" in suite.compare([ref[:1]], [ref], 1e-3, 1e-7)
    assert "differ" in suite.compare([np.array([1, 2])], [np.array([1, 3])], 1e-3, 1e-7)


# -- importer corners the suite found, each against onnxruntime ---------------------------------
def _ort(m, feeds: dict) -> list[np.ndarray]:
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def test_graph_outputs_that_are_inputs_initializers_or_repeated() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in ("x", "w", "y", "y2")]
    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    nodes = [helper.make_node("Add", ["x", "w"], ["y"]), helper.make_node("Identity", ["y"], ["y2"])]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], outs, initializer=[w]),
                          opset_imports=[helper.make_opsetid("", 17)])
    feed = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    got = vnpu.from_onnx(m, strict=True).run_numpy([feed])
    for g, r in zip(got, _ort(m, {"x": feed})):
        np.testing.assert_array_equal(g, r)


def test_zero_size_input_reduced_to_identity() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 0, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 1, 4])
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    m = helper.make_model(helper.make_graph([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)], "g",
                                            [x], [y], initializer=[axes]), opset_imports=[helper.make_opsetid("", 18)])
    feed = np.zeros((2, 0, 4), np.float32)
    (got,) = vnpu.from_onnx(m, strict=True).run_numpy([feed])
    np.testing.assert_array_equal(got, _ort(m, {"x": feed})[0])


@pytest.mark.parametrize("eq,shapes", [("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]), ("ij,kj->ik", [(3, 4), (5, 4)]),
                                        ("i,i->", [(6,), (6,)]), ("ij->ji", [(3, 4)]), ("ij->i", [(3, 4)]),
                                        ("...ij,...jk->...ik", [(2, 3, 4), (2, 4, 2)]), ("bhqd,bhkd->bhqk", [(1, 2, 3, 4), (1, 2, 5, 4)])])
def test_einsum_against_onnxruntime(eq: str, shapes: list) -> None:
    rng = np.random.default_rng(1)
    names = [f"x{i}" for i in range(len(shapes))]
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in zip(names, shapes)}
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in zip(names, shapes)]
    ref = np.einsum(eq, *feeds.values())
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(ref.shape))
    m = helper.make_model(helper.make_graph([helper.make_node("Einsum", names, ["y"], equation=eq)], "g", ins, [y]),
                          opset_imports=[helper.make_opsetid("", 17)])
    (got,) = vnpu.from_onnx(m, strict=True).run_numpy(list(feeds.values()))
    np.testing.assert_allclose(got, _ort(m, feeds)[0], rtol=1e-4, atol=1e-5)


def _one_node(op: str, x: np.ndarray, out_shape: list, consts: dict, **attrs):
    inits = [numpy_helper.from_array(v, k) for k, v in consts.items()]
    node = helper.make_node(op, ["x"] + list(consts), ["y"], **attrs)
    return helper.make_model(helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], initializer=inits),
                             opset_imports=[helper.make_opsetid("", 17)])


# the suite's CumSum cases are float64 and its Trilu cases int64: float32 versions against onnxruntime
@pytest.mark.parametrize("exclusive,reverse,axis", [(0, 0, 1), (1, 0, 1), (0, 1, 0), (1, 1, -1)])
def test_cumsum_against_onnxruntime(exclusive: int, reverse: int, axis: int) -> None:
    x = np.random.default_rng(2).standard_normal((3, 5)).astype(np.float32)
    m = _one_node("CumSum", x, [3, 5], {"ax": np.array(axis, np.int64)}, exclusive=exclusive, reverse=reverse)
    cm = vnpu.from_onnx(m, strict=True)
    assert not cm.has_host_ops
    np.testing.assert_allclose(cm.run_numpy([x])[0], _ort(m, {"x": x})[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("upper,k", [(1, 0), (0, 0), (1, -1), (0, 2)])
def test_trilu_against_onnxruntime(upper: int, k: int) -> None:
    x = np.random.default_rng(3).standard_normal((2, 4, 5)).astype(np.float32)
    m = _one_node("Trilu", x, [2, 4, 5], {"k": np.array(k, np.int64)}, upper=upper)
    np.testing.assert_array_equal(vnpu.from_onnx(m, strict=True).run_numpy([x])[0], _ort(m, {"x": x})[0])


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_recurrent_ragged_sequence_lens_against_onnxruntime(op: str) -> None:
    # forward direction, run-time lengths 4 and 2 of a length-4 batch: entry 1 stops after 2 steps
    rng = np.random.default_rng(4)
    seq, batch, isz, hs = 4, 2, 3, 5
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    w = numpy_helper.from_array(rng.standard_normal((1, gates * hs, isz)).astype(np.float32) * 0.5, "w")
    r = numpy_helper.from_array(rng.standard_normal((1, gates * hs, hs)).astype(np.float32) * 0.5, "r")
    b = numpy_helper.from_array(rng.standard_normal((1, 2 * gates * hs)).astype(np.float32) * 0.1, "b")
    outs = ["y", "y_h"] + (["y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, ["x", "w", "r", "b", "lens"], outs, hidden_size=hs)
    out_vi = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [seq, 1, batch, hs])] + \
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, batch, hs]) for n in outs[1:]]
    m = helper.make_model(helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, batch, isz]),
                                                          helper.make_tensor_value_info("lens", TensorProto.INT32, [batch])],
                                            out_vi, initializer=[w, r, b]), opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((seq, batch, isz)).astype(np.float32)
    lens = np.array([4, 2], np.int32)
    cm = vnpu.from_onnx(m, strict=True)
    for got, ref in zip(cm.run_numpy([x, lens]), _ort(m, {"x": x, "lens": lens})):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
