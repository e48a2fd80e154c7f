"""ONNX lowerings: signal processing (DFT, STFT, windows, MelWeightMatrix) as constant matmuls, and misc tensor ops.

Entries register with `onnx_op` like those in onnx_ops.py; kept in their own module so each family
is one file.

DFT and STFT: a complex tensor is ONNX's real representation, a last dim of 2 (real, imaginary)
or 1 (real only). With the transformed axis moved next to that last dim, each row's (time, part)
pairs are one vector, and the whole transform (forward or inverse, one- or two-sided, padded or
truncated to dft_length) is one matmul with a constant real matrix holding the cos / sin terms
of every (input part, output part) pair, so the output comes out already interleaved.
"""
from __future__ import annotations

import math

import numpy as np

from vnpu.dtypes import DType
from vnpu.frontends.onnx.importer import OnnxContext as Cx, onnx_op
from vnpu.frontends.onnx.onnx_ops import Ins, _axis, _reshape_to, _take
from vnpu.ir.graph import Value


# -- DFT / STFT --------------------------------------------------------------------------------
def _unit_circle(m: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of 2*pi*m/n (m reduced mod n first), exact at the quarter turns, where the
    float64 sin(pi) ~ 1e-16 would otherwise leave a residue in bins the reference has at 0."""
    m = np.asarray(m) % n
    ang = 2.0 * np.pi * m / n
    c, s = np.cos(ang), np.sin(ang)
    quarter = (4 * m) % n == 0
    c = np.where(quarter, np.round(c), c)
    s = np.where(quarter, np.round(s), s)
    return c, s


def dft_matrix(n_in: int, n: int, parts_in: int, inverse: bool, onesided: bool) -> tuple[np.ndarray, int]:
    """The real matrix of a length-n DFT over n_in input samples (n_in <= n: the zero padding
    contributes nothing), [n_in * parts_in, bins * parts_out] with (sample, part) and (bin, part)
    interleaved, and parts_out.

    forward:  Y[k] = sum_t X[t] e^{-2 pi i k t / n}, k < n (onesided: k <= n // 2)
    inverse:  Y[t] = (1/n) sum_k X[k] e^{+2 pi i k t / n}, t < n
    inverse onesided (irfft): X holds bins 0..n_in-1 of a Hermitian spectrum; the real output
    counts each bin strictly between 0 and n/2 twice (its mirror), and drops the imaginary part
    of bins 0 and n/2 (sin is 0 there), as numpy.fft.irfft does."""
    if inverse and onesided:
        k = np.arange(n_in)[:, None]
        t = np.arange(n)[None, :]
        c, s = _unit_circle(k * t, n)
        twice = np.where((k == 0) | ((n % 2 == 0) & (k == n // 2)), 1.0, 2.0) / n
        w = np.zeros((n_in, parts_in, n, 1))
        w[:, 0, :, 0] = twice * c
        if parts_in == 2:
            w[:, 1, :, 0] = -twice * s
        return w.reshape(n_in * parts_in, n), 1
    bins = n // 2 + 1 if onesided and not inverse else n
    t = np.arange(n_in)[:, None]
    k = np.arange(bins)[None, :]
    c, s = _unit_circle(t * k, n)
    sign, scale = (1.0, 1.0 / n) if inverse else (-1.0, 1.0)
    # (xr + i xi)(c + i sign s) = (xr c - sign xi s) + i (sign xr s + xi c)
    w = np.zeros((n_in, parts_in, bins, 2))
    w[:, 0, :, 0] = c * scale
    w[:, 0, :, 1] = sign * s * scale
    if parts_in == 2:
        w[:, 1, :, 0] = -sign * s * scale
        w[:, 1, :, 1] = c * scale
    return w.reshape(n_in * parts_in, bins * 2), 2


# The dense DFT matrix grows as n^2 (a 4096-point complex DFT: 256 MiB); past this it runs on the host.
DFT_MAX_MATRIX_BYTES = 64 << 20


def _dft_along(cx: Cx, x: Value, axis: int, n: int, inverse: bool, onesided: bool,
               window: np.ndarray | None = None) -> Value | None:
    """x [..., L (at axis), ..., parts] -> the DFT along `axis`, [..., bins, ..., parts_out]:
    one matmul of the rows (the other dims flattened) with dft_matrix (times a constant window
    over the samples, when given)."""
    r = x.type.rank
    parts = x.shape[-1]
    if parts not in (1, 2) or not (0 <= axis < r - 1) or n < 1 or not x.dtype.is_float:
        return None
    used = min(x.shape[axis], n // 2 + 1 if inverse and onesided else n)  # samples (bins) read
    if used < x.shape[axis]:  # truncated to dft_length
        x = cx.emit("slice", [x], {"axis": axis, "start": 0, "end": used, "step": 1})
    # the transformed axis next to the parts dim: rows [others, used * parts]
    others = [i for i in range(r - 1) if i != axis]
    perm = others + [axis, r - 1]
    if perm != list(range(r)):
        x = cx.emit("permute", [x], {"perm": perm})
    lead = [x.shape[i] for i in range(r - 2)]
    rows = math.prod(lead)
    if rows == 0:
        return None
    bins_out = n // 2 + 1 if onesided and not inverse else n
    if used * parts * bins_out * 2 * x.dtype.itemsize > DFT_MAX_MATRIX_BYTES:
        return None
    w, parts_out = dft_matrix(used, n, parts, inverse, onesided)
    if window is not None:
        w = w * np.repeat(np.asarray(window, np.float64)[:used], parts)[:, None]
    y = cx.emit("matmul", [_reshape_to(cx, x, [rows, used * parts]), cx.const(w, x.dtype)])
    bins = w.shape[1] // parts_out
    y = _reshape_to(cx, y, lead + [bins, parts_out])
    if perm != list(range(r)):
        inv = [0] * r
        for i, p in enumerate(perm):
            inv[p] = i
        y = cx.emit("permute", [y], {"perm": inv})
    return y


def _scalar_int(cx: Cx, ins: Ins, i: int, default: int | None) -> int | None:
    """The constant integer scalar input i, `default` when it is omitted, None when it is known
    only at run time (or is not a scalar)."""
    if len(ins) <= i or ins[i] is None or ins[i].type.numel == 0:
        return default
    v = cx.ints(ins[i])
    return None if v is None or len(v) != 1 else v[0]


@onnx_op("DFT")
def _dft(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x = ins[0]
    inverse, onesided = bool(attrs.get("inverse", 0)), bool(attrs.get("onesided", 0))
    # opset 20 made the axis an input (default -2)
    axis = _scalar_int(cx, ins, 2, -2) if cx.opset >= 20 else int(attrs.get("axis", 1))
    if axis is None:
        return None  # a run-time axis: the output shape is unknown here
    axis = _axis(axis, x.type.rank)
    if not 0 <= axis < x.type.rank - 1:
        return None
    # default length: the input's, or for irfft that of the even signal the one-sided bins come from
    n = _scalar_int(cx, ins, 1, 2 * (x.shape[axis] - 1) if inverse and onesided else x.shape[axis])
    if n is None:
        return None  # a run-time dft_length
    return _dft_along(cx, x, axis, n, inverse, onesided)


@onnx_op("STFT")
def _stft(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    """signal [B, L, parts] -> [B, frames, bins, 2]: the frames as one constant-index gather
    [frames, frame_length] along the signal axis, each frame times the window, then the DFT."""
    x = ins[0]
    window = ins[2] if len(ins) > 2 and ins[2] is not None and ins[2].type.numel else None
    if x.type.rank != 3 or (window is not None and window.type.rank != 1):
        return None
    step = _scalar_int(cx, ins, 1, None)
    length = _scalar_int(cx, ins, 3, window.shape[0] if window is not None else x.shape[1])
    if step is None or length is None or step < 1:
        return None
    if window is not None and window.shape[0] != length:
        return None  # the spec requires window length == frame_length
    frames = 1 + (x.shape[1] - length) // step
    if frames < 1 or length < 1:
        return None
    starts = np.arange(frames) * step
    idx = starts[:, None] + np.arange(length)[None, :]
    framed = _take(cx, x, 1, idx[0]) if frames == 1 else cx.emit("gather", [x, cx.const(idx, DType.int64)], {"axis": 1})
    if frames == 1:
        framed = _reshape_to(cx, framed, [x.shape[0], 1, length, x.shape[2]])
    const_window = None
    if window is not None and window.is_const:
        const_window = np.asarray(window.data, np.float64)  # folded into the DFT matrix
    elif window is not None:
        w = _reshape_to(cx, cx.cast(window, x.dtype), [1, 1, length, 1])
        framed = cx.emit("mul", [framed, w])
    return _dft_along(cx, framed, 2, length, False, bool(attrs.get("onesided", 1)), const_window)


@onnx_op("MelWeightMatrix")
def _mel_weight_matrix(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    """[dft_length // 2 + 1, num_mel_bins] triangular filters whose edges come from run-time
    lower / upper edge frequencies (constant ones fold at import): the mel-spaced edge bins by
    elementwise ops in fp32, then each (spectrum bin j, filter i) weight by compares and wheres,
    rising (j - left) / (centre - left) on [left, centre], falling (right - j) / (right - centre)
    on [centre, right), a lone 1 at the centre when left == centre, as the reference fills it."""
    from vnpu.frontends.onnx.importer import _elem_dtype

    if len(ins) < 5 or any(v is None for v in ins[:5]):
        return None
    counts = [_scalar_int(cx, ins, i, None) for i in range(3)]
    if any(c is None for c in counts):
        return None
    mels, dft_length, sample_rate = counts
    if mels < 1 or dft_length < 1 or sample_rate < 1:
        return None
    spectrum = dft_length // 2 + 1
    f32 = DType.fp32

    def c(v: float | np.ndarray) -> Value:
        return cx.const(np.asarray(v, np.float32), f32)

    def hertz_to_mel(hz: Value) -> Value:
        hz = _reshape_to(cx, cx.cast(hz, f32), [1, 1])
        return cx.emit("div", [cx.emit("mul", [c(2595.0), cx.emit("log1p", [cx.emit("div", [hz, c(700.0)])])]),
                               c(np.log(10.0))])

    lo, hi = hertz_to_mel(ins[3]), hertz_to_mel(ins[4])
    step = cx.emit("div", [cx.emit("sub", [hi, lo]), c(mels + 2)])
    edges_mel = cx.emit("add", [cx.emit("mul", [c(np.arange(mels + 2)[None, :]), step]), lo])
    edges_hz = cx.emit("mul", [c(700.0), cx.emit("expm1", [cx.emit("mul", [cx.emit("div", [edges_mel, c(2595.0)]),
                                                                            c(np.log(10.0))])])])
    edges = cx.emit("floordiv", [cx.emit("mul", [c(dft_length + 1), edges_hz]), c(sample_rate)])  # [1, mels + 2]
    left, centre, right = (cx.emit("slice", [edges], {"axis": 1, "start": k, "end": k + mels, "step": 1}) for k in range(3))
    j = c(np.arange(spectrum)[:, None])

    def both(a: Value, b: Value) -> Value:
        return cx.emit("and", [a, b])

    flat = cx.emit("eq", [centre, left])
    rising = both(both(cx.emit("ge", [j, left]), cx.emit("le", [j, centre])), cx.emit("not", [flat]))
    falling = both(cx.emit("ge", [j, centre]), cx.emit("lt", [j, right]))
    up = cx.emit("div", [cx.emit("sub", [j, left]), cx.emit("maximum", [cx.emit("sub", [centre, left]), c(1.0)])])
    down = cx.emit("div", [cx.emit("sub", [right, j]), cx.emit("maximum", [cx.emit("sub", [right, centre]), c(1.0)])])
    peak = cx.emit("where", [both(flat, cx.emit("eq", [j, centre])), c(1.0), c(0.0)])
    out = cx.emit("where", [falling, down, cx.emit("where", [rising, up, peak])])
    return cx.cast(out, _elem_dtype(int(attrs.get("output_datatype", 1))))


# -- data movement -----------------------------------------------------------------------------
@onnx_op("CenterCropPad")
def _center_crop_pad(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    """Per listed axis: a centred slice where the target is smaller, a centred zero pad where it
    is larger (the odd element of either going to the end, as the reference places it)."""
    x = ins[0]
    shape = cx.ints(ins[1])
    r = x.type.rank
    axes = [_axis(int(a), r) for a in attrs.get("axes", range(r))]
    if shape is None or len(shape) != len(axes) or any(s < 0 for s in shape):
        return None
    pads = [(0, 0)] * r
    for a, s in zip(axes, shape):
        d = x.shape[a]
        if s < d:
            lo = (d - s) // 2
            x = cx.emit("slice", [x], {"axis": a, "start": lo, "end": lo + s, "step": 1})
        elif s > d:
            pads[a] = ((s - d) // 2, s - d - (s - d) // 2)
    if any(lo or hi for lo, hi in pads):
        x = cx.emit("pad", [x], {"pads": pads, "value": 0.0})
    return x


@onnx_op("Compress")
def _compress(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    """A constant condition picks constant indices: a gather along the axis (of the flattened
    input without one). A run-time condition decides the output shape at run time: host."""
    x, cond = ins[0], ins[1]
    if not cond.is_const:
        return None
    keep = np.asarray(cond.data).reshape(-1).astype(bool)
    if "axis" in attrs:
        axis = _axis(int(attrs["axis"]), x.type.rank)
    else:
        x, axis = _reshape_to(cx, x, [x.type.numel]), 0
    if keep.size > x.shape[axis]:
        return None  # the spec's condition is at most as long as the axis
    idx = np.nonzero(keep)[0]
    if idx.size == 0:
        shape = list(x.shape)
        shape[axis] = 0
        return cx.const(np.zeros(shape), x.dtype)
    return _take(cx, x, axis, idx)


# -- linear algebra ----------------------------------------------------------------------------
DET_MAX_N = 4  # larger determinants need a factorization (pivoting): host


@onnx_op("Det")
def _det(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    """det of [..., n, n] for n <= 4: the Laplace (cofactor) expansion along the first row,
    recursively, with elementwise mul / add / sub on the entries sliced out as [..., 1, 1];
    each minor is built once and shared by the expansions that need it."""
    x = ins[0]
    r = x.type.rank
    if r < 2 or x.shape[-1] != x.shape[-2] or not x.dtype.is_float or not (1 <= x.shape[-1] <= DET_MAX_N):
        return None
    n = x.shape[-1]
    row_cache: dict[int, Value] = {}
    entry_cache: dict[tuple[int, int], Value] = {}

    def entry(i: int, j: int) -> Value:
        if (i, j) not in entry_cache:
            if i not in row_cache:
                row_cache[i] = x if n == 1 else cx.emit("slice", [x], {"axis": r - 2, "start": i, "end": i + 1, "step": 1})
            row = row_cache[i]
            entry_cache[(i, j)] = row if n == 1 else cx.emit("slice", [row], {"axis": r - 1, "start": j, "end": j + 1, "step": 1})
        return entry_cache[(i, j)]

    minors: dict[tuple[int, ...], Value] = {}

    def minor(cols: tuple[int, ...]) -> Value:
        """det of the rows n - len(cols) .. n - 1 and the given columns."""
        if cols in minors:
            return minors[cols]
        top = n - len(cols)
        if len(cols) == 1:
            v = entry(top, cols[0])
        else:
            v = None
            for k, c in enumerate(cols):
                term = cx.emit("mul", [entry(top, c), minor(cols[:k] + cols[k + 1:])])
                v = term if v is None else cx.emit("sub" if k % 2 else "add", [v, term])
        minors[cols] = v
        return v

    return _reshape_to(cx, minor(tuple(range(n))), list(x.shape[:-2]))


@onnx_op("BitCast")
def _bitcast(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    """The same bytes read as `to` (float32 <-> int32 and other equal-width pairs vnpu has);
    ONNX types vnpu narrows on import (uint32 held as int64, double as float32) would change the
    bytes' width, so those run on the host."""
    from onnx import TensorProto as T

    from vnpu.frontends.onnx.importer import _elem_dtype

    x = ins[0]
    exact = {T.FLOAT: DType.fp32, T.INT32: DType.int32, T.INT64: DType.int64, T.FLOAT16: DType.fp16,
             T.BFLOAT16: DType.bf16, T.INT8: DType.int8}
    to = int(attrs["to"])
    if to not in exact or x.dtype not in exact.values() or exact[to].itemsize != x.dtype.itemsize:
        return None
    dt = _elem_dtype(to)
    if dt == x.dtype:
        return x
    if x.is_const:
        return cx.g.add_const(x.name, np.ascontiguousarray(x.data).view(dt.np), dt)
    return cx.emit("bitcast", [x], {"dtype": dt})


# -- n-gram counting ----------------------------------------------------------------------------
def _pool_ngrams(attrs: dict) -> dict[int, dict[tuple[int, ...], int]] | None:
    """The pool's n-grams of the counted sizes, per size: n-gram -> output column. The pool holds
    the 1-grams from ngram_counts[0], the 2-grams from ngram_counts[1]...; the n-gram with (1-based)
    id k counts into column ngram_indexes[k - 1], a repeated n-gram keeping its last id."""
    pool = attrs.get("pool_int64s")
    counts, indexes = list(attrs.get("ngram_counts", [])), list(attrs.get("ngram_indexes", []))
    if pool is None or not counts:
        return None  # string pools: no string type on the chip
    lo, hi = int(attrs["min_gram_length"]), int(attrs["max_gram_length"])
    out: dict[int, dict[tuple[int, ...], int]] = {}
    ngram_id = 1
    for i, start in enumerate(counts):
        size = i + 1
        end = counts[i + 1] if i + 1 < len(counts) else len(pool)
        items = (end - start) // size
        for g in range(items):
            if lo <= size <= hi:
                if ngram_id - 1 >= len(indexes):
                    return None
                out.setdefault(size, {})[tuple(int(v) for v in pool[start + g * size:start + (g + 1) * size])] = \
                    int(indexes[ngram_id - 1])
            ngram_id += 1
    return out


@onnx_op("TfIdfVectorizer")
def _tfidf_vectorizer(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    """Integer tokens [C] or [B, C] against a constant n-gram pool. For each n-gram size n and
    skip distance d (unigrams once, d = 1), the n strided windows of the row are slices; each is
    compared with the pool's k-th tokens ([B, P, 1] == [G]), the n compares and-ed and summed
    over the P positions: the count of each pool n-gram [B, G]; a constant 0/1 matrix [G, out]
    adds them into their output columns. TF is the count, IDF the weight (or 1) where the count
    is > 0, TFIDF the count times the weight (a column's weight: that of its pool n-gram)."""
    x = ins[0]
    grams = _pool_ngrams(attrs)
    mode = attrs.get("mode", "TF")
    if grams is None or x.dtype.is_float or x.dtype == DType.bool or x.type.rank > 2 or mode not in ("TF", "IDF", "TFIDF"):
        return None
    width = max(attrs["ngram_indexes"]) + 1
    weights = attrs.get("weights")
    rows = x.shape[0] if x.type.rank == 2 else 1
    length = x.shape[-1] if x.type.rank else 1
    xs = _reshape_to(cx, x, [rows, length])
    info = np.iinfo(x.dtype.np)
    if weights and len(weights) != len(attrs["ngram_indexes"]):
        return None
    total: Value | None = None
    for size, table in sorted(grams.items()):
        table = {g: col for g, col in table.items() if all(info.min <= t <= info.max for t in g)}  # else never equal
        if not table:
            continue
        pool = np.array(list(table), np.int64)  # [G, size]
        to_cols = np.zeros((len(table), width), np.float32)
        to_cols[np.arange(len(table)), list(table.values())] = 1.0
        skips = [1] if size == 1 else range(1, int(attrs.get("max_skip_count", 0)) + 2)
        counts: Value | None = None
        for d in skips:
            span = length - (size - 1) * d  # window starts
            if span <= 0:
                break
            hit: Value | None = None
            for k in range(size):
                tokens = _reshape_to(cx, _take(cx, xs, 1, np.arange(span) + k * d), [rows, span, 1])
                eq = cx.emit("eq", [tokens, cx.const(pool[:, k], x.dtype)])  # [rows, span, G]
                hit = eq if hit is None else cx.emit("and", [hit, eq])
            found = cx.emit("reduce", [cx.cast(hit, DType.fp32)], {"kind": "sum", "axes": [1], "keepdim": False})
            counts = found if counts is None else cx.emit("add", [counts, found])
        if counts is None:
            continue
        cols = cx.emit("matmul", [counts, cx.const(to_cols, DType.fp32)])
        total = cols if total is None else cx.emit("add", [total, cols])
    if total is None:  # no pool n-gram fits a row: all zeros
        total = cx.const(np.zeros((rows, width)), DType.fp32)
    if mode != "TF":
        # weights[i] belongs to the i-th pool n-gram, which counts into column ngram_indexes[i]
        # (as onnxruntime reads the spec; onnx.reference indexes the weights by column instead)
        col_w = np.ones(width, np.float32)
        if weights:
            col_w[np.asarray(attrs["ngram_indexes"], np.int64)] = np.asarray(weights, np.float32)
        w = cx.const(col_w, DType.fp32)
        if mode == "IDF":
            total = cx.emit("where", [cx.emit("gt", [total, cx.const(0.0, DType.fp32)]), w, cx.const(0.0, DType.fp32)])
        elif weights:
            total = cx.emit("mul", [total, w])
    return _reshape_to(cx, total, [rows, width] if x.type.rank == 2 else [width])
