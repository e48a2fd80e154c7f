"""OCP MX block-scaled formats (MXFP8, MXFP4): the codec against torchao's own MX reference
(torchao.prototype.mx_formats.to_mx / to_dtype), the chip's block-scaled matmul against a float64
product of torchao's dequantized operands, packed fp4 bytes, the format's rate, and refusals."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import vnpu
from vnpu.chip import load_chip
from vnpu.compiler.quantize import QuantError, quantize_weight_mx
from vnpu.dtypes import PACKED_ELEMENTS, DType
from vnpu.ir.graph import Graph, TensorType
from vnpu.isa import cost

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torchao.prototype.mx_formats.mx_tensor import to_dtype, to_mx

ELEM = {"mxfp8": (DType.fp8_e4m3, torch.float8_e4m3fn), "mxfp4": (DType.fp4x2_e2m1, torch.float4_e2m1fn_x2)}


def _wide_range(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Values whose magnitude spans ~12 decades across blocks, with an all-zero block and a few
    elements far above their block's typical size (they set the shared exponent)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.logspace(-6, 6, shape[-1])
    x[0, :32] = 0.0
    x[1, 5] = 3e4
    return x


def _torchao_dequant(x: torch.Tensor, elem: torch.dtype) -> np.ndarray:
    """torchao's MX quantize-dequantize of x along its last axis, as float64."""
    scale, data = to_mx(x.float().contiguous(), elem, 32)
    return to_dtype(data, scale, elem, 32, torch.float32).double().numpy()


@pytest.mark.parametrize("scheme", ["mxfp8", "mxfp4"])
def test_mx_weight_codec_matches_torchao(scheme: str) -> None:
    fmt, elem = ELEM[scheme]
    w = _wide_range((64, 256), seed=0)  # torchao blocks the last axis: our [K, N] weight is its transpose
    q, s = quantize_weight_mx(w.T.numpy(), fmt, 32)
    scale, data = to_mx(w.contiguous(), elem, 32)
    assert np.array_equal(s.view(np.uint8).T, scale.view(torch.uint8).numpy())  # E8M0 bits
    if fmt == DType.fp4x2_e2m1:
        # packed along K (rows 2i, 2i + 1 in one byte, low nibble first) as torchao packs the last axis
        assert q.shape == (128, 64)
        assert np.array_equal(q.view(np.uint8).T, data.view(torch.uint8).numpy())
    else:
        assert np.array_equal(q.view(np.uint8).T, data.view(torch.uint8).numpy())
    assert not np.isnan(q.view(np.uint8)).any()


def _mx_linear(scheme: str, k: int, n: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    torch.manual_seed(seed)
    lin = torch.nn.Linear(k, n, bias=False).eval()
    with torch.no_grad():
        lin.weight.mul_(torch.logspace(-2, 2, k))  # per-block ranges differ along K
    x = torch.randn(m, k) * torch.logspace(2, -2, k)
    cm = vnpu.compile(lin, (x,), quant=scheme)
    got = cm(x).numpy()
    assert [k.ops[0] for k in cm.profile().kernels] == (["matmul"] if m <= 16 else ["quantize_rows", "matmul"])
    elem = ELEM[scheme][1]
    ref = _torchao_dequant(x, elem) @ _torchao_dequant(lin.weight.detach(), elem).T
    return got, ref.astype(np.float32)


@pytest.mark.parametrize("rows", [40, 8])
@pytest.mark.parametrize("scheme", ["mxfp8", "mxfp4"])
def test_mx_linear_equals_the_block_scaled_product_within_one_ulp(scheme: str, rows: int) -> None:
    """On the chip: activations quantized per token and block (40 rows: by the quantize kernel;
    8 rows, decode-sized: in the GEMM's prologue), weights at compile time, the array applying both
    E8M0 scales per block; one K chunk, so the documented order is the exact sum rounded once to
    fp32. Reference: torchao's own MX quantization of both operands, multiplied in float64."""
    got, ref = _mx_linear(scheme, k=256, n=64, m=rows, seed=1)
    np.testing.assert_array_max_ulp(got, ref, maxulp=1)
    assert (got == ref).mean() > 0.95


def test_mxfp4_weights_are_packed_two_per_byte_in_memory_and_traffic() -> None:
    k, n = 1024, 512
    lin = torch.nn.Linear(k, n, bias=False)
    x = torch.randn(4, k)
    cm = vnpu.compile(lin, (x,), quant="mxfp4")
    full, stored = cm.info.quant_bytes
    assert full == k * n * 4 and stored == k * n // 2 + n * k // 32  # packed elements + one E8M0 byte per block
    consts = {ref.dtype: data for ref, data in cm.program.constants}
    assert consts[DType.fp4x2_e2m1].nbytes == k * n // 2
    assert consts[DType.e8m0].nbytes == n * k // 32
    prof = cm.profile()
    mm = next(kp for kp in prof.kernels if "matmul" in kp.ops)
    # the weight is read at least once, as packed bytes: far below its fp8 (k*n) or bf16 size
    assert k * n // 2 <= mm.hbm_bytes < 0.75 * k * n


def _mx_gemm(s: int, fmt: DType) -> Graph:
    g = Graph("mx")
    pack = PACKED_ELEMENTS.get(fmt, 1)
    a = g.add_input("a", TensorType((s, s // pack), fmt))
    b = g.add_input("b", TensorType((s // pack, s), fmt))
    sa = g.add_input("sa", TensorType((s, s // 32), DType.e8m0))
    sb = g.add_input("sb", TensorType((s // 32, s), DType.e8m0))
    g.outputs = [g.add_node("matmul", [a, b, sa, sb], {"mx_block": 32}).output]
    return g


def test_block_scaled_matmul_instruction_runs_at_the_format_rate() -> None:
    """Hand count (isa/cost.matmul_cycles, docs/timing.md): a [64, K] x [K, 64] fold on the 64x64
    WS array streams K / rate rows; fp4 (rate 4) packs twice fp8's (rate 2) K per PE."""
    chip = load_chip("vnpu-v1")
    r = chip.core.matrix.rows
    # 512 / 4 = 128 packed rows of K = 2 folds of 64 streaming 64 rows of A: preload + 1 x max(T, R) + T + skew
    assert cost.matmul_cycles(chip, 64, 512, 64, DType.fp4x2_e2m1) == r + max(64, r) + 64 + (r + 64 - 2)
    assert cost.matmul_cycles(chip, 64, 512, 64, DType.fp8_e4m3) == r + 3 * max(64, r) + 64 + (r + 64 - 2)
    times = {}
    for fmt in (DType.fp8_e4m3, DType.fp4x2_e2m1):
        cm = vnpu.compile_ir(_mx_gemm(2048, fmt), chip, DType.bf16)
        times[fmt] = cm.profile().kernels[0].cycles
    assert 0.45 < times[DType.fp4x2_e2m1] / times[DType.fp8_e4m3] < 0.6  # compute-bound: half the cycles


@pytest.mark.parametrize("scheme, fmt", [("mxfp8", "fp8_e4m3"), ("mxfp4", "fp4x2_e2m1")])
def test_a_chip_without_block_scaling_is_refused(scheme: str, fmt: str) -> None:
    with pytest.raises(QuantError, match=f"chip h20 has no block-scaled \\(MX\\) {fmt} matrix format, which "
                                         f"scheme {scheme} needs"):
        vnpu.compile(torch.nn.Linear(64, 8), (torch.randn(2, 64),), chip="h20", quant=scheme)


def test_mx_model_survives_save_and_load(tmp_path) -> None:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.GELU(), torch.nn.Linear(256, 64)).eval()
    x = torch.randn(4, 128)
    cm = vnpu.compile(m, (x,), quant="mxfp4", dtype="bf16")
    cm.save(tmp_path / "m.vnpu")
    back = vnpu.load(tmp_path / "m.vnpu")
    assert torch.equal(back(x), cm(x))


def test_mx_accuracy_on_minilm_matches_the_literature() -> None:
    """Real MiniLM weights: MXFP8 keeps sentence embeddings at cosine >= 0.99 with fp32, like
    per-channel fp8; direct-cast MXFP4 loses clearly more (its 3-bit elements), as the MX and
    MXFP4 PTQ papers report."""
    from vnpu.workloads.zoo import get_workload

    model, (ids,) = get_workload("minilm").build(2)
    with torch.no_grad():
        ref = model(ids).mean(1)
    cos = {}
    for scheme in ("mxfp8", "mxfp4"):
        got = vnpu.compile(model, (ids,), quant=scheme, dtype="bf16")(ids).float().mean(1)
        cos[scheme] = torch.nn.functional.cosine_similarity(got, ref, dim=-1).min().item()
    assert cos["mxfp8"] >= 0.99, cos
    assert cos["mxfp4"] < cos["mxfp8"] - 0.01, cos
