"""LLM decode and serving on vnpu: one decode step of Qwen3-8B vs the HBM-bandwidth bound,
plus whole generations (timing-only, meta-device weights, layers extrapolated).

    python benchmarks/bench_llm_decode.py                       # Qwen3-8B, batch 1, context 2048
    python benchmarks/bench_llm_decode.py --context 512 --batch 4
    python benchmarks/bench_llm_decode.py --generate qwen3-32b --prompt-len 2048 --max-new-tokens 128
    python benchmarks/bench_llm_decode.py --quant none w8a8-fp8 w8a8-int8   # each scheme against its own bytes
    python benchmarks/bench_llm_decode.py --quant w8a8-fp8 --kv-cache fp8 --context 32768   # fp8 KV cache

Decode step: compiles the decode program of a 2-layer Qwen3-8B (weights on the `meta` device:
shapes only) for the KV bucket of position CONTEXT, simulates it once (timing only) and
extrapolates to 36 layers (T2 + 34 x the second layer's kernels). Prints the step time and its fraction
of the bandwidth bound, in two forms:
  issue bound:  (all weights + the KV bytes the step's program reads) / HBM bandwidth
  strict bound: (weights a decode step must read -- all but the embedding table -- + the KV
                 bytes of the CONTEXT tokens only) / HBM bandwidth
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from vnpu.chip import load_chip
from vnpu.compiler.kv_cache import kv_cache_format
from vnpu.compiler.quantize import QuantPlan, get_scheme
from vnpu.dtypes import DType
from vnpu.runtime.llm import LLMSession, decode_bucket, extrapolate_layers, generate, kv_bytes, model_memory
from vnpu.workloads.llm_zoo import DecoderStep, build_llm, get_llm


def decode_step(model: str, chip_name: str, dtype: DType, batch: int, context: int, quant: str | None = None,
                kv_cache: str | None = None) -> None:
    spec = get_llm(model)
    kv_fmt = kv_cache_format(kv_cache)
    chip = load_chip(chip_name)
    cap = 1 << (context + 1).bit_length()
    plan = QuantPlan(get_scheme(quant)) if quant else None
    t0 = time.perf_counter()
    step = DecoderStep(build_llm(spec, device="meta", num_layers=2), batch, cap)
    sess = LLMSession(step, chip, dtype, batch, f"{model}_2layers", functional=False, quant=plan, kv_cache=kv_fmt)
    prog = sess.decode_program(context)
    prof = sess.run(prog, np.zeros((batch, 1), np.int64), np.array([context]))[2]
    cost = extrapolate_layers(prof, prog, chip, spec.num_layers)
    wall = time.perf_counter() - t0
    w_bytes, _ = model_memory(spec, batch, cap, dtype, plan.scheme if plan else None, kv_fmt)
    c = spec.config
    embed = c["vocab_size"] * c["hidden_size"] * dtype.itemsize
    bucket = decode_bucket(context, cap)
    bw = chip.hbm.bandwidth_gbs * 1e9
    issue = (w_bytes + kv_bytes(spec, batch, bucket, dtype, kv_fmt)) / bw
    strict = (w_bytes - (0 if c.get("tie_word_embeddings") else embed) + kv_bytes(spec, batch, context + 1, dtype, kv_fmt)) / bw
    print(f"{model} decode step on {chip.name}: batch {batch}, context {context} (KV bucket {bucket}), {dtype.value}"
          + (f", {quant} (bounds on its own weight bytes: {w_bytes / 1e9:.2f} GB)" if quant else "")
          + (f", KV cache {kv_fmt.value}" if kv_fmt else ""))
    print(f"  step time            {cost.seconds * 1e3:8.3f} ms   ({batch / cost.seconds:,.1f} tokens/s)")
    print(f"  HBM traffic          {cost.hbm_bytes / 1e9:8.3f} GB  -> {cost.hbm_bytes / cost.seconds / bw:6.1%} of peak bandwidth")
    print(f"  issue bound          {issue * 1e3:8.3f} ms   -> step at {issue / cost.seconds:6.1%} of it   (goal >= 85%)")
    print(f"  strict bound         {strict * 1e3:8.3f} ms   -> step at {strict / cost.seconds:6.1%} of it")
    print(f"  energy               {cost.energy_j:8.3f} J per step")
    print(f"  wall: export, compile and simulate the 2-layer program: {wall:.1f} s")


def whole(model: str, chip: str, dtype: DType, batch: int, prompt_len: int, new: int) -> None:
    t0 = time.perf_counter()
    r = generate(model, prompt_len, new, batch, chip, dtype, timing_only=True)
    wall = time.perf_counter() - t0
    print(f"{model} on {r.chip}: prompt {prompt_len} + {new} new tokens, batch {batch}, {r.dtype}, {r.mode}")
    print(f"  TTFT {r.ttft_s * 1e3:.2f} ms · TPOT {r.tpot_s * 1e3:.3f} ms · {r.tokens_per_s:,.1f} tokens/s overall · "
          f"{r.decode_tokens_per_s:,.1f} in decode")
    print(f"  decode HBM utilization {r.decode_hbm_utilization:.1%} · at {r.decode_bandwidth_bound_fraction:.1%} of the "
          f"weights+KV bound · energy {r.energy_per_token_j:.3f} J/token · programs {r.programs}")
    print(f"  weights {r.weight_bytes / 2**30:.2f} GiB · KV cache {r.kv_cache_bytes / 2**30:.2f} GiB")
    print(f"  wall: {wall:.1f} s (export {r.wall_s.get('export_s', 0):.1f} s, compile {r.wall_s.get('compile_s', 0):.1f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen3-8b")
    ap.add_argument("--chip", default="vnpu-v1")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--context", type=int, default=2048, help="tokens already in the KV cache")
    ap.add_argument("--generate", metavar="MODEL", help="also time a whole generation of MODEL")
    ap.add_argument("--prompt-len", type=int, default=2048)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--quant", nargs="+", default=["none"], help="schemes to time, 'none' = unquantized")
    ap.add_argument("--kv-cache", default=None, help="KV-cache format: fp8 (default: the program's dtype)")
    a = ap.parse_args()
    dt = DType(a.dtype)
    for q in a.quant:
        decode_step(a.model, a.chip, dt, a.batch, a.context, None if q == "none" else q, a.kv_cache)
    if a.generate:
        whole(a.generate, a.chip, dt, a.batch, a.prompt_len, a.max_new_tokens)


if __name__ == "__main__":
    main()
