"""Mixture-of-experts: top-k routing into a grouped-matmul schedule, and the grouped SwiGLU experts.

moe_route (one core): the [T, K] expert ids are counting-sorted by expert on the vector
engine into tiles of R rows: each tile has one expert, and each row a token and the slot
(t*K + k) its result belongs to. The schedule has a static number of tiles, the most any
routing can need (ir.ops.moe_tiles): at batch-1 decode exactly the K routed experts; for a
long prefill about T*K/R + E in the worst case.

moe_ffn: per tile, on the core that owns it (round-robin):
    DMA     X rows of the tile's tokens, gathered per H-chunk (DmaGather by token index);
            each expert-weight chunk gathered from the [E, ...] weight tensors by the tile's
            expert id (so only the routed experts' weights are read);
    matrix  gate, up = X @ Wg^T, X @ Wu^T per I-chunk; later y = act @ Wd^T per H-chunk;
    vector  act = silu(gate) * up (kept in scratchpad, never stored); y -> output dtype;
    DMA     y rows scattered to their slots (DmaScatter), pad rows to the dump row T*K.
The importer then combines out[t] = sum_k w[t,k] * y[t*K + k] with the existing kernels.
Weight chunks and accumulators are double-buffered so gathers overlap the matmuls.
"""
from __future__ import annotations

from vnpu.dtypes import DType
from vnpu.ir.ops import moe_tiles
from vnpu.isa.instructions import DmaGather, DmaLoad, DmaScatter, DmaStore, HbmRef, MatMul, SramRef, VecOp
from vnpu.isa.program import KernelLaunch
from vnpu.kernels.base import CoreBuilder, KernelContext, KernelError, kernel, sub_ref

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


@kernel("moe_ffn")
def moe_ffn_kernel(ctx: KernelContext) -> KernelLaunch:
    x, tile_e, tile_tok, tile_slot, gu, dn = ctx.inputs
    y = ctx.outputs[0]
    T, H = x.shape
    NT, R = tile_tok.shape
    I = dn.shape[2]
    dt = ctx.dtype
    isz = dt.itemsize
    kt = min(H, 256)  # H-chunk of the gate/up reduction
    nt = min(I, 128)  # I-chunk (gate/up outputs; the down reduction's chunk)
    ht = min(H, 256)  # H-chunk of the down outputs
    kcs = [(k0, min(kt, H - k0)) for k0 in range(0, H, kt)]
    ics = [(i0, min(nt, I - i0)) for i0 in range(0, I, nt)]
    hcs = [(h0, min(ht, H - h0)) for h0 in range(0, H, ht)]
    cap = ctx.chip.core.scratchpad.bytes
    fixed = (2 * max(nt * kt, ht * nt) * isz + 4 * R * nt * 4 + R * nt * 4 + 2 * R * ht * 4 + 2 * R * ht * y.dtype.itemsize
             + len(ics) * R * nt * isz + 2 * (2 * R + 1) * 8 + 64 * 64)
    x_bufs = 2 if fixed + 2 * R * H * isz <= cap else 1
    if fixed + x_bufs * R * H * isz > cap:
        raise KernelError(f"moe_ffn: a tile of {R} rows x hidden {H} does not fit the {cap}-byte scratchpad")
    per_core: list[list[int]] = [[] for _ in range(ctx.cores)]
    for t in range(NT):
        per_core[t % ctx.cores].append(t)
    streams = []
    for tiles in per_core:
        b = CoreBuilder(ctx.chip)
        if not tiles:
            streams.append(b.finish())
            continue
        te = [b.alloc(DType.int64, (1,)) for _ in range(2)]
        ttok = [b.alloc(DType.int64, (R,)) for _ in range(2)]
        tslot = [b.alloc(DType.int64, (R,)) for _ in range(2)]
        xb = [[b.alloc(dt, (R, kn)) for _, kn in kcs] for _ in range(x_bufs)]
        wb = [b.alloc(dt, (max(nt * kt, ht * nt),)) for _ in range(2)]
        accg = [b.alloc(F32, (R, nt)) for _ in range(2)]
        accu = [b.alloc(F32, (R, nt)) for _ in range(2)]
        tmp = b.alloc(F32, (R, nt))
        act = [b.alloc(dt, (R, n)) for _, n in ics]
        accd = [b.alloc(F32, (R, ht)) for _ in range(2)]
        outb = [b.alloc(y.dtype, (R, ht)) for _ in range(2)]
        TL, XL, GB, MM, VD, SC = (b.sem() for _ in range(6))
        j = 0  # matmuls (and weight gathers) so far
        nv = 0  # vector groups so far
        nsc = 0  # scatters so far
        cg = 0  # gate/up chunks so far (accumulator parity)
        cd = 0  # down chunks so far
        act_done: list[int] = []  # VD value after each gate/up chunk's activation
        cast_done: list[int] = []  # VD value after each down chunk's cast
        sc_end: list[int] = []  # SC value after each tile's last scatter
        gu_end: list[int] = []  # MM value after each tile's last gate/up matmul
        down_end: list[int] = []
        for li, tg in enumerate(tiles):
            s = li % 2
            w = ((SC, sc_end[li - 2]),) if li >= 2 else ()
            b.emit(DmaLoad(HbmRef(tile_e.offset + tg * tile_e.strides[0] * 8, DType.int64, (1,), (1,)), te[s], waits=w))
            b.emit(DmaLoad(HbmRef(tile_tok.offset + tg * tile_tok.strides[0] * 8, DType.int64, (R,), (1,)), ttok[s]))
            b.emit(DmaLoad(HbmRef(tile_slot.offset + tg * tile_slot.strides[0] * 8, DType.int64, (R,), (1,)), tslot[s],
                           signal=TL))
            xs = xb[li % x_bufs]
            xw = [(TL, li + 1)]
            if li >= x_bufs:
                xw.append((MM, gu_end[li - x_bufs]))
            for ci, (k0, kn) in enumerate(kcs):
                b.emit(DmaGather(_rows(x, k0, kn), ttok[s], xs[ci], waits=tuple(xw) if ci == 0 else (), signal=XL))

            def matmul(a: SramRef, table: HbmRef, bshape: tuple[int, int], acc: SramRef, accumulate: bool,
                       extra: list) -> None:
                nonlocal j
                gw = [(MM, j - 1)] if j >= 2 else []
                wt = SramRef(wb[j % 2].offset, dt, bshape)
                b.emit(DmaGather(table, te[s], wt, waits=tuple(gw), signal=GB))
                b.emit(MatMul(a, wt, acc, accumulate, waits=tuple([(GB, j + 1)] + extra), signal=MM, trans_b=True))
                j += 1

            # gate/up per I-chunk, then the activation into the scratchpad
            for ii, (i0, inn) in enumerate(ics):
                p = cg % 2
                ag, au = sub_ref(accg[p], (R, inn)), sub_ref(accu[p], (R, inn))
                for which, acc, row0 in (("g", ag, i0), ("u", au, I + i0)):
                    for ci, (k0, kn) in enumerate(kcs):
                        extra = []
                        if ci == 0 and which == "g":
                            extra.append((XL, len(kcs) * (li + 1)))
                            if cg >= 2:
                                extra.append((VD, act_done[cg - 2]))
                        matmul(xs[ci], _expert_block(gu, row0, inn, k0, kn), (inn, kn), acc, ci > 0, extra)
                vw = [(MM, j)]
                if ii == 0 and down_end:
                    vw.append((MM, down_end[-1]))
                t_ = sub_ref(tmp, (R, inn))
                b.emit(VecOp("silu", t_, (ag,), waits=tuple(vw)))
                b.emit(VecOp("mul", act[ii], (t_, au), signal=VD))
                nv += 1
                act_done.append(nv)
                cg += 1
            gu_end.append(j)
            # down projection per H-chunk, scattered to the slots
            for hi, (h0, hn) in enumerate(hcs):
                p = cd % 2
                ad = sub_ref(accd[p], (R, hn))
                for ii, (i0, inn) in enumerate(ics):
                    extra = []
                    if ii == 0:
                        extra.append((VD, act_done[-1]))
                        if cd >= 2:
                            extra.append((VD, cast_done[cd - 2]))
                    matmul(act[ii], _expert_block(dn, h0, hn, i0, inn), (hn, inn), ad, ii > 0, extra)
                vw = [(MM, j)] + ([(SC, cd - 1)] if cd >= 2 else [])
                ot = sub_ref(outb[p], (R, hn))
                b.emit(VecOp("identity", ot, (ad,), waits=tuple(vw), signal=VD))
                nv += 1
                cast_done.append(nv)
                b.emit(DmaScatter(ot, tslot[s], _rows(y, h0, hn), waits=((VD, nv),), signal=SC))
                nsc += 1
                cd += 1
            down_end.append(j)
            sc_end.append(nsc)
        streams.append(b.finish())
    flops = 2 * NT * R * 3 * H * I
    experts_read = min(gu.shape[0], y.shape[0] - 1)  # at most one read of each routed expert
    min_bytes = experts_read * 3 * H * I * isz + T * H * x.dtype.itemsize + y.numel * y.dtype.itemsize
    return KernelLaunch(ctx.node.name, "moe", ["moe_ffn"], streams, flops, min_bytes, dt)


__all__ = ["moe_route_kernel", "moe_ffn_kernel"]
