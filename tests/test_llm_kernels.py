"""LLM kernels against PyTorch: flash attention vs F.scaled_dot_product_attention, RoPE and
RMSNorm vs the transformers formulas, top-k/argmax vs torch.topk, grouped MoE experts vs a
per-expert loop, KV-cache writes vs index_copy_."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vnpu
from vnpu.dtypes import DType
from vnpu.frontends.torch import llm_ops
from vnpu.ir.graph import Graph, TensorType
from vnpu.ir.ops import moe_tiles
from vnpu.sim.functional import moe_schedule


def _attention_program(b: int, hq: int, hkv: int, s: int, length: int, d: int, dtype: str = "fp32",
                       kv_len: int | None = None, causal: bool = True,
                       chip: str | vnpu.Chip = "vnpu-v1") -> vnpu.CompiledModel:
    g = Graph("attention")
    q = g.add_input("q", TensorType((b, hq, s, d), DType.fp32))
    k = g.add_input("k", TensorType((b, hkv, length, d), DType.fp32))
    v = g.add_input("v", TensorType((b, hkv, length, d), DType.fp32))
    ins = [q, k, v]
    if causal:
        ins.append(g.add_input("q_pos", TensorType((s,), DType.int64)))
    attrs = {"scale": 1 / math.sqrt(d)}
    if kv_len is not None:
        attrs["kv_len"] = kv_len
    g.outputs = [g.add_node("attention", ins, attrs).output]
    return vnpu.compile_ir(g, chip, dtype=dtype)


def _sdpa_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor | None) -> torch.Tensor:
    """PyTorch's SDPA with K/V repeated per query group and the position mask (j <= q_pos[i])."""
    g = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    mask = None if q_pos is None else torch.arange(k.shape[2])[None, :] <= q_pos[:, None]
    return F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask).transpose(1, 2)


@pytest.mark.parametrize("b,hq,hkv,s,d,offset", [
    (1, 2, 2, 7, 64, 0),      # MHA, odd prompt, no cache offset
    (2, 4, 2, 33, 80, 0),     # GQA 2, head dim 80, length over a block boundary + 1
    (1, 8, 2, 131, 128, 0),   # GQA 4, two KV blocks and a partial one, several query blocks
    (2, 4, 1, 5, 64, 19),     # GQA 4 (MQA), continuing after 19 cached tokens
    (1, 4, 2, 1, 128, 150),   # decode: one query at position 150 over a 2-block cache
    (1, 4, 2, 1, 64, 600),    # long decode: keys split over cores (flash-decoding) and combined
    (2, 8, 4, 1, 80, 1000),   # long decode, batch 2, GQA 2
])
def test_attention_matches_sdpa(b: int, hq: int, hkv: int, s: int, d: int, offset: int) -> None:
    torch.manual_seed(0)
    length = offset + s + 3  # cache slots past the last position hold junk that must be masked
    q, k, v = torch.randn(b, hq, s, d), torch.randn(b, hkv, length, d), torch.randn(b, hkv, length, d)
    pos = torch.arange(s) + offset
    out = _attention_program(b, hq, hkv, s, length, d)(q, k, v, pos)
    ref = _sdpa_reference(q, k, v, pos)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("hq,s,rows", [(1, 2000, 512), (2, 700, 256)])
def test_big_query_tiles_match_sdpa(hq: int, s: int, rows: int) -> None:
    """Long prompts on a one-core chip take the 512- and 256-row Q tiles (G x sq rows)."""
    from vnpu.kernels.attention import attention_tiles

    chip = vnpu.load_chip("vnpu-v1").model_copy(update={"cores": 1})
    sq, _, _ = attention_tiles(chip.core.scratchpad.bytes, hq, s, s, 64, 64, DType.fp32, DType.fp32, True, False, 1, 1)
    assert hq * sq == rows
    torch.manual_seed(5)
    q, k, v = torch.randn(1, hq, s, 64), torch.randn(1, 1, s, 64), torch.randn(1, 1, s, 64)
    pos = torch.arange(s)
    out = _attention_program(1, hq, 1, s, s, 64, chip=chip)(q, k, v, pos)
    torch.testing.assert_close(out, _sdpa_reference(q, k, v, pos), atol=2e-5, rtol=1e-4)


def test_split_attention_with_fully_masked_splits() -> None:
    """Decode at position 40 in a 700-slot program: the later key splits see only masked keys."""
    torch.manual_seed(11)
    q, k, v = torch.randn(1, 4, 1, 64), torch.randn(1, 2, 700, 64), torch.randn(1, 2, 700, 64)
    pos = torch.tensor([40])
    cm = _attention_program(1, 4, 2, 1, 700, 64)
    assert any("attention_combine" in l.ops for l in cm.program.launches)
    torch.testing.assert_close(cm(q, k, v, pos), _sdpa_reference(q, k, v, pos), atol=2e-5, rtol=1e-4)


def test_attention_without_positions_is_full_attention() -> None:
    torch.manual_seed(1)
    q, k, v = torch.randn(1, 4, 9, 64), torch.randn(1, 2, 150, 64), torch.randn(1, 2, 150, 64)
    out = _attention_program(1, 4, 2, 9, 150, 64, causal=False)(q, k, v)
    torch.testing.assert_close(out, _sdpa_reference(q, k, v, None), atol=2e-5, rtol=1e-4)


def test_attention_kv_len_bucket_reads_only_its_slots() -> None:
    """A decode program for a 64-slot bucket of a 200-slot cache: NaNs past slot 64 are never read."""
    torch.manual_seed(2)
    q, k, v = torch.randn(2, 4, 1, 64), torch.randn(2, 2, 200, 64), torch.randn(2, 2, 200, 64)
    k[:, :, 64:] = float("nan")
    v[:, :, 64:] = float("nan")
    pos = torch.tensor([40])
    out = _attention_program(2, 4, 2, 1, 200, 64, kv_len=64)(q, k, v, pos)
    ref = _sdpa_reference(q[..., :], k[:, :, :64], v[:, :, :64], pos)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_attention_bf16_close_to_fp32_reference() -> None:
    torch.manual_seed(3)
    q, k, v = torch.randn(1, 8, 37, 128), torch.randn(1, 2, 37, 128), torch.randn(1, 2, 37, 128)
    pos = torch.arange(37)
    out = _attention_program(1, 8, 2, 37, 37, 128, dtype="bf16")(q, k, v, pos)
    ref = _sdpa_reference(q, k, v, pos)
    cos = F.cosine_similarity(out.float().flatten(), ref.flatten(), dim=0)
    assert cos > 0.999


def test_attention_score_tiles_stay_on_chip() -> None:
    """Flash attention stores nothing but the output: every DMA store of the kernel lands in
    the output tensor, and HBM traffic is Q + O + K/V once per query block (no S x L scores)."""
    from vnpu.isa.instructions import DmaStore

    s, d, heads = 256, 64, 2
    cm = _attention_program(1, heads, heads, s, s, d)
    out = cm.program.outputs[0]
    lo, hi = out.offset, out.offset + out.numel * 4
    (launch,) = [l for l in cm.program.launches if l.kind == "attention"]
    stores = [i for c in launch.cores for i in c.queues["dma_out"]]
    assert stores and all(isinstance(i, DmaStore) and lo <= i.dst.offset < hi for i in stores)
    q_blocks = math.ceil(s / 128)
    tensor = heads * s * d * 4
    assert cm.profile().hbm_bytes <= 1.01 * (2 * tensor + 2 * tensor * q_blocks)  # + the positions


class _SDPA(torch.nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def test_torch_sdpa_compiles_to_the_attention_kernel() -> None:
    torch.manual_seed(4)
    q, k, v = torch.randn(1, 2, 13, 64), torch.randn(1, 2, 13, 64), torch.randn(1, 2, 13, 64)
    cm = vnpu.compile(_SDPA(), (q, k, v))
    assert any(l.kind == "attention" for l in cm.program.launches)
    torch.testing.assert_close(cm(q, k, v), _SDPA()(q, k, v), atol=2e-5, rtol=1e-4)


class _Rope(torch.nn.Module):
    """The transformers rotate-half RoPE and RMSNorm, as Qwen3/Llama write them."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, w: torch.Tensor) -> tuple:
        h = x.shape[-1] // 2
        rot = torch.cat((-x[..., h:], x[..., :h]), dim=-1)
        y = x * cos[:, None] + rot * sin[:, None]
        var = y.pow(2).mean(-1, keepdim=True)
        return w * (y * torch.rsqrt(var + 1e-6))


def test_rope_and_rms_norm_fuse_and_match() -> None:
    torch.manual_seed(5)
    x = torch.randn(2, 4, 7, 64)
    cos, sin = torch.randn(2, 7, 64), torch.randn(2, 7, 64)
    w = torch.randn(64)
    m = _Rope()
    cm = vnpu.compile(m, (x, cos, sin, w))
    ops = {op for l in cm.program.launches for op in l.ops}
    assert {"rope", "rms_norm"} <= ops
    torch.testing.assert_close(cm(x, cos, sin, w), m(x, cos, sin, w), atol=1e-5, rtol=1e-5)


class _MaskedSDPA(torch.nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def test_torch_sdpa_with_a_mask_runs_on_chip() -> None:
    torch.manual_seed(10)
    q, k, v = torch.randn(2, 2, 9, 32), torch.randn(2, 2, 11, 32), torch.randn(2, 2, 11, 32)
    mask = torch.rand(9, 11) > 0.3
    mask[:, 0] = True
    cm = vnpu.compile(_MaskedSDPA(), (q, k, v, mask))
    assert not cm.info.fallback_ops
    torch.testing.assert_close(cm(q, k, v, mask), _MaskedSDPA()(q, k, v, mask), atol=2e-5, rtol=1e-4)


class _TopK(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple:
        v, i = torch.topk(x, 3, dim=-1)
        return v, i, torch.argmax(x, dim=-1)


def test_topk_and_argmax_match_torch() -> None:
    torch.manual_seed(6)
    x = torch.randn(3, 5, 517)
    cm = vnpu.compile(_TopK(), (x,))
    v, i, a = cm(x)
    rv, ri, ra = _TopK()(x)
    torch.testing.assert_close(v, rv)
    assert torch.equal(i, ri) and torch.equal(a, ra)
    x[0, 0, 10] = x[0, 0, 20] = 50.0  # a tie: argmax picks the first maximum, as torch.argmax does
    assert int(cm(x)[2][0, 0]) == int(torch.argmax(x[0, 0])) == 10


class _KVWrite(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("cache", torch.zeros(2, 3, 16, 8))

    def forward(self, new: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        self.cache.index_copy_(2, pos, new)
        return self.cache * 1.0


def test_kv_cache_write_is_in_place_state_across_runs() -> None:
    torch.manual_seed(7)
    m = _KVWrite()
    new = torch.randn(2, 3, 4, 8)
    cm = vnpu.compile(m, (new, torch.arange(4)))
    assert len(cm.program.state) == 1
    ref = _KVWrite()
    for step, pos in enumerate([torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 6, 7]), torch.tensor([9, 8, 15, 10])]):
        x = torch.randn(2, 3, 4, 8)
        out = cm(x, pos)
        torch.testing.assert_close(out, ref(x, pos))  # the cache accumulates across calls


class _MoE(torch.nn.Module):
    def __init__(self, e: int, h: int, i: int):
        super().__init__()
        g = torch.Generator().manual_seed(8)
        self.gate_up = torch.nn.Parameter(torch.randn(e, 2 * i, h, generator=g) * 0.1)
        self.down = torch.nn.Parameter(torch.randn(e, h, i, generator=g) * 0.1)

    def forward(self, x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return llm_ops.moe_experts(x, idx, w, self.gate_up, self.down)


def _moe_loop_reference(m: _MoE, x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Token by token, slot by slot: the definition of SwiGLU experts."""
    out = torch.zeros_like(x)
    inter = m.down.shape[-1]
    for t in range(x.shape[0]):
        for s in range(idx.shape[1]):
            e = int(idx[t, s])
            gu = m.gate_up[e] @ x[t]
            out[t] += w[t, s] * (m.down[e] @ (F.silu(gu[:inter]) * gu[inter:]))
    return out


@pytest.mark.parametrize("t,k,e", [(1, 2, 8), (5, 2, 4), (40, 3, 6)])
def test_grouped_moe_experts_match_per_slot_loop(t: int, k: int, e: int) -> None:
    torch.manual_seed(9)
    m = _MoE(e, 48, 40)
    x = torch.randn(t, 48)
    idx = torch.stack([torch.randperm(e)[:k] for _ in range(t)])
    w = torch.rand(t, k)
    cm = vnpu.compile(m, (x, idx, w))
    assert not cm.info.fallback_ops
    with torch.no_grad():
        torch.testing.assert_close(cm(x, idx, w), _moe_loop_reference(m, x, idx, w), atol=1e-5, rtol=1e-5)


def test_moe_schedule_covers_every_slot_once_within_the_static_bound() -> None:
    rng = np.random.default_rng(0)
    for t, k, e, rows in [(1, 8, 128, 1), (7, 2, 4, 4), (300, 8, 16, 64)]:
        ids = np.stack([rng.permutation(e)[:k] for _ in range(t)])
        n_tiles = moe_tiles(t * k, e, rows)
        te, tok, slot = moe_schedule(ids, k, e, rows, n_tiles)
        real = slot < t * k
        assert sorted(slot[real].tolist()) == list(range(t * k))  # every slot exactly once
        assert (tok[real] == slot[real] // k).all()
        for tile in range(n_tiles):  # one expert per tile, and it is the slots' expert
            assert (ids.reshape(-1)[slot[tile][real[tile]]] == te[tile]).all()
    assert moe_tiles(8, 128, 1) == 8  # batch-1 decode: exactly the routed experts


class _NormRope(torch.nn.Module):
    """Qwen3's attention prologue: per-head RMSNorm (weighted) on [B, S, H, D], transpose, RoPE."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(32, generator=torch.Generator().manual_seed(13)))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        var = x.pow(2).mean(-1, keepdim=True)
        y = (self.w * (x * torch.rsqrt(var + 1e-6))).transpose(1, 2)
        h = y.shape[-1] // 2
        rot = torch.cat((-y[..., h:], y[..., :h]), dim=-1)
        return y * cos[:, None] + rot * sin[:, None]


def test_rms_norm_folds_into_rope() -> None:
    torch.manual_seed(12)
    x = torch.randn(2, 5, 3, 32)
    cos, sin = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    m = _NormRope()
    cm = vnpu.compile(m, (x, cos, sin))
    kinds = [op for l in cm.program.launches for op in l.ops]
    assert kinds == ["rope"]  # one kernel does both
    with torch.no_grad():
        torch.testing.assert_close(cm(x, cos, sin), m(x, cos, sin), atol=1e-5, rtol=1e-5)


def test_topk_rows_longer_than_the_scratchpad() -> None:
    """A 50k-entry row on a 64 KiB scratchpad goes through in chunks and still matches torch."""
    from conftest import make_chip

    chip = make_chip({"core.scratchpad.bytes": 65536})
    torch.manual_seed(14)
    x = torch.randn(3, 50000)
    cm = vnpu.compile(_TopK(), (x,), chip=chip)
    v, i, a = cm(x)
    rv, ri, ra = _TopK()(x)
    torch.testing.assert_close(v, rv)
    assert torch.equal(i, ri) and torch.equal(a, ra)
    x[1, 100] = x[1, 40000] = 99.0  # a tie across chunks: the first one wins
    assert int(cm(x)[2][1]) == 100
