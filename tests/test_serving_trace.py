"""Request traces (vnpu.serving.trace): arrival processes and length distributions against their
textbook moments, files with line-numbered errors, determinism."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vnpu.serving.trace import TraceError, parse_length, read_trace, synthetic_trace, write_trace

N = 50_000


def _gaps(trace):
    t = np.array([r.arrival_s for r in trace])
    return np.diff(np.r_[0.0, t])


def test_poisson_arrivals_have_exponential_gaps():
    tr = synthetic_trace(4.0, N, 100, 10, seed=1)
    g = _gaps(tr)
    assert g.mean() == pytest.approx(0.25, rel=0.02)
    assert g.std() / g.mean() == pytest.approx(1.0, rel=0.03)  # exponential: CV 1
    assert all(b.arrival_s >= a.arrival_s for a, b in zip(tr, tr[1:]))


def test_gamma_arrivals_have_the_requested_burstiness():
    g = _gaps(synthetic_trace(2.0, N, 100, 10, arrivals="gamma:cv=3", seed=2))
    assert g.mean() == pytest.approx(0.5, rel=0.05)
    assert g.std() / g.mean() == pytest.approx(3.0, rel=0.05)


def test_lognormal_lengths_have_the_given_mean_and_median():
    d = parse_length("lognormal:mean=600,sigma=0.8")
    x = d.sample(np.random.default_rng(3), 200_000)
    assert x.mean() == pytest.approx(600, rel=0.02)
    assert np.median(x) == pytest.approx(600 * math.exp(-0.8 ** 2 / 2), rel=0.02)  # exp(mu)
    assert x.min() >= 1 and x.dtype == np.int64


def test_zipf_uniform_normal_and_bounds():
    z = parse_length("zipf:a=1.5,max=1000").sample(np.random.default_rng(4), 200_000)
    c1, c2 = (z == 1).sum(), (z == 2).sum()
    assert c1 / c2 == pytest.approx(2 ** 1.5, rel=0.05) and z.max() <= 1000
    u = parse_length("uniform:low=10,high=20").sample(np.random.default_rng(5), 10_000)
    assert u.min() == 10 and u.max() == 20 and set(np.unique(u)) == set(range(10, 21))
    nrm = parse_length("normal:mean=5,std=10").sample(np.random.default_rng(6), 10_000)
    assert nrm.min() == 1  # clipped to one token
    b = parse_length("lognormal:mean=600,sigma=2,min=50,max=900").sample(np.random.default_rng(7), 10_000)
    assert b.min() == 50 and b.max() == 900
    assert parse_length("128").sample(np.random.default_rng(0), 3).tolist() == [128] * 3


def test_same_seed_same_trace():
    a = synthetic_trace(3.0, 500, "lognormal:mean=600,sigma=0.8", "zipf:a=1.2,max=2048", seed=9)
    b = synthetic_trace(3.0, 500, "lognormal:mean=600,sigma=0.8", "zipf:a=1.2,max=2048", seed=9)
    c = synthetic_trace(3.0, 500, "lognormal:mean=600,sigma=0.8", "zipf:a=1.2,max=2048", seed=10)
    assert a == b and a != c


def test_trace_files_roundtrip_and_sort(tmp_path):
    tr = synthetic_trace(5.0, 50, "uniform:low=1,high=4000", 64, seed=0)
    write_trace(tmp_path / "t.csv", tr)
    assert read_trace(tmp_path / "t.csv") == tr
    (tmp_path / "t.jsonl").write_text(
        '{"arrival_s": 2.0, "prompt_tokens": 10, "output_tokens": 5}\n\n'
        '{"arrival_s": 0.5, "prompt_tokens": 700, "output_tokens": 1, "prefix_id": "sys", "prefix_tokens": 512}\n')
    got = read_trace(tmp_path / "t.jsonl")
    assert [(r.id, r.arrival_s, r.prompt_tokens, r.prefix_id, r.prefix_tokens) for r in got] == \
        [(0, 0.5, 700, "sys", 512), (1, 2.0, 10, None, 0)]


@pytest.mark.parametrize("text,msg", [
    ("arrival_s,prompt_tokens,output_tokens\n0.1,10,5\n0.2,ten,5\n", r"t\.csv:3: .*whole numbers"),
    ("arrival_s,prompt_tokens\n0.1,10\n", r"t\.csv:1: the header must name"),
    ("arrival_s,prompt_tokens,output_tokens\n-1,10,5\n", r"t\.csv:2: arrival_s must be a finite time"),
    ("arrival_s,prompt_tokens,output_tokens,prefix_id,prefix_tokens\n0,10,5,p,11\n", r"t\.csv:2: prefix_tokens"),
    ("arrival_s,prompt_tokens,output_tokens\n0,0,5\n", r"t\.csv:2: prompt_tokens and output_tokens"),
    ("arrival_s,prompt_tokens,output_tokens\n", r"holds no requests"),
])
def test_bad_trace_rows_are_named_by_line(tmp_path, text, msg):
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(TraceError, match=msg):
        read_trace(tmp_path / "t.csv")


def test_bad_jsonl_line_and_file_kinds(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"arrival_s": 0, "prompt_tokens": 3, "output_tokens": 2}\n[1, 2]\n')
    with pytest.raises(TraceError, match=r"t\.jsonl:2: not a JSON object"):
        read_trace(tmp_path / "t.jsonl")
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(TraceError, match="use a .csv or .jsonl"):
        read_trace(tmp_path / "t.txt")
    with pytest.raises(TraceError, match="does not exist"):
        read_trace(tmp_path / "missing.csv")


@pytest.mark.parametrize("rate,prompt,arrivals,msg", [
    (0, 100, "poisson", "--rate must be a positive number"),
    (-2, 100, "poisson", "--rate must be a positive number"),
    (float("nan"), 100, "poisson", "--rate must be a positive number"),
    (1, "lognormal:mean=600", "poisson", "lognormal takes mean, sigma"),
    (1, "pareto:a=2", "poisson", "give a number of tokens or one of"),
    (1, "12.5", "poisson", "whole number of tokens"),
    (1, "uniform:low=9,high=3", "poisson", "out of range"),
    (1, "normal:mean=5,std", "poisson", "is not key=number"),
    (1, 100, "gamma:cv=0", "cv must be a number"),
    (1, 100, "weibull", "use poisson or gamma"),
])
def test_bad_trace_options_are_one_line(rate, prompt, arrivals, msg):
    with pytest.raises(TraceError, match=msg) as e:
        synthetic_trace(rate, 10, prompt, 10, arrivals=arrivals)
    assert "\n" not in str(e.value)


def test_the_shipped_sample_is_what_its_script_generates():
    """src/vnpu/serving/data/conversation_sample.csv comes from benchmarks/make_sample_trace.py, whose
    targets are the Azure 2023 conversation trace's statistics (means 1155 / 211 tokens, 5.53 req/s)."""
    import importlib.util
    from pathlib import Path

    from vnpu.serving.trace import SAMPLE_TRACE

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "make_sample_trace.py"
    spec = importlib.util.spec_from_file_location("make_sample_trace", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    shipped = read_trace(SAMPLE_TRACE)
    assert shipped == read_trace_roundtrip(mod.sample())
    p = np.array([r.prompt_tokens for r in shipped])
    o = np.array([r.output_tokens for r in shipped])
    assert p.mean() == pytest.approx(1155, rel=0.1) and o.mean() == pytest.approx(211, rel=0.1)
    assert len(shipped) / shipped[-1].arrival_s == pytest.approx(5.53, rel=0.1)
    assert p.max() <= 8192 and o.max() <= 1000


def read_trace_roundtrip(requests):
    """The requests as read back from a CSV file (arrival times through repr: exact)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        write_trace(Path(d) / "t.csv", requests)
        return read_trace(Path(d) / "t.csv")
