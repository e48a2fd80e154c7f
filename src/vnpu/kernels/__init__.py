"""Kernel library: one file per kernel family, each registering the IR ops it lowers."""
from vnpu.kernels.base import KERNELS, KernelContext, KernelError

# importing registers each kernel
from vnpu.kernels import (  # noqa: F401,E402
    attention, bitcast, conv2d, copy, elementwise, gather, layer_norm, matmul, moe, moe_combine, moe_matmul, moe_router, pool2d, quantize_rows, reduce, rope, scatter,
    softmax, topk,
)

from vnpu.kernels.group import grouped  # noqa: E402

_RAW = dict(KERNELS)
for _op, _fn in _RAW.items():  # every kernel can lead or follow a kernel group (compiler/siblings.py)
    KERNELS[_op] = grouped(_fn, _RAW)

__all__ = ["KERNELS", "KernelContext", "KernelError"]
