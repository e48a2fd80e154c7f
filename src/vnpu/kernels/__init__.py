"""Kernel library: one file per kernel family, each registering the IR ops it lowers."""
from vnpu.kernels.base import KERNELS, KernelContext, KernelError

# importing registers each kernel
from vnpu.kernels import (  # noqa: F401,E402
    attention, conv2d, copy, elementwise, gather, layer_norm, matmul, moe, moe_combine, moe_router, pool2d, reduce, rope, scatter,
    softmax, topk,
)

__all__ = ["KERNELS", "KernelContext", "KernelError"]
