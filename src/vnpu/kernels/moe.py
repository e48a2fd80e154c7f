"""Mixture-of-experts: top-k routing into a grouped-matmul schedule, and the grouped SwiGLU experts.

moe_route (one core): the [T, K] expert ids are counting-sorted by expert on the vector
engine into tiles of R rows: each tile has one expert, and each row a token and the slot
(t*K + k) its result belongs to. The schedule has a static number of tiles, the most any
routing can need (ir.ops.moe_tiles): at batch-1 decode exactly the K routed experts; for a
long prefill about T*K/R + E in the worst case.

moe_ffn: two launches, their work items (tile, chunk) spread over the cores so that even
a single routed tile (batch-1 decode) keeps every core streaming weights:
    1. per (tile, I-chunk): X rows of the tile's tokens gathered per H-chunk (DmaGather by
       token index); the expert's gate and up rows of the chunk gathered from the [E, ...]
       weights by the tile's expert id (only routed experts' weights are read); gate, up =
       X @ Wg^T, X @ Wu^T on the array; act = silu(gate) * up -> the scratch output;
    2. per (tile, H-chunk): act of the tile loaded, the expert's down block gathered by id,
       y = act @ Wd^T, rows scattered to their slots (DmaScatter; pad rows to the dump row).
The importer then combines out[t] = sum_k w[t,k] * y[t*K + k] with the existing kernels.
Weight chunks, operands and accumulators are double-buffered so gathers overlap the matmuls.
"""
from __future__ import annotations

from vnpu.dtypes import DType
from vnpu.ir.ops import moe_tiles
from vnpu.isa.instructions import DmaGather, DmaLoad, DmaScatter, DmaStore, HbmRef, MatMul, SramRef, VecOp
from vnpu.isa.program import KernelLaunch
from vnpu.kernels.base import CoreBuilder, KernelContext, KernelError, deal_round_robin, kernel, sub_ref

F32 = DType.fp32


@kernel("moe_route")
def moe_route_kernel(ctx: KernelContext) -> KernelLaunch:
    idx = ctx.inputs[0]
    outs = ctx.outputs
    t, k = idx.shape
    a = ctx.node.attrs
    tiles = moe_tiles(idx.numel, a["experts"], a["rows"])
    b = CoreBuilder(ctx.chip)
    ids = b.alloc(idx.dtype, idx.shape)
    bufs = [b.alloc(o.dtype, o.shape) for o in outs]
    LD, RT = b.sem(), b.sem()
    b.emit(DmaLoad(idx, ids, signal=LD))
    attrs = (("experts", a["experts"]), ("k", k), ("rows", a["rows"]), ("tiles", tiles))
    for i, (op, buf) in enumerate(zip(("moe_route_experts", "moe_route_tokens", "moe_route_slots"), bufs)):
        b.emit(VecOp(op, buf, (ids,), attrs, waits=((LD, 1),) if i == 0 else (), signal=RT))
    for i, (buf, o) in enumerate(zip(bufs, outs)):
        b.emit(DmaStore(buf, o, waits=((RT, 3),) if i == 0 else ()))
    streams = [b.finish()] + [CoreBuilder(ctx.chip).finish() for _ in range(ctx.cores - 1)]
    min_bytes = idx.numel * idx.dtype.itemsize + sum(o.numel * o.dtype.itemsize for o in outs)
    return KernelLaunch(ctx.node.name, "moe", ["moe_route"], streams, 0, min_bytes, ctx.dtype)


def _rows(ref: HbmRef, c0: int, cn: int) -> HbmRef:
    """Columns c0..c0+cn of a [rows, cols] view, as a [rows, cn] table for row gathers/scatters."""
    return HbmRef(ref.offset + c0 * ref.strides[1] * ref.dtype.itemsize, ref.dtype, (ref.shape[0], cn), ref.strides)


def _expert_block(w: HbmRef, r0: int, rn: int, c0: int, cn: int) -> HbmRef:
    """The [rn, cn] block at (r0, c0) of every expert of an [E, R, C] weight: a table [E, rn, cn]."""
    st = w.strides
    return HbmRef(w.offset + (r0 * st[1] + c0 * st[2]) * w.dtype.itemsize, w.dtype, (w.shape[0], rn, cn), st)


def _chunk(total: int, limit: int, want_items: int) -> int:
    """A chunk width <= limit giving about `want_items` chunks (at least 32 wide)."""
    return max(1, min(limit, total, max(32, -(-total // max(want_items, 1)))))


@kernel("moe_ffn")
def moe_ffn_kernel(ctx: KernelContext) -> list[KernelLaunch]:
    """Two launches, each spread over the cores by (tile, chunk) work items:
    1. gate/up + activation per (tile, I-chunk): act -> the scratch output [NT, R, I];
    2. down projection per (tile, H-chunk), rows scattered to their slots."""
    x, tile_e, tile_tok, tile_slot, gu, dn = ctx.inputs[:6]
    y, act = ctx.outputs
    T, H = x.shape
    NT, R = tile_tok.shape
    I = act.shape[2]
    dt = ctx.dtype
    wq = _ExpertQuant.of(ctx)
    cap = ctx.chip.core.scratchpad.bytes
    kt = min(H, KT_GATE_UP)
    nt = _chunk(I, 128, -(-ctx.cores // NT))
    ht = _chunk(H, 256, -(-ctx.cores // NT))
    kd = min(I, KT_DOWN) if KT_DOWN else nt
    kcs = [(k0, min(kt, H - k0)) for k0 in range(0, H, kt)]
    ics = [(i0, min(nt, I - i0)) for i0 in range(0, I, nt)]
    dcs = [(i0, min(kd, I - i0)) for i0 in range(0, I, kd)]
    hcs = [(h0, min(ht, H - h0)) for h0 in range(0, H, ht)]
    isz = dt.itemsize
    need1 = 2 * R * H * isz + 2 * nt * kt * isz + 2 * 2 * R * nt * 4 + R * nt * 4 + 2 * R * nt * isz + 64 * 64
    need2 = 2 * R * I * isz + 2 * ht * kd * isz + 2 * R * ht * 4 + 2 * R * ht * y.dtype.itemsize + 64 * 64
    if max(need1, need2) > cap:
        raise KernelError(f"moe_ffn: a tile of {R} rows x hidden {H} does not fit the {cap}-byte scratchpad")
    items1 = [(t, ic) for t in range(NT) for ic in range(len(ics))]
    items2 = [(t, hc) for t in range(NT) for hc in range(len(hcs))]
    if wq is not None:  # packed chunks with their scales, plus dequantized tiles unless the PEs hold them packed
        chunk1, chunk2 = wq.chunk_bytes(kt, nt, wq.group_gu), wq.chunk_bytes(kd, ht, wq.group_dn)
        need1 += 2 * nt * kt * isz * (not wq.in_pes) - 2 * nt * kt * isz + 2 * chunk1
        need2 += 2 * ht * kd * isz * (not wq.in_pes) - 2 * ht * kd * isz + 2 * chunk2
        if max(need1, need2) > cap:
            raise KernelError(f"moe_ffn: a tile of {R} rows x hidden {H} does not fit the {cap}-byte scratchpad")
    else:
        chunk1, chunk2 = nt * kt * isz, ht * kd * isz
    depth1 = _depth(chunk1, cap - need1)
    depth2 = _depth(chunk2, cap - need2)
    launches = [_gate_up_launch(ctx, items1, ics, kcs, depth1, wq), _down_launch(ctx, items2, dcs, hcs, depth2, wq)]
    flops = 2 * NT * R * 3 * H * I
    experts_read = min(gu.shape[0], y.shape[0] - 1)  # at most one read of each routed expert
    launches[0].flops = flops * 2 // 3
    launches[1].flops = flops // 3
    per_expert = [(w.numel // w.shape[0]) * w.dtype.itemsize for w in ctx.inputs[4:]]  # weights (+ scales)
    gu_b, dn_b = (per_expert[0] + per_expert[2], per_expert[1] + per_expert[3]) if wq else per_expert
    launches[0].min_hbm_bytes = experts_read * gu_b + T * H * x.dtype.itemsize
    launches[1].min_hbm_bytes = experts_read * dn_b + y.numel * y.dtype.itemsize
    return launches


class _ExpertQuant:
    """Weight-only experts (compiler/quantize._weight_only_experts): packed K-major int8 [E, K * bits / 8, N]
    with fp32 scales [E, K / group, N]. Per chunk the kernel gathers the packed block and its scales;
    the PEs multiply them packed where the chip holds `bits`-wide weights (MatMul b_bits), else
    one vector `dequant` writes a tile in the program's dtype first."""

    def __init__(self, ctx: KernelContext):
        a = ctx.node.attrs
        self.bits = int(a["wq_bits"])
        self.pack = 8 // self.bits
        self.group_gu, self.group_dn = int(a["wq_group_gate_up"]), int(a["wq_group_down"])
        self.in_pes = self.bits in ctx.chip.core.matrix.packed_weight_bits
        self.gu, self.dn, self.gu_s, self.dn_s = ctx.inputs[4:8]

    @staticmethod
    def of(ctx: KernelContext) -> "_ExpertQuant | None":
        return _ExpertQuant(ctx) if ctx.node.attrs.get("wq_bits") else None

    def scale_rows(self, k0: int, kn: int, group: int) -> tuple[int, int]:
        return k0 // group, (k0 + kn - 1) // group - k0 // group + 1

    def chunk_bytes(self, kt: int, nt: int, group: int) -> int:
        return kt // self.pack * nt + (kt // group + 2) * nt * 4

    def emit_block(self, b: CoreBuilder, dt: DType, q_tab: HbmRef, s_tab: HbmRef, group: int, te: SramRef,
                   k0: int, kn: int, n0: int, nn: int, qbuf: SramRef, sbuf: SramRef, dbuf: SramRef | None,
                   gather_waits: tuple, GB: int, DQ: int, dq_waits: tuple) -> tuple[SramRef, dict, int]:
        """Gathers one expert block (K rows k0.., N columns n0..): the B tile, the MatMul's extra fields
        and the semaphore it waits on (counted once per block)."""
        r0, rn = self.scale_rows(k0, kn, group)
        q_t = SramRef(qbuf.offset, DType.int8, (kn // self.pack, nn))
        s_t = SramRef(sbuf.offset, F32, (rn, nn))
        b.emit(DmaGather(_expert_block(q_tab, k0 // self.pack, kn // self.pack, n0, nn), te, q_t, waits=gather_waits))
        b.emit(DmaGather(_expert_block(s_tab, r0, rn, n0, nn), te, s_t, signal=GB))
        if self.in_pes:
            return q_t, {"b_scale": s_t, "block": group, "b_bits": self.bits}, GB
        d_t = SramRef(dbuf.offset, dt, (kn, nn))
        b.emit(VecOp("dequant", d_t, (q_t, s_t), (("bits", self.bits), ("group", group)), waits=dq_waits, signal=DQ))
        return d_t, {}, DQ


class _WeightRing:
    """One core's ring of expert weight chunks (K rows x N columns of one projection): bf16 blocks of
    the [E, N, K] weight gathered and used transposed, or (weight-only experts) packed blocks with
    their scales, dequantized into one of two tiles unless the PEs multiply them packed."""

    def __init__(self, b: CoreBuilder, dt: DType, depth: int, kt: int, nt: int, weight: HbmRef,
                 wq: "_ExpertQuant | None", proj: str):
        self.b, self.dt, self.depth, self.weight, self.wq = b, dt, depth, weight, wq
        if wq is None:
            self.wb = [b.alloc(dt, (nt, kt)) for _ in range(depth)]
            return
        self.group = wq.group_gu if proj == "gate_up" else wq.group_dn
        self.q_tab, self.s_tab = (wq.gu, wq.gu_s) if proj == "gate_up" else (wq.dn, wq.dn_s)
        self.qb = [b.alloc(DType.int8, (kt // wq.pack, nt)) for _ in range(depth)]
        self.sb = [b.alloc(F32, (kt // self.group + 2, nt)) for _ in range(depth)]
        self.db = [b.alloc(dt, (kt, nt)) for _ in range(2)] if not wq.in_pes else None

    def gather(self, j: int, te: SramRef, k0: int, kn: int, n0: int, nn: int, waits: tuple, GB: int, DQ: int,
               MM: int) -> tuple[SramRef, dict, int]:
        """Chunk j's block: (the MatMul's B tile, its extra fields, the semaphore to wait on)."""
        slot = j % self.depth
        if self.wq is None:
            wt = SramRef(self.wb[slot].offset, self.dt, (nn, kn))
            self.b.emit(DmaGather(_expert_block(self.weight, n0, nn, k0, kn), te, wt, waits=waits, signal=GB))
            return wt, {"trans_b": True}, GB
        return self.wq.emit_block(self.b, self.dt, self.q_tab, self.s_tab, self.group, te, k0, kn, n0, nn,
                                  self.qb[slot], self.sb[slot], self.db[j % 2] if self.db else None, waits, GB, DQ,
                                  ((GB, j + 1),) + (((MM, j - 1),) if j >= 2 else ()))


def _tables(b: CoreBuilder, ref: HbmRef, t: int, n: int, dst: SramRef, **kw: object) -> None:
    b.emit(DmaLoad(HbmRef(ref.offset + t * (ref.strides[0] if ref.shape else 1) * 8, DType.int64, (n,), (1,)), dst, **kw))


# bytes of expert weight chunks in flight per core: at batch-1 decode the weight stream is all
# there is, and with two small chunks in flight each core waited out the HBM latency per chunk
WEIGHTS_IN_FLIGHT = 256 * 1024
# Contraction chunk of the gate/up matmuls, and of the down matmuls (None: the gate/up's
# I-chunk). Each MatMul instruction pays the array's preload and skew once
# (isa.cost.matmul_cycles); at batch-1 decode (one row per tile) that is most of its time:
# 1024 / 256 instead of 256 / the I-chunk take the Qwen3-235B 8-chip shard's expert matmuls
# from 18.9k / 10.1k cycles to 14.8k / 7.0k (the fp32 accumulation is grouped differently:
# results moved in the last bits only).
KT_GATE_UP: int = 1024
KT_DOWN: int | None = 256


def _depth(chunk_bytes: int, spare: int) -> int:
    """Weight chunk buffers per core (gathers in flight): 2..16, and only what fits the
    scratchpad's `spare` bytes beyond two."""
    return max(2, min(16, WEIGHTS_IN_FLIGHT // max(chunk_bytes, 1), 2 + spare // max(chunk_bytes, 1)))


def _gate_up_launch(ctx: KernelContext, items: list, ics: list, kcs: list, depth: int,
                    wq: _ExpertQuant | None = None) -> KernelLaunch:
    x, tile_e, tile_tok, _, gu, _ = ctx.inputs[:6]
    act = ctx.outputs[1]
    R = act.shape[1]
    I = act.shape[2]
    dt = ctx.dtype
    nt = max(n for _, n in ics)
    kt = max(n for _, n in kcs)
    streams = []
    for mine in deal_round_robin(items, ctx.cores):
        b = CoreBuilder(ctx.chip)
        if not mine:
            streams.append(b.finish())
            continue
        te = [b.alloc(DType.int64, (1,)) for _ in range(2)]
        tt = [b.alloc(DType.int64, (R,)) for _ in range(2)]
        xb = [[b.alloc(dt, (R, kn)) for _, kn in kcs] for _ in range(2)]
        ring = _WeightRing(b, dt, depth, kt, nt, gu, wq, "gate_up")
        ag = [b.alloc(F32, (R, nt)) for _ in range(2)]
        au = [b.alloc(F32, (R, nt)) for _ in range(2)]
        tmp = b.alloc(F32, (R, nt))
        ob = [b.alloc(dt, (R, nt)) for _ in range(2)]
        TL, XL, GB, MM, VD, ST = (b.sem() for _ in range(6))
        DQ = b.sem()
        j = 0
        mm_end: list[int] = []
        for li, (t, ic) in enumerate(mine):
            s = li % 2
            i0, inn = ics[ic]
            _tables(b, tile_e, t, 1, te[s], waits=((MM, mm_end[li - 2]),) if li >= 2 else ())
            _tables(b, tile_tok, t, R, tt[s], signal=TL)
            for ci, (k0, kn) in enumerate(kcs):
                b.emit(DmaGather(_rows(x, k0, kn), tt[s], xb[s][ci], waits=((TL, li + 1),) if ci == 0 else (),
                                 signal=XL))
            g_acc, u_acc = sub_ref(ag[s], (R, inn)), sub_ref(au[s], (R, inn))
            for acc, row0 in ((g_acc, i0), (u_acc, I + i0)):
                for ci, (k0, kn) in enumerate(kcs):
                    gw = (([(MM, j - depth + 1)] if j >= depth else [])
                          + ([(TL, li + 1)] if ci == 0 and acc is g_acc else []))
                    wt, extra, ready = ring.gather(j, te[s], k0, kn, row0, inn, tuple(gw), GB, DQ, MM)
                    w = [(ready, j + 1)]
                    if ci == 0 and acc is g_acc:
                        w.append((XL, len(kcs) * (li + 1)))
                        if li >= 2:
                            w.append((VD, li - 1))  # accumulators of item li-2 consumed
                    b.emit(MatMul(xb[s][ci], wt, acc, ci > 0, waits=tuple(w), signal=MM, **extra))
                    j += 1
            mm_end.append(j)
            t_, o_ = sub_ref(tmp, (R, inn)), sub_ref(ob[s], (R, inn))
            b.emit(VecOp("silu", t_, (g_acc,), waits=((MM, j),) + (((ST, li - 1),) if li >= 2 else ())))
            b.emit(VecOp("mul", o_, (t_, u_acc), signal=VD))
            dst = HbmRef(act.offset + (t * act.strides[0] + i0 * act.strides[2]) * act.dtype.itemsize, act.dtype,
                         (R, inn), (act.strides[1], act.strides[2]))
            b.emit(DmaStore(o_, dst, waits=((VD, li + 1),), signal=ST))
        streams.append(b.finish())
    return KernelLaunch(f"{ctx.node.name}_gate_up", "moe", ["moe_gate_up", "silu", "mul"], streams, 0, 0, dt)


def _down_launch(ctx: KernelContext, items: list, ics: list, hcs: list, depth: int,
                 wq: _ExpertQuant | None = None) -> KernelLaunch:
    _, _, _, tile_slot, _, dn = ctx.inputs[:6]
    tile_e = ctx.inputs[1]
    y, act = ctx.outputs
    R = act.shape[1]
    dt = ctx.dtype
    nt = max(n for _, n in ics)
    ht = max(n for _, n in hcs)
    streams = []
    for mine in deal_round_robin(items, ctx.cores):
        b = CoreBuilder(ctx.chip)
        if not mine:
            streams.append(b.finish())
            continue
        te = [b.alloc(DType.int64, (1,)) for _ in range(2)]
        ts = [b.alloc(DType.int64, (R,)) for _ in range(2)]
        ab = [[b.alloc(dt, (R, n)) for _, n in ics] for _ in range(2)]
        ring = _WeightRing(b, dt, depth, nt, ht, dn, wq, "down")
        acc = [b.alloc(F32, (R, ht)) for _ in range(2)]
        ob = [b.alloc(y.dtype, (R, ht)) for _ in range(2)]
        TL, AL, GB, MM, VD, SC = (b.sem() for _ in range(6))
        DQ = b.sem()
        j = 0
        mm_end: list[int] = []
        for li, (t, hc) in enumerate(mine):
            s = li % 2
            h0, hn = hcs[hc]
            w0 = ((MM, mm_end[li - 2]),) if li >= 2 else ()
            _tables(b, tile_e, t, 1, te[s], waits=w0 + (((SC, li - 1),) if li >= 2 else ()))
            _tables(b, tile_slot, t, R, ts[s], signal=TL)
            for ii, (i0, inn) in enumerate(ics):
                src = HbmRef(act.offset + (t * act.strides[0] + i0 * act.strides[2]) * act.dtype.itemsize, act.dtype,
                             (R, inn), (act.strides[1], act.strides[2]))
                b.emit(DmaLoad(src, ab[s][ii], signal=AL))
            a_t = sub_ref(acc[s], (R, hn))
            for ii, (i0, inn) in enumerate(ics):
                gw = ([(MM, j - depth + 1)] if j >= depth else []) + ([(TL, li + 1)] if ii == 0 else [])
                wt, extra, ready = ring.gather(j, te[s], i0, inn, h0, hn, tuple(gw), GB, DQ, MM)
                w = [(ready, j + 1)]
                if ii == 0:
                    w.append((AL, len(ics) * (li + 1)))
                    if li >= 2:
                        w.append((VD, li - 1))
                b.emit(MatMul(ab[s][ii], wt, a_t, ii > 0, waits=tuple(w), signal=MM, **extra))
                j += 1
            mm_end.append(j)
            o_ = sub_ref(ob[s], (R, hn))
            b.emit(VecOp("identity", o_, (a_t,), waits=((MM, j),) + (((SC, li - 1),) if li >= 2 else ()), signal=VD))
            b.emit(DmaScatter(o_, ts[s], _rows(y, h0, hn), waits=((VD, li + 1),), signal=SC))
        streams.append(b.finish())
    return KernelLaunch(f"{ctx.node.name}_down", "moe", ["moe_down"], streams, 0, 0, dt)
