"""The serving step-time model (vnpu.serving.step_model) against direct chip simulation on step
shapes it was not fitted on: prefill lengths, decode batches x KV lengths, and chunked prefills
off its grid. Prints each shape's predicted and simulated step time, their ratio, the error
distribution, and the fit's cold and cached wall time.

    python benchmarks/bench_step_model.py [--model qwen3-8b] [--chip vnpu-v1] [--dtype bf16]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from vnpu.chip import load_chip
from vnpu.dtypes import DType
from vnpu.runtime.llm import LLMSession, extrapolate_layers
from vnpu.serving.step_model import fit_step_model
from vnpu.workloads.llm_zoo import DecoderStep, build_llm, get_llm

HELD_OUT_PREFILL = (32, 128, 512, 2048)
HELD_OUT_DECODE = ((4, 1024), (16, 4096), (64, 1024), (2, 6144))
HELD_OUT_CHUNK = ((256, 1024), (128, 3072))


def direct(model: str, chip, dtype: str):
    """Simulated L-layer step times of the held-out shapes: {shape: seconds}."""
    spec = get_llm(model)
    meta = build_llm(spec, device="meta", num_layers=2)
    out = {}
    s1 = LLMSession(DecoderStep(meta, 1, 4096), chip, DType(dtype), 1, "held_b1", functional=False)

    def cost(sess, prog, b, s_len, pos):
        prof = sess.run(prog, np.zeros((b, s_len), np.int64), pos)[2]
        return extrapolate_layers(prof, prog, chip, spec.num_layers).seconds

    for s in HELD_OUT_PREFILL:
        out[("prefill", s, 0)] = cost(s1, s1.program("prefill", s, s), 1, s, np.arange(s))
    for n, p in HELD_OUT_CHUNK:
        out[("chunk", n, p)] = cost(s1, s1.program("chunk", n, n + p), 1, n, np.arange(p, p + n))
    for b, length in HELD_OUT_DECODE:
        sb = LLMSession(DecoderStep(meta, b, 8192), chip, DType(dtype), b, f"held_b{b}", functional=False)
        out[("decode", b, length)] = cost(sb, sb.decode_program(length - 1), b, 1, np.array([length - 1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen3-8b")
    ap.add_argument("--chip", default="vnpu-v1")
    ap.add_argument("--dtype", default="bf16")
    a = ap.parse_args()
    chip = load_chip(a.chip)
    t0 = time.perf_counter()
    sm = fit_step_model(a.model, chip, a.dtype, use_cache=False)
    cold = time.perf_counter() - t0
    fit_step_model(a.model, chip, a.dtype)  # writes the cache
    t1 = time.perf_counter()
    fit_step_model(a.model, chip, a.dtype)
    warm = time.perf_counter() - t1
    from vnpu.runtime.llm import decode_bucket

    errs = []
    print(f"{a.model} on {chip.name} ({a.dtype}): step model fitted in {cold:.1f} s cold, {warm:.3f} s from the cache")
    print(f"{'shape':28s} {'predicted':>12s} {'simulated':>12s} {'ratio':>7s}")
    for (kind, x, y), sim in direct(a.model, chip, a.dtype).items():
        if kind == "prefill":
            pred = sm([(x, 0)], [])
        elif kind == "chunk":
            pred = sm([(x, y)], [])
        else:  # the decode program reads its KV bucket's slots
            pred = sm([], [decode_bucket(y - 1, 8192)] * x)
        errs.append(pred / sim - 1)
        print(f"{kind + ' ' + str((x, y)):28s} {pred * 1e3:10.4f}ms {sim * 1e3:10.4f}ms {pred / sim:7.4f}")
    e = np.abs(errs)
    print(f"|error|: mean {e.mean():.2%}, median {np.median(e):.2%}, max {e.max():.2%} over {len(e)} held-out shapes "
          f"(goal: within 2%)")


if __name__ == "__main__":
    main()
