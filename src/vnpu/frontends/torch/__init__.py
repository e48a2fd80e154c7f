"""PyTorch frontend: torch.export / FX graphs in Core ATen -> vnpu IR."""
from __future__ import annotations

from typing import Any

import torch
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

from vnpu.frontends.errors import DataDependentShapeError
from vnpu.frontends.torch.importer import (ATEN, FallbackWarning, ImportResult, UnsupportedOpError,
                                           constant_placeholders, import_fx, op_name)


def export_module(model: torch.nn.Module, example_inputs: tuple, example_kwargs: dict | None = None,
                  strict: bool = False) -> ImportResult:
    """torch.export -> Core ATen decomposition -> IR."""
    model = model.eval()
    with torch.no_grad():
        ep = torch.export.export(model, tuple(example_inputs), kwargs=example_kwargs or None)
        ep = to_core_aten(ep)
    return import_exported(ep, type(model).__name__, strict)


def to_core_aten(ep: "torch.export.ExportedProgram") -> "torch.export.ExportedProgram":
    """Core-ATen decomposition, except scaled_dot_product_attention, which the chip runs
    as one fused attention kernel (aten_ops lowers the cases it cannot to matmul/softmax)."""
    table = torch.export.default_decompositions()
    table.pop(torch.ops.aten.scaled_dot_product_attention.default, None)
    for op in KEPT_WHOLE:  # lowered whole (frontends/spatial.py) rather than as dozens of index/elementwise ops
        for overload in ("vec", "default"):
            table.pop(getattr(getattr(torch.ops.aten, op), overload), None)
    return ep.run_decompositions(table)


# interpolation ops kept whole by to_core_aten: each is one matmul (or gather) per axis on the chip
KEPT_WHOLE = ("upsample_bicubic2d", "upsample_linear1d", "upsample_trilinear3d", "upsample_nearest1d",
              "upsample_nearest3d", "_upsample_nearest_exact1d", "_upsample_nearest_exact2d", "_upsample_nearest_exact3d",
              "_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa")


def export_aten(model: torch.nn.Module, example_inputs: tuple) -> "torch.export.ExportedProgram":
    """torch.export straight to functional ATen in one trace (no pre-dispatch IR and no
    second trace by run_decompositions: ~2.5x faster on a decoder step, which matters when
    an LLM session exports a prefill and a decode program per run). Composite ops are
    decomposed by dispatch, so scaled_dot_product_attention is not kept whole: use it for
    models that call vnpu's own attention op. Falls back to `to_core_aten(export(...))`
    when the ATen graph has an op without an importer entry, or if this torch lacks the
    (private) one-trace entry point."""
    try:
        from torch.export._trace import _export
    except ImportError:  # pragma: no cover - torch without the one-trace entry point
        _export = None
    try:
        ep = _export(model, tuple(example_inputs), strict=False, pre_dispatch=False) if _export else None
    except TypeError:  # the private entry point's signature changed: take the public path
        ep = None
    if ep is not None:
        from vnpu.frontends.torch import aten_ops  # noqa: F401  (registers the handlers)

        ops = {op_name(n.target) for n in ep.graph.nodes
               if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)}
        if ops <= ATEN.keys():
            return ep
    return to_core_aten(torch.export.export(model, tuple(example_inputs)))


def import_exported(ep: "torch.export.ExportedProgram", name: str, strict: bool = False) -> ImportResult:
    """An ExportedProgram (core ATen) -> IR. Buffers the program mutates become persistent state."""
    sig = ep.graph_signature
    keep = [spec.kind.name == "USER_OUTPUT" for spec in sig.output_specs]
    mutated = {spec.target: spec.arg.name for spec in sig.output_specs if spec.kind.name == "BUFFER_MUTATION"}
    mutations = {spec.arg.name: mutated[spec.target] for spec in sig.input_specs
                 if spec.kind.name == "BUFFER" and spec.target in mutated}
    weights = {spec.arg.name for spec in sig.input_specs if spec.kind.name in ("PARAMETER", "BUFFER")}
    try:
        return import_fx(ep.graph_module, constant_placeholders(ep), name=name, strict=strict, user_outputs=keep,
                         mutations=mutations, weight_placeholders=weights - set(mutations))
    except GuardOnDataDependentSymNode as e:
        raise DataDependentShapeError(f"{name}: a tensor shape depends on tensor values ({str(e).splitlines()[0]}); "
                                      "vnpu compiles static shapes: compute that part outside the model") from None


def trace_fx(gm: torch.fx.GraphModule, example_inputs: list[Any], const_indices: set[int],
             strict: bool = False, name: str = "dynamo_graph") -> ImportResult:
    """A Dynamo FX graph -> Core ATen (make_fx with the core decompositions) -> IR.

    Inputs at `const_indices` (parameters, buffers) become weights; the rest runtime inputs.
    """
    from torch._decomp import core_aten_decompositions
    from torch.fx.experimental.proxy_tensor import make_fx

    with torch.no_grad():
        aten_gm = make_fx(gm, decomposition_table=core_aten_decompositions(), tracing_mode="fake")(*example_inputs)
    phs = [n for n in aten_gm.graph.nodes if n.op == "placeholder"]
    consts = {phs[i].name: example_inputs[i] for i in const_indices}
    return import_fx(aten_gm, consts, name=name, strict=strict)


__all__ = ["export_module", "export_aten", "import_exported", "to_core_aten", "trace_fx", "ImportResult", "UnsupportedOpError", "FallbackWarning", "ATEN"]
