"""conv2d / pool2d / pad / copy / concat kernels: vnpu.compile vs PyTorch eager.

Shapes are drawn from seeded generators; they include sizes that are not multiples of the
64-wide array, batch > 1, stride, padding, dilation, groups and depthwise convolution,
fused epilogues, strided (permuted) inputs and bf16.
"""
from __future__ import annotations

import dataclasses
import random
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import vnpu
from vnpu.isa.instructions import DmaLoad, MatMul, VecOp
from vnpu.isa.program import KernelLaunch

warnings.filterwarnings("ignore")


def _compile_and_compare(model: nn.Module, inputs: tuple, dtype: str = "fp32"):
    model = model.eval()
    with torch.no_grad():
        ref = model(*inputs)
    cm = vnpu.compile(model, inputs, dtype=dtype)
    out = cm(*inputs)
    refs = ref if isinstance(ref, tuple) else (ref,)
    outs = out if isinstance(out, tuple) else (out,)
    for o, r in zip(outs, refs):
        assert o.shape == r.shape, (o.shape, r.shape)
        o, r = o.float(), r.float()
        if dtype == "fp32":
            err = (o - r).abs().max().item()
            bound = 1e-4 * r.abs().max().item() + 1e-5
            assert err <= bound, f"max|err| {err:.3g} > {bound:.3g}"
        else:
            cos = F.cosine_similarity(o.flatten(), r.flatten(), dim=0).item()
            assert cos >= 0.999, cos
    return cm


def _launches(cm, kind: str | None = None) -> list[KernelLaunch]:
    return [l for l in cm.program.launches if isinstance(l, KernelLaunch) and (kind is None or l.kind == kind)]


def _host_free(cm) -> None:
    assert not cm.has_host_ops, cm.info.fallback_ops


class ConvBnAct(nn.Module):
    def __init__(self, cin, cout, k, stride=1, padding=0, dilation=1, groups=1, bias=True, bn=True, act="relu",
                 residual=False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding, dilation, groups, bias=bias)
        self.bn = nn.BatchNorm2d(cout) if bn else nn.Identity()
        if bn:  # non-trivial running statistics
            with torch.no_grad():
                self.bn.running_mean.uniform_(-0.5, 0.5)
                self.bn.running_var.uniform_(0.5, 2.0)
                self.bn.weight.uniform_(0.5, 1.5)
                self.bn.bias.uniform_(-0.5, 0.5)
        self.act = {"relu": nn.ReLU(), "relu6": nn.ReLU6(), None: nn.Identity()}[act]
        self.residual = residual

    def forward(self, x, *res):
        y = self.bn(self.conv(x))
        if self.residual:
            y = y + res[0]
        return self.act(y)


def _conv_cases(seed: int, n: int) -> list[dict]:
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        k = rng.choice([1, 3, 5])
        groups = rng.choice([1, 1, 2, 3])
        cases.append(dict(
            batch=rng.choice([1, 2, 3]), cin=groups * rng.randint(1, 40), cout=groups * rng.randint(1, 50),
            hw=(rng.randint(5, 23), rng.randint(5, 23)), k=k, stride=rng.choice([1, 2]),
            padding=rng.choice([0, k // 2, k // 2 + 1]), dilation=rng.choice([1, 1, 2]), groups=groups,
            bias=rng.random() < 0.5, bn=rng.random() < 0.6, act=rng.choice(["relu", "relu6", None])))
    return cases


def _case_id(c: dict) -> str:
    return "b{batch}c{cin}o{cout}k{k}s{stride}p{padding}d{dilation}g{groups}".format(**c)


@pytest.mark.parametrize("case", _conv_cases(1234, 6), ids=_case_id)
def test_conv_random(case):
    torch.manual_seed(0)
    h, w = case["hw"]
    k, d = case["k"], case["dilation"]
    h, w = max(h, d * (k - 1) + 1), max(w, d * (k - 1) + 1)
    m = ConvBnAct(case["cin"], case["cout"], k, case["stride"], case["padding"], d, case["groups"], case["bias"],
                  case["bn"], case["act"])
    cm = _compile_and_compare(m, (torch.randn(case["batch"], case["cin"], h, w),))
    _host_free(cm)
    assert _launches(cm, "conv")


def test_conv_large_uses_all_cores_and_fits_scratchpad():
    torch.manual_seed(1)
    m = ConvBnAct(70, 130, 3, padding=1, act="relu")
    cm = _compile_and_compare(m, (torch.randn(2, 70, 37, 41),))
    (conv,) = _launches(cm, "conv")
    assert sum(1 for c in conv.cores if len(c)) > cm.chip.cores // 2
    assert any(isinstance(i, MatMul) for c in conv.cores for i in c.queues["matrix"])
    assert conv.flops == 2 * 2 * 130 * 37 * 41 * 70 * 9


def test_conv_residual_block_and_strided_input():
    """Bottleneck-style block: 1x1 -> 3x3 s2 -> 1x1 + downsampled residual; NHWC input permuted to NCHW."""
    torch.manual_seed(2)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = ConvBnAct(24, 20, 1)
            self.b = ConvBnAct(20, 20, 3, stride=2, padding=1)
            self.down = ConvBnAct(24, 72, 1, stride=2, act=None, bias=False)
            self.c = ConvBnAct(20, 72, 1, residual=True)

        def forward(self, x_nhwc):
            x = x_nhwc.permute(0, 3, 1, 2)
            return self.c(self.b(self.a(x)), self.down(x))

    cm = _compile_and_compare(Block(), (torch.randn(2, 15, 17, 24),))
    _host_free(cm)
    assert len(_launches(cm, "conv")) == 4


def test_conv_dynamic_weight_oihw():
    """A weight that is a runtime input stays OIHW and is read through a strided view."""
    torch.manual_seed(3)

    class M(nn.Module):
        def forward(self, x, w, wd):
            y = F.conv2d(x, w, stride=(1, 2), padding=(2, 1), dilation=(2, 1))
            return y, F.conv2d(x, wd, padding=1, groups=6)

    cm = _compile_and_compare(M(), (torch.randn(2, 6, 14, 19), torch.randn(67, 6, 3, 3), torch.randn(12, 1, 3, 3)))
    _host_free(cm)


@pytest.mark.parametrize("mult,act,stride,batch", [(1, "relu6", 1, 2), (1, "relu6", 2, 1), (2, None, 1, 1)])
def test_depthwise_on_vector_engine(mult, act, stride, batch):
    torch.manual_seed(4)
    c = 37
    m = ConvBnAct(c, c * mult, 3, stride=stride, padding=1, groups=c, bias=False, act=act)
    cm = _compile_and_compare(m, (torch.randn(batch, c, 29, 23),))
    (conv,) = _launches(cm, "conv")
    ins = [i for core in conv.cores for q in core.queues.values() for i in q]
    assert not any(isinstance(i, MatMul) for i in ins)
    assert any(isinstance(i, VecOp) and i.op == "reduce_sum" for i in ins)
    assert sum(1 for core in conv.cores if len(core)) > 1


@pytest.mark.parametrize("kind,k,s,p,shape", [
    ("max", 3, 2, 1, (2, 19, 33, 30)), ("max", 2, 2, 0, (1, 70, 16, 13)),
    ("avg", 3, 1, 1, (2, 5, 17, 19)), ("avg", (2, 3), (2, 1), 0, (3, 7, 11, 9))])
def test_pool(kind, k, s, p, shape):
    torch.manual_seed(5)
    m = nn.MaxPool2d(k, s, p) if kind == "max" else nn.AvgPool2d(k, s, p)
    cm = _compile_and_compare(m, (torch.randn(*shape) - (1.5 if kind == "max" else 0.0),))
    _host_free(cm)
    assert _launches(cm, "pool")


def test_pool_strided_input():
    torch.manual_seed(6)

    class M(nn.Module):
        def forward(self, x):
            return F.max_pool2d(x.transpose(2, 3), 3, 2, 1), F.avg_pool2d(x[:, :, ::2], 2)

    cm = _compile_and_compare(M(), (torch.randn(2, 6, 20, 15),))
    _host_free(cm)


def test_pad_copy_concat():
    torch.manual_seed(7)

    class M(nn.Module):
        def forward(self, x, y):
            a = F.pad(x, (1, 2, 0, 3), value=-1.5)  # 4-D, last two dims
            b = F.pad(y, (3, 0, 2, 1, 1, 1))  # 3-D, every dim
            c = torch.cat([x, x * 2, x + 1], dim=1)
            d = torch.cat([y, y.transpose(1, 2).reshape(y.shape) * 3], dim=0)
            e = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # a copy materializes the permuted view
            return a, b, c, d, e

    cm = _compile_and_compare(M(), (torch.randn(2, 5, 7, 9), torch.randn(4, 33, 33)))
    _host_free(cm)
    assert {l.ops[0] for l in _launches(cm, "copy")} >= {"pad", "concat", "copy"}
    for l in _launches(cm, "copy"):  # data movement: DMA plus, for pad, vector fills only
        for core in l.cores:
            assert not core.queues["matrix"]
            assert all(i.op == "fill" for i in core.queues["vector"])


def test_pad_concat_large_spread_over_cores():
    torch.manual_seed(8)

    class M(nn.Module):
        def forward(self, x, y):
            return torch.cat([F.pad(x, (5, 6, 7, 8)), y], dim=2)

    cm = _compile_and_compare(M(), (torch.randn(3, 40, 100, 117), torch.randn(3, 40, 9, 128)))
    for l in _launches(cm, "copy"):
        assert sum(1 for c in l.cores if len(c)) > cm.chip.cores // 2


def test_bf16_small_cnn():
    torch.manual_seed(9)
    m = nn.Sequential(
        ConvBnAct(3, 32, 3, stride=2, padding=1), nn.MaxPool2d(3, 2, 1),
        ConvBnAct(32, 32, 3, padding=1, groups=32, bias=False, act="relu6"), ConvBnAct(32, 48, 1),
        ConvBnAct(48, 40, 3, padding=2, dilation=2, groups=2), nn.AvgPool2d(2))
    cm = _compile_and_compare(m, (torch.randn(2, 3, 45, 51),), dtype="bf16")
    _host_free(cm)


def _run(cm, x):
    return cm.run_numpy([x.numpy()])[0]


@pytest.mark.parametrize("which", ["im2col", "weights"])
def test_tampering_a_dma_load_changes_the_output(which):
    torch.manual_seed(10)
    m = ConvBnAct(16, 24, 3, padding=1).eval()
    x = torch.randn(1, 16, 12, 12)
    cm = vnpu.compile(m, (x,))
    good = _run(cm, x)
    with torch.no_grad():
        assert (torch.from_numpy(good) - m(x)).abs().max() < 1e-4
    (conv,) = _launches(cm, "conv")
    q = conv.cores[0].queues["dma_in"]
    # constants (the [groups, K, O/g] weights, bias, BatchNorm) live below weight_bytes;
    # the im2col window view reads the padded activation
    idx, ins = next((i, l) for i, l in enumerate(q) if isinstance(l, DmaLoad)
                    and (l.src.offset < cm.program.weight_bytes) == (which == "weights"))
    shift = ins.src.dtype.itemsize * (1 if which == "weights" else 12)
    q[idx] = dataclasses.replace(ins, src=dataclasses.replace(ins.src, offset=ins.src.offset + shift))
    bad = _run(cm, x)
    assert abs(bad - good).max() > 1e-3


def test_tampering_a_store_or_fill_changes_pad_output():
    torch.manual_seed(11)

    class M(nn.Module):
        def forward(self, x):
            return F.pad(x, (2, 2, 1, 1), value=3.0)

    x = torch.randn(2, 3, 8, 8)
    cm = vnpu.compile(M(), (x,))
    good = _run(cm, x)
    assert (torch.from_numpy(good) - M()(x)).abs().max() == 0
    (pad,) = _launches(cm)
    fills = [(c, i) for c in pad.cores for i, ins in enumerate(c.queues["vector"]) if ins.op == "fill"]
    core, i = fills[0]
    core.queues["vector"][i] = dataclasses.replace(core.queues["vector"][i], attrs=(("value", 7.0),))
    bad = _run(cm, x)
    assert (bad == 7.0).any() and abs(bad - good).max() > 1
