"""The serving loop and its schedulers (vnpu.serving.engine / scheduler) driven by an analytic
step-time model, so every expected figure is a hand formula."""
from __future__ import annotations

import numpy as np
import pytest

from vnpu.serving.engine import simulate
from vnpu.serving.scheduler import SchedulerConfig, SchedulerError
from vnpu.serving.trace import Request, synthetic_trace


def step_time(prefill, decode):
    """1 ms per step + 2 us per prefill token + 0.1 ms per decoding sequence + 10 ns per cached token read."""
    new = sum(n for n, _ in prefill)
    kv = sum(p for _, p in prefill) + sum(decode)
    return 1e-3 + 2e-6 * new + 1e-4 * len(decode) + 1e-8 * kv


def _decode_run(kv, steps):
    """step_time([], kv + i) for i in 0..steps-1, vectorized with the same float operations."""
    b, s0 = len(kv), int(np.sum(kv))
    return 1e-3 + 2e-6 * 0 + 1e-4 * b + 1e-8 * (s0 + b * np.arange(steps, dtype=np.int64))


step_time.decode_run = _decode_run

BIG = SchedulerConfig(num_blocks=100_000)


@pytest.mark.parametrize("policy", ["chunked", "prefill_first", "orca"])
def test_a_lone_request_takes_the_hand_counted_time(policy):
    p, o = 500, 20
    res = simulate([Request(0, 1.0, p, o)], step_time, SchedulerConfig(num_blocks=1000, policy=policy))
    r = res.requests[0]
    assert r.ttft_s == pytest.approx(step_time([(p, 0)], []), rel=1e-12)
    decode_steps = [step_time([], [p + i]) for i in range(o - 1)]
    assert r.tpot_s == pytest.approx(sum(decode_steps) / (o - 1), rel=1e-9)
    assert r.e2e_s == pytest.approx(step_time([(p, 0)], []) + sum(decode_steps), rel=1e-9)
    assert res.steps == o


def test_chunked_prefill_splits_a_long_prompt_by_the_token_budget():
    cfg = SchedulerConfig(num_blocks=1000, max_num_batched_tokens=256)
    r = simulate([Request(0, 0.0, 600, 2)], step_time, cfg).requests[0]
    chunks = [step_time([(256, 0)], []), step_time([(256, 256)], []), step_time([(88, 512)], [])]
    assert r.ttft_s == pytest.approx(sum(chunks), rel=1e-12)


def _overload(policy="chunked", num_blocks=2000, rate=400.0, n=600, seed=0, **kw):
    tr = synthetic_trace(rate, n, "uniform:low=100,high=1500", "uniform:low=50,high=300", seed=seed)
    return simulate(tr, step_time, SchedulerConfig(num_blocks=num_blocks, policy=policy, **kw))


def test_kv_blocks_never_exceed_capacity_and_preemption_recomputes():
    res = _overload(num_blocks=800)
    assert max(res.peak_blocks) <= 800
    assert res.preemptions > 0  # a small cache under overload preempts
    assert all(r.finish_s is not None and len(r.token_s) == r.output_tokens for r in res.requests)


def test_same_trace_same_results():
    a, b = _overload(seed=3), _overload(seed=3)
    assert [(r.first_token_s, r.finish_s) for r in a.requests] == [(r.first_token_s, r.finish_s) for r in b.requests]


def test_littles_law_on_a_long_run():
    tr = synthetic_trace(20.0, 4000, "lognormal:mean=600,sigma=0.8,max=4000", "lognormal:mean=150,sigma=0.8,max=800",
                         seed=1)
    res = simulate(tr, step_time, SchedulerConfig(num_blocks=20_000))
    e2e = np.array([r.e2e_s for r in res.served])
    t0, t1 = tr[0].arrival_s, tr[-1].arrival_s
    lam = (len(tr) - 1) / (t1 - t0)
    assert res.mean_in_system(t0, t1) == pytest.approx(lam * e2e.mean(), rel=0.02)


def test_overload_throughput_saturates():
    a = _overload(rate=2000.0, n=1500).output_tokens_per_s()
    b = _overload(rate=8000.0, n=1500).output_tokens_per_s()
    assert b == pytest.approx(a, rel=0.05)


def test_prefill_first_stalls_decodes_that_chunking_does_not():
    """Long prompts (1-4k tokens) at 40 requests/s, beyond what the replica keeps up with: a
    prefill-first step runs whole prompts while every decode waits; chunking to 256-token steps
    bounds the gap between a sequence's tokens (measured: 8.3x lower ITL p99)."""
    tr = synthetic_trace(40.0, 400, "uniform:low=1000,high=4000", "uniform:low=50,high=300", seed=0)
    p99 = {pol: np.percentile(simulate(tr, step_time, SchedulerConfig(num_blocks=50_000, policy=pol,
                                                                      max_num_batched_tokens=256)).itl_s(), 99)
           for pol in ("chunked", "prefill_first")}
    assert p99["prefill_first"] >= 3 * p99["chunked"], p99


def test_orca_reservation_admits_fewer_sequences_than_paging():
    paged = _overload("chunked", num_blocks=3000)
    orca = _overload("orca", num_blocks=3000)
    assert max(orca.peak_running) < max(paged.peak_running)


def test_a_request_that_can_never_fit_is_rejected_with_its_reason():
    res = simulate([Request(0, 0.0, 100, 10), Request(1, 0.1, 5000, 10)], step_time, SchedulerConfig(num_blocks=64))
    assert res.requests[0].rejected == "" and res.requests[0].finish_s is not None
    assert "exceed the replica's KV cache (64 blocks of 16)" in res.requests[1].rejected


def test_bad_scheduler_options():
    with pytest.raises(SchedulerError, match="unknown scheduler policy 'fifo'"):
        SchedulerConfig(num_blocks=10, policy="fifo")
    with pytest.raises(SchedulerError, match="num_blocks must be >= 1"):
        SchedulerConfig(num_blocks=0)
    with pytest.raises(SchedulerError, match="unknown router"):
        simulate([Request(0, 0.0, 1, 1)], step_time, BIG, router="random")


class _Recorder:
    """The analytic step model, recording every step's prefill chunks."""

    def __init__(self):
        self.prefill: list[list[tuple[int, int]]] = []

    def __call__(self, prefill, decode):
        self.prefill.append(list(prefill))
        return step_time(prefill, decode)


@pytest.mark.parametrize("policy", ["chunked", "prefill_first", "orca"])
def test_prefix_caching_skips_exactly_the_cached_blocks(policy):
    """A: prompt 600 with a 512-token shared prefix (32 blocks of 16), B the same prefix after A
    finished, C another prefix: B computes 600 - 512 = 88 tokens on top of 512 cached ones; C and,
    without prefix caching, B compute all 600."""
    trace = [Request(0, 0.0, 600, 4, "sys", 512), Request(1, 10.0, 600, 4, "sys", 512),
             Request(2, 20.0, 600, 4, "other", 512)]
    for caching, want in ((True, [(600, 0), (88, 512), (600, 0)]), (False, [(600, 0), (600, 0), (600, 0)])):
        rec = _Recorder()
        res = simulate(trace, rec, SchedulerConfig(num_blocks=1000, policy=policy, prefix_caching=caching))
        assert [p[0] for p in rec.prefill if p] == want
        assert res.cached_tokens_hit == (512 if caching else 0)
        assert res.requests[1].ttft_s == pytest.approx(step_time([want[1]], []), rel=1e-12)


def test_prefix_cache_accounting_under_overload():
    """Many requests over 3 shared prefixes, a cache too small for all of them: eviction and
    preemption happen, every request finishes, blocks stay within capacity and the accounting
    (free + held by sequences + cached = capacity) holds at the end (simulate checks it)."""
    rng = np.random.default_rng(5)
    tr = [Request(i, i * 0.002, int(rng.integers(300, 1200)), int(rng.integers(20, 200)), f"p{i % 3}", 256)
          for i in range(400)]
    res = simulate(tr, step_time, SchedulerConfig(num_blocks=700, prefix_caching=True))
    assert all(r.finish_s is not None for r in res.requests)
    assert max(res.peak_blocks) <= 700 and res.preemptions > 0 and res.cached_tokens_hit > 0


@pytest.mark.parametrize("policy,blocks,caching", [("chunked", 800, False), ("prefill_first", 20_000, False),
                                                   ("orca", 3000, False), ("chunked", 700, True)])
def test_fast_forward_equals_stepping_one_by_one(policy, blocks, caching):
    """Runs of decode-only steps as one event give exactly the per-step results (token times,
    finishes, preemptions, peaks), also when the model has no decode_run (per-step calls)."""
    rng = np.random.default_rng(11)
    tr = [Request(i, float(t), int(rng.integers(50, 1500)), int(rng.integers(1, 300)), f"p{i % 4}", 128)
          for i, t in enumerate(np.cumsum(rng.exponential(0.01, 300)))]
    cfg = SchedulerConfig(num_blocks=blocks, policy=policy, prefix_caching=caching)

    def plain(prefill, decode):
        return step_time(prefill, decode)

    runs = [simulate(tr, step_time, cfg, fast_forward=False), simulate(tr, step_time, cfg),
            simulate(tr, plain, cfg)]
    key = [[(r.token_s, r.finish_s, r.preemptions) for r in res.requests] for res in runs]
    assert key[0] == key[1] == key[2]
    assert runs[0].steps == runs[1].steps and runs[0].peak_blocks == runs[1].peak_blocks
    assert runs[0].preemptions == runs[1].preemptions and runs[0].peak_running == runs[1].peak_running
