"""Save -> load round trips are bit-identical in outputs and cycles: the zoo models, programs
with host-fallback payloads (torch and ONNX), an LLM session's prefill and decode programs
(functional, with the KV cache as state), and a timing-only program of a meta-device model
(shape-only weights stay shape-only in the file)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import vnpu
from vnpu.chip import load_chip
from vnpu.dtypes import DType, torch_to_numpy
from vnpu.runtime.artifact import load_program, save_program
from vnpu.runtime.llm import LLMSession
from vnpu.sim.device import Device
from vnpu.workloads.llm_zoo import DecoderStep, build_llm, get_llm, prompt_ids
from vnpu.workloads.zoo import get_workload


def _assert_same_run(cm, cm2, inputs):
    ys, ys2 = cm.run_numpy(inputs), cm2.run_numpy(inputs)
    for y, y2 in zip(ys, ys2):
        assert y.dtype == y2.dtype and y.shape == y2.shape
        np.testing.assert_array_equal(y.view(np.uint8), y2.view(np.uint8))  # bit for bit, NaNs included
    assert cm2.last_profile.cycles == cm.last_profile.cycles
    assert cm2.last_profile.to_dict() == cm.last_profile.to_dict()  # every counter, per kernel, energy
    assert cm2.profile().to_dict() == cm.profile().to_dict()


# The whole zoo, both precisions, is benchmarks/bench_artifacts.py; CI takes one of each family.
@pytest.mark.parametrize("name,dtype", [("mlp", "fp32"), ("resnet50", "bf16"), ("vit-base", "bf16"),
                                        ("minilm", "fp32")])
def test_zoo_models_round_trip_bit_identical(name, dtype, tmp_path):
    model, inputs = get_workload(name).build(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = vnpu.compile(model, inputs, dtype=dtype, name=name)
    path = tmp_path / f"{name}.vnpu"
    cm.save(path)
    cm2 = vnpu.load(str(path))
    assert cm2.info.name == name and cm2.info.dtype == DType(dtype)
    assert cm2.info.ir_text == cm.info.ir_text and cm2.info.input_shapes == cm.info.input_shapes
    assert cm2.program.instruction_count() == cm.program.instruction_count()
    _assert_same_run(cm, cm2, [torch_to_numpy(x) for x in inputs])


class _Det(torch.nn.Module):
    def forward(self, x):
        return torch.linalg.det(x).relu() + x.sum((1, 2))


def test_torch_host_fallback_payload_round_trips(tmp_path):
    x = torch.randn(3, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = vnpu.compile(_Det(), (x,))
    assert cm.has_host_ops
    cm.save(tmp_path / "det.vnpu")
    cm2 = vnpu.load(str(tmp_path / "det.vnpu"))
    assert cm2.info.fallback_ops == cm.info.fallback_ops
    _assert_same_run(cm, cm2, [x.numpy()])
    torch.testing.assert_close(cm2(x), _Det()(x), rtol=1e-5, atol=1e-5)


def test_onnx_host_fallback_payload_round_trips(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Det", ["x"], ["d"]), helper.make_node("Relu", ["d"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = vnpu.from_onnx(m)
    assert cm.has_host_ops
    cm.save(tmp_path / "det_onnx.vnpu")
    cm2 = vnpu.load(str(tmp_path / "det_onnx.vnpu"))
    x = np.random.default_rng(0).standard_normal((2, 5, 5)).astype(np.float32)
    _assert_same_run(cm, cm2, [x])
    np.testing.assert_allclose(cm2(x), np.maximum(np.linalg.det(x), 0), rtol=1e-5, atol=1e-6)


def test_llm_session_programs_round_trip(tmp_path):
    """qwen3-tiny: a session whose prefill and decode programs were saved and loaded generates
    the same tokens, logits and cycles as the session that compiled them."""
    spec = get_llm("qwen3-tiny")
    chip = load_chip("vnpu-v1")
    torch.manual_seed(0)
    model = build_llm(spec)
    prompt = prompt_ids(spec.config["vocab_size"], 2, 6).numpy()
    first = LLMSession(DecoderStep(model, 2, 64), chip, DType.fp32, 2, "qwen3-tiny")
    gen = first.generate(prompt, 8)
    programs = first.programs
    assert len(programs) >= 2 and any(p == "decode" for p, _ in programs)
    second = LLMSession(DecoderStep(model, 2, 64), chip, DType.fp32, 2, "qwen3-tiny")
    second.pinned, second.top = first.pinned, first.top
    for i, (key, prog) in enumerate(programs.items()):
        path = tmp_path / f"step{i}.vnpu"
        save_program(path, prog, chip)
        loaded = load_program(path, chip)
        assert loaded.state == prog.state and loaded.input_names == prog.input_names
        second._programs[key] = loaded
    gen2 = second.generate(prompt, 8)
    assert second.programs.keys() == programs.keys()  # nothing was recompiled
    np.testing.assert_array_equal(gen2.tokens, gen.tokens)
    np.testing.assert_array_equal(gen2.logits, gen.logits)
    assert gen2.prefill == gen.prefill
    assert gen2.decode == gen.decode


def test_timing_only_meta_program_stays_shape_only(tmp_path):
    """A meta-device model's program holds zero-stride stand-ins for its weights: the file must
    not expand them (qwen3-0.6b at 2 layers: 0.35 GB of bf16 weights, most of it the embedding), and the loaded program times the same."""
    spec = get_llm("qwen3-0.6b")
    chip = load_chip("vnpu-v1")
    model = build_llm(spec, device="meta", num_layers=2)
    sess = LLMSession(DecoderStep(model, 1, 256), chip, DType.bf16, 1, "qwen3-0.6b", functional=False)
    prog = sess.decode_program(100)
    path = tmp_path / "decode.vnpu"
    save_program(path, prog, chip)
    assert path.stat().st_size < 8 << 20, path.stat().st_size
    loaded = load_program(path, chip)
    t1 = Device(chip, prog.hbm_bytes, functional=False).run(prog)
    t2 = Device(chip, loaded.hbm_bytes, functional=False).run(loaded)
    assert t2.cycles == t1.cycles and t2.to_dict() == t1.to_dict()
    assert prog.weight_bytes > 256 << 20 and loaded.weight_bytes == prog.weight_bytes


def test_loading_for_another_chip_is_refused(tmp_path):
    from vnpu import ArtifactError

    cm = vnpu.compile(torch.nn.Linear(8, 8).eval(), (torch.randn(2, 8),))
    save_program(tmp_path / "p.vnpu", cm.program, cm.chip)
    with pytest.raises(ArtifactError, match="another chip"):
        load_program(tmp_path / "p.vnpu", load_chip("h20"))
