"""The chip-derived serving step-time model (vnpu.serving.step_model) on qwen3-tiny: its tables
come from timing-only simulations of the model's programs; checked against `generate`'s own
simulated TTFT / TPOT (the vanishing-rate invariant) and against held-out direct simulations."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vnpu.runtime.llm import generate
from vnpu.serving.engine import simulate
from vnpu.serving.scheduler import SchedulerConfig
from vnpu.serving.step_model import ChipStepModel, cache_dir, fit_step_model
from vnpu.serving.trace import Request

GRID = dict(prefill_tokens=(16, 64, 256), chunks=((16, 64), (64, 64), (16, 256), (64, 256)),
            decode_batch=(1, 4, 16), decode_kv=(64, 256, 512))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import os

    old = os.environ.get("VNPU_CACHE_DIR")
    os.environ["VNPU_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    try:
        yield fit_step_model("qwen3-tiny", **GRID)
    finally:
        if old is None:
            os.environ.pop("VNPU_CACHE_DIR")
        else:
            os.environ["VNPU_CACHE_DIR"] = old


@pytest.mark.parametrize("prompt", [32, 100, 200])
def test_a_lone_request_matches_generate(model, prompt):
    """At a vanishing rate the serving loop's TTFT and TPOT equal `vnpu generate`'s simulated ones
    (same model, lengths, chip) within 1%."""
    rep = generate("qwen3-tiny", prompt, 8, 1, "vnpu-v1", "bf16", timing_only=True)
    res = simulate([Request(0, 0.0, prompt, 8)], model, SchedulerConfig(num_blocks=4096))
    r = res.requests[0]
    assert r.ttft_s == pytest.approx(rep.ttft_s, rel=0.01)
    assert r.tpot_s == pytest.approx(rep.tpot_s, rel=0.01)


def test_tables_come_back_from_the_disk_cache(model):
    files = list(cache_dir().glob("*.json"))
    assert len(files) == 1
    again = fit_step_model("qwen3-tiny", **GRID)  # no simulation: the cached tables
    assert again.t.to_json() == model.t.to_json()
    assert again([(100, 0)], [64, 300]) == model([(100, 0)], [64, 300])
    files[0].write_text("{not json")  # a damaged entry is simulated again
    refit = fit_step_model("qwen3-tiny", **GRID)
    assert refit.t.dense == model.t.dense
    assert json.loads(files[0].read_text())["format"] == 2


def test_mixed_steps_cost_more_than_their_parts_alone(model):
    """A step's time grows with each part it holds, and a decode batch's with its KV length."""
    pre, dec = model([(128, 0)], []), model([], [200] * 8)
    both = model([(128, 0)], [200] * 8)
    assert both > max(pre, dec)
    assert model([], [500] * 8) > model([], [100] * 8)
    assert model([(64, 256)], []) > model([(64, 0)], [])
    assert np.isfinite(model([(8192, 0)], [])) and model([(8192, 0)], []) > model([(4096, 0)], [])  # extrapolated


def test_decode_run_equals_step_by_step(model):
    kv = np.array([100, 37, 512, 4000])
    run = model.decode_run(kv, 50)
    assert [float(x) for x in run] == [model([], list(kv + i)) for i in range(50)]
