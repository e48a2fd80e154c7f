"""Spatial lowerings the torch and ONNX frontends share: N-d convolution (1-D, 2-D, 3-D),
transposed convolution, N-d pooling, adaptive pooling, group norm and interpolation, all
onto existing chip kernels (conv2d, pool2d, layer_norm, gather, matmul, pad). Each
function takes the frontend's LoweringContext and emits IR; framework quirks (argument
conventions, defaults) stay in the registry entries.

- 1-D convolution / pooling: the 2-D kernel with a unit height (reshapes are views).
- 3-D convolution: an exact sum over kernel depth of conv2d's: for depth tap kd, the
  input planes od * sd + kd * dd of one image form a strided view [OD, C, H, W] (images
  = output depths), convolved with W[:, :, kd]; the taps accumulate through the conv
  kernel's fused residual epilogue (kd launches, no im2col buffer in HBM). Batches > 1
  run image by image and concatenate.
- Transposed convolution: zero insertion (x viewed [N, C, L, 1] padded to [N, C, L, s]:
  one pad kernel, a strided store) and a stride-1 convolution with the flipped,
  group-transposed weight padded by d * (k - 1) - p (+ output_padding at the end). It
  spends s^d times the MACs of a GEMM + col2im scatter-add, but needs no new kernel.
- Pooling in 3-D: max and sum over a box are separable, so a pool over (H, W) on the
  view [N, C*D, H, W] and then over D on [N, C, D, OH*OW]. Average pooling whose divisor
  varies (count_include_pad=False, ceil_mode overhang) is a sum pool times a constant
  reciprocal-divisor map (exact per-window counts computed at compile time).
- Adaptive average pooling with non-divisible sizes and linear/cubic interpolation are
  linear maps separable per axis: one matmul per axis with a constant [out, in] matrix
  (exact weights computed here), run on the matrix engine; it costs in-size MACs per
  output instead of 2-4, which the array absorbs at these sizes. Adaptive max pooling
  gathers each window (ragged windows padded by repeating an index: max is idempotent)
  and reduces. Nearest interpolation is a constant-index gather (an integer factor: a
  broadcast view, materialized by one copy).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from vnpu.dtypes import DType
from vnpu.frontends.registry import LoweringContext as Cx
from vnpu.ir.graph import Value
from vnpu.ir.ops import IRTypeError, conv_out_size

Pads = Sequence[tuple[int, int]]


def reshape(cx: Cx, x: Value, shape: Sequence[int]) -> Value:
    shape = [int(s) for s in shape]
    if tuple(shape) == x.shape:
        return x
    if x.is_const:
        return cx.g.add_const(x.name, np.asarray(x.data).reshape(shape), x.dtype)
    return cx.emit("reshape", [x], {"shape": shape})


def _const(cx: Cx, name: str, data: np.ndarray, dtype: DType) -> Value:
    return cx.g.add_const(name, np.ascontiguousarray(np.asarray(data).astype(dtype.np)), dtype)


def _slice(cx: Cx, x: Value, axis: int, start: int, end: int, step: int = 1) -> Value:
    if (start, end, step) == (0, x.shape[axis], 1):
        return x
    return cx.emit("slice", [x], {"axis": axis, "start": start, "end": end, "step": step})


def _bias_column(cx: Cx, bias: Value | None, dtype: DType) -> Value | None:
    """The bias as [O, 1, 1] for a conv2d output, emitted before the conv so that the add fuses
    into the conv's epilogue (epilogue operands must exist before the kernel)."""
    if bias is None:
        return None
    col = (bias.type.numel, 1, 1)
    b = cx.emit("reshape", [bias], {"shape": list(col)}) if bias.shape != col else bias
    return cx.cast(b, dtype)


def _add_bias(cx: Cx, y: Value, b: Value | None) -> Value:
    return y if b is None else cx.emit("add", [y, b])


def same_pads(auto_pad: str, spatial: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
              dilation: Sequence[int]) -> list[tuple[int, int]]:
    """ONNX auto_pad SAME_UPPER / SAME_LOWER: output ceil(size / stride), the odd pixel at the end
    (upper) or the start (lower)."""
    out = []
    for size, k, s, d in zip(spatial, kernel, stride, dilation):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        lo = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        out.append((lo, total - lo))
    return out


# -- convolution ---------------------------------------------------------------------------
def conv(cx: Cx, x: Value, w: Value, bias: Value | None, stride: Sequence[int], pads: Pads,
         dilation: Sequence[int], groups: int) -> Value:
    """N-d convolution (1 to 3 spatial dims) of x [N, C, *S] with w [O, C/g, *K]."""
    nd = x.type.rank - 2
    w = cx.cast(w, x.dtype)
    bcol = _bias_column(cx, bias, x.dtype) if nd in (1, 2) else None
    if nd == 1:
        x4 = reshape(cx, x, list(x.shape[:2]) + [1, x.shape[2]])
        w4 = reshape(cx, w, list(w.shape[:2]) + [1, w.shape[2]])
        y = cx.emit("conv2d", [x4, w4], {"stride": (1, int(stride[0])), "padding": ((0, 0), tuple(pads[0])),
                                          "dilation": (1, int(dilation[0])), "groups": int(groups)})
        y = _add_bias(cx, y, bcol)
        return reshape(cx, y, [y.shape[0], y.shape[1], y.shape[3]])
    if nd == 2:
        y = cx.emit("conv2d", [x, w], {"stride": tuple(int(s) for s in stride),
                                        "padding": tuple(tuple(p) for p in pads),
                                        "dilation": tuple(int(d) for d in dilation), "groups": int(groups)})
        return _add_bias(cx, y, bcol)
    if nd == 3:
        return _conv3d(cx, x, w, bias, stride, pads, dilation, groups)
    raise ValueError(f"convolution over {nd} spatial dims")


def _conv3d(cx: Cx, x: Value, w: Value, bias: Value | None, stride: Sequence[int], pads: Pads,
            dilation: Sequence[int], groups: int) -> Value:
    if any(lo or hi for lo, hi in pads):
        x = cx.emit("pad", [x], {"pads": [(0, 0), (0, 0)] + [tuple(p) for p in pads], "value": 0.0})
    n, c, d, _, _ = x.shape
    o, _, kd = w.shape[:3]
    sd, dd = int(stride[0]), int(dilation[0])
    od = conv_out_size(d, kd, sd, 0, 0, dd)
    taps = []
    for k in range(kd):  # the weight of depth tap k: [O, C/g, kh, kw]
        if w.is_const:
            taps.append(_const(cx, f"{w.name}_d{k}", np.asarray(w.data)[:, :, k], w.dtype))
        else:
            taps.append(reshape(cx, _slice(cx, w, 2, k, k + 1), list(w.shape[:2]) + list(w.shape[3:])))
    bcol = _bias_column(cx, bias, x.dtype)
    attrs = {"stride": (int(stride[1]), int(stride[2])), "padding": ((0, 0), (0, 0)),
             "dilation": (int(dilation[1]), int(dilation[2])), "groups": int(groups)}
    images = []
    for i in range(n):
        xi = reshape(cx, _slice(cx, x, 0, i, i + 1), list(x.shape[1:]))  # [C, D, H, W]
        acc = None
        for k in range(kd):
            planes = _slice(cx, xi, 1, k * dd, k * dd + (od - 1) * sd + 1, sd)  # [C, OD, H, W]
            y = cx.emit("conv2d", [cx.emit("permute", [planes], {"perm": [1, 0, 2, 3]}), taps[k]], attrs)
            if acc is None:
                acc = _add_bias(cx, y, bcol)  # [OD, O, OH, OW]: the bias fuses into the first tap
            else:
                acc = cx.emit("add", [y, acc])  # fuses as the conv's residual epilogue
        assert acc is not None
        yi = cx.emit("permute", [acc], {"perm": [1, 0, 2, 3]})
        images.append(reshape(cx, yi, [1] + list(yi.shape)))
    return images[0] if n == 1 else cx.emit("concat", images, {"axis": 0})


def conv_transpose(cx: Cx, x: Value, w: Value, bias: Value | None, stride: Sequence[int], pads: Pads,
                   dilation: Sequence[int], output_padding: Sequence[int], groups: int) -> Value | None:
    """Transposed N-d convolution of x [N, C, *S] with w [C, O/g, *K] (PyTorch / ONNX layout):
    zero insertion between input pixels, then a stride-1 convolution with the flipped weight
    (rearranged at compile time, or on the chip by views and reversing gathers when it is a
    run-time input)."""
    nd = x.type.rank - 2
    c, og = w.shape[:2]
    k = list(w.shape[2:])
    if groups < 1 or c % groups or x.shape[1] != c or w.type.rank != x.type.rank:
        raise IRTypeError(f"transposed convolution: input {x.type} and weight {w.type} (layout [C_in, O/groups, *k]) "
                          f"do not match with groups={groups}")
    cg = c // groups
    if not w.is_const:
        wr = cx.emit("permute", [reshape(cx, w, [groups, cg, og] + k)], {"perm": [0, 2, 1] + list(range(3, 3 + nd))})
        for a in range(3, 3 + nd):  # [g, O/g, C/g, *K], spatially flipped
            wr = cx.emit("gather", [wr, _const(cx, "flip", np.arange(k[a - 3])[::-1], DType.int64)], {"axis": a})
        wc = cx.cast(reshape(cx, cx.emit("copy", [wr]), [groups * og, cg] + k), x.dtype)
    elif list(k) == [int(v) for v in stride] and all(d == 1 for d in dilation) and not any(output_padding):
        return _conv_transpose_blocks(cx, x, w, bias, pads, groups)
    else:
        wd = np.asarray(w.data).reshape((groups, cg, og) + tuple(k))
        wd = np.flip(wd.swapaxes(1, 2), axis=tuple(range(3, 3 + nd)))  # [g, O/g, C/g, *K], spatially flipped
        wc = _const(cx, f"{w.name}_convT", wd.reshape((groups * og, cg) + tuple(k)), x.dtype)
    v = x
    if any(s > 1 for s in stride):  # [N, C, S1, 1, S2, 1, ...] padded to [N, C, S1, s1, ...]: zeros between pixels
        spread = list(x.shape[:2])
        zpads = [(0, 0), (0, 0)]
        for size, s in zip(x.shape[2:], stride):
            spread += [size, 1]
            zpads += [(0, 0), (0, int(s) - 1)]
        v = reshape(cx, v, spread)
        v = cx.emit("pad", [v], {"pads": zpads, "value": 0.0})
        v = reshape(cx, v, list(x.shape[:2]) + [size * int(s) for size, s in zip(x.shape[2:], stride)])
    conv_pads = []
    for ax in range(nd):
        full = dilation[ax] * (k[ax] - 1)
        lo = full - pads[ax][0]
        hi = full - pads[ax][1] + output_padding[ax] - (int(stride[ax]) - 1)  # minus the trailing inserted zeros
        a = 2 + ax
        if lo < 0 or hi < 0:  # padding beyond the kernel's reach crops the input
            v = _slice(cx, v, a, max(-lo, 0), v.shape[a] + min(hi, 0))
        conv_pads.append((max(lo, 0), max(hi, 0)))
    return conv(cx, v, wc, bias, [1] * nd, conv_pads, dilation, groups)


def _conv_transpose_blocks(cx: Cx, x: Value, w: Value, bias: Value | None, pads: Pads, groups: int) -> Value:
    """Kernel == stride (UNet / FPN 2x2 up-convolutions): the windows do not overlap, so each input
    pixel's output block is one 1x1 convolution to O * prod(k) channels (useful MACs only), whose
    [O, k1, k2, H, W] channels are interleaved to [O, H*k1, W*k2] by a permuted view (one copy)."""
    nd = x.type.rank - 2
    c, og = w.shape[:2]
    k = list(w.shape[2:])
    cg, kp = c // groups, math.prod(k)
    wd = np.asarray(w.data).reshape((groups, cg, og) + tuple(k))
    wd = np.moveaxis(wd, 1, -1).reshape((groups * og * kp, cg) + (1,) * nd)  # [(g, o, taps), C/g, 1...]
    wc = _const(cx, f"{w.name}_blocks", wd, x.dtype)
    bk = None
    if bias is not None:  # each output channel's bias repeated over its kernel taps
        bk = _const(cx, f"{bias.name}_blocks", np.repeat(np.asarray(bias.data), kp), x.dtype) if bias.is_const else None
        if bk is None:
            return None  # type: ignore[return-value]
    y = conv(cx, x, wc, bk, [1] * nd, [(0, 0)] * nd, [1] * nd, groups)  # [N, O * kp, *S]
    n, o, sp = x.shape[0], groups * og, list(x.shape[2:])
    y = reshape(cx, y, [n, o] + k + sp)
    perm = [0, 1] + [p for a in range(nd) for p in (2 + nd + a, 2 + a)]  # [N, O, S1, k1, S2, k2, ...]
    y = cx.emit("permute", [y], {"perm": perm})
    y = cx.emit("reshape", [y], {"shape": [n, o] + [s * kk for s, kk in zip(sp, k)]})
    for a in range(nd):
        lo, hi = pads[a]
        if lo or hi:
            y = _slice(cx, y, 2 + a, lo, y.shape[2 + a] - hi)
    return y


def pad_mode(cx: Cx, x: Value, pads: Pads, mode: str) -> Value:
    """Non-constant padding per dim as constant-index gathers: reflect (mirror without the
    edge), replicate/edge (repeat the edge), circular/wrap (periodic)."""
    for ax, (lo, hi) in enumerate(pads):
        if not lo and not hi:
            continue
        n = x.shape[ax]
        i = np.arange(-lo, n + hi)
        if mode == "reflect":
            if n == 1:
                idx = np.zeros_like(i)
            else:
                period = 2 * (n - 1)
                m = np.mod(i, period)
                idx = np.where(m < n, m, period - m)
        elif mode in ("replicate", "edge"):
            idx = np.clip(i, 0, n - 1)
        elif mode in ("circular", "wrap"):
            idx = np.mod(i, n)
        else:
            raise ValueError(f"padding mode {mode!r}")
        x = cx.emit("gather", [x, _const(cx, "pad_idx", idx, DType.int64)], {"axis": ax})
    return x


# -- pooling -------------------------------------------------------------------------------
def pool_out_size(size: int, k: int, s: int, lo: int, hi: int, d: int, ceil_mode: bool) -> int:
    eff = d * (k - 1) + 1
    num = size + lo + hi - eff
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= size + lo:  # the last window must start inside the input or left pad
        out -= 1
    return out


def _pool_pass(cx: Cx, x4: Value, kind: str, kernel: tuple[int, int], stride: tuple[int, int],
               pads: tuple[tuple[int, int], tuple[int, int]], dilation: tuple[int, int]) -> Value:
    attrs = {"kind": kind, "kernel": kernel, "stride": stride, "padding": pads}
    if dilation != (1, 1):
        attrs["dilation"] = dilation
    return cx.emit("pool2d", [x4], attrs)


def _pool_geometry(cx: Cx, x: Value, kernel: Sequence[int], stride: Sequence[int], pads: Pads,
                   dilation: Sequence[int], ceil_mode: bool) -> tuple[Value, list[int], list[tuple[int, int]]]:
    """Output sizes and the padding that covers every window (the ceil-mode overhang of the last
    one included; never read for max: -inf); trailing input that no window reads is cropped."""
    nd = x.type.rank - 2
    spatial = list(x.shape[2:])
    outs = [pool_out_size(spatial[a], kernel[a], stride[a], pads[a][0], pads[a][1], dilation[a], ceil_mode)
            for a in range(nd)]
    if len(kernel) != nd or any(o < 1 for o in outs) or any(v < 1 for v in list(kernel) + list(stride)):
        raise IRTypeError(f"pooling: window {list(kernel)} (stride {list(stride)}, dilation {list(dilation)}) does not "
                          f"fit the padded input {spatial} with padding {list(pads)}")
    full_pads = []
    for a in range(nd):
        need = (outs[a] - 1) * stride[a] + dilation[a] * (kernel[a] - 1) + 1
        hi = need - spatial[a] - pads[a][0]
        if hi < 0:
            x = _slice(cx, x, 2 + a, 0, spatial[a] + hi)
        full_pads.append((pads[a][0], pads[a][1] if not ceil_mode and hi >= 0 else max(hi, 0)))
    return x, outs, full_pads


def max_pool_with_indices(cx: Cx, x: Value, kernel: Sequence[int], stride: Sequence[int], pads: Pads,
                          dilation: Sequence[int], ceil_mode: bool, whole_tensor: bool = False
                          ) -> tuple[Value, Value] | None:
    """1-D / 2-D max pooling and its int64 indices: flat over each (n, c) plane (PyTorch) or over
    the whole tensor (ONNX, whole_tensor). The indices come from pool2d's argmax kind with a
    constant table of each window's tap indices."""
    nd = x.type.rank - 2
    if nd == 3:
        return _max_pool3d_with_indices(cx, x, kernel, stride, pads, dilation, ceil_mode, whole_tensor)
    if nd not in (1, 2):
        return None
    y = pool(cx, x, "max", kernel, stride, pads, dilation, ceil_mode)
    n, c = x.shape[:2]
    hw = [1] * (2 - nd) + list(x.shape[2:])
    k2 = [1] * (2 - nd) + list(kernel)
    s2 = [1] * (2 - nd) + list(stride)
    d2 = [1] * (2 - nd) + list(dilation)
    p2 = [(0, 0)] * (2 - nd) + [tuple(p) for p in pads]
    x4 = reshape(cx, x, [n, c] + hw)
    x4, outs, full_pads = _pool_geometry(cx, x4, k2, s2, p2, d2, ceil_mode)
    rows = np.arange(outs[0])[:, None, None, None] * s2[0] + np.arange(k2[0])[None, None, :, None] * d2[0] - p2[0][0]
    cols = np.arange(outs[1])[None, :, None, None] * s2[1] + np.arange(k2[1])[None, None, None, :] * d2[1] - p2[1][0]
    taps = (rows * hw[1] + cols).reshape(outs[0], outs[1], k2[0] * k2[1])
    if np.abs(taps).max() >= 1 << 24:
        return None  # beyond fp32's exact integers
    # int32: bf16 storage (set_precision) leaves integer constants alone
    idx = cx.emit("pool2d", [x4, _const(cx, "pool_taps", taps, DType.int32)],
                  {"kind": "argmax", "kernel": tuple(k2), "stride": tuple(s2), "padding": tuple(full_pads),
                   "dilation": tuple(d2)})
    if whole_tensor:
        planes = (np.arange(n * c).reshape(n, c, 1, 1) * (hw[0] * hw[1])).astype(np.int64)
        idx = cx.emit("add", [idx, _const(cx, "plane_base", planes, DType.int64)])
    return y, reshape(cx, idx, list(y.shape))


def _max_pool3d_with_indices(cx: Cx, x: Value, kernel: Sequence[int], stride: Sequence[int], pads: Pads,
                             dilation: Sequence[int], ceil_mode: bool, whole_tensor: bool
                             ) -> tuple[Value, Value] | None:
    """3-D: the 2-D pool with indices over (H, W) of every depth plane, then over depth the first
    plane holding the window's maximum (argmax with a tap table of plane offsets d * H*W), and that
    plane's (H, W) index picked by comparing against each depth tap's offset (one match)."""
    n, c, d, h, w = x.shape
    planes = max_pool_with_indices(cx, reshape(cx, x, [n, c * d, h, w]), kernel[1:], stride[1:], pads[1:],
                                   dilation[1:], ceil_mode)
    if planes is None:
        return None
    m2, i2 = planes
    pix = m2.shape[2] * m2.shape[3]
    m2 = reshape(cx, m2, [n, c, d, pix])
    i2 = reshape(cx, i2, [n, c, d, pix])
    kd, sd, dd, pd = kernel[0], stride[0], dilation[0], pads[0][0]
    m2v, outs, full = _pool_geometry(cx, m2, [kd, 1], [sd, 1], [tuple(pads[0]), (0, 0)], [dd, 1], ceil_mode)
    od = outs[0]
    attrs = {"kernel": (kd, 1), "stride": (sd, 1), "padding": tuple(full), "dilation": (dd, 1)}
    y = cx.emit("pool2d", [m2v], dict(attrs, kind="max"))
    offs = ((np.arange(od)[:, None] * sd + np.arange(kd)[None, :] * dd - pd) * (h * w)).astype(np.int64)  # [OD, kd]
    if np.abs(offs).max() + h * w >= 1 << 24:
        return None
    taps = np.broadcast_to(offs[:, None, :], (od, pix, kd))
    dsel = cx.emit("pool2d", [m2v, _const(cx, "depth_taps", taps, DType.int32)], dict(attrs, kind="argmax"))
    i2p = cx.emit("pad", [i2], {"pads": [(0, 0), (0, 0), full[0], (0, 0)], "value": 0.0}) if any(full[0]) else i2
    picked = None
    for t in range(kd):
        plane = _slice(cx, i2p, 2, t * dd, t * dd + (od - 1) * sd + 1, sd)  # [N, C, OD, P]
        hit = cx.emit("eq", [dsel, _const(cx, "depth_off", offs[:, t].reshape(od, 1), DType.int64)])
        term = cx.emit("where", [hit, plane, cx.const(0, DType.int64)])
        picked = term if picked is None else cx.emit("add", [picked, term])
    idx = cx.emit("add", [picked, dsel])
    if whole_tensor:
        base = (np.arange(n * c).reshape(n, c, 1, 1) * (d * h * w)).astype(np.int64)
        idx = cx.emit("add", [idx, _const(cx, "plane_base", base, DType.int64)])
    shape = [n, c, od] + list(planes[0].shape[2:])
    return reshape(cx, y, shape), reshape(cx, idx, shape)


def pool(cx: Cx, x: Value, kind: str, kernel: Sequence[int], stride: Sequence[int], pads: Pads,
         dilation: Sequence[int] | None = None, ceil_mode: bool = False, count_include_pad: bool = True,
         divisor_override: int | None = None) -> Value:
    """N-d max ("max") or average ("avg") pooling with PyTorch's (and ONNX's) semantics."""
    nd = x.type.rank - 2
    dilation = list(dilation or [1] * nd)
    spatial = list(x.shape[2:])
    x, outs, full_pads = _pool_geometry(cx, x, kernel, stride, pads, dilation, ceil_mode)
    # divisor per output position and axis (average pooling)
    divs = []
    for a in range(nd):  # taps of each window inside the padded input (or the input alone)
        taps = (np.arange(outs[a]) * stride[a] - pads[a][0])[:, None] + np.arange(kernel[a])[None, :] * dilation[a]
        inside = taps < spatial[a] + pads[a][1] if count_include_pad else (taps >= 0) & (taps < spatial[a])
        divs.append(inside.sum(axis=1))
    uniform = divisor_override is None and all(np.all(dv == kernel[a]) for a, dv in enumerate(divs))
    if kind == "max":
        pk = "max"
    else:
        pk = "avg" if uniform and nd <= 2 else "sum"
    n, c = x.shape[:2]
    cropped = list(x.shape[2:])
    if nd == 1:
        y = _pool_pass(cx, reshape(cx, x, [n, c, 1, cropped[0]]), pk, (1, kernel[0]), (1, stride[0]),
                       ((0, 0), full_pads[0]), (1, dilation[0]))
        y = reshape(cx, y, [n, c, outs[0]])
    elif nd == 2:
        y = _pool_pass(cx, x, pk, tuple(kernel), tuple(stride), tuple(full_pads), tuple(dilation))
    elif nd == 3:
        hw = _pool_pass(cx, reshape(cx, x, [n, c * cropped[0]] + cropped[1:]), pk, tuple(kernel[1:]),
                        tuple(stride[1:]), tuple(full_pads[1:]), tuple(dilation[1:]))
        y = _pool_pass(cx, reshape(cx, hw, [n, c, cropped[0], outs[1] * outs[2]]), pk, (kernel[0], 1),
                       (stride[0], 1), (full_pads[0], (0, 0)), (dilation[0], 1))
        y = reshape(cx, y, [n, c] + outs)
    else:
        raise ValueError(f"pooling over {nd} spatial dims")
    if pk != "sum":
        return y
    if divisor_override is not None:
        return cx.emit("mul", [y, cx.const(1.0 / divisor_override, y.dtype)])
    recip = np.ones(outs, np.float64)
    for a, dv in enumerate(divs):
        shape = [1] * nd
        shape[a] = outs[a]
        recip = recip * (1.0 / dv).reshape(shape)
    if np.all(recip == recip.flat[0]):
        return cx.emit("mul", [y, cx.const(float(recip.flat[0]), y.dtype)])
    return cx.emit("mul", [y, _const(cx, "pool_divisor", recip, y.dtype)])


def _along(cx: Cx, x: Value, axis: int, m: np.ndarray) -> Value:
    """y[..., i, ...] = sum_j m[i, j] x[..., j, ...] along `axis` as one matmul with the constant m."""
    r = x.type.rank
    mc = _const(cx, "interp", m, x.dtype)
    if axis == r - 1:
        return cx.emit("matmul", [x, _const(cx, "interp_t", m.T, x.dtype)])
    lead, rest = list(x.shape[:axis]), math.prod(x.shape[axis + 1:])
    v = reshape(cx, x, lead + [x.shape[axis], rest])
    y = cx.emit("matmul", [mc, v])
    return reshape(cx, y, lead + [m.shape[0]] + list(x.shape[axis + 1:]))


def interpolate_matrix(cx: Cx, x: Value, axis: int, m: np.ndarray) -> Value:
    """x resampled along `axis` by the constant [out, in] matrix m (one matmul)."""
    return _along(cx, x, axis, m)


def _windows(size: int, out: int) -> list[tuple[int, int]]:
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


def adaptive_pool(cx: Cx, x: Value, kind: str, out_size: Sequence[int]) -> Value:
    """Adaptive max / avg pooling over the trailing len(out_size) dims (PyTorch's windows:
    [floor(i * L / O), ceil((i + 1) * L / O)))."""
    nd = len(out_size)
    spatial = list(x.shape[x.type.rank - nd:])
    out_size = [int(o) if o is not None else s for o, s in zip(out_size, spatial)]
    if any(o < 1 for o in out_size) or x.type.rank < nd:
        raise IRTypeError(f"adaptive pooling: output size {out_size} must be positive, one per trailing dim "
                          f"of {x.type}")
    if all(o == 1 for o in out_size):
        return cx.emit("reduce", [x], {"kind": "mean" if kind == "avg" else "max",
                                       "axes": list(range(x.type.rank - nd, x.type.rank)), "keepdim": True})
    if all(s % o == 0 for s, o in zip(spatial, out_size)) and x.type.rank == nd + 2:
        k = [s // o for s, o in zip(spatial, out_size)]
        return pool(cx, x, kind, k, k, [(0, 0)] * nd)
    y = x
    for j in range(nd):
        ax = x.type.rank - nd + j
        size, out = spatial[j], out_size[j]
        if size == out:
            continue
        win = _windows(size, out)
        if kind == "avg":
            m = np.zeros((out, size))
            for i, (a, b) in enumerate(win):
                m[i, a:b] = 1.0 / (b - a)
            y = _along(cx, y, ax, m)
        else:
            kmax = max(b - a for a, b in win)
            idx = np.array([[min(a + t, b - 1) for t in range(kmax)] for a, b in win], np.int64)
            g = cx.emit("gather", [y, _const(cx, "window_idx", idx, DType.int64)], {"axis": ax})  # [.., out, kmax, ..]
            y = cx.emit("reduce", [g], {"kind": "max", "axes": [ax + 1], "keepdim": False})
    return y


# -- normalization -------------------------------------------------------------------------
def group_norm(cx: Cx, x: Value, groups: int, weight: Value | None, bias: Value | None, eps: float) -> Value:
    """Each (sample, group) normalized over its channels and positions: the layer_norm kernel on
    the view [N, groups, rest], then the per-channel affine."""
    n, c = x.shape[0], x.shape[1]
    if groups < 1 or c % groups:
        raise IRTypeError(f"group norm: {c} channels do not split into {groups} groups")
    v = reshape(cx, x, [n, groups, x.type.numel // (n * groups)])
    v = cx.emit("layer_norm", [v], {"axis_count": 1, "eps": float(eps), "has_weight": False, "has_bias": False})
    v = reshape(cx, v, list(x.shape))
    per_channel = [c] + [1] * (x.type.rank - 2)
    if weight is not None:
        v = cx.emit("mul", [v, cx.cast(reshape(cx, weight, per_channel), x.dtype)])
    if bias is not None:
        v = cx.emit("add", [v, cx.cast(reshape(cx, bias, per_channel), x.dtype)])
    return v


def normalize_axes(cx: Cx, x: Value, axes: Sequence[int], eps: float) -> Value:
    """(x - mean) / sqrt(var + eps) over `axes` (any set): the normalized axes are permuted to the
    end (a strided view the layer_norm kernel reads as is) and back."""
    r = x.type.rank
    axes = sorted(a % r for a in axes)
    kept = [a for a in range(r) if a not in axes]
    perm = kept + axes
    v = x if perm == list(range(r)) else cx.emit("permute", [x], {"perm": perm})
    v = cx.emit("layer_norm", [v], {"axis_count": len(axes), "eps": float(eps), "has_weight": False,
                                    "has_bias": False})
    if perm == list(range(r)):
        return v
    return cx.emit("permute", [v], {"perm": [perm.index(a) for a in range(r)]})


# -- interpolation -------------------------------------------------------------------------
def cubic_weights(t: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution weights of the 4 taps at offsets -1, 0, 1, 2 for fraction t."""
    def near(s: np.ndarray) -> np.ndarray:
        return ((a + 2) * s - (a + 3)) * s * s + 1

    def far(s: np.ndarray) -> np.ndarray:
        return ((a * s - 5 * a) * s + 8 * a) * s - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def interp_matrix(src: np.ndarray, size: int, mode: str, cubic_a: float = -0.75, exclude_outside: bool = False,
                  clamp_linear: bool = True) -> np.ndarray:
    """[out, size] weights of linear or cubic interpolation at source coordinates `src`
    (taps outside the input read the edge pixel, or with exclude_outside get weight 0 and the
    rest renormalized)."""
    out = len(src)
    m = np.zeros((out, size))
    if mode == "linear":
        s = np.clip(src, 0, size - 1) if clamp_linear else src
        i0 = np.floor(s).astype(np.int64)
        t = s - i0
        for o in range(out):
            for tap, wt in ((i0[o], 1 - t[o]), (i0[o] + 1, t[o])):
                m[o, min(max(tap, 0), size - 1)] += wt
        return m
    if mode == "cubic":
        i0 = np.floor(src).astype(np.int64)
        wts = cubic_weights(src - i0, cubic_a)
        for o in range(out):
            taps = [i0[o] - 1 + j for j in range(4)]
            w = wts[o].copy()
            if exclude_outside:
                w = np.array([wt if 0 <= tp < size else 0.0 for tp, wt in zip(taps, w)])
                w = w / w.sum()
            for tp, wt in zip(taps, w):
                m[o, min(max(tp, 0), size - 1)] += wt
        return m
    raise ValueError(mode)


def interpolate(cx: Cx, x: Value, mode: str, srcs: dict[int, np.ndarray], cubic_a: float = -0.75,
                exclude_outside: bool = False, clamp_linear: bool = True,
                nearest_idx: dict[int, np.ndarray] | None = None) -> Value:
    """Separable resize: per axis in `srcs` (axis -> source coordinate of each output), a
    gather of nearest indices (`nearest_idx`) or a matmul with the interpolation matrix."""
    y = x
    for ax in sorted(srcs):
        if mode == "nearest":
            idx = np.asarray(nearest_idx[ax], np.int64)  # type: ignore[index]
            n = x.shape[ax]
            if len(idx) % n == 0 and np.array_equal(idx, np.repeat(np.arange(n), len(idx) // n)):
                y = repeat_each(cx, y, ax, len(idx) // n)
            elif not np.array_equal(idx, np.arange(n)):
                y = cx.emit("gather", [y, _const(cx, "nearest_idx", idx, DType.int64)], {"axis": ax})
        else:
            m = interp_matrix(srcs[ax], x.shape[ax], mode, cubic_a, exclude_outside, clamp_linear)
            if m.shape[0] == m.shape[1] and np.array_equal(m, np.eye(m.shape[0])):
                continue
            y = _along(cx, y, ax, m)
    return y


def repeat_each(cx: Cx, x: Value, axis: int, r: int) -> Value:
    """Each element repeated r times along `axis`: a broadcast view [..., n, r, ...] merged."""
    if r == 1:
        return x
    shape = list(x.shape)
    v = reshape(cx, x, shape[:axis + 1] + [1] + shape[axis + 1:])
    v = cx.emit("expand", [v], {"shape": shape[:axis + 1] + [r] + shape[axis + 1:]})
    return cx.emit("reshape", [v], {"shape": shape[:axis] + [shape[axis] * r] + shape[axis + 1:]})


def torch_source_coords(out: int, size: int, align_corners: bool, scale: float | None, cubic: bool) -> np.ndarray:
    """PyTorch's area_pixel_compute_source_index for linear / cubic upsampling; `scale` is the
    user's scale factor (None: out / size)."""
    o = np.arange(out, dtype=np.float64)
    if align_corners:
        return o * ((size - 1) / (out - 1)) if out > 1 else np.zeros(out)
    ratio = 1.0 / scale if scale else size / out
    src = (o + 0.5) * ratio - 0.5
    return src if cubic else np.maximum(src, 0.0)


def torch_nearest_index(out: int, size: int, scale: float | None, exact: bool = False) -> np.ndarray:
    """PyTorch's nearest (floor(dst * ratio)) and nearest-exact (floor((dst + 0.5) * ratio)) source index."""
    ratio = 1.0 / scale if scale else size / out
    o = np.arange(out, dtype=np.float64)
    # float32 arithmetic, as PyTorch's kernel, so that boundaries round the same way
    r32 = np.float32(ratio)
    src = np.floor(((o + 0.5) if exact else o).astype(np.float32) * r32)
    return np.minimum(src.astype(np.int64), size - 1)


# -- grid sampling -------------------------------------------------------------------------
def grid_sample(cx: Cx, x: Value, grid: Value, mode: str, padding: str, align_corners: bool) -> Value | None:
    """2-D grid sampling (PyTorch grid_sample / ONNX GridSample), bilinear or nearest, zeros or
    border padding: the source coordinates and corner weights are elementwise ops on the grid,
    the corners are runtime-index gathers of x's pixels (x seen as [N*H*W, C] rows), weighted
    and summed. None for what it does not cover (bicubic, reflection, non-4-D)."""
    if x.type.rank != 4 or grid.type.rank != 4 or grid.shape[-1] != 2 or mode not in ("bilinear", "nearest") \
            or padding not in ("zeros", "border") or not x.dtype.is_float:
        return None
    n, c, h, w = x.shape
    _, ho, wo, _ = grid.shape
    if n * h * w >= 1 << 24:
        return None  # pixel indices beyond fp32's exact integers
    dt = x.dtype
    grid = cx.cast(grid, dt)

    def k(v: float) -> Value:
        return cx.const(v, dt)

    def unnormalize(axis: int, size: int) -> Value:
        g = reshape(cx, _slice(cx, grid, 3, axis, axis + 1), [n, ho, wo])
        if align_corners:
            s = cx.emit("mul", [cx.emit("add", [g, k(1.0)]), k((size - 1) / 2)])
        else:
            s = cx.emit("mul", [cx.emit("sub", [cx.emit("mul", [cx.emit("add", [g, k(1.0)]), k(float(size))]), k(1.0)]),
                                k(0.5)])
        if padding == "border":
            s = cx.emit("clamp", [s], {"min": 0.0, "max": float(size - 1)})
        return s

    ix, iy = unnormalize(0, w), unnormalize(1, h)
    table = reshape(cx, cx.emit("permute", [x], {"perm": [0, 2, 3, 1]}), [n * h * w, c])
    # pixel indices in int64 arithmetic: exact whatever the float storage (bf16 holds integers only to 256)
    base = _const(cx, "image_base", (np.arange(n) * (h * w)).reshape(n, 1, 1), DType.int64)

    def corner(xi: Value, yi: Value, weight: Value | None) -> Value:
        ok = cx.emit("and", [cx.emit("and", [cx.emit("ge", [xi, k(0.0)]), cx.emit("le", [xi, k(w - 1.0)])]),
                             cx.emit("and", [cx.emit("ge", [yi, k(0.0)]), cx.emit("le", [yi, k(h - 1.0)])])])
        xc = cx.emit("clamp", [xi], {"min": 0.0, "max": float(w - 1)})
        yc = cx.emit("clamp", [yi], {"min": 0.0, "max": float(h - 1)})
        xq, yq = cx.cast(xc, DType.int64), cx.cast(yc, DType.int64)
        flat = cx.emit("add", [cx.emit("add", [cx.emit("mul", [yq, cx.const(w, DType.int64)]), xq]), base])
        rows = cx.emit("gather", [table, flat], {"axis": 0})  # [N, Ho, Wo, C]
        wt = cx.emit("where", [ok, weight if weight is not None else k(1.0), k(0.0)])
        return cx.emit("mul", [rows, reshape(cx, wt, [n, ho, wo, 1])])

    if mode == "nearest":
        out = corner(cx.emit("round", [ix]), cx.emit("round", [iy]), None)  # half to even, as nearbyint
    else:
        x0, y0 = cx.emit("floor", [ix]), cx.emit("floor", [iy])
        x1, y1 = cx.emit("add", [x0, k(1.0)]), cx.emit("add", [y0, k(1.0)])
        wx1, wy1 = cx.emit("sub", [ix, x0]), cx.emit("sub", [iy, y0])
        wx0, wy0 = cx.emit("sub", [k(1.0), wx1]), cx.emit("sub", [k(1.0), wy1])
        out = None
        for xi, yi, wx, wy in ((x0, y0, wx0, wy0), (x1, y0, wx1, wy0), (x0, y1, wx0, wy1), (x1, y1, wx1, wy1)):
            term = corner(xi, yi, cx.emit("mul", [wx, wy]))
            out = term if out is None else cx.emit("add", [out, term])
    assert out is not None
    return cx.emit("permute", [out], {"perm": [0, 3, 1, 2]})


def antialias_matrix(out: int, size: int, align_corners: bool, scale: float | None, mode: str) -> np.ndarray:
    """[out, size] weights of PyTorch's antialiased (PIL-style) resampling: a triangle (linear) or
    a = -0.5 cubic filter stretched by the downscale factor, normalized per output."""
    if align_corners:
        ratio = (size - 1) / (out - 1) if out > 1 else 0.0
    else:
        ratio = 1.0 / scale if scale else size / out
    half = 1.0 if mode == "linear" else 2.0
    support = half * ratio if ratio >= 1.0 else half
    inv = 1.0 / ratio if ratio >= 1.0 else 1.0

    def filt(t: np.ndarray) -> np.ndarray:
        t = np.abs(t)
        if mode == "linear":
            return np.maximum(1.0 - t, 0.0)
        a = -0.5
        return np.where(t < 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                        np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))

    m = np.zeros((out, size))
    for i in range(out):
        center = ratio * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), size)
        j = np.arange(lo, hi)
        w = filt((j - center + 0.5) * inv)
        total = w.sum()
        m[i, lo:hi] = w / total if total else w
    return m


def col2im(cx: Cx, cols: Value, image: Sequence[int], kernel: Sequence[int], dilation: Sequence[int], pads: Pads,
           stride: Sequence[int]) -> Value:
    """Column blocks [N, C * prod(kernel), L] summed back into an image [N, C, *image] (fold /
    ONNX Col2Im): per spatial axis one matmul with the constant 0/1 matrix that sends each
    (tap, block) position to its padded pixel (overlapping taps add), then the padding cropped."""
    nd = len(image)
    n = cols.shape[0]
    kp = math.prod(kernel)
    if cols.type.rank != 3 or cols.shape[1] % kp:
        raise IRTypeError(f"col2im: input {cols.type} is not [N, C * {kp}, L]")
    c = cols.shape[1] // kp
    blocks = [conv_out_size(image[a], kernel[a], stride[a], pads[a][0], pads[a][1], dilation[a]) for a in range(nd)]
    if math.prod(blocks) != cols.shape[2]:
        raise IRTypeError(f"col2im: {cols.shape[2]} blocks, but image {list(image)} with kernel {list(kernel)} "
                          f"gives {blocks}")
    v = reshape(cx, cols, [n, c] + list(kernel) + blocks)
    perm = [0, 1] + [p for a in range(nd) for p in (2 + a, 2 + nd + a)]  # [N, C, k1, L1, k2, L2, ...]
    v = cx.emit("permute", [v], {"perm": perm})
    v = reshape(cx, v, [n, c] + [kernel[a] * blocks[a] for a in range(nd)])
    for a in range(nd):
        full = image[a] + pads[a][0] + pads[a][1]
        pos = (np.arange(kernel[a])[:, None] * dilation[a] + np.arange(blocks[a])[None, :] * stride[a]).reshape(-1)
        m = np.zeros((full, pos.size))
        m[pos, np.arange(pos.size)] = 1.0
        v = _along(cx, v, 2 + a, m)
        v = _slice(cx, v, 2 + a, pads[a][0], pads[a][0] + image[a])
    return v
