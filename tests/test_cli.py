"""The `vnpu` command (typer app), driven in-process with CliRunner."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import vnpu
from vnpu.chip import load_chip
from vnpu.cli import app
from vnpu.runtime.compiled import CompiledModel
from vnpu.workloads import zoo

runner = CliRunner()

REPORT_KEYS = {"chip", "model", "dtype", "cycles", "latency_s", "energy_j", "flops", "hbm_bytes", "utilization",
               "kernels", "numerics", "batch", "compile_s", "simulate_s", "eager_s", "fallback_ops", "timing_only",
               "vnpu_version"}
NUMERICS_KEYS = {"max_abs_err", "max_rel_err", "cosine", "reference", "passed"}


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def _to_toml(d: dict, prefix: str = "") -> str:
    """Enough TOML for a chip spec: scalars first, then one [table] per nested dict."""
    lines = [f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in d.items()
             if v is not None and not isinstance(v, dict)]
    for k, v in d.items():
        if isinstance(v, dict):
            name = f"{prefix}.{k}" if prefix else k
            lines.append(f"\n[{name}]")
            lines.append(_to_toml(v, name))
    return "\n".join(lines)


def _chip_file(tmp_path: Path, name: str, edit) -> Path:
    spec = load_chip("vnpu-v1").model_dump(mode="json")
    spec["name"] = name
    edit(spec)
    path = tmp_path / f"{name}.toml"
    path.write_text(_to_toml(spec) + "\n")
    return path


def _one_line_error(result) -> str:
    err = result.stderr.strip().splitlines()
    assert "Traceback" not in result.output
    assert err and err[-1].startswith("error: "), result.output
    return err[-1]


# -- chips ---------------------------------------------------------------------------------
def test_chips_lists_presets():
    r = runner.invoke(app, ["chips"])
    assert r.exit_code == 0, r.output
    assert "vnpu-v1" in r.stdout
    assert "393.2 TFLOPS" in r.stdout  # 32 cores x 64x64 x 2 x 1.5 GHz
    assert "96 GiB" in r.stdout


def test_chips_show_prints_fields_and_sources():
    r = runner.invoke(app, ["chips", "show", "vnpu-v1"])
    assert r.exit_code == 0, r.output
    for field in ("core.matrix.dataflow", "weight-stationary", "hbm.bandwidth_gbs", "core.scratchpad.bytes",
                  "energy.pj_per_mac.bf16", "kernel_launch_us", "peak bf16", "sources", "H20"):
        assert field in r.stdout, field
    r2 = runner.invoke(app, ["chips", "show", "--chip", "vnpu-v1"])
    assert r2.exit_code == 0 and "core.matrix.dataflow" in r2.stdout


def test_chips_accepts_a_chip_file(tmp_path):
    path = _chip_file(tmp_path, "my-chip", lambda s: s.__setitem__("cores", 8))
    r = runner.invoke(app, ["chips", "--chip", str(path)])
    assert r.exit_code == 0, r.output
    assert "my-chip" in r.stdout and "vnpu-v1" in r.stdout


def test_malformed_chip_file_is_a_one_line_error(tmp_path):
    bad = _chip_file(tmp_path, "bad", lambda s: s["core"]["matrix"].__setitem__("dataflow", "diagonal"))
    for args in (["chips", "show", str(bad)], ["run", "mlp", "--chip", str(bad)], ["zoo", "--chip", str(bad)],
                 ["version", "--chip", str(bad)]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        line = _one_line_error(r)
        assert "core.matrix.dataflow" in line
        assert "'os'" in line and "'ws'" in line and "'is'" in line and "diagonal" in line


def test_unknown_chip_exits_2():
    r = runner.invoke(app, ["run", "mlp", "--chip", "no-such-chip"])
    assert r.exit_code == 2
    assert "vnpu-v1" in _one_line_error(r)


# -- zoo, version --------------------------------------------------------------------------
def test_zoo_and_version():
    r = runner.invoke(app, ["zoo"])
    assert r.exit_code == 0, r.output
    for name in zoo.ZOO:
        assert name in r.stdout
    r = runner.invoke(app, ["version"])
    assert r.exit_code == 0 and vnpu.__version__ in r.stdout


# -- run: bad input --------------------------------------------------------------------------
def test_unknown_model_lists_valid_names():
    r = runner.invoke(app, ["run", "resnet99"])
    assert r.exit_code == 2
    line = _one_line_error(r)
    assert "resnet99" in line
    for name in zoo.ZOO:
        assert name in line


@pytest.mark.parametrize("args", [["--dtype", "fp8"], ["--dtype", "int8"], ["--batch", "0"]])
def test_bad_options_exit_2(args):
    r = runner.invoke(app, ["run", "mlp", *args])
    assert r.exit_code == 2, r.output
    _one_line_error(r)


def test_unwritable_output_fails_before_running(tmp_path, monkeypatch):
    def never(batch):
        raise AssertionError("the run started")

    monkeypatch.setitem(zoo.ZOO, "mlp", dataclasses.replace(zoo.ZOO["mlp"], build=never))
    (tmp_path / "file").write_text("")
    for args in (["--json", str(tmp_path / "file" / "r.json")], ["--trace", str(tmp_path)]):
        r = runner.invoke(app, ["run", "mlp", *args])
        assert r.exit_code == 2, r.output
        assert args[0] in _one_line_error(r)


def test_model_too_large_exits_2(tmp_path):
    tiny = _chip_file(tmp_path, "tiny-hbm", lambda s: s["hbm"].__setitem__("bytes", 4096))
    r = runner.invoke(app, ["run", "mlp", "--chip", str(tiny)])
    assert r.exit_code == 2, r.output
    line = _one_line_error(r)
    assert "too large" in line and "tiny-hbm" in line


class _CumSum(torch.nn.Module):
    def forward(self, x):
        return torch.cumsum(x * 2.0, dim=-1)


@pytest.fixture
def cumsum_workload(monkeypatch):
    from vnpu.frontends.torch import ATEN

    monkeypatch.delitem(ATEN, "cumsum.default", raising=False)  # stays unsupported even if someone lowers it
    w = zoo.Workload("cumsum-test", "x*2 then cumsum", lambda b: (_CumSum().eval(), (torch.randn(b, 16),)), "test")
    monkeypatch.setitem(zoo.ZOO, w.name, w)
    return w.name


def test_strict_unsupported_ops_exit_2(cumsum_workload):
    r = runner.invoke(app, ["run", cumsum_workload, "--strict"])
    assert r.exit_code == 2, r.output
    line = _one_line_error(r)
    assert "cumsum" in line and "--strict" in line


def test_host_fallback_is_reported(cumsum_workload, tmp_path):
    out = tmp_path / "r.json"
    r = runner.invoke(app, ["run", cumsum_workload, "--json", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert rep["fallback_ops"] == {"cumsum.default": 1}
    assert any(k["host"] and k["kind"] == "host" for k in rep["kernels"])
    assert "(host)" in r.stdout and "host fallback" in r.stdout
    assert rep["numerics"]["passed"]


# -- run mlp ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlp")
    r = runner.invoke(app, ["run", "mlp", "--batch", "2", "--json", str(d / "r.json"), "--trace", str(d / "t.json")])
    return r, d


def test_run_mlp_json_report(mlp_run):
    r, d = mlp_run
    assert r.exit_code == 0, r.output
    assert "PASS" in r.stdout
    rep = json.loads((d / "r.json").read_text())
    assert REPORT_KEYS <= set(rep)
    assert NUMERICS_KEYS <= set(rep["numerics"])
    num = rep["numerics"]
    assert num["passed"] is True and num["reference"] == "torch eager fp32"
    assert num["max_abs_err"] <= 1e-4 * num["max_abs_ref"]
    assert num["max_rel_err"] == pytest.approx(num["max_abs_err"] / num["max_abs_ref"])
    assert rep["chip"] == "vnpu-v1" and rep["model"] == "mlp" and rep["dtype"] == "fp32" and rep["batch"] == 2
    assert rep["timing_only"] is False and rep["vnpu_version"] == vnpu.__version__
    assert rep["fallback_ops"] == {}
    for key in ("compile_s", "simulate_s", "eager_s"):
        assert rep[key] >= 0
    # consistent with the Profile of the same program run through the API
    chip = load_chip("vnpu-v1")
    model, inputs = zoo.get_workload("mlp").build(2)
    cm = vnpu.compile(model, inputs, chip=chip, dtype="fp32")
    cm.run_numpy([x.numpy() for x in inputs])
    p = cm.last_profile
    assert rep["cycles"] == pytest.approx(p.cycles)
    assert rep["latency_s"] == pytest.approx(rep["cycles"] / chip.clock_hz, rel=1e-12)
    assert rep["flops"] == p.flops
    assert rep["energy_j"] == pytest.approx(p.energy.total_j)
    assert rep["hbm_bytes"] == sum(k.hbm_bytes for k in p.kernels) > 0
    assert rep["utilization"]["matrix"] == pytest.approx(p.matrix_utilization)
    assert set(rep["utilization"]["engines"]) == {"dma_in", "matrix", "vector", "dma_out"}
    assert [k["name"] for k in rep["kernels"]] == [k.name for k in p.kernels]
    assert sum(k["fraction"] for k in rep["kernels"]) + rep["launch_overhead_cycles"] / rep["cycles"] == \
        pytest.approx(1.0)
    for k in rep["kernels"]:
        assert k["bound"] in ("compute", "memory") and 0 <= k["roofline_fraction"]
    # the tables show the same run
    assert "mlp" in r.stdout and f"{round(rep['cycles']):,}" in r.stdout


def test_run_mlp_trace(mlp_run):
    r, d = mlp_run
    assert r.exit_code == 0, r.output
    trace = json.loads((d / "t.json").read_text())
    ev = trace["traceEvents"]
    xs = [e for e in ev if e["ph"] == "X"]
    cores = {e["pid"] for e in xs if isinstance(e["pid"], int) and e["pid"] < 32}
    assert len(cores) >= 2
    procs = {e["pid"]: e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "process_name"}
    assert all(procs[c] == f"core {c}" for c in cores)
    threads = {e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {"dma_in", "matrix", "vector", "dma_out"} <= threads
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in xs)


def test_timing_only_skips_functional_sim(monkeypatch, tmp_path):
    def boom(*a, **k):
        raise AssertionError("functional simulation ran")

    monkeypatch.setattr(CompiledModel, "run_numpy", boom)
    out, tr = tmp_path / "r.json", tmp_path / "t.json"
    r = runner.invoke(app, ["run", "mlp", "--timing-only", "--json", str(out), "--trace", str(tr)])
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert rep["timing_only"] is True and rep["numerics"] is None and rep["eager_s"] is None
    assert "PASS" not in r.stdout and "FAIL" not in r.stdout
    model, inputs = zoo.get_workload("mlp").build(1)
    cm = vnpu.compile(model, inputs)
    assert rep["cycles"] == pytest.approx(cm.profile().cycles)
    assert any(e["ph"] == "X" for e in json.loads(tr.read_text())["traceEvents"])


def test_numerics_fail_exits_1(monkeypatch, tmp_path):
    real = CompiledModel.run_numpy

    def off_by_a_lot(self, inputs, trace=False):
        return [o + np.float32(1.0) for o in real(self, inputs, trace=trace)]

    monkeypatch.setattr(CompiledModel, "run_numpy", off_by_a_lot)
    out = tmp_path / "r.json"
    r = runner.invoke(app, ["run", "mlp", "--json", str(out)])
    assert r.exit_code == 1, r.output
    assert "FAIL" in r.stdout
    rep = json.loads(out.read_text())
    assert rep["numerics"]["passed"] is False and rep["numerics"]["max_abs_err"] >= 0.99


def test_run_mlp_bf16_show_ir():
    r = runner.invoke(app, ["run", "mlp", "--dtype", "bf16", "--show-ir", "--top", "1"])
    assert r.exit_code == 0, r.output
    assert "PASS" in r.stdout and "cosine >= 0.999" in r.stdout
    assert "bf16[" in r.stdout  # the IR
    assert "more" in r.stdout  # kernels beyond --top are summarized
