"""PyTorch custom ops that mark the LLM building blocks vnpu runs as one kernel each.

A decoder built from its `transformers` definition calls these through transformers'
own extension points (an attention implementation and an experts implementation
registered by `vnpu.workloads.llm_zoo`), so torch.export records one node per attention
and per MoE expert block instead of their decompositions. Each op has a plain PyTorch
reference implementation (what eager runs, and what the chip's kernels are tested
against) and a fake implementation for tracing.

- ``vnpu::causal_attention(q, k, v, q_pos, scale)``: q [B, Hq, S, D], k/v [B, Hkv, L, D]
  (Hq a multiple of Hkv: grouped-query attention), q_pos int64 [S] the absolute position
  of each query row. Key j is visible to query i iff j <= q_pos[i] (causal attention over
  a KV cache that holds positions 0..L-1; slots beyond the current length are masked).
  Returns [B, S, Hq, D] (the layout transformers' attention functions return).
- ``vnpu::moe_experts(x, top_k_index, top_k_weights, gate_up, down)``: SwiGLU experts
  (x [T, H], gate_up [E, 2I, H], down [E, H, I]); token t's output is
  sum_k w[t,k] * down[e] @ (silu(g) * u) with (g, u) = gate_up[e] @ x[t], e = index[t,k].
- ``vnpu::all_reduce(x)``: the sum of x over the chips serving a model together (tensor /
  expert parallelism, runtime.tensor_parallel). On one chip that sum is x itself, which is
  what eager runs; compiled, it becomes a collective launch that a multi-chip runner executes.
"""
from __future__ import annotations

import torch

_LIB = "vnpu"


@torch.library.custom_op(f"{_LIB}::causal_attention", mutates_args=())
def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor,
                     scale: float) -> torch.Tensor:
    b, hq, s, d = q.shape
    hkv, length = k.shape[1], k.shape[2]
    if hq % hkv:
        raise ValueError(f"causal_attention: {hq} query heads are not a multiple of {hkv} KV heads")
    g = hq // hkv
    kk = k.repeat_interleave(g, dim=1)
    vv = v.repeat_interleave(g, dim=1)
    visible = torch.arange(length, device=q.device)[None, :] <= q_pos[:, None]  # [S, L]
    out = torch.nn.functional.scaled_dot_product_attention(q, kk, vv, attn_mask=visible, scale=scale)
    return out.transpose(1, 2).contiguous()


@causal_attention.register_fake
def _causal_attention_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor,
                           scale: float) -> torch.Tensor:
    b, hq, s, d = q.shape
    return q.new_empty((b, s, hq, v.shape[-1]))


@torch.library.custom_op(f"{_LIB}::moe_experts", mutates_args=())
def moe_experts(x: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor, gate_up: torch.Tensor,
                down: torch.Tensor) -> torch.Tensor:
    t, h = x.shape
    inter = down.shape[-1]
    out = torch.zeros_like(x)
    for e in torch.unique(top_k_index).tolist():
        tok, slot = torch.where(top_k_index == e)
        gu = x[tok] @ gate_up[e].T
        act = torch.nn.functional.silu(gu[:, :inter]) * gu[:, inter:]
        y = (act @ down[e].T) * top_k_weights[tok, slot, None].to(x.dtype)
        out.index_add_(0, tok, y)
    return out


@moe_experts.register_fake
def _moe_experts_fake(x: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor, gate_up: torch.Tensor,
                      down: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op(f"{_LIB}::all_reduce", mutates_args=())
def all_reduce(x: torch.Tensor) -> torch.Tensor:
    return x.clone()  # one chip: the sum over chips is x (a custom op may not return its input)


@all_reduce.register_fake
def _all_reduce_fake(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


__all__ = ["causal_attention", "moe_experts", "all_reduce"]
