"""Accuracy and cost of vnpu's post-training schemes on zoo models, against each model's own fp32
eager output on the same inputs (the report `vnpu run --quant` prints, for several schemes at once).

    python benchmarks/quant_accuracy.py [--models minilm resnet50] [--schemes w8a8-int8 w8a8-fp8 ...]

Per model and scheme: cosine with fp32, max relative error, top-1 agreement (classifiers' logits),
sentence-embedding cosine (MiniLM: mean-pooled, the minimum over the batch), the quantized weights'
bytes against the same weights at the program's dtype, and the simulated latency next to the
unquantized program's. Static schemes calibrate on two other random batches of the same shape.
"""
from __future__ import annotations

import argparse
import time
import warnings

import torch

import vnpu
from vnpu.workloads.zoo import get_workload

DEFAULT_SCHEMES = ["w8a8-int8", "w8a8-fp8", "w8a8-int8-static", "w8a8-int8-smooth", "w8a16", "w4a16", "mxfp8", "mxfp4"]


def _other_batches(inputs: tuple, n: int = 2) -> list[tuple]:
    g = torch.Generator().manual_seed(1234)
    out = []
    for _ in range(n):
        b = []
        for x in inputs:
            if x.dtype.is_floating_point:
                b.append(torch.randn(x.shape, generator=g))
            else:  # token ids: the same range as the zoo's inputs
                b.append(torch.randint(0, int(x.max()) + 1, x.shape, generator=g, dtype=x.dtype))
        out.append(tuple(b))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["minilm", "resnet50"])
    ap.add_argument("--schemes", nargs="+", default=DEFAULT_SCHEMES)
    ap.add_argument("--dtype", default="bf16")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    print(f"| model | scheme | cosine | max rel err | top-1 agree | sentence cos (min) | quantized weights | "
          f"latency (unquantized {args.dtype}) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        model, inputs = get_workload(name).build(2)
        with torch.no_grad():
            ref = model(*inputs).float()
        base = vnpu.compile(model, inputs, dtype=args.dtype).profile().seconds
        calib = _other_batches(inputs)
        for scheme in args.schemes:
            t0 = time.perf_counter()
            cm = vnpu.compile(model, inputs, dtype=args.dtype, quant=scheme, calibration=calib)
            y = cm(*inputs).float()
            lat = cm.profile().seconds
            cos = torch.nn.functional.cosine_similarity(y.flatten(), ref.flatten(), dim=0).item()
            rel = ((y - ref).abs().max() / ref.abs().max()).item()
            top1 = f"{(y.argmax(-1) == ref.argmax(-1)).float().mean().item():.1%}" if y.dim() == 2 else "—"
            sent = "—"
            if y.dim() == 3:
                sent = f"{torch.nn.functional.cosine_similarity(y.mean(1), ref.mean(1), dim=-1).min().item():.5f}"
            before, after = cm.info.quant_bytes or [0, 0]
            wb = f"{after / 2**20:.1f} MiB vs {before / 2**20:.1f} MiB" if before else "—"
            print(f"| {name} | {scheme} | {cos:.5f} | {rel:.3e} | {top1} | {sent} | {wb} | "
                  f"{lat * 1e6:,.0f} µs ({base * 1e6:,.0f} µs) |  <!-- {time.perf_counter() - t0:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
