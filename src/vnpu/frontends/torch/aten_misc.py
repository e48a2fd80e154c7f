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
    y = cx.emit("where", [cx.emit("eq", [a_, b]), cx.emit("expand", [b], {"shape": list(out)}) if b.shape != tuple(out) else b, y])
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
