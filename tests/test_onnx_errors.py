"""ONNX bad input and host fallback: malformed files, unsupported ops, dynamic dims without a
shape, a missing extra; and `vnpu run model.onnx` end to end."""
from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto as T, helper, numpy_helper  # noqa: E402

import vnpu  # noqa: E402
from vnpu.cli import app  # noqa: E402
from vnpu.frontends.errors import FallbackWarning, MissingExtraError, UnsupportedOpError  # noqa: E402
from vnpu.frontends.onnx import DynamicShapeError, OnnxModelError  # noqa: E402

runner = CliRunner()


def _model(nodes: list, inputs: list, outputs: list, inits: list | None = None, opset: int = 17) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits or [])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _det_model() -> onnx.ModelProto:
    """Relu -> Det of 5x5 matrices (past the on-chip cofactor expansion, n <= 4) -> Mul: the middle node must go to the host."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="first_relu"),
             helper.make_node("Det", ["r"], ["c"], name="my_det"),
             helper.make_node("Mul", ["c", "two"], ["y"], name="scale")]
    inits = [numpy_helper.from_array(np.array(2, np.float32), "two")]
    return _model(nodes, [helper.make_tensor_value_info("x", T.FLOAT, [2, 5, 5])],
                  [helper.make_tensor_value_info("y", T.FLOAT, [2])], inits)


def _dynamic_model() -> onnx.ModelProto:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "w")
    return _model(nodes, [helper.make_tensor_value_info("x", T.FLOAT, ["batch", "seq", 8])],
                  [helper.make_tensor_value_info("y", T.FLOAT, ["batch", "seq", 4])], [w])


def test_garbage_file_is_named(tmp_path):
    p = tmp_path / "junk.onnx"
    p.write_bytes(b"\x08\x07this is not protobuf\xff\xff\xff")
    with pytest.raises(OnnxModelError, match="junk.onnx"):
        vnpu.from_onnx(p)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(OnnxModelError, match="no such ONNX file"):
        vnpu.from_onnx(tmp_path / "nope.onnx")


def test_invalid_graph_names_the_problem():
    # a node reading a tensor nobody produces
    m = _model([helper.make_node("Relu", ["ghost"], ["y"], name="r")],
               [helper.make_tensor_value_info("x", T.FLOAT, [2])], [helper.make_tensor_value_info("y", T.FLOAT, [2])])
    with pytest.raises(OnnxModelError, match="ghost"):
        vnpu.from_onnx(m)


def test_unsupported_op_strict_names_op_type_and_node():
    with pytest.raises(UnsupportedOpError) as ei:
        vnpu.from_onnx(_det_model(), strict=True)
    msg = str(ei.value)
    assert "Det" in msg and "my_det" in msg and "strict" in msg
    assert ei.value.ops == {"Det": 1}


def test_unsupported_op_runs_on_host_with_a_warning_naming_it():
    m = _det_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cm = vnpu.from_onnx(m)
    msgs = [str(w.message) for w in caught if issubclass(w.category, FallbackWarning)]
    assert len(msgs) == 1 and "Det" in msgs[0] and "my_det" in msgs[0]
    assert cm.info.fallback_ops == {"Det": 1} and cm.has_host_ops
    xv = np.random.default_rng(3).standard_normal((2, 5, 5)).astype(np.float32)
    (ref,) = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": xv})
    np.testing.assert_allclose(cm(xv), ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ref, 2 * np.linalg.det(np.maximum(xv, 0)), rtol=1e-5, atol=1e-6)  # the reference is what we think


def test_dynamic_dim_without_shape_is_named():
    with pytest.raises(DynamicShapeError) as ei:
        vnpu.from_onnx(_dynamic_model())
    msg = str(ei.value)
    assert "'x'" in msg and "dim 0" in msg and "batch" in msg and "input_shapes" in msg


def test_dynamic_dims_with_input_shapes_compile_and_match():
    m = _dynamic_model()
    cm = vnpu.from_onnx(m, input_shapes={"x": (2, 5, 8)})
    xv = np.random.default_rng(1).standard_normal((2, 5, 8)).astype(np.float32)
    (ref,) = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": xv})
    np.testing.assert_allclose(cm(xv), ref, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="not inputs of the model"):
        vnpu.from_onnx(m, input_shapes={"y": (1, 1, 8)})
    with pytest.raises(ValueError, match="rank"):
        vnpu.from_onnx(m, input_shapes={"x": (2, 8)})


def test_missing_extra_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(MissingExtraError, match=r'pip install "vnpu\[onnx\]"'):
        vnpu.from_onnx(b"whatever")


def test_old_opset_is_upgraded():
    nodes = [helper.make_node("ReduceSum", ["x"], ["y"], axes=[1], keepdims=0, name="rs")]  # axes attr: opset <= 12
    m = _model(nodes, [helper.make_tensor_value_info("x", T.FLOAT, [3, 4])], [helper.make_tensor_value_info("y", T.FLOAT, [3])],
               opset=11)
    xv = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_allclose(vnpu.from_onnx(m)(xv), xv.sum(1))


# -- vnpu run model.onnx ------------------------------------------------------------------
def test_cli_runs_an_onnx_file_with_json(tmp_path):
    path = tmp_path / "det.onnx"
    onnx.save(_det_model(), str(path))
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["run", str(path), "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "PASS" in res.output and "onnxruntime" in res.output
    rep = json.loads(out.read_text())
    assert rep["model"] == "det" and rep["numerics"]["reference"] == "onnxruntime fp32"
    assert rep["numerics"]["passed"] is True and rep["fallback_ops"] == {"Det": 1}
    res = runner.invoke(app, ["run", str(path), "--strict"])
    assert res.exit_code == 2 and "Det" in res.output and "my_det" in res.output


def test_cli_dynamic_dims(tmp_path):
    path = tmp_path / "dyn.onnx"
    onnx.save(_dynamic_model(), str(path))
    res = runner.invoke(app, ["run", str(path)])  # batch takes --batch, seq has no size
    assert res.exit_code == 2
    assert "'x' dim 1 (seq)" in res.output and "--input-shape" in res.output
    res = runner.invoke(app, ["run", str(path), "--input-shape", "x=3,7,8", "--dtype", "bf16"])
    assert res.exit_code == 0, res.output
    assert "PASS" in res.output


def test_cli_malformed_onnx_is_one_error_line(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"garbage")
    res = runner.invoke(app, ["run", str(path)])
    assert res.exit_code == 2
    assert res.output.count("error:") == 1 and "bad.onnx" in res.output and "Traceback" not in res.output
