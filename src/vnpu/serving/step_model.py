"""Serving step times from the chip: timing-only simulations of an LLM's compiled programs on a
grid of step shapes, fitted once, cached on disk, interpolated (and extrapolated) per step.

Each sampled program is a 2-layer instantiation of the model (meta-device weights), split into
its layer block (the repeated launches, runtime.llm.repeated_block) and the rest (embedding,
final norm, LM head, sampling). A layer's kernels are split again into attention (the attention
kernel and its split-KV combine) and the dense rest (norms, projections, MLP, RoPE, the KV
append), each timed from its start to the next kernel's start, launch gaps included. For a model
of L layers a mixed step then costs

    outer + L * (dense(T) + sum_i attn_prefill(n_i, p_i) + attn_decode(B, mean KV length))

with T the step's tokens (all prefill chunks' new tokens + one per decoding sequence). A step with
prompt tokens takes dense and outer from the prefill samples (outer plus the LM head's extra rows
from the decode samples); a decode-only step from the decode samples. The tables come from:
- prefill programs (batch 1, S new tokens): dense(S), outer(S), attn_prefill(S, 0);
- chunked-prefill programs (n new tokens over p cached): attn_prefill(n, p);
- decode programs (batch B, KV bucket of length L): dense(B), outer(B), attn_decode(B, L).
dense and outer are piecewise linear (linear beyond the grid; the prompt grid is dense, since a
small prompt's weight-streaming regime bends into the compute regime); attn_decode bilinear in
(B, L); attn_prefill piecewise linear in n over the prompts' samples (p = 0) plus k n p for the
cached keys, k one least-squares slope over the chunked samples.
Approximations, stated: a mixed step's attention is the sum of per-chunk attention costs (an engine
runs one varlen kernel), and decode attention depends on the batch's mean KV length only.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PREFILL_TOKENS = (16, 48, 96, 192, 384, 768, 1536, 3072, 4096)
CHUNKS = ((64, 512), (512, 512), (64, 2048), (512, 2048))  # (new tokens, cached tokens)
DECODE_BATCH = (1, 8, 32, 64, 128)
DECODE_KV = (512, 2048, 8192)
FORMAT = 2  # bump when the cached tables change meaning


def _interp_vec(x: np.ndarray, xs: list[float], ys: list[float]) -> np.ndarray:
    """Piecewise linear through (xs, ys) at every x, linear beyond both ends."""
    x = np.asarray(x, np.float64)
    if len(xs) == 1:
        return np.full(x.shape, ys[0])
    xa, ya = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    i = np.clip(np.searchsorted(xa, x) - 1, 0, len(xs) - 2)
    x0, x1, y0, y1 = xa[i], xa[i + 1], ya[i], ya[i + 1]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def _interp(x: float, xs: list[float], ys: list[float]) -> float:
    return float(_interp_vec(np.array([x]), xs, ys)[0])


@dataclass
class StepTables:
    """The fitted step-time tables of one (model, chip, precision) in seconds."""
    layers: int
    dense: dict[int, float] = field(default_factory=dict)  # prompt tokens -> one layer's dense kernels (prefill)
    outer_prefill: dict[int, float] = field(default_factory=dict)  # prompt tokens -> the non-layer kernels
    dense_decode: dict[int, float] = field(default_factory=dict)  # batch -> one layer's dense kernels (decode)
    outer: dict[int, float] = field(default_factory=dict)  # batch (sampled rows) -> the non-layer kernels
    attn_decode: dict[tuple[int, int], float] = field(default_factory=dict)  # (batch, KV slots) -> one layer
    attn_prefill: dict[tuple[int, int], float] = field(default_factory=dict)  # (new, cached) -> one layer
    fit_s: float = 0.0  # wall time of the simulations

    def to_json(self) -> dict:
        return {"format": FORMAT, "layers": self.layers, "fit_s": self.fit_s,
                "dense": sorted(self.dense.items()), "outer": sorted(self.outer.items()),
                "dense_decode": sorted(self.dense_decode.items()), "outer_prefill": sorted(self.outer_prefill.items()),
                "attn_decode": [[b, l, t] for (b, l), t in sorted(self.attn_decode.items())],
                "attn_prefill": [[n, p, t] for (n, p), t in sorted(self.attn_prefill.items())]}

    @staticmethod
    def from_json(d: dict) -> "StepTables":
        if d.get("format") != FORMAT:
            raise ValueError("step-time cache of another format")
        def table(key: str) -> dict[int, float]:
            return {int(k): float(v) for k, v in d[key]}

        return StepTables(int(d["layers"]), table("dense"), table("outer_prefill"), table("dense_decode"),
                          table("outer"), {(int(b), int(l)): float(t) for b, l, t in d["attn_decode"]},
                          {(int(n), int(p)): float(t) for n, p, t in d["attn_prefill"]}, float(d.get("fit_s", 0.0)))


class ChipStepModel:
    """step_time(prefill, decode) -> seconds for the serving loop (serving/engine.py), from the
    chip's own programs. `fit()` (or the disk cache) must provide the tables first."""

    def __init__(self, tables: StepTables):
        self.t = tables

        def xy(d: dict[int, float]) -> tuple[list[float], list[float]]:
            items = sorted(d.items())
            return [float(k) for k, _ in items], [v for _, v in items]

        self._dense, self._dense_dec = xy(tables.dense), xy(tables.dense_decode)
        self._outer, self._outer_pre = xy(tables.outer), xy(tables.outer_prefill)
        bs = sorted({b for b, _ in tables.attn_decode})
        ls = sorted({l for _, l in tables.attn_decode})
        self._dec_b, self._dec_l = [float(b) for b in bs], [float(l) for l in ls]
        self._dec = np.array([[tables.attn_decode[(b, l)] for l in ls] for b in bs])
        zero = sorted((n, t) for (n, p), t in tables.attn_prefill.items() if p == 0)
        self._pre0 = ([float(n) for n, _ in zero], [t for _, t in zero])
        # cached keys add work n * p: one least-squares slope (through 0) over the chunked samples
        extra = [(n * p, t - _interp(float(n), *self._pre0)) for (n, p), t in tables.attn_prefill.items() if p]
        w = np.array([x for x, _ in extra], np.float64)
        self._per_cached = float(w @ np.array([y for _, y in extra]) / (w @ w)) if extra else 0.0

    def dense(self, tokens: int, decode_only: bool) -> float:
        """One layer's dense kernels over `tokens` rows: a decode batch's, or a step with prompt tokens."""
        return _interp(float(tokens), *(self._dense_dec if decode_only else self._dense))

    def outer(self, tokens: int, rows: int, decode_only: bool) -> float:
        """The non-layer kernels (embedding, final norm, LM head and sampling for `rows` sequences)."""
        if decode_only:
            return _interp(float(rows), *self._outer)
        more_rows = _interp(float(rows), *self._outer) - _interp(1.0, *self._outer)
        return _interp(float(tokens), *self._outer_pre) + more_rows

    def attn_prefill(self, new: int, cached: int) -> float:
        return _interp(float(new), *self._pre0) + self._per_cached * new * cached

    def attn_decode_vec(self, batch: int, kv: np.ndarray) -> np.ndarray:
        """One layer's decode attention of `batch` sequences at each mean KV length in kv."""
        per_l = np.stack([_interp_vec(kv, self._dec_l, list(row)) for row in self._dec])  # [batch grid, len(kv)]
        if len(self._dec_b) == 1:
            return per_l[0]
        i = int(np.clip(np.searchsorted(self._dec_b, batch) - 1, 0, len(self._dec_b) - 2))
        b0, b1 = self._dec_b[i], self._dec_b[i + 1]
        return per_l[i] + (per_l[i + 1] - per_l[i]) * (batch - b0) / (b1 - b0)

    def attn_decode(self, batch: int, kv: float) -> float:
        return float(self.attn_decode_vec(batch, np.array([kv]))[0])

    def decode_run(self, kv: np.ndarray, steps: int) -> np.ndarray:
        """Times of `steps` consecutive decode-only steps of the sequences with KV lengths kv, each
        step one token longer: exactly what calling the model step by step gives."""
        b = len(kv)
        means = (int(np.sum(kv)) + b * np.arange(steps, dtype=np.int64)) / b
        return self._decode_steps(b, means)

    def _decode_steps(self, b: int, means: np.ndarray) -> np.ndarray:
        return self.outer(b, b, True) + self.t.layers * (self.dense(b, True) + self.attn_decode_vec(b, means))

    def __call__(self, prefill: list[tuple[int, int]], decode: list[int]) -> float:
        if not prefill and decode:  # the same arithmetic as decode_run
            return float(self._decode_steps(len(decode), np.array([sum(decode) / len(decode)]))[0])
        tokens = sum(n for n, _ in prefill) + len(decode)
        attn = sum(self.attn_prefill(n, p) for n, p in prefill)
        if decode:
            attn += self.attn_decode(len(decode), sum(decode) / len(decode))
        only = not prefill
        return self.outer(tokens, len(prefill) + len(decode), only) + self.t.layers * (self.dense(tokens, only) + attn)


# -- fitting from timing-only simulations --------------------------------------------------------------
def _split(prof: Any, prog: Any, clock_hz: float) -> tuple[float, float, float]:
    """(outer, one layer's dense, one layer's attention) seconds of a 2-layer program's run."""
    from vnpu.runtime.llm import repeated_block

    sigs = [(l.kind, tuple(l.ops), l.flops) for l in prog.launches]
    start, n = repeated_block(sigs)
    ks = prof.kernels
    starts = [k.start_cycle for k in ks] + [prof.cycles]
    span = [(starts[i + 1] - starts[i]) / clock_hz for i in range(len(ks))]
    layer = range(start + n, start + 2 * n)
    attn = sum(span[i] for i in layer if ks[i].kind == "attention")
    layer_s = sum(span[i] for i in layer)
    return prof.seconds - 2 * layer_s, layer_s - attn, attn


def cache_key(model: str, chip: Any, dtype: str, quant: str | None, kv_cache: str | None) -> str:
    from vnpu import __version__
    from vnpu.compiler.lower import chip_fingerprint

    parts = [model, chip_fingerprint(chip), dtype, quant or "", kv_cache or "", __version__, str(FORMAT)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def cache_dir() -> Path:
    return Path(os.environ.get("VNPU_CACHE_DIR", Path.home() / ".cache" / "vnpu")) / "step_models"


def fit_step_model(model: str, chip: Any = "vnpu-v1", dtype: str = "bf16", quant: str | None = None,
                   kv_cache: str | None = None, use_cache: bool = True,
                   prefill_tokens: tuple[int, ...] = PREFILL_TOKENS, chunks: tuple = CHUNKS,
                   decode_batch: tuple[int, ...] = DECODE_BATCH, decode_kv: tuple[int, ...] = DECODE_KV) -> ChipStepModel:
    """The chip step model of a zoo LLM (one chip), from the disk cache when it holds this
    (model, chip, precision, vnpu version), else simulated (timing only) and stored."""
    from vnpu.chip import load_chip
    from vnpu.compiler.kv_cache import kv_cache_format
    from vnpu.compiler.quantize import QuantPlan, get_scheme
    from vnpu.dtypes import DType
    from vnpu.runtime.llm import LLMSession, decode_bucket
    from vnpu.workloads.llm_zoo import DecoderStep, build_llm, get_llm

    spec, chip_ = get_llm(model), load_chip(chip)
    ctx = int(spec.config["max_position_embeddings"])
    path = cache_dir() / f"{cache_key(model, chip_, dtype, quant, kv_cache)}.json"
    if use_cache and path.is_file():
        try:
            return ChipStepModel(StepTables.from_json(json.loads(path.read_text())))
        except (ValueError, KeyError, TypeError, json.JSONDecodeError):
            pass  # a stale or damaged cache entry: simulate again
    t0 = time.perf_counter()
    dt, kv = DType(dtype), kv_cache_format(kv_cache)
    plan = QuantPlan(get_scheme(quant)) if quant else None
    meta = build_llm(spec, device="meta", num_layers=2)
    tables = StepTables(spec.num_layers)
    clock = chip_.clock_hz
    longest = max(max(prefill_tokens), max(n + p for n, p in chunks))
    cap = 1 << (min(longest, ctx) - 1).bit_length()
    sess = LLMSession(DecoderStep(meta, 1, cap), chip_, dt, 1, f"{model}_steps_b1", functional=False, quant=plan,
                      kv_cache=kv)

    def run(s: Any, prog: Any, b: int, s_len: int, pos: np.ndarray) -> tuple[float, float, float]:
        prof = s.run(prog, np.zeros((b, s_len), np.int64), pos)[2]
        return _split(prof, prog, clock)

    for s_len in (x for x in prefill_tokens if x <= cap):
        outer, dense, attn = run(sess, sess.program("prefill", s_len, s_len), 1, s_len, np.arange(s_len))
        tables.dense[s_len], tables.outer_prefill[s_len] = dense, outer
        tables.attn_prefill[(s_len, 0)] = attn
    for n, p in ((n, p) for n, p in chunks if n + p <= cap):
        _, _, attn = run(sess, sess.program("chunk", n, n + p), 1, n, np.arange(p, p + n))
        tables.attn_prefill[(n, p)] = attn
    kv_top = 1 << (min(max(decode_kv), ctx) - 1).bit_length()
    for b in decode_batch:
        s = LLMSession(DecoderStep(meta, b, max(kv_top, 2)), chip_, dt, b, f"{model}_steps_b{b}", functional=False,
                       quant=plan, kv_cache=kv)
        for length in sorted({min(x, kv_top) for x in decode_kv}):
            pos = length - 1
            bucket = decode_bucket(pos, s.capacity)  # the KV slots the program's attention reads
            outer, dense, attn = run(s, s.decode_program(pos), b, 1, np.array([pos]))
            tables.attn_decode[(b, bucket)] = attn
            tables.dense_decode.setdefault(b, dense)
            tables.outer.setdefault(b, outer)
    tables.fit_s = time.perf_counter() - t0
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(tables.to_json()))
        tmp.replace(path)
    return ChipStepModel(tables)
