"""vnpu.from_tensorflow on each kind of TF model (Keras model, .keras file, tf.function,
SavedModel directory), TF/NumPy in -> same kind out, shape errors, `vnpu run` on Keras and
SavedModel files, and Keras on the torch backend through torch.compile(backend="vnpu")."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
pytest.importorskip("tf2onnx")

import vnpu  # noqa: E402
from vnpu.cli import app  # noqa: E402
from vnpu.frontends.errors import MissingExtraError  # noqa: E402
from vnpu.frontends.onnx import DynamicShapeError  # noqa: E402

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def small_cnn() -> keras.Model:
    keras.utils.set_random_seed(0)
    inp = keras.Input((24, 24, 3), name="image")
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu6")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    out = keras.layers.Dense(5)(h)
    return keras.Model(inp, out, name="small_cnn")


@pytest.fixture(scope="module")
def cnn():
    return small_cnn()


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).standard_normal((2, 24, 24, 3)).astype(np.float32)


def test_keras_model_tf_in_tf_out_numpy_in_numpy_out(cnn, image):
    cm = vnpu.from_tensorflow(cnn, input_signature=[tf.TensorSpec((2, 24, 24, 3), tf.float32)])
    ref = cnn(image, training=False).numpy()
    y_tf = cm(tf.constant(image))
    assert isinstance(y_tf, tf.Tensor)
    np.testing.assert_allclose(y_tf.numpy(), ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    y_np = cm(image)
    assert isinstance(y_np, np.ndarray)
    np.testing.assert_array_equal(y_np, y_tf.numpy())


def test_keras_model_without_signature_takes_batch_1(cnn, image):
    cm = vnpu.from_tensorflow(cnn)
    assert cm.info.input_shapes == [(1, 24, 24, 3)]
    np.testing.assert_allclose(cm(image[:1]), cnn(image[:1], training=False).numpy(), rtol=0, atol=1e-5)


def test_tf_function_with_its_own_signature():
    w = tf.constant(np.random.default_rng(2).standard_normal((8, 4)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec((3, 8), tf.float32), tf.TensorSpec((3, 4), tf.float32)])
    def f(a, b):
        return tf.nn.softmax(tf.matmul(a, w) * b, axis=-1), tf.reduce_sum(tf.tanh(a), axis=1)

    a = np.random.default_rng(3).standard_normal((3, 8)).astype(np.float32)
    b = np.random.default_rng(4).standard_normal((3, 4)).astype(np.float32)
    cm = vnpu.from_tensorflow(f)
    got = cm(tf.constant(a), tf.constant(b))
    want = f(tf.constant(a), tf.constant(b))
    assert isinstance(got, tuple) and len(got) == 2
    for g, r in zip(got, want):
        np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=0, atol=1e-5)


def test_dynamic_dims_are_named():
    @tf.function(input_signature=[tf.TensorSpec((None, None, 8), tf.float32, name="seq")])
    def f(x):
        return x * 2.0

    with pytest.raises(DynamicShapeError, match=r"seq dim 1 is dynamic"):
        vnpu.from_tensorflow(f)  # the unknown batch dim is taken as 1, the sequence dim is not
    with pytest.raises(DynamicShapeError, match=r"dim 0 is dynamic"):
        vnpu.from_tensorflow(f, input_signature=[tf.TensorSpec((None, 4, 8), tf.float32, name="seq")])
    cm = vnpu.from_tensorflow(f, input_signature=[tf.TensorSpec((2, 4, 8), tf.float32, name="seq")])
    x = np.ones((2, 4, 8), np.float32)
    np.testing.assert_array_equal(cm(x), 2 * x)


def test_keras_file_and_saved_model_dir(cnn, image, tmp_path):
    kfile = tmp_path / "cnn.keras"
    cnn.save(kfile)
    sm = tmp_path / "cnn_saved"
    cnn.export(str(sm), verbose=False)
    ref = cnn(image[:1], training=False).numpy()
    for src in (kfile, sm):
        cm = vnpu.from_tensorflow(src)
        np.testing.assert_allclose(cm(image[:1]), ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    with pytest.raises(ValueError, match="saved_model.pb"):
        vnpu.from_tensorflow(tmp_path)


def test_cli_runs_keras_file_and_saved_model(cnn, tmp_path):
    kfile = tmp_path / "cnn.keras"
    cnn.save(kfile)
    sm = tmp_path / "cnn_saved"
    cnn.export(str(sm), verbose=False)
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["run", str(kfile), "--batch", "2", "--json", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    assert rep["numerics"]["reference"] == "TensorFlow fp32" and rep["numerics"]["passed"] is True
    assert rep["batch"] == 2 and rep["model"] == "cnn"
    res = runner.invoke(app, ["run", str(sm), "--dtype", "bf16"])
    assert res.exit_code == 0, res.output
    assert "PASS" in res.output


def test_cli_keras_dynamic_dim_needs_input_shape(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((None, 8), name="tokens")
    model = keras.Model(inp, keras.layers.Dense(4)(inp))
    path = tmp_path / "dyn.keras"
    model.save(path)
    res = runner.invoke(app, ["run", str(path)])
    assert res.exit_code == 2 and "'tokens' dim 1" in res.output and "--input-shape" in res.output
    res = runner.invoke(app, ["run", str(path), "--input-shape", "tokens=1,6,8"])
    assert res.exit_code == 0, res.output


def test_missing_tensorflow_extra(monkeypatch, cnn):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)
    with pytest.raises(MissingExtraError, match=r'pip install "vnpu\[tensorflow\]"'):
        vnpu.from_tensorflow(cnn)


def test_keras_torch_backend_through_torch_compile():
    """Keras 3 on the PyTorch backend builds torch.nn.Modules: torch.compile(backend="vnpu")
    runs them on the chip. The backend is picked at import, hence the subprocess."""
    script = textwrap.dedent("""
        import os, warnings
        os.environ["KERAS_BACKEND"] = "torch"
        warnings.simplefilter("ignore")
        import keras, torch
        import vnpu.api
        calls = []
        def counting(gm, example_inputs, **kw):
            calls.append(1)
            return vnpu.api.vnpu_backend(gm, example_inputs, **kw)
        keras.utils.set_random_seed(0)
        inp = keras.Input((16, 16, 3))
        h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
        h = keras.layers.GlobalAveragePooling2D()(h)
        model = keras.Model(inp, keras.layers.Dense(10)(h))
        assert isinstance(model, torch.nn.Module)
        x = torch.randn(2, 16, 16, 3)
        ref = model(x, training=False)
        out = torch.compile(model, backend=counting)(x, training=False)
        err = (out - ref).abs().max().item() / ref.abs().max().item()
        out2 = torch.compile(model, backend="vnpu")(x, training=False)
        err2 = (out2 - ref).abs().max().item() / ref.abs().max().item()
        print("RESULT", len(calls), err, err2)
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT")]
    assert res.returncode == 0 and line, res.stderr[-3000:]
    _, calls, err, err2 = line[0].split()
    assert int(calls) >= 1  # the graph went through the vnpu backend
    assert float(err) <= 1e-4 and float(err2) <= 1e-4
