"""Reductions (sum, mean, max, min, prod over any set of axes) on the streaming pipeline.

The input is seen in its row layout (stream.row_layout): tiles [P, R] with the reduced
dims innermost, or [P, R, Q] when the reduced dims are strided in memory and a kept dim is
contiguous. Each tile is one vector reduction over axis R (mean: times 1/R). Rows longer
than the scratchpad holds are split into R chunks on one core: each chunk is reduced into
a partial and folded into an fp32 accumulator that stays in scratchpad; the last chunk
writes the output.
"""
from __future__ import annotations

import math

from vnpu.isa.instructions import SramRef
from vnpu.isa.program import KernelLaunch
from vnpu.kernels.base import CoreBuilder, KernelContext, KernelError, kernel, sub_ref, temp_dtype
from vnpu.kernels.stream import (
    StreamTile, VecSeq, aligned, box_tiles, emit_streaming, plan_rows, row_layout, row_tiles, spread_elems, sub,
    vector_flops,
)

_REDUCE_OP = {"sum": "reduce_sum", "mean": "reduce_sum", "max": "reduce_max", "min": "reduce_min", "prod": "reduce_prod"}
_COMBINE = {"sum": "add", "mean": "add", "max": "maximum", "min": "minimum", "prod": "mul"}


@kernel("reduce")
def reduce_kernel(ctx: KernelContext) -> KernelLaunch:
    x, out = ctx.inputs[0], ctx.outputs[0]
    a = ctx.node.attrs
    kind = a["kind"]
    if kind not in _REDUCE_OP:
        raise KernelError(f"reduce kind {kind!r} has no kernel (sum, mean, max, min, prod)")
    axes = sorted(set(a["axes"]))
    keepdim = bool(a.get("keepdim", False))
    rank = len(x.shape)
    # the output's stride for each input dim (0 along the reduced ones)
    out_st = []
    j = 0
    for i in range(rank):
        if i in axes:
            out_st.append(0)
            j += keepdim
        else:
            out_st.append(out.strides[j])
            j += 1
    lay = row_layout(x.shape, axes, [(x, x.strides), (out, tuple(out_st))], ctx.chip.hbm.burst_bytes)
    R_total = lay.R
    acc_dt = temp_dtype(x.dtype)
    isz, osz, asz = x.dtype.itemsize, out.dtype.itemsize, acc_dt.itemsize

    def need(p: int, r: int, q: int) -> int:
        rows = p * q
        return (2 * aligned(p * r * q * isz) + 2 * aligned(rows * osz) + 2 * aligned(rows * asz)
                + 4 * 64)

    cap = ctx.chip.core.scratchpad.bytes
    pc, rc, qc = plan_rows(lay, need, cap, spread_elems(ctx, x.numel), q_min=max(1, ctx.chip.hbm.burst_bytes // isz)) \
        if x.numel else (1, 1, 1)
    groups = row_tiles(lay, pc, rc, qc) if x.numel and out.numel else []
    tiles: list[StreamTile] = []
    for grp in groups:
        for rt in grp:
            p, r, q = rt.shape
            last = rt.chunk == rt.chunks - 1
            store = lay.view(1, rt.o, None, rt.q) if last else None
            tiles.append(StreamTile([(lay.view(0, rt.o, rt.r, rt.q), lay.tile_shape(p, r, q))], store,
                                    lay.tile_shape(p, 1, q), info=rt, chain=not last))
    temps: dict[str, SramRef] = {}

    def setup(b: CoreBuilder) -> None:
        rows = lay.tile_shape(pc, 1, qc)
        temps["acc"] = b.alloc(acc_dt, rows)
        temps["part"] = b.alloc(acc_dt, rows)

    red_op, comb = _REDUCE_OP[kind], _COMBINE[kind]
    ra = lay.red_attrs

    def compute(b: CoreBuilder, loaded: list[SramRef], out_t: SramRef, tile: StreamTile, waits: tuple, signal: int):
        rt = tile.info
        first, last = rt.chunk == 0, rt.chunk == rt.chunks - 1
        xs = loaded[0]
        rows = out_t.shape
        acc, part = sub_ref(temps["acc"], rows), sub_ref(temps["part"], rows)
        v = VecSeq()
        if first and last:
            if kind == "mean":
                v(red_op, acc, xs, **ra)
                v("mul", out_t, acc, 1.0 / R_total)
            else:
                v(red_op, out_t, xs, **ra)
        elif first:
            v(red_op, acc, xs, **ra)
        else:
            v(red_op, part, xs, **ra)
            if not last:
                v(comb, acc, acc, part)
            elif kind == "mean":
                v(comb, acc, acc, part)
                v("mul", out_t, acc, 1.0 / R_total)
            else:
                v(comb, out_t, acc, part)
        v.emit(b, waits, signal)
        return None

    if x.numel == 0 and out.numel:  # reducing empty dims: the identity of the reduction
        if kind in ("max", "min"):
            raise KernelError(f"reduce {kind} over an empty dimension has no identity")
        fill = {"sum": 0.0, "prod": 1.0}.get(kind, float("nan"))
        o_view = lay.view(1, ((0,) * len(lay.outer), lay.outer), None, (0, lay.q))
        tiles = []
        for starts, sizes in box_tiles(o_view.shape, spread_elems(ctx, out.numel)):
            tiles.append(StreamTile([], sub(o_view, starts, sizes), (math.prod(sizes),), info="fill"))

        def compute(b, loaded, out_t, tile, waits, signal):  # noqa: F811
            v = VecSeq()
            v("fill", out_t, value=fill)
            v.emit(b, waits, signal)

    min_bytes = x.footprint_bytes() + out.numel * out.dtype.itemsize
    launch = emit_streaming(ctx, tiles, compute, setup, "reduce", [f"reduce_{kind}"], 0, min_bytes)
    launch.flops = vector_flops(launch)
    return launch

