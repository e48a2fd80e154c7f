"""NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss on the chip (strict=True) against onnxruntime."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto as T, helper, numpy_helper  # noqa: E402

import vnpu  # noqa: E402

RNG = np.random.default_rng(11)


def _model(op: str, inputs: dict[str, np.ndarray], n_out: int, opset: int, weight_init: np.ndarray | None,
           **attrs: Any) -> Any:
    ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape)) for n, a in inputs.items()]
    names = list(inputs)
    inits = []
    if weight_init is not None:  # the class weights as an initializer rather than a runtime input
        inits.append(numpy_helper.from_array(weight_init, "w_init"))
        names.append("w_init")
    outs = ["loss", "log_prob"][:n_out]
    node = helper.make_node(op, names, outs, name=f"{op.lower()}_0", **attrs)
    g = helper.make_graph([node], op, ins, [helper.make_tensor_value_info(o, T.UNDEFINED, None) for o in outs],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m)


def _case(shape: tuple[int, ...], ignore: int | None = None, ignore_at: int = 3) -> dict[str, np.ndarray]:
    """Scores (N, C, d...) and int64 targets (N, d...), `ignore_at` of them set to `ignore`."""
    x = RNG.standard_normal(shape).astype(np.float32)
    t = RNG.integers(0, shape[1], (shape[0],) + shape[2:]).astype(np.int64)
    if ignore is not None:
        t.flat[RNG.choice(t.size, ignore_at, replace=False)] = ignore
    return {"x": x, "t": t}


def _w(c: int) -> np.ndarray:
    return RNG.uniform(0.2, 2.0, (c,)).astype(np.float32)


# (op, inputs, number of outputs, opset, weight initializer, attributes)
CASES = [
    ("NegativeLogLikelihoodLoss", _case((4, 5)), 1, 13, None, {}),
    ("NegativeLogLikelihoodLoss", {**_case((3, 5, 4), ignore=2), "w": _w(5)}, 1, 13, None,
     {"reduction": "mean", "ignore_index": 2}),
    ("NegativeLogLikelihoodLoss", _case((2, 4, 3, 3), ignore=-1), 1, 13, _w(4), {"reduction": "sum", "ignore_index": -1}),
    ("NegativeLogLikelihoodLoss", _case((2, 4, 3, 3), ignore=9), 1, 13, None, {"reduction": "none", "ignore_index": 9}),
    ("NegativeLogLikelihoodLoss", _case((2, 4, 3, 3), ignore=1), 1, 13, None, {"reduction": "mean", "ignore_index": 1}),
    ("NegativeLogLikelihoodLoss", {**_case((3, 6, 2)), "w": _w(6)}, 1, 12, None, {"reduction": "none"}),
    ("SoftmaxCrossEntropyLoss", _case((4, 5)), 2, 13, None, {}),
    ("SoftmaxCrossEntropyLoss", {**_case((2, 3, 4, 2), ignore=0), "w": _w(3)}, 2, 13, None,
     {"reduction": "mean", "ignore_index": 0}),
    ("SoftmaxCrossEntropyLoss", _case((3, 5, 4), ignore=-5), 1, 13, _w(5), {"reduction": "none", "ignore_index": -5}),
    ("SoftmaxCrossEntropyLoss", _case((3, 5, 2, 2)), 1, 12, None, {"reduction": "sum"}),
]


@pytest.mark.parametrize("op,inputs,n_out,opset,weight_init,attrs", CASES,
                         ids=[f"{c[0][:3]}-{c[5].get('reduction', 'mean')}-{i}" for i, c in enumerate(CASES)])
def test_loss_matches_onnxruntime(op: str, inputs: dict, n_out: int, opset: int, weight_init: np.ndarray | None,
                                  attrs: dict) -> None:
    m = _model(op, inputs, n_out, opset, weight_init, **attrs)
    refs = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)
    outs = vnpu.from_onnx(m, strict=True).run_numpy(list(inputs.values()))
    assert len(outs) == len(refs) == n_out
    for out, ref in zip(outs, refs):
        assert out.shape == ref.shape and out.dtype == ref.dtype
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
