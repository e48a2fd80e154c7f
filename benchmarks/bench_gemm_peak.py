"""GEMM peak: a 4096^3 matmul on vnpu-v1, timing-only simulation, per operand format.

Prints the simulated throughput (TFLOPS, or TOPS for int8) and its fraction of the chip's peak in
that format (goal: bf16 >= 85%, fp8 and int8 >= 90% of their own peaks, which are twice bf16's on
vnpu-v1), plus how long the compiler and the timing simulation took on this machine. int8 / fp8
operands run in a bf16 program (the format is the operands', the program's precision is for the
rest); int8 accumulates in int32, fp8 in fp32, and the output is the accumulator's dtype.
mxfp8 / mxfp4 are the OCP MX block-scaled GEMMs (e4m3 / packed e2m1 operands, an E8M0 scale per
32 of K on each, fp32 result), at the fp8 / fp4 rates the chip lists as block-scaled.

    python benchmarks/bench_gemm_peak.py [--size 4096] [--chip vnpu-v1] [--dtype bf16 fp8_e4m3 int8 mxfp8 mxfp4]
"""
from __future__ import annotations

import argparse
import time

import vnpu
from vnpu.chip import load_chip
from vnpu.dtypes import PACKED_ELEMENTS, DType
from vnpu.ir.graph import Graph, TensorType


MX = {"mxfp8": DType.fp8_e4m3, "mxfp4": DType.fp4x2_e2m1}


def gemm_graph(m: int, k: int, n: int, dt: DType) -> Graph:
    g = Graph(f"gemm{m}x{k}x{n}")
    a = g.add_input("a", TensorType((m, k), dt))
    b = g.add_input("b", TensorType((k, n), dt))
    g.outputs = [g.add_node("matmul", [a, b]).output]
    return g


def mx_gemm_graph(m: int, k: int, n: int, fmt: DType, block: int = 32) -> Graph:
    g = Graph(f"mxgemm{m}x{k}x{n}")
    pack = PACKED_ELEMENTS.get(fmt, 1)
    a = g.add_input("a", TensorType((m, k // pack), fmt))
    b = g.add_input("b", TensorType((k // pack, n), fmt))
    sa = g.add_input("sa", TensorType((m, k // block), DType.e8m0))
    sb = g.add_input("sb", TensorType((k // block, n), DType.e8m0))
    g.outputs = [g.add_node("matmul", [a, b, sa, sb], {"mx_block": block}).output]
    return g


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--chip", default="vnpu-v1")
    ap.add_argument("--dtype", nargs="+", default=["bf16", "fp8_e4m3", "int8", "mxfp8", "mxfp4"])
    args = ap.parse_args()
    chip = load_chip(args.chip)
    bf16_tflops = None
    for name in args.dtype:
        tflops = run_one(chip, name, args.size)
        if name == "bf16":
            bf16_tflops = tflops
        elif bf16_tflops:
            print(f"  {name} / bf16 throughput    {tflops / bf16_tflops:9.2f}x")


def run_one(chip, name: str, s: int) -> float:
    dt = MX.get(name) or DType(name)
    program_dt = dt if dt in (DType.fp32, DType.bf16, DType.fp16) else DType.bf16
    t0 = time.perf_counter()
    g = mx_gemm_graph(s, s, s, dt) if name in MX else gemm_graph(s, s, s, dt)
    cm = vnpu.compile_ir(g, chip, program_dt)
    t1 = time.perf_counter()
    prof = cm.profile()  # timing-only: no tensor data is touched
    t2 = time.perf_counter()

    flops = 2 * s**3
    kern = prof.kernels[0]
    kernel_s = kern.cycles / chip.clock_hz
    peak = chip.peak_flops(dt)
    tflops_e2e = flops / prof.seconds / 1e12
    tflops_kernel = flops / kernel_s / 1e12
    print(f"GEMM {s}x{s}x{s} {name} on {chip.name} ({chip.cores} cores, "
          f"{chip.core.matrix.rows}x{chip.core.matrix.cols} {chip.core.matrix.dataflow.upper()}, {chip.clock_ghz} GHz)")
    print(f"  peak                      {peak / 1e12:9.1f} TFLOPS")
    print(f"  simulated latency         {prof.seconds * 1e6:9.1f} us  (kernel {kernel_s * 1e6:.1f} us + launch overhead)")
    print(f"  simulated throughput      {tflops_e2e:9.1f} TFLOPS = {100 * tflops_e2e * 1e12 / peak:.1f}% of peak "
          f"(kernel only: {tflops_kernel:.1f} TFLOPS = {100 * tflops_kernel * 1e12 / peak:.1f}%)  "
          f"[goal >= {85 if dt == DType.bf16 else 90}%]")
    print(f"  bound                     {kern.bound}; roofline fraction {kern.roofline_fraction:.3f}")
    print(f"  instructions              {prof.instructions}")
    print(f"  compile wall time         {t1 - t0:9.3f} s")
    print(f"  timing-sim wall time      {t2 - t1:9.3f} s")
    return tflops_kernel


if __name__ == "__main__":
    main()
