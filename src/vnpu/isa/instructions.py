"""The vnpu instruction set.

Each core runs four in-order queues: DMA in (HBM -> scratchpad), DMA out
(scratchpad -> HBM), matrix (systolic array) and vector. Queues synchronize only
through per-core counting semaphores: an instruction waits until each listed
semaphore has reached a value, and increments its `signal` semaphore when it
completes. Without the right wait, a consumer runs early and reads stale data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Union

from vnpu.dtypes import DType

QUEUES = ("dma_in", "matrix", "vector", "dma_out")


@dataclass(frozen=True, slots=True)
class HbmRef:
    """A strided view of HBM: `offset` in bytes, `strides` in elements (0 = broadcast)."""

    offset: int
    dtype: DType
    shape: tuple[int, ...]
    strides: tuple[int, ...]

    @property
    def numel(self) -> int:
        return prod(self.shape)

    def contiguous_run(self) -> int:
        """Bytes in the innermost contiguous run (what one DMA burst sequence covers)."""
        run = 1
        expect = 1
        for d, s in zip(reversed(self.shape), reversed(self.strides)):
            if d == 1:
                continue
            if s != expect:
                break
            run *= d
            expect *= d
        return run * self.dtype.itemsize

    def footprint_bytes(self) -> int:
        """Distinct bytes addressed when no two non-broadcast dims overlap (stride 0 = broadcast)."""
        n = 1
        for d, s in zip(self.shape, self.strides):
            if s != 0:
                n *= d
        return n * self.dtype.itemsize


@dataclass(frozen=True, slots=True)
class SramRef:
    """A contiguous tile in a core's scratchpad, `offset` in bytes."""

    offset: int
    dtype: DType
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


Wait = tuple[int, int]  # (semaphore, value it must have reached)


@dataclass(slots=True)
class DmaLoad:
    """HBM view -> contiguous tile. `hbm_bytes` overrides the traffic when the view
    overlaps itself (im2col windows read each input byte once, expanded in the DMA engine)."""

    src: HbmRef
    dst: SramRef
    hbm_bytes: int = -1
    waits: tuple[Wait, ...] = ()
    signal: int = -1
    queue = "dma_in"


@dataclass(slots=True)
class DmaGather:
    """Rows of `table` (shape [rows, *row]) picked by int indices in `index` (SRAM) into `dst`."""

    table: HbmRef
    index: SramRef
    dst: SramRef
    waits: tuple[Wait, ...] = ()
    signal: int = -1
    queue = "dma_in"


@dataclass(slots=True)
class DmaScatter:
    """Rows of `src` (SRAM, [n, *row]) written to the rows of `table` ([rows, *row] HBM view)
    picked by the n int indices in `index` (SRAM): a KV-cache append at runtime positions."""

    src: SramRef
    index: SramRef
    table: HbmRef
    waits: tuple[Wait, ...] = ()
    signal: int = -1
    queue = "dma_out"


@dataclass(slots=True)
class DmaStore:
    src: SramRef
    dst: HbmRef
    waits: tuple[Wait, ...] = ()
    signal: int = -1
    queue = "dma_out"


@dataclass(slots=True)
class MatMul:
    """acc[M,N] (fp32) (+)= a[M,K] @ b[K,N] on the systolic array, operands in `dtype`.
    With `trans_b`, b is stored [N, K] and used transposed (Q @ K^T: the array loads the
    stationary block either way round).

    `continues` / `drains` let one fold span several instructions that stream it in chunks
    (see isa.cost.matmul_cycles): the defaults describe a self-contained instruction.

    Block-scaled (OCP MX) operands: with `block` > 0, a and b are fp8 e4m3 or packed fp4
    (fp4x2_e2m1: a [M, K / 2] packed along K, b [K / 2, N] packed along K, low nibble first),
    `a_scale` [M, K / block] and `b_scale` [K / block, N] their E8M0 scales, and
    acc (+)= sum over blocks j of a_scale[:, j] b_scale[j, :] (a_j @ b_j), each block's products
    summed exactly and the instruction's sum rounded once to fp32 (sim.functional.mx_matmul).

    Packed weight-only operands (chip `packed_weight_bits`): with `b_bits` 4 or 8, b holds int8
    bytes [K * b_bits / 8, N] (int4 packed along K, low nibble first), `b_scale` its fp32 scales
    [ceil(K / block), N] per group of `block` rows, and acc (+)= a @ (q * scale), the weights
    dequantized to fp32 in the PEs.
    """

    a: SramRef
    b: SramRef
    acc: SramRef
    accumulate: bool
    waits: tuple[Wait, ...] = ()
    signal: int = -1
    trans_b: bool = False
    continues: bool = False
    drains: bool = True
    a_scale: SramRef | None = None
    b_scale: SramRef | None = None
    block: int = 0
    b_bits: int = 0
    queue = "matrix"


Operand = Union[SramRef, float]


@dataclass(slots=True)
class VecOp:
    """dst = op(*srcs) elementwise, NumPy broadcasting over tile shapes, fp32 internally.

    `op` is an IR elementwise op name, or "reduce_sum|max|min" over attrs["axis"] of
    srcs[0] (default the last axis, dims kept), or "fill", or "iota" (attrs["start"] + the
    index along attrs["axis"], default the last), or "topk_values" / "topk_indices" (the attrs["k"] largest along
    the last axis of srcs[0], largest first, ties to the lower index), or "take" (each row of
    srcs[0] gathered at the int positions in srcs[1]). `view` reshapes sources to the dst's rank for broadcasting.
    """

    op: str
    dst: SramRef
    srcs: tuple[Operand, ...]
    attrs: tuple[tuple[str, object], ...] = ()
    views: tuple[tuple[int, ...] | None, ...] = ()
    waits: tuple[Wait, ...] = ()
    signal: int = -1
    queue = "vector"


Instr = Union[DmaLoad, DmaGather, DmaScatter, DmaStore, MatMul, VecOp]


@dataclass
class CoreStream:
    """One core's part of a kernel: an instruction list per queue and its semaphore count."""

    queues: dict[str, list[Instr]] = field(default_factory=lambda: {q: [] for q in QUEUES})
    semaphores: int = 0

    def __len__(self) -> int:
        return sum(len(v) for v in self.queues.values())
