"""The ATen lowerings of frontends/torch/aten_scatter.py and aten_misc.py on the chip (strict=True:
no host fallback) against PyTorch eager, one small module per op."""
from __future__ import annotations

from typing import Callable

import torch

import vnpu


class Fn(torch.nn.Module):
    def __init__(self, fn: Callable) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *xs: torch.Tensor):
        return self.fn(*xs)


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)] if isinstance(out, (tuple, list)) else []


def check(fn: Callable, *inputs: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    m = Fn(fn)
    ref = _flat(m(*inputs))
    got = _flat(vnpu.compile(m, inputs, strict=True)(*inputs))
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g.to(r.dtype), r, rtol=rtol, atol=atol, equal_nan=True)


def g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


X = torch.randn(6, 5, generator=g(0))
IDX = torch.tensor([[0, 1, 5, 3, 1], [2, 2, 0, 4, 1]])  # repeats within columns: reductions combine them
SRC = torch.randn(2, 5, generator=g(1))


# -- scatter family ------------------------------------------------------------------------------------
def test_scatter_writes_and_value():
    idx = torch.tensor([[0, 1, 5, 3, 4], [2, 3, 0, 4, 1]])
    check(lambda x, i, s, j, r: (x.scatter(0, i, s), x.scatter(1, j, 2.5), x.scatter_add(0, r, s)), X, idx, SRC,
          torch.tensor([[4], [0], [1], [2], [3], [0]]), IDX)


def test_scatter_reduce():
    check(lambda x, i, s: [x.scatter_reduce(0, i, s, reduce, include_self=inc)
                           for reduce in ("sum", "prod", "mean", "amax", "amin") for inc in (True, False)], X, IDX, SRC)


def test_index_put_two_runtime_indices_and_accumulate():
    rows, cols = torch.tensor([0, 5, -1]), torch.tensor([1, 4, 2])
    vals = torch.randn(3, generator=g(2))

    def put(x, r, c, v):
        x = x.clone()
        x[r, c] = v
        return x
    check(put, X, rows, cols, vals)
    check(lambda x, r, c, v: torch.index_put(x, (r, c), v, accumulate=True), X, torch.tensor([0, 0, 3]), cols, vals)


def test_index_put_bool_mask_and_non_adjacent_dims():
    check(lambda x, m: x.masked_fill(m, 0.0) + torch.index_put(x, (m,), torch.tensor(3.0)), X, X > 0.3)
    x3 = torch.randn(4, 3, 5, generator=g(3))
    v = torch.randn(2, 3, generator=g(4))

    def put_outer(x, a, b, v):  # dims 0 and 2 indexed: the indexed result is [2, 3], B first
        x = x.clone()
        x[a, :, b] = v
        return x
    check(put_outer, x3, torch.tensor([1, 3]), torch.tensor([0, 4]), v)


def test_index_add_and_index_reduce():
    idx = torch.tensor([0, 2, 2, 5])
    src = torch.randn(4, 5, generator=g(5))
    check(lambda x, i, s: [x.index_add(0, i, s, alpha=2.0)] + [x.index_reduce(0, i, s, reduce, include_self=False)
                                                                for reduce in ("prod", "mean", "amax", "amin")],
          X, idx, src)
    check(lambda x, i, s: x.index_reduce(1, i, s, "amax"), X, torch.tensor([4, 0, 4]),
          torch.randn(6, 3, generator=g(6)))


def test_put_and_masked_scatter():
    check(lambda x, i, j, s: (x.put(i, s), x.put(j, s, accumulate=True)), X, torch.tensor([0, 7, -1, 12]),
          torch.tensor([0, 7, 7, 12]), torch.randn(4, generator=g(7)))
    check(lambda x, m, r, s: (x.masked_scatter(m, s), x.masked_scatter(r, s)), X, X > 0,
          torch.tensor([True, False, True, False, False]), torch.randn(6, 5, generator=g(9)))


# -- views ---------------------------------------------------------------------------------------------------
def test_view_copies_and_as_strided():
    x = torch.randn(4, 6, generator=g(10))
    check(lambda x, s, d: ([torch.view_copy(x, [3, -1]) * 2] + [t * 2 for t in torch.unbind_copy(x, 1)]
                           + [x.as_strided((3, 3), (2, 5), 1) * 2, torch.as_strided_copy(x, (2, 2, 2), (1, 6, 3), 4)]
                           + [torch.as_strided_scatter(x, s, (2, 3), (6, 2), 1), torch.diagonal_scatter(x, d, 1),
                           torch.diagonal_scatter(x, d, -2, 1, 0)]),
          x, torch.randn(2, 3, generator=g(11)), torch.randn(4, generator=g(12)))


# -- scans, bucketing, math ----------------------------------------------------------------------------------
def test_cummax_cummin_ties_and_nan():
    x = torch.tensor([[1.0, 3.0, 3.0, 2.0, 5.0, 5.0, 0.0], [2.0, float("nan"), 1.0, 4.0, -1.0, -1.0, 7.0]])
    check(lambda x: [f(x, dim) for f in (torch.cummax, torch.cummin) for dim in (0, 1)], x)


def test_searchsorted_bucketize_isin():
    seq = torch.tensor([-1.0, 0.0, 0.0, 0.5, 2.0])
    v = torch.tensor([[-2.0, 0.0, 0.3], [0.5, 2.0, 9.0]])
    rows = torch.sort(torch.randn(2, 6, generator=g(14)), dim=1).values
    check(lambda s, v, r: [torch.searchsorted(s, v, right=right) for right in (False, True)]
          + [torch.bucketize(v, s, right=right, out_int32=True) for right in (False, True)]
          + [torch.searchsorted(r, v)], seq, v, rows)
    check(lambda a, b: torch.isin(a, b), torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([4.0, 0.0, 2.0]))


def test_frexp_and_nextafter():
    x = torch.tensor([0.0, 1.0, -1.0, 0.5, 3.0, -7.25, 1e-3, 1e30, 2.0 ** -130, float("inf"), float("nan")])
    b = torch.tensor([1.0, 2.0, -5.0, 0.0, 3.0, 0.0, 1.0, -1.0, 1.0, 0.0, 1.0])
    check(lambda a, b: (*torch.frexp(a), torch.nextafter(a, b)), x, b, rtol=0, atol=0)


# -- normalization -------------------------------------------------------------------------------------------
def test_batch_norm_training_and_running_stats():
    x = torch.randn(4, 3, 5, generator=g(15))
    w, b = torch.randn(3, generator=g(16)), torch.randn(3, generator=g(17))
    rm, rv = torch.randn(3, generator=g(18)), torch.rand(3, generator=g(19)) + 0.5

    def both(x, w, b, rm, rv):
        saved = torch.native_batch_norm(x, w, b, rm.clone(), rv.clone(), True, 0.3, 1e-5)
        rm2, rv2 = rm.clone(), rv.clone()
        y = torch.nn.functional.batch_norm(x, rm2, rv2, w, b, training=True, momentum=0.2)
        return (*saved, y, rm2, rv2, torch.nn.functional.batch_norm(x, rm, rv, w, b, training=False))
    check(both, x, w, b, rm, rv, rtol=1e-4, atol=1e-5)


def test_native_group_norm_statistics():
    x = torch.randn(2, 6, 4, generator=g(20))
    check(lambda x: torch.native_group_norm(x, None, None, 2, 6, 4, 3, 1e-5), x, rtol=1e-4, atol=1e-5)


# -- statistics, distances, histograms ------------------------------------------------------------------------
def test_mode_and_nanmedian():
    x = torch.tensor([[1.0, 2.0, 2.0, 3.0, 3.0], [5.0, 5.0, 1.0, 1.0, 0.0], [4.0, 4.0, 4.0, 1.0, 9.0]])
    n = float("nan")
    y = torch.tensor([[n, 1.0, 2.0, 3.0], [4.0, n, n, 0.0], [n, n, n, n], [0.5, -1.0, 7.0, 2.0]])
    # (an all-NaN row's index is whatever std::nth_element leaves first, so only its value is compared)
    check(lambda x, y: (*torch.mode(x, 1), *torch.mode(x, 0, keepdim=True), *torch.nanmedian(y[[0, 1, 3]], 1),
                        torch.nanmedian(y, 1).values, torch.nanmedian(y[:2]), torch.nanmedian(y[2])), x, y)


def test_cdist_pdist():
    a, b = torch.randn(2, 4, 3, generator=g(21)), torch.randn(2, 5, 3, generator=g(22))
    ps = (0.0, 1.0, 2.0, 3.0, float("inf"))
    check(lambda a, b: [torch.cdist(a, b, p) for p in ps] + [torch.nn.functional.pdist(a[0], p) for p in ps], a, b,
          rtol=1e-4, atol=1e-5)


def test_bilinear():
    x1, x2 = torch.randn(3, 4, generator=g(23)), torch.randn(3, 5, generator=g(24))
    w, b = torch.randn(2, 4, 5, generator=g(25)), torch.randn(2, generator=g(26))
    check(lambda x1, x2, w, b: torch.nn.functional.bilinear(x1, x2, w, b), x1, x2, w, b, rtol=1e-4, atol=1e-5)


def test_histogram():
    x = torch.tensor([1.0, 2.0, 2.0, 5.0, 3.5, 4.9])
    wt = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.5, 1.5])
    check(lambda x, w, e: (*torch.histogram(x, 3), *torch.histogram(x, 4, range=(0.0, 4.0), weight=w, density=True),
                           *torch.histogram(x, e)), x, wt, torch.tensor([0.0, 2.0, 3.0, 5.0]))
    pts = torch.randn(7, 2, generator=g(28))
    check(lambda p, w, e: (*torch.histogramdd(p, [3, 2]), torch.histogramdd(p, [2, 2], range=[-1.0, 1.0, 0.0, 2.0],
                                                                           weight=w, density=True).hist,
                           torch.histogramdd(p, [e, e]).hist), pts, torch.rand(7, generator=g(29)),
          torch.tensor([-3.0, 0.0, 0.5, 3.0]))


def test_segment_reduce():
    d = torch.randn(6, 2, generator=g(27))
    check(lambda d, l, o: [f(r) for r in ("sum", "mean", "max", "min", "prod") for f in (
        lambda r: torch.segment_reduce(d, r, lengths=l), lambda r: torch.segment_reduce(d, r, lengths=l, initial=1.5),
        lambda r: torch.segment_reduce(d, r, offsets=o, initial=0.5))],
        d, torch.tensor([2, 0, 3, 1]), torch.tensor([0, 2, 2, 5, 6]))


def test_nonzero_static():
    x = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 3.0]])
    check(lambda x: (torch.nonzero_static(x, size=2), torch.nonzero_static(x, size=5, fill_value=-7)), x)


def test_max_pool_backward():
    x, gy = torch.randn(2, 3, 5, 6, generator=g(30)), torch.randn(2, 3, 3, 4, generator=g(31))

    def grad(x, gy):  # overlapping windows (stride 2, kernel 3, ceil mode): repeated argmax targets add up
        _, idx = torch.ops.aten.max_pool2d_with_indices(x, [3, 3], [2, 2], [1, 1], [1, 1], True)
        return torch.ops.aten.max_pool2d_with_indices_backward(gy, x, [3, 3], [2, 2], [1, 1], [1, 1], True, idx)
    check(grad, x, gy)


def test_adaptive_max_pool_indices():
    x2, x3 = torch.randn(2, 3, 7, 5, generator=g(32)), torch.randn(1, 2, 5, 4, 6, generator=g(33))
    check(lambda a, b: (*torch.nn.functional.adaptive_max_pool2d(a, (3, 2), return_indices=True),
                        *torch.nn.functional.adaptive_max_pool1d(a[0], 4, return_indices=True),
                        *torch.nn.functional.adaptive_max_pool3d(b, (2, 3, 4), return_indices=True)), x2, x3)


def test_linear_cross_entropy_chunked():
    x, w, b = torch.randn(6, 4, generator=g(34)), torch.randn(5, 4, generator=g(35)), torch.randn(5, generator=g(36))
    t = torch.tensor([0, 4, 2, 4, 1, 3])
    cw = torch.rand(5, generator=g(37)) + 0.5
    opts = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=2, chunking_method="auto")
    lce = torch.nn.functional.linear_cross_entropy
    check(lambda x, w, t, b, cw: (lce(x, w, t, linear_bias=b, weight=cw, ignore_index=4, options=opts),
                                  lce(x, w, t, reduction="sum", label_smoothing=0.2, options=opts),
                                  lce(x, w, t, reduction="none", ignore_index=2, options=opts)),
          x, w, t, b, cw, rtol=1e-4, atol=1e-5)


def test_embedding_bag_runtime_offsets():
    w = torch.randn(10, 3, generator=g(38))
    idx, offs = torch.tensor([1, 2, 4, 5, 4, 3, 2, 9]), torch.tensor([0, 3, 3, 6])
    psw = torch.rand(8, generator=g(39))
    eb = torch.nn.functional.embedding_bag
    check(lambda w, i, o, p: (eb(i, w, o, mode="sum", per_sample_weights=p), eb(i, w, o, mode="mean", padding_idx=4),
                              eb(i, w, o, mode="max"), eb(i, w, torch.cat([o, o.new_tensor([8])]), mode="sum",
                                                          include_last_offset=True)), w, idx, offs, psw)


def test_conv_transpose_runtime_weight():
    x1, w1 = torch.randn(2, 4, 7, generator=g(40)), torch.randn(4, 3, 3, generator=g(41))
    x2, w2 = torch.randn(1, 4, 5, 4, generator=g(42)), torch.randn(4, 2, 3, 2, generator=g(43))
    ct = torch.nn.functional
    check(lambda x1, w1, x2, w2: (ct.conv_transpose1d(x1, w1, stride=2, padding=1, output_padding=1),
                                  ct.conv_transpose2d(x2, w2, stride=(2, 1), groups=2, dilation=(1, 2)),
                                  ct.conv_transpose2d(x2, w2[:, :, :2], stride=2)),
          x1, w1, x2, w2, rtol=1e-4, atol=1e-5)


def test_grid_sampler_3d():
    x, grid = torch.randn(2, 3, 4, 5, 6, generator=g(44)), torch.rand(2, 3, 2, 4, 3, generator=g(45)) * 2.4 - 1.2
    gs = torch.nn.functional.grid_sample
    check(lambda x, gr: [gs(x, gr, mode=m, padding_mode=p, align_corners=a) for m in ("bilinear", "nearest")
                         for p, a in (("zeros", False), ("border", True))], x, grid, rtol=1e-4, atol=1e-5)


def test_lgamma_and_mvlgamma():
    x = torch.cat([torch.linspace(-7.7, 30.0, 97), torch.tensor([0.5, 1.0, 2.0, 1e4, 0.0, -3.0, -float("inf"),
                                                             float("inf"), float("nan")])])
    pos = torch.rand(4, 5, generator=g(46)) * 6 + 2.1
    check(lambda x, p: (torch.lgamma(x), torch.mvlgamma(p, 1), torch.mvlgamma(p, 3), torch.special.multigammaln(p, 5)),
          x, pos, rtol=1e-4, atol=1e-4)


def test_index_tensor_after_leading_slices() -> None:
    # x[:, i, j] (DLRM's pairwise-interaction pick with triu_indices) ran index.Tensor on the host
    z = torch.randn(3, 5, 5)
    iu = torch.triu_indices(5, 5, 1)
    check(lambda z: z[:, iu[0], iu[1]], z)
    check(lambda z: z[:, torch.tensor([[0, -1], [2, 1]]), torch.tensor([1, 0])], z)


def test_complex_intermediates_fall_back_on_real_views():
    """torch.fft.irfft / hfft2 compute through complex64 tensors, which have no IR dtype: those
    nodes run on the host as real views [..., 2] between the chip's real tensors. Strict mode
    names them; the results match eager."""
    import pytest

    from vnpu.frontends.errors import FallbackWarning, UnsupportedOpError

    x = torch.randn(4, 6, generator=g(7))
    fns = [lambda x: torch.fft.irfft(x) * 2 + 1, lambda x: torch.fft.hfft2(x).relu(),
           lambda x: torch.view_as_real(torch.fft.rfft(x)).sum(-1), lambda x: torch.fft.fft(x).abs() - x]
    for fn in fns:
        m = Fn(fn)
        with pytest.warns(FallbackWarning):
            cm = vnpu.compile(m, (x,))
        torch.testing.assert_close(cm(x), m(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(UnsupportedOpError, match="_fft_c2r"):
        vnpu.compile(Fn(fns[0]), (x,), strict=True)
