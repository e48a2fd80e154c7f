"""Rotary position embedding (rotate-half form) in one streaming kernel.

    out = x * cos + rotate_half(x) * sin,   rotate_half(x) = cat(-x[h:], x[:h])

Tensors are seen as [rows..., 2, h] (the two halves of the last axis). Each tile loads x
twice: once as is, once through a view whose half axis runs backwards (negative stride),
so the DMA engine delivers (x[h:], x[:h]) without a copy in HBM; a sign tile (-1, +1) per
half, made with `iota`, supplies the negation. cos and sin are loaded through their
broadcast views. Vector work per element: 3 multiplies and an add, in fp32. With attrs norm_eps the rows are
RMS-normalized first (Qwen3's q/k norms), the norm weight loaded straight and half-swapped.
"""
from __future__ import annotations

import math

from vnpu.dtypes import DType
from vnpu.isa.instructions import HbmRef, SramRef
from vnpu.isa.program import KernelLaunch
from vnpu.kernels.base import CoreBuilder, KernelContext, kernel, sub_ref
from vnpu.kernels.stream import StreamTile, VecSeq, box_tiles, emit_streaming, sub, tile_budget
from vnpu.kernels.views import broadcast_to

F32 = DType.fp32


def _halves(ref: HbmRef, flip: bool = False) -> HbmRef:
    """[..., D] -> [..., 2, D/2]; with flip the half axis is reversed (second half first)."""
    h = ref.shape[-1] // 2
    st = ref.strides[-1]
    if flip:
        return HbmRef(ref.offset + h * st * ref.dtype.itemsize, ref.dtype, ref.shape[:-1] + (2, h),
                      ref.strides[:-1] + (-h * st, st))
    return HbmRef(ref.offset, ref.dtype, ref.shape[:-1] + (2, h), ref.strides[:-1] + (h * st, st))


@kernel("rope")
def rope_kernel(ctx: KernelContext) -> KernelLaunch:
    x, c, s = ctx.inputs[:3]
    out = ctx.outputs[0]
    shape = out.shape
    h = shape[-1] // 2
    norm_eps = ctx.node.attrs.get("norm_eps")
    xa, xr = _halves(x), _halves(x, flip=True)
    cv, sv = _halves(broadcast_to(c, shape)), _halves(broadcast_to(s, shape))
    ov = _halves(out)
    srcs = [xa, xr, cv, sv]
    if norm_eps is not None and len(ctx.inputs) > 3:  # the norm weight, straight and half-swapped
        w = broadcast_to(ctx.inputs[3], shape)
        srcs += [_halves(w), _halves(w, flip=True)]
    lead = shape[:-1]
    per_elem = 2 * (sum(r.dtype.itemsize for r in srcs) + out.dtype.itemsize) + 2 * 4 + 4  # loads, out, temps
    budget = tile_budget(ctx, per_elem * 1.1, out.numel)
    rows = max(1, budget // shape[-1])
    # a row longer than the scratchpad holds splits along the half axis: out[:, j] needs x[:, j] of
    # both halves only (not with norm_eps, whose RMS needs the whole row)
    hc = h if norm_eps is not None or 2 * h <= budget else max(1, budget // 2)
    tiles = []
    for starts, sizes in box_tiles(lead, rows if hc == h else 1):
        for j0 in range(0, h, hc):
            st = starts + (0, j0)
            sz = sizes + (2, min(hc, h - j0))
            tiles.append(StreamTile([(sub(r, st, sz), sz) for r in srcs], sub(ov, st, sz), sz))
    temps: dict[str, SramRef] = {}

    def setup(b: CoreBuilder) -> None:
        mx = max((t.out_shape for t in tiles), key=math.prod)
        temps["t1"] = b.alloc(F32, mx)
        temps["t2"] = b.alloc(F32, mx)
        temps["sign"] = b.alloc(F32, (2, 1))
        if norm_eps is not None:
            temps["r1"] = b.alloc(F32, mx[:-1] + (1,))
            temps["r"] = b.alloc(F32, mx[:-2] + (1, 1))

    def compute(b: CoreBuilder, loaded: list[SramRef], out_t: SramRef, tile: StreamTile, waits: tuple, signal: int):
        xa_t, xr_t, c_t, s_t = loaded[:4]
        t1, t2 = sub_ref(temps["t1"], out_t.shape), sub_ref(temps["t2"], out_t.shape)
        sign = temps["sign"]
        v = VecSeq()
        if norm_eps is not None:  # RMSNorm over each row (both halves), applied to x and its swapped view
            r1 = sub_ref(temps["r1"], out_t.shape[:-1] + (1,))
            r = sub_ref(temps["r"], out_t.shape[:-2] + (1, 1))
            v("mul", t1, xa_t, xa_t)
            v("reduce_sum", r1, t1, axis=-1)
            v("reduce_sum", r, r1, axis=-2)
            v("mul", r, r, 1.0 / (2 * h))
            v("add", r, r, float(norm_eps))
            v("rsqrt", r, r)
            v("mul", xa_t, xa_t, r)
            v("mul", xr_t, xr_t, r)
            if len(loaded) > 4:
                v("mul", xa_t, xa_t, loaded[4])
                v("mul", xr_t, xr_t, loaded[5])
        v("iota", sign, axis=0)  # (0, 1)
        v("mul", sign, sign, 2.0)
        v("sub", sign, sign, 1.0)  # (-1, +1): rotate_half negates the second half moved to the front
        v("mul", t1, xa_t, c_t)
        v("mul", t2, xr_t, s_t)
        v("mul", t2, t2, sign)
        v("add", out_t, t1, t2)
        v.emit(b, waits, signal)

    min_bytes = (x.footprint_bytes() + c.footprint_bytes() + s.footprint_bytes() + out.numel * out.dtype.itemsize
                 + sum(r.footprint_bytes() for r in ctx.inputs[3:]))
    return emit_streaming(ctx, tiles, compute, setup, "elementwise", ["rope"], 4 * out.numel, min_bytes)
