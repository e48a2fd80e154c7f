"""Writes the sample serving trace shipped with vnpu: src/vnpu/serving/data/conversation_sample.csv.

    python benchmarks/make_sample_trace.py [--out PATH] [--requests N] [--seed S]

The lengths and the rate are statistics of the public Azure LLM inference trace 2023, conversation
service (Patel et al., "Splitwise", ISCA 2024; github.com/Azure/AzurePublicDataset,
data/AzureLLMInferenceTrace_conv.csv, CC-BY), computed from its 19,366 requests over 3,502 s:
    context tokens    mean 1155, median 1020, std of ln 0.985, max 14,050 (p99 4142)
    generated tokens  mean 211,  median 129,  std of ln 0.859, max 1000
    arrivals          5.53 requests/s, inter-arrival CV 1.09 (close to Poisson)
The sample draws lognormal lengths with those means and log-stds (prompts capped at 8192, outputs
at 1000) and Poisson arrivals at that rate. No row of the Azure trace is copied.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from vnpu.serving.trace import synthetic_trace, write_trace

RATE = 5.53  # requests/s
PROMPT = "lognormal:mean=1155,sigma=0.985,max=8192"
OUTPUT = "lognormal:mean=211,sigma=0.859,max=1000"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "vnpu" / "serving" / "data" / "conversation_sample.csv"


def sample(requests: int = 1000, seed: int = 0):
    return synthetic_trace(RATE, requests, PROMPT, OUTPUT, "poisson", seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    tr = sample(a.requests, a.seed)
    write_trace(a.out, tr)
    print(f"{len(tr)} requests over {tr[-1].arrival_s:.1f} s -> {a.out}")


if __name__ == "__main__":
    main()
