"""PyTorch's own operator database (OpInfo) through vnpu, against eager PyTorch.

Each op's fp32 samples become small exported modules compiled with strict=True (see
tests/opinfo_harness.py). Default: a fixed CI-sized subset, the first exportable sample of
each; VNPU_OPINFO=all runs every op with two samples (the full report with counts is
benchmarks/opinfo_suite.py). VNPU_OPINFO_EVERY=k picks every k-th op instead of the default.

Every op must pass, fall back to the host with eager's results, or decline with a vnpu
error: never a wrong result, never an internal crash. The ops vnpu lowers must pass strict.
"""
from __future__ import annotations

import os

import pytest

pytest.importorskip("expecttest")  # torch.testing._internal imports it

import opinfo_harness as H  # noqa: E402

# ops the chip runs on its own (strict=True must accept them and match eager)
ON_CHIP = {
    # elementwise math family
    "abs", "acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "ceil", "clamp", "copysign", "cos", "cosh",
    "erf", "erfc", "exp", "exp2", "expm1", "fix", "floor", "fmax", "fmin", "fmod", "frac", "hypot", "isfinite", "isinf",
    "isnan", "isneginf", "isposinf", "ldexp", "log", "log10", "log1p", "log2", "logaddexp", "logit", "nan_to_num",
    "neg", "pow", "reciprocal", "remainder", "round", "round.decimals_3", "round.decimals_neg_3", "rsqrt", "rsub",
    "sgn", "sigmoid", "sign", "sin", "sinh", "sqrt", "square", "tan", "tanh", "trunc", "true_divide", "xlogy",
    "where", "div.floor_rounding", "div.trunc_rounding", "div.no_rounding_mode", "float_power",
    # activations
    "nn.functional.celu", "nn.functional.elu", "nn.functional.hardshrink", "nn.functional.leaky_relu",
    "nn.functional.logsigmoid", "nn.functional.mish", "nn.functional.selu", "nn.functional.softplus",
    "nn.functional.softshrink", "nn.functional.softsign", "nn.functional.threshold", "nn.functional.relu",
    "nn.functional.silu", "nn.functional.hardswish", "nn.functional.hardsigmoid",
    # data movement, reductions, scans, selection
    "flip", "fliplr", "flipud", "roll", "repeat", "tile", "full_like", "zeros_like", "ones_like", "any", "all",
    "argmax", "argmin", "amax", "amin", "cumsum", "sort", "topk", "var_mean", "std", "std_mean", "var", "logsumexp",
    "prod", "mean", "sum", "linalg.vector_norm", "diagonal", "diag", "max.reduction_with_dim",
    "min.reduction_with_dim", "max.reduction_no_dim", "min.reduction_no_dim", "native_layer_norm", "index_select",
    "mm", "linalg.vecdot", "linalg.multi_dot",
}
# a CI-sized fixed subset: these plus every 40th op of the name-sorted database
CI_OPS = {
    "acosh", "atan2", "clamp", "cumsum", "erfc", "expm1", "flip", "isnan", "logit", "log1p", "nan_to_num", "remainder",
    "round.decimals_3", "sort", "topk", "var_mean", "xlogy", "nn.functional.elu", "nn.functional.leaky_relu",
    "nn.functional.mish", "nn.functional.softplus", "argmax", "amax", "repeat", "roll", "sum", "mm",
    "native_layer_norm", "linalg.vecdot", "linalg.inv",
}


def _selected() -> tuple[list, int]:
    ops = sorted(H.fp32_ops(), key=H.op_id)
    if os.environ.get("VNPU_OPINFO") == "all":
        return ops, 2
    every = int(os.environ.get("VNPU_OPINFO_EVERY", "40"))
    picked = {H.op_id(o) for o in ops[::every]} | CI_OPS
    return [o for o in ops if H.op_id(o) in picked], 1


_OPS, _SAMPLES = _selected()


@pytest.mark.parametrize("op", _OPS, ids=H.op_id)
def test_opinfo_op(op) -> None:
    r = H.run_op(op, _SAMPLES)
    assert r.category not in (H.CRASH, H.MISMATCH), f"{r.name}: {r.category}: {r.detail}"
    if r.name in ON_CHIP:
        assert r.category in (H.PASS, H.NOT_EXPORTABLE), f"{r.name} should run on chip: {r.category}: {r.detail}"


def test_harness_flags_a_wrong_result() -> None:
    """The comparison the suite relies on: a 1e-3 relative error fails, a 1e-6 one passes, NaN must match."""
    import torch

    ref = torch.linspace(-2, 2, 11)
    assert H.close(ref * (1 + 1e-6), ref)
    assert not H.close(ref * (1 + 1e-3), ref)
    nan = ref.clone()
    nan[3] = float("nan")
    assert not H.close(ref, nan) and H.close(nan, nan)
    assert not H.close(ref[:5], ref)


def test_harness_classifies_a_crash_and_a_named_error() -> None:
    from vnpu.frontends.errors import UnsupportedOpError

    assert H.is_vnpu_error(UnsupportedOpError({"x.default": 1}))
    assert not H.is_vnpu_error(IndexError("tuple index out of range"))
