"""The `h200` profile's predictions against a real NVIDIA H200, workload by workload.

    python benchmarks/bench_gpu_calibration.py [--measured benchmarks/results/h200_measured.json]

The measurements come from benchmarks/gpu/measure_h200.py, run on an H200 (see its docstring):
per workload the GPU's kernel time (sum of kernel durations, no launch gaps) and, where the
call could be captured, a CUDA-graph replay (launch gaps of a graph). This script compiles the
same workloads for the `h200` preset, simulates them in timing-only mode, and prints vnpu's
latency, the kernel-only part of it (launch gaps removed), and the error of the kernel-only
prediction against the measured kernel time. No GPU is needed here.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import vnpu
from bench_gemm_peak import gemm_graph
from vnpu.dtypes import DType

HERE = Path(__file__).resolve().parent


def _gemm_model(s: int):
    return vnpu.compile_ir(gemm_graph(s, s, s, DType.bf16), "h200", "bf16")


def _zoo_model(name: str, batch: int, seq: int | None):
    from vnpu.workloads.zoo import build_bert_base, get_workload

    model, inputs = build_bert_base(batch, seq) if name == "bert-base" else get_workload(name).build(batch)
    return vnpu.compile(model, inputs, chip="h200", dtype="bf16")


def _predict(cm) -> tuple[float, float, int]:
    """(latency ms, kernel-only ms, launches)."""
    p = cm.profile()
    kernel_cycles = sum(k.cycles for k in p.kernels)
    return p.seconds * 1e3, kernel_cycles / p.clock_hz * 1e3, len(p.kernels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measured", type=Path, default=HERE / "results" / "h200_measured.json")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    meas = json.loads(args.measured.read_text())
    print(f"measured on: {meas['info'].get('name')} ({meas['info'].get('nvidia_smi', '')}), torch {meas['info']['torch']}")
    print(f"copy bandwidth measured: {meas['copy']['tb_per_s_read_plus_write']:.2f} TB/s (read + write); "
          f"h200 profile: {vnpu.load_chip('h200').hbm.bandwidth_gbs / 1e3:.2f} TB/s\n")
    rows = []
    for g in meas["gemm"]:
        t0 = time.perf_counter()
        lat, kern, n = _predict(_gemm_model(g["m"]))
        rows.append((f"GEMM {g['m']}^3 bf16", g["ms"], None, lat, kern, time.perf_counter() - t0))
    for z in meas["zoo"]:
        t0 = time.perf_counter()
        lat, kern, n = _predict(_zoo_model(z["model"], z["batch"], z["seq_len"]))
        label = f"{z['model']} b{z['batch']}" + (f" seq{z['seq_len']}" if z["seq_len"] else "") + " bf16"
        rows.append((label, z["kernel_ms"], z["graph_ms"], lat, kern, time.perf_counter() - t0))
    print("| workload | H200 kernels ms | H200 CUDA graph ms | vnpu h200 latency ms | vnpu kernels ms | "
          "kernels: vnpu / H200 | vnpu wall s |")
    print("|---|---|---|---|---|---|---|")
    for label, mk, mg, lat, kern, wall in rows:
        print(f"| {label} | {mk:.3f} | {'-' if mg is None else f'{mg:.3f}'} | {lat:.3f} | {kern:.3f} | "
              f"{kern / mk:.2f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
