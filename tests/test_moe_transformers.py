"""Transformers' own MoE experts path on the chip: its grouped_mm (transformers::grouped_mm_fallback),
histc and the inverse-permutation index_put, each against PyTorch eager, and whole Mixtral /
Qwen3-MoE models built from their transformers configs (the library's experts implementation,
not vnpu's plugged-in one) against eager."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import vnpu

transformers_moe = pytest.importorskip("transformers.integrations.moe")  # registers the custom op


class GroupedMM(torch.nn.Module):
    def __init__(self, experts: int, k: int, n: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(experts, k, n, generator=torch.Generator().manual_seed(1)))

    def forward(self, x: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        return torch.ops.transformers.grouped_mm_fallback(x, self.w, offs=offs)


def _offsets(rng: np.random.Generator, rows: int, experts: int, sentinels: int = 0) -> torch.Tensor:
    cuts = np.sort(rng.integers(0, rows - sentinels + 1, experts - 1))
    return torch.tensor(np.append(cuts, rows - sentinels), dtype=torch.int32)


@pytest.mark.parametrize("rows,experts,k,n", [(10, 4, 24, 40), (37, 8, 64, 33), (5, 16, 16, 16), (130, 3, 8, 300)])
def test_grouped_mm_matches_the_reference_loop(rows, experts, k, n):
    """Random group sizes (empty groups, one group holding everything, sentinel rows past the
    last offset) through one compiled program: the offsets are runtime inputs."""
    m = GroupedMM(experts, k, n).eval()
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(2))
    rng = np.random.default_rng(rows)
    cm = vnpu.compile(m, (x, _offsets(rng, rows, experts)), strict=True)
    cases = [_offsets(rng, rows, experts) for _ in range(3)]
    cases += [torch.tensor([rows] * experts, dtype=torch.int32),  # all rows in expert 0
              torch.tensor([0] * (experts - 1) + [rows], dtype=torch.int32),  # all in the last
              _offsets(rng, rows, experts, sentinels=min(3, rows - 1))]  # rows past offs[-1] stay zero
    for offs in cases:
        with torch.no_grad():
            ref = m(x, offs)
        got = cm(x, offs)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4 * ref.abs().max().item() + 1e-6)


def test_grouped_mm_weight_traffic_is_one_expert_per_schedule_tile():
    """The kernel gathers weights by each tile's runtime expert id: one expert's weights per tile
    of the static schedule (ir.ops.moe_tiles: at most min(E, S) tiles of one row here), not all
    experts' weights per row as a dense lowering would read. 8 rows over 16 experts: 8 tiles."""
    from vnpu.ir.ops import moe_tiles

    experts, k, n, rows = 16, 128, 256, 8
    m = GroupedMM(experts, k, n).eval()
    x = torch.randn(rows, k)
    offs = torch.tensor([rows] * experts, dtype=torch.int32)
    cm = vnpu.compile(m, (x, offs), strict=True)
    cm(x, offs)
    mm = [kp for kp in cm.last_profile.kernels if "moe_matmul" in kp.ops]
    assert len(mm) == 1
    one_expert = k * n * 4
    tiles = moe_tiles(rows, experts, 1)
    assert tiles == 8
    io = 32 << 10  # the gathered rows (4 KiB) and the tiles' tables, each under a 64-byte burst
    assert tiles * one_expert <= mm[0].hbm_read_bytes <= tiles * one_expert + io, (mm[0].hbm_read_bytes, one_expert)
    assert mm[0].hbm_read_bytes < experts * one_expert


class Histc(torch.nn.Module):
    def __init__(self, bins: int, lo: float, hi: float) -> None:
        super().__init__()
        self.bins, self.lo, self.hi = bins, lo, hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.histc(x, bins=self.bins, min=self.lo, max=self.hi)


@pytest.mark.parametrize("bins,lo,hi", [(8, 0, 7), (5, -1.5, 2.5), (13, 0.25, 3.0)])
def test_histc_matches_torch(bins, lo, hi):
    g = torch.Generator().manual_seed(bins)
    x = torch.cat([torch.randn(200, generator=g) * 3, torch.tensor([lo, hi, lo - 1e-3, hi + 1e-3])])
    x = torch.cat([x, torch.randint(0, bins, (50,), generator=g).float()])  # integer-valued, as MoE ids are
    m = Histc(bins, lo, hi)
    cm = vnpu.compile(m, (x,), strict=True)
    torch.testing.assert_close(cm(x), m(x), rtol=0, atol=0)


class InversePermutation(torch.nn.Module):
    def forward(self, perm: torch.Tensor) -> torch.Tensor:
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(perm.size(0))
        return inv


class IndexPutOnInput(torch.nn.Module):
    """index_put on a runtime input and on a view, twice in a row, and the input read again afterwards."""

    def forward(self, x: torch.Tensor, idx: torch.Tensor, v: torch.Tensor, w: torch.Tensor):
        y = x.index_put((idx,), v)
        y = y.index_put((idx[:2],), v[:2] * 2)
        z = x.t().index_put((idx[2:] - 2,), w)  # into a transposed view of the input
        return y + 1, z * x.sum()


def test_index_put_on_any_tensor():
    perm = torch.randperm(37, generator=torch.Generator().manual_seed(3))
    cm = vnpu.compile(InversePermutation(), (perm,), strict=True)
    for _ in range(3):
        p = torch.randperm(37)
        torch.testing.assert_close(cm(p), InversePermutation()(p), rtol=0, atol=0)
    x, idx, v, w = torch.randn(6, 4), torch.tensor([4, 1, 2, 3]), torch.randn(4, 4), torch.randn(2, 6)
    m = IndexPutOnInput()
    cm = vnpu.compile(m, (x, idx, v, w), strict=True)
    for got, ref in zip(cm(x, idx, v, w), m(x, idx, v, w)):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    x2 = torch.randn(6, 4)
    for got, ref in zip(cm(x2, idx, v, w), m(x2, idx, v, w)):  # inputs are not written in place
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["mixtral", "qwen3-moe"])
def test_transformers_moe_models_run_strict_and_match_eager(name):
    """The whole decoder, in transformers' own experts implementation (sort, histc, cumsum,
    grouped_mm, inverse permutation): every op on the chip, logits equal to eager's."""
    from vnpu.workloads.coverage import coverage_model

    model, inputs = coverage_model(name).build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = vnpu.compile(model, inputs, strict=True)
    assert any("moe_matmul" in launch.ops for launch in cm.program.launches if hasattr(launch, "ops"))
    with torch.no_grad():
        ref = model(*inputs)
    got = cm(*inputs)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-4 * ref.abs().max().item())
