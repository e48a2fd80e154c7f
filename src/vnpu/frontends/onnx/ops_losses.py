"""ONNX lowerings: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss (weights, ignore_index, reductions).

Entries register with `onnx_op` like those in onnx_ops.py; kept in their own module so each family
is one file.

The target is an int64 runtime tensor, so the per-position pick x[n, target[n, d...], d...] is a
one-hot select: the target (class axis inserted at 1) compared with a class iota constant, a where
against zero, and a sum over the class axis. A target equal to ignore_index, or outside [0, C),
matches no class and so contributes 0 to the loss and 0 to the weight total, which is what the
reference computes for ignored positions.
"""
from __future__ import annotations

import numpy as np

from vnpu.dtypes import DType
from vnpu.frontends.onnx.importer import OnnxContext as Cx, onnx_op
from vnpu.frontends.onnx.onnx_ops import Ins, _iota, _reshape_to
from vnpu.ir.graph import Value

_REDUCTIONS = ("none", "sum", "mean")


def _class_hit(cx: Cx, target: Value, classes: int, ignore_index: int | None) -> Value:
    """bool (N, C, d1...): position (n, d...) has target class c and is not ignored."""
    t = cx.cast(target, DType.int64)
    t = _reshape_to(cx, t, [t.shape[0], 1] + list(t.shape[1:]))
    rank = t.type.rank
    hit = cx.emit("eq", [t, cx.const(_iota(classes, 1, rank), DType.int64)])
    if ignore_index is not None and 0 <= ignore_index < classes:
        # an ignore_index inside [0, C) would otherwise match its class: that class is masked out
        # (one outside the range never matches the iota)
        keep = _iota(classes, 1, rank) != ignore_index
        hit = cx.emit("and", [hit, cx.const(keep, DType.bool)])
    return hit


def _nll(cx: Cx, log_prob: Value, target: Value, weight: Value | None, attrs: dict) -> Value | None:
    """The negative log-likelihood loss of `log_prob` (N, C, d1...) at the int `target` (N, d1...)."""
    reduction = attrs.get("reduction", "mean")
    if reduction not in _REDUCTIONS or not log_prob.dtype.is_float or target.dtype.is_float:
        return None
    rank = log_prob.type.rank
    if rank < 2 or target.shape != (log_prob.shape[0],) + log_prob.shape[2:]:
        return None
    classes = log_prob.shape[1]
    if weight is not None and weight.shape != (classes,):
        return None
    ignore_index = int(attrs["ignore_index"]) if "ignore_index" in attrs else None
    hit = _class_hit(cx, target, classes, ignore_index)
    zero = cx.const(0, log_prob.dtype)
    weight_b = None
    picked_src = log_prob
    if weight is not None:
        weight = cx.cast(weight, log_prob.dtype)
        weight_b = _reshape_to(cx, weight, [1, classes] + [1] * (rank - 2))
        picked_src = cx.emit("mul", [log_prob, weight_b])
    # where rather than a multiply by the one-hot: a -inf log-probability of another class stays out
    picked = cx.emit("where", [hit, picked_src, zero])
    all_axes = list(range(rank))
    if reduction == "none":
        picked = cx.emit("reduce", [picked], {"kind": "sum", "axes": [1], "keepdim": False})
        return cx.emit("neg", [picked])
    total = cx.emit("neg", [cx.emit("reduce", [picked], {"kind": "sum", "axes": all_axes, "keepdim": False})])
    if reduction == "sum":
        return total
    if weight_b is None and ignore_index is None:
        return cx.emit("div", [total, cx.const(target.type.numel, log_prob.dtype)])
    # mean: divided by the summed weights of the non-ignored targets (their count when unweighted)
    per_class = weight_b if weight_b is not None else cx.const(np.ones([1] * rank), log_prob.dtype)
    denom = cx.emit("reduce", [cx.emit("where", [hit, per_class, zero])],
                    {"kind": "sum", "axes": all_axes, "keepdim": False})
    return cx.emit("div", [total, denom])


@onnx_op("NegativeLogLikelihoodLoss")
def _negative_log_likelihood_loss(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    x, target = ins[0], ins[1]
    weight = ins[2] if len(ins) > 2 else None
    return _nll(cx, x, target, weight, attrs)


@onnx_op("SoftmaxCrossEntropyLoss")
def _softmax_cross_entropy_loss(cx: Cx, ins: Ins, attrs: dict) -> Value | tuple | None:
    scores, target = ins[0], ins[1]
    weight = ins[2] if len(ins) > 2 else None
    if not scores.dtype.is_float or scores.type.rank < 2:
        return None
    log_prob = cx.emit("softmax", [scores], {"axis": 1, "log": True})
    loss = _nll(cx, log_prob, target, weight, attrs)
    if loss is None:
        return None
    return loss, log_prob  # the second output (log_prob) when the node asks for it
