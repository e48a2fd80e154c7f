"""`vnpu serve`: a zoo LLM served on R replicas of one chip each, under a request trace, with
step times from the chip (serving/step_model.py) and vLLM-style scheduling (serving/engine.py).

The KV cache of a replica is its HBM minus the weights (as the precision and scheme store them)
minus an activation workspace (WORKSPACE_SHARE of HBM), in blocks of `block_size` tokens.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vnpu.serving.engine import ROUTERS, ServeResult, simulate
from vnpu.serving.scheduler import POLICIES, SchedulerConfig, SchedulerError
from vnpu.serving.trace import Request

WORKSPACE_SHARE = 0.05  # of a replica's HBM kept for activations and programs


class ServeError(ValueError):
    pass


SLO_METRICS = ("ttft", "tpot", "e2e")


def parse_slo(text: str | None) -> dict[str, float]:
    """`ttft=0.5,tpot=0.05` (seconds; also e2e=): the latency targets a request must meet to count
    toward goodput (DistServe's definition: served requests per second that meet every target)."""
    if text is None or not text.strip():
        return {}
    out: dict[str, float] = {}
    for item in (p.strip() for p in text.split(",") if p.strip()):
        key, eq, val = item.partition("=")
        key = key.strip().lower()
        try:
            v = float(val.rstrip("s")) if eq else float("nan")
        except ValueError:
            v = float("nan")
        if key not in SLO_METRICS or not (v > 0 and np.isfinite(v)):
            raise ServeError(f"--slo {text!r}: {item!r} is not metric=seconds with metric one of "
                             f"{', '.join(SLO_METRICS)} (e.g. ttft=0.5,tpot=0.05)")
        out[key] = v
    return out


def _pct(x: np.ndarray) -> dict[str, float]:
    if x.size == 0:
        return {"mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0}
    return {"mean": float(x.mean()), "p50": float(np.percentile(x, 50)), "p90": float(np.percentile(x, 90)),
            "p99": float(np.percentile(x, 99))}


@dataclass
class ServeReport:
    model: str
    chip: str
    dtype: str
    quant: str
    kv_cache: str
    replicas: int
    policy: str
    router: str
    requests: int
    served: int
    rejected: int
    duration_s: float  # first arrival to last token
    request_rate: float  # offered: requests / arrival span
    throughput_rps: float  # served requests per second of duration
    output_tokens_per_s: float
    ttft_s: dict[str, float]
    tpot_s: dict[str, float]
    itl_s: dict[str, float]
    e2e_s: dict[str, float]
    kv_blocks: int  # per replica
    block_size: int
    peak_kv_share: float  # the highest share of a replica's KV blocks in use
    preemptions: int
    cached_prompt_tokens: int
    slo: dict[str, float]  # latency targets (seconds) per metric; empty: none
    slo_attainment: float  # share of all requests served within every target (1.0 without targets)
    goodput_rps: float  # requests per second served within every target
    step_model_s: float  # wall time to fit (or load) the step-time model
    simulate_s: float  # wall time of the event loop
    rejected_reasons: list[str] = field(default_factory=list)
    per_request: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def kv_blocks_per_replica(model: str, chip: Any, dtype: str, quant: str | None, kv_cache: str | None,
                          block_size: int) -> int:
    """KV blocks one replica's HBM holds next to the weights and the workspace (ServeError if none)."""
    from vnpu.chip import load_chip
    from vnpu.compiler.kv_cache import kv_cache_format
    from vnpu.compiler.quantize import get_scheme
    from vnpu.dtypes import DType
    from vnpu.runtime.llm import kv_bytes, model_memory
    from vnpu.workloads.llm_zoo import get_llm

    spec, chip_, dt = get_llm(model), load_chip(chip), DType(dtype)
    w, _ = model_memory(spec, 1, 1, dt, get_scheme(quant) if quant else None)
    per_token = kv_bytes(spec, 1, 1, dt, kv_cache_format(kv_cache))
    free = chip_.hbm.bytes * (1 - WORKSPACE_SHARE) - w
    blocks = int(free // (per_token * block_size))
    if blocks < 1:
        raise ServeError(f"{model} ({dtype}{', ' + quant if quant else ''}) needs {w / 2**30:.1f} GiB of weights; "
                         f"one {chip_.name} ({chip_.hbm.bytes / 2**30:.0f} GiB HBM) has no room left for a KV cache: "
                         "use a quantization scheme (--quant) or a chip with more HBM (several chips per replica "
                         "are not built yet)")
    return blocks


def serve(model: str, trace: list[Request], chip: Any = "vnpu-v1", dtype: str = "bf16", replicas: int = 1,
          quant: str | None = None, kv_cache: str | None = None, policy: str = "chunked",
          router: str = "round_robin", block_size: int = 16, max_num_batched_tokens: int = 8192,
          max_num_seqs: int = 256, prefix_caching: bool = False, use_cache: bool = True,
          step_model: Any = None, slo: dict[str, float] | str | None = None) -> ServeReport:
    """Simulates serving `trace`; `step_model` overrides the chip-derived step-time model; `slo`
    (e.g. "ttft=0.5,tpot=0.05") sets the latency targets of goodput."""
    targets = parse_slo(slo) if not isinstance(slo, dict) else dict(slo)
    from vnpu.chip import load_chip
    from vnpu.serving.step_model import fit_step_model

    if policy not in POLICIES:
        raise ServeError(f"unknown scheduler policy {policy!r}: use one of {', '.join(POLICIES)}")
    if router not in ROUTERS:
        raise ServeError(f"unknown router {router!r}: use one of {', '.join(ROUTERS)}")
    if not 1 <= replicas <= 4096:
        raise ServeError(f"--replicas must be in 1..4096, got {replicas}")
    chip_ = load_chip(chip)
    blocks = kv_blocks_per_replica(model, chip_, dtype, quant, kv_cache, block_size)
    try:
        from vnpu.workloads.llm_specs import get_llm

        cfg = SchedulerConfig(num_blocks=blocks, block_size=block_size, max_num_batched_tokens=max_num_batched_tokens,
                              max_num_seqs=max_num_seqs, policy=policy, prefix_caching=prefix_caching,
                              max_model_len=int(get_llm(model).config["max_position_embeddings"]))
    except SchedulerError as e:
        raise ServeError(str(e)) from None
    t0 = time.perf_counter()
    sm = step_model or fit_step_model(model, chip_, dtype, quant, kv_cache, use_cache=use_cache)
    t1 = time.perf_counter()
    res: ServeResult = simulate(trace, sm, cfg, replicas, router)
    t2 = time.perf_counter()
    served = res.served
    t_first = min(r.arrival_s for r in trace)
    span = max(r.arrival_s for r in trace) - t_first
    duration = max(res.end_s - t_first, 1e-12)
    e2e = np.array([r.e2e_s for r in served])
    good = [r for r in served if all({"ttft": r.ttft_s, "tpot": r.tpot_s, "e2e": r.e2e_s}[k] <= v
                                     for k, v in targets.items())]
    return ServeReport(
        model=model, chip=chip_.name, dtype=dtype, quant=quant or "", kv_cache=kv_cache or dtype, replicas=replicas,
        policy=policy, router=router, requests=len(trace), served=len(served), rejected=len(trace) - len(served),
        duration_s=duration, request_rate=(len(trace) - 1) / span if span > 0 else 0.0,
        throughput_rps=len(served) / duration, output_tokens_per_s=res.output_tokens_per_s(),
        ttft_s=_pct(np.array([r.ttft_s for r in served])), tpot_s=_pct(np.array([r.tpot_s for r in served])),
        itl_s=_pct(res.itl_s()), e2e_s=_pct(e2e), kv_blocks=blocks, block_size=block_size,
        peak_kv_share=max(res.peak_blocks) / blocks, preemptions=res.preemptions,
        cached_prompt_tokens=res.cached_tokens_hit, slo=targets, slo_attainment=len(good) / len(trace),
        goodput_rps=len(good) / duration, step_model_s=t1 - t0, simulate_s=t2 - t1,
        rejected_reasons=sorted({r.rejected for r in res.requests if r.rejected}),
        per_request=[{"id": r.id, "arrival_s": r.arrival_s, "prompt_tokens": r.prompt_tokens,
                      "output_tokens": r.output_tokens, "replica": r.replica, "ttft_s": r.ttft_s if not r.rejected else None,
                      "tpot_s": r.tpot_s if not r.rejected else None, "e2e_s": r.e2e_s if not r.rejected else None,
                      "preemptions": r.preemptions, "rejected": r.rejected} for r in res.requests])
