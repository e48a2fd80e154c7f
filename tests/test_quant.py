"""Low-precision matrix work: int8 / fp8 matmuls on the chip against NumPy references computed
here from the documented formulas (int64 for int8, float64 for fp8), the post-training schemes
of compiler/quantize.py, their timing at the format's rate, and their errors."""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch

import vnpu
from conftest import make_chip
from vnpu.chip import load_chip
from vnpu.compiler.quantize import QuantError
from vnpu.dtypes import DType
from vnpu.ir.graph import Graph, TensorType
from vnpu.isa import cost

E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
TINY = np.finfo(np.float32).tiny


def _matmul_graph(m: int, k: int, n: int, dt: DType, batch: tuple[int, ...] = ()) -> Graph:
    g = Graph("qmm")
    a = g.add_input("a", TensorType(batch + (m, k), dt))
    b = g.add_input("b", TensorType((k, n), dt))
    g.outputs = [g.add_node("matmul", [a, b]).output]
    return g


SMALL = {"name": "q-small", "cores": 3, "core.scratchpad.bytes": 65536}  # many K chunks, uneven core split


@pytest.mark.parametrize("chip", ["vnpu-v1", "small"])
@pytest.mark.parametrize("shape", [(1, 4096, 64), (37, 1000, 70), (130, 3001, 129)])
def test_int8_matmul_is_exact_int32(shape: tuple[int, int, int], chip: str) -> None:
    m, k, n = shape
    rng = np.random.default_rng(k)
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)
    b = rng.integers(-128, 128, (k, n)).astype(np.int8)
    a[0, :] = -128  # the extreme products, summed over a long K
    b[:, 0] = -128
    ch = make_chip(SMALL) if chip == "small" else load_chip(chip)
    cm = vnpu.compile_ir(_matmul_graph(m, k, n, DType.int8), ch, "bf16")
    got = np.asarray(cm(a, b))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got.astype(np.int64), a.astype(np.int64) @ b.astype(np.int64))


def test_int8_batched_matmul_is_exact() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(-128, 128, (3, 20, 300)).astype(np.int8)
    b = rng.integers(-128, 128, (300, 50)).astype(np.int8)
    got = np.asarray(vnpu.compile_ir(_matmul_graph(20, 300, 50, DType.int8, (3,)), dtype="fp32")(a, b))
    np.testing.assert_array_equal(got.astype(np.int64), a.astype(np.int64) @ b.astype(np.int64))


def test_fp8_matmul_accumulates_in_fp32() -> None:
    m, k, n = 33, 2000, 65
    rng = np.random.default_rng(2)
    a = (rng.standard_normal((m, k)) * 30).astype(E4M3)
    b = (rng.standard_normal((k, n)) * 0.5).astype(E4M3)
    cm = vnpu.compile_ir(_matmul_graph(m, k, n, DType.fp8_e4m3), dtype="fp32")
    got = np.asarray(cm(a, b)).astype(np.float64)
    exact = a.astype(np.float64) @ b.astype(np.float64)  # fp8 products are exact in fp32 and float64
    # fp32 accumulation: each partial sum rounds once, so |err| <= K * eps32 * sum |a||b|
    bound = k * np.finfo(np.float32).eps * (np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64)))
    assert np.all(np.abs(got - exact) <= bound)
    assert np.abs(got - exact).max() < 1e-5 * np.abs(exact).max()


def test_quantized_operands_must_match() -> None:
    from vnpu.ir.ops import IRTypeError

    g = Graph("mixed")
    a = g.add_input("a", TensorType((4, 32), DType.int8))
    b = g.add_input("b", TensorType((32, 8), DType.fp8_e4m3))
    with pytest.raises(IRTypeError, match="both be int8 or both fp8"):
        g.add_node("matmul", [a, b])


def test_matmul_cycles_at_the_format_rate() -> None:
    """One MatMul instruction on a 64x64 WS array with pipelined folds, by hand: preload R, then
    folds - 1 fold starts max(T, R) apart, the last fold's T rows, skew R + C - 2. int8 / fp8 at
    rate 2 pack two K elements per PE: a 64-deep block holds 128 rows of K, so half the folds."""
    chip = load_chip("vnpu-v1")
    m, k, n = 256, 128, 64
    skew = 64 + 64 - 2
    assert cost.matmul_cycles(chip, m, k, n, DType.bf16) == 64 + 1 * 256 + 256 + skew  # 2 folds
    assert cost.matmul_cycles(chip, m, k, n, DType.int8) == 64 + 256 + skew  # 1 fold
    assert cost.matmul_cycles(chip, m, k, n, DType.fp8_e4m3) == 64 + 256 + skew
    assert cost.matmul_cycles(chip, 1, 4096, 64, DType.int8) == 64 + 31 * 64 + 1 + skew  # GEMV: preload-bound
    assert cost.matmul_cycles(chip, 1, 4096, 64, DType.bf16) == 64 + 63 * 64 + 1 + skew


def test_int8_gemm_runs_at_twice_the_bf16_rate_and_prices_int8_macs() -> None:
    chip = load_chip("vnpu-v1")
    s = 2048
    p_bf16 = vnpu.compile_ir(_matmul_graph(s, s, s, DType.bf16), chip, "bf16").profile()
    cm = vnpu.compile_ir(_matmul_graph(s, s, s, DType.int8), chip, "bf16")
    p_int8 = cm.profile()
    kb, ki = p_bf16.kernels[0], p_int8.kernels[0]
    # every MatMul instruction is timed at the int8 rate (the hand-checked cost above)
    from vnpu.isa.instructions import MatMul

    mms = [i for st in cm.program.launches[0].cores for i in st.queues["matrix"] if isinstance(i, MatMul)]
    assert all(i.a.dtype == DType.int8 and i.acc.dtype == DType.int32 for i in mms)
    assert ki.busy["matrix"] == sum(cost.matmul_cycles(chip, *i.a.shape, i.b.shape[1], DType.int8) for i in mms)
    assert ki.compute_bound_cycles == kb.compute_bound_cycles / 2  # the int8 peak is twice bf16's
    assert kb.cycles / ki.cycles > 1.7  # compute-bound at 2048^3 (4096^3: benchmarks/bench_gemm_peak.py)
    assert ki.mac_dtype == "int8" and ki.macs == kb.macs == s ** 3
    assert p_int8.energy.mac_j == pytest.approx(s ** 3 * chip.energy.pj_per_mac[DType.int8] * 1e-12)


# -- post-training quantization -----------------------------------------------------------------
def _w8a8_reference(x: np.ndarray, w_kn: np.ndarray, bias: np.ndarray, fmt: str) -> np.ndarray:
    """The documented formula, in NumPy: per-channel weights, per-token activations."""
    qmax = np.float32(127 if fmt == "int8" else 448)
    amax_w = np.abs(w_kn).max(0, keepdims=True)
    sw = np.where(amax_w > 0, amax_w / qmax, np.float32(1)).astype(np.float32)
    amax = np.maximum(np.abs(x).max(1, keepdims=True), np.float32(TINY) * qmax).astype(np.float32)
    inv = (qmax / amax).astype(np.float32)
    sx = (amax / qmax).astype(np.float32)
    if fmt == "int8":
        qw = np.round(np.clip(w_kn / sw, -qmax, qmax)).astype(np.int64)
        qx = np.clip(np.round((x * inv).astype(np.float32)), -qmax, qmax).astype(np.int64)
        acc = (qx @ qw).astype(np.float32)
    else:
        qw = np.clip(w_kn / sw, -qmax, qmax).astype(E4M3).astype(np.float64)
        qx = np.clip((x * inv).astype(np.float32), -qmax, qmax).astype(E4M3).astype(np.float64)
        acc = (qx @ qw).astype(np.float32)
    return ((acc * sx).astype(np.float32) * sw).astype(np.float32) + bias


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
@pytest.mark.parametrize("rows", [(5, 9), (1, 3)])
def test_w8a8_linear_matches_the_numpy_formula(fmt: str, rows: tuple[int, int]) -> None:
    """45 rows: a quantize_rows kernel, then the GEMM; 3 rows (decode-sized): the GEMM quantizes
    them in its prologue (compiler/quantize.PROLOGUE_ROWS), one launch. Same formula either way."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(300, 70).eval()
    x = torch.randn(*rows, 300)
    x[0, 0, 7] = 1e6  # saturation: a bare fp8 cast would give NaN
    cm = vnpu.compile(lin, (x,), quant=f"w8a8-{fmt}", strict=True)
    kernels = [k.ops[0] for k in cm.profile().kernels]
    assert kernels == (["matmul"] if rows[0] * rows[1] <= 16 else ["quantize_rows", "matmul"])  # dequant fused
    got = cm(x).numpy().reshape(-1, 70)
    w = lin.weight.detach().numpy().T.copy()
    ref = _w8a8_reference(x.numpy().reshape(-1, 300), w, lin.bias.detach().numpy(), fmt)
    assert np.isfinite(got).all()
    if fmt == "int8":
        np.testing.assert_array_equal(got, ref)  # bit for bit: the int32 sums are exact
    else:  # fp32 accumulation order differs from float64's by rounding only
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_static_scheme_uses_calibrated_ranges() -> None:
    torch.manual_seed(1)
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32)).eval()
    batches = [(torch.randn(8, 64),) for _ in range(3)]
    # the calibrated ranges, measured here with forward hooks on the eager model
    seen: dict[int, float] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, inp, i=i: seen.__setitem__(
        i, max(seen.get(i, 0.0), inp[0].abs().max().item()))) for i, m in enumerate([mlp[0], mlp[2]])]
    for (b,) in batches:
        mlp(b)
    for h in hooks:
        h.remove()
    x = torch.randn(8, 64)
    cm = vnpu.compile(mlp, (x,), quant="w8a8-int8-static", calibration=batches, strict=True)
    got = cm(x).numpy()

    def layer(h: np.ndarray, lin: torch.nn.Linear, amax: float) -> np.ndarray:
        w = lin.weight.detach().numpy().T
        qmax = np.float32(127)
        sw = (np.abs(w).max(0, keepdims=True) / qmax).astype(np.float32)
        qw = np.round(np.clip(w / sw, -127, 127)).astype(np.int64)
        inv, sx = np.float32(qmax / np.float32(amax)), np.float32(np.float32(amax) / qmax)
        qx = np.clip(np.round((h * inv).astype(np.float32)), -127, 127).astype(np.int64)
        return ((qx @ qw).astype(np.float32) * sx * sw).astype(np.float32) + lin.bias.detach().numpy()

    h = np.maximum(layer(x.numpy(), mlp[0], seen[0]), 0)
    ref = layer(h, mlp[2], seen[1])
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6 * np.abs(ref).max())


def test_minilm_sentence_embeddings_keep_cosine_099() -> None:
    from vnpu.workloads.zoo import get_workload

    model, (ids,) = get_workload("minilm").build(2)
    with torch.no_grad():
        ref = model(ids).mean(1)  # mean-pooled sentence embeddings
    for scheme in ("w8a8-int8", "w8a8-fp8"):
        got = vnpu.compile(model, (ids,), quant=scheme, dtype="bf16")(ids).float().mean(1)
        cos = torch.nn.functional.cosine_similarity(got, ref, dim=-1)
        assert cos.min().item() >= 0.99, (scheme, cos)


# -- errors -------------------------------------------------------------------------------------
def test_unknown_scheme_is_named() -> None:
    with pytest.raises(QuantError, match="unknown quantization scheme 'w3a3'.*w8a8-int8"):
        vnpu.compile(torch.nn.Linear(32, 8), (torch.randn(2, 32),), quant="w3a3")


def test_a_format_the_chip_lacks_is_refused_before_tracing() -> None:
    chip = make_chip({"name": "no-int8", "core.matrix.rate": {"bf16": 1.0, "fp32": 0.25},
                      "energy.pj_per_mac": {"bf16": 0.25, "fp32": 1.0}})
    with pytest.raises(QuantError, match="chip no-int8 has no int8 matrix rate"):
        vnpu.compile(torch.nn.Linear(32, 8), (torch.randn(2, 32),), chip=chip, quant="w8a8-int8")


def test_calibration_errors() -> None:
    lin = torch.nn.Linear(32, 8)
    with pytest.raises(QuantError, match="pass calibration="):
        vnpu.compile(lin, (torch.randn(2, 32),), quant="w8a8-fp8-static")
    with pytest.raises(QuantError, match=r"calibration batch 1 has input shapes \[\(3, 32\)\]"):
        vnpu.compile(lin, (torch.randn(2, 32),), quant="w8a8-int8-static",
                     calibration=[(torch.randn(2, 32),), (torch.randn(3, 32),)])


def test_outlier_channels_degrade_per_tensor_and_smoothquant_recovers() -> None:
    """LLM.int8() / SmoothQuant's finding on a small random-weight Qwen3: with a few activation
    channels ~100x the rest (injected through the RMSNorm weights), per-tensor W8A8 loses
    accuracy, per-token W8A8 loses less, SmoothQuant's migration recovers it. Against the
    model's own fp32 eager logits; the calibration batches are not the evaluated ones."""
    from vnpu.workloads.llm_zoo import build_llm, get_llm

    m = build_llm(get_llm("qwen3-tiny"), attn="eager").eval()

    class Logits(torch.nn.Module):
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.m(ids, use_cache=False).logits

    g = torch.Generator().manual_seed(0)
    outliers = torch.randperm(m.config.hidden_size, generator=g)[:4]
    with torch.no_grad():
        for layer in m.model.layers:
            layer.input_layernorm.weight[outliers] *= 100
            layer.post_attention_layernorm.weight[outliers] *= 100
    vocab = m.config.vocab_size
    ids = torch.randint(0, vocab, (2, 32), generator=g)
    calib = [(torch.randint(0, vocab, (2, 32), generator=g),) for _ in range(2)]
    model = Logits(m)
    with torch.no_grad():
        ref = torch.log_softmax(model(ids).double(), -1)

    def kl(scheme: str) -> float:
        y = vnpu.compile(model, (ids,), quant=scheme, calibration=calib)(ids)
        lq = torch.log_softmax(y.double(), -1)
        return (ref.exp() * (ref - lq)).sum(-1).mean().item()

    per_tensor, per_token, smooth = kl("w8a8-int8-static"), kl("w8a8-int8"), kl("w8a8-int8-smooth")
    assert per_tensor > 3 * per_token  # measured 1.1e-3 vs 2.4e-4
    assert per_token > 3 * smooth  # measured 2.4e-4 vs 3.0e-5
    assert smooth < 1e-4


def test_llm_kl_metric_matches_torch_kl_div() -> None:
    from vnpu.report.numerics import llm_quant_accuracy

    g = torch.Generator().manual_seed(3)
    ref = torch.randn(2, 5, 50, generator=g) * 3
    q = ref + torch.randn(2, 5, 50, generator=g) * 0.3
    acc = llm_quant_accuracy(q.numpy(), ref.numpy())
    kl = torch.nn.functional.kl_div(torch.log_softmax(q.double(), -1), torch.log_softmax(ref.double(), -1),
                                    log_target=True, reduction="none").sum(-1)
    assert acc.positions == 10
    assert acc.mean_kl == pytest.approx(kl.mean().item(), rel=1e-9)
    assert acc.max_kl == pytest.approx(kl.max().item(), rel=1e-9)
    assert acc.same_top_token == (q.argmax(-1) == ref.argmax(-1)).double().mean().item()


@pytest.mark.parametrize("scheme", ["w8a8-int8", "w8a8-fp8"])
def test_quantized_generation_tracks_the_fp32_model(scheme: str) -> None:
    from vnpu.runtime.llm import generate

    rep = generate("qwen3-tiny", prompt_len=8, max_new_tokens=6, dtype="fp32", quant=scheme)
    acc = rep.quant_accuracy
    assert rep.quant == scheme and acc["positions"] == 6
    assert acc["mean_kl"] < 1e-3 and acc["same_top_token"] >= 5 / 6
    full, _ = __import__("vnpu.runtime.llm", fromlist=["model_memory"]).model_memory(
        __import__("vnpu.workloads.llm_zoo", fromlist=["get_llm"]).get_llm("qwen3-tiny"), 1, 64, DType.fp32)
    assert rep.weight_bytes < 0.5 * full  # int8 / fp8 linears instead of fp32


def test_quantized_generation_refuses_what_it_cannot_do() -> None:
    from vnpu.runtime.llm import generate

    with pytest.raises(QuantError, match="needs calibration"):
        generate("qwen3-tiny", prompt_len=8, max_new_tokens=2, quant="w8a8-int8-static")
    with pytest.raises(QuantError, match="functional multi-chip generation runs unquantized.*--timing-only"):
        generate("qwen3-tiny", prompt_len=8, max_new_tokens=2, chips=2, quant="w8a8-int8")
    # timing-only, each chip's shard is quantized: half of the projections' bytes
    rep = generate("qwen3-tiny", prompt_len=8, max_new_tokens=2, chips=2, quant="w8a16", timing_only=True)
    assert rep.chips == 2 and rep.quant == "w8a16" and rep.weight_bytes < rep.unquantized_weight_bytes


def test_int8_depthwise_conv_is_exact() -> None:
    """The depthwise path runs on the vector engine: int8 products must not wrap in int8."""
    rng = np.random.default_rng(0)
    g = Graph("dw")
    x = g.add_input("x", TensorType((1, 4, 5, 5), DType.int8))
    w = g.add_const("w", rng.integers(-128, 128, (4, 1, 3, 3)).astype(np.int8), DType.int8)
    g.outputs = [g.add_node("conv2d", [x, w], {"stride": (1, 1), "padding": ((0, 0), (0, 0)), "dilation": (1, 1),
                                               "groups": 4}).output]
    xd = rng.integers(-128, 128, (1, 4, 5, 5)).astype(np.int8)
    ref = torch.nn.functional.conv2d(torch.tensor(xd, dtype=torch.float64), torch.tensor(w.data, dtype=torch.float64),
                                     groups=4).numpy()
    np.testing.assert_array_equal(np.asarray(vnpu.compile_ir(g)(xd)), ref)


@pytest.mark.parametrize("scheme,bits,group", [("w8a16", 8, None), ("w4a16", 4, 128)])
def test_weight_only_linear_matches_the_numpy_formula(scheme: str, bits: int, group: int | None) -> None:
    """Weights stored int8 / int4 (two per byte) with per-channel / per-128-row scales: on vnpu-v1
    the PEs take them packed (packed_weight_bits), on a chip without that the vector engine
    dequantizes each B tile in the GEMM. The reference dequantizes with NumPy and multiplies in
    float64; both paths must match it."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(512, 300).eval()
    x = torch.randn(3, 7, 512)
    cm = vnpu.compile(lin, (x,), quant=scheme, strict=True)
    got = cm(x).numpy().reshape(-1, 300)
    vec_chip = make_chip({"name": "vector-dequant", "core.matrix.packed_weight_bits": []})
    cm_vec = vnpu.compile(lin, (x,), quant=scheme, strict=True, chip=vec_chip)
    w = lin.weight.detach().numpy().T.copy()
    g_ = group or 512
    qmax = np.float32(2 ** (bits - 1) - 1)
    blocks = w.reshape(512 // g_, g_, 300)
    s = (np.abs(blocks).max(1) / qmax).astype(np.float32)
    q = np.clip(np.round(blocks / s[:, None, :]), -qmax - 1, qmax).reshape(512, 300)
    w_deq = q.astype(np.float32) * np.repeat(s, g_, axis=0)
    ref = x.numpy().reshape(-1, 512).astype(np.float64) @ w_deq.astype(np.float64) + lin.bias.detach().numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6 * np.abs(ref).max())
    np.testing.assert_allclose(cm_vec(x).numpy().reshape(-1, 300), ref, rtol=0, atol=1e-6 * np.abs(ref).max())
    # the weight is in HBM packed: K x N x bits / 8 bytes plus the fp32 scales
    assert cm.info.quant_bytes == [512 * 300 * 4, 512 * 300 * bits // 8 + 4 * 300 * (512 // g_)]
    assert cm.program.weight_bytes < 512 * 300 * 4 * 0.3 + 4096
    mm = [l for l in cm.program.launches if "matmul" in l.ops]
    assert len(mm) == 1 and not any(i.op == "dequant" for st in mm[0].cores for i in st.queues["vector"])
    assert all(i.b_bits == bits for st in mm[0].cores for i in st.queues["matrix"])
    mm = [l for l in cm_vec.program.launches if "matmul" in l.ops]
    assert len(mm) == 1 and any(i.op == "dequant" for st in mm[0].cores for i in st.queues["vector"])


def test_packed_weight_gemv_moves_16_over_bits_weights_per_preload() -> None:
    """Hand count (isa/cost.matmul_cycles): a GEMV [1, K] x [K, 64] on the 64x64 WS array.
    bf16: K / 64 folds, each max(T=1, R=64) cycles; int4 held 4 per PE: K / 256 folds of T = 4."""
    chip = load_chip("vnpu-v1")
    r = chip.core.matrix.rows
    skew = r + 64 - 2
    k = 4096
    assert cost.matmul_cycles(chip, 1, k, 64, DType.bf16) == r + (k // 64 - 1) * r + 1 + skew
    assert cost.matmul_cycles(chip, 1, k, 64, DType.bf16, weight_pack=4) == r + (k // 256 - 1) * r + 4 + skew
    # a large-M GEMM keeps the bf16 rate: 4x fewer folds, each streaming 4x longer
    assert cost.matmul_cycles(chip, 512, k, 64, DType.bf16, weight_pack=4) == r + (k // 256 - 1) * 2048 + 2048 + skew


# -- a limited-precision fp8 accumulator (chip core.matrix.fp8_accumulator_bits) ------------------
def _fp8_dot(chip, a: np.ndarray, b: np.ndarray) -> float:
    """One fp8 MatMul instruction [1, K] @ [K, 1] on the simulated chip (functional)."""
    from vnpu.isa.instructions import CoreStream, MatMul, SramRef
    from vnpu.isa.program import KernelLaunch, Program
    from vnpu.sim.device import Device
    from vnpu.sim.functional import sram_view

    k = a.size
    fp8 = DType.fp8_e4m3
    ra, rb, racc = SramRef(0, fp8, (1, k)), SramRef(4096, fp8, (k, 1)), SramRef(8192, DType.fp32, (1, 1))
    dev = Device(chip, 64, functional=True)
    sram_view(dev.sram(0), ra)[...] = a.reshape(1, k).astype(fp8.np)
    sram_view(dev.sram(0), rb)[...] = b.reshape(k, 1).astype(fp8.np)
    cs = CoreStream()
    cs.queues["matrix"].append(MatMul(ra, rb, racc, False))
    dev.run(Program("t", "", DType.bf16, [KernelLaunch("mm", "matmul", ["matmul"], [cs], dtype=fp8)], 64, [], [], []))
    return float(sram_view(dev.sram(0), racc)[0, 0])


def test_limited_fp8_accumulator_hand_count() -> None:
    """K = 256 in 8 groups of 32 products, each group 31 x 1.0 + 1.5 = 32.5 (exact). An 8-bit
    accumulator (1.xxxxxxx) truncates: 32.5, 65, 97.5, 130 are representable; 162.5 -> 162 (spacing 1
    in [128, 256)), 194.5 -> 194, 226.5 -> 226, 258.5 -> 258 (spacing 2 above 256): 258, not 260.
    Promoting into fp32 every 128 elements keeps each half at 130 exactly: 260. A chip without a
    limited accumulator (vnpu-v1) gives 260."""
    from conftest import round_chip

    a = np.tile(np.r_[np.ones(31), 1.5], 8)
    b = np.ones(256)
    base = {"core__matrix__rate": {"bf16": 1.0, "fp32": 1.0, "fp8_e4m3": 2.0},
            "energy__pj_per_mac": {"bf16": 0.25, "fp32": 1.0, "fp8_e4m3": 0.1}}
    never = round_chip(core__matrix__fp8_accumulator_bits=8, core__matrix__fp8_promotion_k=None, **base)
    every128 = round_chip(core__matrix__fp8_accumulator_bits=8, core__matrix__fp8_promotion_k=128, **base)
    assert _fp8_dot(never, a, b) == 258.0
    assert _fp8_dot(every128, a, b) == 260.0
    assert _fp8_dot(round_chip(**base), a, b) == 260.0


def test_hopper_presets_model_deepseek_v3s_fp8_accumulation() -> None:
    """DeepSeek-V3 (sec. 3.3.2): Hopper's fp8 GEMM keeps ~14 accumulator bits, and promoting to fp32
    every 128 elements recovers fp32 accuracy. K = 4096 products of positive fp8 values: without
    promotion the 14-bit truncation loses 2.9e-3 of the sum here (DeepSeek-V3 measured up to ~2% on
    its GEMMs); promoting every 128 elements cuts that to 5.4e-5; vnpu-v1's fp32 accumulator to 0."""
    rng = np.random.default_rng(0)
    a = rng.uniform(0.5, 2.0, 4096).astype(DType.fp8_e4m3.np).astype(np.float64)
    b = rng.uniform(0.5, 2.0, 4096).astype(DType.fp8_e4m3.np).astype(np.float64)
    exact = float(a @ b)
    h20 = load_chip("h20")
    assert h20.core.matrix.fp8_accumulator_bits == 14 and h20.core.matrix.fp8_promotion_k == 128
    no_promotion = h20.model_copy(update={"core": h20.core.model_copy(update={
        "matrix": h20.core.matrix.model_copy(update={"fp8_promotion_k": None})})})
    err_promoted = abs(_fp8_dot(h20, a, b) - exact) / exact
    err_raw = abs(_fp8_dot(no_promotion, a, b) - exact) / exact
    err_fp32 = abs(_fp8_dot(load_chip("vnpu-v1"), a, b) - exact) / exact
    assert 1e-3 < err_raw < 2e-2, err_raw
    assert err_promoted < err_raw / 20 and err_fp32 < 1e-6, (err_promoted, err_raw, err_fp32)
