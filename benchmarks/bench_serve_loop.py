"""Wall-clock rate of vnpu's serving event loop (vnpu.serving.engine.simulate): simulated requests per
second of wall, with a trivial analytic step-time model so that only the loop and the scheduler are
timed (the issue's goal: >= 10,000 requests/s on this machine).

    python benchmarks/bench_serve_loop.py [--requests N] [--rate R] [--policy chunked|prefill_first|orca]
"""
from __future__ import annotations

import argparse
import time

from vnpu.serving.engine import simulate
from vnpu.serving.scheduler import POLICIES, SchedulerConfig
from vnpu.serving.trace import synthetic_trace


def step_time(prefill, decode):
    return 1e-3 + 2e-6 * sum(n for n, _ in prefill) + 1e-4 * len(decode)


def _decode_run(kv, steps):  # `steps` decode steps of len(kv) sequences at once (same values as step_time)
    import numpy as np

    return np.full(steps, 1e-3 + 2e-6 * 0 + 1e-4 * len(kv))


step_time.decode_run = _decode_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--policy", default="chunked", choices=list(POLICIES))
    a = ap.parse_args()
    tr = synthetic_trace(a.rate, a.requests, "lognormal:mean=1155,sigma=0.985,max=8192",
                         "lognormal:mean=211,sigma=0.859,max=1000", seed=0)
    t0 = time.perf_counter()
    res = simulate(tr, step_time, SchedulerConfig(num_blocks=40_000, policy=a.policy))
    wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    simulate(tr[:a.requests // 10], step_time, SchedulerConfig(num_blocks=40_000, policy=a.policy), fast_forward=False)
    slow = (time.perf_counter() - t1) * 10
    print(f"{a.requests} requests at {a.rate}/s ({a.policy}): {res.steps} steps, {res.end_s:.1f} s simulated, "
          f"{wall:.2f} s of wall -> {a.requests / wall:,.0f} requests/s, {res.steps / wall:,.0f} steps/s "
          f"(goal >= 10,000 requests/s); stepping one by one (a tenth of the trace): "
          f"{a.requests / slow:,.0f} requests/s -> fast-forward {slow / wall:.1f}x")


if __name__ == "__main__":
    main()
