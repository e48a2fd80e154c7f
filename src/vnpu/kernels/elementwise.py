"""Fused elementwise chains: every operand broadcast to the output, one vector step per op."""
from __future__ import annotations

import math

from vnpu.isa.program import KernelLaunch
from vnpu.kernels.base import Expr, KernelContext, emit_expr, expr_temps, kernel
from vnpu.kernels.stream import StreamTile, box_tiles, coalesce, emit_streaming, sub, tile_budget
from vnpu.kernels.views import broadcast_to


@kernel("fused_elementwise")
def elementwise_kernel(ctx: KernelContext) -> KernelLaunch:
    expr: Expr = ctx.node.attrs["expr"]
    out = ctx.outputs[0]
    live = [i for i, s in enumerate(ctx.scalars) if s is None]
    refs = [broadcast_to(ctx.inputs[i], out.shape) for i in live]
    shape, views = coalesce(out.shape, [out] + refs)
    out_v, in_v = views[0], views[1:]
    n_temps = max(len(expr.steps) - 1, 0)
    per_elem = 2 * sum(r.dtype.itemsize for r in in_v) + 4 * n_temps + 2 * out.dtype.itemsize
    total = out.numel
    tiles = []
    for starts, sizes in box_tiles(shape, tile_budget(ctx, per_elem, total)):
        tiles.append(StreamTile([(sub(r, starts, sizes), sizes) for r in in_v], sub(out_v, starts, sizes), sizes))
    temps_holder: list = []

    def setup(b) -> None:
        mx = max((t.out_shape for t in tiles), key=math.prod)
        temps_holder.clear()
        temps_holder.extend(expr_temps(b, expr, mx))

    def compute(b, loaded, out_t, tile, waits, signal) -> None:
        it = iter(loaded)
        operands = [next(it) if s is None else s for s in ctx.scalars]
        emit_expr(b, expr, operands, out_t, temps_holder, waits, signal)

    min_bytes = out.numel * out.dtype.itemsize + sum(ctx.inputs[i].footprint_bytes() for i in live)
    return emit_streaming(ctx, tiles, compute, setup, "elementwise", expr.ops, total * len(expr.steps), min_bytes)
