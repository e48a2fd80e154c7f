"""ONNX lowerings: signal processing (DFT, STFT, windows, MelWeightMatrix) as constant matmuls, and misc tensor ops.

Entries register with `onnx_op` like those in onnx_ops.py; kept in their own module so each family
is one file.
"""
from __future__ import annotations
