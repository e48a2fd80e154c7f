"""Rerun a SCALE-Sim study on vnpu: topology CSV + architecture .cfg -> per-layer cycles.

Each layer is compiled for the chip translated from the .cfg (chip/scalesim_cfg.py) and
simulated in timing-only mode: the event-driven simulator over the fold_stream program,
each MatMul priced by the systolic closed form. Layers with the same shape are simulated
once.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from vnpu.chip.scalesim_cfg import chip_from_scalesim, read_scalesim_cfg
from vnpu.chip.schema import Chip
from vnpu.compiler.lower import compile_graph
from vnpu.dtypes import DType
from vnpu.frontends.scalesim import TopologyLayer, layer_graph, read_topology
from vnpu.sim.device import Device


@dataclass(frozen=True)
class LayerTiming:
    layer: str
    kind: str
    m: int
    n: int
    k: int
    sr: int  # SCALE-Sim's spatial rows / cols and temporal length for the dataflow
    sc: int
    t: int
    folds: int
    compute_cycles: int  # the matrix engine's busy cycles
    total_cycles: int  # with memory stalls at the chip's bandwidth
    stall_cycles: int
    mapping_efficiency: float  # share of the PEs a fold maps, averaged over folds (SCALE-Sim's definition)
    compute_util: float  # MACs / (R * C * compute_cycles)
    hbm_bytes: int

    def as_dict(self) -> dict:
        return asdict(self)


def spatio_temporal(layer: TopologyLayer, dataflow: str) -> tuple[int, int, int]:
    """SCALE-Sim's (Sr, Sc, T) for a layer under a dataflow."""
    if dataflow == "os":
        return layer.m, layer.n, layer.k
    if dataflow == "ws":
        return layer.k, layer.n, layer.m
    return layer.k, layer.m, layer.n


def time_layer(layer: TopologyLayer, chip: Chip) -> LayerTiming:
    program, _ = compile_graph(layer_graph(layer), chip, DType.fp32)
    prof = Device(chip, program.hbm_bytes, functional=False).run(program)
    compute = int(round(sum(kp.busy["matrix"] for kp in prof.kernels)))
    total = int(round(prof.cycles))
    mx = chip.core.matrix
    sr, sc, t = spatio_temporal(layer, mx.dataflow)
    folds = math.ceil(sr / mx.rows) * math.ceil(sc / mx.cols)
    return LayerTiming(
        layer=layer.name, kind=layer.kind, m=layer.m, n=layer.n, k=layer.k, sr=sr, sc=sc, t=t, folds=folds,
        compute_cycles=compute, total_cycles=total, stall_cycles=max(total - compute, 0),
        mapping_efficiency=sr * sc / (folds * mx.rows * mx.cols),
        compute_util=layer.macs / (mx.rows * mx.cols * compute) if compute else 0.0,
        hbm_bytes=int(prof.hbm_read_bytes + prof.hbm_write_bytes),
    )


def run_topology(layers: list[TopologyLayer], chip: Chip) -> list[LayerTiming]:
    cache: dict[tuple, LayerTiming] = {}
    out = []
    for layer in layers:
        key = (layer.m, layer.n, layer.k, layer.im2col)
        if key not in cache:
            cache[key] = time_layer(layer, chip)
        out.append(replace(cache[key], layer=layer.name, kind=layer.kind))
    return out


def run_scalesim_study(topology: str | Path, config: str | Path, gemm: bool = False,
                       bandwidth_words: float | None = None) -> tuple[Chip, list[LayerTiming]]:
    """`vnpu import-topology` without the printing."""
    arch = read_scalesim_cfg(config)
    chip = chip_from_scalesim(arch, bandwidth_words)
    return chip, run_topology(read_topology(topology, gemm), chip)


__all__ = ["LayerTiming", "run_topology", "run_scalesim_study", "time_layer", "spatio_temporal"]
