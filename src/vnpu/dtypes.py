"""Element types shared by every stage: names, sizes, NumPy storage types.

Low-precision floats come from ml_dtypes so that storing a value in bf16/fp16/fp8
rounds it exactly as the hardware would (round-to-nearest-even).
"""
from __future__ import annotations

from enum import Enum

import numpy as np


class DType(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"
    fp8_e4m3 = "fp8_e4m3"
    fp8_e5m2 = "fp8_e5m2"
    int64 = "int64"
    int32 = "int32"
    int8 = "int8"
    int4 = "int4"
    bool = "bool"
    # appended, so that saved programs' dtype indices stay valid (runtime/artifact.py)
    fp4x2_e2m1 = "fp4x2_e2m1"  # two fp4 e2m1 values per byte, packed along the contraction axis (MXFP4)
    e8m0 = "e8m0"  # an unsigned power-of-two scale exponent (OCP MX block scales): 2^(e - 127)

    @property
    def np(self) -> np.dtype:
        return (_NUMPY or _numpy_types())[self]

    @property
    def itemsize(self) -> int:
        return self._itemsize  # type: ignore[attr-defined]  # set below, once per member

    @property
    def is_float(self) -> bool:
        return self in (DType.fp32, DType.bf16, DType.fp16, DType.fp8_e4m3, DType.fp8_e5m2)

    def __str__(self) -> str:
        return self.value


# bytes per element in simulated memory; int4 is stored one value per byte (timing counts half a byte);
# an fp4x2_e2m1 element is one byte holding two fp4 values (a [M, K] fp4 tile is an [M, K / 2] fp4x2 one)
_ITEMSIZE = {DType.fp32: 4, DType.bf16: 2, DType.fp16: 2, DType.fp8_e4m3: 1, DType.fp8_e5m2: 1, DType.int64: 8,
             DType.int32: 4, DType.int8: 1, DType.int4: 1, DType.bool: 1, DType.fp4x2_e2m1: 1, DType.e8m0: 1}
for _m in DType:  # the simulator asks every operand its itemsize: a plain attribute, not a dict lookup
    _m._itemsize = _ITEMSIZE[_m]

_NUMPY: dict[DType, np.dtype] = {}

# The matrix engine's low-precision operand formats and what a product of two of them accumulates
# in: int8 x int8 in int32 (exact), fp8 x fp8 (e4m3 / e5m2, mixed as Hopper allows) in fp32, packed
# fp4 (MXFP4, always with E8M0 block scales) in fp32.
QUANT_MATMUL_ACC = {DType.int8: DType.int32, DType.fp8_e4m3: DType.fp32, DType.fp8_e5m2: DType.fp32,
                    DType.fp4x2_e2m1: DType.fp32}
# K elements per stored element of an operand format (fp4x2: two)
PACKED_ELEMENTS = {DType.fp4x2_e2m1: 2}


class UnsupportedDTypeError(TypeError):
    """A framework dtype vnpu has no counterpart for (complex, uint64, ...)."""


def _numpy_types() -> dict[DType, np.dtype]:
    """NumPy storage types, filled on first use: ml_dtypes' import costs ~0.1-0.6 s, which
    commands that never touch tensor data (vnpu chips, a refused vnpu generate) do not pay."""
    import ml_dtypes

    _NUMPY.update({
        DType.fp32: np.dtype(np.float32), DType.bf16: np.dtype(ml_dtypes.bfloat16), DType.fp16: np.dtype(np.float16),
        DType.fp8_e4m3: np.dtype(ml_dtypes.float8_e4m3fn), DType.fp8_e5m2: np.dtype(ml_dtypes.float8_e5m2),
        DType.int64: np.dtype(np.int64), DType.int32: np.dtype(np.int32), DType.int8: np.dtype(np.int8),
        DType.int4: np.dtype(ml_dtypes.int4), DType.bool: np.dtype(np.bool_),
        # a one-field record, not uint8: from_numpy must not mistake a framework's uint8 tensor for packed fp4
        DType.fp4x2_e2m1: np.dtype([("e2m1x2", np.uint8)]), DType.e8m0: np.dtype(ml_dtypes.float8_e8m0fnu),
    })
    assert all(_NUMPY[d].itemsize == _ITEMSIZE[d] for d in DType)
    return _NUMPY


def from_numpy(dt: np.dtype) -> DType:
    dt = np.dtype(dt)
    for k, v in (_NUMPY or _numpy_types()).items():
        if v == dt:
            return k
    if dt == np.dtype(np.float64):
        return DType.fp32
    raise TypeError(f"no vnpu dtype for numpy dtype {dt}")


# -- framework interop (torch imported lazily: the core does not depend on it) ----------
def torch_to_dtype(tdt: "object") -> DType:
    import torch

    table = {
        torch.float32: DType.fp32, torch.float64: DType.fp32, torch.bfloat16: DType.bf16, torch.float16: DType.fp16,
        torch.int64: DType.int64, torch.int32: DType.int32, torch.int8: DType.int8, torch.bool: DType.bool,
        torch.uint8: DType.int32, torch.int16: DType.int32,
    }
    if tdt not in table:
        raise UnsupportedDTypeError(f"torch dtype {tdt} has no vnpu equivalent (vnpu tensors are float, int or "
                                    f"bool; complex and 64-bit unsigned types cannot be compiled)")
    return table[tdt]


def dtype_to_torch(dt: DType) -> "object":
    import torch

    return {
        DType.fp32: torch.float32, DType.bf16: torch.bfloat16, DType.fp16: torch.float16, DType.int64: torch.int64,
        DType.int32: torch.int32, DType.int8: torch.int8, DType.bool: torch.bool,
    }[dt]


def numpy_to_torch(a: np.ndarray) -> "object":
    """NumPy (including ml_dtypes bf16) -> torch tensor, exact."""
    import torch

    a = np.require(a, requirements="C")  # unlike ascontiguousarray, keeps 0-d arrays 0-d
    if a.dtype == DType.bf16.np:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def torch_to_numpy(t: "object") -> np.ndarray:
    """torch tensor -> NumPy, bf16 kept exact as ml_dtypes.bfloat16."""
    import torch

    t = t.detach().cpu().contiguous()  # type: ignore[attr-defined]
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(DType.bf16.np)
    if t.dtype == torch.float64:
        return t.numpy().astype(np.float32)
    return t.numpy()
