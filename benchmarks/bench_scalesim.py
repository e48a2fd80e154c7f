"""vnpu against SCALE-Sim v3 and ZigZag on the same systolic-array studies, side by side.

    python benchmarks/bench_scalesim.py [--quick] [--no-zigzag] [--out benchmarks/results]

Sets up each peer in its own virtualenv on first use (SCALE-Sim needs numpy<2.4):
    <peers>/scalesim: scalesim==3.0.0 "numpy<2.4"      <peers>/zigzag: zigzag-dse==3.9.1 six
(<peers> = $VNPU_PEERS_DIR or ~/.cache/vnpu-peers), then runs every study through each tool as its
own process, measuring wall time and peak resident memory (os.wait4's ru_maxrss) per process:

- vnpu:     `vnpu import-topology STUDY.csv --scale-config STUDY.cfg [--gemm] --json OUT`
- SCALE-Sim: benchmarks/peers/scalesim_runner.py (one scalesim run over the study's layers)
- ZigZag:   benchmarks/peers/zigzag_runner.py (one evaluation per layer, same array and SRAMs)

Every study uses the same .cfg text for vnpu and SCALE-Sim (CALC bandwidth: SCALE-Sim reports
stall-free compute cycles). The table compares compute cycles: vnpu's error against SCALE-Sim
in %, ZigZag's ideal (stall-free) and total latency, and each tool's wall time and peak memory.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
from scalesim_runner import CFG, topology_csv  # noqa: E402  (plain text builders; no scalesim import)

SRAM_KB = 64  # SCALE-Sim's sample configuration: 64 kB per buffer, 10 words/cycle
BANDWIDTH = 10


@dataclass
class Study:
    name: str
    gemm: bool
    rows: int
    cols: int
    dataflow: str
    layers: list[dict]
    ifmap_sram_kb: int = SRAM_KB
    filter_sram_kb: int = SRAM_KB
    ofmap_sram_kb: int = SRAM_KB
    bandwidth_words_per_cycle: int = BANDWIDTH

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class ToolRun:
    wall_s: float
    peak_mb: float
    layers: list[dict] = field(default_factory=list)
    error: str | None = None


def gemm_studies(quick: bool) -> list[Study]:
    # (array, [(M, N, K)]): a square power-of-two GEMM and one whose sizes are multiples of nothing
    shapes = {8: [(128, 128, 128), (100, 70, 130)], 32: [(512, 512, 512), (300, 200, 100)],
              128: [(1024, 1024, 512), (1000, 600, 300)]}
    if quick:
        shapes = {8: [(100, 70, 130)], 32: [(300, 200, 100)], 128: [(1000, 600, 300)]}
    out = []
    for r, gemms in shapes.items():
        for df in ("os", "ws"):
            for m, n, k in gemms:
                out.append(Study(f"gemm{m}x{n}x{k}_{r}x{r}_{df}", True, r, r, df,
                                 [{"name": f"g{m}x{n}x{k}", "M": m, "N": n, "K": k}]))
    return out


def resnet18_layers() -> list[dict]:
    """ResNet-18's 21 conv/fc layers in SCALE-Sim's convention (padded ifmap sizes, no padding field)."""
    def conv(name, hw, f, c, nf, s):
        return {"name": name, "ifmap_h": hw, "ifmap_w": hw, "filter_h": f, "filter_w": f, "channels": c,
                "num_filters": nf, "stride": s}
    layers = [conv("conv1", 230, 7, 3, 64, 2)]
    layers += [conv(f"layer1_{i}", 58, 3, 64, 64, 1) for i in range(4)]
    for stage, (c_in, c, hw_in, hw) in enumerate([(64, 128, 56, 28), (128, 256, 28, 14), (256, 512, 14, 7)], start=2):
        layers.append(conv(f"layer{stage}_0", hw_in + 2, 3, c_in, c, 2))
        layers += [conv(f"layer{stage}_{i}", hw + 2, 3, c, c, 1) for i in range(1, 4)]
        layers.append(conv(f"layer{stage}_ds", hw_in, 1, c_in, c, 2))
    layers.append(conv("fc", 1, 1, 512, 1000, 1))
    return layers


def minilm_block_layers(seq: int = 128, d: int = 384, heads: int = 12, ffn: int = 1536) -> list[dict]:
    """One all-MiniLM-L6-v2 encoder block's GEMMs (per-head attention GEMMs listed once)."""
    hd = d // heads
    g = [("qkv", seq, 3 * d, d), ("scores_per_head", seq, seq, hd), ("context_per_head", seq, hd, seq),
         ("attn_out", seq, d, d), ("ffn_up", seq, ffn, d), ("ffn_down", seq, d, ffn)]
    return [{"name": n, "M": m, "N": nn, "K": k} for n, m, nn, k in g]


# -- running tools ---------------------------------------------------------------------------
def _run_measured(cmd: list[str], timeout: float) -> tuple[int, float, float, str]:
    """(returncode, wall seconds, peak RSS MB, stderr tail) of one child process."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        deadline = t0 + timeout
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                p.kill()
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        err.seek(0)
        tail = err.read().decode(errors="replace")[-400:]
    return os.waitstatus_to_exitcode(status), wall, ru.ru_maxrss / 1024, tail


def ensure_venv(root: Path, name: str, packages: list[str]) -> Path:
    py = root / name / "bin" / "python"
    if not py.exists():
        print(f"setting up {name} in {root / name} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(root / name)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *packages], check=True)
    return py


def run_vnpu(study: Study, work: Path) -> ToolRun:
    (work / "study.cfg").write_text(CFG.format(**study.as_dict()))
    (work / "study.csv").write_text(topology_csv(study.as_dict()))
    out = work / "vnpu.json"
    cmd = [sys.executable, "-m", "vnpu.cli", "import-topology", str(work / "study.csv"),
           "--scale-config", str(work / "study.cfg"), "--json", str(out)] + (["--gemm"] if study.gemm else [])
    rc, wall, mb, err = _run_measured(cmd, 600)
    if rc:
        return ToolRun(wall, mb, error=f"exit {rc}: {err.strip().splitlines()[-1] if err.strip() else ''}")
    return ToolRun(wall, mb, json.loads(out.read_text()))


def run_scalesim(py: Path, study: Study, work: Path, timeout: float) -> ToolRun:
    (work / "study.json").write_text(json.dumps(study.as_dict()))
    out = work / "scalesim.json"
    rc, wall, mb, err = _run_measured([str(py), str(HERE / "peers" / "scalesim_runner.py"), str(work / "study.json"),
                                       str(out)], timeout)
    if rc or not out.exists():
        return ToolRun(wall, mb, error=f"exit {rc}: {err.strip().splitlines()[-1] if err.strip() else 'timed out'}")
    return ToolRun(wall, mb, json.loads(out.read_text())["layers"])


def run_zigzag(py: Path, study: Study, work: Path, timeout: float) -> ToolRun:
    arch = {k: v for k, v in study.as_dict().items() if k not in ("name", "gemm", "layers")}
    cases = [{**arch, **layer, "kind": "gemm" if study.gemm else "conv"} for layer in study.layers]
    (work / "zz_cases.json").write_text(json.dumps(cases))
    out = work / "zz_out.json"
    rc, wall, mb, err = _run_measured([str(py), str(HERE / "peers" / "zigzag_runner.py"), str(work / "zz_cases.json"),
                                       str(out)], timeout)
    if rc or not out.exists():
        return ToolRun(wall, mb, error=f"exit {rc}: {err.strip().splitlines()[-1] if err.strip() else 'timed out'}")
    return ToolRun(wall, mb, json.loads(out.read_text()))


# -- reporting -------------------------------------------------------------------------------
def _err_pct(v: int, s: int) -> float:
    return 100.0 * (v - s) / s


def _fmt_run(r: ToolRun | None) -> tuple[str, str]:
    if r is None:
        return "-", "-"
    return f"{r.wall_s:.2f}", f"{r.peak_mb:.0f}"


def layer_rows(study: Study, v: ToolRun, s: ToolRun, z: ToolRun | None) -> list[list[str]]:
    rows = []
    for i, spec in enumerate(study.layers):
        vc = v.layers[i]["compute_cycles"] if not v.error else None
        sc = s.layers[i]["total_cycles"] if not s.error else None
        zl = z.layers[i] if z is not None and not z.error else None
        rows.append([spec["name"], f"{sc:,}" if sc is not None else s.error or "-",
                     f"{vc:,}" if vc is not None else v.error or "-",
                     f"{_err_pct(vc, sc):+.3f}%" if vc is not None and sc is not None else "-",
                     f"{int(zl['ideal_cycles']):,}" if zl and zl.get("ideal_cycles") is not None else "-",
                     f"{int(zl['latency_cycles']):,}" if zl and zl.get("latency_cycles") is not None else "-",
                     f"{v.layers[i]['total_cycles']:,}" if vc is not None else "-"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one GEMM per array, ResNet-18's first 6 layers")
    ap.add_argument("--no-zigzag", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--peers", type=Path, default=Path(os.environ.get("VNPU_PEERS_DIR", Path.home() / ".cache" / "vnpu-peers")))
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per peer process")
    args = ap.parse_args()
    ss_py = ensure_venv(args.peers, "scalesim", ["scalesim==3.0.0", "numpy<2.4"])
    zz_py = None if args.no_zigzag else ensure_venv(args.peers, "zigzag", ["zigzag-dse==3.9.1", "six"])

    r18 = resnet18_layers()[:6] if args.quick else resnet18_layers()
    studies = gemm_studies(args.quick) + [
        Study("resnet18_32x32_os", False, 32, 32, "os", r18),
        Study("minilm_block_32x32_os", True, 32, 32, "os", minilm_block_layers()),
    ]
    results = []
    lines = ["| study | layer | SCALE-Sim cycles | vnpu compute cycles | vnpu vs SCALE-Sim | ZigZag ideal | "
             "ZigZag latency | vnpu total (10 w/c) |", "|---|---|---|---|---|---|---|---|"]
    wall_lines = ["| study | layers | SCALE-Sim wall s | SCALE-Sim peak MB | ZigZag wall s | ZigZag peak MB | "
                  "vnpu wall s | vnpu peak MB | SCALE-Sim / vnpu wall | SCALE-Sim / vnpu memory |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
    worst = 0.0
    for st in studies:
        with tempfile.TemporaryDirectory(prefix="bench_scalesim_") as tmp:
            work = Path(tmp)
            print(f"== {st.name}: {len(st.layers)} layer(s)", flush=True)
            v = run_vnpu(st, work)
            s = run_scalesim(ss_py, st, work, args.timeout)
            z = run_zigzag(zz_py, st, work, args.timeout) if zz_py else None
        rows = layer_rows(st, v, s, z)
        for row in rows:
            lines.append("| " + " | ".join([st.name] + row) + " |")
            if row[3] != "-":
                worst = max(worst, abs(float(row[3].rstrip("%"))))
        if len(st.layers) > 1 and not v.error and not s.error:
            tv = sum(l["compute_cycles"] for l in v.layers)
            ts = sum(l["total_cycles"] for l in s.layers)
            zi = sum(l["ideal_cycles"] or 0 for l in z.layers) if z and not z.error else None
            zt = sum(l["latency_cycles"] or 0 for l in z.layers) if z and not z.error else None
            lines.append(f"| {st.name} | **all {len(st.layers)}** | {ts:,} | {tv:,} | {_err_pct(tv, ts):+.3f}% | "
                         f"{f'{int(zi):,}' if zi is not None else '-'} | {f'{int(zt):,}' if zt is not None else '-'} | "
                         f"{sum(l['total_cycles'] for l in v.layers):,} |")
        sw, sm = _fmt_run(s)
        zw, zm = _fmt_run(z)
        vw, vm = _fmt_run(v)
        wall_lines.append(f"| {st.name} | {len(st.layers)} | {sw} | {sm} | {zw} | {zm} | {vw} | {vm} | "
                          f"{s.wall_s / v.wall_s:.0f}x | {s.peak_mb / v.peak_mb:.1f}x |")
        print("\n".join(lines[-len(rows):]), flush=True)
        print(wall_lines[-1], flush=True)
        results.append({"study": st.as_dict(), "vnpu": v.__dict__, "scalesim": s.__dict__,
                        "zigzag": z.__dict__ if z else None})
    report = ("## Cycles (compute cycles; SCALE-Sim in CALC bandwidth mode reports no stalls)\n\n" + "\n".join(lines)
              + f"\n\nlargest |vnpu - SCALE-Sim| / SCALE-Sim: {worst:.3f}%\n\n## Wall time and peak memory per tool "
              "process (each study one process per tool)\n\n" + "\n".join(wall_lines) + "\n")
    print("\n" + report)
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "quick" if args.quick else "full"
    (args.out / f"scalesim_side_by_side_{tag}.md").write_text(report)
    (args.out / f"scalesim_side_by_side_{tag}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
