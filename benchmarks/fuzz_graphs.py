"""Long fuzzing run: random small torch graphs compiled with vnpu (strict, fp32), run on the
simulated chip and compared with eager PyTorch, the same property as tests/test_fuzz_graphs.py.

    PYTHONPATH=src python benchmarks/fuzz_graphs.py --examples 10000 --seed 1 [--log fuzz.jsonl]

Graph i of seed S is drawn by random.Random(S * 10**6 + i) with the generator of
tests/fuzz_graph_gen.py, so any graph can be rebuilt from (seed, i). With --log, every result
is appended to a JSON-lines file and a rerun with the same --log and --seed skips the graphs
already done (resumable). Prints progress (graphs/minute), the counts of graphs, mismatches,
crashes and generator bugs (an op vnpu does not lower strictly, or invalid torch code), and for each finding a
shrunk reproducer (one failing output, only the lines it needs) as standalone Python.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fuzz_graph_gen import RandomChooser, draw_graph, fuzz_chip, run_graph, shrink  # noqa: E402


def graph_at(seed: int, i: int):
    return draw_graph(RandomChooser(random.Random(seed * 10**6 + i)), data_seed=seed * 10**6 + i)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="first graph index")
    ap.add_argument("--log", type=Path, default=None, help="JSON-lines results file (resumable)")
    ap.add_argument("--every", type=int, default=50, help="progress line every N graphs")
    ap.add_argument("--no-shrink", action="store_true")
    ap.add_argument("--only", type=int, default=None, help="run graph INDEX only and print its source")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    if args.only is not None:
        fg = graph_at(args.seed, args.only)
        print(fg.source())
        o = run_graph(fg, fuzz_chip(fg.chip))
        print(o.status, o.detail)
        return 0 if o.status == "ok" else 1

    done: set[int] = set()
    counts = {"ok": 0, "mismatch": 0, "crash": 0, "unsupported": 0}
    if args.log and args.log.exists():
        for line in args.log.read_text().splitlines():
            r = json.loads(line)
            if r["seed"] == args.seed:
                done.add(r["i"])
                counts[r["status"]] += 1
        print(f"resuming: {len(done)} graphs of seed {args.seed} already in {args.log}")
    logf = args.log.open("a") if args.log else None
    findings: list[tuple[int, str, str, str]] = []
    t0 = time.time()
    ran = 0
    for i in range(args.start, args.start + args.examples):
        if i in done:
            continue
        try:
            fg = graph_at(args.seed, i)
        except AssertionError as e:  # the generator drew invalid torch code: a generator bug
            print(f"\n=== graph {i}: generator error: {e}", flush=True)
            counts["unsupported"] += 1
            if logf:
                logf.write(json.dumps({"seed": args.seed, "i": i, "status": "unsupported", "chip": "",
                                       "ops": 0, "detail": f"generator: {e}"[:2000]}) + "\n")
            continue
        o = run_graph(fg, fuzz_chip(fg.chip))
        counts[o.status] += 1
        ran += 1
        rec = {"seed": args.seed, "i": i, "status": o.status, "chip": fg.chip, "ops": len(fg.lines)}
        if o.status != "ok":
            small = fg if args.no_shrink else shrink(fg, o.status)
            detail = run_graph(small, fuzz_chip(small.chip)).detail if small is not fg else o.detail
            rec.update(detail=detail[:2000], reproducer=small.source())
            findings.append((i, o.status, detail, small.source()))
            print(f"\n=== graph {i}: {o.status} ({fg.chip}): {detail[:600]}\n{small.source()}\n", flush=True)
        if logf:
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
        if ran % args.every == 0:
            mins = (time.time() - t0) / 60
            print(f"[{ran} graphs this run, {sum(counts.values())} total] ok {counts['ok']} mismatch "
                  f"{counts['mismatch']} crash {counts['crash']} generator-bug {counts['unsupported']} | "
                  f"{ran / mins:.1f} graphs/min", flush=True)
    mins = max((time.time() - t0) / 60, 1e-9)
    total = sum(counts.values())
    print(f"\nseed {args.seed}: {total} graphs, {counts['mismatch']} mismatches, {counts['crash']} crashes, "
          f"{counts['unsupported']} generator bugs; this run {ran} graphs in {mins:.1f} min ({ran / mins:.1f} graphs/min)")
    for i, status, detail, _ in findings:
        print(f"  graph {i}: {status}: {detail[:200]}")
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
