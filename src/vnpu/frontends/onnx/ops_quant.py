"""ONNX lowerings: QuantizeLinear / DequantizeLinear / DynamicQuantizeLinear / QLinearMatMul / QLinearConv and Casts to 2/4-bit integers.

Entries register with `onnx_op` like those in onnx_ops.py; kept in their own module so each family
is one file.
"""
from __future__ import annotations
