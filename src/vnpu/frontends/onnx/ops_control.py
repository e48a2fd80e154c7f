"""ONNX lowerings: control flow (If, Loop, Scan) unrolled at import time, and sequences as compile-time lists.

Entries register with `onnx_op` like those in onnx_ops.py; kept in their own module so each family
is one file.
"""
from __future__ import annotations
