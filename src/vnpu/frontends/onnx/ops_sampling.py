"""ONNX lowerings: sampling grids and sampling at run-time positions or indices (AffineGrid,
MaxUnpool, DeformConv, RoiAlign).

Entries register with `onnx_op` like those in onnx_ops.py; kept in their own module so each family
is one file.

- AffineGrid: the grid is the constant homogeneous base grid [P, nd + 1] (normalized pixel
  centres, or corners with align_corners) times each batch's transposed theta: one batched
  matmul with theta a run-time input.
- MaxUnpool: the pooled values written at their (whole-tensor flat) indices into a zero tensor of
  the unpooled size, by the index_write scatter kernel; output_shape larger than that size pads
  zeros at the end of each spatial axis (as the ONNX reference does).
- DeformConv: bilinear taps at the regular positions plus run-time offsets (spatial.sample_at,
  GridSample's gather core), then an im2col-style batched matmul with the weight.
- RoiAlign: run-time boxes give run-time sample positions; bilinear corners are gathers, each
  bin's samples reduced (avg or max).
"""
from __future__ import annotations

import math

import numpy as np

from vnpu.dtypes import DType
from vnpu.frontends import spatial
from vnpu.frontends.onnx.importer import OnnxContext as Cx, onnx_op
from vnpu.ir.graph import Value

Ins = list[Value | None]


def affine_base_grid(sizes: list[int], align_corners: bool) -> np.ndarray:
    """[prod(sizes), nd + 1] homogeneous normalized coordinates (x, y[, z], 1) of every output
    position, x running along the last axis: pixel centres (-1 + (2i + 1) / L) or, with
    align_corners, the corners (-1 + 2i / (L - 1); -1 for L = 1)."""
    axes = []
    for size in sizes:
        i = np.arange(size, dtype=np.float64)
        if align_corners:
            axes.append(-1.0 + 2.0 * i / (size - 1) if size > 1 else np.full(size, -1.0))
        else:
            axes.append(-1.0 + (2.0 * i + 1.0) / size)
    mesh = np.meshgrid(*axes, indexing="ij")  # one array per spatial axis, [*sizes]
    cols = [m.reshape(-1) for m in reversed(mesh)] + [np.ones(math.prod(sizes))]
    return np.stack(cols, axis=1)


@onnx_op("AffineGrid")
def _affine_grid(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    theta = ins[0]
    size = cx.ints(ins[1])
    if size is None or len(size) not in (4, 5) or not theta.dtype.is_float:
        return None
    nd = len(size) - 2
    n, sizes = size[0], size[2:]
    if theta.shape != (n, nd, nd + 1):
        return None
    base = cx.const(affine_base_grid(sizes, bool(attrs.get("align_corners", 0))), theta.dtype)  # [P, nd + 1]
    theta_t = cx.emit("permute", [theta], {"perm": [0, 2, 1]})  # [N, nd + 1, nd]
    grid = cx.emit("matmul", [base, cx.emit("copy", [theta_t])])  # [N, P, nd]
    return spatial.reshape(cx, grid, [n] + list(sizes) + [nd])


@onnx_op("MaxUnpool")
def _max_unpool(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x, idx = ins[0], ins[1]
    shape_v = ins[2] if len(ins) > 2 else None
    nd = x.type.rank - 2
    if nd < 1 or not x.dtype.is_float or idx.shape != x.shape or idx.dtype.is_float:
        return None
    kernel = [int(k) for k in attrs["kernel_shape"]]
    stride = [int(s) for s in attrs.get("strides", [1] * nd)]
    pads = [int(p) for p in attrs.get("pads", [0] * (2 * nd))]
    unpooled = list(x.shape[:2]) + [(x.shape[2 + a] - 1) * stride[a] - pads[a] - pads[nd + a] + kernel[a]
                                    for a in range(nd)]
    target = unpooled
    if shape_v is not None and shape_v.type.numel:
        target = cx.ints(shape_v)
        if target is None or len(target) != x.type.rank or any(t < u for t, u in zip(target, unpooled)):
            return None  # a run-time output shape, or one smaller than the unpooled tensor
    total = math.prod(unpooled)
    if total >= 1 << 31 or any(u < 1 for u in unpooled):
        return None
    zeros = cx.const(np.zeros((total, 1), np.float32), x.dtype)
    flat_idx = spatial.reshape(cx, cx.cast(idx, DType.int64), [x.type.numel])
    rows = spatial.reshape(cx, x, [x.type.numel, 1])
    y = cx.emit("index_write", [zeros, flat_idx, rows], {"axis": 0})
    y = spatial.reshape(cx, y, unpooled)
    if target != unpooled:  # the extra positions of a larger output_shape stay zero
        y = cx.emit("pad", [y], {"pads": [(0, t - u) for t, u in zip(target, unpooled)], "value": 0.0})
    return y


@onnx_op("DeformConv")
def _deform_conv(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    """2-D deformable convolution: every kernel tap of every output position reads x bilinearly
    (zeros outside) at its regular position plus its run-time offset (spatial.sample_at, per offset
    group), times the optional mask; the sampled columns [N, C * kH * kW, oH * oW] then meet the
    weight in one batched matmul per conv group, like an im2col convolution."""
    x, w, offset = ins[0], ins[1], ins[2]
    bias = ins[3] if len(ins) > 3 else None
    mask = ins[4] if len(ins) > 4 else None
    if x.type.rank != 4 or w.type.rank != 4 or offset.type.rank != 4 or not x.dtype.is_float:
        return None
    n, c, h, wd = x.shape
    oc = w.shape[0]
    kh, kw = [int(k) for k in attrs.get("kernel_shape", w.shape[2:])]
    sh, sw = [int(s) for s in attrs.get("strides", [1, 1])]
    dh, dw = [int(d) for d in attrs.get("dilations", [1, 1])]
    pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
    groups, og = int(attrs.get("group", 1)), int(attrs.get("offset_group", 1))
    oh, ow = offset.shape[2:]
    if (kh, kw) != tuple(w.shape[2:]) or c % og or c % groups or oc % groups or w.shape[1] * groups != c \
            or offset.shape[:2] != (n, og * 2 * kh * kw) or n * og * h * wd >= 1 << 24 \
            or (mask is not None and mask.shape != (n, og * kh * kw, oh, ow)):
        return None
    dt = x.dtype
    taps = kh * kw
    # regular sampling positions [kH, kW, oH, oW] per axis, then plus the offsets
    rows = (np.arange(kh)[:, None, None, None] * dh + np.arange(oh)[None, None, :, None] * sh - pads[0])
    cols = (np.arange(kw)[None, :, None, None] * dw + np.arange(ow)[None, None, None, :] * sw - pads[1])
    off = spatial.reshape(cx, cx.cast(offset, dt), [n * og, kh, kw, 2, oh, ow])
    coords = []
    for comp, regular in ((0, rows), (1, cols)):
        d = spatial.reshape(cx, cx.emit("slice", [off], {"axis": 3, "start": comp, "end": comp + 1, "step": 1}),
                            [n * og, kh, kw, oh, ow])
        pos = cx.emit("add", [d, cx.const(np.broadcast_to(regular, (kh, kw, oh, ow)).astype(np.float32), dt)])
        coords.append(spatial.reshape(cx, pos, [n * og, taps * oh, ow]))
    xg = spatial.reshape(cx, x, [n * og, c // og, h, wd])  # one image per (sample, offset group)
    sampled = spatial.sample_at(cx, xg, coords, "bilinear", "zeros", align_corners=True)  # [N*og, C/og, taps*oH, oW]
    if mask is not None:
        m = spatial.reshape(cx, cx.cast(mask, dt), [n * og, 1, taps * oh, ow])
        sampled = cx.emit("mul", [sampled, m])
    cols_v = spatial.reshape(cx, sampled, [n, groups, (c // groups) * taps, oh * ow])  # channel, tap, position
    wm = spatial.reshape(cx, cx.cast(w, dt), [groups, oc // groups, (c // groups) * taps])
    y = cx.emit("matmul", [wm, cols_v])  # [N, groups, oC/groups, oH*oW]
    y = spatial.reshape(cx, y, [n, oc, oh, ow])
    if bias is not None:
        y = cx.emit("add", [y, spatial.reshape(cx, cx.cast(bias, dt), [oc, 1, 1])])
    return y


def _roi_axis(cx: Cx, rois: Value, axis: int, size: int, pooled: int, grid: int, scale: float, half_pixel: bool
              ) -> list[tuple[Value, Value]]:
    """RoiAlign's sample positions along one image axis (rois column axis / axis + 2: start / end):
    the two bilinear taps of each of the [R, pooled * grid] samples as (int64 index, weight), weight 0
    for a sample beyond one pixel outside the image, positions clamped into it as the ONNX reference."""
    r = rois.shape[0]
    dt = rois.dtype

    def k(v: float) -> Value:
        return cx.const(v, dt)

    def column(j: int) -> Value:
        v = cx.emit("slice", [rois], {"axis": 1, "start": j, "end": j + 1, "step": 1})  # [R, 1]
        return cx.emit("sub", [cx.emit("mul", [v, k(scale)]), k(0.5 if half_pixel else 0.0)])

    start, end = column(axis), column(axis + 2)
    length = cx.emit("sub", [end, start])
    if not half_pixel:
        length = cx.emit("maximum", [length, k(1.0)])
    bin_size = cx.emit("mul", [length, k(1.0 / pooled)])
    frac = (np.arange(pooled)[:, None] + (np.arange(grid)[None, :] + 0.5) / grid).reshape(1, pooled * grid)
    pos = cx.emit("add", [start, cx.emit("mul", [bin_size, cx.const(frac.astype(np.float32), dt)])])  # [R, P*G]
    inside = cx.emit("and", [cx.emit("ge", [pos, k(-1.0)]), cx.emit("le", [pos, k(float(size))])])
    p = cx.emit("clamp", [pos], {"min": 0.0, "max": size - 1.0})
    low = cx.emit("floor", [p])
    high = cx.emit("clamp", [cx.emit("add", [low, k(1.0)])], {"min": 0.0, "max": size - 1.0})
    t = cx.emit("sub", [p, low])
    zero = k(0.0)
    w_low = cx.emit("where", [inside, cx.emit("sub", [k(1.0), t]), zero])
    w_high = cx.emit("where", [inside, t, zero])
    assert pos.shape == (r, pooled * grid)
    return [(cx.cast(low, DType.int64), w_low), (cx.cast(high, DType.int64), w_high)]


@onnx_op("RoiAlign")
def _roi_align(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    """Each region's bins averaged (or maxed) over sampling_ratio^2 bilinear samples at run-time
    positions (the boxes are a run-time input): per corner one gather of x's pixel rows
    [N * H * W, C] at [R, oH * G, oW * G] indices, weighted; then a reduce over each bin's samples.
    sampling_ratio 0 (as many samples as the box is pixels wide: data-dependent) is left to the host."""
    x, rois, batch_idx = ins[0], ins[1], ins[2]
    grid = int(attrs.get("sampling_ratio", 0))
    mode = attrs.get("mode", "avg")
    ctm = attrs.get("coordinate_transformation_mode", "half_pixel")
    if x.type.rank != 4 or rois.type.rank != 2 or rois.shape[1] != 4 or batch_idx.shape != (rois.shape[0],) \
            or grid < 1 or mode not in ("avg", "max") or ctm not in ("half_pixel", "output_half_pixel") \
            or not x.dtype.is_float:
        return None
    n, c, h, w = x.shape
    r = rois.shape[0]
    ph, pw = int(attrs.get("output_height", 1)), int(attrs.get("output_width", 1))
    if n * h * w >= 1 << 24:
        return None
    dt = x.dtype
    boxes = cx.cast(rois, dt)
    scale, half = float(attrs.get("spatial_scale", 1.0)), ctm == "half_pixel"
    ys = _roi_axis(cx, boxes, 1, h, ph, grid, scale, half)
    xs = _roi_axis(cx, boxes, 0, w, pw, grid, scale, half)
    table = spatial.reshape(cx, cx.emit("permute", [x], {"perm": [0, 2, 3, 1]}), [n * h * w, c])
    base = cx.emit("mul", [spatial.reshape(cx, cx.cast(batch_idx, DType.int64), [r, 1, 1]),
                           cx.const(h * w, DType.int64)])
    acc = None
    for yi, wy in ys:
        row = cx.emit("add", [cx.emit("mul", [spatial.reshape(cx, yi, [r, ph * grid, 1]), cx.const(w, DType.int64)]),
                              base])
        for xi, wx in xs:
            flat = cx.emit("add", [row, spatial.reshape(cx, xi, [r, 1, pw * grid])])  # [R, oH*G, oW*G]
            wt = cx.emit("mul", [spatial.reshape(cx, wy, [r, ph * grid, 1, 1]), spatial.reshape(cx, wx, [r, 1, pw * grid, 1])])
            term = cx.emit("mul", [cx.emit("gather", [table, flat], {"axis": 0}), wt])  # [R, oH*G, oW*G, C]
            acc = term if acc is None else cx.emit("add" if mode == "avg" else "maximum", [acc, term])
    assert acc is not None
    bins = spatial.reshape(cx, acc, [r, ph, grid, pw, grid, c])
    y = cx.emit("reduce", [bins], {"kind": "sum" if mode == "avg" else "max", "axes": [2, 4], "keepdim": False})
    if mode == "avg":
        y = cx.emit("mul", [y, cx.const(1.0 / (grid * grid), dt)])
    return cx.emit("permute", [y], {"perm": [0, 3, 1, 2]})
