"""SCALE-Sim topology files (.csv) -> one IR graph per layer.

GEMM topologies (`--gemm`): `Layer, M, N, K,` per row, out[M,N] = A[M,K] @ B[K,N].
Conv topologies: `Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width,
Channels, Num Filter, Strides,` per row; SCALE-Sim has no padding (the ifmap size includes
it), ofmap = ceil((ifmap - filter + stride) / stride) as SCALE-Sim computes it, batch 1. A layer whose name contains "DP" is
depthwise: SCALE-Sim runs it as `Channels` single-channel layers named `<name>Channel_<i>`,
and so do we. An optional trailing `N:M` sparsity column is accepted and must be 1:1.

A conv layer becomes the GEMM SCALE-Sim maps it to: rows = ofmap pixels (Sr for OS), the
reduction = filter_h * filter_w * channels (the window), cols = filters. Its A operand is
the im2col matrix; the node's `im2col` attribute lets the kernel charge the ifmap bytes an
implicit-im2col address generator would read (see kernels/fold_stream.py).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from vnpu.dtypes import DType
from vnpu.ir.graph import Graph, TensorType


MAX_LAYERS = 100_000  # layers of one topology, depthwise channels counted one by one


class TopologyError(ValueError):
    """A topology file that cannot be read; the message names the file, row and column."""


@dataclass(frozen=True)
class TopologyLayer:
    name: str
    kind: str  # "gemm" | "conv"
    m: int  # GEMM rows (ofmap pixels for conv)
    n: int  # GEMM cols (filters)
    k: int  # reduction (window size for conv)
    im2col: tuple[int, int, int, int, int, int] | None = None  # (ifmap_h, ifmap_w, channels, fh, fw, stride)

    @property
    def macs(self) -> int:
        return self.m * self.n * self.k


_CONV_COLS = ("IFMAP Height", "IFMAP Width", "Filter Height", "Filter Width", "Channels", "Num Filter", "Strides")
_GEMM_COLS = ("M", "N", "K")


def _int(path: Path, row_no: int, col: str, raw: str) -> int:
    try:
        v = int(raw.strip())
    except ValueError:
        raise TopologyError(f"{path}, row {row_no}: `{col}` must be a positive integer (got {raw.strip()!r})") from None
    if v <= 0:
        raise TopologyError(f"{path}, row {row_no}: `{col}` must be a positive integer (got {v})")
    return v


def _check_sparsity(path: Path, row_no: int, cells: list[str], at: int) -> None:
    if len(cells) > at and cells[at].strip():
        ratio = cells[at].strip()
        if ratio.replace(" ", "") not in ("1:1",):
            raise TopologyError(f"{path}, row {row_no}: sparsity {ratio!r} is not supported (dense 1:1 only)")


def read_topology(path: str | Path, gemm: bool = False) -> list[TopologyLayer]:
    """All layers of a SCALE-Sim topology CSV, in file order."""
    p = Path(path)
    if not p.is_file():
        raise TopologyError(f"topology file {p} does not exist")
    try:
        rows = list(csv.reader(p.read_text().splitlines()))
    except (csv.Error, UnicodeDecodeError) as e:
        raise TopologyError(f"topology file {p} is not a readable CSV: {e}") from None
    need = _GEMM_COLS if gemm else _CONV_COLS
    layers: list[TopologyLayer] = []
    for row_no, cells in enumerate(rows, start=1):
        if row_no == 1 or not any(c.strip() for c in cells):
            continue  # header (SCALE-Sim always has one) or blank line
        if cells and not cells[-1].strip():
            cells = cells[:-1]  # SCALE-Sim rows end with a comma
        if len(cells) < 1 + len(need):
            kind = "GEMM (Layer, M, N, K)" if gemm else "conv (Layer, " + ", ".join(_CONV_COLS) + ")"
            hint = "" if gemm else "; for an M, N, K file pass --gemm"
            raise TopologyError(f"{p}, row {row_no}: expected {1 + len(need)} columns for a {kind} topology, "
                                f"got {len(cells)}{hint}")
        name = cells[0].strip() or f"layer{row_no - 1}"
        vals = [_int(p, row_no, col, raw) for col, raw in zip(need, cells[1:1 + len(need)])]
        _check_sparsity(p, row_no, cells, 1 + len(need))
        if gemm:
            m, n, k = vals
            layers.append(TopologyLayer(name, "gemm", m, n, k))
            continue
        ih, iw, fh, fw, ch, nf, s = vals
        if fh > ih or fw > iw:
            raise TopologyError(f"{p}, row {row_no}: filter {fh}x{fw} is larger than the ifmap {ih}x{iw}")
        # SCALE-Sim's ofmap size: ceil((ifmap - filter + stride) / stride). When (ifmap - filter) is
        # not a multiple of the stride this counts one more (partial) window per row and column
        # than a real convolution's floor((ifmap - filter) / stride) + 1; a rerun of a SCALE-Sim
        # study must simulate the layer SCALE-Sim simulates.
        oh, ow = -(-(ih - fh + s) // s), -(-(iw - fw + s) // s)
        if "DP" in name:
            if len(layers) + ch > MAX_LAYERS:  # before expanding: one layer per channel
                raise TopologyError(f"{p}, row {row_no}: depthwise layer {name} has {ch:,} channels, one layer each; "
                                    f"a topology may have at most {MAX_LAYERS:,} layers")
            for c in range(ch):
                layers.append(TopologyLayer(f"{name}Channel_{c}", "conv", oh * ow, nf, fh * fw, (ih, iw, 1, fh, fw, s)))
        else:
            layers.append(TopologyLayer(name, "conv", oh * ow, nf, fh * fw * ch, (ih, iw, ch, fh, fw, s)))
    if not layers:
        raise TopologyError(f"topology file {p} has no layers (a header row, then one row per layer)")
    return layers


def layer_graph(layer: TopologyLayer, dtype: DType = DType.fp32) -> Graph:
    """out[M,N] = A[M,K] @ B[K,N] with A and B as inputs (timing studies need no weight data)."""
    g = Graph(layer.name)
    a = g.add_input("a", TensorType((layer.m, layer.k), dtype))
    b = g.add_input("b", TensorType((layer.k, layer.n), dtype))
    attrs = {"im2col": layer.im2col} if layer.im2col is not None else {}
    g.outputs = [g.add_node("matmul", [a, b], attrs, name=layer.name).outputs[0]]
    return g


__all__ = ["TopologyLayer", "TopologyError", "read_topology", "layer_graph", "MAX_LAYERS"]
