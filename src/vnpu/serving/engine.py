"""The discrete-event serving loop: requests arrive from a trace, a router sends each to one of R
replicas, and each replica's scheduler (serving/scheduler.py) runs steps back to back, each
taking the time a step-time model gives for its batch.

`step_time(prefill, decode) -> seconds`: `prefill` lists (new tokens, tokens already cached) per
prompt chunk, `decode` the KV length of each decoding sequence. The chip-derived model is the
runtime's job; anything with that signature (an analytic model in the tests) drives the loop.

Fast-forward: between events, a replica whose step is decode only (nothing waiting) repeats the
same batch, each sequence one token longer, until the next arrival, the first sequence to finish,
or the KV blocks the run would need; such a run is one event. A model with
`decode_run(kv_lengths, steps) -> durations` gives the run's step times at once (they must equal
its per-step answers); the results equal stepping one by one exactly (tests/test_serving_engine.py).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from vnpu.serving.scheduler import Scheduler, SchedulerConfig, SchedulerError, Sequence
from vnpu.serving.trace import Request

StepTime = Callable[[list[tuple[int, int]], list[int]], float]
ROUTERS = ("round_robin", "least_outstanding")


@dataclass
class RequestResult:
    id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    replica: int = -1
    first_token_s: float | None = None
    finish_s: float | None = None
    token_s: list[float] = field(default_factory=list)
    preemptions: int = 0
    rejected: str = ""  # why it was not served ("" when served)

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s  # type: ignore[operator]

    @property
    def e2e_s(self) -> float:
        return self.finish_s - self.arrival_s  # type: ignore[operator]

    @property
    def tpot_s(self) -> float:
        """Mean time per output token after the first (0 for a one-token output)."""
        n = len(self.token_s)
        return (self.token_s[-1] - self.token_s[0]) / (n - 1) if n > 1 else 0.0


@dataclass
class ServeResult:
    requests: list[RequestResult]
    steps: int
    end_s: float
    peak_blocks: list[int]  # per replica
    num_blocks: int
    preemptions: int
    in_system: list[tuple[float, int]]  # (time, requests in the system from then on): arrivals and finishes
    peak_running: list[int]  # per replica: the most sequences admitted at once
    cached_tokens_hit: int = 0  # prompt tokens served from the prefix cache (not computed)

    @property
    def served(self) -> list[RequestResult]:
        return [r for r in self.requests if not r.rejected]

    def itl_s(self) -> np.ndarray:
        """Every inter-token latency of every served request."""
        gaps = [np.diff(r.token_s) for r in self.served if len(r.token_s) > 1]
        return np.concatenate(gaps) if gaps else np.zeros(0)

    def output_tokens_per_s(self) -> float:
        t0 = min((r.arrival_s for r in self.served), default=0.0)
        return sum(len(r.token_s) for r in self.served) / max(self.end_s - t0, 1e-12)

    def mean_in_system(self, t0: float, t1: float, samples: int = 100_000) -> float:
        """Time-average number of requests in the system over [t0, t1], sampled on a regular grid."""
        times = np.array([t for t, _ in self.in_system])
        counts = np.array([n for _, n in self.in_system])
        grid = np.linspace(t0, t1, samples, endpoint=False)
        idx = np.searchsorted(times, grid, side="right") - 1
        return float(np.where(idx >= 0, counts[np.maximum(idx, 0)], 0).mean())


MAX_RUN = 4096  # decode steps one fast-forward event covers at most


def _decode_run_durations(step_time: StepTime, kv: np.ndarray, steps: int) -> np.ndarray:
    run = getattr(step_time, "decode_run", None)
    if run is not None:
        return np.asarray(run(kv, steps), np.float64)
    base = kv.tolist()
    return np.array([float(step_time([], [x + i for x in base])) for i in range(steps)])


def _run_length(sch: Scheduler, seqs: list[Sequence], kv: np.ndarray, limit: int) -> int:
    """The most decode steps (<= limit) whose new KV blocks the free pool (and evictable prefix
    blocks) can give every sequence."""
    bs = sch.cfg.block_size
    held = np.array([q.shared + max(q.blocks, q.reserved) for q in seqs])
    avail = sch.free_blocks + len(sch.evictable)

    def need(m: int) -> int:
        return int(np.maximum(-(-(kv + m) // bs) - held, 0).sum())

    lo, hi = 1, limit
    if need(hi) <= avail:
        return hi
    while lo < hi:  # need(lo) <= avail < need(hi + 1)
        mid = (lo + hi + 1) // 2
        if need(mid) <= avail:
            lo = mid
        else:
            hi = mid - 1
    return lo


def simulate(trace: list[Request], step_time: StepTime, config: SchedulerConfig, replicas: int = 1,
             router: str = "round_robin", fast_forward: bool = True) -> ServeResult:
    """Serves `trace` on `replicas` identical replicas; deterministic for a given trace.
    `fast_forward=False` steps one by one (same results, slower)."""
    if router not in ROUTERS:
        raise SchedulerError(f"unknown router {router!r}: use one of {', '.join(ROUTERS)}")
    if replicas < 1:
        raise SchedulerError(f"replicas must be >= 1, got {replicas}")
    if [r.id for r in trace] != list(range(len(trace))):
        trace = [Request(i, r.arrival_s, r.prompt_tokens, r.output_tokens, r.prefix_id, r.prefix_tokens)
                 for i, r in enumerate(sorted(trace, key=lambda r: r.arrival_s))]
    scheds = [Scheduler(config) for _ in range(replicas)]
    busy = [False] * replicas
    plans: list = [None] * replicas
    results = [RequestResult(r.id, r.arrival_s, r.prompt_tokens, r.output_tokens) for r in trace]
    events: list = [(r.arrival_s, 0, i, -1) for i, r in enumerate(trace)]  # (time, kind 0 arrival / 1 step end, ...)
    heapq.heapify(events)
    order = len(events)
    in_sys, n_sys, steps, rr = [], 0, 0, 0
    now = 0.0

    next_arrival = [0]  # index into trace of the next arrival not yet handled

    def start(k: int) -> None:
        nonlocal order, steps
        sch = scheds[k]
        plan = sch.schedule()
        if plan is None:
            busy[k] = False
            return
        dur = float(step_time(plan.prefill, plan.decode))
        if not dur > 0:
            raise SchedulerError(f"the step-time model gave {dur} s for a step of {plan.tokens} tokens")
        busy[k], plans[k] = True, plan
        steps += 1
        end = now + dur
        if fast_forward and not sch.waiting and not plan.prefill and len(plan.items) == len(sch.running):
            seqs = [it[0] for it in plan.items]
            left = min(q.req.output_tokens - q.generated for q in seqs)  # this step included
            t_next = trace[next_arrival[0]].arrival_s if next_arrival[0] < len(trace) else float("inf")
            if left > 1 and end < t_next:
                kv = np.array([q.computed + 1 for q in seqs], np.int64)  # after this step
                extra = _run_length(sch, seqs, kv, min(left - 1, MAX_RUN))
                durs = _decode_run_durations(step_time, kv, extra)
                if not (durs > 0).all():
                    raise SchedulerError("the step-time model gave a non-positive decode step time")
                ends = np.empty(extra + 1)
                ends[0], ends[1:] = end, durs
                ends = np.cumsum(ends)  # sequential sums, as stepping one by one adds them
                cut = int(np.searchsorted(ends, t_next, side="left"))  # steps ending before the arrival, + the one spanning it
                extra = min(extra, cut)
                if extra > 0:
                    ends = ends[:extra + 1]
                    # blocks for the whole run now (the run was sized to fit them)
                    held = np.array([q.shared + max(q.blocks, q.reserved) for q in seqs])
                    need = np.maximum(-(-(kv + extra) // config.block_size) - held, 0)
                    ok = sch._take(int(need.sum()))
                    assert ok
                    for q, n_new in zip(seqs, need.tolist()):
                        if n_new:
                            if q.reserved:  # orca's reservation covers its whole length
                                raise AssertionError("a reserved sequence needed blocks")
                            q.blocks += n_new
                    plans[k] = ("run", plan, ends)
                    steps += extra
                    end = float(ends[-1])
        heapq.heappush(events, (end, 1, order, k))
        order += 1

    while events:
        now, kind, a, b = heapq.heappop(events)
        if kind == 0:  # arrival of request a
            next_arrival[0] = a + 1
            req = trace[a]
            res = results[a]
            if router == "round_robin":
                k = rr % replicas
                rr += 1
            else:
                k = min(range(replicas), key=lambda i: (len(scheds[i].waiting) + len(scheds[i].running), i))
            res.replica = k
            why = scheds[k].rejection(req)
            if why:
                res.rejected = why
                continue
            scheds[k].add(Sequence(req))
            n_sys += 1
            in_sys.append((now, n_sys))
            if not busy[k]:
                start(k)
        else:  # replica b finished its step (or its fast-forwarded run of decode steps)
            plan = plans[b]
            finished = []
            if isinstance(plan, tuple):  # every member decoded len(ends) tokens, one per step
                _, first, ends = plan
                m = len(ends)
                times = ends.tolist()
                for seq, _, _, _ in first.items:
                    seq.computed += m
                    seq.generated += m
                    seq.token_s.extend(times)
                    if seq.generated >= seq.req.output_tokens:
                        seq.finish_s = now
                        finished.append(seq)
                for seq in finished:
                    scheds[b].running.remove(seq)
                    scheds[b]._release(seq)
            else:
                finished = scheds[b].complete(plan, now)
            for seq in finished:
                r = results[seq.req.id]
                r.first_token_s, r.finish_s, r.token_s, r.preemptions = (seq.first_token_s, seq.finish_s,
                                                                        seq.token_s, seq.preemptions)
                n_sys -= 1
                in_sys.append((now, n_sys))
            start(b)
    for s in scheds:
        if s.busy:
            raise SchedulerError("requests are left that no step can schedule (the KV cache cannot admit them)")
        if s.free_blocks + s.held_blocks() != config.num_blocks:  # the block accounting's invariant
            raise SchedulerError(f"KV block accounting broke: {s.free_blocks} free + {s.held_blocks()} held "
                                 f"!= {config.num_blocks}")
    return ServeResult(results, steps, now, [s.peak_blocks for s in scheds], config.num_blocks,
                       sum(s.preemptions for s in scheds), in_sys, [s.peak_running for s in scheds],
                       sum(s.cached_tokens_hit for s in scheds))
