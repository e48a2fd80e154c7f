"""vnpu.report: numerics comparison, JSON report, Chrome/Perfetto trace, rich tables."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from rich.console import Console

import vnpu
from vnpu.chip import load_chip
from vnpu.report import (build_report, chip_detail, chips_table, chrome_trace, compare, kernel_table, numerics_table,
                         summary_table, timing_trace, workloads_table, write_report, write_trace)
from vnpu.report import json_report
from vnpu.sim.profile import KernelProfile, Profile


def _render(renderable, width: int = 200) -> str:
    c = Console(width=width, record=True, file=open("/dev/null", "w"))
    c.print(renderable)
    return c.export_text()


@pytest.fixture(scope="module")
def small():
    """A tiny model with a host-fallback op (cumsum) between two chip kernels."""
    torch.manual_seed(0)

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(64, 128)

        def forward(self, x):
            return torch.cumsum(torch.relu(self.fc(x)), dim=-1)

    from vnpu.frontends.torch import ATEN

    saved = ATEN.pop("cumsum.default", None)  # keep it a host op whatever the frontend supports
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m, x = M().eval(), torch.randn(4, 64)
            cm = vnpu.compile(m, (x,))
    finally:
        if saved is not None:
            ATEN["cumsum.default"] = saved
    outs = cm.run_numpy([x.numpy()], trace=True)
    with torch.no_grad():
        ref = m(x)
    return cm, outs, ref


# -- numerics ------------------------------------------------------------------------------
def test_compare_fp32_criterion():
    ref = np.array([1.0, -2.0, 4.0])
    ok = compare([ref + 3e-4], [ref], "fp32")  # 3e-4 <= 1e-4 * 4
    assert ok.passed and ok.max_abs_err == pytest.approx(3e-4) and ok.max_rel_err == pytest.approx(3e-4 / 4)
    assert ok.reference == "torch eager fp32"
    bad = compare([ref + 5e-4], [ref], "fp32")
    assert not bad.passed


def test_compare_bf16_uses_cosine():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(1000)
    near = compare([ref * (1 + 0.01 * rng.standard_normal(1000))], [ref], "bf16")
    assert near.passed and near.cosine > 0.999 and not compare([ref + 0.01], [ref], "fp32").passed
    assert not compare([rng.standard_normal(1000)], [ref], "bf16").passed


def test_compare_nonfinite_and_multiple_outputs():
    a, b = np.ones(3), np.arange(4.0)
    r = compare([a, b], [a, b], "fp32")
    assert r.passed and r.outputs == 2 and r.elements == 7
    nan = compare([np.array([1.0, np.nan])], [np.array([1.0, 2.0])], "bf16")
    assert not nan.passed and nan.nonfinite == 1
    with pytest.raises(ValueError):
        compare([a], [a, b], "fp32")


# -- JSON report ---------------------------------------------------------------------------
def test_build_report_matches_profile(small, tmp_path):
    cm, outs, ref = small
    p = cm.last_profile
    chip = cm.chip
    num = compare(outs, [ref], "fp32")
    rep = build_report(p, chip, model="small", dtype="fp32", batch=4, numerics=num, fallback_ops=cm.info.fallback_ops,
                       compile_s=1.0, simulate_s=0.5, eager_s=0.1)
    for key in ("chip", "model", "dtype", "cycles", "latency_s", "energy_j", "flops", "hbm_bytes", "utilization",
                "kernels", "numerics", "batch", "compile_s", "simulate_s", "eager_s", "fallback_ops", "timing_only",
                "vnpu_version"):
        assert key in rep, key
        assert key in json_report.__doc__, f"{key} is not documented"
    assert rep["numerics"]["passed"] and rep["fallback_ops"] == {"cumsum.default": 1}
    assert rep["latency_s"] == pytest.approx(p.cycles / chip.clock_hz)
    assert rep["throughput_per_s"] == pytest.approx(4 / rep["latency_s"])
    assert rep["achieved_flops_per_s"] == pytest.approx(p.flops / rep["latency_s"])
    assert rep["peak_flops_per_s"] == pytest.approx(chip.peak_flops(vnpu.DType.fp32))
    assert rep["energy"]["total_j"] == pytest.approx(rep["energy_j"]) == pytest.approx(p.energy.total_j)
    assert len(rep["kernels"]) == len(p.kernels)
    host = [k for k in rep["kernels"] if k["host"]]
    assert len(host) == 1 and host[0]["kind"] == "host"
    for k, kp in zip(rep["kernels"], p.kernels):
        assert k["cycles"] == kp.cycles and k["roofline_fraction"] == pytest.approx(kp.roofline_fraction)
    path = write_report(rep, tmp_path / "sub" / "r.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(rep))


def test_report_is_strict_json():
    p = Profile(chip="x", clock_hz=1e9, cores=1, cycles=0.0)
    rep = build_report(p, load_chip("vnpu-v1"), model="empty", dtype="fp32", timing_only=True)
    json.dumps(rep, allow_nan=False)
    assert rep["numerics"] is None and rep["timing_only"] is True and rep["latency_s"] == 0.0


# -- trace ---------------------------------------------------------------------------------
def _x(pid, tid, ts, dur, name="i"):
    return {"name": name, "ph": "X", "pid": pid, "tid": tid, "ts": ts, "dur": dur, "args": {"kernel": "k"}}


def test_chrome_trace_metadata_and_lanes():
    events = [_x(0, "dma_in", 0.0, 1.0), _x(0, "dma_in", 0.5, 1.0), _x(0, "dma_in", 1.0, 1.0),
              _x(1, "matrix", 0.2, 0.3), _x(-1, "host", 2.0, 1.0, "sort")]
    t = chrome_trace(events, cores=2)
    ev = t["traceEvents"]
    procs = {e["pid"]: e["args"]["name"] for e in ev if e["name"] == "process_name"}
    assert procs == {0: "core 0", 1: "core 1", 2: "host"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in ev if e["name"] == "thread_name"}
    assert set(threads.values()) == {"dma_in", "dma_in 2", "matrix", "host"}
    xs = [e for e in ev if e["ph"] == "X"]
    assert len(xs) == 5 and all(isinstance(e["tid"], int) for e in xs)
    by_thread: dict = {}
    for e in xs:  # slices of one thread never overlap
        by_thread.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    for spans in by_thread.values():
        spans.sort()
        assert all(a[1] <= b[0] + 1e-9 for a, b in zip(spans, spans[1:]))


def test_trace_from_simulation(small, tmp_path):
    cm, _, _ = small
    path = write_trace(tmp_path / "t.json", cm.last_trace, profile=cm.last_profile, cores=cm.chip.cores,
                       metadata={"model": "small"})
    t = json.loads(path.read_text())
    xs = [e for e in t["traceEvents"] if e["ph"] == "X"]
    procs = {e["pid"]: e["args"]["name"] for e in t["traceEvents"] if e["name"] == "process_name"}
    assert "kernels" in procs.values() and "host" in procs.values()
    assert len({e["pid"] for e in xs if procs[e["pid"]].startswith("core ")}) >= 2
    kernels = [e for e in xs if procs[e["pid"]] == "kernels"]
    assert [e["name"] for e in kernels] == [k.name for k in cm.last_profile.kernels]
    assert t["otherData"]["model"] == "small"


def test_timing_trace_matches_profile(small):
    cm, _, _ = small
    prof, events = timing_trace(cm.program, cm.chip)
    assert prof.cycles == pytest.approx(cm.profile().cycles)
    assert prof.cycles == pytest.approx(cm.last_profile.cycles)
    assert len(events) == len(cm.last_trace)


# -- tables --------------------------------------------------------------------------------
def test_summary_and_kernel_tables(small):
    cm, outs, ref = small
    p = cm.last_profile
    s = _render(summary_table(p, cm.chip, model="small", dtype="fp32", batch=4, fallback_ops=cm.info.fallback_ops))
    for text in ("small", "vnpu-v1", "latency", "throughput", "matrix utilization", "HBM traffic", "energy",
                 "dma_in", "busy", "stall", "cumsum.default", f"{round(p.cycles):,}"):
        assert text in s, text
    k = _render(kernel_table(p, top=15))
    assert "(host)" in k and "cumsum" in k
    for kp in p.kernels:
        assert kp.name in k
    k1 = _render(kernel_table(p, top=1))
    assert f"… {len(p.kernels) - 1} more" in k1
    n = _render(numerics_table(compare(outs, [ref], "fp32"), "fp32"))
    assert "PASS" in n and "cosine" in n


def test_chip_and_workload_tables():
    chip = load_chip("vnpu-v1")
    t = _render(chips_table([chip]))
    assert "vnpu-v1" in t and "64×64" in t and "393.2 TFLOPS" in t
    d = _render(chip_detail(chip))
    for field in ("core.matrix.rows", "core.vector.sfu_lanes", "hbm.latency_ns", "energy.static_w", "sources",
                  "peak fp32", "98.3 TFLOPS"):
        assert field in d, field
    from vnpu.workloads.zoo import list_workloads

    w = _render(workloads_table(list_workloads()))
    assert "mlp" in w and "bert-base" in w
