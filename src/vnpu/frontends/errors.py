"""Errors and warnings shared by every frontend (torch, ONNX, TensorFlow)."""
from __future__ import annotations


class UnsupportedOpError(NotImplementedError):
    """Raised under strict=True; lists every op the chip cannot run (and, where the
    framework names its nodes, which nodes)."""

    def __init__(self, ops: dict[str, int], where: str = "vnpu/frontends/torch/aten_ops.py",
                 nodes: dict[str, list[str]] | None = None):
        self.ops = ops
        self.nodes = nodes or {}

        def line(op: str, n: int) -> str:
            names = self.nodes.get(op)
            shown = f": nodes {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}" if names else ""
            return f"  {op}  (x{n}){shown}"

        lines = "\n".join(line(op, n) for op, n in sorted(ops.items()))
        super().__init__(f"{len(ops)} op(s) have no vnpu lowering and strict=True forbids host fallback:\n{lines}\n"
                         f"Pass strict=False to run them on the host CPU, or add an entry in {where}.")


class DataDependentShapeError(ValueError):
    """A tensor's shape depends on tensor values (nonzero, argwhere, masked_select, ...): programs
    are compiled for static shapes, so neither the chip nor host fallback inside a program can run it."""


class ModelExportError(ValueError):
    """torch.export could not trace the model with the example inputs given (wrong shapes, dtypes
    or count, or Python the tracer cannot follow): the framework's own reason, in one line."""


class FallbackWarning(UserWarning):
    """Some ops of the model run on the host CPU instead of the chip."""


class MissingExtraError(ImportError):
    """An optional dependency (a pip extra of vnpu) is not installed."""

    def __init__(self, extra: str, module: str):
        self.extra = extra
        super().__init__(f"this needs the {module!r} package, which is not installed: pip install \"vnpu[{extra}]\"")


def require(module: str, extra: str):  # noqa: ANN201 - returns the imported module
    """Imports an optional dependency, or raises MissingExtraError naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(extra, module) from None
