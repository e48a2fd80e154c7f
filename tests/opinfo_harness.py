"""PyTorch's OpInfo database run through vnpu: each fp32 sample input as a small module,
compiled with strict=True (and without, when strict declines), compared with eager.

Used by tests/test_opinfo.py (a CI-sized subset) and benchmarks/opinfo_suite.py (all ops).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree

PASS = "pass-strict"
FALLBACK = "fallback-match"
UNSUPPORTED = "unsupported"
MISMATCH = "mismatch"
CRASH = "internal-crash"
NOT_EXPORTABLE = "not-exportable"
RANDOM = "nondeterministic"  # eager itself differs between two runs (random or uninitialized output)
# worst first: an op's category is the worst over its samples
SEVERITY = [CRASH, MISMATCH, UNSUPPORTED, FALLBACK, PASS]

# ops whose result is random or uninitialized memory by definition (eager cannot be compared)
RANDOM_PREFIXES = ("empty", "new_empty", "bernoulli", "cauchy", "exponential", "geometric", "log_normal", "normal",
                   "uniform", "rand", "multinomial", "nn.functional.dropout", "nn.functional.alpha_dropout",
                   "nn.functional.feature_alpha_dropout", "nn.functional.rrelu")
# op families the goal excludes from the strict target (they must pass or fall back correctly)
EXCLUDED_PREFIXES = ("linalg.", "fft.", "special.", "sparse.", "_refs.linalg", "nn.functional.scaled_dot")
EXCLUDED_NAMES = {"cholesky", "cholesky_inverse", "cholesky_solve", "lu", "lu_solve", "lu_unpack", "qr", "svd",
                  "pinverse", "inverse", "det", "logdet", "slogdet", "triangular_solve", "geqrf", "ormqr",
                  "symeig", "eig", "matrix_exp", "householder_product", "view_as_complex", "view_as_real",
                  "complex", "polar", "angle", "conj", "conj_physical", "resolve_conj", "resolve_neg",
                  "real", "imag", "lgamma", "digamma", "polygamma", "mvlgamma", "igamma", "igammac", "i0",
                  "erfinv", "zeta", "pca_lowrank", "svd_lowrank", "to_sparse", "sparse_sampled_addmm",
                  "linalg.norm", "norm", "cov", "corrcoef", "stft", "istft"}


def family(name: str) -> str:
    if name.startswith("linalg.") or name in ("cholesky", "cholesky_inverse", "cholesky_solve", "lu", "lu_solve",
                                               "lu_unpack", "qr", "svd", "pinverse", "inverse", "det", "logdet",
                                               "slogdet", "triangular_solve", "geqrf", "ormqr", "matrix_exp",
                                               "householder_product", "pca_lowrank", "svd_lowrank"):
        return "linalg"
    if name.startswith("fft."):
        return "fft"
    if name.startswith("special.") or name in ("lgamma", "digamma", "polygamma", "mvlgamma", "igamma", "igammac",
                                                "i0", "erfinv", "zeta"):
        return "special"
    if name in ("view_as_complex", "view_as_real", "complex", "polar", "angle", "conj", "conj_physical",
                "resolve_conj", "resolve_neg", "real", "imag"):
        return "complex"
    if "sparse" in name:
        return "sparse"
    if name.startswith("nn.functional."):
        return "nn.functional"
    if name.startswith("_"):
        return "private"
    return "torch"


EXCLUDED_FAMILIES = ("linalg", "fft", "special", "complex", "sparse")



def is_vnpu_error(e: BaseException) -> bool:
    """An error type vnpu defines (UnsupportedOpError, CompileError, IRTypeError, KernelError, ...)."""
    return any(c.__module__.startswith("vnpu") for c in type(e).__mro__)


def fp32_ops() -> list:
    from torch.testing._internal.common_methods_invocations import op_db

    out = []
    for op in op_db:
        try:
            if torch.float32 in op.supported_dtypes("cpu"):
                out.append(op)
        except Exception:
            continue
    return out


def op_id(op: Any) -> str:
    return op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")


class SampleModule(torch.nn.Module):
    """op(sample) with its tensor leaves as forward inputs, everything else baked in."""

    def __init__(self, op: Any, sample: Any):
        super().__init__()
        self.fn = op.op
        leaves, self.spec = pytree.tree_flatten((sample.input, sample.args, sample.kwargs))
        self.is_tensor = [isinstance(x, torch.Tensor) for x in leaves]
        self.baked = [None if t else x for x, t in zip(leaves, self.is_tensor)]
        self.inputs = tuple(x.detach().clone() for x, t in zip(leaves, self.is_tensor) if t)

    def forward(self, *tensors: torch.Tensor) -> Any:
        it = iter(tensors)
        leaves = [next(it) if t else b for t, b in zip(self.is_tensor, self.baked)]
        inp, args, kwargs = pytree.tree_unflatten(leaves, self.spec)
        return self.fn(inp, *args, **kwargs)


def _flat_outputs(out: Any) -> list[torch.Tensor]:
    import numpy as np

    leaves = pytree.tree_leaves(out)
    # a program without inputs (factory ops) answers with NumPy arrays
    return [torch.from_numpy(np.array(x)) if isinstance(x, np.ndarray) else x
            for x in leaves if isinstance(x, (torch.Tensor, np.ndarray))]


def close(got: torch.Tensor, ref: torch.Tensor) -> bool:
    """max|err| <= 1e-4 * max|ref|, or allclose(rtol 1e-4, atol 1e-5); NaNs and infs must agree."""
    if tuple(got.shape) != tuple(ref.shape):
        return False
    if not ref.dtype.is_floating_point:
        return bool(torch.equal(got.to(ref.dtype), ref))
    g, r = got.double(), ref.double()
    if not torch.equal(torch.isnan(g), torch.isnan(r)):
        return False
    fin = torch.isfinite(r)
    if not torch.equal(g[~fin & ~torch.isnan(r)], r[~fin & ~torch.isnan(r)]):
        return False
    g, r = g[fin], r[fin]
    if g.numel() == 0:
        return True
    if not torch.isfinite(g).all():
        return False
    err = (g - r).abs().max().item()
    return err <= 1e-4 * r.abs().max().item() or bool(torch.allclose(g, r, rtol=1e-4, atol=1e-5))


@dataclass
class SampleResult:
    category: str
    detail: str = ""


@dataclass
class OpResult:
    name: str
    family: str
    category: str
    samples: list[SampleResult] = field(default_factory=list)

    @property
    def detail(self) -> str:
        for s in self.samples:
            if s.category == self.category:
                return s.detail
        return ""


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    first = msg[0] if msg else ""
    if type(e).__name__ == "UnsupportedOpError" and len(msg) > 1:
        first = "; ".join(m.strip() for m in msg[1:-1])
    return f"{type(e).__name__}: {first[:200]}"


def _matches(cm: Any, mod: SampleModule, ref: list[torch.Tensor]) -> tuple[bool, str]:
    out = cm(*mod.inputs)
    got = _flat_outputs(out if isinstance(out, tuple) else (out,))
    if len(got) != len(ref):
        return False, f"{len(got)} outputs, eager gives {len(ref)}"
    for i, (g, r) in enumerate(zip(got, ref)):
        if not close(g, r):
            if tuple(g.shape) != tuple(r.shape):
                return False, f"output {i}: shape {tuple(g.shape)} vs eager {tuple(r.shape)}"
            d = (g.double() - r.double()).abs()
            return False, f"output {i}: max|err| {d.nan_to_num(float('inf')).max().item():.3g}, max|ref| " \
                          f"{r.double().abs().nan_to_num(0).max().item() if r.numel() else 0:.3g}"
    return True, ""


def run_sample(op: Any, sample: Any) -> SampleResult:
    import vnpu
    from vnpu.frontends.errors import UnsupportedOpError

    mod = SampleModule(op, sample)
    try:
        with torch.no_grad():
            ref_out = mod(*mod.inputs)
        ref = _flat_outputs(ref_out)
        with torch.no_grad():
            torch.manual_seed(1)
            again = _flat_outputs(mod(*mod.inputs))
        if op.name.startswith(RANDOM_PREFIXES) or any(
                not close(a, r) for a, r in zip(again, ref)):
            return SampleResult(RANDOM, "eager differs between runs")
        if not ref or any(t.dtype.is_complex for t in ref) or any(t.dtype.is_complex for t in mod.inputs):
            return SampleResult(NOT_EXPORTABLE, "no real tensor output")
        if any(t.is_sparse or t.layout != torch.strided for t in ref + list(mod.inputs)):
            return SampleResult(NOT_EXPORTABLE, "non-strided tensor")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ep = torch.export.export(mod, mod.inputs)
        if any(torch.Tag.nondeterministic_seeded in getattr(n.target, "tags", ()) for n in ep.graph.nodes):
            return SampleResult(RANDOM, "the exported graph draws random numbers")
    except Exception as e:  # noqa: BLE001 - whatever eager or torch.export refuse is out of scope
        return SampleResult(NOT_EXPORTABLE, _short(e))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            cm = vnpu.compile(mod, mod.inputs, strict=True)
            ok, why = _matches(cm, mod, ref)
            return SampleResult(PASS if ok else MISMATCH, why)
        except UnsupportedOpError as e:
            strict_why = _short(e)
        except Exception as e:  # noqa: BLE001
            return SampleResult(UNSUPPORTED if is_vnpu_error(e) else CRASH, _short(e))
        try:
            cm = vnpu.compile(mod, mod.inputs, strict=False)
            ok, why = _matches(cm, mod, ref)
            return SampleResult(FALLBACK if ok else MISMATCH, strict_why if ok else why)
        except Exception as e:  # noqa: BLE001
            return SampleResult(UNSUPPORTED if is_vnpu_error(e) else CRASH, _short(e))


def run_op(op: Any, max_samples: int = 2) -> OpResult:
    """The op over its first `max_samples` exportable fp32 samples; its category is the worst one."""
    res = OpResult(op_id(op), family(op.name), NOT_EXPORTABLE)
    try:
        samples = op.sample_inputs("cpu", torch.float32)
        tried = 0
        for sample in samples:
            if tried >= max_samples:
                break
            torch.manual_seed(0)
            r = run_sample(op, sample)
            if r.category in (NOT_EXPORTABLE, RANDOM):
                if not res.samples:
                    res.samples.append(r)
                continue
            if res.samples and res.samples[0].category in (NOT_EXPORTABLE, RANDOM):
                res.samples.clear()
            res.samples.append(r)
            tried += 1
    except Exception as e:  # noqa: BLE001 - the sample generator itself failed
        if not any(s.category not in (NOT_EXPORTABLE, RANDOM) for s in res.samples):
            res.samples = [SampleResult(NOT_EXPORTABLE, f"samples: {_short(e)}")]
    cats = {s.category for s in res.samples}
    res.category = next((c for c in SEVERITY if c in cats), RANDOM if RANDOM in cats else NOT_EXPORTABLE)
    return res


def subset(ops: list, every: int) -> list:
    """Every `every`-th op of the (fixed, name-sorted) list: a deterministic CI subset."""
    ops = sorted(ops, key=op_id)
    return ops[::max(every, 1)]

