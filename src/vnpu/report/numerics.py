"""Comparing simulated outputs with a reference (PyTorch eager fp32).

Pass criteria, by the model's compute dtype:

* fp32 (and any dtype not listed): ``max_abs_err <= 1e-4 * max|ref|``, i.e. ``max_rel_err <= 1e-4``;
* bf16 / fp16 (and fp8): ``cosine >= 0.999`` between the flattened outputs and the reference.

Non-finite values in the outputs (where the reference is finite) always fail.

A quantized program (``quant``: a post-training scheme) is held to ``cosine >= 0.99`` against the
fp32 reference on the same inputs, the accuracy the literature reports for W8A8 on transformers
and CNNs (SmoothQuant, LLM.int8()); a scheme with 4-bit activations (mxfp4) to its own floor,
``QuantScheme.min_cosine`` (0.95: direct-cast MXFP4 is lossy, the OCP MX paper fine-tunes for
it); the report adds, for 2-D outputs (classifier logits
[batch, classes]), the top-1 agreement: the fraction of rows whose argmax matches the reference's.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import numpy as np

from vnpu.dtypes import DType

REFERENCE = "torch eager fp32"
FP32_REL_TOL = 1e-4
LOW_PRECISION_MIN_COSINE = 0.999
QUANT_MIN_COSINE = 0.99
_LOW_PRECISION = {DType.bf16, DType.fp16, DType.fp8_e4m3, DType.fp8_e5m2}


@dataclass
class Numerics:
    max_abs_err: float
    max_rel_err: float  # max_abs_err / max|ref|
    cosine: float
    max_abs_ref: float
    criterion: str
    passed: bool
    nonfinite: int = 0  # output elements that are NaN/inf where the reference is finite
    elements: int = 0
    outputs: int = 0
    reference: str = REFERENCE
    quant: str = ""  # the quantization scheme the outputs ran under ("" = none)
    top1_agreement: float | None = None  # quantized runs, 2-D outputs: argmax agreement per row

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quant_min_cosine(quant: str) -> float:
    """The cosine a run under scheme `quant` must reach (framework-quantized models: the default)."""
    from vnpu.compiler.quantize import SCHEMES

    s = SCHEMES.get(quant)
    return s.min_cosine if s is not None else QUANT_MIN_COSINE


def criterion(dtype: DType | str, quant: str = "") -> str:
    if quant:
        return f"cosine >= {quant_min_cosine(quant)} ({quant})"
    dt = DType(dtype)
    if dt in _LOW_PRECISION:
        return f"cosine >= {LOW_PRECISION_MIN_COSINE}"
    return f"max_abs_err <= {FP32_REL_TOL:g} * max|ref|"


def _as_f64(x: Any) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x).astype(np.float64, copy=False).ravel()


def flatten_outputs(out: Any) -> list[Any]:
    """A model's return value (tensor, tuple/list/dict of tensors, nested) -> list of arrays/tensors."""
    if isinstance(out, (list, tuple)):
        return [y for o in out for y in flatten_outputs(o)]
    if isinstance(out, dict):
        return [y for o in out.values() for y in flatten_outputs(o)]
    if out is None:
        return []
    return [out]


def _top1_agreement(outputs: list[Any], references: list[Any]) -> float | None:
    rows = agree = 0
    for o, r in zip(outputs, references):
        o = o.detach().float().numpy() if type(o).__module__.startswith("torch") else np.asarray(o, np.float64)
        r = r.detach().float().numpy() if type(r).__module__.startswith("torch") else np.asarray(r, np.float64)
        if o.ndim == 2 and o.shape == r.shape and o.shape[1] >= 2:
            rows += o.shape[0]
            agree += int(np.count_nonzero(o.argmax(1) == r.argmax(1)))
    return agree / rows if rows else None


def compare(outputs: Iterable[Any], references: Iterable[Any], dtype: DType | str, quant: str = "") -> Numerics:
    """Error statistics over all outputs concatenated (each flattened), and the pass verdict."""
    outputs, references = list(outputs), list(references)
    outs = [_as_f64(o) for o in outputs]
    refs = [_as_f64(r) for r in references]
    if len(outs) != len(refs):
        raise ValueError(f"the model returned {len(refs)} output(s) in eager mode but {len(outs)} on vnpu")
    for i, (o, r) in enumerate(zip(outs, refs)):
        if o.size != r.size:
            raise ValueError(f"output {i} has {o.size} elements on vnpu, {r.size} in eager mode")
    y = np.concatenate(outs) if outs else np.zeros(0)
    ref = np.concatenate(refs) if refs else np.zeros(0)
    ref_ok = np.isfinite(ref)
    nonfinite = int(np.count_nonzero(~np.isfinite(y) & ref_ok))
    ok = ref_ok & np.isfinite(y)
    yv, rv = y[ok], ref[ok]
    max_abs_ref = float(np.max(np.abs(rv))) if rv.size else 0.0
    max_abs = float(np.max(np.abs(yv - rv))) if rv.size else 0.0
    max_rel = max_abs / max_abs_ref if max_abs_ref > 0 else (0.0 if max_abs == 0 else math.inf)
    ny, nr = float(np.linalg.norm(yv)), float(np.linalg.norm(rv))
    if ny == 0 and nr == 0:
        cos = 1.0
    elif ny == 0 or nr == 0:
        cos = 0.0
    else:
        cos = float(np.dot(yv, rv) / (ny * nr))
    dt = DType(dtype)
    if quant:
        passed = cos >= quant_min_cosine(quant)
    elif dt in _LOW_PRECISION:
        passed = cos >= LOW_PRECISION_MIN_COSINE
    else:
        passed = max_abs <= FP32_REL_TOL * max_abs_ref
    passed = bool(passed and nonfinite == 0)
    return Numerics(max_abs_err=max_abs, max_rel_err=max_rel, cosine=cos, max_abs_ref=max_abs_ref,
                    criterion=criterion(dt, quant), passed=passed, nonfinite=nonfinite, elements=int(y.size),
                    outputs=len(outs), quant=quant,
                    top1_agreement=_top1_agreement(outputs, references) if quant else None)


@dataclass
class LLMQuantAccuracy:
    """A quantized generation against the fp32 model on the same tokens, the metrics of
    llama.cpp's --kl-divergence: per generated position, KL(P_ref || P_quant) of the
    next-token distributions, and whether both put the same token on top."""

    positions: int
    mean_kl: float
    max_kl: float
    same_top_token: float  # fraction of positions

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def llm_quant_accuracy(logits: np.ndarray, ref_logits: np.ndarray) -> LLMQuantAccuracy:
    """logits, ref_logits: [batch, positions, vocab] (the quantized run's, the fp32 reference's)."""
    q, r = np.asarray(logits), np.asarray(ref_logits)
    if q.shape != r.shape:
        raise ValueError(f"logits {q.shape} and reference logits {r.shape} differ in shape")
    lq, lr = _log_softmax(q), _log_softmax(r)
    kl = (np.exp(lr) * (lr - lq)).sum(-1).reshape(-1)
    same = (q.argmax(-1) == r.argmax(-1)).reshape(-1)
    return LLMQuantAccuracy(int(kl.size), float(kl.mean()), float(kl.max()), float(same.mean()))
