"""Weight-only schemes on MoE experts (compiler/quantize._weight_only_experts, kernels/moe.py):
the routed experts' gate/up and down weights stored packed with group scales and multiplied
packed, as the dense weight-only GEMMs are.

Reference nobody here wrote: the transformers Qwen3-MoE model in fp32 eager with every weight
the scheme quantizes replaced by its round-to-nearest group quantization, computed in torch."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from vnpu.chip import load_chip
from vnpu.compiler.quantize import QuantPlan, get_scheme
from vnpu.dtypes import DType
from vnpu.runtime.llm import LLMSession, model_memory
from vnpu.workloads.llm_zoo import DecoderStep, build_llm, get_llm

PROMPT = np.array([[3, 17, 42, 7, 99, 5, 250, 31]])


def fake_quant(w: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """Symmetric round-to-nearest (half to even) over groups of the last axis (K), in torch."""
    qmax = 2 ** (bits - 1) - 1
    g = w.float().reshape(*w.shape[:-1], w.shape[-1] // group, group)
    scale = g.abs().amax(-1, keepdim=True) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (torch.round(g / scale).clamp(-qmax - 1, qmax) * scale).reshape(w.shape)


def fake_quantized_model(model: torch.nn.Module, bits: int, group: int | None) -> torch.nn.Module:
    """Every weight a matmul reads ([out, in]: the projections, the router, the LM head) and the
    experts ([E, out, in]) quantized over groups of their inputs; the embedding table is a lookup."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, w in ref.named_parameters():
            if w.dim() in (2, 3) and "embed_tokens" not in name:
                w.copy_(fake_quant(w, bits, min(group or w.shape[-1], w.shape[-1])))
    return ref


def chip_logits(model, scheme: str, chip: str = "vnpu-v1", steps: int = 2) -> list[np.ndarray]:
    sess = LLMSession(DecoderStep(model, 1, 64), load_chip(chip), DType.fp32, 1, "moe",
                      quant=QuantPlan(get_scheme(scheme)))
    tok, logits, _ = sess.run(sess.prefill_program(PROMPT.shape[1]), PROMPT, np.arange(PROMPT.shape[1]))
    out, ids = [logits], [tok]
    for i in range(steps):
        tok, logits, _ = sess.run(sess.decode_program(PROMPT.shape[1] + i), tok.reshape(1, 1),
                                  np.array([PROMPT.shape[1] + i]))
        out.append(logits)
        ids.append(tok)
    return out, ids


def torch_logits(model, ids: list[np.ndarray]) -> np.ndarray:
    seq = np.concatenate([PROMPT] + [t.reshape(1, 1) for t in ids[:-1]], axis=1)
    with torch.no_grad():
        return model(torch.as_tensor(seq)).logits[0, PROMPT.shape[1] - 1:].numpy()


@pytest.fixture(scope="module")
def moe():
    """(the model the chip compiles, the stock eager transformers model: the same seeded weights)"""
    spec = get_llm("qwen3-moe-tiny")
    return build_llm(spec), build_llm(spec, attn="eager")


# h20 has no packed-weight PEs: there the vector engine dequantizes each expert block
@pytest.mark.parametrize("scheme,chip", [("w4a16", "vnpu-v1"), ("w8a16", "vnpu-v1"), ("w4a16", "h20")])
def test_quantized_experts_match_torch_fake_quant(moe, scheme, chip):
    s = get_scheme(scheme)
    model, eager = moe
    got, ids = chip_logits(model, scheme, chip)
    want = torch_logits(fake_quantized_model(eager, s.bits, s.group), ids)
    plain = torch_logits(eager, ids)
    got = np.stack([g[0] for g in got])
    match = float(np.abs(got - want).max())
    effect = float(np.abs(plain - want).max())
    assert match < 2e-5, match  # fp32 accumulation order only
    assert effect > 50 * match, (effect, match)  # the quantization itself is what the chip computes


def test_quantized_experts_bytes_and_memory(moe):
    spec = get_llm("qwen3-moe-tiny")
    s = get_scheme("w4a16")
    sess = LLMSession(DecoderStep(moe[0], 1, 64), load_chip("vnpu-v1"), DType.bf16, 1, "moe_b", quant=QuantPlan(s))
    prog = sess.prefill_program(PROMPT.shape[1])
    c = spec.config
    e, h, i = c["num_experts"], c["hidden_size"], c["moe_intermediate_size"]
    # per layer: gate/up [E, H/2, 2I] packed int4 + [E, H/128, 2I] scales; down [E, I/2, H] + [E, I/64, H]
    expert_bytes = spec.num_layers * (e * h * 2 * i // 2 + e * (h // 128) * 2 * i * 4 + e * i * h // 2 + e * h * 4)
    experts = sum(r.numel * r.dtype.itemsize for r, _ in prog.constants if len(r.shape) == 3 and r.shape[0] == e)
    assert experts == expert_bytes
    # what generate reports is what the program holds in HBM (its other constants: a few small tables)
    w_model, _ = model_memory(spec, 1, 64, DType.bf16, s)
    held = sum(r.numel * r.dtype.itemsize for r, _ in prog.constants)
    assert 0 <= held - w_model < 256, (held, w_model)
    assert w_model < 0.4 * model_memory(spec, 1, 64, DType.bf16)[0]


def test_decode_reads_the_packed_experts():
    """Timing only, Qwen3-235B-A22B (2 layers): the decode step's expert launches read the routed
    experts' packed int4 weights and scales, a quarter of their bf16 bytes plus 1/32 for the scales."""
    spec = get_llm("qwen3-235b-a22b")
    step = DecoderStep(build_llm(spec, device="meta", num_layers=2), 1, 256)
    reads = {}
    for q in (None, "w4a16"):
        sess = LLMSession(step, load_chip("vnpu-v1"), DType.bf16, 1, f"a22b_{q}", functional=False,
                          quant=QuantPlan(get_scheme(q)) if q else None)
        prog = sess.decode_program(100)
        prof = sess.run(prog, np.zeros((1, 1), np.int64), np.array([100]))[2]
        reads[q] = sum(k.hbm_read_bytes for k in prof.kernels if k.kind == "moe" and "gate_up" in k.name or
                       k.kind == "moe" and k.name.endswith("_down"))
    c = spec.config
    k, h, i = c["num_experts_per_tok"], c["hidden_size"], c["moe_intermediate_size"]
    bf16 = 2 * k * 3 * h * i * 2  # 2 layers x top-k experts x (gate, up, down) x bf16
    assert reads[None] >= bf16
    int4 = 2 * k * 3 * h * i // 2 + 2 * k * (2 * i * (h // 128) + h * (i // 128)) * 4
    assert int4 <= reads["w4a16"] <= int4 * 1.1 + 64 * 1024, (reads["w4a16"], int4)
