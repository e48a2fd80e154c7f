"""Reduce, softmax, layer_norm and gather kernels against PyTorch eager.

Randomized (seeded) shapes with sizes that are not multiples of 64, batch > 1 and
non-contiguous inputs; a chip with a tiny scratchpad forces the chunked paths (reductions
split over R with accumulation, two-pass softmax and layer norm).
"""
from __future__ import annotations

import warnings

import pytest
import torch

import vnpu
from vnpu.chip import chip_from_dict, load_chip
from vnpu.isa.instructions import DmaGather, VecOp
from vnpu.isa.program import KernelLaunch

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)


def _small_chip(scratchpad: int = 16384, cores: int = 4):
    d = load_chip("vnpu-v1").model_dump()
    d["core"]["scratchpad"]["bytes"] = scratchpad
    d["cores"] = cores
    d["name"] = "vnpu-v1-small-sram"
    return chip_from_dict(d)


SMALL = _small_chip()


def _close(y: torch.Tensor, ref: torch.Tensor, rel: float = 1e-4, floor: float = 1e-3) -> None:
    if ref.dim() == 0 and y.numel() == 1:  # vnpu.dtypes.numpy_to_torch returns 0-d results as shape (1,)
        y = y.reshape(())
    assert tuple(y.shape) == tuple(ref.shape), (tuple(y.shape), tuple(ref.shape))
    err = (y.float() - ref.float()).abs().max().item() if ref.numel() else 0.0
    lim = rel * max(ref.abs().max().item() if ref.numel() else 0.0, floor)
    assert err <= lim, f"max err {err} > {lim}"


def _cos(y: torch.Tensor, ref: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(y.float().flatten(), ref.float().flatten(), dim=0).item()


class Fn(torch.nn.Module):
    def __init__(self, fn, *mods: torch.nn.Module):
        super().__init__()
        self.fn = fn
        self.mods = torch.nn.ModuleList(mods)

    def forward(self, *xs):
        return self.fn(*xs, *self.mods)


def _run(model: torch.nn.Module, inputs: tuple, chip="vnpu-v1", dtype="fp32"):
    cm = vnpu.compile(model.eval(), inputs, chip=chip, dtype=dtype, strict=True)
    with torch.no_grad():
        ref = model(*inputs)
    return cm, cm(*inputs), ref


def _launches(cm, kind: str) -> list[KernelLaunch]:
    return [l for l in cm.program.launches if isinstance(l, KernelLaunch) and l.kind == kind]


# -- reduce --------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_reduce_random(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    rank = int(torch.randint(2, 5, (1,), generator=g))
    shape = [int(v) for v in torch.randint(1, 40 if rank > 2 else 300, (rank,), generator=g)]
    shape[0] = max(shape[0], 2)  # batch > 1
    kind = ["sum", "mean", "amax", "amin"][seed % 4]
    n_ax = int(torch.randint(1, rank + 1, (1,), generator=g))
    axes = sorted(int(a) for a in torch.randperm(rank, generator=g)[:n_ax])
    keepdim = bool(seed % 2)
    permute = seed % 3 == 0  # a non-contiguous input
    perm = [int(p) for p in torch.randperm(rank, generator=g)]
    x = torch.randn(*shape, generator=g)

    def f(x):
        if permute:
            x = x.permute(*perm)
        return getattr(torch, kind)(x, dim=axes, keepdim=keepdim)

    cm, y, ref = _run(Fn(f), (x,))
    _close(y, ref)
    assert _launches(cm, "reduce")


@pytest.mark.parametrize("chip", ["vnpu-v1", SMALL], ids=["v1", "small-sram"])
def test_reduce_layouts_and_chunking(chip) -> None:
    torch.manual_seed(1)
    x = torch.randn(3, 37, 1000) + 0.5
    fns = [
        lambda x: x.sum(-1),  # rows innermost
        lambda x: x.mean(1, keepdim=True),  # strided reduced dim: [P, R, Q] tiles
        lambda x: x.amax(0),
        lambda x: x.permute(2, 0, 1).amin((1, 2)),  # non-contiguous, reduced dims not adjacent in memory
        lambda x: x.sum(),
        lambda x: x.mean((0, 2)),
    ]
    cm, ys, refs = _run(Fn(lambda x: tuple(f(x) for f in fns)), (x,), chip=chip)
    for y, ref in zip(ys, refs):
        _close(y, ref)
    if chip is SMALL:  # rows longer than the scratchpad: R chunks accumulated on one core
        assert any(sum(1 for ins in cs.queues["vector"] if ins.op in ("add", "maximum", "minimum")) > 2
                   for l in _launches(cm, "reduce") for cs in l.cores)


def test_global_average_pool_and_var() -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 70, 7, 9)
    model = Fn(lambda x: (torch.nn.functional.adaptive_avg_pool2d(x, 1), x.var(dim=(2, 3)), x.std(1, keepdim=True)))
    cm, ys, refs = _run(model, (x,))
    for y, ref in zip(ys, refs):
        _close(y, ref)


def test_reduce_launch_accounting() -> None:
    x = torch.randn(4, 200, 130)
    cm, y, ref = _run(Fn(lambda x: x.mean(-1)), (x,))
    _close(y, ref)
    (l,) = _launches(cm, "reduce")
    assert l.min_hbm_bytes == x.numel() * 4 + ref.numel() * 4
    assert l.flops == x.numel() + ref.numel()  # one add per element, one scale per row
    assert sum(1 for cs in l.cores if len(cs)) == 32  # all cores get rows
    prof = cm.profile()
    assert prof.seconds > 0 and prof.kernels[0].hbm_bytes >= l.min_hbm_bytes


# -- softmax -------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_softmax_random(seed: int) -> None:
    g = torch.Generator().manual_seed(100 + seed)
    b, c, l = (int(v) for v in torch.randint(2, 130, (3,), generator=g))
    x = torch.randn(b, c, l, generator=g) * 4
    model = Fn(lambda x: (torch.softmax(x, -1), torch.softmax(x, 1), torch.log_softmax(x, -1),
                          torch.log_softmax(x.permute(0, 2, 1), 1), torch.softmax(x.transpose(0, 2), -1)))
    cm, ys, refs = _run(model, (x,))
    for y, ref in zip(ys, refs):
        _close(y, ref)


def test_softmax_chunked_rows() -> None:
    torch.manual_seed(3)
    x = torch.randn(3, 5000) * 6
    x[1, 4000:] += 30  # the running max grows in a late chunk
    model = Fn(lambda x: (torch.softmax(x, -1), torch.log_softmax(x, -1), torch.softmax(x.t(), 0)))
    cm, ys, refs = _run(model, (x,), chip=SMALL)
    for y, ref in zip(ys, refs):
        _close(y, ref)


def test_attention_scores_softmax() -> None:
    torch.manual_seed(4)
    q, k = torch.randn(2, 12, 77, 64), torch.randn(2, 12, 77, 64)
    model = Fn(lambda q, k: torch.softmax(q @ k.transpose(-1, -2) * 0.125, dim=-1))
    cm, y, ref = _run(model, (q, k))
    _close(y, ref)
    (l,) = _launches(cm, "norm")
    assert sum(1 for cs in l.cores if len(cs)) == 32


# -- layer norm ----------------------------------------------------------------------------
@pytest.mark.parametrize("chip", ["vnpu-v1", SMALL], ids=["v1", "small-sram"])
def test_layer_norm(chip) -> None:
    """With and without affine parameters, one and two normalized dims, a permuted input;
    on the small chip the 200- and 910-element rows take the two-pass chunked path."""
    torch.manual_seed(5)
    lns = []
    for affine, bias in [(True, True), (False, False), (True, False)]:
        group = [torch.nn.LayerNorm(200, elementwise_affine=affine, bias=bias),
                 torch.nn.LayerNorm((13, 70), elementwise_affine=affine, bias=bias, eps=1e-3),
                 torch.nn.LayerNorm(13, elementwise_affine=affine, bias=bias)]
        for ln in group:
            for p in ln.parameters():
                torch.nn.init.normal_(p)
        lns += group
    x = torch.randn(3, 13, 70) * 3 + 1
    y2 = torch.randn(2, 45, 200)

    def f(x, y, *lns):
        outs = []
        for a, b, c in zip(lns[0::3], lns[1::3], lns[2::3]):
            outs += [a(y), b(x), c(x.permute(0, 2, 1))]
        return tuple(outs)

    cm, ys, refs = _run(Fn(f, *lns), (x, y2), chip=chip)
    for y, ref in zip(ys, refs):
        _close(y, ref)
    if chip == "vnpu-v1":  # parameters are loaded once per core, ahead of the rows
        firsts = [cs.queues["dma_in"][0].dst.shape for l in _launches(cm, "norm") for cs in l.cores if len(cs)]
        assert (200,) in firsts


# -- gather ----------------------------------------------------------------------------------
@pytest.mark.parametrize("idx_dtype", [torch.int64, torch.int32])
def test_embedding_batched(idx_dtype) -> None:
    torch.manual_seed(6)
    emb = torch.nn.Embedding(1000, 72)
    ids = torch.randint(0, 1000, (3, 45), dtype=idx_dtype)
    cm, y, ref = _run(Fn(lambda i, e: e(i), emb), (ids,))
    _close(y, ref, rel=0)
    (l,) = _launches(cm, "gather")
    gathers = [ins for cs in l.cores for ins in cs.queues["dma_in"] if isinstance(ins, DmaGather)]
    assert sum(g.index.numel for g in gathers) == ids.numel()
    assert not any(cs.queues["vector"] for cs in l.cores)  # the store reads the gathered tile


def test_index_select_dim1_and_noncontiguous() -> None:
    torch.manual_seed(7)
    x = torch.randn(4, 50, 33)
    i = torch.randint(0, 50, (21,))
    j = torch.randint(0, 33, (5, 3))
    model = Fn(lambda x, i, j: (torch.index_select(x, 1, i), torch.index_select(x.permute(2, 0, 1), 2, i),
                                x[:, :, j.flatten()] + 1, torch.nn.functional.embedding(j, x[0].t())))
    cm, ys, refs = _run(model, (x, i, j))
    for y, ref in zip(ys, refs):
        _close(y, ref, rel=0)


def test_gather_out_of_range_raises() -> None:
    emb = torch.nn.Embedding(50, 8)
    ids = torch.randint(0, 50, (2, 7))
    cm = vnpu.compile(Fn(lambda i, e: e(i), emb).eval(), (ids,))
    bad = ids.clone()
    bad[1, 3] = 50
    with pytest.raises(IndexError):
        cm(bad)


def test_gather_small_scratchpad() -> None:
    torch.manual_seed(8)
    emb = torch.nn.Embedding(300, 700)  # 2800-byte rows: a few per 16 KiB tile
    ids = torch.randint(0, 300, (2, 33))
    cm, y, ref = _run(Fn(lambda i, e: e(i), emb), (ids,), chip=SMALL)
    _close(y, ref, rel=0)


# -- bf16 ------------------------------------------------------------------------------------
def test_bf16_block() -> None:
    torch.manual_seed(9)
    emb = torch.nn.Embedding(500, 96)
    ln = torch.nn.LayerNorm(96)
    torch.nn.init.normal_(ln.weight)
    torch.nn.init.normal_(ln.bias)

    def f(ids, e, n):
        h = n(e(ids))
        att = torch.softmax(h @ h.transpose(-1, -2) * 0.1, dim=-1)
        return att @ h, torch.log_softmax(h, 1), h.mean(1), h.amax(-1)

    ids = torch.randint(0, 500, (2, 70))
    cm, ys, refs = _run(Fn(f, emb, ln), (ids,), dtype="bf16")
    for y, ref in zip(ys, refs):
        assert _cos(y, ref) >= 0.999
    assert {"gather", "norm", "reduce"} <= {l.kind for l in cm.program.launches}


def test_vector_work_is_emitted() -> None:
    """The numbers come from executed instructions: the norm kernels issue reductions."""
    x = torch.randn(2, 30, 50)
    cm, y, ref = _run(Fn(lambda x, n: torch.softmax(n(x), -1), torch.nn.LayerNorm(50)), (x,))
    _close(y, ref)
    ops = {ins.op for l in _launches(cm, "norm") for cs in l.cores for ins in cs.queues["vector"] if isinstance(ins, VecOp)}
    assert {"reduce_sum", "reduce_max", "rsqrt", "exp"} <= ops
