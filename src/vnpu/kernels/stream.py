"""Streaming vector kernels: load tiles, compute on the vector engine, store, double-buffered.

Elementwise chains, reductions, softmax, norms and pooling all have this shape; each
supplies its tiles and a `compute` that emits the vector instructions for one tile.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable

from vnpu.dtypes import DType
from vnpu.isa.instructions import DmaLoad, DmaStore, HbmRef, SramRef
from vnpu.isa.program import KernelLaunch
from vnpu.kernels.base import CoreBuilder, KernelContext, sub_ref


@dataclass
class StreamTile:
    loads: list[tuple[HbmRef, tuple[int, ...]]]  # source view, SRAM tile shape
    store: HbmRef
    out_shape: tuple[int, ...]
    load_bytes: list[int] = field(default_factory=list)  # HBM traffic overrides (-1: footprint)
    info: object = None  # per-tile data for the compute emitter


# compute(builder, loaded tiles, out tile, tile, waits, signal): emits vector instructions
Compute = Callable[[CoreBuilder, list[SramRef], SramRef, StreamTile, tuple, int], None]
Setup = Callable[[CoreBuilder], None]


def coalesce(shape: tuple[int, ...], refs: list[HbmRef]) -> tuple[tuple[int, ...], list[HbmRef]]:
    """Merges adjacent dims that are contiguous in every view (fewer, larger DMA runs)."""
    dims = [[d, [r.strides[i] for r in refs]] for i, d in enumerate(shape) if d != 1]
    if not dims:
        return (1,), [HbmRef(r.offset, r.dtype, (1,), (1,)) for r in refs]
    out = [dims[0]]
    for d, st in dims[1:]:
        pd, pst = out[-1]
        if all(ps == s * d for ps, s in zip(pst, st)):
            out[-1] = [pd * d, st]
        else:
            out.append([d, st])
    new_shape = tuple(d for d, _ in out)
    return new_shape, [HbmRef(r.offset, r.dtype, new_shape, tuple(st[i] for _, st in out)) for i, r in enumerate(refs)]


def box_tiles(shape: tuple[int, ...], max_elems: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Row-major boxes covering `shape`, each at most max_elems elements (innermost dims whole first)."""
    max_elems = max(1, max_elems)
    tile = [1] * len(shape)
    prod = 1
    for i in range(len(shape) - 1, -1, -1):
        if prod * shape[i] <= max_elems:
            tile[i] = shape[i]
            prod *= shape[i]
        else:
            tile[i] = max(1, max_elems // prod)
            break
    ranges = [range(0, d, t) for d, t in zip(shape, tile)]
    return [(starts, tuple(min(t, d - s) for s, t, d in zip(starts, tile, shape)))
            for starts in itertools.product(*ranges)]


def sub(ref: HbmRef, starts: tuple[int, ...], sizes: tuple[int, ...]) -> HbmRef:
    off = ref.offset + sum(s * st for s, st in zip(starts, ref.strides)) * ref.dtype.itemsize
    return HbmRef(off, ref.dtype, tuple(sizes), ref.strides)


def tile_budget(ctx: KernelContext, bytes_per_elem: float, total: int, min_tile: int = 2048) -> int:
    """Elements per tile: what fits the scratchpad, but small enough to give every core work."""
    cap = int(ctx.chip.core.scratchpad.bytes * 0.9 / max(bytes_per_elem, 1))
    spread = math.ceil(total / (2 * ctx.chip.cores))
    return max(1, min(cap, max(min_tile, spread)))


def emit_streaming(ctx: KernelContext, tiles: list[StreamTile], compute: Compute, setup: Setup | None,
                   kind: str, ops: list[str], flops: int, min_bytes: int, out_dtype: DType | None = None) -> KernelLaunch:
    chip = ctx.chip
    out_dt = out_dtype or ctx.outputs[0].dtype
    per_core: list[list[StreamTile]] = [[] for _ in range(chip.cores)]
    # contiguous blocks of tiles per core keep each core's HBM accesses sequential
    per = math.ceil(len(tiles) / chip.cores) if tiles else 0
    for i, t in enumerate(tiles):
        per_core[min(i // max(per, 1), chip.cores - 1)].append(t)
    streams = []
    for core_tiles in per_core:
        b = CoreBuilder(chip)
        if not core_tiles:
            streams.append(b.finish())
            continue
        n_loads = len(core_tiles[0].loads)
        load_max = [max(core_tiles, key=lambda t: math.prod(t.loads[i][1])).loads[i][1] for i in range(n_loads)]
        out_max = max((t.out_shape for t in core_tiles), key=math.prod)
        bufs = [[b.alloc(core_tiles[0].loads[i][0].dtype, load_max[i]) for i in range(n_loads)] for _ in range(2)]
        outb = [b.alloc(out_dt, out_max) for _ in range(2)]
        if setup is not None:
            setup(b)
        LOADED, COMPUTED, STORED = b.sem(), b.sem(), b.sem()
        for t, tile in enumerate(core_tiles):
            s = t % 2
            loaded = []
            for li, (ref, shape) in enumerate(tile.loads):
                dst = sub_ref(bufs[s][li], shape)
                w = ((COMPUTED, t - 1),) if t >= 2 and li == 0 else ()
                nb = tile.load_bytes[li] if li < len(tile.load_bytes) else -1
                b.emit(DmaLoad(ref, dst, nb, waits=w, signal=LOADED if li == n_loads - 1 else -1))
                loaded.append(dst)
            vw = []
            if n_loads:
                vw.append((LOADED, t + 1))
            if t >= 2:
                vw.append((STORED, t - 1))
            out_t = sub_ref(outb[s], tile.out_shape)
            compute(b, loaded, out_t, tile, tuple(vw), COMPUTED)
            b.emit(DmaStore(out_t, tile.store, waits=((COMPUTED, t + 1),), signal=STORED))
        streams.append(b.finish())
    return KernelLaunch(ctx.node.name, kind, ops, streams, flops, min_bytes, ctx.dtype)
