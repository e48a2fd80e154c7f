"""SCALE-Sim compatibility: the systolic cycle model against a cycle-by-cycle array, hand
derivations and SCALE-Sim v3's own reported counts; the fold_stream mapping; import-topology.

References, all independent of vnpu's code:
- tests/systolic_reference.py moves every operand one PE per cycle (register level);
- hand derivations in the comments;
- counts SCALE-Sim v3.0.0 printed (COMPUTE_REPORT.csv, "Total Cycles") for the same layers,
  recorded from runs of `benchmarks/peers/scalesim_runner.py`. SCALE-Sim reports the index of
  the last busy cycle, one less than the number of cycles (docs/timing.md), so vnpu = SCALE-Sim + 1.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import round_chip
from systolic_reference import fold_by_fold
from vnpu.api import compile_ir
from vnpu.chip import ChipError
from vnpu.chip.scalesim_cfg import chip_from_scalesim, read_scalesim_cfg
from vnpu.cli import app
from vnpu.dtypes import DType
from vnpu.frontends.scalesim import TopologyError, read_topology
from vnpu.ir.graph import Graph, TensorType
from vnpu.isa import cost
from vnpu.topology_study import run_scalesim_study

CFG = """[general]
run_name = t

[architecture_presets]
ArrayHeight:    {r}
ArrayWidth:     {c}
IfmapSramSzkB:   64
FilterSramSzkB:  64
OfmapSramSzkB:   64
Bandwidth : 10
Dataflow : {df}

[run_presets]
InterfaceBandwidth: CALC
"""


def _fold_chip(df: str, r: int = 4, c: int = 4, scratchpad: int = 1 << 20):
    return round_chip(core__matrix__dataflow=df, core__matrix__rows=r, core__matrix__cols=c,
                      core__matrix__pipelined_folds=False, core__matrix__mapping="fold_stream",
                      core__scratchpad__bytes=scratchpad, core__vector__lanes=c)


# -- 1. closed form == cycle-by-cycle array --------------------------------------------------
SHAPES = [(10, 7, 9), (8, 8, 8), (5, 2, 3), (13, 17, 6), (1, 9, 11)]


@pytest.mark.parametrize("df", ["os", "ws", "is"])
@pytest.mark.parametrize("rc", [(4, 4), (8, 8), (4, 8), (8, 4)])
def test_closed_form_equals_cycle_level_array(df, rc):
    r, c = rc
    chip = _fold_chip(df, r, c)
    rng = np.random.default_rng(r * 10 + c)
    for m, k, n in SHAPES:
        a = rng.integers(-3, 4, (m, k)).astype(np.float64)
        b = rng.integers(-3, 4, (k, n)).astype(np.float64)
        out, cycles = fold_by_fold(a, b, r, c, df)
        np.testing.assert_array_equal(out, a @ b)
        assert cost.matmul_cycles(chip, m, k, n, DType.fp32) == cycles, (df, rc, (m, k, n))


# -- 2. hand derivations on 4x4 and 8x8 -------------------------------------------------------
# 4x4, A[10,7] @ B[7,9]; skew R + C - 2 = 6, preload P = 4 (WS/IS) or 0 (OS):
#  OS: folds ceil(10/4)*ceil(9/4) = 9, T = K = 7:   9 * (0 + 7 + 6)  = 117
#  WS: folds ceil(7/4)*ceil(9/4)  = 6, T = M = 10:  6 * (4 + 10 + 6) = 120
#  IS: folds ceil(7/4)*ceil(10/4) = 6, T = N = 9:   6 * (4 + 9 + 6)  = 114
# 8x8 (skew 14, P = 8), A[33,17] @ B[17,9]:
#  OS: folds 5*2 = 10, T = 17:  10 * (17 + 14)    = 310
#  WS: folds 3*2 = 6,  T = 33:  6 * (8 + 33 + 14) = 330
#  IS: folds 3*5 = 15, T = 9:   15 * (8 + 9 + 14) = 465
HAND = [("os", 4, (10, 7, 9), 117), ("ws", 4, (10, 7, 9), 120), ("is", 4, (10, 7, 9), 114),
        ("os", 8, (33, 17, 9), 310), ("ws", 8, (33, 17, 9), 330), ("is", 8, (33, 17, 9), 465)]


@pytest.mark.parametrize("df,size,mkn,expected", HAND)
def test_fold_stream_program_matches_hand_count(df, size, mkn, expected):
    """A whole compiled fold_stream program: matrix busy cycles = the hand count, output = A @ B."""
    m, k, n = mkn
    chip = _fold_chip(df, size, size)
    g = Graph("mm")
    a = g.add_input("a", TensorType((m, k), DType.fp32))
    b = g.add_input("b", TensorType((k, n), DType.fp32))
    g.outputs = [g.add_node("matmul", [a, b]).output]
    cm = compile_ir(g, chip, "fp32")
    rng = np.random.default_rng(1)
    av = rng.standard_normal((m, k)).astype(np.float32)
    bv = rng.standard_normal((k, n)).astype(np.float32)
    np.testing.assert_allclose(cm.run_numpy([av, bv])[0], av @ bv, rtol=1e-5, atol=1e-5)
    assert cm.last_profile.kernels[0].busy["matrix"] == expected
    assert cm.profile().kernels[0].busy["matrix"] == expected  # timing-only: the same cycles


@pytest.mark.parametrize("df", ["os", "ws", "is"])
def test_chunked_streams_cost_the_same_as_one_stream(df):
    """A scratchpad too small for a whole fold's stream splits it into chunks (continues/drains):
    the matrix cycles stay those of the unchunked closed form, the numbers stay right."""
    m, k, n = 70, 45, 38
    chip = _fold_chip(df, scratchpad=3000)
    g = Graph("mm")
    a = g.add_input("a", TensorType((m, k), DType.fp32))
    b = g.add_input("b", TensorType((k, n), DType.fp32))
    g.outputs = [g.add_node("matmul", [a, b]).output]
    cm = compile_ir(g, chip, "fp32")
    mms = [i for cs in cm.program.launches[0].cores for i in cs.queues["matrix"]]
    assert any(i.continues for i in mms), "the test must exercise chunked folds"
    rng = np.random.default_rng(2)
    av = rng.standard_normal((m, k)).astype(np.float32)
    bv = rng.standard_normal((k, n)).astype(np.float32)
    np.testing.assert_allclose(cm.run_numpy([av, bv])[0], av @ bv, rtol=1e-4, atol=1e-4)
    _, cycles = fold_by_fold(np.zeros((m, k)), np.zeros((k, n)), 4, 4, df)
    assert cm.last_profile.kernels[0].busy["matrix"] == cycles


def test_chunk_cost_terms():
    """4x4 WS, one fold streamed as 3 chunks of T = 5, 5, 2: 4 + 5 | 5 | 2 + 6 = 22 = 4 + 12 + 6."""
    chip = _fold_chip("ws")
    parts = [cost.matmul_cycles(chip, 5, 4, 4, DType.fp32, continues=False, drains=False),
             cost.matmul_cycles(chip, 5, 4, 4, DType.fp32, continues=True, drains=False),
             cost.matmul_cycles(chip, 2, 4, 4, DType.fp32, continues=True, drains=True)]
    assert parts == [9, 5, 8]
    assert sum(parts) == cost.matmul_cycles(chip, 12, 4, 4, DType.fp32) == 22
    with pytest.raises(ValueError, match="exactly one fold"):
        cost.matmul_cycles(chip, 5, 8, 4, DType.fp32, continues=True)


# -- 3. against SCALE-Sim v3's own reports ------------------------------------------------------
# GEMM layers (M, N, K) on 8x8 arrays; SCALE-Sim v3.0.0 "Total Cycles" per dataflow, as printed.
SCALESIM_8X8 = {
    "os": {(16, 16, 16): 119, (20, 13, 7): 125, (8, 8, 8): 21, (5, 3, 2): 15, (33, 9, 17): 309, (64, 10, 3): 271,
           (7, 40, 50): 319},
    "ws": {(16, 16, 16): 151, (20, 13, 7): 83, (8, 8, 8): 29, (5, 3, 2): 26, (33, 9, 17): 329, (64, 10, 3): 171,
           (7, 40, 50): 1014},
    "is": {(16, 16, 16): 151, (20, 13, 7): 104, (8, 8, 8): 29, (5, 3, 2): 24, (33, 9, 17): 464, (64, 10, 3): 255,
           (7, 40, 50): 433},
}


@pytest.mark.parametrize("df", ["os", "ws", "is"])
def test_import_topology_matches_scalesim_reports(tmp_path, df):
    """Hand check of SCALE-Sim's off-by-one on 8x8 OS, M = N = K = 8: one fold; the last PE
    (7,7) gets its first operands at cycle 7 + 7 = 14 and its last at 14 + 8 - 1 = 21, so the
    fold busies cycles 0..21: 22 cycles. SCALE-Sim prints 21, the last cycle's index."""
    shapes = list(SCALESIM_8X8[df])
    (tmp_path / "t.csv").write_text("Layer,M,N,K,\n" + "".join(f"l{i},{m},{n},{k},\n" for i, (m, n, k) in enumerate(shapes)))
    (tmp_path / "a.cfg").write_text(CFG.format(r=8, c=8, df=df))
    _, rows = run_scalesim_study(tmp_path / "t.csv", tmp_path / "a.cfg", gemm=True)
    for row, shape in zip(rows, shapes):
        assert row.compute_cycles == SCALESIM_8X8[df][shape] + 1, (df, shape)
    if df == "os":
        assert rows[shapes.index((8, 8, 8))].compute_cycles == 22


def test_conv_topology_uses_scalesims_layer_dims(tmp_path):
    """ResNet-18's conv1 as SCALE-Sim writes it: 230x230x3 ifmap (padding included), 7x7, 64
    filters, stride 2. SCALE-Sim's ofmap is ceil((230 - 7 + 2) / 2) = 113 per side (a real
    conv has 112): Sr = 113^2 = 12769 pixels, T = 7*7*3 = 147, Sc = 64. 32x32 OS:
    folds ceil(12769/32) * ceil(64/32) = 400 * 2 = 800; 800 * (147 + 62) = 167200 cycles
    (SCALE-Sim printed 167199)."""
    (tmp_path / "r.csv").write_text("Layer name,IFMAP Height,IFMAP Width,Filter Height,Filter Width,Channels,Num Filter,"
                                    "Strides,\nconv1,230,230,7,7,3,64,2,\n")
    (tmp_path / "a.cfg").write_text(CFG.format(r=32, c=32, df="os"))
    _, rows = run_scalesim_study(tmp_path / "r.csv", tmp_path / "a.cfg")
    (row,) = rows
    assert (row.sr, row.sc, row.t, row.folds) == (12769, 64, 147, 800)
    assert row.compute_cycles == 167200
    assert row.total_cycles >= row.compute_cycles


def test_depthwise_layers_split_per_channel(tmp_path):
    (tmp_path / "d.csv").write_text("Layer name,a,b,c,d,e,f,g,\nDP_conv,10,10,3,3,4,1,1,\n")
    layers = read_topology(tmp_path / "d.csv")
    assert [l.name for l in layers] == [f"DP_convChannel_{i}" for i in range(4)]
    assert all((l.m, l.n, l.k) == (64, 1, 9) for l in layers)


# -- 4. the CLI and its errors ----------------------------------------------------------------
def test_cli_import_topology_json(tmp_path):
    (tmp_path / "g.csv").write_text("Layer,M,N,K,\nfc1,20,13,7,\nfc2,33,9,17,\n")
    (tmp_path / "a.cfg").write_text(CFG.format(r=8, c=8, df="ws"))
    out = tmp_path / "o.json"
    res = CliRunner().invoke(app, ["import-topology", str(tmp_path / "g.csv"), "--scale-config", str(tmp_path / "a.cfg"),
                                   "--gemm", "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())
    assert [r["layer"] for r in rows] == ["fc1", "fc2"]
    # WS 8x8: fc1 folds ceil(7/8)*ceil(13/8) = 2, 2 * (8 + 20 + 14) = 84; fc2 folds 3*2 = 6, 6 * (8 + 33 + 14) = 330
    assert [r["compute_cycles"] for r in rows] == [84, 330]
    assert all(r["total_cycles"] >= r["compute_cycles"] for r in rows)
    assert "fc2" in res.output


@pytest.mark.parametrize("csv_text,cfg_patch,gemm,needle", [
    ("Layer,M,N,K,\nfc1,20,x,7,\n", None, True, "row 2: `N` must be a positive integer"),
    ("Layer,M,N,K,\nfc1,20,13,7,\n", None, False, "pass --gemm"),
    ("Layer,M,N,K,\n", None, True, "has no layers"),
    ("Layer,M,N,K,\nfc1,20,13,7,\n", ("Dataflow : ws", "Dataflow : xs"), True, "Dataflow must be os, ws or is"),
    ("Layer,M,N,K,\nfc1,20,13,7,\n", ("ArrayHeight:    8", "ArrayHeight:    0"), True, "`ArrayHeight` must be a positive"),
    ("Layer,M,N,K,\nfc1,20,13,7,\n", ("ArrayWidth:     8\n", ""), True, "missing `ArrayWidth`"),
])
def test_cli_import_topology_bad_input(tmp_path, csv_text, cfg_patch, gemm, needle):
    (tmp_path / "t.csv").write_text(csv_text)
    cfg = CFG.format(r=8, c=8, df="ws")
    if cfg_patch:
        cfg = cfg.replace(*cfg_patch)
    (tmp_path / "a.cfg").write_text(cfg)
    args = ["import-topology", str(tmp_path / "t.csv"), "--scale-config", str(tmp_path / "a.cfg")] + (["--gemm"] if gemm else [])
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2
    assert needle in res.output
    assert "Traceback" not in res.output


def test_cfg_translation():
    """The .cfg's figures land where docs/timing.md says: words are fp32 (4 bytes)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "a.cfg"
        p.write_text(CFG.format(r=16, c=8, df="is"))
        chip = chip_from_scalesim(read_scalesim_cfg(p))
        with pytest.raises(ChipError, match="does not exist"):
            read_scalesim_cfg(Path(d) / "missing.cfg")
    mx = chip.core.matrix
    assert (mx.rows, mx.cols, mx.dataflow, mx.pipelined_folds, mx.mapping) == (16, 8, "is", False, "fold_stream")
    assert chip.core.scratchpad.bytes == 3 * 64 * 1024 * 4
    assert chip.hbm_bytes_per_cycle == 40.0  # 10 words/cycle
    assert math.isclose(chip.clock_hz, 1e9)
    with pytest.raises(TopologyError, match="does not exist"):
        read_topology("/nonexistent/t.csv")
