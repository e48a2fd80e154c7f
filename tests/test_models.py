"""Every zoo model on the chip against PyTorch eager fp32: fp32 within 1e-4 x max|ref|,
bf16 with cosine >= 0.999; torch.compile(backend="vnpu") agrees with vnpu.compile."""
from __future__ import annotations

import warnings

import pytest
import torch

import vnpu
from vnpu.frontends.torch import FallbackWarning
from vnpu.workloads.zoo import get_workload, list_workloads

MODELS = [w.name for w in list_workloads()]


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


@pytest.fixture(scope="module")
def built() -> dict:
    return {}


def _build(built: dict, name: str, batch: int):
    key = (name, batch)
    if key not in built:
        model, inputs = get_workload(name).build(batch)
        with torch.inference_mode():
            ref = model(*inputs)
        built[key] = (model, inputs, ref)
    return built[key]


@pytest.mark.parametrize("name", MODELS)
def test_fp32_matches_eager(built: dict, name: str) -> None:
    model, inputs, ref = _build(built, name, 2 if name in ("mlp", "minilm", "mobilenet-v2") else 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)  # everything runs on the chip
        cm = vnpu.compile(model, inputs, dtype="fp32")
    y = cm(*inputs)
    err = (y - ref).abs().max().item()
    assert err <= 1e-4 * ref.abs().max().item(), f"{name}: max err {err:.3g} vs max |ref| {ref.abs().max().item():.3g}"
    assert not cm.has_host_ops


@pytest.mark.parametrize("name", MODELS)
def test_bf16_cosine(built: dict, name: str) -> None:
    model, inputs, ref = _build(built, name, 1)
    cm = vnpu.compile(model, inputs, dtype="bf16")
    y = cm(*inputs)
    assert cm.program.dtype.value == "bf16"
    assert _cos(y, ref) >= 0.999


@pytest.mark.parametrize("name", ["mlp", "mobilenet-v2", "minilm"])
def test_torch_compile_backend_matches_vnpu_compile(built: dict, name: str) -> None:
    model, inputs, ref = _build(built, name, 1)
    torch._dynamo.reset()
    with torch.no_grad():
        y_dyn = torch.compile(model, backend="vnpu")(*inputs)
    y_aot = vnpu.compile(model, inputs)(*inputs)
    assert (y_dyn - y_aot).abs().max().item() <= 1e-5 * ref.abs().max().item()
    assert (y_dyn - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()
