"""`vnpu serve` / vnpu.serving.serve: a small served trace end to end, its JSON, the KV capacity
of a replica, and the one-line errors for bad input."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vnpu.chip import load_chip
from vnpu.cli import app
from vnpu.dtypes import DType
from vnpu.runtime.llm import kv_bytes, model_memory
from vnpu.serving.serve import WORKSPACE_SHARE, ServeError, kv_blocks_per_replica
from vnpu.workloads.llm_zoo import get_llm


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VNPU_CACHE_DIR", str(tmp_path / "cache"))


def test_replica_kv_capacity_is_hbm_minus_weights_and_workspace():
    spec, chip = get_llm("qwen3-8b"), load_chip("vnpu-v1")
    w, _ = model_memory(spec, 1, 1, DType.bf16)
    per_token = kv_bytes(spec, 1, 1, DType.bf16)
    assert per_token == 2 * 36 * 8 * 128 * 2
    want = int((chip.hbm.bytes * (1 - WORKSPACE_SHARE) - w) // (per_token * 16))
    assert kv_blocks_per_replica("qwen3-8b", chip, "bf16", None, None, 16) == want
    # an fp8 cache holds about twice the blocks
    fp8 = kv_blocks_per_replica("qwen3-8b", chip, "bf16", None, "fp8", 16)
    assert fp8 == int((chip.hbm.bytes * (1 - WORKSPACE_SHARE) - w) // (36 * 2 * 8 * (128 + 4) * 16))


def test_a_model_that_leaves_no_room_for_a_kv_cache_is_refused():
    with pytest.raises(ServeError, match="no room left for a KV cache"):
        kv_blocks_per_replica("qwen3-235b-a22b", "vnpu-v1", "bf16", None, None, 16)


def test_serve_runs_a_trace_and_writes_json(tmp_path):
    out = tmp_path / "serve.json"
    res = CliRunner().invoke(app, ["serve", "qwen3-tiny", "--requests", "60", "--rate", "5", "--prompt-len",
                                   "uniform:low=16,high=600", "--output-len", "16", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "TTFT" in res.output and "requests/s" in res.output
    d = json.loads(out.read_text())
    assert d["served"] + d["rejected"] == 60 == len(d["per_request"])
    assert d["rejected"] > 0 and all("model's context (512)" in r for r in d["rejected_reasons"])
    served = [r for r in d["per_request"] if not r["rejected"]]
    assert all(r["prompt_tokens"] + r["output_tokens"] <= 512 for r in served)
    assert d["ttft_s"]["p50"] > 0 and d["tpot_s"]["p99"] >= d["tpot_s"]["p50"] > 0


def test_serve_takes_the_shipped_sample_trace(tmp_path):
    out = tmp_path / "s.json"
    res = CliRunner().invoke(app, ["serve", "qwen3-tiny", "--trace", "sample", "--json", str(out)])
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    assert d["requests"] == 1000 and d["served"] + d["rejected"] == 1000
    assert d["served"] > 0  # the short conversations fit qwen3-tiny's 512-token context


@pytest.mark.parametrize("args,msg", [
    (["serve", "qwen3-tiny", "--rate", "0"], "--rate must be a positive number"),
    (["serve", "gpt-5"], "unknown LLM"),
    (["serve", "qwen3-tiny", "--prompt-len", "pareto:a=1"], "give a number of tokens or one of"),
    (["serve", "qwen3-tiny", "--trace", "/nonexistent/t.csv"], "does not exist"),
    (["serve", "qwen3-tiny", "--policy", "fifo"], "unknown scheduler policy 'fifo'"),
    (["serve", "qwen3-tiny", "--arrivals", "weibull"], "use poisson or gamma"),
    (["serve", "qwen3-tiny", "--kv-cache", "fp4"], "unknown KV-cache format"),
])
def test_bad_serve_input_is_one_line(args, msg):
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and msg in res.output, res.output
    assert len(res.output.strip().splitlines()) <= 2


def test_a_bad_trace_row_is_named_by_its_line(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("arrival_s,prompt_tokens,output_tokens\n0.0,10,5\n0.5,x,5\n")
    res = CliRunner().invoke(app, ["serve", "qwen3-tiny", "--trace", str(p)])
    assert res.exit_code == 2 and "t.csv:3" in res.output


def test_goodput_counts_the_requests_within_every_target():
    """Analytic step model: a lone 100-token prompt takes 1 ms + 0.2 ms to its first token, a
    400-token one 1.8 ms; a target between them splits the requests, and goodput = those within
    / duration."""
    from vnpu.serving.serve import serve
    from vnpu.serving.trace import Request

    def step(prefill, decode):
        return 1e-3 + 2e-6 * sum(n for n, _ in prefill) + 1e-4 * len(decode)

    trace = [Request(0, 0.0, 100, 4), Request(1, 1.0, 400, 4)]  # TTFT 1.2 ms and 1.8 ms, alone
    rep = serve("qwen3-tiny", trace, step_model=step, slo="ttft=0.0015")
    assert rep.slo == {"ttft": 0.0015} and rep.slo_attainment == 0.5
    assert rep.goodput_rps == pytest.approx(1 / rep.duration_s)
    everything = serve("qwen3-tiny", trace, step_model=step, slo="ttft=0.01,tpot=0.01")
    assert everything.slo_attainment == 1.0 and everything.goodput_rps == pytest.approx(everything.throughput_rps)


@pytest.mark.parametrize("slo", ["ttft", "ttft=-1", "p99=0.5", "tpot=abc", "ttft=0.5,,x=1"])
def test_a_bad_slo_string_is_one_line(slo):
    res = CliRunner().invoke(app, ["serve", "qwen3-tiny", "--slo", slo])
    assert res.exit_code == 2 and "is not metric=seconds" in res.output, res.output
