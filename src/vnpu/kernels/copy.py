"""Data movement: copy (materialize a strided/broadcast view), pad, concat.

All three are DMA programs: tiles go HBM -> scratchpad -> HBM through double-buffered
scratchpad tiles (the DMA-in queue loads tile t+1 while the DMA-out queue stores tile t).
Pad borders are stored from one scratchpad buffer filled once by a vector `fill`.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from vnpu.chip.schema import Chip
from vnpu.isa.instructions import DmaLoad, DmaStore, HbmRef, VecOp
from vnpu.isa.program import KernelLaunch
from vnpu.kernels.base import CoreBuilder, KernelContext, kernel, sub_ref
from vnpu.kernels.stream import box_tiles, coalesce, sub
from vnpu.kernels.views import box


def read_traffic(chip: Chip, ref: HbmRef) -> int:
    """HBM bytes a DMA load of `ref` moves when it reads the distinct bytes of the view in
    memory order (the engine permutes and broadcasts on the way into the scratchpad):
    the footprint, with a whole burst per contiguous run shorter than a burst."""
    return _read_traffic(chip.hbm.burst_bytes, ref.dtype.itemsize, ref.shape, ref.strides)


@functools.lru_cache(maxsize=65536)
def _read_traffic(burst: int, itemsize: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> int:
    dims = sorted(((d, abs(s)) for d, s in zip(shape, strides) if d != 1 and s != 0), key=lambda t: -t[1])
    numel = math.prod(d for d, _ in dims)
    run = 1
    for d, s in reversed(dims):
        if s != run:
            break
        run *= d
    footprint, run_bytes = numel * itemsize, run * itemsize
    if run_bytes >= burst:
        return footprint
    return footprint * burst // run_bytes


@dataclass
class Move:
    src: HbmRef
    dst: HbmRef
    sizes: tuple[int, ...]
    load_bytes: int


def plan_moves(chip: Chip, pairs: list[tuple[HbmRef, HbmRef]], max_elems: int) -> list[Move]:
    """Tiles each (src, dst) pair of same-shaped views into boxes of at most max_elems."""
    moves = []
    for src, dst in pairs:
        if src.numel == 0:
            continue
        shape, (s, d) = coalesce(src.shape, [src, dst])
        for starts, sizes in box_tiles(shape, max_elems):
            sv = sub(s, starts, sizes)
            moves.append(Move(sv, sub(d, starts, sizes), sizes, read_traffic(chip, sv)))
    return moves


def plan_fills(regions: list[HbmRef], max_elems: int) -> list[tuple[HbmRef, tuple[int, ...]]]:
    out = []
    for r in regions:
        if r.numel == 0:
            continue
        shape, (v,) = coalesce(r.shape, [r])
        for starts, sizes in box_tiles(shape, max_elems):
            out.append((sub(v, starts, sizes), sizes))
    return out


def move_budget(ctx: KernelContext, itemsize: int, total: int, share: float = 0.45) -> int:
    """Elements per move tile: a buffer takes at most `share` of the scratchpad (two buffers
    fit), and every core gets work."""
    cap = int(ctx.chip.core.scratchpad.bytes * share) // max(itemsize, 1)
    spread = math.ceil(total / (2 * ctx.chip.cores))
    return max(1, min(cap, max(4096, spread)))


def emit_moves(ctx: KernelContext, moves: list[Move], fills: list[tuple[HbmRef, tuple[int, ...]]],
               fill_value: float, kind: str, flops: int, min_bytes: int) -> KernelLaunch:
    """Per core: border stores from a filled buffer, then double-buffered load/store of moves."""
    chip = ctx.chip
    dt = ctx.outputs[0].dtype
    ncores = chip.cores
    per_core: list[list[Move]] = [[] for _ in range(ncores)]
    per = math.ceil(len(moves) / ncores) if moves else 0
    for i, m in enumerate(moves):  # contiguous blocks keep each core's accesses sequential
        per_core[min(i // max(per, 1), ncores - 1)].append(m)
    fills_core: list[list] = [[] for _ in range(ncores)]
    load = [0] * ncores
    for f in sorted(fills, key=lambda f: -math.prod(f[1])):  # balance fill bytes
        c = min(range(ncores), key=lambda i: load[i])
        fills_core[c].append(f)
        load[c] += math.prod(f[1])
    streams = []
    for core_moves, core_fills in zip(per_core, fills_core):
        b = CoreBuilder(chip)
        if core_fills:
            fmax = max(math.prod(s) for _, s in core_fills)
            fbuf = b.alloc(dt, (fmax,))
            FILLED = b.sem()
            b.emit(VecOp("fill", fbuf, (), (("value", float(fill_value)),), signal=FILLED))
            for ref, sizes in core_fills:
                b.emit(DmaStore(sub_ref(fbuf, sizes), ref, waits=((FILLED, 1),)))
        if core_moves:
            mmax = max(math.prod(m.sizes) for m in core_moves)
            bufs = [b.alloc(dt, (mmax,)) for _ in range(min(2, len(core_moves)))]
            LOADED, STORED = b.sem(), b.sem()
            for t, m in enumerate(core_moves):
                tile = sub_ref(bufs[t % len(bufs)], m.sizes)
                w = ((STORED, t + 1 - len(bufs)),) if t >= len(bufs) else ()
                b.emit(DmaLoad(m.src, tile, m.load_bytes, waits=w, signal=LOADED))
                b.emit(DmaStore(tile, m.dst, waits=((LOADED, t + 1),), signal=STORED))
        streams.append(b.finish())
    return KernelLaunch(ctx.node.name, kind, [ctx.node.op], streams, flops, min_bytes, ctx.dtype)


def _nbytes(ref: HbmRef) -> int:
    return ref.numel * ref.dtype.itemsize


@kernel("copy")
def copy_kernel(ctx: KernelContext) -> KernelLaunch:
    src, out = ctx.inputs[0], ctx.outputs[0]
    moves = plan_moves(ctx.chip, [(src, out)], move_budget(ctx, out.dtype.itemsize, out.numel))
    return emit_moves(ctx, moves, [], 0.0, "copy", 0, src.footprint_bytes() + _nbytes(out))


def pad_regions(out: HbmRef, pads: list[tuple[int, int]]) -> list[HbmRef]:
    """Disjoint boxes of `out` covering everything outside the interior: for each dim d, the
    low and high slabs of d, restricted to the interior in the dims before d."""
    regions = []
    rank = len(out.shape)
    for d in range(rank):
        lo, hi = pads[d]
        for start, size in ((0, lo), (out.shape[d] - hi, hi)):
            if size <= 0:
                continue
            starts, sizes = [], []
            for e in range(rank):
                if e < d:
                    starts.append(pads[e][0])
                    sizes.append(out.shape[e] - pads[e][0] - pads[e][1])
                elif e == d:
                    starts.append(start)
                    sizes.append(size)
                else:
                    starts.append(0)
                    sizes.append(out.shape[e])
            regions.append(box(out, tuple(starts), tuple(sizes)))
    return regions


@kernel("pad")
def pad_kernel(ctx: KernelContext) -> KernelLaunch:
    x, out = ctx.inputs[0], ctx.outputs[0]
    pads = [tuple(p) for p in ctx.node.attrs["pads"]]
    if any(lo < 0 or hi < 0 for lo, hi in pads):
        raise NotImplementedError("pad: negative padding")
    budget = move_budget(ctx, out.dtype.itemsize, out.numel, share=0.3)  # two move buffers + one fill buffer
    interior = box(out, tuple(lo for lo, _ in pads), x.shape)
    moves = plan_moves(ctx.chip, [(x, interior)], budget)
    regions = pad_regions(out, pads)
    border = sum(r.numel for r in regions)
    fill_elems = max(1, min(budget, math.ceil(border / ctx.chip.cores)))
    fills = plan_fills(regions, fill_elems)
    return emit_moves(ctx, moves, fills, float(ctx.node.attrs.get("value", 0.0)), "copy", 0,
                      x.footprint_bytes() + _nbytes(out))


@kernel("concat")
def concat_kernel(ctx: KernelContext) -> KernelLaunch:
    out = ctx.outputs[0]
    ax = ctx.node.attrs["axis"]
    pairs = []
    off = 0
    for x in ctx.inputs:
        starts = tuple(off if i == ax else 0 for i in range(len(out.shape)))
        pairs.append((x, box(out, starts, x.shape)))
        off += x.shape[ax]
    moves = plan_moves(ctx.chip, pairs, move_budget(ctx, out.dtype.itemsize, out.numel))
    return emit_moves(ctx, moves, [], 0.0, "copy", 0, sum(x.footprint_bytes() for x in ctx.inputs) + _nbytes(out))
