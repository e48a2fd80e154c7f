"""fp8 KV cache (compiler/kv_cache.py): the cache holds fp8 e4m3 rows with an fp32 scale per
token and head, the appends quantize as they write and attention reads the fp8 cache directly.

References nobody here wrote: torch's own float8_e4m3fn cast (quantization of each K/V row) and
the transformers model run in fp32 eager with a cache that stores those quantized rows."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vnpu.chip import load_chip
from vnpu.compiler.kv_cache import KVCacheError, kv_cache_format
from vnpu.dtypes import DType
from vnpu.runtime.llm import LLMSession, kv_bytes, model_memory
from vnpu.workloads.llm_zoo import DecoderStep, _BufferCache, build_llm, get_llm

FP8 = DType.fp8_e4m3
PROMPT = np.array([[3, 17, 42, 7, 99, 5, 250, 31]])
# long enough that decode reads 512 slots in 4 KV blocks, split over cores (flash-decoding + combine)
LONG_PROMPT = np.random.default_rng(0).integers(0, 500, (1, 460))


def torch_fp8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of the last axis: (fp8 values as float, scale) with scale = amax / 448, by torch's cast."""
    amax = x.abs().amax(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny * 448)
    q = (x * (448.0 / amax)).clamp(-448, 448).to(torch.float8_e4m3fn).float()
    return q, amax / 448.0


class _Fp8Cache(_BufferCache):
    """The torch reference: the step's keys and values are stored as their fp8 dequantization."""

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        kq, ks = torch_fp8_rows(key_states.float())
        vq, vs = torch_fp8_rows(value_states.float())
        return super().update(kq * ks, vq * vs, layer_idx)


def torch_step(step: DecoderStep, ids: np.ndarray, positions: np.ndarray, fp8: bool) -> np.ndarray:
    positions = torch.as_tensor(positions)
    b, s = ids.shape
    cache = (_Fp8Cache if fp8 else _BufferCache)(step, positions)
    with torch.no_grad():
        out = step.model.model(input_ids=torch.as_tensor(ids), attention_mask=positions.view(1, 1, s, 1),
                               position_ids=positions.unsqueeze(0).expand(b, s), cache=cache, use_cache=False)
        return step.model.lm_head(out.last_hidden_state[:, -1, :]).numpy()


def run_steps(model, kv: DType | None, steps: int = 3, prompt: np.ndarray = PROMPT,
              capacity: int = 64) -> tuple[list[np.ndarray], LLMSession]:
    sess = LLMSession(DecoderStep(model, 1, capacity), load_chip("vnpu-v1"), DType.fp32, 1, "kv", kv_cache=kv)
    tok, logits, _ = sess.run(sess.prefill_program(prompt.shape[1]), prompt, np.arange(prompt.shape[1]))
    out, pos = [logits], prompt.shape[1]
    for _ in range(steps):
        tok, logits, _ = sess.run(sess.decode_program(pos), tok.reshape(1, 1), np.array([pos]))
        out.append(logits)
        pos += 1
    return out, sess


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_llm(get_llm("qwen3-tiny"), num_layers=2)


# the chip computes the fp8-cache model to fp32 rounding, except where an fp32 difference in a key
# or value decides an fp8 rounding tie (1 of layer 0's 29,440 keys at the long prompt: 22 vs 24)
@pytest.mark.parametrize("prompt,capacity,tol", [(PROMPT, 64, 2e-6), (LONG_PROMPT, 1024, 2e-4)],
                         ids=["short", "split-kv"])
def test_fp8_cache_matches_torch_with_the_same_quantized_cache(tiny, prompt, capacity, tol):
    chip_logits, sess = run_steps(tiny, FP8, prompt=prompt, capacity=capacity)
    if capacity == 1024:
        assert any(l.name.endswith("_combine") for l in sess.decode_program(prompt.shape[1]).launches)
    ref_fp8, ref_fp32 = DecoderStep(tiny, 1, capacity), DecoderStep(tiny, 1, capacity)
    ids, pos = prompt, np.arange(prompt.shape[1])
    worst_match, worst_effect = 0.0, np.inf
    for i, got in enumerate(chip_logits):
        if i:  # the chip's own greedy tokens, fed to both references
            ids, pos = np.argmax(chip_logits[i - 1], -1).reshape(1, 1), np.array([prompt.shape[1] + i - 1])
        want = torch_step(ref_fp8, ids, pos, fp8=True)
        plain = torch_step(ref_fp32, ids, pos, fp8=False)
        worst_match = max(worst_match, float(np.abs(got - want).max()))
        worst_effect = min(worst_effect, float(np.abs(plain - want).max()))
    # and the fp8 cache's own effect on the logits is far larger than that difference
    assert worst_match < tol, worst_match
    assert worst_effect > 40 * max(worst_match, tol / 100), (worst_effect, worst_match)


def test_cache_rows_are_torch_fp8_with_their_scales(tiny):
    _, sess = run_steps(tiny, FP8, steps=0)
    prog = sess.prefill_program(PROMPT.shape[1])
    dev = sess._dev()
    state = dict(prog.state)
    k8 = dev.read(state["b_k_cache_0"])
    ks = dev.read(state["b_k_cache_0_scale"])
    assert k8.dtype == FP8.np and ks.dtype == np.float32 and ks.shape == k8.shape[:3] + (1,)
    # the keys of layer 0 from torch (fp32), quantized by torch's own cast
    captured = {}

    class Capture(_BufferCache):
        def update(self, key_states, value_states, layer_idx, *a, **k):
            captured.setdefault(layer_idx, key_states.float())
            return super().update(key_states, value_states, layer_idx)

    ref = DecoderStep(tiny, 1, 64)
    positions = torch.arange(PROMPT.shape[1])
    with torch.no_grad():
        ref.model.model(input_ids=torch.as_tensor(PROMPT), attention_mask=positions.view(1, 1, -1, 1),
                        position_ids=positions.unsqueeze(0), cache=Capture(ref, positions), use_cache=False)
    q, s = torch_fp8_rows(captured[0])
    n = PROMPT.shape[1]
    np.testing.assert_allclose(ks[:, :, :n], s.numpy(), rtol=1e-5)
    same = k8[:, :, :n].astype(np.float32) == q.numpy()
    assert same.all(), same.mean()  # (at this prompt no fp32 difference lands on an fp8 rounding tie)
    assert not k8[:, :, n:].astype(np.float32).any()  # slots not yet written stay zero


def test_fp8_cache_memory_and_attention_traffic(tiny):
    spec = get_llm("qwen3-8b")
    hd, hkv, layers = 128, 8, spec.num_layers
    bf16 = kv_bytes(spec, 2, 4096, DType.bf16)
    fp8 = kv_bytes(spec, 2, 4096, DType.bf16, FP8)
    assert bf16 == 2 * layers * 2 * hkv * 4096 * hd * 2
    assert fp8 == 2 * layers * 2 * hkv * 4096 * (hd + 4)  # one byte per element + an fp32 scale per row
    assert model_memory(spec, 2, 4096, DType.bf16, kv_cache=FP8)[1] == fp8
    # timing only: the decode attention of a 2-layer Qwen3-8B reads the fp8 cache and its scales
    step = DecoderStep(build_llm(spec, device="meta", num_layers=2), 1, 4096)
    reads = {}
    for kv in (None, FP8):
        sess = LLMSession(step, load_chip("vnpu-v1"), DType.bf16, 1, f"q8_{kv}", functional=False, kv_cache=kv)
        prog = sess.decode_program(2048)
        prof = sess.run(prog, np.zeros((1, 1), np.int64), np.array([2048]))[2]
        att = [k for k in prof.kernels if k.kind == "attention" and "combine" not in k.name][0]
        reads[kv] = att.hbm_read_bytes
    slots = 2560  # the KV bucket of position 2048
    # each split reads whole blocks: keys and values of every slot, once, plus q
    assert reads[None] >= hkv * slots * hd * 2 * 2
    assert hkv * slots * (2 * hd + 8) <= reads[FP8] <= hkv * slots * (2 * hd + 8) + 64 * 1024
    assert reads[FP8] < 0.53 * reads[None]


def test_unknown_kv_cache_format_is_one_line():
    with pytest.raises(KVCacheError, match="unknown KV-cache format 'fp4'.*fp8"):
        kv_cache_format("fp4")
    assert kv_cache_format(None) is None and kv_cache_format("fp8") == FP8
