"""Tests for the built-in workload zoo (vnpu.workloads.zoo)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

try:
    import vnpu.workloads.zoo  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vnpu.workloads.zoo import (  # noqa: E402
    ZOO,
    UnknownWorkloadError,
    Workload,
    get_workload,
    list_workloads,
)

NAMES = ["mlp", "resnet50", "mobilenet-v2", "vit-base", "bert-base", "minilm"]

# Expected output shape per sample (batch dim excluded).
OUT_SHAPES = {
    "mlp": (10,),
    "resnet50": (1000,),
    "mobilenet-v2": (1000,),
    "vit-base": (1000,),
    "bert-base": (128, 768),
    "minilm": (128, 384),
}


def _run(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    with torch.inference_mode():
        return model(*inputs)


def _min_cosine(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Worst per-sample cosine similarity (float64), samples along dim 0."""
    a, b = ref.double().flatten(1), out.double().flatten(1)
    return torch.nn.functional.cosine_similarity(a, b, dim=1).min().item()


def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).to(t.dtype)


# Numerical conditioning (framework only, no vnpu): how far the fp32 output moves
# when only the input, or only the weights, are rounded to bf16.  The product
# requirement is bf16 cosine >= 0.999 vs fp32; a model whose fp32 output already
# moves this much from input/weight rounding alone cannot meet it on any bf16
# implementation.  Before the zoo's CNN initialisation (residual-branch BN gamma
# 0.2, see zoo.py) mobilenet-v2 was at 0.99955 / 0.99731 (input / weights and
# buffers, batch 2) and resnet50 at 0.99883 / 0.99438, i.e. both failed; now
# 0.99997 / 0.99982 and 0.999998 / 0.99997.
INPUT_ROUNDING_MIN_COS = 0.9999
WEIGHT_ROUNDING_MIN_COS = 0.9995


@pytest.fixture(scope="module", params=NAMES)
def built(request):
    """(name, {batch: (model, inputs, output)}) with batch 1 built twice."""
    name = request.param
    w = get_workload(name)
    runs = {}
    for key, batch in (("b1", 1), ("b1_again", 1), ("b2", 2)):
        model, inputs = w.build(batch)
        runs[key] = (model, inputs, _run(model, inputs))
    return name, runs


def test_registry():
    assert list(ZOO) == NAMES
    assert [w.name for w in list_workloads()] == NAMES
    for name, w in ZOO.items():
        assert isinstance(w, Workload)
        assert w.name == name
        assert w.family in {"mlp", "vision", "language"}
        assert w.description
        assert callable(w.build)
    with pytest.raises(Exception):
        w.name = "x"  # frozen


def test_unknown_workload():
    with pytest.raises(UnknownWorkloadError) as exc:
        get_workload("resnet-50")
    assert isinstance(exc.value, ValueError)
    assert isinstance(exc.value, KeyError)
    msg = str(exc.value)
    for name in NAMES:
        assert name in msg


def test_bad_batch():
    with pytest.raises(ValueError):
        get_workload("mlp").build(0)


def test_builds_and_batch_dim(built):
    name, runs = built
    for key, batch in (("b1", 1), ("b2", 2)):
        model, inputs, out = runs[key]
        assert not model.training
        assert isinstance(out, torch.Tensor)
        assert tuple(out.shape) == (batch, *OUT_SHAPES[name])
        assert all(x.shape[0] == batch for x in inputs)
        assert torch.isfinite(out).all()
        # numerically sane for low-precision hardware: neither vanishing nor exploding
        assert 1e-3 < out.abs().max().item() < 1e3


def test_deterministic(built):
    _, runs = built
    (m1, in1, out1), (m2, in2, out2) = runs["b1"], runs["b1_again"]
    assert len(in1) == len(in2)
    for a, b in zip(in1, in2):
        assert a.dtype == b.dtype and torch.equal(a, b)
    sd1, sd2 = m1.state_dict(), m2.state_dict()
    assert sd1.keys() == sd2.keys()
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), k
    assert torch.equal(out1, out2)


def test_batch_consistency(built):
    """Sample 0 is the same at every batch size, so its output must match."""
    _, runs = built
    _, in1, out1 = runs["b1"]
    _, in2, out2 = runs["b2"]
    for a, b in zip(in1, in2):
        assert torch.equal(a[0], b[0])
    torch.testing.assert_close(out2[:1], out1, rtol=1e-4, atol=1e-4)
    assert not torch.equal(in2[0][0], in2[0][1])  # samples differ


# models with float inputs (the language models take token ids, exact in any format)
FLOAT_INPUT_NAMES = ["mlp", "resnet50", "mobilenet-v2", "vit-base"]
VISION_NAMES = ["resnet50", "mobilenet-v2", "vit-base"]


@pytest.mark.parametrize("built", FLOAT_INPUT_NAMES, indirect=True)
def test_conditioning_input_rounding(built):
    """Rounding a float input to bf16 (rel. error ~1e-3) barely moves the output."""
    name, runs = built
    model, inputs, ref = runs["b2"]
    rounded = tuple(_bf16(x) if x.is_floating_point() else x for x in inputs)
    assert any(not torch.equal(a, b) for a, b in zip(inputs, rounded))
    cos = _min_cosine(ref, _run(model, rounded))
    assert cos >= INPUT_ROUNDING_MIN_COS, f"{name}: input-rounding cosine {cos:.6f}"


def test_conditioning_weight_rounding(built):
    """Rounding every parameter and buffer (BN stats too) to bf16 barely moves the output."""
    name, runs = built
    model, inputs, ref = runs["b2"]
    rounded = copy.deepcopy(model)  # the fixture's model is shared: never mutate it
    with torch.no_grad():
        for t in (*rounded.parameters(), *rounded.buffers()):
            if t.is_floating_point():
                t.copy_(_bf16(t))
    cos = _min_cosine(ref, _run(rounded, inputs))
    assert cos >= WEIGHT_ROUNDING_MIN_COS, f"{name}: weight-rounding cosine {cos:.6f}"


@pytest.mark.parametrize("built", VISION_NAMES, indirect=True)
def test_vision_outputs_nontrivial(built):
    """Logits vary across classes (std 0.1-10) and across inputs (not one constant vector)."""
    name, runs = built
    assert get_workload(name).family == "vision"
    _, _, out = runs["b2"]
    std = out.double().std(dim=1)
    assert ((std > 0.1) & (std < 10)).all(), std
    cross = torch.nn.functional.cosine_similarity(out[0].double(), out[1].double(), dim=0).item()
    assert cross < 0.99, f"{name}: logits of two different inputs have cosine {cross:.4f}"


def test_no_dropout_modules(built):
    _, runs = built
    model = runs["b1"][0]
    assert not any(isinstance(m, torch.nn.modules.dropout._DropoutNd) for m in model.modules())


def test_minilm_export_is_clean():
    """Export + core-ATen decomposition: plain attention, no dropout/mask/SDPA ops."""
    model, inputs = get_workload("minilm").build(1)
    ep = torch.export.export(model, inputs).run_decompositions()
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "aten._softmax.default" in targets and "aten.bmm.default" in targets
    for bad in (
        "aten.dropout.default",
        "aten.scaled_dot_product_attention.default",
        "aten._scaled_dot_product_flash_attention_for_cpu.default",
        "aten.where.self",
        "aten.arange.start_step",
        "aten.index.Tensor",
        "aten.gather.default",
    ):
        assert bad not in targets, bad
    out_ep = ep.module()(*inputs)
    torch.testing.assert_close(out_ep, _run(model, inputs), rtol=0, atol=0)
