"""torch.compile(backend="vnpu") on graphs with symbolic shapes and on real Hugging Face models.

Dynamo hands the backend graphs with SymInt inputs, sym_size and SymInt arithmetic
(dynamic=True, mark_dynamic, or automatically after a shape change). vnpu specializes each
call on its concrete signature and caches one chip program per signature (LRU, bounded by
options["cache_size"]). Every check compares with PyTorch eager on the same inputs.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from hf_tiny import Recorder, assert_close_fp32, build, check_generate, fallback_ops, main_output
from vnpu.api import RecompileWarning
from vnpu.frontends.errors import FallbackWarning, UnsupportedOpError
from vnpu.frontends.torch import DataDependentValueError


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


_close = assert_close_fp32


# -- symbolic shapes ---------------------------------------------------------------------------
def test_mark_dynamic_one_graph_one_program_per_shape():
    torch.manual_seed(0)
    w = torch.randn(8, 16)

    def f(x):
        b = x.shape[0]
        y = (x @ w).reshape(b, 2, 8)
        return y.softmax(-1).sum(1) * (b + 1)

    rec = Recorder()
    cf = torch.compile(f, backend=rec)
    for b in (3, 5, 7, 5):
        x = torch.randn(b, 8)
        torch._dynamo.mark_dynamic(x, 0)
        _close(cf(x), f(x))
    assert len(rec.graphs) == 1 and rec.symbolic(0)  # one Dynamo graph with a symbolic batch
    assert rec.runs[0].vnpu_stats["builds"] == 3  # one program per concrete batch; 5 again is a hit
    assert len(rec.runs[0].vnpu_cache) == 3


class SizeArithmetic(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(16, 16)
        self.ln = torch.nn.LayerNorm(16)

    def forward(self, x):
        b, t, c = x.shape
        h = self.fc(x).view(b * t, c)  # SymInt product in a view
        h = self.ln(h) * (1.0 / math.sqrt(c))  # math on a SymInt
        h = h.view(b, t, c)[:, : t // 2 + 1]  # floordiv in a slice bound
        n = torch.sym_max(t, 4)
        if t > 5:  # a comparison on a size: a guard
            h = h + 1.0
        return h * n, b * t, x.numel() - 1


def test_dynamic_true_size_arithmetic_and_symint_outputs():
    torch.manual_seed(0)
    m = SizeArithmetic().eval()
    rec = Recorder()
    cm = torch.compile(m, backend=rec, dynamic=True)
    with torch.no_grad():
        for shape in ((2, 3, 16), (1, 7, 16), (3, 9, 16)):
            x = torch.randn(*shape)
            out, ref = cm(x), m(x)
            _close(out[0], ref[0])
            assert out[1:] == ref[1:] and all(type(o) is int for o in out[1:]), (out[1:], ref[1:])
    assert rec.symbolic(0)
    # the graph itself returns SymInts (not computed by Dynamo outside it)
    gm = rec.graphs[0][0]
    outs = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    assert any(isinstance(o.meta.get("example_value"), torch.SymInt) for o in outs if isinstance(o, torch.fx.Node))


def test_graph_returning_sizes_strides_and_an_input_used_for_its_shape_only():
    def f(x, y):
        return x.sum(0) + y.shape[0], x.shape[0] * 2, x.stride(0), y.numel() // 3

    cf = torch.compile(f, backend="vnpu", dynamic=True)
    for shape in ((3, 4), (6, 2)):
        x, y = torch.randn(*shape), torch.randn(shape[0] + 1, 3)
        out, ref = cf(x, y), f(x, y)
        _close(out[0], ref[0])
        assert tuple(out[1:]) == tuple(ref[1:]), (out[1:], ref[1:])


def test_float_scalar_input_is_part_of_the_signature():
    """A Python float argument under dynamic=True reaches the graph as a symbolic scalar; each
    value gets its own specialized program, never a stale one."""
    def f(x, alpha):
        return x * alpha + alpha

    cf = torch.compile(f, backend="vnpu", dynamic=True)
    x = torch.randn(4, 5)
    for alpha in (0.5, 2.0, 0.5, -3.25):
        _close(cf(x, alpha), f(x, alpha))


def test_cache_bound_evicts_least_recently_used_and_warns_once():
    torch.manual_seed(0)
    w = torch.randn(6, 6)

    def f(x):
        return torch.tanh(x @ w) * x.shape[0]

    rec = Recorder(cache_size=2)
    cf = torch.compile(f, backend=rec)

    def call(b: int) -> None:
        x = torch.randn(b, 6)
        torch._dynamo.mark_dynamic(x, 0)
        _close(cf(x), f(x))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call(2)
        call(3)
        call(2)  # a hit: 2 becomes the most recently used
        assert not [w_ for w_ in caught if issubclass(w_.category, RecompileWarning)]
        call(4)  # evicts 3, the least recently used
        run = rec.runs[0]
        assert run.vnpu_stats["builds"] == 3
        assert len(run.vnpu_cache) == 2
        call(2)  # still cached (3 went)
        assert run.vnpu_stats["builds"] == 3
        call(3)  # rebuilt
        call(5)
        call(6)
    assert len(rec.graphs) == 1
    assert run.vnpu_stats["builds"] == 6 and len(run.vnpu_cache) == 2
    recompiles = [w_ for w_ in caught if issubclass(w_.category, RecompileWarning)]
    assert len(recompiles) == 1, [str(w_.message) for w_ in recompiles]
    assert "cache_size=2" in str(recompiles[0].message)


def test_input_mutated_in_place_is_written_back():
    """An input the graph updates in place (a cache, an accumulator) is updated for the caller
    too, with the chip's result; in-place ops run on the chip (functionalized)."""
    def f(x, buf):
        buf.mul_(0.5)
        buf.add_(torch.relu(x))
        return buf * 2

    x = torch.randn(4, 3)
    buf = torch.randn(4, 3)
    ref_buf = buf.clone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = torch.compile(f, backend="vnpu")(x, buf)
    ref = f(x, ref_buf)
    _close(out, ref)
    _close(buf, ref_buf)
    assert fallback_ops(caught) == set()


def test_number_computed_from_tensor_data_is_one_clear_error():
    """Under capture_scalar_outputs, .item() of a computed tensor stays in the graph: a chip
    program cannot produce it, and the error says so (not an AttributeError on a SymFloat)."""
    def f(x):
        return x * x.sum().item()

    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        with pytest.raises(DataDependentValueError, match="capture_scalar_outputs"):
            torch.compile(f, backend="vnpu")(torch.randn(3))


def test_bad_cache_size_is_one_clear_error():
    with pytest.raises(Exception, match=r"cache_size.*must be an int >= 1"):
        torch.compile(lambda x: x + 1, backend="vnpu", options={"cache_size": 0})(torch.randn(2))


def test_changed_weights_are_picked_up():
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 3).eval()
    cm = torch.compile(m, backend="vnpu")
    x = torch.randn(2, 4)
    with torch.no_grad():
        _close(cm(x), m(x))
        m.weight.mul_(-2.0)
        _close(cm(x), m(x))


def test_strict_raises_unsupported_op_error_listing_the_ops():
    def f(x):
        return torch.special.bessel_j0(x) + torch.special.bessel_y0(x.abs() + 0.5)

    x = torch.randn(3, 4)
    with pytest.raises(UnsupportedOpError) as info:
        torch.compile(f, backend="vnpu", options={"strict": True})(x)
    assert set(info.value.ops) == {"special_bessel_j0.default", "special_bessel_y0.default"}, info.value.ops
    assert "special_bessel_j0.default" in str(info.value) and "special_bessel_y0.default" in str(info.value)
    # non-strict: the same graph runs, those ops on the host, and matches eager
    torch._dynamo.reset()
    with pytest.warns(FallbackWarning, match="bessel_y0"):
        out = torch.compile(f, backend="vnpu")(x)
    _close(out, f(x))


def test_index_with_tensors_on_leading_dims_runs_on_chip():
    """The advanced indexing HF models do: a padding mask picked at broadcast (batch, key)
    indices, the pooled token per row (CLIP), negative indices."""
    def f(x, m, a, b):
        return x[a, b], m[a.view(2, 1, 1, 1), b.view(1, 1, 1, 2)].float(), x[a - 2, b]

    x, m = torch.randn(2, 3, 5), torch.rand(2, 3) > 0.5
    a, b = torch.tensor([1, 0]), torch.tensor([2, 0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = torch.compile(f, backend="vnpu")(x, m, a, b)
    for o, r in zip(out, f(x, m, a, b)):
        assert torch.equal(o, r)
    assert fallback_ops(caught) == set()


# -- Hugging Face models (the rest: tests/test_torch_compile_hf_models.py) ----------------------
def test_hf_gpt2_matches_eager_on_chip_only():
    """Two calls with different shapes: the second meets Dynamo's automatic-dynamic graph (SymInt
    sizes). Every op runs on the chip."""
    model, calls = build("gpt2")
    rec = Recorder()
    cm = torch.compile(model, backend=rec)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for kw in calls:
            _close(main_output(cm(**kw)), main_output(model(**kw)))
    assert rec.symbolic(-1)
    assert fallback_ops(caught) == set()


@pytest.mark.parametrize("name,use_cache,batch", [("gpt2", True, 2), ("mistral", False, 2)])
def test_hf_generate_greedy_matches_eager_tokens(name, use_cache, batch):
    check_generate(name, use_cache, batch)
