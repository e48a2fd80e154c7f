"""ONNX lowerings: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss (weights, ignore_index, reductions).

Entries register with `onnx_op` like those in onnx_ops.py; kept in their own module so each family
is one file.
"""
from __future__ import annotations
