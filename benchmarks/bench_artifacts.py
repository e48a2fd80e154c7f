"""Artifact size, save and load time: the data-only `.vnpu` format (v3) against the pickle
format it replaced (v2: one pickle of the same Program and ModelInfo in the zip), measured side
by side in the same run on the same compiled programs. Every loaded program is checked to run
bit-identically (outputs and cycles) before its figures are printed.

    python benchmarks/bench_artifacts.py [--models mlp,resnet50,...] [--dtypes fp32,bf16] [--repeat 3]
"""
from __future__ import annotations

import argparse
import io
import pickle
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np

import vnpu
from vnpu.chip import load_chip
from vnpu.dtypes import DType, torch_to_numpy
from vnpu.runtime.artifact import load_program, save_program

ZOO = ["mlp", "resnet50", "mobilenet-v2", "vit-base", "bert-base", "minilm"]


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _pickle_zip(obj: dict, path: Path) -> None:
    """The v2 layout: a pickle of the program and info, stored in a zip (the reference)."""
    blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("program.pkl", blob)


def _pickle_unzip(path: Path) -> dict:
    with zipfile.ZipFile(path) as z:
        return pickle.loads(z.read("program.pkl"))  # noqa: S301 - our own file, the reference only


def bench_model(name: str, dtype: str, repeat: int, tmp: Path) -> tuple:
    from vnpu.workloads.zoo import get_workload

    model, inputs = get_workload(name).build(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = vnpu.compile(model, inputs, dtype=dtype, name=name)
    xs = [torch_to_numpy(x) for x in inputs]
    new, old = tmp / f"{name}-{dtype}.vnpu", tmp / f"{name}-{dtype}.pkl.zip"
    save_new = _best(lambda: cm.save(new), repeat)
    save_old = _best(lambda: _pickle_zip({"program": cm.program, "info": cm.info}, old), repeat)
    load_new = _best(lambda: vnpu.load(str(new)), repeat)
    load_old = _best(lambda: _pickle_unzip(old), repeat)
    ref = cm.run_numpy(xs)
    loaded = vnpu.load(str(new))
    outs = loaded.run_numpy(xs)
    same = all(np.array_equal(a.view(np.uint8), b.view(np.uint8)) for a, b in zip(ref, outs)) and \
        loaded.last_profile.cycles == cm.last_profile.cycles
    return (f"{name} {dtype}", cm.program.instruction_count(), new.stat().st_size, old.stat().st_size,
            save_new, save_old, load_new, load_old, same)


def bench_llm(repeat: int, tmp: Path) -> tuple:
    """qwen3-tiny's prefill and decode programs (one session, functional)."""
    from vnpu.runtime.llm import LLMSession
    from vnpu.workloads.llm_zoo import DecoderStep, build_llm, get_llm, prompt_ids

    spec = get_llm("qwen3-tiny")
    chip = load_chip("vnpu-v1")
    sess = LLMSession(DecoderStep(build_llm(spec), 2, 64), chip, DType.fp32, 2, "qwen3-tiny")
    sess.generate(prompt_ids(spec.config["vocab_size"], 2, 6).numpy(), 8)
    progs = list(sess.programs.values())
    new = [tmp / f"llm{i}.vnpu" for i in range(len(progs))]
    old = [tmp / f"llm{i}.pkl.zip" for i in range(len(progs))]
    save_new = _best(lambda: [save_program(p, g, chip) for p, g in zip(new, progs)], repeat)
    save_old = _best(lambda: [_pickle_zip({"program": g}, p) for p, g in zip(old, progs)], repeat)
    load_new = _best(lambda: [load_program(p, chip) for p in new], repeat)
    load_old = _best(lambda: [_pickle_unzip(p) for p in old], repeat)
    same = all(load_program(p, chip).instruction_count() == g.instruction_count() for p, g in zip(new, progs))
    return (f"qwen3-tiny ({len(progs)} programs)", sum(g.instruction_count() for g in progs),
            sum(p.stat().st_size for p in new), sum(p.stat().st_size for p in old),
            save_new, save_old, load_new, load_old, same)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(ZOO))
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name in args.models.split(","):
            for dt in args.dtypes.split(","):
                rows.append(bench_model(name, dt, args.repeat, tmp))
                print(f"  measured {rows[-1][0]}", file=sys.stderr, flush=True)
        rows.append(bench_llm(args.repeat, tmp))
    print(f"{'model':<28} {'instrs':>8} {'v3 MB':>8} {'v2 MB':>8} {'size':>6} {'save v3':>8} {'save v2':>8} "
          f"{'load v3':>8} {'load v2':>8} {'load':>6}  same")
    for name, n, sz_new, sz_old, sn, so, ln, lo, same in rows:
        print(f"{name:<28} {n:>8,} {sz_new / 1e6:>8.2f} {sz_old / 1e6:>8.2f} {sz_new / sz_old:>5.2f}x "
              f"{sn:>7.3f}s {so:>7.3f}s {ln:>7.3f}s {lo:>7.3f}s {ln / lo:>5.2f}x  {'yes' if same else 'NO'}")
    print("size and load columns: v3 / v2 (the pickle format it replaced), best of", args.repeat)
    return 0 if all(r[-1] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
