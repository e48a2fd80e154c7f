"""TensorFlow / Keras -> ONNX with tf2onnx; the ONNX frontend does the rest.

Accepted: a Keras 3 model, a `.keras` file, a tf.function, or a SavedModel directory.
Shapes must be static: an input signature fixes every dim; without one the model's own
input shapes are used, with an unknown batch dim taken as 1.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from vnpu.frontends.errors import require
from vnpu.frontends.onnx.importer import DynamicShapeError

OPSET = 17  # tf2onnx 1.17 supports opsets up to 18; 17 is what its tests cover best


class TensorFlowModelError(ValueError):
    """The object or path is not a TensorFlow model vnpu can convert."""


def _tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's start-up banner is not for our users
    return require("tensorflow", "tensorflow")


def _erfc_handler(ctx: Any, node: Any, name: str, args: Any) -> None:
    """tf2onnx has no conversion for TF's Erfc (Keras' exact gelu uses it): erfc(z) = 1 - erf(z)."""
    from tf2onnx import utils

    node.type = "Erf"
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.output[0]))
    one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype))
    sub = ctx.insert_new_node_on_output("Sub", node.output[0], name=utils.make_name(f"{node.name}_erfc"))
    ctx.replace_inputs(sub, [one.output[0], node.output[0]])
    ctx.copy_shape(node.output[0], sub.output[0])
    ctx.set_dtype(sub.output[0], ctx.get_dtype(node.output[0]))


def _spec_label(spec: Any, i: int) -> str:
    return getattr(spec, "name", None) or f"input {i}"


def _static_specs(specs: Sequence[Any], what: str, fill_batch: bool) -> list[Any]:
    """TensorSpecs with every dim known: a None batch dim becomes 1 when `fill_batch`, any
    other unknown dim is an error naming the input and the dim."""
    tf = _tf()
    out = []
    for i, s in enumerate(specs):
        if not isinstance(s, tf.TensorSpec):
            if isinstance(s, (tuple, list)) and all(isinstance(d, (int, type(None))) for d in s):
                s = tf.TensorSpec(tuple(s), tf.float32, name=f"input_{i}")
            else:
                raise TypeError(f"input_signature[{i}] must be a tf.TensorSpec or a shape tuple, not {type(s).__name__}")
        dims = list(s.shape.as_list()) if s.shape.rank is not None else None
        if dims is None:
            raise DynamicShapeError(f"{what}: {_spec_label(s, i)} has unknown rank; pass input_signature with its shape")
        if fill_batch and dims and dims[0] is None:
            dims[0] = 1
        for d, v in enumerate(dims):
            if v is None:
                raise DynamicShapeError(
                    f"{what}: {_spec_label(s, i)} dim {d} is dynamic ({dims}); pass input_signature="
                    f"[tf.TensorSpec((...), {s.dtype.name})] with every dim fixed (CLI: --input-shape NAME=D0,D1,...)")
        out.append(tf.TensorSpec(tuple(dims), s.dtype, name=s.name or f"input_{i}"))
    return out


def keras_input_specs(model: Any) -> list[Any]:
    tf = _tf()
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise DynamicShapeError(f"Keras model {model.name!r} has not been built (no known input shapes); "
                                "pass input_signature=[tf.TensorSpec(shape, dtype)]")
    return [tf.TensorSpec(tuple(x.shape), x.dtype, name=getattr(x, "name", None) or f"input_{i}")
            for i, x in enumerate(inputs)]


def _is_keras(model: Any) -> bool:
    try:
        import keras
    except ImportError:
        return False
    return isinstance(model, keras.Model)


def saved_model_function(path: Path) -> tuple[Any, list[Any], str]:
    """The SavedModel's serving signature as a tf.function taking positional tensors in the
    signature's (sorted) input order and returning its outputs in sorted-key order."""
    tf = _tf()
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as e:  # noqa: BLE001 - TF raises many kinds here
        raise TensorFlowModelError(f"{path}: cannot load the SavedModel ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0] if str(e) else ''})") from None
    sigs = getattr(loaded, "signatures", {})
    key = "serving_default" if "serving_default" in sigs else (next(iter(sigs)) if sigs else None)
    if key is None:
        raise TensorFlowModelError(f"{path}: the SavedModel has no signatures to call; export it with a serving "
                                   "signature (keras: model.export(path))")
    fn = sigs[key]
    _, kw = fn.structured_input_signature
    names = sorted(kw)
    specs = [tf.TensorSpec(kw[n].shape, kw[n].dtype, name=n) for n in names]

    def call(*xs: Any) -> Any:
        # through `loaded`, which owns the variables the signature reads (they die with it)
        out = loaded.signatures[key](**dict(zip(names, xs)))
        return [out[k] for k in sorted(out)] if isinstance(out, dict) else out

    return tf.function(call), specs, path.name


def load_keras_file(path: Path) -> Any:
    if not path.is_file():
        raise TensorFlowModelError(f"{path}: no such file")
    _tf()
    keras = require("keras", "tensorflow")
    try:
        return keras.models.load_model(str(path), compile=False)
    except Exception as e:  # noqa: BLE001 - Keras raises many kinds here
        raise TensorFlowModelError(f"{path}: cannot load the Keras model ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0] if str(e) else ''})") from None


@contextlib.contextmanager
def _keras_convs_traceable() -> Iterator[None]:
    """Keras 3's TensorFlow backend wraps grouped (depthwise-as-grouped) and channels-first 3-D
    convolutions in an XLA-compiled tf.function (plain TF kernels for them are broken on CPU);
    tf2onnx cannot look inside such a call and leaves an opaque StatefulPartitionedCall.
    Conversion only traces the graph and never runs it, so while it runs the convolution is
    emitted as a plain tf.nn.convolution, which tf2onnx turns into a grouped Conv."""
    try:
        from keras.src.backend.tensorflow import nn as keras_tf_nn
    except ImportError:  # Keras 2 / tf.keras: no XLA wrapper to undo
        yield
        return
    keras_conv = keras_tf_nn.conv
    tf = _tf()

    def plain_conv(inputs: Any, kernel: Any, strides: Any = 1, padding: str = "valid", data_format: Any = None,
                   dilation_rate: Any = 1) -> Any:
        fmt = keras_tf_nn._convert_data_format(data_format, len(inputs.shape))
        return tf.nn.convolution(inputs, kernel, strides, padding.upper(), data_format=fmt, dilations=dilation_rate)

    keras_tf_nn.conv = plain_conv
    try:
        yield
    finally:
        keras_tf_nn.conv = keras_conv


def tensorflow_to_onnx(model: Any, input_signature: Sequence[Any] | None = None) -> tuple[Any, str]:
    """(ONNX ModelProto, model name) for a Keras model, .keras file, tf.function or SavedModel dir."""
    tf = _tf()
    tf2onnx = require("tf2onnx", "tensorflow")
    handlers = {"Erfc": (_erfc_handler, [])}
    given = list(input_signature) if input_signature is not None else None
    if isinstance(model, (str, Path)):
        path = Path(model)
        if path.is_dir():
            if not (path / "saved_model.pb").exists():
                raise TensorFlowModelError(f"{path} is a directory without saved_model.pb: not a SavedModel")
            fn, specs, name = saved_model_function(path)
            sig = _static_specs(given or specs, f"SavedModel {path}", fill_batch=given is None)
            proto, _ = tf2onnx.convert.from_function(fn, input_signature=sig, opset=OPSET, custom_op_handlers=handlers)
            return proto, name
        if path.suffix in (".keras", ".h5"):
            model = load_keras_file(path)
        else:
            raise TensorFlowModelError(f"{path}: not a SavedModel directory or a .keras file")
    if _is_keras(model):
        sig = _static_specs(given or keras_input_specs(model), f"Keras model {model.name!r}", fill_batch=given is None)
        with _keras_convs_traceable():
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=sig, opset=OPSET, custom_op_handlers=handlers)
        return proto, model.name
    if hasattr(model, "get_concrete_function"):  # a tf.function
        own = getattr(model, "input_signature", None)
        if given is None and own is None:
            raise DynamicShapeError("a tf.function without an input_signature: pass input_signature=[tf.TensorSpec(...)]")
        sig = _static_specs(given or list(own), "tf.function", fill_batch=given is None)
        fn = model
        if own is not None and hasattr(model, "python_function"):
            # its own signature (with unknown dims) would win over ours: retrace the Python function
            fn = tf.function(model.python_function)
        with _keras_convs_traceable():  # a tf.function calling Keras layers
            proto, _ = tf2onnx.convert.from_function(fn, input_signature=sig, opset=OPSET, custom_op_handlers=handlers)
        _freeze_captures(proto, fn, sig)
        return proto, getattr(model, "__name__", None) or getattr(model, "name", None) or "tf_function"
    raise TypeError(f"from_tensorflow takes a Keras model, a tf.function, a SavedModel directory or a .keras file, "
                    f"not {type(model).__name__}")


def _freeze_captures(proto: Any, fn: Any, sig: list[Any]) -> None:
    """tf2onnx leaves eager tensors that a tf.function captures (not variables) as extra graph
    inputs; they are constants of the function, so they become initializers."""
    from onnx import numpy_helper

    extra = [i for i in proto.graph.input if i.name not in {s.name for s in sig}
             and i.name not in {t.name for t in proto.graph.initializer}]
    if not extra:
        return
    concrete = fn.get_concrete_function(*sig)
    values = {t.name: ext for ext, t in zip(concrete.graph.external_captures, concrete.graph.internal_captures)}
    for i in extra:
        if i.name in values and hasattr(values[i.name], "numpy"):
            proto.graph.initializer.append(numpy_helper.from_array(np.asarray(values[i.name].numpy()), i.name))
            proto.graph.input.remove(i)

