"""Matmul and fused elementwise kernels against PyTorch eager, randomized shapes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vnpu


def _close(y: torch.Tensor, ref: torch.Tensor, rel: float = 1e-4) -> None:
    err = (y.float() - ref.float()).abs().max().item()
    assert err <= rel * max(ref.abs().max().item(), 1e-3), f"max err {err}, max ref {ref.abs().max().item()}"


def _cos(y: torch.Tensor, ref: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(y.float().flatten(), ref.float().flatten(), dim=0).item()


class Fn(torch.nn.Module):
    def __init__(self, fn, *params: torch.Tensor):
        super().__init__()
        self.fn = fn
        self.ps = torch.nn.ParameterList([torch.nn.Parameter(p, requires_grad=False) for p in params])

    def forward(self, *xs):
        return self.fn(*xs, *self.ps)


@pytest.mark.parametrize("seed", range(6))
def test_linear_random_shapes(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    b = int(torch.randint(1, 4, (1,), generator=g))
    m, k, n = (int(v) for v in torch.randint(1, 300, (3,), generator=g))
    lin = torch.nn.Linear(k, n)
    torch.nn.init.normal_(lin.weight, generator=g)
    x = torch.randn(b, m, k, generator=g)
    cm = vnpu.compile(lin.eval(), (x,))
    _close(cm(x), lin(x))


@pytest.mark.parametrize("shape", [(1, 5, 7, 3), (2, 3, 65, 129), (4, 2, 1, 64)])
def test_batched_matmul_broadcast_and_transposed(shape: tuple[int, ...]) -> None:
    b, h, m, k = shape
    n = 33
    x = torch.randn(b, h, m, k)
    w = torch.randn(h, n, k)  # used transposed: a non-contiguous operand
    model = Fn(lambda a, w: torch.matmul(a, w.transpose(-1, -2)), w)
    cm = vnpu.compile(model, (x,))
    _close(cm(x), model(x))


def test_matmul_with_two_runtime_operands_noncontiguous() -> None:
    a = torch.randn(3, 40, 70)
    bt = torch.randn(3, 50, 70)
    model = Fn(lambda a, bt: a @ bt.permute(0, 2, 1))
    cm = vnpu.compile(model, (a, bt))
    _close(cm(a, bt), model(a, bt))


def test_epilogue_residual_and_activation_fused() -> None:
    lin = torch.nn.Linear(96, 96)
    model = Fn(lambda x, w, bias: torch.relu(torch.nn.functional.linear(x, w, bias) + x) * 0.5, lin.weight.data, lin.bias.data)
    x = torch.randn(2, 17, 96)
    cm = vnpu.compile(model, (x,))
    _close(cm(x), model(x))
    # the bias add, residual, relu and scale run in the matmul's epilogue: one kernel
    kinds = [l.kind for l in cm.program.launches]
    assert kinds == ["matmul"], kinds


@pytest.mark.parametrize("fn", [
    lambda x, y: torch.nn.functional.gelu(x * y + 1.0),
    lambda x, y: torch.sigmoid(x) * torch.tanh(y) - torch.exp(-x.abs()),
    lambda x, y: torch.where(x > y, x, y / 2) + torch.sqrt(y.abs() + 1),
    lambda x, y: torch.nn.functional.silu(x) + torch.rsqrt(y * y + 1e-3),
    lambda x, y: torch.clamp(x, -0.5, 0.7) + torch.nn.functional.hardtanh(y, 0.0, 6.0),
])
def test_elementwise_chains_broadcast(fn) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 37, 129, generator=g)
    y = torch.randn(5, 1, 129, generator=g)
    model = Fn(fn)
    cm = vnpu.compile(model, (x, y))
    _close(cm(x, y), model(x, y))


def test_elementwise_noncontiguous_input() -> None:
    x = torch.randn(64, 3, 70)
    model = Fn(lambda x: torch.relu(x.permute(2, 0, 1)) + 1)
    cm = vnpu.compile(model, (x,))
    _close(cm(x), model(x))


def test_bf16_linear_cosine() -> None:
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(200, 300), torch.nn.GELU(), torch.nn.Linear(300, 100)).eval()
    x = torch.randn(4, 200)
    cm = vnpu.compile(mlp, (x,), dtype="bf16")
    y = cm(x)
    assert y.dtype == torch.float32
    assert _cos(y, mlp(x)) >= 0.999
    # bf16 storage really rounds: results differ from fp32 but only at bf16 precision
    err = (y - mlp(x)).abs().max().item()
    assert 0 < err < 0.05 * mlp(x).abs().max().item()


def test_outputs_come_from_simulated_memory() -> None:
    """Zeroing the weights in simulated HBM changes the result: nothing bypasses the chip."""
    lin = torch.nn.Linear(64, 64).eval()
    x = torch.randn(2, 64)
    cm = vnpu.compile(lin, (x,))
    _close(cm(x), lin(x))
    dev = cm._dev()
    for ref, data in cm.program.constants:
        dev.write(ref, np.zeros_like(data))
    assert cm(x).abs().max().item() == 0.0
