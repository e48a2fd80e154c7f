"""The ONNX elementwise math family on the chip (strict=True) against onnxruntime."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto as T, helper  # noqa: E402

import vnpu  # noqa: E402

RNG = np.random.default_rng(7)


def _model(op: str, inputs: dict[str, np.ndarray], opset: int = 18, **attrs: Any) -> Any:
    ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape)) for n, a in inputs.items()]
    node = helper.make_node(op, list(inputs), ["y"], name=f"{op.lower()}_0", **attrs)
    g = helper.make_graph([node], op, ins, [helper.make_tensor_value_info("y", T.UNDEFINED, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m)


def _x(lo: float = -3.0, hi: float = 3.0) -> np.ndarray:
    return RNG.uniform(lo, hi, (2, 3, 5)).astype(np.float32)


CASES = [
    ("Tan", {"a": _x(-1.2, 1.2)}, {}), ("Asin", {"a": _x(-0.99, 0.99)}, {}), ("Acos", {"a": _x(-0.99, 0.99)}, {}),
    ("Atan", {"a": _x()}, {}), ("Sinh", {"a": _x()}, {}), ("Cosh", {"a": _x()}, {}), ("Asinh", {"a": _x()}, {}),
    ("Acosh", {"a": _x(1.0, 5.0)}, {}), ("Atanh", {"a": _x(-0.95, 0.95)}, {}), ("Softsign", {"a": _x()}, {}),
    ("Mish", {"a": _x()}, {}), ("Selu", {"a": _x()}, {}), ("Selu", {"a": _x()}, {"alpha": 2.0, "gamma": 0.5}),
    ("Celu", {"a": _x()}, {"alpha": 0.7}), ("Softplus", {"a": _x(-30, 30)}, {}),
    ("ThresholdedRelu", {"a": _x()}, {"alpha": 0.4}), ("Shrink", {"a": _x()}, {"lambd": 0.6}),
    ("Shrink", {"a": _x()}, {"lambd": 0.6, "bias": 0.6}), ("Shrink", {"a": _x()}, {"lambd": 0.6, "bias": 0.2}),
    ("Mod", {"a": _x(-9, 9), "b": _x(0.5, 2)}, {"fmod": 1}),
    ("Mod", {"a": RNG.integers(-20, 20, (2, 3, 5)).astype(np.int64), "b": RNG.integers(1, 6, (2, 3, 5)).astype(np.int64)}, {}),
]


def _specials() -> np.ndarray:
    a = _x()
    a.flat[[0, 4, 9]] = [np.nan, np.inf, -np.inf]
    return a


CASES += [("IsNaN", {"a": _specials()}, {}), ("IsInf", {"a": _specials()}, {}),
          ("IsInf", {"a": _specials()}, {"detect_negative": 0}), ("IsInf", {"a": _specials()}, {"detect_positive": 0})]


@pytest.mark.parametrize("op,inputs,attrs", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_math_op_matches_onnxruntime(op: str, inputs: dict, attrs: dict) -> None:
    m = _model(op, inputs, **attrs)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)[0]
    out = vnpu.from_onnx(m, strict=True).run_numpy(list(inputs.values()))[0]
    assert out.shape == ref.shape and out.dtype == ref.dtype
    if ref.dtype.kind == "f":
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(out, ref)
