"""Streaming vector kernels: load tiles, compute on the vector engine, store, double-buffered.

Elementwise chains, reductions, softmax, norms and pooling all have this shape; each
supplies its tiles and a `compute` that emits the vector instructions for one tile.

Beyond the plain load -> compute -> store tile, the pipeline supports
- chained tiles (`chain=True`): run on the same core as the next tile, so state kept in
  scratchpad temps (running max, partial sums) carries over; a tile with `store=None`
  writes nothing to HBM (reductions chunked over a long reduced axis);
- gathers (`GatherLoad`): rows picked by a previously loaded index tile (DmaGather);
- static loads: loaded once per core before the first tile (norm weight and bias);
- pass-through tiles: `compute` returns the SRAM tile to store, emitting no vector work.

It also has the row layout shared by reductions, softmax and norms (`row_layout`): the
input seen as [outer kept dims, reduced dims, inner kept dim], SRAM tiles [P, R] or [P, R, Q].
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Union

from vnpu.dtypes import DType
from vnpu.isa.instructions import DmaGather, DmaLoad, DmaStore, HbmRef, SramRef, VecOp
from vnpu.isa.program import KernelLaunch
from vnpu.kernels.base import SRAM_ALIGN, CoreBuilder, KernelContext, sub_ref


@dataclass
class GatherLoad:
    """Rows of each table ([rows, *row] view) picked by the tile's load number `index` (int
    indices in SRAM); table j fills the j-th equal block of the destination tile."""

    tables: list[HbmRef]
    index: int

    @property
    def dtype(self) -> DType:
        return self.tables[0].dtype


LoadSrc = Union[HbmRef, GatherLoad]


@dataclass
class StreamTile:
    loads: list[tuple[LoadSrc, tuple[int, ...]]]  # source view (or gather), SRAM tile shape
    store: HbmRef | None  # None: nothing stored (an accumulating tile of a chain)
    out_shape: tuple[int, ...]  # output buffer tile; (0,) for pass-through tiles (no buffer)
    load_bytes: list[int] = field(default_factory=list)  # HBM traffic overrides (-1: footprint)
    info: object = None  # per-tile data for the compute emitter
    chain: bool = False  # runs on the same core right before the next tile (shares scratchpad state)


# compute(builder, loaded tiles (+ static tiles), out tile, tile, waits, signal): emits vector
# instructions, the first carrying `waits`, the last signalling `signal` once; or emits nothing
# and returns the loaded SRAM tile that the store should read (pass-through).
Compute = Callable[[CoreBuilder, list[SramRef], SramRef, StreamTile, tuple, int], Union[SramRef, None]]
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


def spread_elems(ctx: KernelContext, total: int, min_tile: int = 2048) -> int:
    """Tile size (elements) that gives every core about two tiles, but not tiny ones."""
    return max(min_tile, math.ceil(total / (2 * ctx.chip.cores)))


def aligned(nbytes: int) -> int:
    return (nbytes + SRAM_ALIGN - 1) // SRAM_ALIGN * SRAM_ALIGN


def _units(tiles: list[StreamTile]) -> list[list[StreamTile]]:
    """Tiles grouped into chains (each ends with a tile whose chain flag is off)."""
    units: list[list[StreamTile]] = []
    cur: list[StreamTile] = []
    for t in tiles:
        cur.append(t)
        if not t.chain:
            units.append(cur)
            cur = []
    if cur:
        units.append(cur)
    return units


def _work(unit: list[StreamTile]) -> int:
    return sum(sum(math.prod(s) for _, s in t.loads) + math.prod(t.out_shape) for t in unit) + 1


def split_across_cores(tiles: list[StreamTile], cores: int) -> list[list[StreamTile]]:
    """Contiguous runs of chains per core (sequential HBM accesses), balanced by tile work."""
    units = _units(tiles)
    per_core: list[list[StreamTile]] = [[] for _ in range(cores)]
    if not units:
        return per_core
    works = [_work(u) for u in units]
    total = sum(works)
    acc = 0
    for u, w in zip(units, works):
        c = min(cores - 1, int((acc + w / 2) * cores / total))
        per_core[c].extend(u)
        acc += w
    return per_core


def emit_streaming(ctx: KernelContext, tiles: list[StreamTile], compute: Compute, setup: Setup | None,
                   kind: str, ops: list[str], flops: int, min_bytes: int, out_dtype: DType | None = None,
                   static: list[tuple[HbmRef, tuple[int, ...]]] | None = None) -> KernelLaunch:
    """Lowers tiles onto the cores as a double-buffered load / compute / store pipeline.

    Per core: load slot i of tile t reuses the buffer of tile t-2 once that tile's compute (or,
    for a pass-through tile, its store) is done; compute waits for its loads and for the store
    that last read its output buffer; the store waits for compute. `static` views are loaded
    once per core into their own buffers and handed to compute after the tile's own loads.
    """
    chip = ctx.chip
    out_dt = out_dtype or ctx.outputs[0].dtype
    streams = []
    for core_tiles in split_across_cores(tiles, chip.cores):
        b = CoreBuilder(chip)
        if not core_tiles:
            streams.append(b.finish())
            continue
        # one buffer per load slot, sized for the largest tile that uses the slot, two of each
        n_slots = max(len(t.loads) for t in core_tiles)
        slot_bytes = [0] * n_slots
        for t in core_tiles:
            for li, (src, shape) in enumerate(t.loads):
                slot_bytes[li] = max(slot_bytes[li], math.prod(shape) * src.dtype.itemsize)
        bufs = [[b.alloc(DType.int8, (max(n, 1),)).offset for n in slot_bytes] for _ in range(2)]
        out_max = max((t.out_shape for t in core_tiles), key=math.prod)
        outb = [b.alloc(out_dt, out_max) for _ in range(2)]
        statics = [b.alloc(ref.dtype, shape) for ref, shape in (static or [])]
        if setup is not None:
            setup(b)
        LOADED, COMPUTED, STORED = b.sem(), b.sem(), b.sem()
        PRE = b.sem() if any(isinstance(s, GatherLoad) for t in core_tiles for s, _ in t.loads) else -1
        STATIC = b.sem() if statics else -1
        for (ref, _), dst in zip(static or [], statics):
            b.emit(DmaLoad(ref, dst, signal=STATIC))
        n_loaded = n_pre = n_computed = n_stored = 0
        release: list[tuple[int, int] | None] = []  # per tile: when its load buffers may be reused
        for t, tile in enumerate(core_tiles):
            s = t % 2
            loaded: list[SramRef] = []
            reuse = [release[t - 2]] if t >= 2 and release[t - 2] is not None else []
            index_slots = {src.index for src, _ in tile.loads if isinstance(src, GatherLoad)}
            for li, (src, shape) in enumerate(tile.loads):
                dst = SramRef(bufs[s][li], src.dtype, tuple(shape))
                w = list(reuse) if li == 0 else []
                if isinstance(src, GatherLoad):
                    idx = loaded[src.index]
                    w.append((PRE, n_pre))
                    block = math.prod(shape) // len(src.tables)
                    rows = idx.numel
                    for j, table in enumerate(src.tables):
                        d = SramRef(dst.offset + j * block * src.dtype.itemsize, src.dtype, (rows, block // max(rows, 1)))
                        n_loaded += 1
                        b.emit(DmaGather(table, idx, d, waits=tuple(w) if j == 0 else (), signal=LOADED))
                else:
                    nb = tile.load_bytes[li] if li < len(tile.load_bytes) else -1
                    if li in index_slots:
                        n_pre += 1
                        b.emit(DmaLoad(src, dst, nb, waits=tuple(w), signal=PRE))
                    else:
                        n_loaded += 1
                        b.emit(DmaLoad(src, dst, nb, waits=tuple(w), signal=LOADED))
                loaded.append(dst)
            vw = []
            if tile.loads:
                vw.append((LOADED, n_loaded))
            if statics and t == 0:
                vw.append((STATIC, len(statics)))
            k = n_stored  # this tile's output buffer is the one of store number k
            if k >= 2:
                vw.append((STORED, k - 1))
            out_t = sub_ref(outb[k % 2], tile.out_shape)
            src_t = compute(b, loaded + statics, out_t, tile, tuple(vw), COMPUTED)
            if src_t is None:
                n_computed += 1
                release.append((COMPUTED, n_computed))
                ready = (COMPUTED, n_computed)
                src_t = out_t
            else:  # pass-through: the store reads the load buffer itself
                if tile.store is None:
                    raise ValueError("a pass-through tile must store")
                release.append((STORED, n_stored + 1))
                ready = (LOADED, n_loaded)
            if tile.store is not None:
                b.emit(DmaStore(src_t, tile.store, waits=(ready,), signal=STORED))
                n_stored += 1
        streams.append(b.finish())
    return KernelLaunch(ctx.node.name, kind, ops, streams, flops, min_bytes, ctx.dtype)


# -- vector instruction sequences ------------------------------------------------------------
class VecSeq:
    """One tile's vector instructions: the first carries the tile's waits, the last its signal."""

    def __init__(self) -> None:
        self.ops: list[VecOp] = []

    def __call__(self, op: str, dst: SramRef, *srcs: SramRef | float, **attrs: object) -> SramRef:
        self.ops.append(VecOp(op, dst, tuple(srcs), tuple(sorted(attrs.items()))))
        return dst

    def emit(self, b: CoreBuilder, waits: tuple, signal: int) -> None:
        if not self.ops:
            raise ValueError("empty vector sequence")
        self.ops[0].waits = tuple(waits)
        self.ops[-1].signal = signal
        for ins in self.ops:
            b.emit(ins)


def vector_flops(launch: KernelLaunch) -> int:
    """Arithmetic element operations of a launch's vector instructions (data movement excluded)."""
    n = 0
    for cs in launch.cores:
        for ins in cs.queues["vector"]:
            if ins.op in ("identity", "fill", "cast"):
                continue
            n += ins.srcs[0].numel if ins.op.startswith("reduce_") else ins.dst.numel
    return n


# -- row layout for reductions, softmax and norms -------------------------------------------------
@dataclass
class RowLayout:
    """Tensors indexed like `x` seen as [outer kept dims..., reduced dims..., inner kept dim].

    SRAM tiles are [P, R] (`three_d` off: the reduced dims are innermost) or [P, R, Q] (an
    inner kept dim stays innermost so that DMA runs stay contiguous when the reduced dims are
    strided); reductions then run over axis 1 with keepdims.
    """

    outer: tuple[int, ...]
    red: tuple[int, ...]
    q: int
    three_d: bool
    refs: list[HbmRef]  # the original refs (offset, dtype)
    strides: list[tuple[tuple[int, ...], tuple[int, ...], int]]  # per ref: outer, reduced, inner strides

    @property
    def P(self) -> int:
        return math.prod(self.outer)

    @property
    def R(self) -> int:
        return math.prod(self.red)

    def view(self, i: int, o: tuple[tuple[int, ...], tuple[int, ...]] | None,
             r: tuple[tuple[int, ...], tuple[int, ...]] | None, q: tuple[int, int] | None) -> HbmRef:
        """Box of ref i: outer (starts, sizes), reduced (starts, sizes), inner (start, size); a
        part given as None is left out of the view (e.g. the reduced dims of a reduction's output)."""
        ref = self.refs[i]
        so, sr, sq = self.strides[i]
        off = 0
        shape: list[int] = []
        strides: list[int] = []
        for part, st in ((o, so), (r, sr)):
            if part is None:
                continue
            starts, sizes = part
            off += sum(a * s for a, s in zip(starts, st))
            shape += sizes
            strides += st
        if q is not None and self.three_d:
            off += q[0] * sq
            shape.append(q[1])
            strides.append(sq)
        if not shape:
            shape, strides = [1], [1]
        return HbmRef(ref.offset + off * ref.dtype.itemsize, ref.dtype, tuple(shape), tuple(strides))

    def tile_shape(self, p: int, r: int, q: int) -> tuple[int, ...]:
        return (p, r, q) if self.three_d else (p, r)

    @property
    def red_attrs(self) -> dict:
        """Attributes of a vector reduction over the tile's reduced axis."""
        return {"axis": 1} if self.three_d else {}


def _merge(dims: list[tuple[int, list[int]]]) -> list[tuple[int, list[int]]]:
    out: list[tuple[int, list[int]]] = []
    for d, st in dims:
        if d == 1:
            continue
        if out and all(ps == s * d for ps, s in zip(out[-1][1], st)):
            out[-1] = (out[-1][0] * d, st)
        else:
            out.append((d, list(st)))
    return out


def row_layout(shape: tuple[int, ...], axes: list[int], refs: list[tuple[HbmRef, tuple[int, ...]]],
               burst: int = 64) -> RowLayout:
    """Plans the row layout of a reduction over `axes` of `shape`.

    `refs` are the tensors the kernel moves, each with its stride per dim of `shape` (0 where
    it does not vary: a reduction's output along the reduced dims, a norm weight along the
    kept ones); refs[0] is the input. Reduced dims are ordered by decreasing input stride
    (memory order); kept dims keep their order, except that one stride-1 dim may move
    innermost. Among those candidates the layout moving the fewest HBM bytes (short runs cost
    whole bursts) wins.
    """
    axes_s = set(axes)
    x_st = refs[0][1]
    kept = [i for i in range(len(shape)) if i not in axes_s]
    red = sorted((i for i in axes_s), key=lambda i: -x_st[i])
    cands: list[int | None] = [None]
    for i in kept:
        if shape[i] > 1 and any(st[i] == 1 for _, st in refs):
            cands.append(i)
    best: tuple[float, RowLayout] | None = None
    for qd in cands:
        outer = [i for i in kept if i != qd]
        o = _merge([(shape[i], [st[i] for _, st in refs]) for i in outer])
        r = _merge([(shape[i], [st[i] for _, st in refs]) for i in red])
        lay = RowLayout(tuple(d for d, _ in o), tuple(d for d, _ in r), shape[qd] if qd is not None else 1,
                        qd is not None, [ref for ref, _ in refs],
                        [(tuple(s[j] for _, s in o), tuple(s[j] for _, s in r), st[qd] if qd is not None else 0)
                         for j, (_, st) in enumerate(refs)])
        cost = 0.0
        for j, (ref, _) in enumerate(refs):
            full = lay.view(j, (tuple(0 for _ in o), lay.outer), (tuple(0 for _ in r), lay.red), (0, lay.q))
            live = [(d, st) for d, st in zip(full.shape, full.strides) if st != 0] or [(1, 1)]
            full = HbmRef(full.offset, full.dtype, tuple(d for d, _ in live), tuple(st for _, st in live))
            run = full.contiguous_run()
            fp = full.footprint_bytes()
            cost += fp * (burst / run if 0 < run < burst else 1)
        if best is None or cost < best[0] * 0.999:
            best = (cost, lay)
    assert best is not None
    return best[1]


def plan_rows(lay: RowLayout, need: Callable[[int, int, int], int], capacity: int, spread: int,
              q_min: int = 64) -> tuple[int, int, int]:
    """Tile sizes (P rows, R chunk, Q) for a row layout: whole reduced dims when one row (of at
    least q_min inner elements) fits the scratchpad (`need(P, R, Q)` bytes), else R chunked;
    then rows and inner elements grow to about `spread` elements per tile."""
    R, Q, P = lay.R, lay.q, lay.P
    qm = min(Q, q_min)

    def largest(lo: int, hi: int, ok: Callable[[int], bool]) -> int:
        # largest v in [lo, hi] with ok(v), assuming ok(lo) and monotone
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if ok(mid):
                lo = mid
            else:
                hi = mid - 1
        return lo

    if need(1, 1, 1) > capacity:
        raise ValueError("scratchpad too small for a single element tile")
    if need(1, R, qm) <= capacity:
        target = max(spread, R * qm)
        qc = largest(qm, max(qm, min(Q, target // R)), lambda v: need(1, R, v) <= capacity)
        pc = largest(1, max(1, min(P, target // (R * qc))), lambda v: need(v, R, qc) <= capacity)
        return pc, R, qc
    qc = largest(1, qm, lambda v: need(1, 1, v) <= capacity) if need(1, 1, qm) > capacity else qm
    rc = largest(1, R, lambda v: need(1, v, qc) <= capacity)
    return 1, rc, qc


@dataclass
class RowTile:
    """Where one row tile sits in a RowLayout."""

    o: tuple[tuple[int, ...], tuple[int, ...]]
    r: tuple[tuple[int, ...], tuple[int, ...]]
    q: tuple[int, int]
    chunk: int  # index of the R chunk
    chunks: int  # R chunks per row group

    @property
    def shape(self) -> tuple[int, int, int]:
        return math.prod(self.o[1]), math.prod(self.r[1]), self.q[1]


def row_tiles(lay: RowLayout, pc: int, rc: int, qc: int) -> list[list[RowTile]]:
    """Row groups (P box x Q range), each with its R chunks in order."""
    groups = []
    rboxes = box_tiles(lay.red, rc)
    for o in box_tiles(lay.outer, pc):
        for q0 in range(0, lay.q, qc):
            q = (q0, min(qc, lay.q - q0))
            groups.append([RowTile(o, r, q, i, len(rboxes)) for i, r in enumerate(rboxes)])
    return groups
