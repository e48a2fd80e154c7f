"""What every kernel shares: the registry, the per-core stream builder, fused expressions."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from vnpu.chip.schema import Chip
from vnpu.dtypes import DType
from vnpu.ir.graph import Node
from vnpu.isa.instructions import CoreStream, HbmRef, Instr, SramRef, VecOp
from vnpu.isa.program import KernelLaunch

SRAM_ALIGN = 64
T = TypeVar("T")


class KernelError(RuntimeError):
    pass


class SramOverflow(KernelError):
    pass


@dataclass
class KernelContext:
    """A node to lower, with the HBM placement of each input and output."""

    chip: Chip
    dtype: DType  # program precision: the matrix engine's operand type
    node: Node
    inputs: list[HbmRef]
    outputs: list[HbmRef]
    scalars: list[float | None]  # per input: its value if it is a 1-element constant (vector immediate)

    @property
    def cores(self) -> int:
        return self.chip.cores


KernelFn = Callable[[KernelContext], KernelLaunch]
KERNELS: dict[str, KernelFn] = {}


def kernel(*ops: str):
    """Registers a kernel emitter for IR ops."""
    def deco(fn: KernelFn) -> KernelFn:
        for op in ops:
            KERNELS[op] = fn
        return fn
    return deco


class CoreBuilder:
    """Builds one core's stream: bump-allocated scratchpad, semaphores, queue appends."""

    def __init__(self, chip: Chip):
        self.capacity = chip.core.scratchpad.bytes
        self.top = 0
        self.stream = CoreStream()
        self.n_sems = 0

    def alloc(self, dtype: DType, shape: tuple[int, ...]) -> SramRef:
        n = dtype.itemsize
        for d in shape:
            n *= d
        off = self.top
        self.top = (off + n + SRAM_ALIGN - 1) // SRAM_ALIGN * SRAM_ALIGN
        if self.top > self.capacity:
            raise SramOverflow(f"scratchpad overflow: need {self.top} bytes, core has {self.capacity}")
        return SramRef(off, dtype, tuple(shape))

    def sem(self) -> int:
        self.n_sems += 1
        return self.n_sems - 1

    def emit(self, ins: Instr) -> Instr:
        self.stream.queues[ins.queue].append(ins)
        return ins

    def finish(self) -> CoreStream:
        self.stream.semaphores = self.n_sems
        return self.stream


def sub_ref(t: SramRef, shape: tuple[int, ...]) -> SramRef:
    """The same buffer holding a smaller (edge) tile."""
    return SramRef(t.offset, t.dtype, tuple(shape))


# -- fused elementwise expressions --------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One elementwise op of a fused chain. `args` index the slots: the kernel's operand
    slots first, then the results of earlier steps."""

    op: str
    args: tuple[int, ...]
    attrs: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Expr:
    n_inputs: int
    steps: tuple[Step, ...]
    out_dtype: DType
    step_dtypes: tuple[DType, ...] = field(default=())  # IR dtype of each step's result

    @property
    def ops(self) -> list[str]:
        return [s.op for s in self.steps]


def emit_expr(b: CoreBuilder, expr: Expr, operands: list[SramRef | float], out: SramRef,
              temps: list[SramRef], waits: tuple = (), signal: int = -1) -> int:
    """Vector instructions for `expr` over same-shaped tiles; the last step writes `out`.

    Intermediates live in `temps` (fp32 or the step's int/bool type). The first
    instruction carries `waits`, the last `signal`. Returns the instruction count.
    """
    slots: list[SramRef | float] = list(operands)
    steps = expr.steps or (Step("identity", (0,)),)
    for i, st in enumerate(steps):
        last = i == len(steps) - 1
        dst = out if last else sub_ref(temps[i], out.shape)
        ins = VecOp(st.op, dst, tuple(slots[a] for a in st.args), st.attrs,
                    waits=waits if i == 0 else (), signal=signal if last else -1)
        b.emit(ins)
        slots.append(dst)
    return len(steps)


def temp_dtype(d: DType) -> DType:
    return d if not d.is_float else DType.fp32


def expr_temps(b: CoreBuilder, expr: Expr, shape: tuple[int, ...]) -> list[SramRef]:
    steps = expr.steps or (Step("identity", (0,)),)
    dts = expr.step_dtypes or tuple(DType.fp32 for _ in steps)
    return [b.alloc(temp_dtype(dts[i]), shape) for i in range(len(steps) - 1)]


def deal_round_robin(items: list[T], cores: int) -> list[list[T]]:
    """Item i goes to core i % cores: neighbouring tiles run at the same time on different cores."""
    return [items[c::cores] for c in range(cores)]


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
