"""Fused flash-style attention: causal, grouped-query, score tiles never leave the scratchpad.

A work unit is (batch b, KV head h, a block of sq query rows). The G = Hq / Hkv query heads
that share KV head h are stacked into one [G*sq, D] Q tile, so each K/V block is loaded
once for the whole group. Per KV block of bk keys (j-th step on a core):

    matrix  S = Q @ K^T                      (K block used transposed, fp32 accumulator)
    vector  S *= scale; causal: S = where(key j <= q_pos[row], S, -inf)
            m_new = max(m, rowmax S); alpha = exp(m - m_new); P = exp(S - m_new)
            l = l * alpha + rowsum P;  P -> matmul dtype
    matrix  PV = P @ V
    vector  O = O * alpha + PV
and after the last block O / l is stored, one [sq, Dv] slab per query head, straight into
the [B, S, Hq, Dv] output. K/V blocks are triple buffered, Q tiles, S/P tiles and PV accumulators double
buffered, and the matrix queue runs QK of block j+1 before PV of block j so the softmax of
one block overlaps the matmuls of its neighbours.

Causal masking uses the query positions (`q_pos`, a runtime int input), so one program
serves every decode step: a decode program reads the first `kv_len` cache slots (its
length bucket) and masks the slots past each query's position. With attrs["prefill"]
the runtime promises q_pos = 0..S-1, so blocks entirely above the diagonal are skipped.

A quantized KV cache (attrs["kv_quant"], compiler/kv_cache.py): K and V blocks arrive in fp8 with
one fp32 scale per cached row (token and head). The vector engine widens each block to the
matmul dtype (exact); S is multiplied by the keys' scales per column, and P by the values'
scales per column before P @ V (the row sum l uses the unscaled P), so
O = sum_j p_j (s_v,j v_j) / sum_j p_j with scores q . (s_k,j k_j): the dequantized cache, exactly.
"""
from __future__ import annotations

import math

from vnpu.dtypes import DType
from vnpu.isa.instructions import DmaLoad, DmaStore, HbmRef, MatMul, SramRef
from vnpu.isa.program import KernelLaunch
from vnpu.kernels.base import CoreBuilder, KernelContext, deal_round_robin, kernel, sub_ref
from vnpu.kernels.stream import VecSeq

F32 = DType.fp32
ROWS_MAX = 512  # query rows (G * sq) per unit, at most (bigger Q tiles reload each K/V block less)
BLOCK_K = 128  # keys per KV block, at most
UNITS_PER_CORE = 4  # work units per core a tile over 128 rows must leave (see attention_tiles)
KV_BUFFERS = 3  # K/V blocks in flight per core: a block's load latency hides behind two blocks of matmuls


def attention_tiles(capacity: int, g: int, s: int, kv_len: int, d: int, dv: int, dt: DType, out_dt: DType,
                    causal: bool, split: bool, row_groups: int = 1, cores: int = 1,
                    kv_dt: DType | None = None) -> tuple[int, int, int]:
    """(query rows per head sq, keys per block bk, K/V buffers): the largest tiles whose
    buffers fit the scratchpad (GPU-like chips have ~200 KiB, vnpu-v1 2 MiB). Tiles over 128
    rows are taken only while they leave UNITS_PER_CORE work units per core (`row_groups`
    = batch x KV heads x splits units per query block): fewer, longer units load-balance
    causal prefills badly, and short prompts would leave cores idle."""
    isz, osz = dt.itemsize, out_dt.itemsize
    for rows_max, bk_max, nbuf in ((ROWS_MAX, BLOCK_K, KV_BUFFERS), (256, BLOCK_K, KV_BUFFERS), (128, BLOCK_K, KV_BUFFERS),
                                   (64, 128, 3), (64, 64, 3), (32, 64, 2), (16, 64, 2), (16, 32, 2), (8, 32, 2),
                                   (1, 16, 2)):
        sq = max(1, min(s, rows_max // g))
        if rows_max > 128 and row_groups * math.ceil(s / sq) < UNITS_PER_CORE * cores:
            continue
        bk = min(bk_max, kv_len)
        r = g * sq
        need = (2 * r * d * isz + nbuf * bk * (d + dv) * isz + 2 * r * bk * 4 + (2 * r * bk * isz if dt != DType.fp32 else 0)
                + 4 * r * dv * 4 + 2 * r * dv * osz + 7 * r * 4 + (2 * sq * 8 + bk * 4 + sq * bk if causal else 0)
                + (2 * r * dv * 4 + 4 * r * 4 if split else 0) + 40 * 64
                + (nbuf * bk * ((d + dv) * kv_dt.itemsize + 8) if kv_dt is not None else 0))
        if need <= capacity:
            return sq, bk, nbuf
    raise ValueError(f"attention: {g} query heads x head dim {d} do not fit a {capacity}-byte scratchpad")


def _mat(ref: HbmRef, lead: tuple[int, ...], r0: int, rn: int) -> HbmRef:
    """Rows r0..r0+rn of the [rows, cols] matrix at leading index `lead` of a rank-4 view."""
    st = ref.strides
    off = sum(i * s for i, s in zip(lead, st[:2])) + r0 * st[2]
    return HbmRef(ref.offset + off * ref.dtype.itemsize, ref.dtype, (rn, ref.shape[3]), (st[2], st[3]))


@kernel("attention")
def attention_kernel(ctx: KernelContext) -> KernelLaunch:
    q, k, v = ctx.inputs[:3]
    qpos = ctx.inputs[3] if len(ctx.inputs) > 3 else None
    kvq = ctx.node.attrs.get("kv_quant")
    k_sc, v_sc = (ctx.inputs[4], ctx.inputs[5]) if kvq is not None else (None, None)
    out = ctx.outputs[0]
    a = ctx.node.attrs
    scale = float(a["scale"])
    B, HQ, S, D = q.shape
    HKV, L = k.shape[1], k.shape[2]
    DV = v.shape[3]
    kv_len = int(a.get("kv_len", L))
    prefill = bool(a.get("prefill", False)) and qpos is not None
    G = HQ // HKV
    dt = ctx.dtype
    isz = dt.itemsize
    splits = int(a.get("kv_splits", 1))
    sq, bk, kv_bufs = attention_tiles(ctx.chip.core.scratchpad.bytes, G, S, kv_len, D, DV, dt, out.dtype,
                                      qpos is not None, splits > 1, B * HKV * splits, ctx.cores,
                                      k.dtype if kvq is not None else None)

    part = ctx.outputs[1] if splits > 1 else None
    # work units (b, h, s0, sn, first block, blocks, split), balanced greedily over the cores
    units = []
    for b in range(B):
        for h in range(HKV):
            for s0 in range(0, S, sq):
                sn = min(sq, S - s0)
                keys = min(kv_len, s0 + sn) if prefill else kv_len
                nb = math.ceil(keys / bk)
                per = math.ceil(nb / splits)
                for sp in range(splits):
                    jb0 = sp * per
                    units.append((b, h, s0, sn, jb0, max(0, min(per, nb - jb0)), sp))
    if splits > 1 and any(u[5] == 0 for u in units):
        raise ValueError(f"attention: {splits} KV splits leave a split without keys (kv_len {kv_len})")
    per_core: list[list[tuple]] = [[] for _ in range(ctx.cores)]
    load = [0] * ctx.cores
    for u in sorted(units, key=lambda u: -u[5]):
        c = min(range(ctx.cores), key=lambda i: load[i])
        per_core[c].append(u)
        load[c] += u[5] + 1
    rows_max = G * sq
    flops = 0
    streams = []
    for core_units in per_core:
        cb = CoreBuilder(ctx.chip)
        if not core_units:
            streams.append(cb.finish())
            continue
        qb = [cb.alloc(dt, (rows_max, D)) for _ in range(2)]
        kb = [cb.alloc(dt, (bk, D)) for _ in range(kv_bufs)]
        vb = [cb.alloc(dt, (bk, DV)) for _ in range(kv_bufs)]
        sb = [cb.alloc(F32, (rows_max, bk)) for _ in range(2)]
        pb = [cb.alloc(dt, (rows_max, bk)) for _ in range(2)] if dt != F32 else sb
        pvb = [cb.alloc(F32, (rows_max, DV)) for _ in range(2)]
        ob = [cb.alloc(F32, (rows_max, DV)) for _ in range(2)]
        outb = [cb.alloc(out.dtype, (rows_max, DV)) for _ in range(2)]
        m = [cb.alloc(F32, (rows_max, 1)) for _ in range(2)]
        lsum = [cb.alloc(F32, (rows_max, 1)) for _ in range(2)]
        alpha = [cb.alloc(F32, (rows_max, 1)) for _ in range(2)]
        tmp = cb.alloc(F32, (rows_max, 1))
        if kvq is not None:  # fp8 blocks as loaded, and their rows' scales
            kb8 = [cb.alloc(k.dtype, (bk, D)) for _ in range(kv_bufs)]
            vb8 = [cb.alloc(v.dtype, (bk, DV)) for _ in range(kv_bufs)]
            ksb = [cb.alloc(F32, (1, bk)) for _ in range(kv_bufs)]
            vsb = [cb.alloc(F32, (1, bk)) for _ in range(kv_bufs)]
            DQ = cb.sem()
        if part is not None:
            stage_o = [cb.alloc(F32, (rows_max, DV)) for _ in range(2)]
            stage_m = [cb.alloc(F32, (rows_max, 1)) for _ in range(2)]
            stage_l = [cb.alloc(F32, (rows_max, 1)) for _ in range(2)]
        if qpos is not None:
            qp = [cb.alloc(qpos.dtype, (sq, 1)) for _ in range(2)]
            kidx = cb.alloc(F32, (bk,))
            mask = cb.alloc(DType.bool, (sq, bk))
        QL, KV, QK, SM, PV, OU, FIN, ST = (cb.sem() for _ in range(8))
        # (unit index, parity) of each global step, and the step index that ends each unit
        steps: list[tuple[int, int, int]] = []  # (unit, block index, key count)
        last_step: list[int] = []
        for ui, (b, h, s0, sn, jb0, nb, sp) in enumerate(core_units):
            for jb in range(jb0, jb0 + nb):
                steps.append((ui, jb, min(bk, kv_len - jb * bk)))
            last_step.append(len(steps) - 1)
        first_step = [0] + [x + 1 for x in last_step[:-1]]

        def rows_of(ui: int) -> int:
            return G * core_units[ui][3]

        # -- DMA in: per unit its Q (and positions), then K/V blocks --
        for ui, (b, h, s0, sn, jb0, nb, sp) in enumerate(core_units):
            w = [(QK, last_step[ui - 2] + 1)] if ui >= 2 else []
            for g in range(G):
                dst = SramRef(qb[ui % 2].offset + g * sn * D * isz, dt, (sn, D))
                cb.emit(DmaLoad(_mat(q, (b, h * G + g), s0, sn), dst, waits=tuple(w) if g == 0 else (),
                                signal=QL if (g == G - 1 and qpos is None) else -1))
            if qpos is not None:
                src = HbmRef(qpos.offset + s0 * qpos.strides[0] * qpos.dtype.itemsize, qpos.dtype, (sn, 1),
                             (qpos.strides[0], 1))
                cb.emit(DmaLoad(src, sub_ref(qp[ui % 2], (sn, 1)), signal=QL))
            for j in range(first_step[ui], last_step[ui] + 1):
                _, jb, bn = steps[j]
                wj = ((PV, j + 1 - kv_bufs),) if j >= kv_bufs else ()  # PV of the block that used the buffers
                if kvq is not None:  # staging buffers: free once block j - kv_bufs is widened (K, V) and softmaxed (scales)
                    wj = ((DQ, j + 1 - kv_bufs), (SM, j + 1 - kv_bufs)) if j >= kv_bufs else ()
                    cb.emit(DmaLoad(_mat(k, (b, h), jb * bk, bn), sub_ref(kb8[j % kv_bufs], (bn, D)), waits=wj))
                    cb.emit(DmaLoad(_mat(v, (b, h), jb * bk, bn), sub_ref(vb8[j % kv_bufs], (bn, DV))))
                    for sc, buf in ((k_sc, ksb), (v_sc, vsb)):
                        row = _mat(sc, (b, h), jb * bk, bn)
                        cb.emit(DmaLoad(HbmRef(row.offset, F32, (1, bn), (0, row.strides[0])),
                                        sub_ref(buf[j % kv_bufs], (1, bn)), signal=KV if buf is vsb else -1))
                    continue
                cb.emit(DmaLoad(_mat(k, (b, h), jb * bk, bn), sub_ref(kb[j % kv_bufs], (bn, D)), waits=wj))
                cb.emit(DmaLoad(_mat(v, (b, h), jb * bk, bn), sub_ref(vb[j % kv_bufs], (bn, DV)), signal=KV))

        # -- matrix: QK(j+1) ahead of PV(j) --
        def qk(j: int) -> None:
            ui, jb, bn = steps[j]
            r = rows_of(ui)
            w = [(DQ if kvq is not None else KV, j + 1), (QL, ui + 1)] + ([(PV, j - 1)] if j >= 2 else [])
            cb.emit(MatMul(sub_ref(qb[ui % 2], (r, D)), sub_ref(kb[j % kv_bufs], (bn, D)), sub_ref(sb[j % 2], (r, bn)),
                           accumulate=False, waits=tuple(w), signal=QK, trans_b=True))

        def pv(j: int) -> None:
            ui, jb, bn = steps[j]
            r = rows_of(ui)
            w = [(SM, j + 1)] + ([(OU, j - 1)] if j >= 2 else [])
            cb.emit(MatMul(sub_ref(pb[j % 2], (r, bn)), sub_ref(vb[j % kv_bufs], (bn, DV)), sub_ref(pvb[j % 2], (r, DV)),
                           accumulate=False, waits=tuple(w), signal=PV))

        n = len(steps)
        qk(0)
        for j in range(n):
            if j + 1 < n:
                qk(j + 1)
            pv(j)
        for ui, jb, bn in steps:
            r = rows_of(ui)
            flops += 2 * r * bn * (D + DV)

        # -- vector: softmax(j), then the O update of j-1 (and a unit's finish) --
        def softmax(j: int) -> None:
            ui, jb, bn = steps[j]
            b_, h_, s0, sn, jb0, nb, sp = core_units[ui]
            r = rows_of(ui)
            first = j == first_step[ui]
            s = sub_ref(sb[j % 2], (r, bn))
            mm, ll, al, tt = (sub_ref(x, (r, 1)) for x in (m[ui % 2], lsum[ui % 2], alpha[j % 2], tmp))
            vs = VecSeq()
            vs("mul", s, s, scale)
            if kvq is not None:
                vs("mul", s, s, sub_ref(ksb[j % kv_bufs], (1, bn)))
            if qpos is not None:
                ki = sub_ref(kidx, (bn,))
                mk = sub_ref(mask, (sn, bn))
                vs("iota", ki, start=jb * bk)
                vs("le", mk, ki, sub_ref(qp[ui % 2], (sn, 1)))
                s3 = sub_ref(sb[j % 2], (G, sn, bn))
                vs("where", s3, mk, s3, float("-inf"))
            if first:
                vs("reduce_max", mm, s)
                if part is not None:  # a split may see only masked keys: keep the max finite
                    vs("maximum", mm, mm, -1e30)
            else:
                vs("reduce_max", tt, s)
                vs("maximum", tt, mm, tt)
                vs("sub", al, mm, tt)
                vs("exp", al, al)
                vs("identity", mm, tt)
            vs("sub", s, s, mm)
            vs("exp", s, s)
            if first:
                vs("reduce_sum", ll, s)
            else:
                vs("reduce_sum", tt, s)
                vs("mul", ll, ll, al)
                vs("add", ll, ll, tt)
            if kvq is not None:  # P times the values' scales (after l, which sums the unscaled P)
                vs("mul", sub_ref(pb[j % 2], (r, bn)), s, sub_ref(vsb[j % kv_bufs], (1, bn)))
            elif pb is not sb:
                vs("identity", sub_ref(pb[j % 2], (r, bn)), s)
            w = [(QK, j + 1)] + ([(PV, j - 1)] if j >= 2 else [])
            vs.emit(cb, w, SM)

        def widen(j: int) -> None:  # block j's fp8 K and V in the matmul dtype, once their buffers are free
            ui, jb, bn = steps[j]
            vs = VecSeq()
            vs("identity", sub_ref(kb[j % kv_bufs], (bn, D)), sub_ref(kb8[j % kv_bufs], (bn, D)))
            vs("identity", sub_ref(vb[j % kv_bufs], (bn, DV)), sub_ref(vb8[j % kv_bufs], (bn, DV)))
            vs.emit(cb, [(KV, j + 1)] + ([(PV, j + 1 - kv_bufs)] if j >= kv_bufs else []), DQ)

        def update(j: int) -> None:
            ui, jb, bn = steps[j]
            r = rows_of(ui)
            o = sub_ref(ob[ui % 2], (r, DV))
            p_ = sub_ref(pvb[j % 2], (r, DV))
            vs = VecSeq()
            if j == first_step[ui]:
                vs("identity", o, p_)
            else:
                vs("mul", o, o, sub_ref(alpha[j % 2], (r, 1)))
                vs("add", o, o, p_)
            vs.emit(cb, [(PV, j + 1)], OU)
            if j == last_step[ui]:
                finish(ui)

        def finish(ui: int) -> None:
            b, h, s0, sn, jb0, nb, sp = core_units[ui]
            r = rows_of(ui)
            ll, tt = sub_ref(lsum[ui % 2], (r, 1)), sub_ref(tmp, (r, 1))
            if part is not None:  # this split's unnormalized O, max and sum, staged for the combine pass
                po, pm, pl = (sub_ref(x[ui % 2], shp) for x, shp in ((stage_o, (r, DV)), (stage_m, (r, 1)),
                                                                     (stage_l, (r, 1))))
                vs = VecSeq()
                vs("identity", po, sub_ref(ob[ui % 2], (r, DV)))
                vs("identity", pm, sub_ref(m[ui % 2], (r, 1)))
                vs("identity", pl, ll)
                vs.emit(cb, [(ST, 3 * G * (ui - 1))] if ui >= 2 else [], FIN)
                pst = part.strides
                for g in range(G):
                    base = sp * pst[0] + b * pst[1] + s0 * pst[2] + (h * G + g) * pst[3]
                    for col, src_buf, width in ((0, po, DV), (DV, pm, 1), (DV + 1, pl, 1)):
                        src = SramRef(src_buf.offset + g * sn * width * 4, F32, (sn, width))
                        dst = HbmRef(part.offset + (base + col * pst[4]) * 4, F32, (sn, width), (pst[2], pst[4]))
                        cb.emit(DmaStore(src, dst, waits=((FIN, ui + 1),) if (g == 0 and col == 0) else (),
                                         signal=ST))
                return
            ot = sub_ref(outb[ui % 2], (r, DV))
            vs = VecSeq()
            vs("reciprocal", tt, ll)
            vs("mul", ot, sub_ref(ob[ui % 2], (r, DV)), tt)
            vs.emit(cb, [(ST, G * (ui - 1))] if ui >= 2 else [], FIN)
            for g in range(G):
                src = SramRef(ot.offset + g * sn * DV * out.dtype.itemsize, out.dtype, (sn, DV))
                st = out.strides
                off = b * st[0] + s0 * st[1] + (h * G + g) * st[2]
                dst = HbmRef(out.offset + off * out.dtype.itemsize, out.dtype, (sn, DV), (st[1], st[3]))
                cb.emit(DmaStore(src, dst, waits=((FIN, ui + 1),) if g == 0 else (), signal=ST))

        if kvq is not None:
            widen(0)
        for j in range(n):
            if kvq is not None and j + 1 < n:
                widen(j + 1)
            softmax(j)
            if j >= 1:
                update(j - 1)
        update(n - 1)
        streams.append(cb.finish())
    kv_bytes = B * HKV * kv_len * (D * k.dtype.itemsize + DV * v.dtype.itemsize + (8 if kvq is not None else 0))
    min_bytes = q.numel * q.dtype.itemsize + kv_bytes + out.numel * out.dtype.itemsize
    launch = KernelLaunch(ctx.node.name, "attention", ["attention"], streams, flops, min_bytes, dt)
    if part is None:
        return launch
    return [launch, _combine(ctx, part, out, splits)]


def choose_kv_splits(cores: int, b: int, hkv: int, s: int, hq: int, kv_len: int) -> int:
    """Flash-decoding: when (batch x KV heads x query blocks) leaves cores idle, split each
    unit's keys over several cores (at least two KV blocks per split)."""
    sq = max(1, min(s, ROWS_MAX // max(hq // hkv, 1)))
    units = b * hkv * math.ceil(s / sq)
    blocks = math.ceil(kv_len / min(BLOCK_K, kv_len))
    splits = max(1, min(cores // units, blocks // 2))
    return math.ceil(blocks / math.ceil(blocks / splits))  # so that no split is left without blocks


def _combine(ctx: KernelContext, part: HbmRef, out: HbmRef, splits: int) -> KernelLaunch:
    """out = sum_i w_i O_i / sum_i w_i l_i, w_i = exp(m_i - max_i m_i), over the splits, per row."""
    B, S, HQ, DV = out.shape
    rows = B * S * HQ
    per_row = splits * (DV + 2) * 4 * 2 + DV * (4 * 3 + out.dtype.itemsize * 2)
    r_t = max(1, min(math.ceil(rows / ctx.cores), ctx.chip.core.scratchpad.bytes // 2 // per_row))
    tiles = [(r0, min(r_t, rows - r0)) for r0 in range(0, rows, r_t)]
    assert tuple(out.strides) == (S * HQ * DV, HQ * DV, DV, 1), "attention writes a contiguous output"
    ps = part.strides
    streams = []
    for core_tiles in deal_round_robin(tiles, ctx.cores):
        cb = CoreBuilder(ctx.chip)
        if core_tiles:
            ob_ = cb.alloc(F32, (splits, r_t, DV))
            mb = cb.alloc(F32, (splits, r_t, 1))
            lb = cb.alloc(F32, (splits, r_t, 1))
            mx = cb.alloc(F32, (1, r_t, 1))
            acc = cb.alloc(F32, (1, r_t, DV))
            res = cb.alloc(out.dtype, (1, r_t, DV))
            LD, CP, ST = cb.sem(), cb.sem(), cb.sem()
            for t, (r0, rn) in enumerate(core_tiles):
                def view(col: int, width: int) -> HbmRef:
                    return HbmRef(part.offset + (r0 * ps[3] + col) * 4, F32, (splits, rn, width), (ps[0], ps[3], ps[4]))
                o_t, m_t, l_t = sub_ref(ob_, (splits, rn, DV)), sub_ref(mb, (splits, rn, 1)), sub_ref(lb, (splits, rn, 1))
                w0 = ((CP, t),) if t >= 1 else ()
                cb.emit(DmaLoad(view(0, DV), o_t, waits=w0))
                cb.emit(DmaLoad(view(DV, 1), m_t))
                cb.emit(DmaLoad(view(DV + 1, 1), l_t, signal=LD))
                x_t, a_t, r_t_ = sub_ref(mx, (1, rn, 1)), sub_ref(acc, (1, rn, DV)), sub_ref(res, (1, rn, DV))
                vs = VecSeq()
                vs("reduce_max", x_t, m_t, axis=0)
                vs("sub", m_t, m_t, x_t)
                vs("exp", m_t, m_t)  # w_i
                vs("mul", l_t, l_t, m_t)
                vs("reduce_sum", x_t, l_t, axis=0)  # L
                vs("mul", o_t, o_t, m_t)
                vs("reduce_sum", a_t, o_t, axis=0)
                vs("reciprocal", x_t, x_t)
                vs("mul", r_t_, a_t, x_t)
                vs.emit(cb, [(LD, t + 1)] + ([(ST, t)] if t >= 1 else []), CP)
                dst = HbmRef(out.offset + r0 * DV * out.dtype.itemsize, out.dtype, (1, rn, DV), (0, DV, 1))
                cb.emit(DmaStore(r_t_, dst, waits=((CP, t + 1),), signal=ST))
        streams.append(cb.finish())
    min_bytes = part.numel * 4 + out.numel * out.dtype.itemsize
    return KernelLaunch(f"{ctx.node.name}_combine", "attention", ["attention_combine"], streams, 0, min_bytes, ctx.dtype)
