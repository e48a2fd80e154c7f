"""Shared fixtures: small custom chips with round numbers, built from the vnpu-v1 preset.

`make_chip({"cores": 1, "core.matrix.rows": 4, ...})` deep-copies the vnpu-v1 preset as
a dict, overrides the dotted keys and validates it with `vnpu.chip.chip_from_dict`, so the
hand derivations in the tests can use simple figures (1 GHz clock, B/cycle bandwidths...).
"""
from __future__ import annotations

import copy
import tomllib
from typing import Any, Callable

import pytest
import torch

from vnpu.chip import PRESETS_DIR, chip_from_dict
from vnpu.chip.schema import Chip


def preset_dict(name: str = "vnpu-v1") -> dict:
    return tomllib.loads((PRESETS_DIR / f"{name}.toml").read_text())


def chip_dict(overrides: dict[str, Any] | None = None, base: str = "vnpu-v1") -> dict:
    """The preset's dict with dotted-key overrides applied (a value of ... deletes the key)."""
    d = copy.deepcopy(preset_dict(base))
    for key, val in (overrides or {}).items():
        *path, last = key.split(".")
        node = d
        for p in path:
            node = node.setdefault(p, {})
        if val is ...:
            node.pop(last, None)
        else:
            node[last] = val
    return d


def make_chip(overrides: dict[str, Any] | None = None, base: str = "vnpu-v1") -> Chip:
    return chip_from_dict(chip_dict(overrides, base), "<test chip>")


# A 1 GHz chip with round figures: 1 GB/s == 1 byte/cycle, 1 ns == 1 cycle.
ROUND = {
    "name": "test-round",
    "clock_ghz": 1.0,
    "cores": 1,
    "kernel_launch_us": 0.0,
    "kernel_barrier_us": ...,  # serial dispatch: the whole launch between kernels
    "l2.weight_prefetch_bytes": 0,  # no cross-kernel weight prefetch
    "core.matrix.rows": 4,
    "core.matrix.cols": 4,
    "core.matrix.dataflow": "ws",
    "core.matrix.pipelined_folds": True,
    "core.matrix.rate": {"bf16": 1.0, "fp32": 1.0},
    "energy.pj_per_mac": {"bf16": 0.25, "fp32": 1.0},
    "core.dma_bytes_per_cycle": 8,
    "hbm.bandwidth_gbs": 8.0,
    "hbm.latency_ns": 10.0,
    "hbm.burst_bytes": 64,
}


def round_chip(**overrides: Any) -> Chip:
    """ROUND plus overrides; keyword names use `__` for dots (core__matrix__rows=8)."""
    o = dict(ROUND)
    o.update({k.replace("__", "."): v for k, v in overrides.items()})
    return make_chip(o)


@pytest.fixture
def chip_factory() -> Callable[..., Chip]:
    return make_chip


@pytest.fixture
def round_chip_factory() -> Callable[..., Chip]:
    return round_chip


class TinyMLP(torch.nn.Module):
    """Small enough to simulate functionally in well under a second."""

    def __init__(self, d_in: int = 64, d_hidden: int = 128, d_out: int = 16):
        super().__init__()
        self.fc1 = torch.nn.Linear(d_in, d_hidden)
        self.fc2 = torch.nn.Linear(d_hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture
def tiny_mlp() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return TinyMLP().eval(), torch.randn(8, 64)
