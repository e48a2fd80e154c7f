"""SCALE-Sim's GEMM mapping: fold by fold, each fold streaming its whole T dimension.

For out[M,N] = A[M,K] @ B[K,N] on one R x C array (the chip's `mapping = "fold_stream"`):

- OS: a fold pins an R x C block of outputs and streams K through it; the accumulator
  block stays in the array across K-chunks and is stored once when the fold drains.
- WS: a fold pins an R x C block of B (K rows x N cols) and streams all M rows of A.
- IS: a fold pins an R x C block of A^T (K rows x M cols) and streams all N columns of B.

The streamed dimension goes through the array in chunks that fit a double-buffered
scratchpad; MatMul instructions after the first of a fold are `continues=True`, so the
fold costs preload + T + skew whatever the chunking (isa.cost.matmul_cycles), the same
count SCALE-Sim makes. WS and IS folds that cover only part of K accumulate partial sums
through HBM (read, accumulate, write back), fold after fold, as SCALE-Sim's fold order
implies; the output must therefore be fp32.

A conv layer arrives as a matmul over its im2col matrix with an `im2col` node attribute
(ifmap_h, ifmap_w, channels, filter_h, filter_w, stride): the DMA then charges the unique
ifmap bytes a chunk touches, as an implicit-im2col address generator would, not the
expanded matrix.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from vnpu.dtypes import DType
from vnpu.isa.instructions import DmaLoad, DmaStore, HbmRef, MatMul
from vnpu.isa.program import KernelLaunch
from vnpu.kernels.base import CoreBuilder, KernelContext, deal_round_robin, sub_ref

RESERVE_BYTES = 1024  # scratchpad kept free for alignment slack


@dataclass(frozen=True)
class Im2colWindow:
    """A[P, K] is the im2col matrix of an HWC ifmap: rows = output pixels (row-major), cols = (fy, fx, c)."""

    ifmap_h: int
    ifmap_w: int
    channels: int
    filter_h: int
    filter_w: int
    stride: int

    @property
    def ofmap_w(self) -> int:
        return -(-(self.ifmap_w - self.filter_w + self.stride) // self.stride)  # SCALE-Sim's count

    def unique_elements(self, p0: int, pn: int, k0: int, kn: int) -> int:
        """ifmap elements behind rows [p0, p0+pn) x cols [k0, k0+kn) of the im2col matrix:
        the box of ifmap rows/cols the pixels' windows cover, scaled by the share of the
        window the column range takes."""
        ow = self.ofmap_w
        oy0, oy1 = p0 // ow, (p0 + pn - 1) // ow
        rows = min(self.ifmap_h, (oy1 - oy0) * self.stride + self.filter_h)
        cols = self.ifmap_w if oy1 > oy0 else min(self.ifmap_w, (pn - 1) * self.stride + self.filter_w)
        k = self.filter_h * self.filter_w * self.channels
        box = rows * cols * self.channels
        return min(pn * kn, math.ceil(box * kn / k))


def _block(ref: HbmRef, r0: int, rn: int, c0: int, cn: int) -> HbmRef:
    st = ref.strides
    return HbmRef(ref.offset + (r0 * st[-2] + c0 * st[-1]) * ref.dtype.itemsize, ref.dtype, (rn, cn), st[-2:])


def stream_chunk(chip_scratchpad: int, r: int, c: int, t: int, isz: int, dataflow: str) -> int:
    """Longest chunk of the streamed dimension whose double-buffered tiles fit the scratchpad."""
    avail = chip_scratchpad - RESERVE_BYTES
    if dataflow == "os":  # a [R, L] + b [L, C] per chunk, double-buffered; acc [R, C] fp32 x2
        fixed, per = 2 * r * c * 4, 2 * (r + c) * isz
    elif dataflow == "ws":  # stationary b [R, C] x2; a [L, R] x2; acc [L, C] fp32 x2
        fixed, per = 2 * r * c * isz, 2 * r * isz + 2 * c * 4
    else:  # is: stationary a [C, R] x2; b [R, L] x2; acc [C, L] fp32 x2
        fixed, per = 2 * r * c * isz, 2 * r * isz + 2 * c * 4
    chunk = (avail - fixed) // per
    if chunk < 1:
        raise ValueError(f"a {r}x{c} array's fold_stream tiles do not fit a {chip_scratchpad}-byte scratchpad")
    return min(t, chunk)


def emit_fold_stream(ctx: KernelContext, a: HbmRef, b: HbmRef, out: HbmRef, flops: int,
                     min_bytes: int) -> KernelLaunch:
    """Lowers a 2-D matmul (fp32 out, no epilogue) with SCALE-Sim's fold order and chunked streams."""
    chip = ctx.chip
    mx = chip.core.matrix
    r, c, df = mx.rows, mx.cols, mx.dataflow
    m, k = a.shape
    n = b.shape[1]
    dt = ctx.dtype
    isz = dt.itemsize
    win = ctx.node.attrs.get("im2col")
    window = Im2colWindow(*win) if win is not None else None

    def a_load(p0: int, pn: int, k0: int, kn: int) -> tuple[HbmRef, int]:
        nbytes = window.unique_elements(p0, pn, k0, kn) * isz if window is not None else -1
        return _block(a, p0, pn, k0, kn), nbytes

    # Independent groups (they never share partial sums) are dealt round-robin to cores.
    if df == "os":
        groups = [[(m0, n0)] for m0 in range(0, m, r) for n0 in range(0, n, c)]
        t_len = k
    elif df == "ws":
        groups = [[(k0, n0) for k0 in range(0, k, r)] for n0 in range(0, n, c)]
        t_len = m
    else:
        groups = [[(k0, m0) for k0 in range(0, k, r)] for m0 in range(0, m, c)]
        t_len = n
    chunk = stream_chunk(chip.core.scratchpad.bytes, r, c, t_len, isz, df)
    per_core = [[f for g in dealt for f in g] for dealt in deal_round_robin(groups, chip.cores)]

    streams = []
    for folds in per_core:
        bld = CoreBuilder(chip)
        if folds:
            _emit_core(bld, df, folds, chunk, r, c, m, k, n, dt, a, b, out, a_load)
        streams.append(bld.finish())
    return KernelLaunch(ctx.node.name, "matmul", [ctx.node.op], streams, flops, min_bytes, dt)


def _emit_core(bld: CoreBuilder, df: str, folds: list[tuple[int, int]], chunk: int, r: int, c: int,
               m: int, k: int, n: int, dt: DType, a: HbmRef, b: HbmRef, out: HbmRef, a_load) -> None:
    f32 = DType.fp32
    LOADED, MM, ST = bld.sem(), bld.sem(), bld.sem()
    j = 0  # chunk counter on this core (one MatMul each)
    stores = 0
    if df == "os":
        abuf = [bld.alloc(dt, (r, chunk)) for _ in range(2)]
        bbuf = [bld.alloc(dt, (chunk, c)) for _ in range(2)]
        acc = [bld.alloc(f32, (r, c)) for _ in range(2)]
        for f, (m0, n0) in enumerate(folds):
            mn, nn = min(r, m - m0), min(c, n - n0)
            ks = list(range(0, k, chunk))
            for ci, k0 in enumerate(ks):
                kn = min(chunk, k - k0)
                w = ((MM, j - 1),) if j >= 2 else ()
                src, nbytes = a_load(m0, mn, k0, kn)
                bld.emit(DmaLoad(src, sub_ref(abuf[j % 2], (mn, kn)), nbytes, waits=w))
                bld.emit(DmaLoad(_block(b, k0, kn, n0, nn), sub_ref(bbuf[j % 2], (kn, nn)), signal=LOADED))
                mw = [(LOADED, j + 1)]
                if ci == 0 and f >= 2:
                    mw.append((ST, f - 1))  # the accumulator block is free once fold f-2 is stored
                bld.emit(MatMul(sub_ref(abuf[j % 2], (mn, kn)), sub_ref(bbuf[j % 2], (kn, nn)),
                                sub_ref(acc[f % 2], (mn, nn)), accumulate=ci > 0, waits=tuple(mw), signal=MM,
                                continues=ci > 0, drains=ci == len(ks) - 1))
                j += 1
            bld.emit(DmaStore(sub_ref(acc[f % 2], (mn, nn)), _block(out, m0, mn, n0, nn), waits=((MM, j),), signal=ST))
        return

    # WS / IS: a stationary block per fold, the other operand streamed, partial sums per chunk.
    sbuf = [bld.alloc(dt, (r, c) if df == "ws" else (c, r)) for _ in range(2)]
    tbuf = [bld.alloc(dt, (chunk, r) if df == "ws" else (r, chunk)) for _ in range(2)]
    acc = [bld.alloc(f32, (chunk, c) if df == "ws" else (c, chunk)) for _ in range(2)]
    fold_end: list[int] = []  # chunk count through each fold
    t_len = m if df == "ws" else n
    n_chunks = math.ceil(t_len / chunk)
    for f, (k0, x0) in enumerate(folds):
        kn = min(r, k - k0)
        xn = min(c, (n if df == "ws" else m) - x0)
        sw = ((MM, fold_end[f - 2]),) if f >= 2 else ()
        if df == "ws":
            s_ref = sub_ref(sbuf[f % 2], (kn, xn))
            bld.emit(DmaLoad(_block(b, k0, kn, x0, xn), s_ref, waits=sw))
        else:
            s_ref = sub_ref(sbuf[f % 2], (xn, kn))
            src, nbytes = a_load(x0, xn, k0, kn)
            bld.emit(DmaLoad(src, s_ref, nbytes, waits=sw))
        first_k = k0 == 0
        for ci, t0 in enumerate(range(0, t_len, chunk)):
            tn = min(chunk, t_len - t0)
            w = ((MM, j - 1),) if j >= 2 else ()
            if df == "ws":
                t_ref = sub_ref(tbuf[j % 2], (tn, kn))
                acc_ref = sub_ref(acc[j % 2], (tn, xn))
                out_blk = _block(out, t0, tn, x0, xn)
                src, nbytes = a_load(t0, tn, k0, kn)
                loads = [DmaLoad(src, t_ref, nbytes, waits=w)]
            else:
                t_ref = sub_ref(tbuf[j % 2], (kn, tn))
                acc_ref = sub_ref(acc[j % 2], (xn, tn))
                out_blk = _block(out, x0, xn, t0, tn)
                loads = [DmaLoad(_block(b, k0, kn, t0, tn), t_ref, waits=w)]
            if not first_k:
                # read back this chunk's partial sums: after the previous fold stored them and
                # after the store of chunk j-2 has released this accumulator buffer
                loads.append(DmaLoad(out_blk, acc_ref, waits=((ST, max(j - 1, j - n_chunks + 1)),)))
            loads[-1].signal = LOADED
            for ld in loads:
                bld.emit(ld)
            mw = [(LOADED, j + 1)]
            if first_k and j >= 2:
                mw.append((ST, j - 1))
            lhs, rhs = (t_ref, s_ref) if df == "ws" else (s_ref, t_ref)
            bld.emit(MatMul(lhs, rhs, acc_ref, accumulate=not first_k, waits=tuple(mw), signal=MM,
                            continues=ci > 0, drains=ci == n_chunks - 1))
            bld.emit(DmaStore(acc_ref, out_blk, waits=((MM, j + 1),), signal=ST))
            j += 1
            stores += 1
        fold_end.append(j)
