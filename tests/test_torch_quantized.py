"""PyTorch models quantized by PT2E (torchao's prepare_pt2e / convert_pt2e with the X86 Inductor and
XNNPACK quantizers) and by torchao's quantize_ configs compile with vnpu.compile(strict=True), run
their linears / convolutions as int8 x int8 -> int32 kernels (weight-only configs: the int8 weight
widened on the chip), and match the quantized model's own eager output.

Tolerance: one quantization step of the output where the output is quantized (XNNPACK quantizes
every linear / conv output), else 1e-5 of the output's largest magnitude.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

torchao = pytest.importorskip("torchao", reason="torchao is not installed (pip install --no-deps torchao==0.18.0)")

from torchao.quantization import (Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig,  # noqa: E402
                                  IntxWeightOnlyConfig, quantize_)
from torchao.quantization.pt2e import allow_exported_model_train_eval  # noqa: E402
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e  # noqa: E402
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (  # noqa: E402
    X86InductorQuantizer, get_default_x86_inductor_quantization_config)

import vnpu  # noqa: E402
from vnpu.dtypes import DType  # noqa: E402

QD = torch.ops.quantized_decomposed


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = torch.nn.Conv2d(16, 16, 3, padding=1, stride=2)
        self.fc = torch.nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = torch.nn.functional.max_pool2d(torch.relu(self.c2(x)), 2)
        return self.fc(x.flatten(1))


class AttentionBlock(torch.nn.Module):
    def __init__(self, d: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.proj = torch.nn.Linear(d, d)
        self.norm = torch.nn.LayerNorm(d)
        self.up = torch.nn.Linear(d, 64)
        self.down = torch.nn.Linear(64, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = (t.view(b, s, self.heads, -1).transpose(1, 2) for t in self.qkv(x).split(d, -1))
        a = torch.softmax(q @ k.transpose(-1, -2) / 4.0, -1) @ v
        x = x + self.proj(a.transpose(1, 2).reshape(b, s, d))
        return x + self.down(torch.relu(self.up(self.norm(x))))


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(64, 128)
        self.b = torch.nn.Linear(128, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


class Wrapped(torch.nn.Module):
    """A converted PT2E GraphModule as a plain module (vnpu.compile calls .eval(), which an exported
    GraphModule refuses or, with allow_exported_model_train_eval, returns None from)."""

    def __init__(self, gm: torch.nn.Module) -> None:
        super().__init__()
        self.gm = gm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gm(x)


def _quantizer(kind: str):  # noqa: ANN202
    if kind == "x86":  # uint8 activations with zero points, int8 per-channel symmetric weights
        q = X86InductorQuantizer()
        q.set_global(get_default_x86_inductor_quantization_config())
        return q
    # int8 activations (asymmetric), every linear / conv output quantized
    from torchao.testing.pt2e._xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config

    q = XNNPACKQuantizer()
    q.set_global(get_symmetric_quantization_config(is_per_channel=True))
    return q


def _pt2e(model: torch.nn.Module, shape: tuple[int, ...], kind: str) -> torch.fx.GraphModule:
    torch.manual_seed(1)
    gm = torch.export.export(model.eval(), (torch.randn(*shape),)).module()
    prepared = prepare_pt2e(gm, _quantizer(kind))
    for _ in range(4):  # calibration
        prepared(torch.randn(*shape))
    converted = convert_pt2e(prepared)
    allow_exported_model_train_eval(converted)
    return converted


def _output_scale(gm: torch.fx.GraphModule) -> float | None:
    """The scale of the quantization the model's output comes out of, if any."""
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    out = out[0] if isinstance(out, (list, tuple)) else out
    if out.target in (QD.dequantize_per_tensor.default, QD.dequantize_per_tensor.tensor):
        return float(out.args[1])
    return None


def _compile(model: torch.nn.Module, x: torch.Tensor) -> vnpu.CompiledModel:
    return vnpu.compile(model, (x,), strict=True)  # strict: an op left to the host is an error


def _check_close(got: np.ndarray, ref: torch.Tensor, step: float | None) -> None:
    ref_np = ref.detach().numpy()
    atol = step * (1 + 1e-6) if step is not None else 1e-5 * float(np.abs(ref_np).max())
    err = np.abs(np.asarray(got, np.float64) - ref_np.astype(np.float64))
    assert err.max() <= atol, f"max error {err.max()} > {atol} (step {step})"


def _gemm_launches(cm: vnpu.CompiledModel) -> list:
    return [ln for ln in cm.program.launches if getattr(ln, "kind", None) in ("matmul", "conv")]


def _run(cm: vnpu.CompiledModel, x: torch.Tensor) -> np.ndarray:
    out = cm(x)
    return np.asarray(out[0] if isinstance(out, (list, tuple)) else out)


@pytest.mark.parametrize("kind", ["x86", "xnnpack"])
def test_pt2e_cnn_runs_int8_convs_and_linear(kind: str) -> None:
    gm = _pt2e(SmallCNN(), (2, 3, 16, 16), kind)
    x = torch.randn(2, 3, 16, 16)
    cm = _compile(Wrapped(gm), x)
    gemms = _gemm_launches(cm)
    assert len(gemms) == 3 and all(ln.dtype == DType.int8 for ln in gemms), [(ln.name, ln.dtype) for ln in gemms]
    assert [ln.ops[0] for ln in gemms] == ["conv2d", "conv2d", "matmul"]
    # the weights reach HBM as int8 only (no fp32 copy of a dequantized weight)
    w_sizes = {16 * 3 * 9, 16 * 16 * 9, 10 * 256}
    consts = [a for _, a in cm.program.constants]
    assert not any(a.dtype == np.float32 and a.size in w_sizes for a in consts)
    _check_close(_run(cm, x), gm(x), _output_scale(gm))


@pytest.mark.parametrize("kind", ["x86", "xnnpack"])
def test_pt2e_attention_block_runs_int8_linears(kind: str) -> None:
    gm = _pt2e(AttentionBlock(), (2, 8, 32), kind)
    x = torch.randn(2, 8, 32)
    cm = _compile(Wrapped(gm), x)
    gemms = _gemm_launches(cm)
    int8 = [ln for ln in gemms if ln.dtype == DType.int8]
    # the four weight linears run int8; Q K^T and P V (two run-time operands, left unquantized
    # by both quantizers) stay float
    assert len(int8) == 4 and all(ln.name.startswith("addmm") for ln in int8), [(ln.name, ln.dtype) for ln in gemms]
    assert {ln.name for ln in gemms if ln.dtype != DType.int8} == {"bmm", "bmm_1"}
    _check_close(_run(cm, x), gm(x), _output_scale(gm))


class TwoLinears(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = torch.nn.Linear(64, 128), torch.nn.Linear(128, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.relu(self.l1(x)))


@pytest.mark.parametrize("model,shape", [(TwoLinears, (8, 64)), (AttentionBlock, (2, 8, 32))], ids=["mlp", "attention"])
def test_pt2e_dynamic_activations_run_int8_on_the_chip(model, shape) -> None:
    """XNNPACK's dynamic config: each activation's per-tensor qparams come from
    quantized_decomposed.choose_qparams at run time. The chip computes them itself (min / max
    reductions and torch's determine_qparams arithmetic), quantizes, and runs the linears as int8
    matmuls whose epilogue applies the run-time zero point and scale: no host fallback."""
    from torchao.testing.pt2e._xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config

    torch.manual_seed(2)
    gm = torch.export.export(model().eval(), (torch.randn(*shape),)).module()
    q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    prepared = prepare_pt2e(gm, q)
    prepared(torch.randn(*shape))
    converted = convert_pt2e(prepared)
    allow_exported_model_train_eval(converted)
    assert any(n.target == QD.choose_qparams.tensor for n in converted.graph.nodes)
    x = torch.randn(*shape) * 3
    cm = _compile(Wrapped(converted), x)  # strict: nothing on the host
    int8 = [ln for ln in _gemm_launches(cm) if ln.dtype == DType.int8]
    assert len(int8) == (2 if model is TwoLinears else 4), [(ln.name, ln.dtype) for ln in _gemm_launches(cm)]
    _check_close(_run(cm, x), converted(x), None)


def test_pt2e_quantize_dequantize_round_half_even_and_saturate() -> None:
    class QDQ(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            q = QD.quantize_per_tensor.default(x, 0.5, 3, 0, 255, torch.uint8)
            q8 = QD.quantize_per_tensor.default(x, 0.25, -2, -128, 127, torch.int8)
            return (QD.dequantize_per_tensor.default(q, 0.5, 3, 0, 255, torch.uint8),
                    QD.dequantize_per_tensor.default(q8, 0.25, -2, -128, 127, torch.int8))

    # ties (x / scale = k + 0.5), both signs, and values beyond both ends of the ranges
    x = torch.tensor([[0.25, 0.75, -0.25, -0.75, 1.25, -1.75, 0.125, 200.0, -200.0, 0.0, 31.9, -33.0]])
    cm = _compile(QDQ(), x)
    out = cm(x)
    for got, ref in zip(out, QDQ()(x)):
        np.testing.assert_array_equal(np.asarray(got), ref.numpy())


def test_torchao_int8_dynamic_activation_runs_int_mm_on_int8_matmul() -> None:
    torch.manual_seed(2)
    m = MLP().eval()
    quantize_(m, Int8DynamicActivationInt8WeightConfig())
    x = torch.randn(4, 64)
    cm = _compile(m, x)
    gemms = _gemm_launches(cm)
    assert len(gemms) == 2 and all(ln.dtype == DType.int8 and ln.ops[0] == "matmul" for ln in gemms)
    _check_close(_run(cm, x), m(x), None)


@pytest.mark.parametrize("config", ["int8_weight_only", "intx_weight_only_int8"])
def test_torchao_weight_only_keeps_int8_weights(config: str) -> None:
    torch.manual_seed(3)
    m = MLP().eval()
    quantize_(m, Int8WeightOnlyConfig() if config == "int8_weight_only" else IntxWeightOnlyConfig(weight_dtype=torch.int8))
    x = torch.randn(4, 64)
    cm = _compile(m, x)
    consts = [a for _, a in cm.program.constants]
    # the weights are uploaded as int8 and widened by a cast on the chip; the matmul itself is float
    # (a fused weight-only int8 GEMM is not a kernel yet)
    for size in (64 * 128, 128 * 32):
        assert any(a.dtype == np.int8 and a.size == size for a in consts)
        assert not any(a.dtype == np.float32 and a.size == size for a in consts)
    assert sum("cast" in ln.ops for ln in cm.program.launches if getattr(ln, "kind", None) != "matmul") >= 2
    _check_close(_run(cm, x), m(x), None)


class GroupedConvs(torch.nn.Module):
    """Depthwise, pointwise, grouped (4 channels per group) and 1-D convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = torch.nn.Conv2d(8, 16, 1)
        self.grouped = torch.nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.c1d = torch.nn.Conv1d(16, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.grouped(torch.relu(self.pw(torch.relu(self.dw(x))))))
        return self.c1d(y.flatten(2))


def test_pt2e_grouped_and_1d_convs_int8_depthwise_float() -> None:
    gm = _pt2e(GroupedConvs(), (1, 8, 8, 8), "xnnpack")
    x = torch.randn(1, 8, 8, 8)
    cm = _compile(Wrapped(gm), x)
    dtypes = [ln.dtype for ln in _gemm_launches(cm)]
    # the depthwise conv stays float (the int8 depthwise kernel is not exact yet); the rest run int8
    assert dtypes == [DType.fp32, DType.int8, DType.int8, DType.int8], dtypes
    _check_close(_run(cm, x), gm(x), _output_scale(gm))
