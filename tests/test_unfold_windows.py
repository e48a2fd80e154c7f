"""Tensor.unfold (sliding windows as a new last axis; PatchTST's patching) on the chip against eager."""
from __future__ import annotations

import pytest
import torch

import vnpu


class Unfold(torch.nn.Module):
    def __init__(self, dim: int, size: int, step: int) -> None:
        super().__init__()
        self.args = (dim, size, step)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unfold(*self.args) * 2


@pytest.mark.parametrize("dim,size,step", [(1, 8, 8), (1, 5, 3), (2, 2, 1), (-1, 5, 5), (0, 1, 2), (1, 33, 1)])
def test_unfold_matches_eager(dim, size, step):
    x = torch.randn(2, 33, 5, generator=torch.Generator().manual_seed(size))
    m = Unfold(dim, size, step)
    cm = vnpu.compile(m, (x,), strict=True)
    torch.testing.assert_close(cm(x), m(x), rtol=0, atol=0)
