"""LLM generation on the chip against transformers' own eager `generate`.

Small random-weight Qwen3, Llama and Qwen3-MoE configs (fixed seeds), batch 2, 32 new
tokens: the chip's greedy token ids must equal HF eager generate's (fp32). bf16: each
step's logits must have cosine >= 0.999 with the eager fp32 logits for the same tokens.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vnpu
from vnpu.chip import load_chip
from vnpu.dtypes import DType
from vnpu.runtime.llm import LLMSession, ModelTooLargeError, decode_bucket, generate
from vnpu.workloads.llm_zoo import DecoderStep, build_llm, get_llm, prompt_ids

PROMPT, NEW, BATCH = 11, 32, 2


def _eager(name: str) -> torch.nn.Module:
    """The stock transformers model (eager attention, eager experts) with the zoo's weights."""
    return build_llm(get_llm(name), attn="eager")


def _session(name: str, dtype: str, capacity: int = 64) -> LLMSession:
    spec = get_llm(name)
    return LLMSession(DecoderStep(build_llm(spec), BATCH, capacity), load_chip("vnpu-v1"), DType(dtype), BATCH, name)


@pytest.mark.parametrize("name", ["qwen3-tiny", "llama-tiny", "qwen3-moe-tiny", "llama-3.1-tiny"])
def test_greedy_tokens_match_hf_generate_fp32(name: str) -> None:
    spec = get_llm(name)
    ids = prompt_ids(spec.config["vocab_size"], BATCH, PROMPT)
    with torch.no_grad():
        ref = _eager(name).generate(ids, max_new_tokens=NEW, do_sample=False)[:, PROMPT:]
    sess = _session(name, "fp32")
    gen = sess.generate(ids.numpy(), NEW)
    assert gen.tokens.shape == (BATCH, NEW)
    np.testing.assert_array_equal(gen.tokens, ref.numpy())
    # one prefill and one decode program served all 31 decode steps (no recompilation per token)
    assert sorted(sess.programs) == [("decode", 64), ("prefill", PROMPT)]


@pytest.mark.parametrize("name", ["qwen3-tiny", "llama-tiny", "qwen3-moe-tiny"])
def test_bf16_logits_cosine_with_eager_fp32(name: str) -> None:
    spec = get_llm(name)
    ids = prompt_ids(spec.config["vocab_size"], BATCH, PROMPT)
    gen = _session(name, "bf16").generate(ids.numpy(), 8)
    full = torch.cat([ids, torch.from_numpy(gen.tokens)], dim=1)
    with torch.no_grad():  # teacher-forced: eager logits at the positions the chip picked each token from
        ref = _eager(name)(full).logits[:, PROMPT - 1:PROMPT - 1 + 8].numpy()
    got = gen.logits
    cos = (got * ref).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1))
    assert cos.min() >= 0.999, cos


def test_kv_cache_is_shared_state_and_buckets_reuse_programs() -> None:
    sess = _session("qwen3-tiny", "fp32", capacity=256)
    pre = sess.prefill_program(PROMPT)
    d1, d2 = sess.decode_program(PROMPT), sess.decode_program(63)
    assert d1 is d2  # positions 11..63 share the 64-slot bucket
    d3 = sess.decode_program(64)
    assert d3 is not d1 and decode_bucket(64, 256) == 128
    # every program addresses the same KV-cache and weight buffers in HBM
    assert dict(pre.state) == dict(d1.state) == dict(d3.state)
    assert len(pre.state) == 2 * get_llm("qwen3-tiny").num_layers
    # decode reads only its bucket of the cache: the 128-slot program moves more KV bytes than the 64-slot one
    z = np.zeros((BATCH, 1), np.int64)
    b64 = sess.run(d1, z, np.array([20]))[2].hbm_read_bytes
    b128 = sess.run(d3, z, np.array([70]))[2].hbm_read_bytes
    kv_slot_bytes = 2 * 2 * BATCH * 2 * 32 * 4  # K and V, 2 layers, batch, 2 KV heads, head dim 32, fp32
    assert b128 - b64 == pytest.approx(64 * kv_slot_bytes, rel=0.05)


def test_generation_crossing_a_bucket_boundary_matches_hf() -> None:
    name = "qwen3-tiny"
    spec = get_llm(name)
    ids = prompt_ids(spec.config["vocab_size"], BATCH, 58)
    with torch.no_grad():
        ref = _eager(name).generate(ids, max_new_tokens=12, do_sample=False)[:, 58:]
    sess = _session(name, "fp32", capacity=128)
    np.testing.assert_array_equal(sess.generate(ids.numpy(), 12).tokens, ref.numpy())
    assert sorted(k for k in sess.programs if k[0] == "decode") == [("decode", 64), ("decode", 128)]


def test_generate_api_reports_serving_metrics() -> None:
    rep = vnpu.generate("llama-tiny", prompt_len=5, max_new_tokens=4, batch=1, dtype="fp32")
    d = rep.to_dict()
    for key in ("ttft_s", "tpot_s", "tokens_per_s", "energy_per_token_j", "tokens", "kv_cache_bytes", "weight_bytes",
                "decode_hbm_utilization"):
        assert key in d
    assert rep.mode == "functional" and len(rep.tokens) == 1 and len(rep.tokens[0]) == 4
    assert rep.ttft_s > 0 and rep.tpot_s > 0 and rep.energy_per_token_j > 0
    assert rep.tokens_per_s == pytest.approx(4 / (rep.ttft_s + 3 * rep.tpot_s))
    # KV cache: 2 (K, V) x 2 layers x 1 sequence x 1 KV head x 64 slots x 32 x 4 bytes
    assert rep.kv_cache_bytes == 2 * 2 * 1 * 1 * 64 * 32 * 4


def test_too_big_for_one_chip_says_how_many_chips() -> None:
    with pytest.raises(ModelTooLargeError, match=r"needs at least \d+ chips"):
        generate("qwen3-235b-a22b", prompt_len=16, max_new_tokens=4)


def test_timing_only_big_model_from_meta_device() -> None:
    """Qwen3-0.6B from a meta-device instantiation: no weights in memory, layers extrapolated."""
    rep = generate("qwen3-0.6b", prompt_len=32, max_new_tokens=3, batch=1, dtype="bf16")
    assert rep.mode.startswith("timing-only") and rep.tokens == []
    assert rep.weight_bytes == pytest.approx(596e6 * 2, rel=0.05)  # 0.6B parameters (tied embeddings) in bf16
    assert 0 < rep.ttft_s and 0 < rep.tpot_s
    # a decode step cannot beat streaming the weights it reads once from HBM
    assert rep.decode_bandwidth_bound_fraction <= 1.0


def test_cli_generate_json_tokens_match_hf(tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from vnpu.cli import app

    out = tmp_path / "gen.json"
    res = CliRunner().invoke(app, ["generate", "qwen3-tiny", "--prompt-len", "6", "--max-new-tokens", "5", "--batch", "2",
                                   "--dtype", "fp32", "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    for key in ("ttft_s", "tpot_s", "tokens_per_s", "energy_per_token_j", "tokens"):
        assert key in data
    ids = prompt_ids(get_llm("qwen3-tiny").config["vocab_size"], 2, 6)
    with torch.no_grad():
        ref = _eager("qwen3-tiny").generate(ids, max_new_tokens=5, do_sample=False)[:, 6:]
    assert data["tokens"] == ref.tolist()
    assert "time to first token" in res.output


@pytest.mark.parametrize("args,msg", [
    (["generate", "gpt-5"], "unknown LLM"),
    (["generate", "qwen3-tiny", "--chips", "2", "--top-k", "5"], "greedy only"),
    (["generate", "qwen3-tiny", "--max-new-tokens", "0"], "must be a positive integer"),
    (["generate", "qwen3-235b-a22b"], "needs at least"),
    (["generate", "qwen3-tiny", "--kv-cache", "fp4"], "unknown KV-cache format 'fp4'"),
    (["compare", "--kv-cache", "int2"], "unknown KV-cache format 'int2'"),
    (["generate", "qwen3-tiny", "--chips", "2", "--kv-cache", "fp8"], "keeps the KV cache in the program's dtype"),
])
def test_cli_generate_bad_input(args: list[str], msg: str) -> None:
    from typer.testing import CliRunner

    from vnpu.cli import app

    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and msg in res.output
    assert len(res.output.strip().splitlines()) <= 2, res.output  # one error line (and a wrapped tail at most)


def test_layer_extrapolation_matches_the_full_program() -> None:
    """The steady-state shortcut: a 4-layer model's step cost from its 2-layer program equals
    the cost of the real 4-layer program (timing-only, meta weights)."""
    from dataclasses import replace

    from vnpu.runtime.llm import PhaseCost, extrapolate_layers

    spec = replace(get_llm("qwen3-tiny"), config={**get_llm("qwen3-tiny").config, "num_hidden_layers": 4})
    chip = load_chip("vnpu-v1")
    z = np.zeros((1, 1), np.int64)
    runs = {}
    for layers in (2, 4):
        sess = LLMSession(DecoderStep(build_llm(spec, device="meta", num_layers=layers), 1, 128), chip, DType.bf16, 1,
                          functional=False)
        prog = sess.decode_program(70)
        runs[layers] = (prog, sess.run(prog, z, np.array([70]))[2])
    full = PhaseCost.of(runs[4][1])
    est = extrapolate_layers(runs[2][1], runs[2][0], chip, 4)
    assert est.seconds == pytest.approx(full.seconds, rel=1e-6)
    assert est.hbm_bytes == pytest.approx(full.hbm_bytes, rel=1e-6)
    assert est.flops == pytest.approx(full.flops, rel=1e-6)
    assert est.energy_j == pytest.approx(full.energy_j, rel=1e-3)


def test_tensor_parallel_shard_and_allreduce_cost() -> None:
    from vnpu.isa.cost import allreduce_seconds
    from vnpu.runtime.llm import chips_needed, shard_spec

    spec = get_llm("qwen3-32b")
    part = shard_spec(spec, 4)
    c, p = spec.config, part.config
    assert (p["num_attention_heads"], p["num_key_value_heads"], p["intermediate_size"]) == (16, 2, 6400)
    assert p["hidden_size"] == c["hidden_size"] and part.num_layers == spec.num_layers
    moe = shard_spec(get_llm("qwen3-235b-a22b"), 8)
    assert (moe.config["num_experts"], moe.config["num_experts_per_tok"], moe.config["num_key_value_heads"]) == (16, 1, 1)
    chip = load_chip("vnpu-v1")
    # ring all-reduce on the 400 GB/s, 2 us link: 2 (n-1) steps of bytes/n
    assert allreduce_seconds(chip, 8e6, 4) == pytest.approx(6 * (2e6 / 400e9 + 2e-6))
    assert allreduce_seconds(chip, 8e6, 1) == 0.0
    assert chips_needed("qwen3-235b-a22b", 512, 16, 1, "vnpu-v1", "bf16") == 8
    assert chips_needed("qwen3-8b", 512, 16, 1, "vnpu-v1", "bf16") == 1


def test_multi_chip_generation_adds_collectives() -> None:
    from vnpu.runtime.llm import shard_spec

    one = generate("qwen3-0.6b", prompt_len=16, max_new_tokens=2, batch=1, chips=1)
    two = generate("qwen3-0.6b", prompt_len=16, max_new_tokens=2, batch=1, chips=2)
    assert two.chips == 2 and "2 chips" in two.mode
    # a decode step on 2 chips = one chip's half-model step + the all-reduces of 28 layers
    half = generate(shard_spec(get_llm("qwen3-0.6b"), 2), prompt_len=16, max_new_tokens=2, batch=1)
    link = load_chip("vnpu-v1").chip_link
    bw, lat = link.bandwidth_gbs * 1e9, link.latency_us * 1e-6
    # by hand: 28 layers x 2 ring all-reduces of one token's 1024 bf16 activations (2 steps of 1024 B each),
    # then the all-gather of the two chips' 16 B argmax candidates (1 step of 16 B)
    comm = 28 * 2 * 2 * (1024 / bw + lat) + (16 / bw + lat)
    assert two.tpot_s == pytest.approx(half.tpot_s + comm, rel=1e-9)
    assert comm > 0 and two.tpot_s > half.tpot_s  # (a 0.6B model is launch-bound: 2 chips do not beat 1)
    assert two.weight_bytes == pytest.approx(one.weight_bytes, rel=0.02)  # the model, summed over chips


def test_cli_compare_side_by_side(tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from vnpu.cli import app

    out = tmp_path / "cmp.json"
    res = CliRunner().invoke(app, ["compare", "--chips", "vnpu-v1,h20", "--model", "qwen3-tiny", "--prompt-len", "8",
                                   "--max-new-tokens", "2", "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert [d["chip"] for d in data] == ["vnpu-v1", "h20"]
    for d in data:
        assert d["ttft_s"] > 0 and d["tpot_s"] > 0 and d["energy_per_token_j"] > 0
    assert "time per output token" in res.output and "h20" in res.output
