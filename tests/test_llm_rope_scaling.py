"""Llama-3.1's "llama3" RoPE scaling: the zoo passes a spec's `rope_scaling` into the
transformers config, and the chip runs the scaled frequencies (the greedy-token check against
HF generate is `test_greedy_tokens_match_hf_generate_fp32[llama-3.1-tiny]` in
test_llm_generate.py). These tests make sure that check is not vacuous."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from vnpu.chip import load_chip
from vnpu.dtypes import DType
from vnpu.runtime.llm import LLMSession
from vnpu.workloads.llm_zoo import DecoderStep, build_llm, get_llm, make_config, prompt_ids


def _unscaled(name: str):
    spec = get_llm(name)
    cfg = {k: v for k, v in spec.config.items() if k != "rope_scaling"}
    return dataclasses.replace(spec, name=f"{name}-unscaled", config=cfg)


def test_llama31_specs_carry_the_published_rope_scaling() -> None:
    # huggingface.co/meta-llama/Llama-3.1-8B config.json: "rope_scaling"
    rp = make_config(get_llm("llama-3.1-8b")).rope_parameters
    assert rp == {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert make_config(get_llm("llama-tiny")).rope_parameters["rope_type"] == "default"


def test_scaled_inv_freq_differs_and_changes_the_tokens() -> None:
    scaled = build_llm(get_llm("llama-3.1-tiny"), attn="eager")
    plain = build_llm(_unscaled("llama-3.1-tiny"), attn="eager")
    f1, f0 = scaled.model.rotary_emb.inv_freq, plain.model.rotary_emb.inv_freq
    # head_dim 32, theta 5e5, original context 64: wavelengths 2pi/f above 64 are divided by 8, those
    # between 16 and 64 interpolated; only the two fastest (wavelength < 16) are left alone
    changed = ~torch.isclose(f1, f0)
    assert changed.sum() == 14 and not changed[:2].any()
    torch.testing.assert_close(f1[3:], f0[3:] / 8)
    # the same weights with and without scaling generate different tokens over 11 + 32 positions
    ids = prompt_ids(512, 2, 11)
    with torch.no_grad():
        t1 = scaled.generate(ids, max_new_tokens=32, do_sample=False)
        t0 = plain.generate(ids, max_new_tokens=32, do_sample=False)
    assert not torch.equal(t1, t0)


def test_chip_program_carries_the_scaled_frequencies() -> None:
    """The rope path takes its frequencies from the model (the inv_freq buffer becomes a graph
    constant feeding cos/sin): the compiled program must hold the scaled values, not the default ones."""
    spec = get_llm("llama-3.1-tiny")
    sess = LLMSession(DecoderStep(build_llm(spec), 1, 64), load_chip("vnpu-v1"), DType.fp32, 1, spec.name)
    prog = sess.prefill_program(8)
    f1 = build_llm(spec, attn="eager").model.rotary_emb.inv_freq.numpy()
    f0 = build_llm(_unscaled(spec.name), attn="eager").model.rotary_emb.inv_freq.numpy()

    def holds(vals: np.ndarray) -> bool:
        return any(np.asarray(d).size == vals.size and np.allclose(np.asarray(d, np.float32).reshape(-1), vals)
                   for _, d in prog.constants)

    assert holds(f1) and not holds(f0)
