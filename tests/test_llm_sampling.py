"""Top-k sampling on the chip (topk -> Gumbel-max -> gather), against references computed here.

- top_k = 1 picks exactly transformers' greedy `generate` tokens;
- top_k = k: every token the chip samples is among the stock eager model's k best at that step,
  and is the one the host picks from the eager logits with the same Gumbel noise
  (idx[argmax(vals / T + noise)]), the noise redrawn here from the seed;
- the sampling graph alone, compiled for the chip, draws each candidate with the frequency
  softmax(top-k logits / T) predicts (chi-square over thousands of rows in one run);
- the CLI: --top-k/--temperature/--seed are recorded, repeatable for a seed, validated.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import vnpu
from vnpu.chip import load_chip
from vnpu.dtypes import DType
from vnpu.runtime.llm import LLMSession, generate
from vnpu.workloads.llm_zoo import DecoderStep, build_llm, get_llm, prompt_ids

NAME = "qwen3-tiny"
PROMPT, NEW, BATCH = 6, 5, 2
K, TEMP, SEED = 5, 0.7, 3


def _session(top_k: int | None, temperature: float = 1.0) -> LLMSession:
    step = DecoderStep(build_llm(get_llm(NAME)), BATCH, 64, top_k=top_k, temperature=temperature)
    return LLMSession(step, load_chip("vnpu-v1"), DType("fp32"), BATCH, NAME)


def _prompt() -> torch.Tensor:
    return prompt_ids(get_llm(NAME).config["vocab_size"], BATCH, PROMPT)


def _gumbel(seed: int, steps: int, shape: tuple[int, int]) -> list[np.ndarray]:
    """The noise the host must have drawn: one [B, k] draw per generated token, in order."""
    rng = np.random.default_rng(seed)
    return [(-np.log(-np.log(rng.random(shape)))).astype(np.float32) for _ in range(steps)]


@pytest.fixture(scope="module")
def sampled() -> np.ndarray:
    sess = _session(K, TEMP)
    gen = sess.generate(_prompt().numpy(), NEW, seed=SEED)
    assert sess.fallback_ops == {}  # topk, argmax and gather all ran as chip kernels
    assert len(sess.prefill_program(PROMPT).user_inputs()) == 3  # input_ids, positions, noise
    return gen.tokens


def test_top1_sampling_is_hf_greedy() -> None:
    ids = _prompt()
    with torch.no_grad():
        ref = build_llm(get_llm(NAME), attn="eager").generate(ids, max_new_tokens=NEW, do_sample=False)[:, PROMPT:]
    sess = _session(1, TEMP)
    np.testing.assert_array_equal(sess.generate(ids.numpy(), NEW, seed=SEED).tokens, ref.numpy())
    assert sess.fallback_ops == {}


def test_top_k_tokens_follow_eager_logits_and_noise(sampled: np.ndarray) -> None:
    ids = _prompt()
    full = torch.cat([ids, torch.from_numpy(sampled)], dim=1)
    with torch.no_grad():  # the stock model's logits at each step, fed the chip's own samples
        logits = build_llm(get_llm(NAME), attn="eager")(full).logits[:, PROMPT - 1:PROMPT - 1 + NEW]
    noise = _gumbel(SEED, NEW, (BATCH, K))
    for t in range(NEW):
        vals, idx = torch.topk(logits[:, t], K, dim=-1)
        for b in range(BATCH):
            assert sampled[b, t] in idx[b].tolist(), (b, t)
        pick = torch.argmax(vals / TEMP + torch.from_numpy(noise[t]), dim=-1)
        np.testing.assert_array_equal(sampled[:, t], idx[torch.arange(BATCH), pick].numpy())
    # not greedy: with these seeds some token differs from the step's argmax
    assert (sampled != logits.argmax(-1).numpy()).any()


class _Sampler(torch.nn.Module):
    """The sampling tail of DecoderStep, on its own."""

    def __init__(self, k: int, temperature: float):
        super().__init__()
        self.k, self.temperature = k, temperature

    def forward(self, logits: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        vals, idx = torch.topk(logits, self.k, dim=-1)
        choice = torch.argmax(vals / self.temperature + noise, dim=-1, keepdim=True)
        return torch.gather(idx, -1, choice).squeeze(-1)


def test_sampling_frequencies_match_softmax_of_top_k() -> None:
    k, temp, vocab, rows = 4, 0.8, 64, 4096
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, vocab, generator=g) * 2  # two distributions, alternating rows
    logits = base.repeat(rows // 2, 1)
    cm = vnpu.compile(_Sampler(k, temp), (logits, torch.zeros(rows, k)), strict=True)  # no host fallback
    noise = _gumbel(7, 1, (rows, k))[0]
    got = np.asarray(cm(logits, torch.from_numpy(noise))).reshape(rows)
    for r in range(2):
        draws = got[r::2]
        vals, idx = torch.topk(base[r], k)
        p = torch.softmax(vals / temp, -1).numpy()
        assert np.isin(draws, idx.numpy()).all()
        counts = np.array([(draws == i).sum() for i in idx.tolist()])
        expected = p * len(draws)
        chi2 = ((counts - expected) ** 2 / expected).sum()
        assert chi2 < 16.27, (counts, expected)  # chi-square, 3 degrees of freedom, p = 0.001


def test_bf16_sampling_keys_keep_fp32_and_match_host_gumbel_max() -> None:
    """A bf16 program samples exactly as Gumbel-max in fp32 over its bf16 logits: the keys
    candidates / T + noise are not rounded to bf16 (at logits near 40 bf16 keys are 0.25
    apart, which made the noise tie and the first candidate win ~3% too often)."""
    k, temp, vocab, rows = 8, 0.7, 64, 4096
    # distinct bf16 values near 40 (no ties, so candidate order is unambiguous)
    base = (40 + 0.25 * torch.randperm(vocab, generator=torch.Generator().manual_seed(3))).reshape(1, vocab)
    logits = base.repeat(rows, 1)
    cm = vnpu.compile(_Sampler(k, temp), (logits, torch.zeros(rows, k)), dtype="bf16", strict=True)
    noise = _gumbel(11, 1, (rows, k))[0]
    got = np.asarray(cm(logits, torch.from_numpy(noise))).reshape(rows)
    vals, idx = torch.topk(base[0].to(torch.bfloat16).float(), k)  # the chip's bf16 logits, exactly
    host = idx.numpy()[np.argmax(vals.numpy()[None, :] / np.float32(temp) + noise, axis=1)]
    assert (got == host).mean() > 0.999, (got != host).sum()  # ulp-level differences of v / T only
    p = torch.softmax(vals / temp, -1).numpy()
    counts = np.array([(got == i).sum() for i in idx.tolist()])
    chi2 = ((counts - p * rows) ** 2 / (p * rows)).sum()
    assert chi2 < 24.32, (counts, p * rows)  # chi-square, 7 degrees of freedom, p = 0.001


def _cli(*args: str):
    from typer.testing import CliRunner

    from vnpu.cli import app

    return CliRunner().invoke(app, ["generate", NAME, *args])


def test_cli_sampling_is_repeatable_per_seed(tmp_path, sampled: np.ndarray) -> None:
    common = ["--prompt-len", str(PROMPT), "--max-new-tokens", str(NEW), "--batch", str(BATCH), "--dtype", "fp32",
              "--top-k", str(K), "--temperature", str(TEMP)]
    out3, out4 = tmp_path / "s3.json", tmp_path / "s4.json"
    res = _cli(*common, "--seed", str(SEED), "--json", str(out3))
    assert res.exit_code == 0, res.output
    assert f"top-{K} at temperature {TEMP:g}" in res.output
    d3 = json.loads(out3.read_text())
    assert (d3["sampling"], d3["top_k"], d3["temperature"], d3["seed"]) == ("top-k", K, TEMP, SEED)
    assert d3["fallback_ops"] == {}
    # the same seed gives the same tokens as the session run above (the fixture's, checked against eager)
    assert d3["tokens"] == sampled.tolist()
    assert _cli(*common, "--seed", "4", "--json", str(out4)).exit_code == 0
    assert json.loads(out4.read_text())["tokens"] != d3["tokens"]


@pytest.mark.parametrize("args,msg", [
    (["--top-k", "-1"], "--top-k must be 0 (greedy) or a positive integer"),
    (["--top-k", "513"], "(--top-k) must be between 1 and the vocabulary size 512, got 513"),
    (["--top-k", "5", "--temperature", "0"], "(--temperature) must be a positive number"),
    (["--top-k", "5", "--seed", "-1"], "(--seed) must be a non-negative integer, got -1"),
    (["--temperature", "0.5"], "apply to top-k sampling: give top_k (--top-k K) too"),
])
def test_cli_bad_sampling_options(args: list[str], msg: str) -> None:
    res = _cli(*args)
    assert res.exit_code == 2 and msg in res.output
    assert res.output.startswith("error: ") and len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize("kw,msg", [({"top_k": 600}, "top_k (--top-k) must be between 1 and the vocabulary size 512"),
                                    ({"top_k": 3, "temperature": -1.0}, "temperature (--temperature) must be a positive"),
                                    ({"seed": 4}, "apply to top-k sampling")])
def test_api_bad_sampling_options(kw: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=re.escape(msg)):
        generate(NAME, prompt_len=4, max_new_tokens=2, **kw)


def test_timing_only_sampling_step_costs() -> None:
    """Timing-only runs feed the sampling programs zero noise."""
    rep = generate(NAME, prompt_len=4, max_new_tokens=3, timing_only=True, top_k=8, temperature=0.9, seed=5)
    assert rep.tokens == [] and rep.fallback_ops == {} and rep.programs == 2
    assert (rep.sampling, rep.top_k, rep.temperature, rep.seed) == ("top-k", 8, 0.9, 5)
    greedy = generate(NAME, prompt_len=4, max_new_tokens=3, timing_only=True)
    # the same programs plus the sampling tail's kernels (topk, Gumbel keys, argmax, gather)
    assert rep.ttft_s > greedy.ttft_s and rep.tpot_s > greedy.tpot_s


def test_gather_along_last_axis_runs_on_the_chip() -> None:
    """aten.gather (last axis) imports as a gather kernel over the flattened rows: any leading
    shape, several picks per row; another axis lowers too (aten_ops._gather_any)."""

    class Take(torch.nn.Module):
        def __init__(self, dim: int):
            super().__init__()
            self.dim = dim

        def forward(self, x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
            return torch.gather(x, self.dim, i) * 2

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 7, generator=g)
    i = torch.randint(0, 7, (2, 3, 4), generator=g)
    cm = vnpu.compile(Take(-1), (x, i), strict=True)
    np.testing.assert_array_equal(np.asarray(cm(x, i)), (torch.gather(x, -1, i) * 2).numpy())
    j = torch.randint(0, 3, (2, 3, 7), generator=g)  # another axis: on the chip too (strict)
    cm1 = vnpu.compile(Take(1), (x, j), strict=True)
    np.testing.assert_array_equal(np.asarray(cm1(x, j)), (torch.gather(x, 1, j) * 2).numpy())
