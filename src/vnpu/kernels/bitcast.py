"""bitcast: the input's bytes reinterpreted as another dtype of the same width (ONNX BitCast).

A copy kernel whose loads read the source view typed as the output dtype: the DMA engine moves
bytes, so no value is converted and the timing is the copy's.
"""
from __future__ import annotations

import dataclasses

from vnpu.isa.program import KernelLaunch
from vnpu.kernels.base import KernelContext, kernel
from vnpu.kernels.copy import _nbytes, emit_moves, move_budget, plan_moves


@kernel("bitcast")
def bitcast_kernel(ctx: KernelContext) -> KernelLaunch:
    src, out = ctx.inputs[0], ctx.outputs[0]
    if src.dtype.itemsize != out.dtype.itemsize:
        raise NotImplementedError(f"bitcast: {src.dtype} and {out.dtype} differ in width")
    as_out = dataclasses.replace(src, dtype=out.dtype)  # same bytes, read as the output type
    moves = plan_moves(ctx.chip, [(as_out, out)], move_budget(ctx, out.dtype.itemsize, out.numel))
    return emit_moves(ctx, moves, [], 0.0, "copy", 0, src.footprint_bytes() + _nbytes(out))
