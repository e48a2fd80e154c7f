"""Misc ATen lowerings (OpInfo coverage): scans, bucketing, histograms, statistics, strided views,
distances and batch norm's training form, onto existing IR ops and kernels."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from vnpu.dtypes import DType
from vnpu.frontends.torch.aten_ops import _dim
from vnpu.frontends.torch.importer import ImportContext as Cx, aten
from vnpu.ir.graph import Value
from vnpu.frontends import spatial
from vnpu.frontends.torch.aten_ops import _gather_any, _resolve_shape, _shifted, _topk_along, _uses_output


def _reshape(cx: Cx, x: Value, shape: Any) -> Value:
    return spatial.reshape(cx, x, [int(s) for s in shape])


def _zeros(cx: Cx, i: int | None = None) -> Value:
    """A zero constant shaped like the node's output i (empty results, unused buffers)."""
    t = cx.meta_type(i)
    return cx.const(np.zeros(t.shape), t.dtype)


def _materialize(cx: Cx, v: Value) -> Value:
    """A permuted / expanded view copied before a reshape merges its dims."""
    return cx.emit("copy", [v]) if v.producer is not None and v.producer.op in ("permute", "expand") else v


# -- copies of views ----------------------------------------------------------------------------
@aten("view_copy.default")
def _view_copy(cx: Cx, x: Value, shape: list) -> Value:
    return _reshape(cx, x, _resolve_shape(shape, x.type.numel))


@aten("unbind_copy.int", "unbind.int")
def _unbind(cx: Cx, x: Value, dim: int = 0) -> tuple:
    d = _dim(dim, x.type.rank)
    rest = [s for i, s in enumerate(x.shape) if i != d]
    return tuple(_reshape(cx, cx.emit("slice", [x], {"axis": d, "start": i, "end": i + 1, "step": 1}), rest)
                 for i in range(x.shape[d]))


def _storage_positions(size: list, stride: list, offset: int) -> np.ndarray:
    """The flat storage position of every element of an as_strided view, in the view's shape."""
    pos = np.full([int(s) for s in size], int(offset), np.int64)
    for a, (n, st) in enumerate(zip(size, stride)):
        shape = [1] * len(size)
        shape[a] = int(n)
        pos = pos + (np.arange(int(n), dtype=np.int64) * int(st)).reshape(shape)
    return pos


def _dense_input(cx: Cx, x: Value) -> bool:
    """x's storage is its own row-major data (offset 0, contiguous), so as_strided positions
    index its flattened elements."""
    src = cx.node.args[0]  # type: ignore[union-attr]
    val = getattr(src, "meta", {}).get("val")
    try:
        return val is not None and val.is_contiguous() and val.storage_offset() == 0
    except Exception:  # noqa: BLE001 - a fake tensor without storage details
        return False


def as_strided_gather(cx: Cx, x: Value, size: list, stride: list, storage_offset: int | None) -> Value | None:
    """x.as_strided(size, stride, offset) of a dense x: a gather of flattened x at the constant
    storage positions of the view."""
    pos = _storage_positions(size, stride, storage_offset or 0)
    if not _dense_input(cx, x) or (pos.size and (pos.min() < 0 or pos.max() >= x.type.numel)):
        return None
    if pos.size == 0:
        return cx.const(np.zeros(pos.shape), x.dtype)
    flat = _reshape(cx, x, [x.type.numel])
    return cx.emit("gather", [flat, cx.const(pos, DType.int64)], {"axis": 0})


@aten("as_strided_copy.default")
def _as_strided_copy(cx: Cx, x: Value, size: list, stride: list, storage_offset: int | None = None) -> Value | None:
    return as_strided_gather(cx, x, size, stride, storage_offset)


def _scatter_at_positions(cx: Cx, x: Value, src: Value, pos: np.ndarray) -> Value:
    """x with its flat elements at the constant positions `pos` replaced by src's elements (in
    pos order; a position listed twice takes the later one): a gather of src and a where."""
    n = x.type.numel
    take = np.full(n, -1, np.int64)
    take[pos.reshape(-1)] = np.arange(pos.size, dtype=np.int64)  # NumPy keeps the last of repeated targets
    hit = take >= 0
    flat = _reshape(cx, x, [n])
    srcf = _reshape(cx, cx.cast(src, x.dtype), [max(src.type.numel, 1)])
    picked = cx.emit("gather", [srcf, cx.const(np.where(hit, take, 0), DType.int64)], {"axis": 0})
    y = cx.emit("where", [cx.const(hit, DType.bool), picked, flat])
    return _reshape(cx, y, x.shape)


@aten("as_strided_scatter.default")
def _as_strided_scatter(cx: Cx, x: Value, src: Value, size: list, stride: list,
                        storage_offset: int | None = None) -> Value | None:
    pos = _storage_positions(size, stride, storage_offset or 0)
    if not _dense_input(cx, x) or (pos.size and (pos.min() < 0 or pos.max() >= x.type.numel)):
        return None
    if pos.size == 0:
        return x
    return _scatter_at_positions(cx, x, src, pos)


@aten("diagonal_scatter.default")
def _diagonal_scatter(cx: Cx, x: Value, src: Value, offset: int = 0, dim1: int = 0, dim2: int = 1) -> Value:
    """x with its diagonal (offset, dim1, dim2) replaced by src: the diagonal's flat positions
    are constants (NumPy's diagonal of x's position grid, laid out as torch.diagonal's)."""
    r = x.type.rank
    pos = np.diagonal(np.arange(x.type.numel, dtype=np.int64).reshape(x.shape), int(offset), _dim(dim1, r),
                      _dim(dim2, r))
    return x if pos.size == 0 else _scatter_at_positions(cx, x, src, np.ascontiguousarray(pos))


@aten("resize.default")
def _resize(cx: Cx, x: Value, size: list, *, memory_format: Any = None) -> Value | None:
    """resize to x's own shape (resize_as_ of a same-shaped tensor) is x; any other size exposes
    uninitialized memory or drops elements: host."""
    return x if tuple(int(s) for s in size) == x.shape else None


# -- scans -------------------------------------------------------------------------------------------
@aten("cummax.default", "cummin.default")
def _cummax(cx: Cx, x: Value, dim: int) -> tuple | None:
    """Running max / min and the index it came from, as a log-step (Hillis-Steele) scan over
    (value, index) pairs: a later element wins when it is NaN, or when neither is NaN and it is
    >= (<=) the earlier one, which keeps PyTorch's choice (the last index of a tie, NaN sticks)."""
    is_max = cx.node.target._schema.name.endswith("cummax")  # type: ignore[union-attr]
    if not x.dtype.is_float:
        return None
    if x.type.rank == 0 or x.type.numel == 0:
        return (x, _zeros(cx, 1))
    d = _dim(dim, x.type.rank)
    n = x.shape[d]
    shape = [1] * x.type.rank
    shape[d] = n
    idx = cx.emit("expand", [cx.const(np.arange(n, dtype=np.int64).reshape(shape), DType.int64)],
                  {"shape": list(x.shape)})
    idx = cx.emit("copy", [idx])
    v = x
    fill = -math.inf if is_max else math.inf
    k = 1
    while k < n:
        pv, pi = _shifted(cx, v, d, k, fill), _shifted(cx, idx, d, k, 0)
        later = cx.emit("ge" if is_max else "le", [v, pv])
        later = cx.emit("and", [later, cx.emit("not", [cx.emit("isnan", [pv])])])
        later = cx.emit("or", [later, cx.emit("isnan", [v])])
        v = cx.emit("where", [later, v, pv])
        idx = cx.emit("where", [later, idx, pi])
        k *= 2
    return (v, idx)


# -- bucketing ----------------------------------------------------------------------------------------
def _count_below(cx: Cx, seq: Value, values: Value, right: bool, out_int32: bool) -> Value | None:
    """For each value, how many entries of its (sorted) row of seq are < it (<= with right): the
    insertion index searchsorted / bucketize return. A compare of every value with every entry
    and a sum over the entries (0/1 counts, exact in fp32)."""
    dt_out = DType.int32 if out_int32 else DType.int64
    if values.type.numel == 0:
        return cx.const(np.zeros(values.shape), dt_out)
    if seq.type.numel == 0:
        return cx.const(np.zeros(values.shape), dt_out)
    dt = seq.dtype if seq.dtype == values.dtype else DType.fp32
    s, v = cx.cast(seq, dt), cx.cast(values, dt)
    m = s.shape[-1]
    if s.type.rank == 1:
        vv = _reshape(cx, v, list(v.shape) + [1])
        ss = s
    else:
        if s.shape[:-1] != v.shape[:-1]:
            return None
        vv = _reshape(cx, v, list(v.shape) + [1])
        ss = _reshape(cx, s, list(s.shape[:-1]) + [1, m])
    cmp = cx.emit("le" if right else "lt", [ss, vv])  # [..., K, M]
    n = cx.emit("reduce", [cx.cast(cmp, DType.fp32)], {"kind": "sum", "axes": [cmp.type.rank - 1], "keepdim": False})
    return cx.cast(n, dt_out)


@aten("searchsorted.Tensor", "searchsorted.Scalar")
def _searchsorted(cx: Cx, seq: Value, values: Any, *, out_int32: bool = False, right: bool = False,
                  side: str | None = None, sorter: Value | None = None) -> Value | None:
    if not isinstance(values, Value):
        values = cx.const(values, seq.dtype)
    if sorter is not None:
        if sorter.type.rank != seq.type.rank:
            return None
        seq = _gather_any(cx, seq, seq.type.rank - 1, sorter)
    return _count_below(cx, seq, values, bool(right) or side == "right", bool(out_int32))


@aten("bucketize.Tensor", "bucketize.Scalar")
def _bucketize(cx: Cx, x: Any, boundaries: Value, *, out_int32: bool = False, right: bool = False) -> Value | None:
    """bucketize(x, b): right=False counts boundaries < x, right=True those <= x."""
    if not isinstance(x, Value):
        x = cx.const(x, boundaries.dtype)
    if boundaries.type.rank != 1:
        return None
    return _count_below(cx, boundaries, x, bool(right), bool(out_int32))


# -- frexp / nextafter --------------------------------------------------------------------------------
def _frexp_parts(cx: Cx, x: Value) -> tuple[Value, Value]:
    """x = m * 2^e with 0.5 <= |m| < 1 (m = x, e = 0 for 0, inf and NaN), e as float: e from
    floor(log2 |x|) + 1, corrected by one step where log2 rounded across a power of two; the
    scaling by 2^-e is split in two so that neither factor overflows for subnormal x."""
    dt = x.dtype
    a = cx.emit("abs", [x])
    regular = cx.emit("and", [cx.emit("isfinite", [x]), cx.emit("ne", [x, cx.const(0.0, dt)])])
    safe = cx.emit("where", [regular, a, cx.const(1.0, dt)])
    e = cx.emit("add", [cx.emit("floor", [cx.emit("log2", [safe])]), cx.const(1.0, dt)])
    h = cx.emit("floor", [cx.emit("mul", [e, cx.const(0.5, dt)])])
    m = cx.emit("mul", [cx.emit("mul", [safe, cx.emit("exp2", [cx.emit("neg", [h])])]),
                        cx.emit("exp2", [cx.emit("sub", [h, e])])])
    big = cx.emit("ge", [m, cx.const(1.0, dt)])
    m = cx.emit("where", [big, cx.emit("mul", [m, cx.const(0.5, dt)]), m])
    e = cx.emit("where", [big, cx.emit("add", [e, cx.const(1.0, dt)]), e])
    small = cx.emit("lt", [m, cx.const(0.5, dt)])
    m = cx.emit("where", [small, cx.emit("mul", [m, cx.const(2.0, dt)]), m])
    e = cx.emit("where", [small, cx.emit("sub", [e, cx.const(1.0, dt)]), e])
    m = cx.emit("where", [regular, cx.emit("copysign", [m, x]), x])
    e = cx.emit("where", [regular, e, cx.const(0.0, dt)])
    return m, e


@aten("frexp.Tensor")
def _frexp(cx: Cx, x: Value) -> tuple | None:
    if x.dtype != DType.fp32:
        return None
    if x.type.numel == 0:
        return (x, _zeros(cx, 1))
    m, e = _frexp_parts(cx, x)
    return (m, cx.cast(e, cx.meta_type(1).dtype))


@aten("nextafter.default")
def _nextafter(cx: Cx, a: Value, b: Value) -> Value | None:
    """The fp32 number next to a towards b: a plus or minus one unit in the last place of |a|
    (2^(e-24) for |a| = m * 2^e, at least the smallest subnormal 2^-149; half of it stepping
    towards zero from a power of two), b where a == b, NaN if either is NaN."""
    if a.dtype != DType.fp32 or b.dtype != DType.fp32:
        return None
    dt = DType.fp32
    out = cx.meta_type().shape
    a_ = cx.emit("expand", [a], {"shape": list(out)}) if a.shape != tuple(out) else a
    m, e = _frexp_parts(cx, a_)
    tiny = cx.const(2.0 ** -149, dt)
    ulp = cx.emit("maximum", [cx.emit("exp2", [cx.emit("sub", [e, cx.const(24.0, dt)])]), tiny])
    up = cx.emit("gt", [b, a_])
    away = cx.emit("eq", [up, cx.emit("gt", [a_, cx.const(0.0, dt)])])  # moving away from zero
    pow2 = cx.emit("eq", [cx.emit("abs", [m]), cx.const(0.5, dt)])
    half = cx.emit("maximum", [cx.emit("mul", [ulp, cx.const(0.5, dt)]), tiny])
    step = cx.emit("where", [cx.emit("and", [pow2, cx.emit("not", [away])]), half, ulp])
    y = cx.emit("where", [up, cx.emit("add", [a_, step]), cx.emit("sub", [a_, step])])
    zero = cx.emit("eq", [a_, cx.const(0.0, dt)])
    y = cx.emit("where", [zero, cx.emit("copysign", [cx.emit("expand", [tiny], {"shape": list(out)}), b]), y])
    inf = cx.emit("isinf", [a_])
    y = cx.emit("where", [inf, cx.emit("copysign", [cx.const(np.full(out, np.finfo(np.float32).max), dt), a_]), y])
    b_ = cx.emit("expand", [b], {"shape": list(out)}) if b.shape != tuple(out) else b
    y = cx.emit("where", [cx.emit("eq", [a_, b]), b_, y])
    nan = cx.emit("or", [cx.emit("isnan", [a_]), cx.emit("isnan", [b])])
    return cx.emit("where", [nan, cx.const(math.nan, dt), y])


# -- batch norm's training form, group norm's statistics ----------------------------------------------
def _per_channel(cx: Cx, v: Value, x: Value) -> Value:
    return cx.cast(_reshape(cx, v, [x.shape[1]] + [1] * (x.type.rank - 2)), x.dtype)


def _affine(cx: Cx, y: Value, x: Value, w: Value | None, b: Value | None) -> Value:
    if w is not None:
        y = cx.emit("mul", [y, _per_channel(cx, w, x)])
    if b is not None:
        y = cx.emit("add", [y, _per_channel(cx, b, x)])
    return y


def batch_norm_running_stats(cx: Cx, x: Value, w: Value | None, b: Value | None, mean: Value, var: Value,
                             eps: float) -> Value:
    """(x - running_mean) / sqrt(running_var + eps), then the affine: stats known only at run time."""
    rstd = cx.emit("rsqrt", [cx.emit("add", [_per_channel(cx, var, x), cx.const(float(eps), x.dtype)])])
    y = cx.emit("mul", [cx.emit("sub", [x, _per_channel(cx, mean, x)]), rstd])
    return _affine(cx, y, x, w, b)


def _batch_stats_norm(cx: Cx, x: Value, w: Value | None, b: Value | None, rm: Value | None, rv: Value | None,
                      momentum: float, eps: float) -> tuple[Value, Value, Value, Value | None, Value | None]:
    """Batch norm over the batch's own statistics: per channel over N and the positions. Gives the
    output, the saved mean and 1/sqrt(var + eps) ([C]), and the updated running stats
    ((1 - momentum) * running + momentum * batch stat; the variance unbiased, n / (n - 1))."""
    axes = [0] + list(range(2, x.type.rank))
    n = math.prod(x.shape[a] for a in axes)
    mean = cx.emit("reduce", [x], {"kind": "mean", "axes": axes, "keepdim": True})
    dev = cx.emit("sub", [x, mean])
    var = cx.emit("reduce", [cx.emit("mul", [dev, dev])], {"kind": "mean", "axes": axes, "keepdim": True})
    rstd = cx.emit("rsqrt", [cx.emit("add", [var, cx.const(float(eps), x.dtype)])])
    y = _affine(cx, cx.emit("mul", [dev, rstd]), x, w, b)
    c = [x.shape[1]]
    mean_c, var_c, rstd_c = _reshape(cx, mean, c), _reshape(cx, var, c), _reshape(cx, rstd, c)
    new_rm = new_rv = None
    mom = float(momentum)
    if rm is not None:
        new_rm = cx.emit("add", [cx.emit("mul", [cx.cast(rm, x.dtype), cx.const(1.0 - mom, x.dtype)]),
                                 cx.emit("mul", [mean_c, cx.const(mom, x.dtype)])])
        new_rm = cx.cast(new_rm, rm.dtype)
    if rv is not None:
        unbiased = cx.emit("mul", [var_c, cx.const(n / (n - 1) if n > 1 else math.inf, x.dtype)])
        new_rv = cx.emit("add", [cx.emit("mul", [cx.cast(rv, x.dtype), cx.const(1.0 - mom, x.dtype)]),
                                 cx.emit("mul", [unbiased, cx.const(mom, x.dtype)])])
        new_rv = cx.cast(new_rv, rv.dtype)
    return y, mean_c, rstd_c, new_rm, new_rv


@aten("_native_batch_norm_legit_functional.default")
def _bn_functional(cx: Cx, x: Value, w: Value | None, b: Value | None, rm: Value, rv: Value, training: bool,
                   momentum: float, eps: float) -> tuple | None:
    if not x.dtype.is_float or x.type.rank < 2 or x.type.numel == 0:
        return None
    if not training:  # the running statistics, left as they are; no saved statistics
        return (batch_norm_running_stats(cx, x, w, b, rm, rv, eps), _zeros(cx, 1), _zeros(cx, 2), rm, rv)
    y, mean, rstd, new_rm, new_rv = _batch_stats_norm(cx, x, w, b, rm, rv, momentum, eps)
    return (y, mean, rstd, new_rm, new_rv)


@aten("_batch_norm_with_update_functional.default")
def _bn_with_update(cx: Cx, x: Value, w: Value | None, b: Value | None, rm: Value, rv: Value, momentum: float,
                    eps: float) -> tuple | None:
    if not x.dtype.is_float or x.type.rank < 2 or x.type.numel == 0:
        return None
    y, mean, rstd, new_rm, new_rv = _batch_stats_norm(cx, x, w, b, rm, rv, momentum, eps)
    return (y, mean, rstd, _zeros(cx, 3), new_rm, new_rv)  # output 3: cuDNN's reserve space, empty on CPU


def group_norm_stats(cx: Cx, x: Value, groups: int, eps: float) -> tuple[Value, Value]:
    """native_group_norm's saved statistics: mean and 1/sqrt(var + eps) per (sample, group), [N, G]."""
    n = x.shape[0]
    v = _reshape(cx, x, [n, groups, x.type.numel // max(n * groups, 1)])
    mean = cx.emit("reduce", [v], {"kind": "mean", "axes": [2], "keepdim": True})
    dev = cx.emit("sub", [v, mean])
    var = cx.emit("reduce", [cx.emit("mul", [dev, dev])], {"kind": "mean", "axes": [2], "keepdim": False})
    rstd = cx.emit("rsqrt", [cx.emit("add", [var, cx.const(float(eps), x.dtype)])])
    return _reshape(cx, mean, [n, groups]), rstd


# -- order statistics ---------------------------------------------------------------------------------
def _out_shape(cx: Cx, v: Value, i: int | None = None) -> Value:
    want = list(cx.meta_type(i).shape)
    return v if list(v.shape) == want else _reshape(cx, v, want)


@aten("mode.default")
def _mode(cx: Cx, x: Value, dim: int = -1, keepdim: bool = False) -> tuple | None:
    """The most frequent value along dim (the smallest of equally frequent ones) and the last
    index holding it, as PyTorch's CPU kernel gives: each element's count of equal elements
    (an [.., n, n] compare summed), the max count, the smallest value reaching it, then the
    largest position equal to that value."""
    if not x.dtype.is_float or x.type.numel == 0:
        return None
    if x.type.rank == 0:
        return (x, _zeros(cx, 1))
    d = _dim(dim, x.type.rank)
    n = x.shape[d]
    if x.type.numel * n > 1 << 22:
        return None
    r = x.type.rank
    perm = [a for a in range(r) if a != d] + [d]
    y = _materialize(cx, cx.emit("permute", [x], {"perm": perm})) if perm != list(range(r)) else x  # [.., n]
    lead = list(y.shape[:-1])
    eq = cx.emit("eq", [_reshape(cx, y, lead + [n, 1]), _reshape(cx, y, lead + [1, n])])
    counts = cx.emit("reduce", [cx.cast(eq, DType.fp32)], {"kind": "sum", "axes": [r], "keepdim": False})  # [.., n]
    top = cx.emit("reduce", [counts], {"kind": "max", "axes": [r - 1], "keepdim": True})
    cand = cx.emit("where", [cx.emit("eq", [counts, top]), y, cx.const(math.inf, x.dtype)])
    val = cx.emit("reduce", [cand], {"kind": "min", "axes": [r - 1], "keepdim": True})  # [.., 1]
    pos = cx.const(np.arange(n, dtype=np.float32), DType.fp32)
    at = cx.emit("where", [cx.emit("eq", [y, val]), pos, cx.const(-1.0, DType.fp32)])
    idx = cx.cast(cx.emit("reduce", [at], {"kind": "max", "axes": [r - 1], "keepdim": True}), DType.int64)
    return (_out_shape(cx, val, 0), _out_shape(cx, idx, 1))


def _nanmedian_rows(cx: Cx, y: Value) -> tuple[Value, Value]:
    """The lower median of each row of y [.., n] ignoring NaNs, with its index: NaN set to +inf,
    an ascending sort, then the ((count - 1) // 2)-th entry (count: the row's non-NaN values);
    an all-NaN row gives NaN at its first NaN."""
    r = y.type.rank
    n = y.shape[-1]
    nan = cx.emit("isnan", [y])
    filled = cx.emit("where", [nan, cx.const(math.inf, y.dtype), y])
    vals, idx = _topk_along(cx, filled, n, r - 1, largest=False)
    count = cx.emit("reduce", [cx.cast(cx.emit("not", [nan]), DType.fp32)], {"kind": "sum", "axes": [r - 1],
                                                                            "keepdim": True})
    above = cx.emit("maximum", [cx.emit("sub", [count, cx.const(1.0, DType.fp32)]), cx.const(0.0, DType.fp32)])
    k = cx.emit("floor", [cx.emit("mul", [above, cx.const(0.5, DType.fp32)])])
    k = cx.cast(k, DType.int64)  # [.., 1]
    v = _gather_any(cx, vals, r - 1, k)
    i = _gather_any(cx, idx, r - 1, k)
    empty = cx.emit("eq", [count, cx.const(0.0, DType.fp32)])
    v = cx.emit("where", [empty, cx.const(math.nan, y.dtype), v])
    i = cx.emit("where", [empty, cx.const(0, DType.int64), i])  # an all-NaN row: its first element
    return v, i


@aten("nanmedian.default", "nanmedian.dim")
def _nanmedian(cx: Cx, x: Value, dim: int | None = None, keepdim: bool = False) -> Any:
    if not x.dtype.is_float or x.type.numel == 0:
        return None
    if dim is None:
        if x.type.rank == 0:
            return x
        v, _ = _nanmedian_rows(cx, _reshape(cx, x, [x.type.numel]))
        return _reshape(cx, v, [])
    if x.type.rank == 0:
        return (x, _zeros(cx, 1))
    d = _dim(dim, x.type.rank)
    r = x.type.rank
    perm = [a for a in range(r) if a != d] + [d]
    y = cx.emit("permute", [x], {"perm": perm}) if perm != list(range(r)) else x
    v, i = _nanmedian_rows(cx, y)
    return (_out_shape(cx, v, 0), _out_shape(cx, i, 1))


# -- distances, bilinear forms --------------------------------------------------------------------------
def _p_norm_last(cx: Cx, d: Value, p: float) -> Value:
    """||d||_p over the last axis: p = 0 (count of nonzeros), 1, 2, inf and any other p > 0."""
    from vnpu.frontends.torch.aten_ops import _vector_norm

    return _vector_norm(cx, d, float(p), [d.type.rank - 1], False)


DIST_MAX_CELLS = 1 << 22  # elements of the broadcast difference tensor


@aten("_cdist_forward.default")
def _cdist(cx: Cx, a: Value, b: Value, p: float, compute_mode: int | None = None) -> Value | None:
    """cdist: every pair of rows of a [.., P, M] and b [.., R, M] differenced ([.., P, R, M]) and
    normed over M (more exact than the |a|^2 + |b|^2 - 2ab form, which PyTorch too only uses for
    large inputs)."""
    if not a.dtype.is_float or a.type.rank < 2:
        return None
    *lead, pn, m = a.shape
    rn = b.shape[-2]
    if pn * rn * m * max(math.prod(lead), 1) > DIST_MAX_CELLS:
        return None
    if pn == 0 or rn == 0 or m == 0:
        return _zeros(cx)
    diff = cx.emit("sub", [_reshape(cx, a, list(a.shape[:-1]) + [1, m]),
                           _reshape(cx, b, list(b.shape[:-2]) + [1, rn, m])])
    return _out_shape(cx, _p_norm_last(cx, diff, p))


@aten("_pdist_forward.default")
def _pdist(cx: Cx, x: Value, p: float = 2.0) -> Value | None:
    """pdist: the norms of row i - row j for i < j (row-major pairs), rows picked by constant gathers."""
    if not x.dtype.is_float or x.type.rank != 2:
        return None
    n, m = x.shape
    i, j = np.triu_indices(n, 1)
    if i.size == 0 or m == 0:
        return _zeros(cx)
    if i.size * m > DIST_MAX_CELLS:
        return None
    xi = cx.emit("gather", [x, cx.const(i.astype(np.int64), DType.int64)], {"axis": 0})
    xj = cx.emit("gather", [x, cx.const(j.astype(np.int64), DType.int64)], {"axis": 0})
    return _p_norm_last(cx, cx.emit("sub", [xi, xj]), p)


@aten("_trilinear.default")
def _trilinear(cx: Cx, i1: Value, i2: Value, i3: Value, expand1: list, expand2: list, expand3: list,
               sumdim: list, unroll_dim: int = 1) -> Value | None:
    """sum over sumdim of i1 * i2 * i3, each unsqueezed at its expand dims (bilinear's
    x1^T A x2): a broadcast product and one reduction (small operands)."""
    ins = []
    for v, ex in ((i1, expand1), (i2, expand2), (i3, expand3)):
        shape = list(v.shape)
        for e in sorted(int(e) for e in ex):
            shape.insert(e, 1)
        ins.append(_reshape(cx, v, shape))
    full = tuple(max(s) for s in zip(*(v.shape for v in ins)))
    if math.prod(full) == 0:
        return _zeros(cx)
    if math.prod(full) > DIST_MAX_CELLS or not all(v.dtype.is_float for v in ins):
        return None
    y = cx.emit("mul", [cx.emit("mul", [ins[0], ins[1]]), ins[2]])
    axes = sorted(int(s) for s in sumdim)
    if axes:
        y = cx.emit("reduce", [y], {"kind": "sum", "axes": axes, "keepdim": False})
    return _out_shape(cx, y)


# -- histograms -------------------------------------------------------------------------------------------
def _linspace_edges(cx: Cx, lo: Value, hi: Value, bins: int) -> Value:
    """bins + 1 edges from lo to hi ([1] each), as torch.linspace places them: start + i * step in
    the first half, end - (bins - i) * step in the second."""
    dt = lo.dtype
    i = np.arange(bins + 1, dtype=np.float32)
    step = cx.emit("div", [cx.emit("sub", [hi, lo]), cx.const(float(bins), dt)])
    first = cx.emit("add", [lo, cx.emit("mul", [step, cx.const(i, dt)])])
    second = cx.emit("sub", [hi, cx.emit("mul", [step, cx.const(bins - i, dt)])])
    return cx.emit("where", [cx.const(i < (bins + 1) // 2, DType.bool), first, second])


def _bin_membership(cx: Cx, col: Value, edges: Value) -> Value:
    """[N, B] 0/1 in col's dtype: element n lies in [e_k, e_k+1) (the last bin closed). With
    G[n, k] = (x_n >= e_k), bin k is G[:, k] - G[:, k+1], the last G[:, B-1] - (x_n > e_B)."""
    b = edges.type.numel - 1
    e = _reshape(cx, edges, [1, b + 1])
    ge = cx.cast(cx.emit("ge", [col, e]), col.dtype)  # [N, B + 1]
    above = cx.cast(cx.emit("gt", [col, cx.emit("slice", [e], {"axis": 1, "start": b, "end": b + 1, "step": 1})]),
                    col.dtype)  # [N, 1]
    lower = cx.emit("slice", [ge], {"axis": 1, "start": 0, "end": b, "step": 1})
    upper = cx.emit("concat", [cx.emit("slice", [ge], {"axis": 1, "start": 1, "end": b, "step": 1}), above],
                    {"axis": 1}) if b > 1 else above
    return cx.emit("sub", [lower, upper])


def _widths(cx: Cx, edges: Value) -> Value:
    b = edges.type.numel - 1
    return cx.emit("sub", [cx.emit("slice", [edges], {"axis": 0, "start": 1, "end": b + 1, "step": 1}),
                           cx.emit("slice", [edges], {"axis": 0, "start": 0, "end": b, "step": 1})])


def _histogram_counts(cx: Cx, x: Value, edges: list[Value], weight: Value | None, density: bool) -> Value:
    """Counts (weighted sums) of x's rows (x [N, D], one edge vector per column) in each cell of
    the D-dimensional grid of bins: the per-column memberships multiplied out ([N, B1 * B2 ...])
    and summed over N; density divides by the total and each cell's volume."""
    n = x.shape[0]
    joint = None
    for d, e in enumerate(edges):
        col = cx.emit("slice", [x], {"axis": 1, "start": d, "end": d + 1, "step": 1}) if x.shape[1] > 1 else x
        m = _bin_membership(cx, col, e)  # [N, Bd]
        if joint is None:
            joint = m
        else:
            cells = joint.shape[1] * m.shape[1]
            joint = _reshape(cx, cx.emit("mul", [_reshape(cx, joint, [n, joint.shape[1], 1]),
                                                 _reshape(cx, m, [n, 1, m.shape[1]])]), [n, cells])
    if weight is not None:
        joint = cx.emit("mul", [joint, _reshape(cx, cx.cast(weight, x.dtype), [n, 1])])
    hist = cx.emit("reduce", [joint], {"kind": "sum", "axes": [0], "keepdim": False})
    shape = [e.type.numel - 1 for e in edges]
    hist = _reshape(cx, hist, shape)
    if density:
        vol = None
        for d, e in enumerate(edges):
            w = _reshape(cx, _widths(cx, e), [1] * d + [shape[d]] + [1] * (len(shape) - d - 1))
            vol = w if vol is None else cx.emit("mul", [vol, w])
        total = cx.emit("reduce", [hist], {"kind": "sum", "axes": list(range(len(shape))), "keepdim": True})
        hist = cx.emit("div", [hist, cx.emit("mul", [total, vol])])
    return hist


def _auto_edges(cx: Cx, x: Value, bins: list[int], ranges: Any) -> list[Value]:
    """Each column's bins + 1 edges over the given range (constants) or the column's min..max
    (computed; widened by 0.5 each way when the two are equal, as PyTorch)."""
    dt = x.dtype
    out = []
    for d, b in enumerate(bins):
        if ranges is not None:
            lo, hi = float(ranges[2 * d]), float(ranges[2 * d + 1])
            if lo == hi:
                lo, hi = lo - 0.5, hi + 0.5
            lo_v, hi_v = cx.const(np.array([lo]), dt), cx.const(np.array([hi]), dt)
        else:
            col = cx.emit("slice", [x], {"axis": 1, "start": d, "end": d + 1, "step": 1}) if x.shape[1] > 1 else x
            lo_v = _reshape(cx, cx.emit("reduce", [col], {"kind": "min", "axes": [0], "keepdim": False}), [1])
            hi_v = _reshape(cx, cx.emit("reduce", [col], {"kind": "max", "axes": [0], "keepdim": False}), [1])
            same = cx.emit("eq", [lo_v, hi_v])
            lo_v = cx.emit("where", [same, cx.emit("sub", [lo_v, cx.const(0.5, dt)]), lo_v])
            hi_v = cx.emit("where", [same, cx.emit("add", [hi_v, cx.const(0.5, dt)]), hi_v])
        out.append(_linspace_edges(cx, lo_v, hi_v, int(b)))
    return out


def _hist_input(x: Value) -> bool:
    return x.dtype.is_float and x.type.numel > 0 and x.type.numel <= 1 << 16


@aten("histogram.bin_ct")
def _histogram(cx: Cx, x: Value, bins: int = 100, *, range: Any = None, weight: Value | None = None,
               density: bool = False) -> tuple | None:
    """torch.histogram with a bin count: the edges, then the counts."""
    if not _hist_input(x) or bins < 1:
        return None
    col = _reshape(cx, x, [x.type.numel, 1])
    (edges,) = _auto_edges(cx, col, [int(bins)], range)
    return (_reshape(cx, _histogram_counts(cx, col, [edges], weight, bool(density)), [int(bins)]), edges)


@aten("histogram.bins_tensor")
def _histogram_edges(cx: Cx, x: Value, bins: Value, *, weight: Value | None = None,
                     density: bool = False) -> tuple | None:
    if not _hist_input(x) or bins.type.rank != 1 or bins.type.numel < 2:
        return None
    col = _reshape(cx, x, [x.type.numel, 1])
    return (_histogram_counts(cx, col, [cx.cast(bins, x.dtype)], weight, bool(density)), bins)


def _dd_rows(cx: Cx, x: Value) -> Value:
    """histogramdd's input [..., D] as rows [N, D]."""
    return _reshape(cx, x, [x.type.numel // x.shape[-1], x.shape[-1]])


@aten("_histogramdd_bin_edges.default")
def _histogramdd_bin_edges(cx: Cx, x: Value, bins: list, *, range: Any = None, weight: Value | None = None,
                           density: bool = False) -> tuple | None:
    if not _hist_input(x) or x.type.rank < 1 or len(bins) != x.shape[-1]:
        return None
    return tuple(_auto_edges(cx, _dd_rows(cx, x), [int(b) for b in bins], range))


@aten("_histogramdd_from_bin_cts.default")
def _histogramdd_from_bin_cts(cx: Cx, x: Value, bins: list, *, range: Any = None, weight: Value | None = None,
                              density: bool = False) -> Value | None:
    if not _hist_input(x) or x.type.rank < 1 or len(bins) != x.shape[-1] or math.prod(bins) > 1 << 12:
        return None
    rows = _dd_rows(cx, x)
    return _histogram_counts(cx, rows, _auto_edges(cx, rows, [int(b) for b in bins], range), weight, bool(density))


@aten("_histogramdd_from_bin_tensors.default")
def _histogramdd_from_bin_tensors(cx: Cx, x: Value, bins: list, *, weight: Value | None = None,
                                  density: bool = False) -> Value | None:
    if (not _hist_input(x) or x.type.rank < 1 or len(bins) != x.shape[-1]
            or any(b.type.rank != 1 or b.type.numel < 2 for b in bins)
            or math.prod(b.type.numel - 1 for b in bins) > 1 << 12):
        return None
    return _histogram_counts(cx, _dd_rows(cx, x), [cx.cast(b, x.dtype) for b in bins], weight, bool(density))


# -- segment_reduce ---------------------------------------------------------------------------------------
@aten("segment_reduce.default")
def _segment_reduce(cx: Cx, data: Value, reduce: str, *, lengths: Value | None = None, indices: Any = None,
                    offsets: Value | None = None, axis: int = 0, unsafe: bool = False,
                    initial: Any = None) -> Value | None:
    """Segments of data along axis 0 given by run-time lengths (or offsets): each element's
    segment is the number of segment ends at or before it, a one-hot [S, N] of it then reduces
    each segment (sum / mean as a matmul, max / min / prod over a filled [S, N, ...] tensor),
    starting from `initial` when given (an empty segment is `initial`, else the reduction's
    identity; mean: NaN)."""
    if (_dim(axis, data.type.rank) != 0 or not data.dtype.is_float
            or reduce not in ("sum", "mean", "max", "min", "prod")):
        return None
    n = data.shape[0]
    dt = data.dtype
    if offsets is not None:
        if offsets.type.rank != 1:
            return None
        offs = cx.cast(offsets, DType.int64)
        s = offsets.shape[0] - 1
        ends = cx.emit("slice", [offs], {"axis": 0, "start": 1, "end": s + 1, "step": 1})
        starts = cx.emit("slice", [offs], {"axis": 0, "start": 0, "end": s, "step": 1})
        lens = cx.emit("sub", [ends, starts])
    elif lengths is not None:
        if lengths.type.rank != 1:
            return None
        from vnpu.frontends.torch.aten_scatter import inclusive_count

        lens = cx.cast(lengths, DType.int64)
        s = lengths.shape[0]
        ends = inclusive_count(cx, lens)
        starts = cx.emit("sub", [ends, lens])
    else:
        return None
    rest = list(data.shape[1:])
    c = math.prod(rest)
    if s * n * max(c, 1) > 1 << 22 or s == 0:
        return None
    pos = cx.const(np.arange(n, dtype=np.int64).reshape(1, n), DType.int64)
    member = cx.emit("and", [cx.emit("ge", [pos, _reshape(cx, starts, [s, 1])]),
                             cx.emit("lt", [pos, _reshape(cx, ends, [s, 1])])])  # [S, N]
    flat = _reshape(cx, data, [n, c])
    cnt = cx.cast(_reshape(cx, lens, [s, 1]), dt)
    empty = cx.emit("eq", [cnt, cx.const(0.0, dt)])
    init = None if initial is None else cx.const(float(initial), dt)
    if reduce in ("sum", "mean"):
        y = cx.emit("matmul", [cx.cast(member, dt), flat])  # [S, C]
        if init is not None:
            y = cx.emit("add", [y, init])
        if reduce == "mean":
            y = cx.emit("div", [y, cnt])
            if init is not None:
                y = cx.emit("where", [empty, init, y])
    else:
        fill = {"max": -math.inf, "min": math.inf, "prod": 1.0}[reduce]
        cand = cx.emit("where", [_reshape(cx, member, [s, n, 1]), _reshape(cx, flat, [1, n, c]), cx.const(fill, dt)])
        y = cx.emit("reduce", [cand], {"kind": reduce, "axes": [1], "keepdim": False})
        if init is not None:
            y = cx.emit({"max": "maximum", "min": "minimum", "prod": "mul"}[reduce], [y, init])
    return _reshape(cx, y, [s] + rest)


# -- nonzero_static ---------------------------------------------------------------------------------------
@aten("nonzero_static.default")
def _nonzero_static(cx: Cx, x: Value, *, size: int, fill_value: int = -1) -> Value | None:
    """The coordinates of the first `size` nonzero elements (row-major), rows past the count
    filled with fill_value: each nonzero's rank among them (a running count), a one-hot
    [size, N] of the ranks, and a matmul with the constant coordinate table [N, rank]."""
    want = cx.meta_type().shape
    n = x.type.numel
    r = x.type.rank
    if size == 0 or r == 0 or n == 0:  # no coordinates to compute: an empty result or only fill rows
        return cx.const(np.full(want, fill_value), DType.int64)
    if size * n > 1 << 22 or n > 1 << 24:
        return None
    from vnpu.frontends.torch.aten_scatter import inclusive_count

    nz = cx.emit("ne", [_reshape(cx, x, [n]), cx.const(0, x.dtype)])
    rank = cx.emit("sub", [inclusive_count(cx, cx.cast(nz, DType.int64)), cx.const(1, DType.int64)])
    rank = cx.emit("where", [nz, rank, cx.const(-1, DType.int64)])
    onehot = cx.emit("eq", [_reshape(cx, rank, [1, n]), cx.const(np.arange(size, dtype=np.int64).reshape(size, 1),
                                                                     DType.int64)])  # [size, N]
    coords = np.stack(np.unravel_index(np.arange(n), x.shape), axis=1).astype(np.float32)  # [N, rank]
    got = cx.emit("matmul", [cx.cast(onehot, DType.fp32), cx.const(coords, DType.fp32)])  # [size, rank]
    filled = cx.emit("reduce", [cx.cast(onehot, DType.fp32)], {"kind": "max", "axes": [1], "keepdim": True})
    got = cx.emit("where", [cx.emit("gt", [filled, cx.const(0.0, DType.fp32)]), got,
                            cx.const(float(fill_value), DType.fp32)])
    return cx.cast(got, DType.int64)


# -- adaptive max pooling with indices ----------------------------------------------------------------------
def _adaptive_windows(size: int, out: int) -> list[tuple[int, int]]:
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def adaptive_max_pool_with_indices(cx: Cx, x: Value, out_size: list) -> tuple | None:
    """Adaptive max pooling over the trailing nd dims and the argmax's flat index in each plane:
    every output's window taps (row-major, a short window repeating its first tap) as a constant
    table [O, K], one gather of the flattened planes, a max over K, and the top-1 (ties: the first
    tap, as PyTorch's strict > scan) mapped back through the table."""
    nd = len(out_size)
    if not x.dtype.is_float or x.type.rank < nd + 1 or x.type.numel == 0:
        return None
    sp = list(x.shape[-nd:])
    outs = [int(o) if o is not None else s for o, s in zip(out_size, sp)]
    wins = [_adaptive_windows(s, o) for s, o in zip(sp, outs)]
    per_axis = []  # for each axis: [out_j, k_j] source coordinate of each tap
    for win in wins:
        k = max(b - a for a, b in win)
        per_axis.append([[a + t if a + t < b else a for t in range(k)] for a, b in win])
    taps = np.zeros(tuple(outs) + tuple(len(p[0]) for p in per_axis), np.int64)
    strides = [math.prod(sp[j + 1:]) for j in range(nd)]
    for j, p in enumerate(per_axis):
        arr = np.asarray(p, np.int64)  # [out_j, k_j]
        shape = [1] * (2 * nd)
        shape[j], shape[nd + j] = outs[j], arr.shape[1]
        taps = taps + arr.reshape(shape) * strides[j]
    o_n, k_n = math.prod(outs), math.prod(taps.shape[nd:])
    taps = taps.reshape(o_n, k_n)
    lead = list(x.shape[:-nd])
    planes = _reshape(cx, x, [math.prod(lead), math.prod(sp)])
    win = cx.emit("gather", [planes, cx.const(taps, DType.int64)], {"axis": 1})  # [P, O, K]
    vals = cx.emit("reduce", [win], {"kind": "max", "axes": [2], "keepdim": False})
    best = cx.g.add_node("topk", [win], {"k": 1}, name=cx.node.name).outputs[1]  # [P, O, 1]
    flat_at = cx.emit("add", [best, cx.const((np.arange(o_n, dtype=np.int64) * k_n).reshape(1, o_n, 1), DType.int64)])
    idx = cx.emit("gather", [cx.const(taps.reshape(-1), DType.int64), flat_at], {"axis": 0})
    return (_reshape(cx, vals, lead + outs), _reshape(cx, idx, lead + outs))


# -- linear + cross entropy (torch.nn.functional.linear_cross_entropy's chunked ops) ------------------------
def _linear_ce_rows(cx: Cx, x: Value, lw: Value, target: Value, lb: Value | None, weight: Value | None,
                    ignore_index: int, label_smoothing: float) -> tuple[Value, Value] | None:
    """Per-row loss [N] (0 for ignored rows) and per-row weight [N] (its share of a mean) of
    cross_entropy(x @ lw^T + lb, target): logsumexp of the logits minus the target's logit (picked
    with a one-hot compare), scaled by the class weight; label smoothing mixes in the mean of
    logsumexp - logit over the classes. One matmul holds the whole [N, V] logits: the chunking
    PyTorch does to save memory has no bearing on the result."""
    if x.type.rank != 2 or lw.type.rank != 2 or not x.dtype.is_float or (label_smoothing and weight is not None):
        return None
    n, v = x.shape[0], lw.shape[0]
    dt = x.dtype
    logits = cx.emit("matmul", [x, cx.emit("permute", [cx.cast(lw, dt)], {"perm": [1, 0]})])
    if lb is not None:
        logits = cx.emit("add", [logits, cx.cast(lb, dt)])
    m = cx.emit("reduce", [logits], {"kind": "max", "axes": [1], "keepdim": True})
    lse = cx.emit("add", [cx.emit("log", [cx.emit("reduce", [cx.emit("exp", [cx.emit("sub", [logits, m])])],
                                                             {"kind": "sum", "axes": [1], "keepdim": True})]), m])
    t = _reshape(cx, cx.cast(target, DType.int64), [n, 1])
    onehot = cx.emit("eq", [t, cx.const(np.arange(v, dtype=np.int64).reshape(1, v), DType.int64)])
    picked = cx.emit("reduce", [cx.emit("where", [onehot, logits, cx.const(0.0, dt)])], {"kind": "sum", "axes": [1],
                                                                                           "keepdim": True})
    loss = cx.emit("sub", [lse, picked])  # [N, 1]
    keep = cx.cast(cx.emit("ne", [t, cx.const(int(ignore_index), DType.int64)]), dt)
    wt = keep
    if weight is not None:
        cw = _reshape(cx, cx.cast(weight, dt), [1, v])
        wt = cx.emit("mul", [keep, cx.emit("reduce", [cx.emit("where", [onehot, cw, cx.const(0.0, dt)])],
                                           {"kind": "sum", "axes": [1], "keepdim": True})])
    loss = cx.emit("mul", [loss, wt])
    if label_smoothing:
        ls = float(label_smoothing)
        smooth = cx.emit("sub", [lse, cx.emit("reduce", [logits], {"kind": "mean", "axes": [1], "keepdim": True})])
        loss = cx.emit("add", [cx.emit("mul", [loss, cx.const(1.0 - ls, dt)]),
                               cx.emit("mul", [cx.emit("mul", [smooth, keep]), cx.const(ls, dt)])])
    return _reshape(cx, loss, [n]), _reshape(cx, wt, [n])


@aten("_linear_cross_entropy_batch_chunked.default")
def _linear_ce(cx: Cx, x: Value, lw: Value, target: Value, lb: Value | None, weight: Value | None, reduction: str,
               ignore_index: int, label_smoothing: float, *rest: Any) -> tuple | None:
    if reduction not in ("mean", "sum") or any(_uses_output(cx, i) for i in (1, 2, 3)):
        return None  # the gradient outputs
    rows = _linear_ce_rows(cx, x, lw, target, lb, weight, ignore_index, label_smoothing)
    if rows is None:
        return None
    loss, wt = rows
    total = cx.emit("reduce", [loss], {"kind": "sum", "axes": [0], "keepdim": False})
    if reduction == "mean":
        total = cx.emit("div", [total, cx.emit("reduce", [wt], {"kind": "sum", "axes": [0], "keepdim": False})])
    return (total, None, None, None)


@aten("_linear_cross_entropy_batch_chunked_no_reduction.default")
def _linear_ce_none(cx: Cx, x: Value, lw: Value, target: Value, lb: Value | None, weight: Value | None,
                    ignore_index: int, *rest: Any) -> Value | None:
    rows = _linear_ce_rows(cx, x, lw, target, lb, weight, ignore_index, 0.0)
    return None if rows is None else rows[0]


# -- embedding_bag with run-time offsets -------------------------------------------------------------------------
def embedding_bag_runtime_offsets(cx: Cx, w: Value, idx: Value, offsets: Value, mode: int,
                                  per_sample_weights: Value | None, include_last_offset: bool,
                                  padding_idx: int | None) -> Value | None:
    """Bags whose offsets are known only at run time: bag b holds positions offsets[b] ..
    offsets[b + 1] - 1 (the last bag runs to the end), a [bags, n] membership compare (rows equal
    to padding_idx left out), then sum / mean as one matmul with the gathered rows and max as a
    reduction over the rows filled with -inf outside the bag (an empty bag is 0, as PyTorch)."""
    if idx.type.rank != 1 or offsets.type.rank != 1 or int(mode) not in (0, 1, 2) or not w.dtype.is_float:
        return None
    n = idx.shape[0]
    offs = cx.cast(offsets, DType.int64)
    k = offsets.shape[0]
    bags = k - 1 if include_last_offset else k
    if bags < 1 or n == 0 or bags * n * w.shape[1] > 1 << 22:
        return None
    starts = cx.emit("slice", [offs], {"axis": 0, "start": 0, "end": bags, "step": 1})
    if include_last_offset:
        ends = cx.emit("slice", [offs], {"axis": 0, "start": 1, "end": k, "step": 1})
    else:
        nxt = [cx.emit("slice", [offs], {"axis": 0, "start": 1, "end": k, "step": 1})] if k > 1 else []
        ends = cx.emit("concat", nxt + [cx.const(np.array([n]), DType.int64)], {"axis": 0}) if nxt \
            else cx.const(np.array([n]), DType.int64)
    pos = cx.const(np.arange(n, dtype=np.int64).reshape(1, n), DType.int64)
    member = cx.emit("and", [cx.emit("ge", [pos, _reshape(cx, starts, [bags, 1])]),
                             cx.emit("lt", [pos, _reshape(cx, ends, [bags, 1])])])  # [bags, n]
    if padding_idx is not None and padding_idx >= 0:
        real = cx.emit("ne", [_reshape(cx, cx.cast(idx, DType.int64), [1, n]), cx.const(int(padding_idx), DType.int64)])
        member = cx.emit("and", [member, real])
    rows = cx.emit("gather", [w, idx], {"axis": 0})  # [n, D]
    dt = w.dtype
    if per_sample_weights is not None:
        if int(mode) != 0:
            return None
        rows = cx.emit("mul", [rows, _reshape(cx, cx.cast(per_sample_weights, dt), [n, 1])])
    m = cx.cast(member, dt)
    if int(mode) in (0, 1):
        y = cx.emit("matmul", [m, rows])
        if int(mode) == 1:
            count = cx.emit("reduce", [m], {"kind": "sum", "axes": [1], "keepdim": True})
            y = cx.emit("div", [y, cx.emit("maximum", [count, cx.const(1.0, dt)])])
        return y
    cand = cx.emit("where", [_reshape(cx, member, [bags, n, 1]), _reshape(cx, rows, [1, n, w.shape[1]]),
                             cx.const(-math.inf, dt)])
    y = cx.emit("reduce", [cand], {"kind": "max", "axes": [1], "keepdim": False})
    empty = cx.emit("eq", [cx.emit("reduce", [m], {"kind": "sum", "axes": [1], "keepdim": True}), cx.const(0.0, dt)])
    return cx.emit("where", [empty, cx.const(0.0, dt), y])


# -- 3-D grid sampling ---------------------------------------------------------------------------------------
@aten("grid_sampler_3d.default")
def _grid_sampler_3d(cx: Cx, x: Value, grid: Value, interpolation_mode: int, padding_mode: int,
                     align_corners: bool) -> Value | None:
    """Volumetric grid_sample (trilinear or nearest; zeros or border padding), as the 2-D lowering
    in frontends/spatial.py: source coordinates from the grid by elementwise ops, each of the 8
    (or 1) corner voxels a run-time gather of x's voxels seen as [N*D*H*W, C] rows, weighted
    (0 outside the volume) and summed."""
    mode = {0: "bilinear", 1: "nearest"}.get(int(interpolation_mode))
    padding = {0: "zeros", 1: "border"}.get(int(padding_mode))
    if mode is None or padding is None or x.type.rank != 5 or grid.type.rank != 5 or not x.dtype.is_float:
        return None
    n, c, d, h, w = x.shape
    _, do, ho, wo, _ = grid.shape
    if n * d * h * w >= 1 << 24 or n * do * ho * wo * c > 1 << 22:
        return None
    dt = x.dtype
    grid = cx.cast(grid, dt)
    out_sp = [n, do, ho, wo]

    def k(v: float) -> Value:
        return cx.const(v, dt)

    def unnormalize(axis: int, size: int) -> Value:
        gv = _reshape(cx, cx.emit("slice", [grid], {"axis": 4, "start": axis, "end": axis + 1, "step": 1}), out_sp)
        if align_corners:
            s = cx.emit("mul", [cx.emit("add", [gv, k(1.0)]), k((size - 1) / 2)])
        else:
            s = cx.emit("mul", [cx.emit("sub", [cx.emit("mul", [cx.emit("add", [gv, k(1.0)]), k(float(size))]),
                                                k(1.0)]), k(0.5)])
        if padding == "border":
            s = cx.emit("clamp", [s], {"min": 0.0, "max": float(size - 1)})
        return s

    coords = [unnormalize(0, w), unnormalize(1, h), unnormalize(2, d)]  # x (W), y (H), z (D)
    sizes = [w, h, d]
    strides = [1, w, w * h]
    table = _reshape(cx, cx.emit("copy", [cx.emit("permute", [x], {"perm": [0, 2, 3, 4, 1]})]), [n * d * h * w, c])
    base = cx.const((np.arange(n) * (d * h * w)).reshape(n, 1, 1, 1), DType.int64)

    def corner(pts: list[Value], weight: Value | None) -> Value:
        ok = None
        flat = base
        for p, size, st in zip(pts, sizes, strides):
            inside = cx.emit("and", [cx.emit("ge", [p, k(0.0)]), cx.emit("le", [p, k(size - 1.0)])])
            ok = inside if ok is None else cx.emit("and", [ok, inside])
            q = cx.cast(cx.emit("clamp", [p], {"min": 0.0, "max": float(size - 1)}), DType.int64)
            flat = cx.emit("add", [flat, q if st == 1 else cx.emit("mul", [q, cx.const(st, DType.int64)])])
        rows = cx.emit("gather", [table, flat], {"axis": 0})  # [N, Do, Ho, Wo, C]
        wt = cx.emit("where", [ok, weight if weight is not None else k(1.0), k(0.0)])
        return cx.emit("mul", [rows, _reshape(cx, wt, out_sp + [1])])

    if mode == "nearest":
        out = corner([cx.emit("round", [p]) for p in coords], None)  # half to even, as nearbyint
    else:
        lo = [cx.emit("floor", [p]) for p in coords]
        frac = [cx.emit("sub", [p, f]) for p, f in zip(coords, lo)]
        out = None
        for bits in range(8):
            pts, wt = [], None
            for a in range(3):
                hi = (bits >> a) & 1
                pts.append(cx.emit("add", [lo[a], k(1.0)]) if hi else lo[a])
                wa = frac[a] if hi else cx.emit("sub", [k(1.0), frac[a]])
                wt = wa if wt is None else cx.emit("mul", [wt, wa])
            term = corner(pts, wt)
            out = term if out is None else cx.emit("add", [out, term])
    assert out is not None
    return cx.emit("permute", [out], {"perm": [0, 4, 1, 2, 3]})


# -- lgamma ------------------------------------------------------------------------------------------------------
LGAMMA_SHIFT = 8  # Stirling's series is used at x + 8 and above, where its truncation error is ~1e-9


def _lgamma_positive(cx: Cx, x: Value) -> Value:
    """log|Gamma(x)| for x >= 0.5: Stirling's series at y = x + 8 (x below 8) minus
    log|x (x + 1) ... (x + 7)| (the recurrence Gamma(x + 1) = x Gamma(x)), or at x itself."""
    dt = x.dtype

    def k(v: float) -> Value:
        return cx.const(v, dt)

    def stirling(y: Value) -> Value:
        inv = cx.emit("reciprocal", [y])
        inv2 = cx.emit("mul", [inv, inv])
        series = cx.emit("mul", [inv, cx.emit("add", [k(1 / 12), cx.emit("mul", [inv2, cx.emit(
            "add", [k(-1 / 360), cx.emit("mul", [inv2, k(1 / 1260)])])])])])
        main = cx.emit("sub", [cx.emit("mul", [cx.emit("sub", [y, k(0.5)]), cx.emit("log", [y])]), y])
        return cx.emit("add", [cx.emit("add", [main, k(0.5 * math.log(2 * math.pi))]), series])

    small = cx.emit("lt", [x, k(float(LGAMMA_SHIFT))])
    prod = x
    for i in range(1, LGAMMA_SHIFT):
        prod = cx.emit("mul", [prod, cx.emit("add", [x, k(float(i))])])
    shifted = cx.emit("sub", [stirling(cx.emit("add", [x, k(float(LGAMMA_SHIFT))])), cx.emit("log", [prod])])
    direct = stirling(cx.emit("where", [small, k(float(LGAMMA_SHIFT)), x]))  # (the where keeps log finite)
    return cx.emit("where", [small, shifted, direct])


@aten("lgamma.default")
def _lgamma(cx: Cx, x: Value) -> Value | None:
    """log|Gamma(x)|: the positive branch for x >= 0.5, the reflection log(pi / |sin(pi x)|) -
    lgamma(1 - x) below (inf at the poles 0, -1, -2, ...), inf at +inf, NaN for NaN."""
    dt = cx.out_dtype()
    if dt != DType.fp32:
        return None
    x = cx.cast(x, dt)

    def k(v: float) -> Value:
        return cx.const(v, dt)

    big = cx.emit("ge", [x, k(0.5)])
    pos = _lgamma_positive(cx, cx.emit("where", [big, x, k(1.0)]))
    neg_arg = cx.emit("where", [big, k(0.0), x])
    refl = cx.emit("sub", [cx.emit("log", [cx.emit("div", [k(math.pi), cx.emit("abs", [
        cx.emit("sin", [cx.emit("mul", [neg_arg, k(math.pi)])])])])]),
        _lgamma_positive(cx, cx.emit("sub", [k(1.0), neg_arg]))])
    y = cx.emit("where", [big, pos, refl])
    pole = cx.emit("and", [cx.emit("le", [x, k(0.0)]), cx.emit("eq", [x, cx.emit("floor", [x])])])
    y = cx.emit("where", [cx.emit("or", [pole, cx.emit("isinf", [x])]), k(math.inf), y])
    return cx.emit("where", [cx.emit("isnan", [x]), x, y])
