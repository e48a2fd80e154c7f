"""The zoo's decoder LLMs as data, and the limits a generation request is checked against.

Torch-free on purpose: `vnpu generate` and `vnpu compare` refuse an impossible request
(a prompt past the context, a batch or top-k out of range, a chip count the model does not
split over) before they import torch and transformers, so a refusal costs milliseconds.
workloads/llm_zoo.py builds the models from these specs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np


class UnknownLLMError(KeyError, ValueError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class LLMSpec:
    name: str
    family: str  # qwen3 | llama | qwen3_moe
    config: dict[str, Any]
    description: str
    source: str = ""
    functional: bool = False  # small enough to simulate functionally (real tokens)

    @property
    def num_layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    @property
    def is_moe(self) -> bool:
        """Mixture-of-experts layers (expert parallel over several chips)."""
        return self.family == "qwen3_moe"


def _tiny(family: str, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
                                rms_norm_eps=1e-6, tie_word_embeddings=False)
    if family == "qwen3_moe":
        base.update(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64, norm_topk_prob=True)
    base.update(over)
    return base


def _qwen3(**over: Any) -> dict[str, Any]:
    """What every Qwen3 model card (config.json) shares, with the model's own sizes."""
    return dict(vocab_size=151936, head_dim=128, max_position_embeddings=40960, rms_norm_eps=1e-6,
                tie_word_embeddings=False, rope_theta=1000000.0) | over


SPECS: dict[str, LLMSpec] = {s.name: s for s in (
    LLMSpec("qwen3-tiny", "qwen3", _tiny("qwen3"),
            "Qwen3 architecture, 2 layers x 128, 4 query / 2 KV heads of 32, vocab 512 (functional runs)",
            functional=True),
    LLMSpec("llama-tiny", "llama", _tiny("llama", num_attention_heads=4, num_key_value_heads=1),
            "Llama architecture, 2 layers x 128, 4 query / 1 KV head of 32, vocab 512 (functional runs)",
            functional=True),
    LLMSpec("llama-3.1-tiny", "llama", _tiny("llama", num_attention_heads=4, num_key_value_heads=1,
                                            rope_theta=500000.0, rope_scaling=dict(
                                                rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                high_freq_factor=4.0, original_max_position_embeddings=64)),
            "Llama-3.1 architecture with its llama3 RoPE scaling, 2 layers x 128, 4 query / 1 KV head of 32, "
            "vocab 512; original context 64 so that the scaling changes most of the tiny head's frequencies "
            "(functional runs)",
            functional=True),
    LLMSpec("qwen3-moe-tiny", "qwen3_moe", _tiny("qwen3_moe"),
            "Qwen3-MoE architecture, 2 layers x 128, 8 experts top-2 of 64, vocab 512 (functional runs)",
            functional=True),
    LLMSpec("qwen3-0.6b", "qwen3", _qwen3(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                                          num_attention_heads=16, num_key_value_heads=8, tie_word_embeddings=True),
            "Qwen3-0.6B: 28 layers x 1024, 16 Q / 8 KV heads of 128, MLP 3072, vocab 151936, tied embeddings",
            "huggingface.co/Qwen/Qwen3-0.6B config.json"),
    LLMSpec("qwen3-8b", "qwen3", _qwen3(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                                        num_attention_heads=32, num_key_value_heads=8),
            "Qwen3-8B: 36 layers x 4096, 32 Q / 8 KV heads of 128, MLP 12288, vocab 151936",
            "huggingface.co/Qwen/Qwen3-8B config.json"),
    LLMSpec("qwen3-32b", "qwen3", _qwen3(hidden_size=5120, intermediate_size=25600, num_hidden_layers=64,
                                         num_attention_heads=64, num_key_value_heads=8),
            "Qwen3-32B: 64 layers x 5120, 64 Q / 8 KV heads of 128, MLP 25600, vocab 151936",
            "huggingface.co/Qwen/Qwen3-32B config.json"),
    LLMSpec("qwen3-235b-a22b", "qwen3_moe", _qwen3(hidden_size=4096, intermediate_size=12288, moe_intermediate_size=1536,
                                                   num_experts=128, num_experts_per_tok=8, norm_topk_prob=True,
                                                   num_hidden_layers=94, num_attention_heads=64, num_key_value_heads=4),
            "Qwen3-235B-A22B: 94 MoE layers x 4096, 128 experts top-8 of 1536, 64 Q / 4 KV heads of 128",
            "huggingface.co/Qwen/Qwen3-235B-A22B config.json"),
    LLMSpec("llama-3.1-8b", "llama", dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                                          num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                                          head_dim=128, max_position_embeddings=131072, rms_norm_eps=1e-5,
                                          tie_word_embeddings=False, rope_theta=500000.0,
                                          rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                            high_freq_factor=4.0,
                                                            original_max_position_embeddings=8192)),
            "Llama-3.1-8B: 32 layers x 4096, 32 Q / 8 KV heads of 128, MLP 14336, vocab 128256, llama3 RoPE scaling "
            "(x8 from an 8192 context)",
            "huggingface.co/meta-llama/Llama-3.1-8B config.json"),
)}


def get_llm(name: str) -> LLMSpec:
    try:
        return SPECS[name]
    except (KeyError, TypeError):
        raise UnknownLLMError(f"unknown LLM {name!r}; valid names: {', '.join(SPECS)}") from None


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


MAX_SEED = 2**64 - 1  # np.random.default_rng takes any non-negative int; the CLI keeps seeds to 64 bits


def check_sampling(top_k: int | None, temperature: float, vocab_size: int, seed: int = 0) -> None:
    """ValueError (one line, naming the API argument and the CLI option) unless top_k is None
    (greedy) or 1..vocab_size, temperature is positive and finite, seed is an integer in
    0..2**64-1, and temperature / seed are left at their defaults when decoding is greedy."""
    if top_k is not None and (not _is_int(top_k) or not 1 <= top_k <= vocab_size):
        raise ValueError(f"top_k (--top-k) must be between 1 and the vocabulary size {vocab_size}, got {top_k!r}")
    if (not isinstance(temperature, (int, float, np.floating)) or isinstance(temperature, bool)
            or not temperature > 0 or not math.isfinite(temperature)):
        raise ValueError(f"temperature (--temperature) must be a positive number and finite, got {temperature!r}")
    if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed (--seed) must be a non-negative integer, got {seed!r} (at most 2**64-1)")
    if top_k is None and (temperature != 1.0 or seed != 0):
        raise ValueError("temperature and seed (--temperature, --seed) apply to top-k sampling: "
                         "give top_k (--top-k K) too, or drop them for greedy decoding")


def shard_spec(spec: LLMSpec, chips: int) -> LLMSpec:
    """One chip's part of a model served on `chips` chips, as a model of its own (its shapes
    are what a timing-only run needs): tensor parallel attention (query heads split; KV heads
    split, or replicated when fewer than the chips), dense MLPs split along the intermediate
    size, MoE experts split over the chips (expert parallel, each chip routing its share
    k / chips of every token's experts: balanced routing), embedding and LM head split along
    the vocabulary."""
    if chips == 1:
        return spec
    c = dict(spec.config)
    problems = []
    if c["num_attention_heads"] % chips:
        problems.append(f"{c['num_attention_heads']} attention heads")
    if c["num_key_value_heads"] % chips and chips % c["num_key_value_heads"]:
        problems.append(f"{c['num_key_value_heads']} KV heads")
    if spec.is_moe:
        if c["num_experts"] % chips or c["num_experts_per_tok"] % chips:
            problems.append(f"{c['num_experts']} experts / top-{c['num_experts_per_tok']}")
    elif c["intermediate_size"] % chips:
        problems.append(f"MLP width {c['intermediate_size']}")
    if problems:
        raise ValueError(f"{spec.name} cannot be split evenly over {chips} chips ({', '.join(problems)})")
    c["head_dim"] = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    c["num_attention_heads"] //= chips
    c["num_key_value_heads"] = max(1, c["num_key_value_heads"] // chips)
    c["vocab_size"] = -(-c["vocab_size"] // chips)
    if spec.is_moe:
        c["num_experts"] //= chips
        c["num_experts_per_tok"] //= chips
    else:
        c["intermediate_size"] //= chips
    return replace(spec, name=f"{spec.name}/{chips}", config=c, functional=False)


# -- limits on what a generation may ask for (checked before anything is built) -----------------
MAX_BATCH = 4096  # sequences one program serves; far past real serving batches, and it bounds program size


def valid_chip_counts(spec: LLMSpec) -> list[int]:
    """The chip counts `spec` splits over evenly (shard_spec): query heads divisible, KV heads
    divisible or replicated, experts / top-k (MoE) or the MLP width (dense) divisible."""
    c = spec.config
    out = []
    for n in range(1, int(c["num_attention_heads"]) + 1):
        try:
            shard_spec(spec, n)
        except ValueError:
            continue
        out.append(n)
    return out


def check_generation(spec: LLMSpec, prompt_len: int, max_new_tokens: int, batch: int, chips: int = 1) -> None:
    """ValueError (one line naming the API argument, the CLI option, the limit and what fits)
    unless prompt_len, max_new_tokens, batch and chips are positive integers, prompt_len +
    max_new_tokens is within the model's context (max_position_embeddings), batch is at most
    MAX_BATCH and the model splits evenly over `chips`. Arithmetic only: nothing is allocated."""
    for arg, opt, v in (("prompt_len", "--prompt-len", prompt_len), ("max_new_tokens", "--max-new-tokens", max_new_tokens),
                        ("batch", "--batch", batch), ("chips", "--chips", chips)):
        if not _is_int(v) or v < 1:
            raise ValueError(f"{arg} ({opt}) must be a positive integer, got {v!r}")
    ctx = int(spec.config["max_position_embeddings"])
    if prompt_len + max_new_tokens > ctx:
        fit = (f"with {max_new_tokens} new tokens at most {ctx - max_new_tokens} prompt tokens fit"
               if max_new_tokens < ctx else f"max_new_tokens (--max-new-tokens) can be at most {ctx - 1}")
        raise ValueError(f"prompt_len + max_new_tokens (--prompt-len + --max-new-tokens) = {prompt_len} + "
                         f"{max_new_tokens} exceeds {spec.name}'s context of {ctx} tokens "
                         f"(max_position_embeddings); {fit}")
    if batch > MAX_BATCH:
        raise ValueError(f"batch (--batch) {batch} is over the limit of {MAX_BATCH} sequences per program; "
                         f"give at most {MAX_BATCH}")
    if chips > 1:
        valid = valid_chip_counts(spec)
        if chips not in valid:
            c = spec.config
            what = (f"{c['num_experts']} experts, top-{c['num_experts_per_tok']}" if spec.is_moe
                    else f"MLP width {c['intermediate_size']}")
            raise ValueError(f"chips (--chips) {chips}: {spec.name} splits evenly over {', '.join(map(str, valid))} "
                             f"chips only ({c['num_attention_heads']} attention heads, {c['num_key_value_heads']} KV "
                             f"heads, {what})")
