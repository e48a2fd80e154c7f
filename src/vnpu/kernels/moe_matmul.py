"""moe_matmul: one grouped matmul over a moe_route schedule, y[slot] = x[token] @ w[e]^T.

The single-projection form of moe_ffn's second launch, for grouped matmuls that arrive one
projection at a time (transformers' `grouped_mm` experts: tokens sorted by expert, group
offsets, one grouped_mm for gate/up and one for down). Work items (tile, N-chunk) are dealt
over the cores; per item the tile's expert id and token/slot tables are loaded, the tile's
X rows gathered per K-chunk by token index (DmaGather), the expert's [N-chunk, K-chunk]
weight blocks gathered by expert id (only routed experts' weights are read), accumulated
on the array (fp32), and the rows scattered to their slots (pad rows to the dump row).
Tables, X rows and accumulators are double-buffered per item, weight blocks ring-buffered.
"""
from __future__ import annotations

from vnpu.dtypes import DType
from vnpu.isa.instructions import DmaGather, DmaScatter, MatMul, SramRef, VecOp
from vnpu.isa.program import KernelLaunch
from vnpu.kernels.base import CoreBuilder, KernelContext, KernelError, deal_round_robin, kernel, sub_ref
from vnpu.kernels.moe import _chunk, _depth, _expert_block, _rows, _tables

F32 = DType.fp32
K_CHUNK = 512


@kernel("moe_matmul")
def moe_matmul_kernel(ctx: KernelContext) -> KernelLaunch:
    x, tile_e, tile_tok, tile_slot, w = ctx.inputs
    (y,) = ctx.outputs
    NT, R = tile_tok.shape
    K = x.shape[1]
    N = w.shape[1]
    dt = ctx.dtype
    isz = x.dtype.itemsize
    cap = ctx.chip.core.scratchpad.bytes
    kt = min(K, K_CHUNK)
    nt = _chunk(N, 256, -(-ctx.cores // max(NT, 1)))
    kcs = [(k0, min(kt, K - k0)) for k0 in range(0, K, kt)]
    ncs = [(n0, min(nt, N - n0)) for n0 in range(0, N, nt)]
    need = 2 * R * K * isz + 2 * nt * kt * isz + 2 * R * nt * 4 + 2 * R * nt * y.dtype.itemsize + 2 * (R + 1) * 16 + 256
    if need > cap:
        raise KernelError(f"moe_matmul: a tile of {R} rows x {K} inputs does not fit the {cap}-byte scratchpad")
    depth = _depth(nt * kt * isz, cap - need)
    items = [(t, nc) for t in range(NT) for nc in range(len(ncs))]
    streams = []
    for mine in deal_round_robin(items, ctx.cores):
        b = CoreBuilder(ctx.chip)
        if not mine:
            streams.append(b.finish())
            continue
        te = [b.alloc(DType.int64, (1,)) for _ in range(2)]
        ts = [b.alloc(DType.int64, (R,)) for _ in range(2)]
        tt = [b.alloc(DType.int64, (R,)) for _ in range(2)]
        xb = [[b.alloc(x.dtype, (R, kn)) for _, kn in kcs] for _ in range(2)]
        wb = [b.alloc(w.dtype, (nt, kt)) for _ in range(depth)]
        acc = [b.alloc(F32, (R, nt)) for _ in range(2)]
        ob = [b.alloc(y.dtype, (R, nt)) for _ in range(2)]
        TL, XL, GB, MM, VD, SC = (b.sem() for _ in range(6))
        j = 0
        mm_end: list[int] = []
        for li, (t, nc) in enumerate(mine):
            s = li % 2
            n0, nn = ncs[nc]
            # buffers of item li-2 are free once its matmuls and its scatter are done
            free = ((MM, mm_end[li - 2]), (SC, li - 1)) if li >= 2 else ()
            _tables(b, tile_e, t, 1, te[s], waits=free)
            _tables(b, tile_slot, t, R, ts[s])
            _tables(b, tile_tok, t, R, tt[s], signal=TL)  # in-order queue: all three tables loaded
            for ci, (k0, kn) in enumerate(kcs):
                b.emit(DmaGather(_rows(x, k0, kn), tt[s], xb[s][ci], waits=((TL, li + 1),) if ci == 0 else (),
                                 signal=XL))
            a_t = sub_ref(acc[s], (R, nn))
            for ci, (k0, kn) in enumerate(kcs):
                wt = SramRef(wb[j % depth].offset, w.dtype, (nn, kn))
                gw = ([(MM, j - depth + 1)] if j >= depth else []) + ([(TL, li + 1)] if ci == 0 else [])
                b.emit(DmaGather(_expert_block(w, n0, nn, k0, kn), te[s], wt, waits=tuple(gw), signal=GB))
                mw = [(GB, j + 1)]
                if ci == 0:
                    mw.append((XL, len(kcs) * (li + 1)))
                    if li >= 2:
                        mw.append((VD, li - 1))  # the accumulator of item li-2 was read out
                b.emit(MatMul(xb[s][ci], wt, a_t, ci > 0, waits=tuple(mw), signal=MM, trans_b=True))
                j += 1
            mm_end.append(j)
            o_ = sub_ref(ob[s], (R, nn))
            b.emit(VecOp("identity", o_, (a_t,), waits=((MM, j),) + (((SC, li - 1),) if li >= 2 else ()), signal=VD))
            b.emit(DmaScatter(o_, ts[s], _rows(y, n0, nn), waits=((VD, li + 1),), signal=SC))
        streams.append(b.finish())
    experts_read = min(w.shape[0], NT)
    flops = 2 * NT * R * N * K
    min_bytes = experts_read * N * K * w.dtype.itemsize + x.numel * isz + y.numel * y.dtype.itemsize
    return KernelLaunch(ctx.node.name, "moe", ["moe_matmul"], streams, flops, min_bytes, dt)
