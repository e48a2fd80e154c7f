"""Decoder-layer fusions: the MoE router chain (softmax -> top-k -> normalize) as one kernel,
exact against torch and bit-identical to the unfused chain; fewer kernels per MoE layer."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vnpu
import vnpu.compiler.patterns as patterns
from vnpu.chip import load_chip
from vnpu.dtypes import DType


class _Router(torch.nn.Module):
    """Qwen3-MoE's routing (transformers Qwen3MoeSparseMoeBlock)."""

    def __init__(self, k: int, normalize: bool = True) -> None:
        super().__init__()
        self.k, self.normalize = k, normalize

    def forward(self, logits: torch.Tensor) -> tuple:
        p = F.softmax(logits, dim=-1, dtype=torch.float)
        w, i = torch.topk(p, self.k, dim=-1)
        if self.normalize:
            w = w / w.sum(dim=-1, keepdim=True)
        return w, i


def _ops(cm) -> list[str]:
    return [l.name for l in cm.program.launches]


@pytest.mark.parametrize("tokens,experts,k", [(1, 8, 1), (3, 8, 2), (37, 128, 8), (70, 8, 2), (5, 128, 1)])
def test_fused_router_matches_torch(tokens: int, experts: int, k: int) -> None:
    torch.manual_seed(tokens * 1000 + experts + k)
    x = torch.randn(tokens, experts) * 3  # continuous random logits: no ties
    m = _Router(k)
    cm = vnpu.compile(m, (x,))
    kinds = [op for l in cm.program.launches for op in l.ops]
    assert len(cm.program.launches) == 1 and kinds[:2] == ["softmax", "topk"], kinds
    w, i = cm(x)
    rw, ri = m(x)
    assert torch.equal(i, ri)
    torch.testing.assert_close(w, rw, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("normalize", [True, False])
def test_fused_router_bit_identical_to_the_unfused_chain(dtype: str, normalize: bool, monkeypatch) -> None:
    torch.manual_seed(3)
    x = torch.randn(40, 64) * 2  # 40 rows over 16 cores: several tiles per core
    m = _Router(4, normalize)
    fused = vnpu.compile(m, (x,), dtype=dtype)
    monkeypatch.setattr(patterns, "fuse_moe_router", lambda g: 0)
    plain = vnpu.compile(m, (x,), dtype=dtype)
    assert len(fused.program.launches) == 1 < len(plain.program.launches)
    for a, b in zip(fused(x), plain(x)):
        assert torch.equal(a, b)


def _decode_launches(name: str, fuse: bool, monkeypatch) -> list[str]:
    from vnpu.runtime.llm import LLMSession
    from vnpu.workloads.llm_zoo import DecoderStep, build_llm, get_llm

    if not fuse:
        monkeypatch.setattr(patterns, "fuse_moe_router", lambda g: 0)
    sess = LLMSession(DecoderStep(build_llm(get_llm(name)), 1, 64), load_chip("vnpu-v1"), DType.fp32, 1, name,
                      functional=False)
    names = [l.name for l in sess.decode_program(5).launches]
    monkeypatch.undo()
    return names


def test_router_pattern_fires_on_the_qwen3_moe_decode_graph(monkeypatch) -> None:
    before = _decode_launches("qwen3-moe-tiny", False, monkeypatch)
    after = _decode_launches("qwen3-moe-tiny", True, monkeypatch)
    layers = 2
    routers = [n for n in after if n.startswith("moe_router_")]
    assert len(routers) == layers
    assert not any(n.startswith(("_softmax", "sum_", "div")) for n in after)
    assert len(before) - len(after) == 3 * layers  # softmax + topk + sum + div -> one kernel
