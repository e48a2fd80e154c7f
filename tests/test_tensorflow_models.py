"""Keras applications (weights=None, fixed seed) and a Keras transformer encoder block on the
chip against TensorFlow's own output: fp32 max|err| <= 1e-4 x max|ref|, bf16 cosine >= 0.999.

Inputs are 96x96 (the applications accept it; 224x224 only makes the functional
simulation slower) at batch 1, and the classifiers return logits (classifier_activation=None):
a softmax over 1000 random-weight logits is near-uniform and would hide errors.
Each model is converted with tf2onnx once and compiled for both dtypes."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
pytest.importorskip("tf2onnx")

import vnpu  # noqa: E402
from vnpu.frontends.errors import FallbackWarning  # noqa: E402
from vnpu.frontends.tensorflow import tensorflow_to_onnx  # noqa: E402
from vnpu.report.numerics import compare  # noqa: E402

SEED = 0
IMAGE = (1, 96, 96, 3)


def encoder_block(seq: int = 16, dim: int = 64, heads: int = 4, ff: int = 128) -> keras.Model:
    """Post-norm transformer encoder block: multi-head self-attention, exact GELU feed-forward."""
    inp = keras.Input((seq, dim), name="tokens")
    a = keras.layers.MultiHeadAttention(heads, dim // heads)(inp, inp)
    x = keras.layers.LayerNormalization(epsilon=1e-6)(inp + a)
    f = keras.layers.Dense(ff, activation="gelu")(x)
    f = keras.layers.Dense(dim)(f)
    y = keras.layers.LayerNormalization(epsilon=1e-6)(x + f)
    return keras.Model(inp, y, name="encoder_block")


BUILDERS = {
    "MobileNetV2": (lambda: keras.applications.MobileNetV2(weights=None, input_shape=IMAGE[1:], classifier_activation=None), IMAGE),
    "ResNet50": (lambda: keras.applications.ResNet50(weights=None, input_shape=IMAGE[1:], classifier_activation=None), IMAGE),
    "EfficientNetB0": (lambda: keras.applications.EfficientNetB0(weights=None, input_shape=IMAGE[1:],
                                                                 classifier_activation=None), IMAGE),
    "encoder_block": (encoder_block, (1, 16, 64)),
}


@pytest.fixture(scope="module", params=list(BUILDERS))
def converted(request):
    build, shape = BUILDERS[request.param]
    keras.utils.set_random_seed(SEED)
    model = build()
    x = np.random.default_rng(SEED).standard_normal(shape).astype(np.float32)
    ref = model(x, training=False).numpy()
    proto, _ = tensorflow_to_onnx(model)
    return request.param, proto, x, ref


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_keras_model_matches_tensorflow(converted, dtype):
    name, proto, x, ref = converted
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)  # the whole model runs on the chip
        cm = vnpu.from_onnx(proto, dtype=dtype, name=name)
    if name == "encoder_block":
        # Keras' moments layer norm and erfc GELU come back as the chip's norm kernel and a matmul epilogue
        kinds = [launch.kind for launch in cm.program.launches]
        assert kinds.count("norm") == 3 and "reduce" not in kinds  # 2 layer norms + the attention softmax
        assert "gelu" in cm.info.ir_text and "erf" not in cm.info.ir_text
    (out,) = cm.run_numpy([x])
    num = compare([out], [ref], dtype)
    assert num.passed, f"{name} {dtype}: max rel err {num.max_rel_err:.2e}, cosine {num.cosine:.6f}"
    # The criteria are relative, and random-weight logits are small (Keras' default BN statistics
    # shrink the activations: ResNet50 ~1e-11, EfficientNetB0 ~1e-8) but far from fp32/bf16
    # underflow; check that the reference is a varied vector, not a constant or zero.
    assert np.all(np.isfinite(ref)) and float(np.abs(ref).max()) > 1e-30
    assert float(np.std(ref)) > 0.1 * float(np.abs(ref).max())


def test_nhwc_model_has_one_layout_transpose():
    """tf2onnx turns the NHWC Keras graph into NCHW convs with a transpose at the input; the
    chip program keeps that one transpose and no other copies around the convolutions."""
    keras.utils.set_random_seed(SEED)
    inp = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    h = keras.layers.Conv2D(8, 3, strides=2, padding="same")(h)
    h = keras.layers.BatchNormalization()(h)
    out = keras.layers.ReLU()(h)
    model = keras.Model(inp, out)
    cm = vnpu.from_tensorflow(model)
    kinds = [launch.kind for launch in cm.program.launches]
    assert kinds.count("conv") == 2
    x = np.random.default_rng(1).standard_normal((1, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(cm(x), model(x, training=False).numpy(), rtol=0, atol=1e-5)
    assert "permute" in cm.info.ir_text or "copy" in kinds  # the NHWC -> NCHW input transpose


def test_keras_grouped_conv_converts_to_a_grouped_conv():
    """Keras 3 runs grouped convolutions (ConvNeXt's depthwise 7x7 is Conv2D(groups=C)) in an
    XLA-compiled tf.function, which tf2onnx left as an opaque StatefulPartitionedCall; the
    converter traces them as plain convolutions, so they reach the chip as grouped Convs."""
    keras.utils.set_random_seed(SEED)
    inp = keras.Input((12, 12, 8))
    h = keras.layers.Conv2D(8, 7, padding="same", groups=8)(inp)  # depthwise, as ConvNeXt
    out = keras.layers.Conv2D(12, 3, groups=4, activation="relu")(h)
    model = keras.Model(inp, out)
    proto, _ = tensorflow_to_onnx(model)
    ops = [n.op_type for n in proto.graph.node]
    assert "StatefulPartitionedCall" not in ops and ops.count("Conv") == 2
    groups = sorted(a.i for n in proto.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group")
    assert groups == [4, 8]
    cm = vnpu.from_tensorflow(model, strict=True)
    x = np.random.default_rng(2).standard_normal((1, 12, 12, 8)).astype(np.float32)
    ref = model(x, training=False).numpy()
    np.testing.assert_allclose(cm(x), ref, rtol=0, atol=1e-5 * max(1.0, float(np.abs(ref).max())))
