"""Softmax and log-softmax along any axis, numerically stable, on the streaming pipeline.

Rows run along the softmax axis in the row layout (stream.row_layout), so a non-last axis
becomes [P, R, Q] tiles reduced over their middle axis instead of a strided gather.
Per tile (all in fp32):  m = max(x);  t = x - m;  e = exp(t);  s = sum(e);
softmax = e * (1/s);  log-softmax = t - log(s).

Rows longer than the scratchpad holds take two passes over R chunks on one core (online
softmax): pass 1 keeps a running max M and a running sum S of exp(x - M), rescaling S by
exp(M_old - M_new) when the max grows; pass 2 writes exp(x - M) / S, or x - (M + log S).
"""
from __future__ import annotations

from vnpu.dtypes import DType
from vnpu.isa.instructions import SramRef
from vnpu.isa.program import KernelLaunch
from vnpu.kernels.base import CoreBuilder, KernelContext, kernel, sub_ref
from vnpu.kernels.stream import (
    StreamTile, VecSeq, aligned, emit_streaming, plan_rows, row_layout, row_tiles, spread_elems, vector_flops,
)

F32 = DType.fp32


@kernel("softmax")
def softmax_kernel(ctx: KernelContext) -> KernelLaunch:
    x, out = ctx.inputs[0], ctx.outputs[0]
    axis = ctx.node.attrs["axis"]
    axis = axis + len(x.shape) if axis < 0 else axis
    log = bool(ctx.node.attrs.get("log", False))
    lay = row_layout(x.shape, [axis], [(x, x.strides), (out, out.strides)], ctx.chip.hbm.burst_bytes)
    isz, osz = x.dtype.itemsize, out.dtype.itemsize
    n_full = 2 if log else 1  # fp32 full-tile temps

    def need(p: int, r: int, q: int) -> int:
        n = p * r * q
        return (2 * aligned(n * isz) + 2 * aligned(n * osz) + n_full * aligned(4 * n)
                + 6 * aligned(4 * p * q) + 4 * 64)

    cap = ctx.chip.core.scratchpad.bytes
    pc, rc, qc = plan_rows(lay, need, cap, spread_elems(ctx, x.numel), q_min=max(1, ctx.chip.hbm.burst_bytes // isz))
    tiles: list[StreamTile] = []
    for grp in (row_tiles(lay, pc, rc, qc) if x.numel else []):
        multi = len(grp) > 1
        passes = (1, 2) if multi else (0,)
        for ps in passes:
            for rt in grp:
                p, r, q = rt.shape
                last_of_pass = rt.chunk == rt.chunks - 1
                store = None if ps == 1 else lay.view(1, rt.o, rt.r, rt.q)
                shape = lay.tile_shape(p, r, q)
                tiles.append(StreamTile([(lay.view(0, rt.o, rt.r, rt.q), shape)], store,
                                        shape, info=(ps, rt), chain=not (ps != 1 and last_of_pass)))
    temps: dict[str, SramRef] = {}

    def setup(b: CoreBuilder) -> None:
        full = lay.tile_shape(pc, rc, qc)
        rows = lay.tile_shape(pc, 1, qc)
        temps["t"] = b.alloc(F32, full)
        if log:
            temps["e"] = b.alloc(F32, full)
        for k in ("m0", "m1", "s", "part", "d"):
            temps[k] = b.alloc(F32, rows)

    ra = lay.red_attrs
    state = {"m": 0}  # which of m0/m1 holds the running max (emission order = execution order per core)

    def compute(b: CoreBuilder, loaded: list[SramRef], out_t: SramRef, tile: StreamTile, waits: tuple, signal: int):
        ps, rt = tile.info
        xs = loaded[0]
        full = xs.shape
        rows = lay.tile_shape(full[0], 1, full[2] if lay.three_d else 1)
        t = sub_ref(temps["t"], full)
        s, part, d = (sub_ref(temps[k], rows) for k in ("s", "part", "d"))
        v = VecSeq()
        if ps == 0:  # whole rows in the tile
            m = sub_ref(temps["m0"], rows)
            v("reduce_max", m, xs, **ra)
            v("sub", t, xs, m)
            if log:
                e = sub_ref(temps["e"], full)
                v("exp", e, t)
                v("reduce_sum", s, e, **ra)
                v("log", s, s)
                v("sub", out_t, t, s)
            else:
                v("exp", t, t)
                v("reduce_sum", s, t, **ra)
                v("reciprocal", s, s)
                v("mul", out_t, t, s)
        elif ps == 1:  # pass 1: running max and rescaled running sum
            if rt.chunk == 0:
                state["m"] = 0
                m = sub_ref(temps["m0"], rows)
                v("reduce_max", m, xs, **ra)
                v("sub", t, xs, m)
                v("exp", t, t)
                v("reduce_sum", s, t, **ra)
            else:
                m_old = sub_ref(temps[f"m{state['m']}"], rows)
                state["m"] ^= 1
                m = sub_ref(temps[f"m{state['m']}"], rows)
                v("reduce_max", part, xs, **ra)
                v("maximum", m, m_old, part)
                v("sub", d, m_old, m)
                v("exp", d, d)
                v("mul", s, s, d)
                v("sub", t, xs, m)
                v("exp", t, t)
                v("reduce_sum", part, t, **ra)
                v("add", s, s, part)
            if rt.chunk == rt.chunks - 1:
                if log:  # s <- M + log(S): pass 2 writes x - s
                    v("log", s, s)
                    v("add", s, s, m)
                else:
                    v("reciprocal", s, s)
        else:  # pass 2
            if log:
                v("sub", out_t, xs, s)
            else:
                m = sub_ref(temps[f"m{state['m']}"], rows)
                v("sub", t, xs, m)
                v("exp", t, t)
                v("mul", out_t, t, s)
        v.emit(b, waits, signal)
        return None

    min_bytes = x.footprint_bytes() + out.numel * out.dtype.itemsize
    launch = emit_streaming(ctx, tiles, compute, setup, "norm", ["log_softmax" if log else "softmax"], 0, min_bytes)
    launch.flops = vector_flops(launch)
    return launch
