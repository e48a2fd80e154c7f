"""ONNX control flow (If, Loop, Scan) and sequences, resolved at import time (ops_control.py):
hand-built models compiled strictly (no host fallback) and compared with onnxruntime."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto as T, helper, numpy_helper  # noqa: E402

import vnpu  # noqa: E402
from vnpu.frontends.errors import UnsupportedOpError  # noqa: E402
from vnpu.frontends.onnx import import_onnx  # noqa: E402
from vnpu.frontends.onnx.importer import OnnxModelError  # noqa: E402

RNG = np.random.default_rng(7)
OPSET = 17


def _vi(name: str, elem: int, shape: list[int] | None) -> Any:
    return helper.make_tensor_value_info(name, T.UNDEFINED if shape is None else elem, shape)


def _model(nodes: list, inputs: list, outputs: list, inits: dict[str, np.ndarray] | None = None) -> Any:
    g = helper.make_graph(nodes, "control", inputs, outputs,
                          initializer=[numpy_helper.from_array(a, n) for n, a in (inits or {}).items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    m = onnx.shape_inference.infer_shapes(m, strict_mode=True)  # the outputs' types
    onnx.checker.check_model(m)
    return m


def _ort(m: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _check_on_chip(m: Any, feeds: dict[str, np.ndarray], rtol: float = 1e-5) -> Any:
    """Compiles strictly, runs, compares every output with onnxruntime; the import result."""
    res = import_onnx(m, strict=True)
    assert not any(n.op == "host_call" for n in res.graph.nodes)
    outs = vnpu.from_onnx(m, strict=True).run_numpy(list(feeds.values()))
    refs = _ort(m, feeds)
    assert len(outs) == len(refs)
    for o, r in zip(outs, refs):
        assert o.shape == r.shape
        np.testing.assert_allclose(o, r, rtol=rtol, atol=1e-6)
    return res


def _branch(name: str, nodes: list, out: str, shape: list[int]) -> Any:
    return helper.make_graph(nodes, name, [], [_vi(out, T.FLOAT, shape)])


# -- If ---------------------------------------------------------------------------------------------
def _if_model(cond_is_input: bool, cond_value: bool = True, else_shape: list[int] | None = None) -> Any:
    # both branches read the outer-scope x
    then_g = _branch("then", [helper.make_node("Mul", ["x", "two"], ["t"])], "t", [2, 3])
    if else_shape is None:
        else_g = _branch("else", [helper.make_node("Sub", ["x", "one"], ["e"])], "e", [2, 3])
    else:
        else_g = _branch("else", [helper.make_node("ReduceSum", ["x"], ["e"], keepdims=1)], "e", else_shape)
    inits = {"two": np.array(2, np.float32), "one": np.array(1, np.float32)}
    inputs = [_vi("x", T.FLOAT, [2, 3])]
    if cond_is_input:
        inputs.append(_vi("c", T.BOOL, []))
    else:
        inits["c"] = np.array(cond_value)
    node = helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)
    relu = helper.make_node("Relu", ["y"], ["z"])
    return _model([node, relu], inputs, [_vi("z", T.FLOAT, None)], inits)


@pytest.mark.parametrize("cond", [True, False])
def test_if_constant_condition_inlines_the_branch_taken(cond: bool) -> None:
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    res = _check_on_chip(_if_model(False, cond), {"x": x})
    ops = {n.op for n in res.graph.nodes}
    assert ("mul" in ops) == cond and ("sub" in ops) != cond and "where" not in ops


@pytest.mark.parametrize("cond", [True, False])
def test_if_runtime_condition_selects_with_where(cond: bool) -> None:
    m = _if_model(True)
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    res = _check_on_chip(m, {"x": x, "c": np.array(cond)})
    assert "where" in {n.op for n in res.graph.nodes}


def test_if_runtime_condition_with_branches_of_different_shapes_is_not_lowered() -> None:
    # (the output's shape depends on the condition's value)
    m = _if_model(True, else_shape=[1, 1])
    with pytest.raises(UnsupportedOpError) as e:
        import_onnx(m, strict=True)
    assert set(e.value.ops) == {"If"}


# -- Loop -------------------------------------------------------------------------------------------
def _loop_body(cond_out_nodes: list) -> Any:
    """acc_out = acc_in + x * i (x from the outer scope); scan output: acc_out."""
    nodes = [
        helper.make_node("Cast", ["i"], ["i_f"], to=T.FLOAT),
        helper.make_node("Mul", ["x", "i_f"], ["xi"]),
        helper.make_node("Add", ["acc_in", "xi"], ["acc_out"]),
        helper.make_node("Identity", ["acc_out"], ["scan_out"]),
        *cond_out_nodes,
    ]
    return helper.make_graph(nodes, "body", [_vi("i", T.INT64, []), _vi("cond_in", T.BOOL, []), _vi("acc_in", T.FLOAT, [3])],
                             [_vi("cond_out", T.BOOL, []), _vi("acc_out", T.FLOAT, [3]), _vi("scan_out", T.FLOAT, [3])])


def test_loop_with_constant_trip_count_accumulates_and_stacks_scan_outputs() -> None:
    body = _loop_body([helper.make_node("Identity", ["cond_in"], ["cond_out"])])
    node = helper.make_node("Loop", ["M", "", "acc0"], ["acc", "stacked"], body=body)
    m = _model([node], [_vi("x", T.FLOAT, [3]), _vi("acc0", T.FLOAT, [3])],
               [_vi("acc", T.FLOAT, [3]), _vi("stacked", T.FLOAT, [5, 3])], {"M": np.array(5, np.int64)})
    feeds = {"x": RNG.standard_normal(3).astype(np.float32), "acc0": RNG.standard_normal(3).astype(np.float32)}
    res = _check_on_chip(m, feeds)
    assert res.graph.outputs[1].shape == (5, 3)


def test_loop_condition_that_folds_each_iteration_stops_it() -> None:
    # while i < 2 (trip count far larger): three iterations, the condition known at import each time
    body = _loop_body([helper.make_node("Less", ["i", "two"], ["cond_out"])])
    node = helper.make_node("Loop", ["M", "c0", "acc0"], ["acc", "stacked"], body=body)
    m = _model([node], [_vi("x", T.FLOAT, [3]), _vi("acc0", T.FLOAT, [3])],
               [_vi("acc", T.FLOAT, [3]), _vi("stacked", T.FLOAT, [3, 3])],
               {"M": np.array(1000, np.int64), "c0": np.array(True), "two": np.array(2, np.int64)})
    feeds = {"x": RNG.standard_normal(3).astype(np.float32), "acc0": np.zeros(3, np.float32)}
    res = _check_on_chip(m, feeds)
    assert res.graph.outputs[1].shape == (3, 3)


def _accumulate_only_body() -> Any:
    nodes = [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["acc_in", "x"], ["acc_out"])]
    return helper.make_graph(nodes, "body", [_vi("i", T.INT64, []), _vi("cond_in", T.BOOL, []), _vi("acc_in", T.FLOAT, [3])],
                             [_vi("cond_out", T.BOOL, []), _vi("acc_out", T.FLOAT, [3])])


def test_loop_with_runtime_trip_count_or_too_many_iterations_is_named() -> None:
    # (a condition input: onnx.reference, which runs host calls, skips a Loop whose condition is omitted)
    node = helper.make_node("Loop", ["M", "c", "acc0"], ["acc"], body=_accumulate_only_body())
    outs = [_vi("acc", T.FLOAT, [3])]
    runtime = _model([node], [_vi("M", T.INT64, []), _vi("x", T.FLOAT, [3]), _vi("acc0", T.FLOAT, [3])], outs,
                     {"c": np.array(True)})
    huge = _model([node], [_vi("x", T.FLOAT, [3]), _vi("acc0", T.FLOAT, [3])], outs,
                  {"M": np.array(5000, np.int64), "c": np.array(True)})
    for m in (runtime, huge):
        with pytest.raises(UnsupportedOpError) as e:
            import_onnx(m, strict=True)
        assert set(e.value.ops) == {"Loop"}
    # without strict the host runs the Loop, fed the outer-scope x its body reads
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = vnpu.from_onnx(runtime)
    feeds = {"M": np.array(3, np.int64), "x": RNG.standard_normal(3).astype(np.float32), "acc0": np.ones(3, np.float32)}
    np.testing.assert_allclose(cm.run_numpy(list(feeds.values()))[0], _ort(runtime, feeds)[0], rtol=1e-6)


def test_loop_carrying_a_sequence() -> None:
    # each iteration appends x * i to a sequence that starts empty; read back concatenated
    body = helper.make_graph([
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        helper.make_node("Cast", ["i"], ["i_f"], to=T.FLOAT),
        helper.make_node("Mul", ["x", "i_f"], ["xi"]),
        helper.make_node("SequenceInsert", ["seq_in", "xi"], ["seq_out"]),
    ], "body", [_vi("i", T.INT64, []), _vi("cond_in", T.BOOL, []),
                helper.make_tensor_sequence_value_info("seq_in", T.FLOAT, [2])],
        [_vi("cond_out", T.BOOL, []), helper.make_tensor_sequence_value_info("seq_out", T.FLOAT, [2])])
    nodes = [helper.make_node("SequenceEmpty", [], ["empty"], dtype=T.FLOAT),
             helper.make_node("Loop", ["M", "c", "empty"], ["seq"], body=body),
             helper.make_node("ConcatFromSequence", ["seq"], ["y"], axis=0)]
    m = _model(nodes, [_vi("x", T.FLOAT, [2])], [_vi("y", T.FLOAT, [8])],
               {"M": np.array(4, np.int64), "c": np.array(True)})
    _check_on_chip(m, {"x": RNG.standard_normal(2).astype(np.float32)})


# -- Scan -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("out_dir", [0, 1])
def test_scan_cumulative_sum_in_reverse_along_axis_1(out_dir: int) -> None:
    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "xt"], ["s_out"]), helper.make_node("Identity", ["s_out"], ["y_t"])],
        "cumsum", [_vi("s_in", T.FLOAT, [2]), _vi("xt", T.FLOAT, [2])],
        [_vi("s_out", T.FLOAT, [2]), _vi("y_t", T.FLOAT, [2])])
    node = helper.make_node("Scan", ["s0", "x"], ["s", "y"], body=body, num_scan_inputs=1,
                            scan_input_axes=[1], scan_input_directions=[1],
                            scan_output_axes=[-1], scan_output_directions=[out_dir])
    m = _model([node], [_vi("s0", T.FLOAT, [2]), _vi("x", T.FLOAT, [2, 4])],
               [_vi("s", T.FLOAT, [2]), _vi("y", T.FLOAT, [2, 4])])
    feeds = {"s0": RNG.standard_normal(2).astype(np.float32), "x": RNG.standard_normal((2, 4)).astype(np.float32)}
    res = _check_on_chip(m, feeds)
    assert res.graph.outputs[1].shape == (2, 4)


def test_opset8_scan_with_a_batch_axis_and_reverse_direction() -> None:
    # opset 8: a batch axis before the scan axis; each batch element scanned on its own
    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "xt"], ["s_out"]), helper.make_node("Mul", ["s_out", "xt"], ["y_t"])],
        "body", [_vi("s_in", T.FLOAT, [3]), _vi("xt", T.FLOAT, [3])], [_vi("s_out", T.FLOAT, [3]), _vi("y_t", T.FLOAT, [3])])
    node = helper.make_node("Scan", ["", "s0", "x"], ["s", "y"], body=body, num_scan_inputs=1, directions=[1])
    g = helper.make_graph([node], "scan8", [_vi("s0", T.FLOAT, [2, 3]), _vi("x", T.FLOAT, [2, 4, 3])],
                          [_vi("s", T.FLOAT, [2, 3]), _vi("y", T.FLOAT, [2, 4, 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 8)], ir_version=4)
    feeds = {"s0": RNG.standard_normal((2, 3)).astype(np.float32), "x": RNG.standard_normal((2, 4, 3)).astype(np.float32)}
    _check_on_chip(m, feeds)


# -- sequences and optionals ----------------------------------------------------------------------
def test_sequence_round_trip() -> None:
    # split into a sequence, edit it, read it back as tensors
    nodes = [
        helper.make_node("SplitToSequence", ["x", "sizes"], ["seq"], axis=1),
        helper.make_node("Relu", ["x"], ["rx"]),
        helper.make_node("Slice", ["rx", "s0", "s1", "ax"], ["extra"]),
        helper.make_node("SequenceInsert", ["seq", "extra", "p1"], ["seq2"]),
        helper.make_node("SequenceErase", ["seq2", "neg1"], ["seq3"]),
        helper.make_node("SequenceAt", ["seq3", "p1"], ["at1"]),
        helper.make_node("ConcatFromSequence", ["seq3"], ["cat"], axis=1),
        helper.make_node("SequenceLength", ["seq3"], ["n"]),
        helper.make_node("Identity", ["seq3"], ["seq4"]),
        helper.make_node("ConcatFromSequence", ["seq4"], ["stacked"], axis=0, new_axis=1),
    ]
    inits = {"sizes": np.array([2, 2, 2], np.int64), "p1": np.array(1, np.int64), "neg1": np.array(-1, np.int64),
             "s0": np.array([0], np.int64), "s1": np.array([2], np.int64), "ax": np.array([1], np.int64)}
    m = _model(nodes, [_vi("x", T.FLOAT, [3, 6])],
               [_vi("at1", T.FLOAT, None), _vi("cat", T.FLOAT, None), _vi("n", T.INT64, None),
                _vi("stacked", T.FLOAT, None)], inits)
    _check_on_chip(m, {"x": RNG.standard_normal((3, 6)).astype(np.float32)})


@pytest.mark.parametrize("pos", [1, -1])
def test_sequence_at_a_runtime_position(pos: int) -> None:
    nodes = [helper.make_node("SplitToSequence", ["x"], ["seq"], axis=0, keepdims=0),
             helper.make_node("SequenceAt", ["seq", "p"], ["y"])]
    m = _model(nodes, [_vi("x", T.FLOAT, [3, 4]), _vi("p", T.INT64, [])], [_vi("y", T.FLOAT, [4])])
    _check_on_chip(m, {"x": RNG.standard_normal((3, 4)).astype(np.float32), "p": np.array(pos, np.int64)})


def test_sequence_map_and_optional() -> None:
    body = helper.make_graph([helper.make_node("Mul", ["e", "e"], ["sq"])], "square",
                             [_vi("e", T.FLOAT, [2, 1])], [_vi("sq", T.FLOAT, [2, 1])])
    nodes = [
        helper.make_node("SplitToSequence", ["x"], ["seq"], axis=1),
        helper.make_node("SequenceMap", ["seq"], ["squares"], body=body),
        helper.make_node("ConcatFromSequence", ["squares"], ["y"], axis=1),
        helper.make_node("Optional", ["y"], ["opt"]),
        helper.make_node("OptionalHasElement", ["opt"], ["has"]),
        helper.make_node("OptionalGetElement", ["opt"], ["got"]),
        helper.make_node("Neg", ["got"], ["z"]),
    ]
    m = _model(nodes, [_vi("x", T.FLOAT, [2, 3])], [_vi("z", T.FLOAT, None), _vi("has", T.BOOL, None)])
    _check_on_chip(m, {"x": RNG.standard_normal((2, 3)).astype(np.float32)})


def test_a_sequence_graph_output_is_a_named_error() -> None:
    seq_out = helper.make_tensor_sequence_value_info("seq", T.FLOAT, None)
    m = _model([helper.make_node("SplitToSequence", ["x"], ["seq"], axis=0)], [_vi("x", T.FLOAT, [2, 3])], [seq_out])
    with pytest.raises(OnnxModelError, match="not a tensor"):
        import_onnx(m, strict=True)


def test_a_sequence_fed_to_a_tensor_op_is_named() -> None:
    # (a model the checker accepts only because it does not type-check the graph)
    nodes = [helper.make_node("SplitToSequence", ["x"], ["seq"], axis=0), helper.make_node("Relu", ["seq"], ["y"])]
    g = helper.make_graph(nodes, "bad", [_vi("x", T.FLOAT, [2, 3])], [_vi("y", T.FLOAT, [2, 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    with pytest.raises((UnsupportedOpError, OnnxModelError)) as e:
        import_onnx(m, strict=True)
    assert "sequence" in str(e.value)
