"""ONNX importer, op by op: small models built with onnx.helper, run on the chip
(strict: no host fallback) and compared with onnxruntime."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto as T, helper, numpy_helper  # noqa: E402

import vnpu  # noqa: E402

F = T.FLOAT
RNG = np.random.default_rng(1234)


@dataclass
class Case:
    """One ONNX model: its nodes, inputs (name -> array), initializers and outputs (name -> rank-free)."""

    id: str
    nodes: list
    inputs: dict[str, np.ndarray]
    outputs: list[str]
    inits: dict[str, np.ndarray] = field(default_factory=dict)
    opset: int = 17
    on_chip: bool = True  # strict=True must accept it


def _model(c: Case) -> Any:
    ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))
           for n, a in c.inputs.items()]
    outs = [helper.make_tensor_value_info(n, T.UNDEFINED, None) for n in c.outputs]
    inits = [numpy_helper.from_array(a, n) for n, a in c.inits.items()]
    g = helper.make_graph(c.nodes, c.id, ins, outs, initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", c.opset)])
    m.ir_version = 10 if c.opset >= 21 else 8  # the IR version each opset came with (onnxruntime checks)
    m = onnx.shape_inference.infer_shapes(m)
    for o in m.graph.output:  # ops defined as functions (GroupNormalization-21) get no inferred type:
        if o.type.tensor_type.elem_type == T.UNDEFINED:  # declare the (shape-preserving) op's output
            o.type.CopyFrom(m.graph.input[0].type)
    return m


def _ort(m: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def x(*shape: int, lo: float | None = None) -> np.ndarray:
    a = RNG.standard_normal(shape).astype(np.float32)
    return np.abs(a) + lo if lo is not None else a


_ids = iter(range(10**6))


def N(op: str, ins: list[str], outs: list[str] | str = "y", **attrs: Any) -> Any:
    return helper.make_node(op, ins, [outs] if isinstance(outs, str) else outs, name=f"{op.lower()}_{next(_ids)}", **attrs)


def i64(*v: int) -> np.ndarray:
    return np.array(v, np.int64)


def _unary(op: str, lo: float | None = None, **attrs: Any) -> Case:
    return Case(op, [N(op, ["a"], **attrs)], {"a": x(2, 3, 5, lo=lo)}, ["y"])


def _binary(op: str, b_shape: tuple = (3, 1), lo: float | None = None) -> Case:
    return Case(f"{op}-bcast", [N(op, ["a", "b"])], {"a": x(2, 3, 4, lo=lo), "b": x(*b_shape, lo=lo)}, ["y"])


CASES: list[Case] = [
    *[_unary(op) for op in ["Relu", "Sigmoid", "Tanh", "Exp", "Erf", "Neg", "Abs", "Floor", "Ceil", "Sign", "HardSwish",
                            "Sin", "Cos", "Identity"]],
    *[_unary(op, lo=0.1) for op in ["Log", "Sqrt", "Reciprocal"]],
    _unary("LeakyRelu", alpha=0.1),
    _unary("HardSigmoid", alpha=0.2, beta=0.5),
    _unary("Elu", alpha=0.7),
    Case("PRelu-per-channel", [N("PRelu", ["a", "sl"])], {"a": x(2, 3, 4, 4)}, ["y"], {"sl": x(3, 1, 1)}),
    Case("Tile", [N("Tile", ["a", "r"])], {"a": x(2, 3, 4)}, ["y"], {"r": i64(2, 1, 3)}),
    _unary("HardSigmoid", alpha=1 / 6, beta=0.5),
    Case("Clip-relu6", [N("Clip", ["a", "lo", "hi"])], {"a": x(2, 3, 5) * 8}, ["y"],
         {"lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}),
    Case("Clip-min-only", [N("Clip", ["a", "lo"])], {"a": x(2, 7)}, ["y"], {"lo": np.array(-0.5, np.float32)}),
    *[_binary(op) for op in ["Add", "Sub", "Mul", "Max", "Min"]],
    _binary("Div", lo=0.5),
    _binary("Pow", b_shape=(1,), lo=0.5),
    Case("Pow-square", [N("Pow", ["a", "e"])], {"a": x(3, 4)}, ["y"], {"e": np.array(2, np.float32)}),
    Case("Pow-const-1.5", [N("Pow", ["a", "e"])], {"a": x(3, 4, lo=0.1)}, ["y"], {"e": np.array(1.5, np.float32)}),
    Case("Sum-3", [N("Sum", ["a", "b", "c"])], {"a": x(2, 3), "b": x(2, 3), "c": x(3)}, ["y"]),
    Case("Mean-2", [N("Mean", ["a", "b"])], {"a": x(2, 3), "b": x(2, 3)}, ["y"]),
    Case("Where-Greater", [N("Greater", ["a", "b"], "m"), N("Where", ["m", "a", "b"])], {"a": x(2, 5), "b": x(5)}, ["y"]),
    Case("Equal-Not-Cast", [N("Equal", ["a", "b"], "m"), N("Not", ["m"], "n"), N("Cast", ["n"], to=F)],
         {"a": np.array([[1, 2, 3]], np.float32), "b": np.array([[1, 0, 3]], np.float32)}, ["y"]),
    Case("Cast-to-int-and-back", [N("Cast", ["a"], "i", to=T.INT32), N("Cast", ["i"], to=F)], {"a": x(4, 4) * 5}, ["y"]),
    # -- linear algebra
    Case("MatMul-3Dx2D", [N("MatMul", ["a", "w"])], {"a": x(2, 5, 16)}, ["y"], {"w": x(16, 8)}),
    Case("MatMul-4Dx4D", [N("MatMul", ["a", "b"])], {"a": x(1, 2, 5, 8), "b": x(1, 2, 8, 3)}, ["y"]),
    Case("MatMul-1D", [N("MatMul", ["a", "w"])], {"a": x(16)}, ["y"], {"w": x(16, 4)}),
    Case("Gemm-transB", [N("Gemm", ["a", "w", "c"], transB=1)], {"a": x(4, 16)}, ["y"], {"w": x(8, 16), "c": x(8)}),
    Case("Gemm-transA-alpha-beta", [N("Gemm", ["a", "w", "c"], transA=1, alpha=0.5, beta=2.0)], {"a": x(16, 4)}, ["y"],
         {"w": x(16, 8), "c": x(4, 8)}),
    Case("Conv-bias-pads-stride", [N("Conv", ["a", "w", "b"], pads=[1, 2, 1, 0], strides=[2, 1])], {"a": x(1, 3, 9, 8)},
         ["y"], {"w": x(4, 3, 3, 3), "b": x(4)}),
    Case("Conv-depthwise-dilated", [N("Conv", ["a", "w"], group=6, dilations=[2, 2], pads=[2, 2, 2, 2])],
         {"a": x(1, 6, 8, 8)}, ["y"], {"w": x(6, 1, 3, 3)}),
    Case("Conv-same-upper", [N("Conv", ["a", "w"], auto_pad="SAME_UPPER", strides=[2, 2])], {"a": x(2, 4, 7, 7)}, ["y"],
         {"w": x(5, 4, 3, 3)}),
    Case("Conv-BN-Relu", [N("Conv", ["a", "w"], "c", pads=[1, 1, 1, 1]), N("BatchNormalization", ["c", "s", "bb", "m", "v"], "n"),
                          N("Relu", ["n"])], {"a": x(1, 3, 8, 8)}, ["y"],
         {"w": x(8, 3, 3, 3), "s": x(8), "bb": x(8), "m": x(8), "v": x(8, lo=0.5)}),
    # -- pooling, normalization, reductions
    Case("MaxPool-pads", [N("MaxPool", ["a"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])], {"a": x(1, 4, 9, 9)}, ["y"]),
    Case("AveragePool", [N("AveragePool", ["a"], kernel_shape=[2, 2], strides=[2, 2])], {"a": x(2, 3, 8, 8)}, ["y"]),
    Case("AveragePool-pads-count-include", [N("AveragePool", ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                              count_include_pad=1)], {"a": x(1, 2, 6, 6)}, ["y"]),
    Case("GlobalAveragePool", [N("GlobalAveragePool", ["a"])], {"a": x(2, 5, 4, 3)}, ["y"]),
    Case("GlobalMaxPool", [N("GlobalMaxPool", ["a"])], {"a": x(2, 5, 4, 3)}, ["y"]),
    Case("LayerNormalization", [N("LayerNormalization", ["a", "g", "b"], axis=-1, epsilon=1e-6)], {"a": x(2, 5, 16)}, ["y"],
         {"g": x(16), "b": x(16)}),
    Case("LayerNormalization-2axes", [N("LayerNormalization", ["a", "g"], axis=1)], {"a": x(2, 4, 8)}, ["y"], {"g": x(4, 8)}),
    Case("InstanceNormalization", [N("InstanceNormalization", ["a", "s", "b"], epsilon=1e-5)], {"a": x(2, 3, 5, 4) * 2 + 1},
         ["y"], {"s": x(3), "b": x(3)}),
    Case("GroupNormalization-21", [N("GroupNormalization", ["a", "s", "b"], num_groups=2)], {"a": x(2, 4, 3, 3) * 2 + 1},
         ["y"], {"s": x(4), "b": x(4)}, opset=21),
    Case("Softmax-axis1", [N("Softmax", ["a"], axis=1)], {"a": x(2, 6, 5)}, ["y"]),
    Case("LogSoftmax", [N("LogSoftmax", ["a"], axis=-1)], {"a": x(3, 10)}, ["y"]),
    Case("ReduceMean-attr-axes", [N("ReduceMean", ["a"], axes=[1], keepdims=0)], {"a": x(2, 6, 5)}, ["y"], opset=13),
    Case("ReduceMean-input-axes-18", [N("ReduceMean", ["a", "ax"], keepdims=1)], {"a": x(2, 6, 5)}, ["y"],
         {"ax": i64(-1)}, opset=18),
    Case("ReduceSum-all", [N("ReduceSum", ["a"], keepdims=0)], {"a": x(2, 6, 5)}, ["y"]),
    Case("ReduceMax", [N("ReduceMax", ["a"], axes=[0, 2])], {"a": x(2, 6, 5)}, ["y"], opset=13),
    Case("ReduceMin-18", [N("ReduceMin", ["a", "ax"])], {"a": x(2, 6, 5)}, ["y"], {"ax": i64(1)}, opset=18),
    Case("ReduceL2", [N("ReduceL2", ["a"], axes=[1])], {"a": x(3, 7)}, ["y"], opset=13),
    Case("Gelu-20", [N("Gelu", ["a"])], {"a": x(3, 8)}, ["y"], opset=20),
    Case("Gelu-20-tanh", [N("Gelu", ["a"], approximate="tanh")], {"a": x(3, 8)}, ["y"], opset=20),
    # -- gather, shapes, views, data movement
    Case("Gather-runtime-ids", [N("Gather", ["emb", "ids"])], {"ids": np.array([[3, 0, 7], [1, 1, 9]], np.int64)}, ["y"],
         {"emb": x(10, 6)}),
    Case("Gather-const-scalar", [N("Gather", ["a", "i"], axis=1)], {"a": x(2, 5, 3)}, ["y"], {"i": np.array(-1, np.int64)}),
    Case("Gather-const-perm", [N("Gather", ["a", "i"], axis=2)], {"a": x(2, 3, 5)}, ["y"], {"i": i64(4, 0, 2)}),
    Case("Reshape-zero-minus1", [N("Reshape", ["a", "s"])], {"a": x(2, 3, 4)}, ["y"], {"s": i64(0, -1)}),
    Case("Flatten", [N("Flatten", ["a"], axis=2)], {"a": x(2, 3, 4, 5)}, ["y"]),
    Case("Transpose", [N("Transpose", ["a"], perm=[0, 2, 3, 1])], {"a": x(2, 3, 4, 5)}, ["y"]),
    Case("Transpose-default", [N("Transpose", ["a"])], {"a": x(2, 3, 4)}, ["y"]),
    Case("Squeeze-Unsqueeze", [N("Unsqueeze", ["a", "u"], "b"), N("Squeeze", ["b", "s"])], {"a": x(3, 1, 4)}, ["y"],
         {"u": i64(0, -1), "s": i64(2)}),
    Case("Expand-bidirectional", [N("Expand", ["a", "s"])], {"a": x(3, 1)}, ["y"], {"s": i64(2, 1, 4)}),
    # a small constant expanded to 2 MiB stays an on-chip broadcast rather than a folded 2 MiB weight
    Case("Expand-const-large", [N("Expand", ["c", "s"], "e"), N("Add", ["a", "e"])], {"a": x(512, 1024)}, ["y"],
         {"c": x(1024), "s": i64(512, 1024)}),
    Case("Concat", [N("Concat", ["a", "b"], axis=-1)], {"a": x(2, 3), "b": x(2, 5)}, ["y"]),
    Case("Slice-neg-steps2", [N("Slice", ["a", "st", "en", "ax", "sp"])], {"a": x(4, 10)}, ["y"],
         {"st": i64(1, -8), "en": i64(1000, -1), "ax": i64(0, 1), "sp": i64(2, 3)}),
    Case("Split-13-sizes", [N("Split", ["a", "s"], ["y", "z"], axis=1)], {"a": x(2, 7)}, ["y", "z"], {"s": i64(3, 4)}),
    Case("Split-18-num-outputs", [N("Split", ["a"], ["y", "z", "w"], axis=0, num_outputs=3)], {"a": x(8, 2)},
         ["y", "z", "w"], opset=18),
    Case("Pad-constant", [N("Pad", ["a", "p", "v"])], {"a": x(1, 2, 3, 3)}, ["y"],
         {"p": i64(0, 0, 1, 2, 0, 0, 2, 1), "v": np.array(0.5, np.float32)}),
    Case("Shape-driven-reshape", [N("Shape", ["a"], "s"), N("Gather", ["s", "zero"], "b", axis=0),
                                  N("Unsqueeze", ["b", "zero1"], "b1"), N("Concat", ["b1", "m1"], "shape", axis=0),
                                  N("Reshape", ["a", "shape"])], {"a": x(3, 4, 5)}, ["y"],
         {"zero": np.array(0, np.int64), "zero1": i64(0), "m1": i64(-1)}),
    Case("ConstantOfShape-Add", [N("ConstantOfShape", ["s"], "c", value=helper.make_tensor("v", F, [1], [2.0])),
                                 N("Add", ["a", "c"])], {"a": x(2, 3)}, ["y"], {"s": i64(2, 3)}),
    Case("Resize-nearest-2x", [N("Resize", ["a", "", "sc"], mode="nearest", coordinate_transformation_mode="asymmetric",
                                 nearest_mode="floor")], {"a": x(1, 2, 3, 4)}, ["y"],
         {"sc": np.array([1, 1, 2, 2], np.float32)}),
    Case("Resize-nearest-sizes-half-pixel", [N("Resize", ["a", "", "", "sz"], mode="nearest")], {"a": x(1, 2, 5, 4)}, ["y"],
         {"sz": i64(1, 2, 7, 6)}),
    Case("Resize-linear-half-pixel", [N("Resize", ["a", "", "sc"], mode="linear")], {"a": x(1, 2, 4, 5)}, ["y"],
         {"sc": np.array([1, 1, 2, 1.5], np.float32)}),
    Case("Resize-linear-align-corners", [N("Resize", ["a", "", "", "sz"], mode="linear",
                                           coordinate_transformation_mode="align_corners")], {"a": x(1, 1, 4, 4)}, ["y"],
         {"sz": i64(1, 1, 7, 3)}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_op_matches_onnxruntime(case: Case) -> None:
    m = _model(case)
    ref = _ort(m, case.inputs)
    cm = vnpu.from_onnx(m, strict=case.on_chip)
    outs = cm.run_numpy(list(case.inputs.values()))
    assert len(outs) == len(ref)
    for o, r in zip(outs, ref):
        assert o.shape == r.shape
        assert o.dtype == r.dtype
        scale = max(float(np.abs(r).max()), 1e-6) if r.size else 1.0
        np.testing.assert_allclose(o.astype(np.float64), r.astype(np.float64), rtol=0, atol=2e-6 * scale + 1e-7)


def test_large_expand_of_a_constant_is_not_folded_into_a_weight() -> None:
    case = next(c for c in CASES if c.id == "Expand-const-large")
    cm = vnpu.from_onnx(_model(case))
    assert cm.program.weight_bytes < 64 * 1024


def test_bf16_conv_bn_relu_within_cosine() -> None:
    case = next(c for c in CASES if c.id == "Conv-BN-Relu")
    m = _model(case)
    (ref,) = _ort(m, case.inputs)
    (out,) = vnpu.from_onnx(m, dtype="bf16").run_numpy(list(case.inputs.values()))
    cos = float((out * ref).sum() / np.linalg.norm(out) / np.linalg.norm(ref))
    assert cos >= 0.999
    assert not np.array_equal(out, ref)  # bf16 storage really rounds


def test_conv_bn_relu_is_one_fused_kernel_like_torch() -> None:
    """ONNX Conv + BatchNormalization + Relu compiles to the same single fused conv2d kernel
    (and the same cycles) as the equivalent PyTorch module."""
    import torch

    case = next(c for c in CASES if c.id == "Conv-BN-Relu")
    cm = vnpu.from_onnx(_model(case))
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    bn = torch.nn.BatchNorm2d(8).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(case.inits["w"]))
        bn.weight.copy_(torch.from_numpy(case.inits["s"]))
        bn.bias.copy_(torch.from_numpy(case.inits["bb"]))
        bn.running_mean.copy_(torch.from_numpy(case.inits["m"]))
        bn.running_var.copy_(torch.from_numpy(case.inits["v"]))
    tm = torch.nn.Sequential(conv, bn, torch.nn.ReLU()).eval()
    ct = vnpu.compile(tm, (torch.from_numpy(case.inputs["a"]),))
    assert [l.kind for l in cm.program.launches] == [l.kind for l in ct.program.launches]
    assert [l.kind for l in cm.program.launches if l.kind != "copy"] == ["conv"]  # BN and ReLU fused in (the copy is the pad)
    assert cm.profile().cycles == pytest.approx(ct.profile().cycles, rel=0.01)


def test_exporter_gelu_is_lifted_to_one_op() -> None:
    """0.5 * x * (1 + erf(x / sqrt 2)), as exporters spell out GELU before opset 20, becomes the IR's gelu."""
    nodes = [N("MatMul", ["a", "w"], "h"), N("Div", ["h", "sq2"], "d"), N("Erf", ["d"], "e"), N("Add", ["e", "one"], "p"),
             N("Mul", ["h", "p"], "q"), N("Mul", ["q", "half"])]
    inits = {"w": x(8, 8), "sq2": np.array(np.sqrt(2), np.float32), "one": np.array(1, np.float32),
             "half": np.array(0.5, np.float32)}
    case = Case("gelu-pattern", nodes, {"a": x(4, 8)}, ["y"], inits)
    m = _model(case)
    cm = vnpu.from_onnx(m, strict=True)
    assert "gelu" in cm.info.ir_text and "erf" not in cm.info.ir_text
    (out,) = cm.run_numpy([case.inputs["a"]])
    np.testing.assert_allclose(out, _ort(m, case.inputs)[0], rtol=0, atol=1e-5)


def test_tf_moments_layer_norm_is_lifted_to_one_op() -> None:
    """Layer norm as TF/Keras spell it (moments, rsqrt as Sqrt + Reciprocal, x * s + (beta - mean * s))
    becomes the IR's layer_norm: one kernel instead of nine."""
    nodes = [N("ReduceMean", ["a", "ax"], "m", keepdims=1), N("Sub", ["a", "m"], "d"), N("Mul", ["d", "d"], "sq"),
             N("ReduceMean", ["sq", "ax"], "var", keepdims=1), N("Add", ["var", "eps"], "ve"), N("Sqrt", ["ve"], "sd"),
             N("Reciprocal", ["sd"], "r"), N("Mul", ["r", "gamma"], "s"), N("Mul", ["a", "s"], "xs"),
             N("Neg", ["m"], "nm"), N("Mul", ["nm", "s"], "ms"), N("Add", ["ms", "beta"], "t"), N("Add", ["xs", "t"])]
    inits = {"ax": i64(-1), "eps": np.array(1e-6, np.float32), "gamma": x(32), "beta": x(32)}
    case = Case("tf-layer-norm", nodes, {"a": x(2, 7, 32) * 3 + 1}, ["y"], inits, opset=18)
    m = _model(case)
    cm = vnpu.from_onnx(m, strict=True)
    assert [l.kind for l in cm.program.launches] == ["norm"]
    (out,) = cm.run_numpy([case.inputs["a"]])
    np.testing.assert_allclose(out, _ort(m, case.inputs)[0], rtol=0, atol=1e-5)


def test_input_type_round_trip_numpy_in_numpy_out() -> None:
    case = CASES[0]
    cm = vnpu.from_onnx(_model(case))
    y = cm(case.inputs["a"])
    assert isinstance(y, np.ndarray)
