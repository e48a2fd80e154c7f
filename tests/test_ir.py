"""The IR: shape/dtype inference, the verifier, the printer."""
from __future__ import annotations

import numpy as np
import pytest

import vnpu
from vnpu.dtypes import DType
from vnpu.ir import Graph, IRTypeError, IRVerifyError, Node, TensorType, Value, broadcast_shapes, format_graph, verify
from vnpu.ir.ops import infer_types

F32, BF16, I64, BOOL = DType.fp32, DType.bf16, DType.int64, DType.bool


def T(*shape: int, dt: DType = F32) -> TensorType:
    return TensorType(tuple(shape), dt)


def infer(op: str, ins: list[TensorType], **attrs) -> list[TensorType]:
    return infer_types(op, ins, attrs)


# -- shape inference --------------------------------------------------------------------------
@pytest.mark.parametrize("shapes,expected", [
    (((3, 1), (4,)), (3, 4)),
    (((2, 1, 5), (7, 1)), (2, 7, 5)),
    (((), (6,)), (6,)),
    (((1,), (1, 1, 3)), (1, 1, 3)),
])
def test_broadcasting(shapes, expected):
    assert broadcast_shapes(*shapes) == expected
    assert infer("add", [T(*s) for s in shapes]) == [T(*expected)]


def test_broadcast_mismatch_raises():
    with pytest.raises(IRTypeError, match="broadcast"):
        infer("mul", [T(3, 4), T(5)])


def test_elementwise_dtypes():
    assert infer("lt", [T(2, 3), T(3)]) == [T(2, 3, dt=BOOL)]  # comparisons give bool
    assert infer("cast", [T(2, 3)], dtype=BF16) == [T(2, 3, dt=BF16)]
    assert infer("not", [T(4, dt=BOOL)]) == [T(4, dt=BOOL)]
    with pytest.raises(IRTypeError, match="mixed dtypes"):
        infer("add", [T(2), T(2, dt=BF16)])
    assert infer("where", [T(2, 1, dt=BOOL), T(1, 3), T(2, 3)]) == [T(2, 3)]
    with pytest.raises(IRTypeError, match="bool"):
        infer("where", [T(2, 3), T(2, 3), T(2, 3)])


def test_matmul_shapes():
    assert infer("matmul", [T(3, 4), T(4, 5)]) == [T(3, 5)]
    assert infer("matmul", [T(2, 3, 4), T(4, 5)]) == [T(2, 3, 5)]
    # batch dims broadcast: [2,1] with [5] -> [2,5]
    assert infer("matmul", [T(2, 1, 3, 4), T(5, 4, 6)]) == [T(2, 5, 3, 6)]
    with pytest.raises(IRTypeError, match="inner dims"):
        infer("matmul", [T(3, 4), T(5, 6)])
    with pytest.raises(IRTypeError, match="rank"):
        infer("matmul", [T(4), T(4, 5)])


@pytest.mark.parametrize("hw,k,stride,pad,dil,expected", [
    # out = floor((H + pad_lo + pad_hi - dil*(k-1) - 1) / stride) + 1
    (32, 5, 2, 2, 1, 16),   # (32 + 4 - 4 - 1) // 2 + 1 = 31 // 2 + 1 = 16
    (32, 5, 2, 2, 2, 14),   # (32 + 4 - 8 - 1) // 2 + 1 = 27 // 2 + 1 = 14
    (7, 3, 1, 0, 1, 5),     # (7 - 2 - 1) // 1 + 1 = 5
    (224, 7, 2, 3, 1, 112),  # ResNet stem
])
def test_conv2d_output_size(hw, k, stride, pad, dil, expected):
    out = infer("conv2d", [T(2, 3, hw, hw), T(8, 3, k, k)], stride=(stride, stride),
                padding=((pad, pad), (pad, pad)), dilation=(dil, dil))
    assert out == [T(2, 8, expected, expected)]


def test_conv2d_groups_and_channel_mismatch():
    # depthwise: 16 groups of 1 input channel
    out = infer("conv2d", [T(1, 16, 8, 8), T(16, 1, 3, 3)], stride=(1, 1), padding=((1, 1), (1, 1)), groups=16)
    assert out == [T(1, 16, 8, 8)]
    with pytest.raises(IRTypeError, match="channels"):
        infer("conv2d", [T(1, 4, 8, 8), T(8, 3, 3, 3)], stride=(1, 1), padding=((0, 0), (0, 0)))


def test_pool_reduce_and_views():
    # (7 - 3) // 2 + 1 = 3
    assert infer("pool2d", [T(1, 3, 7, 7)], kind="max", kernel=(3, 3), stride=(2, 2),
                 padding=((0, 0), (0, 0))) == [T(1, 3, 3, 3)]
    assert infer("reduce", [T(2, 3, 4)], kind="sum", axes=[1]) == [T(2, 4)]
    assert infer("reduce", [T(2, 3, 4)], kind="mean", axes=[1, 2], keepdim=True) == [T(2, 1, 1)]
    assert infer("reshape", [T(2, 3, 4)], shape=[6, 4]) == [T(6, 4)]
    with pytest.raises(IRTypeError, match="element counts"):
        infer("reshape", [T(2, 3, 4)], shape=[5, 5])
    assert infer("permute", [T(2, 3, 4)], perm=[2, 0, 1]) == [T(4, 2, 3)]
    with pytest.raises(IRTypeError, match="permutation"):
        infer("permute", [T(2, 3, 4)], perm=[0, 0, 1])
    assert infer("expand", [T(1, 3)], shape=[4, 3]) == [T(4, 3)]
    # range(1, 9, 3) = 1, 4, 7
    assert infer("slice", [T(10, 2)], axis=0, start=1, end=9, step=3) == [T(3, 2)]
    with pytest.raises(IRTypeError, match="out of range"):
        infer("slice", [T(10, 2)], axis=0, start=2, end=11)
    assert infer("concat", [T(2, 3), T(2, 5)], axis=1) == [T(2, 8)]
    with pytest.raises(IRTypeError):
        infer("concat", [T(2, 3), T(4, 5)], axis=1)
    assert infer("gather", [T(100, 16), T(2, 7, dt=I64)], axis=0) == [T(2, 7, 16)]
    with pytest.raises(IRTypeError, match="int"):
        infer("gather", [T(100, 16), T(2, 7)], axis=0)
    assert infer("pad", [T(1, 3, 5, 5)], pads=[(0, 0), (0, 0), (1, 2), (3, 0)]) == [T(1, 3, 8, 8)]


def test_unknown_op():
    with pytest.raises(IRTypeError, match="unknown IR op"):
        infer("frobnicate", [T(1)])


def test_graph_builder_infers_types():
    g = Graph("g")
    x = g.add_input("x", T(4, 8))
    w = g.add_const("w", np.zeros((8, 16), np.float32))
    y = g.add_node("matmul", [x, w]).output
    z = g.add_node("relu", [y]).output
    assert y.type == T(4, 16) and z.type == T(4, 16)
    assert y.producer is not None and y.producer.op == "matmul"
    with pytest.raises(IRTypeError):
        g.add_node("add", [x, w])  # [4,8] + [8,16] do not broadcast


# -- the verifier -----------------------------------------------------------------------------
def _good() -> tuple[Graph, Value, Node, Node]:
    g = Graph("good")
    x = g.add_input("x", T(2, 3))
    a = g.add_node("relu", [x], name="a")
    b = g.add_node("neg", [a.output], name="b")
    g.outputs = [b.output]
    return g, x, a, b


def test_verifier_accepts_good_graph():
    g, *_ = _good()
    verify(g)


def test_verifier_use_before_def():
    g, x, a, b = _good()
    g.nodes = [b, a]  # b reads a's output before a runs
    with pytest.raises(IRVerifyError, match=r"b: input %a used before it is defined"):
        verify(g)


def test_verifier_wrong_type():
    g, x, a, b = _good()
    b.outputs[0].type = T(3, 2)  # inference says [2,3]
    with pytest.raises(IRVerifyError) as ei:
        verify(g)
    msg = str(ei.value)
    assert "b:" in msg and "fp32[3,2]" in msg and "fp32[2,3]" in msg


def test_verifier_wrong_dtype_input():
    g, x, a, b = _good()
    x.type = T(2, 3, dt=BF16)  # relu's output claims fp32, inference now says bf16
    with pytest.raises(IRVerifyError, match="a: output types"):
        verify(g)


def test_verifier_undefined_output_unknown_op_and_duplicates_all_reported():
    g, x, a, b = _good()
    g.nodes.append(Node("frobnicate", [b.output], [Value("f", T(2, 3))], {}, "f"))
    ghost = Value("ghost", T(2, 3))
    g.outputs = [ghost]
    b.outputs[0].name = "a"  # duplicate value name
    with pytest.raises(IRVerifyError) as ei:
        verify(g)
    msg = str(ei.value)
    assert "unknown op 'frobnicate'" in msg
    assert "%ghost is never defined" in msg
    assert "duplicate value name %a" in msg


def test_compiler_rejects_invalid_graph():
    g, x, a, b = _good()
    g.nodes = [b, a]
    with pytest.raises(IRVerifyError):
        vnpu.compile_ir(g)


# -- the printer ------------------------------------------------------------------------------
def test_printer_text():
    g = Graph("tiny")
    x = g.add_input("x", T(2, 3))
    w = g.add_const("w", np.ones((3, 4), np.float32))
    two = g.add_const("two", np.array(2.0, np.float32))
    mm = g.add_node("matmul", [x, w]).output
    sc = g.add_node("mul", [mm, two]).output
    r = g.add_node("reshape", [sc], {"shape": [4, 2]}).output
    g.outputs = [r]
    expected = "\n".join([
        "graph tiny(%x: fp32[2,3]) {",
        "  $w: fp32[3,4] = const",
        "  %matmul: fp32[2,4] = matmul(%x, $w)",
        "  %mul: fp32[2,4] = mul(%matmul, 2)",
        "  %reshape: fp32[4,2] = reshape(%mul) {shape=[4,2]}",
        "  return %reshape",
        "}",
    ])
    assert format_graph(g) == expected
    assert str(g) == expected


def test_printer_shows_fused_chain_after_compile():
    """The optimized IR (what `vnpu run --show-ir` prints) names each fused epilogue's chain."""
    g = Graph("mlp")
    x = g.add_input("x", T(4, 8))
    w = g.add_const("w", np.ones((8, 16), np.float32))
    b = g.add_const("b", np.ones((16,), np.float32))
    y = g.add_node("relu", [g.add_node("add", [g.add_node("matmul", [x, w]).output, b]).output]).output
    g.outputs = [y]
    cm = vnpu.compile_ir(g)
    text = cm.info.ir_text
    assert "matmul(%x, $w, $b)" in text and "epilogue=(add -> relu)" in text
    out = cm.run_numpy([np.ones((4, 8), np.float32)])[0]
    np.testing.assert_allclose(out, np.full((4, 16), 9.0))  # relu(8 * 1 + 1)


def test_compile_deep_graph():
    """BUG (compiler/lower.py, optimize): `copy.deepcopy(graph)` recurses from graph.outputs
    through every Value.producer -> Node.inputs link, so any graph deeper than ~60 nodes
    (BERT-base, ResNet-50) dies with RecursionError before a single pass runs.

    A chain of 120 matmuls by the identity must compile and give back its input."""
    g = Graph("deep")
    v = g.add_input("x", T(4, 8))
    eye = g.add_const("eye", np.eye(8, dtype=np.float32))
    for _ in range(120):
        v = g.add_node("matmul", [v, eye]).output
    g.outputs = [v]
    cm = vnpu.compile_ir(g)
    x = np.arange(32, dtype=np.float32).reshape(4, 8)
    np.testing.assert_array_equal(cm.run_numpy([x])[0], x)
