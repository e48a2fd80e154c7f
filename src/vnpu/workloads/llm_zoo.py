"""Decoder LLMs from their `transformers` definitions, for `vnpu generate`.

Models are built from configs written here (public model cards for the real sizes; tiny
variants for functional runs) with random weights from a fixed seed; nothing is downloaded.
`device="meta"` instantiates without allocating weights (timing-only runs of big models).

How the chip runs them: `DecoderStep` wraps the model for one step of generation with a
static KV cache held in module buffers ([B, Hkv, capacity, D] per layer). transformers is
plugged through its own extension points:
- the cache object passed to the model writes new keys/values with `index_copy_` at the
  step's positions, so torch.export records buffer mutations that the vnpu importer maps
  to in-place scatters into persistent HBM state;
- attention is the registered implementation "vnpu" (`vnpu::causal_attention`, masked by
  the query positions: no mask tensor is built);
- MoE experts are the registered experts implementation "vnpu" (`vnpu::moe_experts`).
The step returns the next token picked on the chip (greedy argmax, or top-k sampling with
host-drawn Gumbel noise) and the last position's logits.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from vnpu.frontends.torch import llm_ops
from vnpu.workloads.llm_specs import (MAX_BATCH, MAX_SEED, SPECS, LLMSpec, UnknownLLMError,  # noqa: F401 (re-exported)
                                      check_generation, check_sampling, get_llm, shard_spec, valid_chip_counts)

ATTN_IMPLEMENTATION = "vnpu"
EXPERTS_IMPLEMENTATION = "vnpu"
SEED = 0
PROMPT_SEED = 1234


# -- transformers extension points -------------------------------------------------------
def _vnpu_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: Any, scaling: float | None = None, dropout: float = 0.0,
                    **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention function. `attention_mask` carries the query positions as an
    int64 [1, 1, S, 1] tensor (a 4-D "mask" is passed through transformers' mask creation as is)."""
    if not (isinstance(attention_mask, torch.Tensor) and attention_mask.dtype == torch.int64
            and attention_mask.dim() == 4):
        raise ValueError("the vnpu attention implementation runs inside DecoderStep, which passes query positions")
    scale = float(scaling if scaling is not None else query.shape[-1] ** -0.5)
    return llm_ops.causal_attention(query, key, value, attention_mask.reshape(-1), scale), None


def _vnpu_experts(self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                  top_k_weights: torch.Tensor) -> torch.Tensor:
    return llm_ops.moe_experts(hidden_states, top_k_index, top_k_weights, self.gate_up_proj, self.down_proj)


def register_implementations() -> None:
    from transformers import AttentionInterface
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    AttentionInterface.register(ATTN_IMPLEMENTATION, _vnpu_attention)
    ALL_EXPERTS_FUNCTIONS.register(EXPERTS_IMPLEMENTATION, _vnpu_experts)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    v = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(v)


def make_config(spec: LLMSpec, num_layers: int | None = None, attn: str = ATTN_IMPLEMENTATION) -> Any:
    import transformers

    cls = {"qwen3": transformers.Qwen3Config, "llama": transformers.LlamaConfig,
           "qwen3_moe": transformers.Qwen3MoeConfig}[spec.family]
    cfg = dict(spec.config)
    if num_layers is not None:
        cfg["num_hidden_layers"] = num_layers
    theta = cfg.pop("rope_theta", 10000.0)
    # `rope_scaling` as in a config.json (e.g. Llama-3.1's rope_type "llama3", factor, low/high_freq_factor,
    # original_max_position_embeddings): transformers 5 takes these keys inside rope_parameters
    cfg["rope_parameters"] = {"rope_theta": theta, "rope_type": "default", **cfg.pop("rope_scaling", {})}
    config = cls(**cfg)
    config._attn_implementation = attn
    if spec.family == "qwen3_moe":
        config._experts_implementation = EXPERTS_IMPLEMENTATION if attn == ATTN_IMPLEMENTATION else "eager"
    return config


def build_llm(spec: LLMSpec, device: str = "cpu", num_layers: int | None = None,
              attn: str = ATTN_IMPLEMENTATION) -> nn.Module:
    """The causal-LM module with random weights from SEED (fp32), in eval mode.

    attn="eager" gives the stock transformers model (the reference for `generate`).
    """
    import transformers

    register_implementations()
    config = make_config(spec, num_layers, attn)
    cls = {"qwen3": transformers.Qwen3ForCausalLM, "llama": transformers.LlamaForCausalLM,
           "qwen3_moe": transformers.Qwen3MoeForCausalLM}[spec.family]
    with _quiet():
        if device == "meta":
            with torch.device("meta"):
                model = cls(config)
        else:
            torch.manual_seed(SEED)
            model = cls(config)
            if spec.family == "qwen3_moe":
                _init_experts(model)
    return model.eval()


# Router logits' standard deviation for a unit-RMS hidden state. With transformers' generic
# N(0, 0.02) init the router logits of a 128-wide model have std ~0.23: routing is a near-tie
# among all experts, so bf16 rounding alone flips expert choices (PyTorch's own bf16 model
# then scored cosine 0.9971 against fp32 on qwen3-moe-tiny; 0.9994 with logit std 2, 0.99991
# with 4, 0.99995 with 8). Trained routers are decisive; std 4 gives that.
ROUTER_LOGIT_STD = 4.0


@torch.no_grad()
def _init_experts(model: nn.Module) -> None:
    """transformers leaves the 3-D expert tensors to its init hook: draw them like Linear weights,
    and the router so that routing is decisive (ROUTER_LOGIT_STD)."""
    g = torch.Generator().manual_seed(SEED + 1)
    std = model.config.initializer_range
    for m in model.modules():
        for pname in ("gate_up_proj", "down_proj"):
            p = getattr(m, pname, None)
            if isinstance(p, nn.Parameter) and p.dim() == 3:
                p.copy_(torch.randn(p.shape, generator=g) * std)
        w = getattr(m, "weight", None)
        if type(m).__name__.endswith("TopKRouter") and isinstance(w, nn.Parameter):
            w.copy_(torch.randn(w.shape, generator=g) * (ROUTER_LOGIT_STD / w.shape[1] ** 0.5))


def prompt_ids(vocab_size: int, batch: int, length: int) -> torch.Tensor:
    """Random prompt token ids; row i comes from seed PROMPT_SEED + i whatever the batch."""
    rows = [torch.randint(0, vocab_size, (length,), generator=torch.Generator().manual_seed(PROMPT_SEED + i))
            for i in range(batch)]
    return torch.stack(rows)


def gumbel_noise(rng: np.random.Generator, batch: int, k: int) -> np.ndarray:
    """Standard Gumbel noise [batch, k] float32, -log(-log(U)) with U uniform in (0, 1) drawn from
    a numpy Generator: the chip's sampling randomness, supplied by the host each step."""
    u = np.maximum(rng.random((batch, k)), np.finfo(np.float64).tiny)  # random() may return exactly 0
    return (-np.log(-np.log(u))).astype(np.float32)


# -- one generation step with a static KV cache in module buffers -------------------------------
class _BufferCache:
    """The transformers cache protocol over DecoderStep's buffers: writes the step's keys and
    values at their positions (index_copy_) and hands attention the whole cache."""

    def __init__(self, owner: "DecoderStep", positions: torch.Tensor):
        self.owner = owner
        self.positions = positions

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        k = getattr(self.owner, f"k_cache_{layer_idx}")
        v = getattr(self.owner, f"v_cache_{layer_idx}")
        k.index_copy_(2, self.positions, key_states.to(k.dtype))
        v.index_copy_(2, self.positions, value_states.to(v.dtype))
        return k, v

    def get_seq_length(self, layer_idx: int = 0) -> int:  # pragma: no cover - positions are always given
        raise RuntimeError("DecoderStep passes explicit positions")


class DecoderStep(nn.Module):
    """forward(input_ids [B, S], positions int64 [S]) -> (next_token int64 [B], logits [B, V]).

    Runs the model over S new tokens at absolute `positions`, appending their keys and
    values to the cache buffers (capacity tokens per sequence), and picks the next token
    from the last position's logits: greedy (argmax) by default.

    With `top_k`, forward takes a third input `noise` float32 [B, top_k], standard Gumbel
    noise drawn by the host, and samples on the chip: the top-k logits and their ids
    (torch.topk), then the candidate maximizing logit / temperature + noise (Gumbel-max: a
    draw from softmax(top-k logits / temperature)), then its id (torch.gather).
    """

    def __init__(self, model: nn.Module, batch: int, capacity: int, top_k: int | None = None,
                 temperature: float = 1.0):
        super().__init__()
        self.model = model
        cfg = model.config
        check_sampling(top_k, temperature, cfg.vocab_size)
        self.top_k = None if top_k is None else int(top_k)
        self.temperature = float(temperature)
        hkv = cfg.num_key_value_heads
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        dev = next(model.parameters()).device
        dt = next(model.parameters()).dtype
        self.capacity = capacity
        for i in range(cfg.num_hidden_layers):
            self.register_buffer(f"k_cache_{i}", torch.zeros(batch, hkv, capacity, hd, dtype=dt, device=dev))
            self.register_buffer(f"v_cache_{i}", torch.zeros(batch, hkv, capacity, hd, dtype=dt, device=dev))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        b, s = input_ids.shape
        cache = _BufferCache(self, positions)
        pos_ids = positions.unsqueeze(0).expand(b, s)
        out = self.model.model(input_ids=input_ids, attention_mask=positions.view(1, 1, s, 1),
                               position_ids=pos_ids, cache=cache, use_cache=False)
        last = out.last_hidden_state[:, -1, :]
        logits = self.model.lm_head(last)
        if self.top_k is None:
            return torch.argmax(logits, dim=-1), logits
        if noise is None:
            raise ValueError("a sampling DecoderStep (top_k set) takes Gumbel noise [B, top_k] as its third input")
        vals, idx = torch.topk(logits, self.top_k, dim=-1)
        choice = torch.argmax(vals / self.temperature + noise, dim=-1, keepdim=True)
        return torch.gather(idx, -1, choice).squeeze(-1), logits


# -- tensor / expert parallel shards with real weights (runtime.tensor_parallel) -----------------
class VocabParallelEmbedding(nn.Module):
    """One chip's rows [lo, lo + V/n) of the token embedding: ids outside them look up row 0 and
    are zeroed, and the all-reduce over the chips gives every chip the full embedding."""

    def __init__(self, weight: torch.Tensor, lo: int):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.lo = int(lo)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        local = input_ids - self.lo
        mine = (local >= 0) & (local < self.weight.shape[0])
        emb = nn.functional.embedding(local * mine, self.weight)
        return llm_ops.all_reduce(emb * mine.unsqueeze(-1).to(emb.dtype))


class LocalExperts(nn.Module):
    """One chip's experts [lo, lo + E/n) of a routed MoE block, under the global top-k routing
    (the router is whole on every chip): a token's slots routed to other chips' experts get
    weight 0 (and local expert 0 as a stand-in id), so the chip adds exactly its own experts'
    share and the all-reduce over the chips sums the token's k experts."""

    def __init__(self, gate_up_proj: torch.Tensor, down_proj: torch.Tensor, lo: int):
        super().__init__()
        self.gate_up_proj = nn.Parameter(gate_up_proj)
        self.down_proj = nn.Parameter(down_proj)
        self.lo = int(lo)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        local = top_k_index - self.lo
        mine = (local >= 0) & (local < self.gate_up_proj.shape[0])
        return llm_ops.moe_experts(hidden_states, local * mine, top_k_weights * mine.to(top_k_weights.dtype),
                                   self.gate_up_proj, self.down_proj)


def _all_reduce_output(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    return llm_ops.all_reduce(output)


@torch.no_grad()
def shard_model(full: nn.Module, spec: LLMSpec, rank: int, chips: int) -> nn.Module:
    """Chip `rank`'s part of the model `full` (built from `spec`) served on `chips` chips, with
    the full model's weights: the config is `shard_spec`'s (the shapes the
    timing-only path times), and `vnpu::all_reduce` sums the partial results over the chips.

    - attention (tensor parallel): this rank's query heads (q_proj rows, o_proj columns) and the
      KV heads they use (k/v_proj rows; replicated on several chips when there are fewer KV
      heads than chips); q/k norms whole; all-reduce after o_proj;
    - dense MLP: gate/up rows and down columns of this rank's slice of the intermediate size;
      all-reduce after down_proj;
    - MoE (expert parallel): this rank's experts; the router whole (E x H, unlike shard_spec's
      E/n rows): every chip computes the global top-k and runs the chosen experts it holds
      (LocalExperts), so the routing is exactly the full model's, not shard_spec's balanced
      top-(k/n) of its own experts; all-reduce after the block;
    - embedding: this rank's vocabulary rows, a masked lookup and an all-reduce
      (VocabParallelEmbedding); LM head: the same vocabulary rows (the runner takes the greedy
      token over all chips' logits);
    - norms and rotary tables whole. Biases of o_proj / down_proj (none in the zoo) stay on rank 0.
    """

    if not 0 <= rank < chips:
        raise ValueError(f"rank {rank} outside 0..{chips - 1}")
    sspec = shard_spec(spec, chips)
    c, sc = spec.config, sspec.config
    if spec.family == "qwen3_moe" and c.get("mlp_only_layers"):
        raise NotImplementedError("dense MLP layers in an MoE model are not sharded")
    m = build_llm(sspec)
    hd = sc["head_dim"]
    hq, hkv = c["num_attention_heads"], c["num_key_value_heads"]
    lq, lkv = sc["num_attention_heads"], sc["num_key_value_heads"]
    group = hq // hkv
    q0 = rank * lq
    kv0 = q0 // group  # the KV head of this rank's first query head
    qrows = slice(q0 * hd, (q0 + lq) * hd)
    kvrows = slice(kv0 * hd, (kv0 + lkv) * hd)

    def put(dst: torch.Tensor, src: torch.Tensor) -> None:
        if dst.shape != src.shape:
            raise ValueError(f"shard weight {tuple(dst.shape)} != slice {tuple(src.shape)}")
        dst.copy_(src)

    for lf, ls in zip(full.model.layers, m.model.layers):
        af, as_ = lf.self_attn, ls.self_attn
        for name, rows in (("q_proj", qrows), ("k_proj", kvrows), ("v_proj", kvrows)):
            put(getattr(as_, name).weight, getattr(af, name).weight[rows])
            if getattr(af, name).bias is not None:
                put(getattr(as_, name).bias, getattr(af, name).bias[rows])
        put(as_.o_proj.weight, af.o_proj.weight[:, qrows])
        if af.o_proj.bias is not None:
            put(as_.o_proj.bias, af.o_proj.bias if rank == 0 else torch.zeros_like(af.o_proj.bias))
        for name in ("q_norm", "k_norm"):
            if hasattr(af, name):
                put(getattr(as_, name).weight, getattr(af, name).weight)
        for name in ("input_layernorm", "post_attention_layernorm"):
            put(getattr(ls, name).weight, getattr(lf, name).weight)
        as_.o_proj.register_forward_hook(_all_reduce_output)
        mf, ms = lf.mlp, ls.mlp
        if hasattr(mf, "experts"):
            el = sc["num_experts"]
            lo = rank * el
            ms.gate = type(mf.gate)(full.config)  # the whole router: global top-k
            put(ms.gate.weight, mf.gate.weight)
            ms.experts = LocalExperts(mf.experts.gate_up_proj[lo:lo + el].clone(),
                                      mf.experts.down_proj[lo:lo + el].clone(), lo)
        else:
            inter = sc["intermediate_size"]
            rows = slice(rank * inter, (rank + 1) * inter)
            put(ms.gate_proj.weight, mf.gate_proj.weight[rows])
            put(ms.up_proj.weight, mf.up_proj.weight[rows])
            put(ms.down_proj.weight, mf.down_proj.weight[:, rows])
            if mf.down_proj.bias is not None:
                put(ms.down_proj.bias, mf.down_proj.bias if rank == 0 else torch.zeros_like(mf.down_proj.bias))
        ms.register_forward_hook(_all_reduce_output)
    put(m.model.norm.weight, full.model.norm.weight)
    vs, v = sc["vocab_size"], c["vocab_size"]
    lo = rank * vs

    def vocab_rows(w: torch.Tensor) -> torch.Tensor:  # rows lo..lo+vs of w, zero past the vocabulary
        out = torch.zeros(vs, w.shape[1], dtype=w.dtype)
        part = w[lo:min(lo + vs, v)]
        out[:part.shape[0]] = part
        return out

    m.model.embed_tokens = VocabParallelEmbedding(vocab_rows(full.model.embed_tokens.weight), lo)
    m.lm_head.weight = nn.Parameter(vocab_rows(full.lm_head.weight))
    return m.eval()


__all__ = ["shard_spec", "shard_model", "VocabParallelEmbedding", "LocalExperts", "LLMSpec", "SPECS", "get_llm", "build_llm", "DecoderStep", "prompt_ids",
           "UnknownLLMError", "register_implementations", "check_sampling", "gumbel_noise", "MAX_BATCH",
           "check_generation", "valid_chip_counts"]
