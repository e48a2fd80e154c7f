"""Scatters with run-time indices (scatter / scatter_add / scatter_reduce, index_put, index_reduce,
put, masked_scatter) lowered onto compare, where, gather, reduce and matmul.

Every form is brought to one shape: a data matrix [R, C] whose row at[p] is combined with
update row upd[p] ([P] int64 rows, [P, C] updates). A one-hot [P, R] compare of the row ids
against 0..R-1 then gives each reduction without anything data-dependent:
  - plain writes: the last writer of each row (max of the writers' positions) gathered from upd,
    as PyTorch's CPU loop leaves it when an index repeats;
  - sums and means: one matmul of the [R, P] one-hot with upd (and the one-hot's row counts);
  - prod / amax / amin: upd spread over a [P, R, C] candidate tensor (1 / -inf / +inf where a
    position misses the row) reduced over P.
The candidate and one-hot tensors grow with P * R, so large scatters stay on the host.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from vnpu.dtypes import DType
from vnpu.frontends.torch.aten_ops import _dim
from vnpu.frontends.torch.importer import ImportContext as Cx, aten
from vnpu.ir.graph import Value
from vnpu.ir.ops import broadcast_shapes

SCATTER_MAX_CELLS = 1 << 20  # P * R * C of the largest one-hot / candidate tensor lowered

REDUCE_KINDS = ("none", "sum", "prod", "mean", "amax", "amin")


def _reshape(cx: Cx, x: Value, shape: list[int] | tuple[int, ...]) -> Value:
    if tuple(shape) == x.shape:
        return x
    if x.is_const:
        return cx.g.add_const(x.name, np.asarray(x.data).reshape(shape), x.dtype)
    return cx.emit("reshape", [x], {"shape": [int(s) for s in shape]})


def _expand(cx: Cx, x: Value, shape: tuple[int, ...]) -> Value:
    if x.shape == tuple(shape):
        return x
    if x.type.rank < len(shape):
        x = _reshape(cx, x, (1,) * (len(shape) - x.type.rank) + x.shape)
    return cx.emit("expand", [x], {"shape": list(shape)})


def _permute(cx: Cx, x: Value, perm: list[int]) -> Value:
    return x if perm == list(range(x.type.rank)) else cx.emit("permute", [x], {"perm": perm})


def _inverse(perm: list[int]) -> list[int]:
    back = [0] * len(perm)
    for i, p in enumerate(perm):
        back[p] = i
    return back


def wrap_index(cx: Cx, idx: Value, n: int) -> Value:
    """idx as int64 with negative entries counted from the end (n + i)."""
    idx = cx.cast(idx, DType.int64)
    if idx.is_const:
        a = np.asarray(idx.data, np.int64)
        return cx.const(np.where(a < 0, a + n, a), DType.int64) if (a < 0).any() else idx
    wrapped = cx.emit("add", [idx, cx.const(n, DType.int64)])
    return cx.emit("where", [cx.emit("lt", [idx, cx.const(0, DType.int64)]), wrapped, idx])


def scatter_rows(cx: Cx, data: Value, at: Value, upd: Value, reduce: str, include_self: bool = True) -> Value | None:
    """data [R, C] with row at[p] combined with upd[p] ([P] int64 in 0..R-1, [P, C] in data's
    dtype) by `reduce` (none / sum / prod / mean / amax / amin); include_self=False leaves the
    old value out of the rows the scatter hits. None when too large or not float (reductions)."""
    r, c = data.shape
    p = at.shape[0]
    dt = data.dtype
    if p == 0:
        return data
    if p * r * max(c, 1) > SCATTER_MAX_CELLS or (reduce != "none" and not dt.is_float):
        return None
    rows = cx.const(np.arange(r, dtype=np.int64).reshape(1, r), DType.int64)
    onehot = cx.emit("eq", [_reshape(cx, at, [p, 1]), rows])  # [P, R]: position p writes row r
    oh = cx.cast(onehot, DType.fp32)
    hits = cx.emit("reduce", [oh], {"kind": "sum", "axes": [0], "keepdim": False})  # writers per row
    hit = _reshape(cx, cx.emit("gt", [hits, cx.const(0.0, DType.fp32)]), [r, 1])
    if reduce == "none":
        # the last writer of each row: the largest position p whose one-hot is set (fp32 is exact here)
        pos = cx.const(np.arange(p, dtype=np.float32).reshape(p, 1), DType.fp32)
        last = cx.emit("reduce", [cx.emit("mul", [oh, pos])], {"kind": "max", "axes": [0], "keepdim": False})
        picked = cx.emit("gather", [upd, cx.cast(last, DType.int64)], {"axis": 0})  # [R, C]
        return cx.emit("where", [hit, picked, data])
    if reduce in ("sum", "mean"):
        oh_t = cx.cast(cx.emit("eq", [cx.const(np.arange(r, dtype=np.int64).reshape(r, 1), DType.int64),
                                      _reshape(cx, at, [1, p])]), dt)  # [R, P]
        placed = cx.emit("matmul", [oh_t, upd])  # [R, C]: the sum of each row's updates
        if reduce == "sum":
            return cx.emit("add", [data, placed]) if include_self else cx.emit("where", [hit, placed, data])
        count = cx.cast(_reshape(cx, hits, [r, 1]), dt)
        if include_self:
            return cx.emit("div", [cx.emit("add", [data, placed]), cx.emit("add", [count, cx.const(1.0, dt)])])
        mean = cx.emit("div", [placed, cx.emit("maximum", [count, cx.const(1.0, dt)])])
        return cx.emit("where", [hit, mean, data])
    if reduce in ("prod", "amax", "amin"):
        fill = {"prod": 1.0, "amax": -math.inf, "amin": math.inf}[reduce]
        cand = cx.emit("where", [_reshape(cx, onehot, [p, r, 1]), _reshape(cx, upd, [p, 1, c]), cx.const(fill, dt)])
        kind = {"prod": "prod", "amax": "max", "amin": "min"}[reduce]
        best = cx.emit("reduce", [cand], {"kind": kind, "axes": [0], "keepdim": False})  # [R, C]
        if include_self:
            comb = cx.emit({"prod": "mul", "amax": "maximum", "amin": "minimum"}[reduce], [data, best])
            return cx.emit("where", [hit, comb, data])
        return cx.emit("where", [hit, best, data])
    return None


# -- scatter / scatter_add / scatter_reduce: out[..., index[p], ...] (dim d) op= src[p] ---------------
def _scatter_along(cx: Cx, x: Value, dim: int, index: Value, src: Any, reduce: str,
                   include_self: bool = True) -> Value | None:
    """x.scatter_*(dim, index, src): each position p of index (which may be smaller than x and
    src) targets x's flat element index[p] * stride(dim) + the offset of p's other coordinates."""
    if x.type.rank == 0:
        x1 = _reshape(cx, x, [1])
        idx1 = _reshape(cx, index, [1]) if index.type.rank == 0 else index
        src1 = _reshape(cx, src, [1]) if isinstance(src, Value) and src.type.rank == 0 else src
        y = _scatter_along(cx, x1, 0, idx1, src1, reduce, include_self)
        return None if y is None else _reshape(cx, y, [])
    r = x.type.rank
    d = _dim(dim, r)
    if index.type.rank != r or index.dtype.is_float:
        return None
    if index.type.numel == 0:
        return x
    strides = [math.prod(x.shape[i + 1:]) for i in range(r)]
    grid = np.indices(index.shape, dtype=np.int64)
    base = sum((grid[i] * strides[i] for i in range(r) if i != d), np.zeros(index.shape, np.int64))
    idx = wrap_index(cx, index, x.shape[d])
    if idx.is_const:
        at = cx.const(np.asarray(idx.data) * strides[d] + base, DType.int64)
    else:
        at = cx.emit("add", [cx.emit("mul", [idx, cx.const(strides[d], DType.int64)]), cx.const(base, DType.int64)])
    if isinstance(src, Value):
        if src.type.rank != r:
            return None
        upd = cx.cast(src, x.dtype)
        for i, n in enumerate(index.shape):  # the leading index.shape block of src
            if upd.shape[i] != n:
                upd = cx.emit("slice", [upd], {"axis": i, "start": 0, "end": n, "step": 1})
    else:
        upd = cx.const(np.full(index.shape, src), x.dtype)
    n = index.type.numel
    y = scatter_rows(cx, _reshape(cx, x, [x.type.numel, 1]), _reshape(cx, at, [n]), _reshape(cx, upd, [n, 1]),
                     reduce, include_self)
    return None if y is None else _reshape(cx, y, x.shape)


_LEGACY_REDUCE = {"add": "sum", "multiply": "prod"}  # scatter(..., reduce=) spells them so


@aten("scatter.src", "scatter.value")
def _scatter(cx: Cx, x: Value, dim: int, index: Value, src: Any) -> Value | None:
    return _scatter_along(cx, x, dim, index, src, "none")


@aten("scatter.reduce", "scatter.value_reduce")
def _scatter_legacy_reduce(cx: Cx, x: Value, dim: int, index: Value, src: Any, *, reduce: str) -> Value | None:
    if reduce not in _LEGACY_REDUCE:
        return None
    return _scatter_along(cx, x, dim, index, src, _LEGACY_REDUCE[reduce])


@aten("scatter_add.default")
def _scatter_add(cx: Cx, x: Value, dim: int, index: Value, src: Value) -> Value | None:
    return _scatter_along(cx, x, dim, index, src, "sum")


@aten("scatter_reduce.two")
def _scatter_reduce(cx: Cx, x: Value, dim: int, index: Value, src: Value, reduce: str, *,
                    include_self: bool = True) -> Value | None:
    if reduce not in REDUCE_KINDS[1:]:
        return None
    return _scatter_along(cx, x, dim, index, src, reduce, bool(include_self))


# -- index_put: x[i0, i1, ...] = values (or +=) with run-time index tensors ----------------------------
def index_put_scatter(cx: Cx, x: Value, indices: list, values: Value, accumulate: bool) -> Value | None:
    """x[indices] = values (accumulate: +=) for integer index tensors on any dims (broadcast
    together to B), or one bool mask with values broadcast over the selected elements. The
    indexed dims move first and merge into rows R (linear index of the index tuple), the other
    dims into columns C; values arrive in indexing's result layout (B at the first indexed dim
    when the indexed dims are adjacent, first otherwise) and are brought to [P = |B|, C]."""
    r = x.type.rank
    indices = list(indices) + [None] * (r - len(indices))
    live = [(a, v) for a, v in enumerate(indices) if v is not None]
    if not live or not all(isinstance(v, Value) for _, v in live) or not isinstance(values, Value):
        return None
    values = cx.cast(values, x.dtype)
    if any(v.dtype == DType.bool for _, v in live):
        return _masked_put(cx, x, indices, values, accumulate)
    if any(v.dtype.is_float for _, v in live):
        return None
    axes = [a for a, _ in live]
    others = [a for a in range(r) if a not in axes]
    bshape = broadcast_shapes(*(v.shape for _, v in live))
    adjacent = axes == list(range(axes[0], axes[0] + len(axes)))
    if adjacent:
        result = x.shape[:axes[0]] + bshape + x.shape[axes[-1] + 1:]
    else:
        result = bshape + tuple(x.shape[a] for a in others)
    if broadcast_shapes(values.shape, result) != result:
        return None
    nb = len(bshape)
    # values as [B..., other dims...]
    v = _expand(cx, values, result)
    if adjacent and axes[0] > 0:
        a0 = axes[0]
        v = _permute(cx, v, list(range(a0, a0 + nb)) + list(range(a0)) + list(range(a0 + nb, len(result))))
    p = math.prod(bshape)
    c = math.prod(x.shape[a] for a in others)
    v = _reshape(cx, _copy_if_view(cx, v), [p, c])
    # rows: the linear index over the indexed dims
    rows = None
    for j, (a, ix) in enumerate(live):
        stride = math.prod(x.shape[b] for b in axes[j + 1:])
        w = wrap_index(cx, ix, x.shape[a])
        w = _reshape(cx, w, (1,) * (nb - w.type.rank) + w.shape) if w.type.rank < nb else w
        term = w if stride == 1 else cx.emit("mul", [w, cx.const(stride, DType.int64)])
        rows = term if rows is None else cx.emit("add", [rows, term])
    rows = _copy_if_view(cx, _expand(cx, rows, bshape))
    perm = axes + others
    data = _reshape(cx, _copy_if_view(cx, _permute(cx, x, perm)), [math.prod(x.shape[a] for a in axes), c])
    y = scatter_rows(cx, data, _reshape(cx, rows, [p]), v, "sum" if accumulate else "none")
    if y is None:
        return None
    y = _reshape(cx, y, [x.shape[a] for a in perm])
    return _permute(cx, y, _inverse(perm))


def _masked_put(cx: Cx, x: Value, indices: list, values: Value, accumulate: bool) -> Value | None:
    """x[mask] = values with one bool mask on dims a0..a0+k-1 and values broadcast over every
    selected element (one element, or the shape of the dims after the mask): a where."""
    live = [(a, v) for a, v in enumerate(indices) if v is not None]
    if len(live) != 1:
        return None
    a0, mask = live[0]
    k = mask.type.rank
    tail = x.shape[a0 + k:]
    if x.shape[a0:a0 + k] != mask.shape:
        return None
    if values.type.numel != 1 and broadcast_shapes(values.shape, tail) != tail:
        return None
    m = _reshape(cx, mask, (1,) * a0 + mask.shape + (1,) * len(tail))
    v = _reshape(cx, values, []) if values.type.numel == 1 else values
    if accumulate:
        return cx.emit("add", [x, cx.emit("where", [m, v, cx.const(0, x.dtype)])])
    return cx.emit("where", [m, v, x])


@aten("index_reduce.default")
def _index_reduce(cx: Cx, x: Value, dim: int, index: Value, source: Value, reduce: str, *,
                  include_self: bool = True) -> Value | None:
    """x.index_reduce(dim, index, source, reduce): dim moved first, x's slices along it as rows."""
    if reduce not in ("prod", "mean", "amax", "amin") or index.type.rank > 1:
        return None
    if x.type.rank == 0:
        y = _index_reduce(cx, _reshape(cx, x, [1]), 0, _reshape(cx, index, [index.type.numel]),
                          _reshape(cx, source, [source.type.numel]), reduce, include_self=include_self)
        return None if y is None else _reshape(cx, y, [])
    d = _dim(dim, x.type.rank)
    perm = [d] + [a for a in range(x.type.rank) if a != d]
    n = x.shape[d]
    c = x.type.numel // max(n, 1)
    src = source if source.type.rank == x.type.rank else _reshape(cx, source, [index.type.numel] + list(x.shape[:d])
                                                                           + list(x.shape[d + 1:]))
    p = index.type.numel
    data = _reshape(cx, _copy_if_view(cx, _permute(cx, x, perm)), [n, c])
    upd = _reshape(cx, _copy_if_view(cx, _permute(cx, cx.cast(src, x.dtype), perm)), [p, c])
    y = scatter_rows(cx, data, _reshape(cx, wrap_index(cx, index, n), [p]), upd, reduce, bool(include_self))
    if y is None:
        return None
    return _permute(cx, _reshape(cx, y, [x.shape[a] for a in perm]), _inverse(perm))


def _copy_if_view(cx: Cx, v: Value) -> Value:
    """A permuted / expanded view materialized before a reshape merges its dims."""
    return cx.emit("copy", [v]) if v.producer is not None and v.producer.op in ("permute", "expand") else v


@aten("put.default")
def _put(cx: Cx, x: Value, index: Value, source: Value, accumulate: bool = False) -> Value | None:
    """x.put(index, source): flat positions of x (negative from the end) written or accumulated."""
    n = x.type.numel
    p = index.type.numel
    if p == 0:
        return x
    at = _reshape(cx, wrap_index(cx, index, n), [p])
    upd = _reshape(cx, cx.cast(source, x.dtype), [p, 1])
    y = scatter_rows(cx, _reshape(cx, x, [n, 1]), at, upd, "sum" if accumulate else "none")
    return None if y is None else _reshape(cx, y, x.shape)


@aten("masked_scatter.default")
def _masked_scatter(cx: Cx, x: Value, mask: Value, source: Value) -> Value | None:
    """x.masked_scatter(mask, source): the k-th selected element (row-major) takes source's
    k-th element. k is the running count of the mask (a log-step integer scan), then a gather
    from the flattened source and a where; nothing data-dependent in the shapes."""
    out = broadcast_shapes(x.shape, mask.shape)
    n = math.prod(out)
    if n == 0 or source.type.numel == 0:
        return None
    xb = _expand(cx, x, out)
    m = _reshape(cx, _copy_if_view(cx, _expand(cx, cx.cast(mask, DType.bool), out)), [n])
    counts = inclusive_count(cx, cx.cast(m, DType.int64))
    k = cx.emit("maximum", [cx.emit("sub", [counts, cx.const(1, DType.int64)]), cx.const(0, DType.int64)])
    k = cx.emit("minimum", [k, cx.const(source.type.numel - 1, DType.int64)])
    src = _reshape(cx, cx.cast(source, x.dtype), [source.type.numel])
    picked = _reshape(cx, cx.emit("gather", [src, k], {"axis": 0}), out)
    return cx.emit("where", [_reshape(cx, m, out), picked, xb])


def inclusive_count(cx: Cx, v: Value) -> Value:
    """The inclusive prefix sum of a 1-D int64 vector in ceil(log2 n) shifted adds (exact)."""
    n = v.shape[0]
    step = 1
    while step < n:
        head = cx.emit("slice", [v], {"axis": 0, "start": 0, "end": n - step, "step": 1})
        v = cx.emit("add", [v, cx.emit("concat", [cx.const(np.zeros(step, np.int64), DType.int64), head], {"axis": 0})])
        step *= 2
    return v


@aten("max_pool2d_with_indices_backward.default", "max_pool3d_with_indices_backward.default")
def _max_pool_backward(cx: Cx, grad: Value, x: Value, kernel: list, stride: list, padding: list, dilation: list,
                       ceil_mode: bool, indices: Value) -> Value | None:
    """The gradient of a max pool: each output's gradient added at its argmax (indices are flat
    within each (n, c) plane): a scatter-add into zeros shaped like the input."""
    if not x.dtype.is_float or x.type.rank < 3:
        return None
    name = cx.node.target._schema.name  # type: ignore[union-attr]
    spatial_dims = 3 if name.endswith("3d_with_indices_backward") else 2
    lead = x.type.rank - spatial_dims  # [N, C] or unbatched [C]
    planes, plane = math.prod(x.shape[:lead]), math.prod(x.shape[lead:])
    per_plane = grad.type.numel // max(planes, 1)
    base = cx.const((np.arange(planes, dtype=np.int64) * plane).reshape(planes, 1), DType.int64)
    at = cx.emit("add", [_reshape(cx, cx.cast(indices, DType.int64), [planes, per_plane]), base])
    zeros = cx.const(np.zeros((x.type.numel, 1)), x.dtype)
    y = scatter_rows(cx, zeros, _reshape(cx, at, [grad.type.numel]), _reshape(cx, cx.cast(grad, x.dtype),
                                                                            [grad.type.numel, 1]), "sum")
    return None if y is None else _reshape(cx, y, x.shape)
