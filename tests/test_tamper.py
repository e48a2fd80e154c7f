"""The simulator executes the instruction streams, not the model: tampering with one
instruction changes the outputs, in exactly the way the tampering predicts.

Model: y = relu(x @ W.T + b), x [8, 64], W [96, 64]: one GEMM kernel with a fused bias+relu
epilogue. Each tampered program runs on a fresh device, whose scratchpads start zeroed, so
a consumer that runs before its producer deterministically reads zeros. The expected
(tampered) outputs are computed with PyTorch from the description of the tampering.
"""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import vnpu
from vnpu.isa.instructions import DmaLoad, DmaStore, MatMul, VecOp
from vnpu.isa.program import KernelLaunch
from vnpu.runtime.compiled import CompiledModel

D_IN, D_OUT, BATCH = 64, 96, 8


class LinearRelu(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(D_IN, D_OUT)

    def forward(self, x):
        return torch.relu(self.fc(x))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    m = LinearRelu().eval()
    x = torch.randn(BATCH, D_IN)
    with torch.no_grad():
        ref = m(x)
    cm = vnpu.compile(m, (x,))
    return m, x, ref, cm


def _fresh(cm: CompiledModel) -> tuple[CompiledModel, KernelLaunch]:
    prog = copy.deepcopy(cm.program)
    kernels = [l for l in prog.launches if isinstance(l, KernelLaunch)]
    assert len(kernels) == 1, "test premise: one fused GEMM kernel"
    return CompiledModel(prog, cm.chip, cm.info), kernels[0]


def _tile_of_core0(cm: CompiledModel, launch: KernelLaunch) -> tuple[slice, slice]:
    """Rows/cols of the output that core 0's first tile covers, from its DmaStore's address."""
    st = launch.cores[0].queues["dma_out"][0]
    assert isinstance(st, DmaStore)
    out = cm.program.outputs[0]
    idx = (st.dst.offset - out.offset) // out.dtype.itemsize
    r0, c0 = divmod(idx, out.strides[0])
    mt, nt = st.dst.shape
    return slice(r0, r0 + mt), slice(c0, c0 + nt)


def test_untampered_program_matches_eager(setup):
    m, x, ref, cm = setup
    fresh, _ = _fresh(cm)
    torch.testing.assert_close(fresh(x), ref, rtol=1e-5, atol=1e-5)


def test_shifted_weight_load_reads_the_next_column(setup):
    """Core 0's weight DmaLoad is moved 4 bytes (one fp32 element) further into HBM.

    The weight operand is the [K, N] = W.T constant, row-major; a B tile is a [K, nt] view
    of it, so shifting it by one element makes the tile's column j read W.T[:, c0 + j + 1]:
      y[:, c0 + j] = relu(x @ W.T[:, c0 + j + 1] + b[c0 + j]) on core 0's tile.
    """
    m, x, ref, cm = setup
    tampered, launch = _fresh(cm)
    wref = next(r for r, d in tampered.program.constants if tuple(d.shape) == (D_IN, D_OUT))
    q = launch.cores[0].queues["dma_in"]
    i = next(i for i, ins in enumerate(q) if isinstance(ins, DmaLoad)
             and wref.offset <= ins.src.offset < wref.offset + D_IN * D_OUT * 4)
    q[i] = dataclasses.replace(q[i], src=dataclasses.replace(q[i].src, offset=q[i].src.offset + 4))
    rows, cols = _tile_of_core0(tampered, launch)
    assert cols.stop < D_OUT, "test premise: core 0's tile is not the last column block"
    y = tampered(x)
    wt = m.fc.weight.detach().T
    expect = ref.clone()
    shifted_w = wt[:, cols.start + 1:cols.stop + 1]
    expect[rows, cols] = torch.relu(x[rows] @ shifted_w + m.fc.bias.detach()[cols])
    assert (y - ref).abs().max() > 1e-2  # the outputs are wrong...
    torch.testing.assert_close(y, expect, rtol=1e-5, atol=1e-5)  # ...exactly as predicted
    # the untouched model is unaffected
    torch.testing.assert_close(cm(x), ref, rtol=1e-5, atol=1e-5)


def test_matmul_without_its_wait_reads_stale_operands(setup):
    """Core 0's first MatMul loses its wait on the operand loads.

    It issues at the start of the kernel and reads the (zeroed) operand buffers before the
    DMA lands, so its accumulator is 0 and the epilogue gives relu(0 + b) on that tile.
    """
    m, x, ref, cm = setup
    tampered, launch = _fresh(cm)
    q = launch.cores[0].queues["matrix"]
    assert isinstance(q[0], MatMul) and q[0].waits
    q[0] = dataclasses.replace(q[0], waits=())
    rows, cols = _tile_of_core0(tampered, launch)
    assert len(launch.cores[0].queues["matrix"]) == 1, "test premise: one K chunk, one tile on core 0"
    y = tampered(x)
    expect = ref.clone()
    expect[rows, cols] = torch.relu(m.fc.bias.detach()[cols]).expand(rows.stop - rows.start, -1)
    assert (y - ref).abs().max() > 1e-2
    torch.testing.assert_close(y, expect, rtol=1e-6, atol=1e-6)


def test_epilogue_without_its_wait_reads_stale_accumulator(setup):
    """Core 0's first vector instruction (the bias add) loses its waits on the matmul and the
    bias load: it reads a zero accumulator and a zero bias tile, so relu(0 + 0) = 0 there."""
    m, x, ref, cm = setup
    tampered, launch = _fresh(cm)
    q = launch.cores[0].queues["vector"]
    assert isinstance(q[0], VecOp) and q[0].op == "add" and q[0].waits
    q[0] = dataclasses.replace(q[0], waits=())
    rows, cols = _tile_of_core0(tampered, launch)
    y = tampered(x)
    expect = ref.clone()
    expect[rows, cols] = 0.0
    assert (y - ref).abs().max() > 1e-2
    torch.testing.assert_close(y, expect, rtol=1e-6, atol=1e-6)
