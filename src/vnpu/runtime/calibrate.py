"""Calibration for static (per-tensor) quantization: the activation range of every matmul the
scheme quantizes, measured by running the unquantized program on the chip over example batches."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from vnpu.chip.schema import Chip
from vnpu.compiler import compile_graph
from vnpu.compiler.quantize import QuantError, calibration_targets
from vnpu.dtypes import DType, torch_to_numpy
from vnpu.ir.graph import Graph

METHODS = ("minmax", "percentile")


def _as_arrays(batch: Any) -> list[np.ndarray]:
    items = list(batch) if isinstance(batch, (tuple, list)) else [batch]
    return [torch_to_numpy(a) if type(a).__module__.startswith("torch") else np.asarray(a) for a in items]


def activation_ranges(graph: Graph, chip: Chip, batches: Sequence[Any], method: str = "minmax",
                      percentile: float = 99.99) -> dict[str, float]:
    """activation_stats' per-tensor ranges."""
    return activation_stats(graph, chip, batches, method, percentile)[0]


def activation_stats(graph: Graph, chip: Chip, batches: Sequence[Any], method: str = "minmax",
                     percentile: float = 99.99) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Per activation a quantizable matmul / conv reads (by value name): the max |activation| over the batches ("minmax"),
    or its `percentile`-th percentile of |activation| per batch, maximized over batches
    ("percentile": clips rare outliers); and per activation its max |x| per channel (last dim,
    what SmoothQuant migrates). Each batch is the model's inputs, as for a call."""
    from vnpu.runtime.compiled import CompiledModel, ModelInfo

    if method not in METHODS:
        raise QuantError(f"unknown calibration method {method!r}; known: {', '.join(METHODS)}")
    if not batches:
        raise QuantError("calibration needs at least one example batch (a tuple of the model's inputs)")
    want = [tuple(v.shape) for v in graph.inputs]
    arrays = [_as_arrays(b) for b in batches]
    for i, b in enumerate(arrays):  # checked before anything is compiled or run
        got = [tuple(a.shape) for a in b]
        if got != want:
            raise QuantError(f"calibration batch {i} has input shapes {got}; the model was compiled for {want}")
    from vnpu.compiler.lower import prequant_passes

    g = graph.clone()
    prequant_passes(g, DType.fp32)  # the activations as the quantization pass will see them
    targets = calibration_targets(g)
    if not targets:
        return {}, {}
    g.outputs = list(g.outputs) + [v for _, v in targets]
    program, _ = compile_graph(g, chip, DType.fp32)
    cm = CompiledModel(program, chip, ModelInfo(graph.name + "_calibration", DType.fp32, want,
                                                [v.dtype for v in g.outputs]))
    n_user = len(graph.outputs)
    ranges: dict[str, float] = {}
    channels: dict[str, np.ndarray] = {}
    for b in arrays:
        outs = cm.run_numpy(b)[n_user:]
        for (name, _), a in zip(targets, outs):
            mag = np.abs(np.asarray(a, np.float32))
            v = float(mag.max()) if method == "minmax" or mag.size == 0 else float(np.percentile(mag, percentile))
            ranges[name] = max(ranges.get(name, 0.0), v)
            ch = mag.reshape(-1, mag.shape[-1]).max(0) if mag.size else np.zeros(mag.shape[-1:], np.float32)
            channels[name] = np.maximum(channels[name], ch) if name in channels else ch
    return ranges, channels
