"""LLM serving on the simulated chip: prefill and decode programs over a resident KV cache.

One `LLMSession` holds, on one simulated device,
- the model weights and the KV cache (per layer [B, Hkv, capacity, D]) at fixed HBM
  offsets shared by every program (`pinned` placement), uploaded/zeroed once;
- a prefill program (prompt length S, query positions 0..S-1) and decode programs
  (one new token per sequence), one per KV-length bucket: a decode program reads only the
  first `bucket` cache slots and masks the slots past the current position, so the same
  program serves every step in its bucket (positions are a runtime input; nothing is
  recompiled per token). Buckets: four per octave of length (decode_bucket).
Each step's program writes the new keys/values into the cache in place (index_write),
picks the next token on chip and returns it with the last logits: greedy (argmax), or top-k
sampling (topk, then Gumbel-max over the candidates with noise the host draws from a seeded
numpy Generator and passes as a third input, then a gather of the chosen id).

Big models are evaluated timing-only from `meta`-device instantiations. Decoder layers
are identical, so the session compiles and simulates a 2-layer model and extrapolates:
T(L layers) = T(2 layers) + (L - 2) * T(second layer's kernels), for time, energy and
traffic (the steady-state shortcut; exact when layers are identical and kernels do not
overlap, which holds here because kernels run back to back).
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from vnpu.chip import DEFAULT_CHIP, load_chip
from vnpu.chip.schema import Chip
from vnpu.compiler.lower import KernelCache, compile_graph
from vnpu.dtypes import DType
from vnpu.ir.graph import Graph
from vnpu.isa.program import Program
from vnpu.runtime.host import execute_host
from vnpu.sim.device import Device
from vnpu.sim.profile import Profile
from vnpu.workloads.llm_zoo import shard_spec, valid_chip_counts

ALIGN = 256
MIN_BUCKET = 64


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


BUCKETS_PER_OCTAVE = 4


def decode_bucket(position: int, capacity: int) -> int:
    """KV slots a decode program for a token at `position` reads: position + 1 rounded up to a
    step of a quarter of its power of two (at least MIN_BUCKET), capped at the cache capacity.
    Four buckets per octave: a step reads at most ~25% more cache than it needs, and a
    generation of n tokens from a prompt of p uses about 4 log2((p + n) / p) + 1 programs."""
    need = position + 1
    if need > capacity:
        raise ValueError(f"position {position} is past the KV-cache capacity {capacity}")
    step = max(MIN_BUCKET, (1 << (need.bit_length() - 1)) // BUCKETS_PER_OCTAVE)
    return min(capacity, -(-need // step) * step)


class ModelTooLargeError(MemoryError):
    """The model's weights and KV cache do not fit the chip's HBM; says how many chips would."""


@dataclass
class PhaseCost:
    """Simulated cost of one program run (one prefill, or one decode step)."""

    seconds: float
    energy_j: float
    hbm_bytes: float
    flops: float

    @classmethod
    def of(cls, p: Profile) -> "PhaseCost":
        return cls(p.seconds, p.energy.total_j, float(p.hbm_bytes), float(p.flops))


def _export_step(step: torch.nn.Module, batch: int, seq: int, name: str) -> tuple[Graph, dict[str, int]]:
    from vnpu.frontends.torch import export_aten, import_exported

    dev = next(step.parameters()).device
    ids = torch.zeros(batch, seq, dtype=torch.int64, device=dev)
    pos = torch.arange(seq, dtype=torch.int64, device=dev)
    args: tuple = (ids, pos)
    if getattr(step, "top_k", None) is not None:  # sampling: the host's Gumbel noise is a third input
        args += (torch.zeros(batch, step.top_k, dtype=torch.float32, device=dev),)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = export_aten(step, args)
        res = import_exported(ep, name)
    return res.graph, res.fallback_ops


def _with_attention_attrs(g: Graph, **attrs: Any) -> Graph:
    g = g.clone()
    for n in g.nodes:
        if n.op == "attention":
            n.attrs.update(attrs)
    return g


class LLMSession:
    """Prefill/decode programs of one decoder (a `DecoderStep`) on one simulated chip."""

    def __init__(self, step: torch.nn.Module, chip: Chip, dtype: DType, batch: int, name: str = "llm",
                 functional: bool = True, quant: Any = None, kv_cache: DType | None = None):
        self.step = step
        self.quant = quant  # a compiler.quantize.QuantPlan (dynamic scheme) applied to every program
        self.kv_cache = kv_cache  # the KV cache's format when quantized (fp8: compiler/kv_cache.py)
        self.chip = chip
        self.dtype = DType(dtype)
        self.batch = batch
        self.capacity = int(step.capacity)
        self.name = name
        self.functional = functional
        self._graphs: dict[int, Graph] = {}
        self._programs: dict[tuple[str, int], Program] = {}
        self._kernels = KernelCache()  # timing-only: kernels lowered so far, shared across programs
        self.fallback_ops: dict[str, int] = {}
        self.pinned: dict[str, int] | None = None
        self.top = 0
        self._device: Device | None = None
        self._uploaded: set[int] = set()
        self.compile_s = 0.0
        self.export_s = 0.0

    @property
    def programs(self) -> dict[tuple[str, int], Program]:
        """Compiled programs by (phase, KV slots read): ("prefill", S) and ("decode", bucket)."""
        return dict(self._programs)

    # -- compilation ----------------------------------------------------------------------
    def graph(self, seq: int) -> Graph:
        if seq not in self._graphs:
            t0 = time.perf_counter()
            g, fb = _export_step(self.step, self.batch, seq, f"{self.name}_s{seq}")
            self.export_s += time.perf_counter() - t0
            for k, v in fb.items():
                self.fallback_ops[k] = max(self.fallback_ops.get(k, 0), v)
            self._graphs[seq] = g
            if self.pinned is None:
                self._layout(g)
        return self._graphs[seq]

    def _layout(self, g: Graph) -> None:
        """Fixed offsets for the weights and the KV cache, shared by every program. Taken from
        the optimized graph, so that weights the compiler rewrites (merged Q/K/V and gate/up
        matrices, named after their members) are shared too and replaced ones take no space."""
        from vnpu.compiler.lower import optimize

        pinned: dict[str, int] = {}
        top = 0
        g = optimize(g, self.dtype, quant=self.quant, kv_cache=self.kv_cache)
        for c in g.constants():
            if c.name in g.weight_names and c.name not in pinned:
                pinned[c.name] = top
                top = _align(top + c.type.nbytes)  # already in the program's dtype
        for v, _ in g.state:
            pinned[v.name] = top
            top = _align(top + v.type.nbytes)
        self.pinned = pinned
        self.top = top

    def program(self, phase: str, seq: int, kv_len: int) -> Program:
        key = (phase, kv_len)
        if key not in self._programs:
            g = _with_attention_attrs(self.graph(seq), kv_len=kv_len, prefill=phase == "prefill")
            t0 = time.perf_counter()
            prog, _ = compile_graph(g, self.chip, self.dtype, pinned=self.pinned, base=self.top,
                                    timing_only=not self.functional, kernel_cache=self._kernels, quant=self.quant,
                                    kv_cache=self.kv_cache)
            self.compile_s += time.perf_counter() - t0
            self.top = _align(prog.hbm_bytes)
            self._programs[key] = prog
        return self._programs[key]

    def prefill_program(self, prompt_len: int) -> Program:
        if prompt_len > self.capacity:
            raise ValueError(f"prompt of {prompt_len} tokens exceeds the KV-cache capacity {self.capacity}")
        return self.program("prefill", prompt_len, prompt_len)

    def decode_program(self, position: int) -> Program:
        return self.program("decode", 1, decode_bucket(position, self.capacity))

    # -- execution ------------------------------------------------------------------------
    def _dev(self) -> Device:
        if self._device is None or (self.functional and len(self._device.hbm) < self.top):
            old = self._device
            dev = Device(self.chip, self.top, functional=self.functional, host_executor=execute_host)
            if old is not None and self.functional:
                dev.hbm[:len(old.hbm)] = old.hbm
            self._device = dev
        return self._device

    def reset(self) -> None:
        """Empties the KV cache (positions past a sequence's length are masked anyway)."""
        prog = next(iter(self._programs.values()), None)  # every program shares the state's place
        if self._device is not None and self.functional and prog is not None:
            for _, ref in prog.state:
                self._device.write(ref, np.zeros(ref.shape, ref.dtype.np))

    @property
    def top_k(self) -> int | None:
        """Candidates the step samples from (None: greedy)."""
        return getattr(self.step, "top_k", None)

    def run(self, prog: Program, input_ids: np.ndarray, positions: np.ndarray,
            noise: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, Profile]:
        """One program run: (next tokens [B], logits [B, V], profile). A sampling step (top_k set)
        takes `noise`, Gumbel noise [B, top_k] (zeros when None: timing-only runs)."""
        dev = self._dev()
        if self.functional and id(prog) not in self._uploaded:
            for ref, data in prog.constants:
                dev.write(ref, data)
            self._uploaded.add(id(prog))
        user = prog.user_inputs()
        want = ["input_ids", "positions"] + (["noise"] if self.top_k is not None else [])
        if len(user) != len(want):
            raise RuntimeError(f"decoder program has inputs {[n for n, _ in user]}; expected {', '.join(want)}")
        dev.write(user[0][1], input_ids.astype(user[0][1].dtype.np))
        dev.write(user[1][1], positions.astype(user[1][1].dtype.np))
        if self.top_k is not None:
            ref = user[2][1]
            if noise is None:
                if self.functional:
                    raise ValueError("this sampling step needs noise: Gumbel noise [batch, top_k] "
                                     "(workloads.llm_zoo.gumbel_noise); zeros are only for timing-only runs")
                noise = np.zeros(ref.shape, np.float32)
            if tuple(noise.shape) != tuple(ref.shape):
                raise ValueError(f"noise of shape {tuple(noise.shape)}; the sampling step takes {tuple(ref.shape)}")
            dev.write(ref, noise.astype(ref.dtype.np))
        prof = dev.run(prog)
        if not self.functional:
            return np.zeros(0), np.zeros(0), prof
        return dev.read(prog.outputs[0]), dev.read(prog.outputs[1]).astype(np.float32), prof

    def generate(self, prompt: np.ndarray, max_new_tokens: int, seed: int = 0) -> "Generation":
        """Prefill, then one decode program run per new token. Greedy, or (a sampling step) top-k
        sampling on the chip with Gumbel noise [B, top_k] drawn for each new token in turn from
        np.random.default_rng(seed) (workloads.llm_zoo.gumbel_noise)."""
        from vnpu.workloads.llm_zoo import gumbel_noise

        prompt = np.asarray(prompt)
        if prompt.ndim != 2 or prompt.dtype.kind not in "iu" or prompt.shape[1] < 1:
            raise ValueError(f"prompt must be integer token ids [batch, length >= 1], got {prompt.dtype} {prompt.shape}")
        if not isinstance(max_new_tokens, (int, np.integer)) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        prompt = prompt.astype(np.int64)
        b, s = prompt.shape
        if b != self.batch:
            raise ValueError(f"prompt batch {b} != session batch {self.batch}")
        if s + max_new_tokens - 1 > self.capacity:
            raise ValueError(f"{s} prompt + {max_new_tokens} new tokens exceed the KV-cache capacity {self.capacity}")
        self.reset()
        rng = np.random.default_rng(seed)
        k = self.top_k

        def noise() -> np.ndarray | None:
            return None if k is None else gumbel_noise(rng, b, k)

        t0 = time.perf_counter()
        tok, logits, prof = self.run(self.prefill_program(s), prompt, np.arange(s), noise())
        tokens = [tok]
        all_logits = [logits]
        steps = [PhaseCost.of(prof)]
        for i in range(max_new_tokens - 1):
            pos = s + i
            tok, logits, prof = self.run(self.decode_program(pos), tok.reshape(b, 1), np.array([pos]), noise())
            tokens.append(tok)
            all_logits.append(logits)
            steps.append(PhaseCost.of(prof))
        return Generation(np.stack(tokens, axis=1), np.stack(all_logits, axis=1), steps[0], steps[1:],
                          time.perf_counter() - t0)

    def step_costs(self, prompt_len: int, max_new_tokens: int,
                   layers: int | None = None) -> tuple[PhaseCost, list[PhaseCost]]:
        """Timing-only: the prefill's cost and each decode step's (one simulation per bucket; a
        sampling step gets zero noise). With `layers`, each cost is extrapolated from this
        (2-layer) model to that many layers."""
        z = np.zeros((self.batch, prompt_len), np.int64)

        def cost(prog: Program, ids: np.ndarray, pos: np.ndarray) -> PhaseCost:
            prof = self.run(prog, ids, pos)[2]
            return PhaseCost.of(prof) if layers is None else extrapolate_layers(prof, prog, self.chip, layers)

        prefill = cost(self.prefill_program(prompt_len), z, np.arange(prompt_len))
        by_bucket: dict[int, PhaseCost] = {}
        out = []
        for i in range(max_new_tokens - 1):
            pos = prompt_len + i
            bk = decode_bucket(pos, self.capacity)
            if bk not in by_bucket:
                by_bucket[bk] = cost(self.decode_program(pos), z[:, :1], np.array([pos]))
            out.append(by_bucket[bk])
        return prefill, out


def repeated_block(sigs: list) -> tuple[int, int]:
    """(start, length) of the longest run of launches repeated right after itself: in a
    2-layer decoder program, one layer's kernels (P + X + X + E)."""
    n_all = len(sigs)
    for n in range(n_all // 2, 0, -1):
        for start in range(n_all - 2 * n + 1):
            if sigs[start:start + n] == sigs[start + n:start + 2 * n]:
                return start, n
    raise ValueError("no repeated layer found in the program")


def extrapolate_layers(prof: Profile, prog: Program, chip: Chip, layers: int) -> PhaseCost:
    """The cost of an L-layer model from its 2-layer program's run: the whole run plus (L - 2)
    times the second layer's kernels (found as the repeated block of launches), counted from
    kernel start to the next kernel's start (launch gaps included). Exact for identical
    layers, since kernels run back to back without overlap."""
    sigs = [(l.kind, tuple(l.ops), l.flops) for l in prog.launches]
    start, n = repeated_block(sigs)
    ks = prof.kernels
    starts = [k.start_cycle for k in ks] + [prof.cycles]
    block = ks[start + n:start + 2 * n]
    cycles = starts[start + 2 * n] - starts[start + n]
    busy = sum(k.cycles for k in block)
    energy = sum(k.energy_j for k in block) + chip.energy.static_w * (cycles - busy) / chip.clock_hz
    extra = layers - 2
    return PhaseCost(prof.seconds + extra * cycles / chip.clock_hz, prof.energy.total_j + extra * energy,
                     prof.hbm_bytes + extra * sum(k.hbm_bytes for k in block),
                     prof.flops + extra * sum(k.flops for k in block))


@dataclass
class Generation:
    tokens: np.ndarray  # [B, new tokens]
    logits: np.ndarray  # [B, new tokens, V] (the logits each token was picked from)
    prefill: PhaseCost
    decode: list[PhaseCost]
    wall_s: float


@dataclass
class GenerationReport:
    model: str
    chip: str
    dtype: str
    batch: int
    prompt_len: int
    max_new_tokens: int
    mode: str  # "functional" or "timing-only (layers extrapolated)"
    tokens: list[list[int]]  # generated ids per sequence (empty in timing-only mode)
    ttft_s: float  # time to first token: the prefill program
    tpot_s: float  # mean time per output token over the decode steps
    tokens_per_s: float  # generated tokens / (prefill + decode time)
    decode_tokens_per_s: float  # batch / tpot
    decode_hbm_utilization: float  # decode steps' HBM bytes / (decode time x peak bandwidth)
    decode_bandwidth_bound_fraction: float  # (weights a step reads + KV bytes read) / bandwidth / decode time
    energy_per_token_j: float
    total_energy_j: float
    weight_bytes: int  # whole model (all chips)
    kv_cache_bytes: int  # whole model (all chips)
    kv_capacity: int
    programs: int  # prefill + decode-bucket programs compiled
    layers: int
    wall_s: dict[str, float] = field(default_factory=dict)
    fallback_ops: dict[str, int] = field(default_factory=dict)
    chips: int = 1
    sampling: str = "greedy"  # "greedy" or "top-k" (Gumbel-max on the chip over the top_k logits)
    top_k: int | None = None  # candidates sampled from (None: greedy)
    temperature: float = 1.0
    seed: int = 0  # np.random.default_rng seed of the host's Gumbel noise
    # multi-chip runs (zero / empty on one chip): chip-to-chip collectives (step_collectives)
    moe_collective: str = ""  # MoE expert-parallel schedule taken, e.g. "prefill all-to-all, decode all-reduce"
    prefill_comm_s: float = 0.0  # link time in the prefill (included in ttft_s)
    decode_comm_s: float = 0.0  # link time per decode step, mean (included in tpot_s)
    link_bytes: float = 0.0  # bytes sent chip to chip over the whole generation, all chips
    link_bytes_per_token: float = 0.0  # link_bytes / generated tokens
    link_energy_j: float = 0.0  # link_bytes x chip_link.energy_pj_per_byte (included in total_energy_j)
    quant: str = ""  # the post-training scheme of every linear layer ("" = none)
    kv_cache: str = ""  # the KV cache's element format (the program's dtype unless quantized: fp8_e4m3)
    unquantized_weight_bytes: int = 0  # weight_bytes / kv_cache_bytes in the program's dtype (what
    unquantized_kv_cache_bytes: int = 0  # quantization saves; equal to them when nothing is quantized)
    # quantized functional runs: against the fp32 model on the same tokens (llm_quant_accuracy)
    quant_accuracy: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StepCollectives:
    """Chip-to-chip traffic of one step (prefill or decode) of a model served on several chips."""

    seconds: float  # time on the links (the step waits for it: no overlap with compute)
    link_bytes: float  # bytes sent chip to chip, summed over the chips
    moe_schedule: str = ""  # MoE models: "all-reduce" or "all-to-all", whichever is cheaper
    alternative_seconds: float = 0.0  # MoE models: the schedule not taken


MOE_ALLREDUCE, MOE_ALLTOALL = "all-reduce", "all-to-all"


def candidate_exchange(chip: Chip, chips: int, batch: int, candidates: int = 1) -> tuple[float, float]:
    """(seconds, link bytes) of gathering every chip's sampled candidates on every chip (each
    chip's best `candidates` of its share of the vocabulary, value and id, 16 B each per
    sequence): a ring all-gather, after which all chips pick the same token."""
    from vnpu.isa.cost import all_gather_seconds

    cand = batch * 16 * candidates * chips  # the gathered candidates, every chip's share
    return all_gather_seconds(chip, cand, chips), (chips - 1) * cand


def step_collectives(spec: Any, chip: Chip, chips: int, batch: int, tokens: int, dtype: DType,
                     candidates: int = 1) -> StepCollectives:
    """The collectives of one step of the full model `spec` on `chips` chips (tensor-parallel
    attention, as `shard_spec` splits it), over T = batch x tokens tokens of hidden size H.

    Dense models: two ring all-reduces of the [T, H] activations per layer (after attention's
    output projection and after the MLP).
    MoE models (each chip holding num_experts / n experts), the cheaper of two schedules:
    - all-reduce: after attention's all-reduce every chip holds all T tokens, runs its local
      experts on those routed to them, and the expert outputs are all-reduced: 2 all-reduces
      of [T, H] per layer, like a dense model;
    - all-to-all: attention's partial outputs are reduce-scattered (each chip keeps ceil(T/n)
      tokens), each token's hidden state is dispatched to the chips holding its top-k experts
      (all-to-all: one copy per remote chip however many of its experts that chip holds; under
      uniform routing of k distinct experts out of E, (n - 1) (1 - C(E - E/n, k) / C(E, k))
      remote chips per token, e.g. 4.67 of 7 for Qwen3-235B on 8 chips), the expert outputs are combined
      back by a second all-to-all of the same size (each chip returns one weighted sum per
      token), and the tokens are all-gathered before the next layer's attention.
    Ring collectives pay 2 (n - 1) latencies an all-reduce; the direct all-to-all pays one
    (isa.cost.alltoall_seconds), so the all-to-all schedule wins unless its chunks round up
    badly (T not a multiple of n, or T < n in decode) and the link latency is small. The
    time is the slowest chip's (ceil(T/n) tokens); the bytes are what all chips send.
    Both: one ring all-gather of the sampled candidates (each chip's best `candidates` of its
    share of the vocabulary: 1 for greedy, k for top-k sampling; value and id, 16 B each per
    sequence), after which every chip picks the same token."""
    from vnpu.isa.cost import all_gather_seconds, allreduce_seconds, alltoall_seconds, reduce_scatter_seconds

    n, layers = chips, spec.num_layers
    if n <= 1:
        return StepCollectives(0.0, 0.0)
    hidden = spec.config["hidden_size"] * dtype.itemsize  # one token's activations
    t = batch * tokens
    act = t * hidden
    ring = 2 * (n - 1) / n  # bytes a chip sends in a ring all-reduce, per byte of the tensor
    sample_s, sample_b = candidate_exchange(chip, n, batch, candidates)
    ar_s = 2 * layers * allreduce_seconds(chip, act, n)
    ar_b = 2 * layers * n * ring * act
    if not spec.is_moe:
        return StepCollectives(ar_s + sample_s, ar_b + sample_b)
    e, k = spec.config["num_experts"], spec.config["num_experts_per_tok"]
    copies = (n - 1) * (1 - math.comb(e - e // n, k) / math.comb(e, k))  # remote chips a token goes to
    per_chip = math.ceil(t / n)  # tokens a chip owns between the reduce-scatter and the all-gather
    padded = n * per_chip * hidden  # the [T, H] tensor cut in n chunks of whole tokens
    a2a_s = layers * (reduce_scatter_seconds(chip, padded, n) + all_gather_seconds(chip, padded, n)
                      + 2 * alltoall_seconds(chip, per_chip * copies * hidden, n))
    a2a_b = layers * (2 * (n - 1) * act + 2 * t * copies * hidden)
    if a2a_s < ar_s:
        return StepCollectives(a2a_s + sample_s, a2a_b + sample_b, MOE_ALLTOALL, ar_s + sample_s)
    return StepCollectives(ar_s + sample_s, ar_b + sample_b, MOE_ALLREDUCE, a2a_s + sample_s)


def _capacity(prompt_len: int, max_new_tokens: int) -> int:
    need = prompt_len + max_new_tokens
    return max(MIN_BUCKET, 1 << (need - 1).bit_length())


def model_memory(spec: Any, batch: int, capacity: int, dtype: DType, quant: Any = None,
                 kv_cache: DType | None = None) -> tuple[int, int]:
    """(weight bytes, KV-cache bytes) of the full model in `dtype`, from a meta instantiation.
    With `quant` (a compiler.quantize.QuantScheme), the nn.Linear weights (what
    compiler/quantize.py quantizes) count as the scheme stores them (QuantScheme.weight_bytes);
    a tied one (the LM head of tied embeddings)
    also keeps its `dtype` copy for the embedding lookup."""
    from vnpu.workloads.llm_zoo import build_llm

    def count(layers: int) -> int:
        model = build_llm(spec, device="meta", num_layers=layers)
        params = {id(p): p for p in model.parameters()}
        total = sum(p.numel() for p in params.values()) * dtype.itemsize
        if quant is not None:
            # every [out, in] weight a matmul reads: nn.Linear's, and a router's bare weight (Qwen3-MoE)
            embedded = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
            tied = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)} & embedded
            linear = {id(p): p for n, p in model.named_parameters()
                      if p.dim() == 2 and n.endswith("weight") and (id(p) not in embedded or id(p) in tied)}
            for pid, w in linear.items():
                q = quant.weight_bytes(w.shape[1], w.shape[0])  # nn.Linear: [out, in]
                total += q if pid in embedded else q - w.numel() * dtype.itemsize
            if quant.weight_only:  # routed experts [E, N, K], as compiler/quantize._weight_only_experts stores them
                from vnpu.compiler.quantize import expert_group

                for m in model.modules():
                    ws = [getattr(m, a, None) for a in ("gate_up_proj", "down_proj")]
                    if not all(isinstance(w, torch.nn.Parameter) and w.dim() == 3 for w in ws):
                        continue
                    groups = [expert_group(w.shape[2], quant) for w in ws]
                    if None in groups:
                        continue
                    for w, grp in zip(ws, groups):
                        e, n, k = w.shape
                        total += e * n * k * quant.bits // 8 + e * n * (k // grp) * 4 - w.numel() * dtype.itemsize
        return total

    # layers are identical: count a 1- and a 2-layer instantiation instead of the whole model
    b1, b2 = count(1), count(2)
    w = b1 + (spec.num_layers - 1) * (b2 - b1)
    return w, kv_bytes(spec, batch, capacity, dtype, kv_cache)


def decode_weight_bytes(spec: Any, batch: int, weight_bytes: int, dtype: DType, quant: Any = None) -> int:
    """Weight bytes one decode step must read: all of a dense model; for an MoE model the
    non-expert weights plus at most batch x top-k routed experts per layer (each as `quant`, a
    weight-only QuantScheme, stores it: compiler/quantize._weight_only_experts)."""
    c = spec.config
    if not spec.is_moe:
        return weight_bytes
    e, k = c["num_experts"], c["num_experts_per_tok"]
    h, i = c["hidden_size"], c["moe_intermediate_size"]
    expert = 3 * h * i * dtype.itemsize
    if quant is not None and quant.weight_only:
        from vnpu.compiler.quantize import expert_group

        g_gu, g_dn = expert_group(h, quant), expert_group(i, quant)
        if g_gu and g_dn:
            expert = 3 * h * i * quant.bits // 8 + (2 * i * (h // g_gu) + h * (i // g_dn)) * 4
    return weight_bytes - spec.num_layers * expert * (e - min(e, batch * k))


def kv_bytes(spec: Any, batch: int, tokens: int, dtype: DType, kv_cache: DType | None = None) -> int:
    """Bytes of keys and values for `tokens` positions of every layer and sequence; a quantized
    cache (`kv_cache`, compiler/kv_cache.py) holds its format plus an fp32 scale per row."""
    c = spec.config
    hd = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    row = hd * kv_cache.itemsize + 4 if kv_cache is not None else hd * dtype.itemsize
    return 2 * spec.num_layers * batch * c["num_key_value_heads"] * tokens * row


def _what_fits(spec: Any, prompt_len: int, max_new_tokens: int, batch: int, weight_bytes: int, hbm_bytes: int,
               dtype: DType, chips: int = 1) -> str:
    """What does fit next to the weights on each of `chips` chips: the largest prompt at this batch and the
    largest batch at this prompt (the cache holds a power of two of at least MIN_BUCKET tokens)."""
    free = hbm_bytes - weight_bytes
    if free <= 0:
        return ""
    ctx = int(spec.config["max_position_embeddings"])
    batch_fit = free // kv_bytes(spec, 1, _capacity(prompt_len, max_new_tokens), dtype)
    cap = MIN_BUCKET
    if kv_bytes(spec, batch, cap, dtype) > free:
        prompt_part = f"batch {batch} does not fit even a {MIN_BUCKET}-token KV cache"
    else:
        while cap < ctx and kv_bytes(spec, batch, 2 * cap, dtype) <= free:
            cap *= 2
        longest = min(cap, ctx) - max_new_tokens
        prompt_part = (f"batch {batch} fits prompts of at most {longest} tokens (--prompt-len) with {max_new_tokens} new"
                       if longest >= 1 else f"batch {batch} fits at most {min(cap, ctx)} tokens in all")
    batch_part = (f"a {prompt_len}-token prompt fits a batch of at most {batch_fit} (--batch)" if batch_fit >= 1
                  else f"a {prompt_len}-token prompt does not fit even batch 1")
    return f"; on {chips} chip(s) {prompt_part}, and {batch_part}"


def chips_needed(model: Any, prompt_len: int, max_new_tokens: int, batch: int, chip: str | Chip,
                 dtype: str | DType, quant: Any = None, kv_cache: str | None = None) -> int:
    """The fewest chips (a power of two the model splits over) whose HBM holds a chip's share
    of the weights and KV cache (with 5% left for activations)."""
    from vnpu.workloads.llm_zoo import get_llm

    from vnpu.compiler.kv_cache import kv_cache_format

    spec, chip_, dt = get_llm(model) if isinstance(model, str) else model, load_chip(chip), DType(dtype)
    kv_fmt = kv_cache_format(kv_cache)
    cap = _capacity(prompt_len, max_new_tokens)
    n = 1
    while n <= 64:
        try:
            w, kv = model_memory(shard_spec(spec, n), batch, cap, dt, quant, kv_fmt)
        except ValueError:
            break
        if w + kv <= chip_.hbm.bytes * 0.95:
            return n
        n *= 2
    w, kv = model_memory(spec, batch, cap, dt)
    return math.ceil((w + kv) / (chip_.hbm.bytes * 0.95))


def generate(model: Any, prompt_len: int = 16, max_new_tokens: int = 32, batch: int = 1,
             chip: str | Chip = DEFAULT_CHIP, dtype: str | DType = "bf16", timing_only: bool | None = None,
             prompt: np.ndarray | None = None, chips: int = 1, top_k: int | None = None, temperature: float = 1.0,
             seed: int = 0, quant: str | None = None, kv_cache: str | None = None) -> GenerationReport:
    """Runs generation of a zoo LLM on the chip and reports serving metrics: greedy, or with
    `top_k` (0 or None: greedy) top-k sampling at `temperature` on the chip, its Gumbel noise
    drawn by the host from np.random.default_rng(seed).

    Functional (real tokens) for the small zoo variants; timing-only (meta-device weights,
    layers extrapolated from 1- and 2-layer programs) for the big ones, or when asked.
    chips > 1, functional (small models, greedy): every chip runs its shard of the real weights
    with all-reduces between them (runtime.tensor_parallel). chips > 1, timing-only: each chip
    runs its tensor/expert-parallel share of the model (shard_spec) and steps add the
    chip-to-chip collectives (step_collectives: all-reduces, or for MoE models the cheaper of
    the all-reduce and all-to-all expert schedules); energy adds static power during them and
    the bytes they move x chip_link.energy_pj_per_byte.
    `quant`: a dynamic post-training scheme (w8a8-int8, w8a8-fp8) for every linear layer; a
    functional run also reports its accuracy against the fp32 model on the same tokens
    (report.numerics.llm_quant_accuracy: mean KL divergence, same-top-token rate).
    `kv_cache`: "fp8" stores the KV cache in fp8 e4m3 with a scale per token and head
    (compiler/kv_cache.py), with or without `quant`; its accuracy is reported the same way.
    """
    from vnpu.compiler.kv_cache import KVCacheError, kv_cache_format
    from vnpu.workloads.llm_zoo import (DecoderStep, build_llm, check_generation, check_sampling, get_llm,
                                        prompt_ids)

    full = get_llm(model) if isinstance(model, str) else model  # a zoo name, or an LLMSpec
    model = full.name
    chip_ = load_chip(chip)
    dt = DType(dtype)
    plan = None
    if quant is not None:
        from vnpu.compiler.quantize import QuantError, QuantPlan, check_chip, get_scheme

        scheme = get_scheme(quant)
        check_chip(scheme, chip_)
        if scheme.needs_calibration:
            raise QuantError(f"LLM generation takes the schemes without calibration "
                             f"({', '.join(s for s, v in _schemes().items() if not v.needs_calibration)}); "
                             f"{quant} needs calibration")
        plan = QuantPlan(scheme)
    qfmt = plan.scheme if plan is not None else None
    kv_fmt = kv_cache_format(kv_cache)
    # every size is checked before anything is built or allocated
    check_generation(full, prompt_len, max_new_tokens, batch, chips)
    top_k = top_k or None  # 0: greedy
    check_sampling(top_k, temperature, full.config["vocab_size"], seed)
    if prompt is not None:
        prompt = np.asarray(prompt)
        if prompt.shape != (batch, prompt_len) or prompt.dtype.kind not in "iu":
            raise ValueError(f"prompt must be integer token ids of shape ({batch}, {prompt_len}) (batch, prompt_len), "
                             f"got {prompt.dtype} {prompt.shape}")
        vocab = full.config["vocab_size"]
        if prompt.size and (prompt.min() < 0 or prompt.max() >= vocab):
            raise ValueError(f"prompt token ids must be in 0..{vocab - 1} (the vocabulary of {model}), "
                             f"got {prompt.min()}..{prompt.max()}")
    if chips > 1 and chip_.chip_link is None:
        raise ValueError(f"{chip_.name} has no chip_link in its schema: it cannot serve over {chips} chips")
    if timing_only is None:
        timing_only = not full.functional
    if chips > 1 and not timing_only and kv_fmt is not None:
        raise KVCacheError("functional multi-chip generation keeps the KV cache in the program's dtype: drop "
                           "--kv-cache, or add --timing-only")
    if chips > 1 and not timing_only and plan is not None:
        from vnpu.compiler.quantize import QuantError

        raise QuantError("functional multi-chip generation runs unquantized: drop --quant, or add --timing-only "
                         "(each chip's shard is then quantized)")
    if chips > 1 and not timing_only and top_k is not None:
        raise ValueError("functional multi-chip generation is greedy only: drop --top-k, or add --timing-only")
    spec = shard_spec(full, chips)
    cap = _capacity(prompt_len, max_new_tokens)
    w_bytes, kv_total = model_memory(spec, batch, cap, dt, qfmt, kv_fmt)
    # what the unquantized model takes (the memory a scheme or a quantized cache saves)
    base_w, base_kv = model_memory(spec, batch, cap, dt) if (qfmt is not None or kv_fmt is not None) else (w_bytes, kv_total)
    if w_bytes + kv_total > chip_.hbm.bytes:
        need = chips_needed(full, prompt_len, max_new_tokens, batch, chip_, dt)
        most = max(valid_chip_counts(full))
        chips_hint = (f"It needs at least {need} chips (--chips {need}), or a smaller batch or context"
                      if need <= most else f"It would need {need} chips, more than the {most} {model} splits over: "
                      "give a smaller batch or context")
        raise ModelTooLargeError(
            f"{model} ({dt.value}) needs {(w_bytes + kv_total) / 2**30:.1f} GiB per chip on {chips} chip(s) "
            f"(weights {w_bytes / 2**30:.1f} GiB, KV cache {kv_total / 2**30:.1f} GiB for batch {batch} x {cap} "
            f"tokens); {chip_.name} has {chip_.hbm.bytes / 2**30:.0f} GiB of HBM. {chips_hint}"
            f"{_what_fits(spec, prompt_len, max_new_tokens, batch, w_bytes, chip_.hbm.bytes, dt, chips)}.")
    if not timing_only:  # real weights and the KV cache in torch (fp32), plus the simulated HBM image(s)
        from vnpu.sim.device import check_host_memory

        w_fp32, kv_fp32 = w_bytes // dt.itemsize * 4, kv_total // dt.itemsize * 4
        check_host_memory(chips * (w_fp32 * (2 if chips > 1 else 1) + kv_fp32 + w_bytes + kv_total),
                          f"functional generation of {model} (batch {batch} x {cap} tokens)")
    t0 = time.perf_counter()
    walls: dict[str, float] = {}
    link: dict[str, Any] = {}  # multi-chip collectives' GenerationReport fields
    if not timing_only and chips > 1:  # real tokens on several chips
        from vnpu.runtime.tensor_parallel import TensorParallelSession

        tp = TensorParallelSession(build_llm(full), full, chips, chip_, dt, batch, cap, name=model)
        ids = prompt if prompt is not None else prompt_ids(full.config["vocab_size"], batch, prompt_len).numpy()
        t_gen = time.perf_counter()
        toks, _, steps = tp.generate(ids, max_new_tokens)
        prefill, decode, tokens, layers = steps[0], steps[1:], toks.tolist(), spec.num_layers
        programs, fallback = len(tp.sessions[0].programs), tp.sessions[0].fallback_ops
        walls.update(simulate_s=time.perf_counter() - t_gen)
        mode = f"functional, {chips} chips (tensor/expert parallel, all-reduces on the chip link)"
        pj = chip_.chip_link.energy_pj_per_byte or 0.0
        link.update(prefill_comm_s=prefill.comm_s, decode_comm_s=sum(d.comm_s for d in decode) / max(len(decode), 1),
                    link_bytes=sum(s.link_bytes for s in steps))
        link["link_energy_j"] = link["link_bytes"] * pj * 1e-12  # step energies are summed over the chips
    elif not timing_only:
        m = build_llm(spec)
        step = DecoderStep(m, batch, cap, top_k, temperature)
        sess = LLMSession(step, chip_, dt, batch, name=model, quant=plan, kv_cache=kv_fmt)
        ids = prompt if prompt is not None else prompt_ids(spec.config["vocab_size"], batch, prompt_len).numpy()
        gen = sess.generate(ids, max_new_tokens, seed)
        if plan is not None or kv_fmt is not None:  # the fp32 model on the same tokens (teacher-forced), as llama.cpp's --kl-divergence
            from vnpu.report.numerics import llm_quant_accuracy

            ref_model = build_llm(spec, attn="eager")  # the stock transformers model, same (seeded) weights
            link["quant_accuracy"] = llm_quant_accuracy(gen.logits, reference_logits(ref_model, ids, gen.tokens)).to_dict()
        prefill, decode = gen.prefill, gen.decode
        tokens = gen.tokens.tolist()
        programs = len(sess.programs)
        layers = spec.num_layers
        walls.update(export_s=sess.export_s, compile_s=sess.compile_s, simulate_s=gen.wall_s)
        fallback = sess.fallback_ops
        mode = "functional"
    else:
        layers = spec.num_layers
        # a chip samples among its best min(k, its share of the vocabulary); every chip gets them all
        local_k = None if top_k is None else min(top_k, spec.config["vocab_size"])
        step = DecoderStep(build_llm(spec, device="meta", num_layers=min(2, layers)), batch, cap, local_k, temperature)
        sess = LLMSession(step, chip_, dt, batch, name=f"{model}_2layers", functional=False, quant=plan,
                          kv_cache=kv_fmt)
        prefill, decode = sess.step_costs(prompt_len, max_new_tokens, layers if layers > 2 else None)
        programs = len(sess.programs)
        walls.update(export_s=sess.export_s, compile_s=sess.compile_s)
        fallback = sess.fallback_ops
        tokens = []
        mode = "timing-only (layers extrapolated)"
        if chips > 1:  # every chip runs its share at once; then the all-reduces; energy of all chips
            mode += f", {chips} chips (tensor/expert parallel)"

            pj = chip_.chip_link.energy_pj_per_byte or 0.0  # None: the schema gives no link energy
            pre_comm, dec_comm = (step_collectives(full, chip_, chips, batch, tok, dt, local_k or 1)
                                  for tok in (prompt_len, 1))

            def on_chips(c: PhaseCost, comm: StepCollectives) -> PhaseCost:
                return PhaseCost(c.seconds + comm.seconds,
                                 chips * (c.energy_j + chip_.energy.static_w * comm.seconds)
                                 + comm.link_bytes * pj * 1e-12,
                                 chips * c.hbm_bytes, chips * c.flops)

            prefill = on_chips(prefill, pre_comm)
            decode = [on_chips(d, dec_comm) for d in decode]
            link.update(prefill_comm_s=pre_comm.seconds, decode_comm_s=dec_comm.seconds if decode else 0.0,
                        link_bytes=pre_comm.link_bytes + len(decode) * dec_comm.link_bytes)
            link["link_energy_j"] = link["link_bytes"] * pj * 1e-12
            if full.is_moe:
                link["moe_collective"] = (f"prefill {pre_comm.moe_schedule}, decode {dec_comm.moe_schedule}"
                                          if decode else f"prefill {pre_comm.moe_schedule}")
    walls["total_s"] = time.perf_counter() - t0
    dec_s = sum(d.seconds for d in decode)
    tpot = dec_s / len(decode) if decode else 0.0
    total_s = prefill.seconds + dec_s
    n_tok = batch * max_new_tokens
    energy = prefill.energy_j + sum(d.energy_j for d in decode)
    bw = chip_.hbm.bandwidth_gbs * 1e9 * chips
    w_bytes, kv_total = w_bytes * chips, kv_total * chips  # whole-model figures from here on
    util = sum(d.hbm_bytes for d in decode) / (dec_s * bw) if dec_s else 0.0
    # the HBM-bandwidth bound of each decode step: all weights plus the KV slots its program reads
    buckets = [decode_bucket(prompt_len + i, cap) for i in range(max_new_tokens - 1)]
    w_read = chips * decode_weight_bytes(spec, batch, w_bytes // chips, dt, qfmt)
    bound_s = sum((w_read + chips * kv_bytes(spec, batch, bk, dt, kv_fmt)) / bw for bk in buckets)
    bound = bound_s / dec_s if dec_s else 0.0
    return GenerationReport(
        model=model, chip=chip_.name, dtype=dt.value, batch=batch, prompt_len=prompt_len,
        max_new_tokens=max_new_tokens, mode=mode, tokens=tokens, ttft_s=prefill.seconds, tpot_s=tpot,
        tokens_per_s=n_tok / total_s if total_s else 0.0, decode_tokens_per_s=batch / tpot if tpot else 0.0,
        decode_hbm_utilization=util, decode_bandwidth_bound_fraction=bound, energy_per_token_j=energy / n_tok,
        total_energy_j=energy, weight_bytes=w_bytes, kv_cache_bytes=kv_total, kv_capacity=cap, programs=programs,
        layers=layers, wall_s=walls, fallback_ops=dict(fallback), chips=chips,
        sampling="greedy" if top_k is None else "top-k", top_k=top_k, temperature=float(temperature), seed=int(seed),
        link_bytes_per_token=link.get("link_bytes", 0.0) / n_tok, quant=quant or "",
        kv_cache=kv_fmt.value if kv_fmt is not None else dt.value,
        unquantized_weight_bytes=base_w * chips, unquantized_kv_cache_bytes=base_kv * chips, **link)


def _schemes() -> dict:
    from vnpu.compiler.quantize import SCHEMES

    return SCHEMES


def reference_logits(model: torch.nn.Module, prompt: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """The torch model's fp32 logits [B, new tokens, V] at the positions the generated tokens were
    picked at, fed the prompt and the generated tokens (teacher forcing): the reference a
    quantized generation's logits compare with."""
    seq = np.concatenate([np.asarray(prompt), np.asarray(tokens)[:, :-1]], axis=1)
    with torch.no_grad():
        out = model(torch.as_tensor(seq, dtype=torch.int64)).logits.float()
    s = np.asarray(prompt).shape[1]
    return out[:, s - 1:, :].numpy()


__all__ = ["LLMSession", "Generation", "GenerationReport", "PhaseCost", "generate", "decode_bucket", "shard_spec",
           "chips_needed", "step_collectives", "StepCollectives",
           "ModelTooLargeError", "extrapolate_layers", "kv_bytes", "model_memory"]
