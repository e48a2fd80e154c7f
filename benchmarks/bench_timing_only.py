"""Timing-only simulation speed: resnet50 and bert-base (sequence 512) on vnpu-v1.

    python benchmarks/bench_timing_only.py [--chip vnpu-v1] [--repeat 3]

For each model, in one process: compile once, then time (best of --repeat, fresh Device each)
- timing-only with the steady-state shortcut: launches with equal timing keys (identical
  layers) are simulated once (sim/device.py, compiler/lower.kernel_timing_key);
- the full event simulation of every launch (the shortcut off), as the reference;
and print both wall times, their ratio, and that both give the same cycles. Goal: < 1 s each.
"""
from __future__ import annotations

import argparse
import time
import warnings

import vnpu
from vnpu.sim.device import Device
from vnpu.workloads.zoo import build_bert_base, get_workload


def _best(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chip", default="vnpu-v1")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    models = {"resnet50": lambda: get_workload("resnet50").build(1), "bert-base (seq 512)": lambda: build_bert_base(1, 512)}
    print("| model | launches | distinct timing keys | instructions | timing-only s | full event sim s | speed-up | "
          "same cycles | simulated latency |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, build in models.items():
        model, inputs = build()
        cm = vnpu.compile(model, inputs, chip=args.chip)
        prog = cm.program
        fast_s, fast = _best(lambda: Device(cm.chip, prog.hbm_bytes, functional=False).run(prog), args.repeat)
        # the same event loop with the shortcut off: clear each launch's key on a shallow copy
        from dataclasses import replace

        plain = replace(prog, launches=[replace(l, timing_key=None) if hasattr(l, "timing_key") else l
                                        for l in prog.launches])
        full_s, full = _best(lambda: Device(cm.chip, prog.hbm_bytes, functional=False).run(plain), args.repeat)
        keys = {l.timing_key for l in prog.launches if getattr(l, "timing_key", None)}
        n_ins = sum(len(cs) for l in prog.launches if hasattr(l, "cores") for cs in l.cores)
        same = abs(fast.cycles - full.cycles) <= 1e-6 * full.cycles
        print(f"| {name} | {len(prog.launches)} | {len(keys)} | {n_ins:,} | {fast_s:.3f} | {full_s:.3f} | "
              f"{full_s / fast_s:.1f}x | {'yes' if same else 'NO'} | {fast.seconds * 1e6:.1f} us |", flush=True)


if __name__ == "__main__":
    main()
