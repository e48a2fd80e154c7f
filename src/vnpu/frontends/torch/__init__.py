"""PyTorch frontend: torch.export / FX graphs in Core ATen -> vnpu IR."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

from vnpu.frontends.errors import DataDependentShapeError, ModelExportError
from vnpu.frontends.torch.importer import (ATEN, DataDependentValueError, FallbackWarning, ImportResult,
                                           UnsupportedOpError, constant_placeholders, import_fx, op_name)


def export_module(model: torch.nn.Module, example_inputs: tuple, example_kwargs: dict | None = None,
                  strict: bool = False) -> ImportResult:
    """torch.export -> Core ATen decomposition -> IR."""
    try:
        model.eval()  # not reassigned: a converted pt2e GraphModule's eval() returns None (or refuses)
    except NotImplementedError:
        pass  # a pt2e GraphModule without allow_exported_model_train_eval: it is in inference form already
    with torch.no_grad():
        try:
            ep = torch.export.export(model, tuple(example_inputs), kwargs=example_kwargs or None)
        except GuardOnDataDependentSymNode:
            raise
        except Exception as e:  # noqa: BLE001 - whatever the tracer or the model raised, named as one line
            shapes = [tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__ for x in example_inputs]
            first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
            raise ModelExportError(f"torch.export could not trace {type(model).__name__} with example inputs "
                                   f"{shapes}: {type(e).__name__}: {first[:300]}. Check that the inputs are what "
                                   "its forward takes") from None
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


class DynamoGraphError(ValueError):
    """A torch.compile graph that the chip cannot run as one program for its call signature."""


@dataclass
class DynamoTrace:
    """A Dynamo graph specialized to one concrete call signature and imported.

    `runtime_indices`: the call arguments, in order, that feed the program's inputs (weights,
    Python scalars and value-specialized scalar tensors do not). `outputs`: one entry per
    graph output, `(True, k)` for the program's k-th output or `(False, value)` for a Python
    value the signature fixes (a SymInt the graph returns, a size, a constant)."""
    result: ImportResult
    runtime_indices: list[int]
    outputs: list[tuple[bool, Any]]
    mutations: list[tuple[int, int]] = field(default_factory=list)  # (call argument, program output) to write back


def scalar_item_inputs(gm: torch.fx.GraphModule) -> set[int]:
    """Indices of the Dynamo graph's placeholders whose value the graph reads as a Python
    number (`t.item()`, `float(t)`): Dynamo passes unspecialized float attributes (eps,
    dropout p, embedding norm_type) as 0-d tensors. The chip program is specialized on
    their values, which join the cache signature."""
    readers = {"item", "tolist", "__float__", "__int__", "__bool__"}
    out = set()
    for i, ph in enumerate(n for n in gm.graph.nodes if n.op == "placeholder"):
        for user in ph.users:
            target = user.target if user.op == "call_method" else getattr(user.target, "__name__", "")
            if user.op in ("call_method", "call_function") and target in readers | {"_local_scalar_dense"}:
                out.add(i)
    return out


def trace_fx(gm: torch.fx.GraphModule, example_inputs: list[Any], const_indices: set[int],
             strict: bool = False, name: str = "dynamo_graph", value_indices: set[int] | None = None) -> DynamoTrace:
    """A Dynamo FX graph -> Core ATen (make_fx with the core decompositions) -> IR, for the
    concrete `example_inputs` (real tensors, ints, floats, bools: no SymInts).

    Inputs at `const_indices` (parameters, buffers) become weights; inputs at
    `value_indices` (scalar tensors the graph reads as numbers) are baked in as constants,
    so their `.item()` folds to a Python number; the rest are runtime inputs. Symbolic sizes
    are specialized: make_fx sees concrete ints, so sym_size, SymInt arithmetic and shape
    comparisons evaluate in Python and the ATen graph has static shapes only.
    """
    from torch._decomp import core_aten_decompositions
    from torch.fx.experimental.proxy_tensor import make_fx

    for i, a in enumerate(example_inputs):
        if isinstance(a, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            raise DynamoGraphError(f"trace_fx: input {i} is symbolic ({a}); pass its concrete value")
    value_indices = set(value_indices or ())
    fixed = {i: example_inputs[i] for i in value_indices}
    traced_indices = [i for i in range(len(example_inputs)) if i not in fixed]

    def specialized(*args: Any) -> Any:
        it = iter(args)
        return gm(*[fixed[i] if i in fixed else next(it) for i in range(len(example_inputs))])

    table = core_aten_decompositions()
    # kept whole: the chip lowers it to softmax + a fully-masked-row select (aten_ops)
    table.pop(torch.ops.aten._safe_softmax.default, None)
    # functionalized: in-place ops become functional ones, and an input the graph mutates
    # gets one copy_ at the end, which becomes an extra program output written back per call
    args = [example_inputs[i] for i in traced_indices]
    with torch.no_grad():
        if _has_functorch_transforms(gm):
            # vmap inside the graph (transformers' associative scans) cannot run under functionalize's
            # transform layer (a functorch INTERNAL ASSERT): trace it to ATen first, which removes
            # the batching, then functionalize that graph
            plain = make_fx(specialized, decomposition_table=table, tracing_mode="fake")(*args)
            aten_gm = make_fx(torch.func.functionalize(plain, remove="mutations"), tracing_mode="fake")(*args)
        else:
            aten_gm = make_fx(torch.func.functionalize(specialized, remove="mutations"), decomposition_table=table,
                              tracing_mode="fake")(*args)
    phs = [n for n in aten_gm.graph.nodes if n.op == "placeholder"]
    by_input = dict(zip(traced_indices, phs))
    consts = {by_input[i].name: example_inputs[i] for i in const_indices if i in by_input}
    mutated = _mutations_as_outputs(aten_gm, {ph: i for i, ph in by_input.items()}, const_indices)
    keep, outputs = _split_outputs(aten_gm)
    n_user = len(outputs) - len(mutated)
    res = import_fx(aten_gm, consts, name=name, strict=strict, user_outputs=keep)
    runtime = [i for i in traced_indices if isinstance(example_inputs[i], torch.Tensor) and i not in const_indices]
    return DynamoTrace(res, runtime, outputs[:n_user], [(i, outputs[n_user + j][1]) for j, i in enumerate(mutated)])


def _has_functorch_transforms(gm: torch.fx.GraphModule) -> bool:
    """Whether the Dynamo graph enters a functorch transform itself (vmap's predispatch calls)."""
    return any(n.op == "call_function" and getattr(n.target, "__module__", "") == "torch._functorch.predispatch"
               for n in gm.graph.nodes)


def _mutations_as_outputs(gm: torch.fx.GraphModule, input_of: dict, const_indices: set[int]) -> list[int]:
    """Turns each `copy_(input, new)` functionalization left for a mutated graph input into an
    extra graph output `new`; returns the mutated inputs' indices, in output order."""
    copies = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is torch.ops.aten.copy_.default
              and n.args[0] in input_of]
    if not copies:
        return []
    mutated = []
    for c in copies:
        i = input_of[c.args[0]]
        if i in const_indices:
            raise DynamoGraphError(f"vnpu: the graph updates weight/buffer input {c.args[0].name} in place; "
                                   "chip programs hold weights as constants (use eval mode, or keep the state "
                                   "outside the model)")
        mutated.append(i)
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    outs = out_node.args[0]
    outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
    for c in copies:
        c.replace_all_uses_with(c.args[1])
        outs.append(c.args[1])
        gm.graph.erase_node(c)
    out_node.args = (tuple(outs),)
    gm.recompile()
    return mutated


def _split_outputs(gm: torch.fx.GraphModule) -> tuple[list[bool], list[tuple[bool, Any]]]:
    """Which graph outputs are tensors (the program's outputs), and where each output comes
    from: `(True, k)` the program's k-th output, `(False, v)` the Python value v."""
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    outs = out_node.args[0]
    outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
    keep: list[bool] = []
    where: list[tuple[bool, Any]] = []
    for o in outs:
        is_tensor = isinstance(o, torch.fx.Node) and isinstance(o.meta.get("val"), torch.Tensor)
        if isinstance(o, torch.fx.Node) and not is_tensor:
            raise DataDependentValueError(f"vnpu: graph output {o.name} is a data-dependent number ({o.meta.get('val')}); "
                                   "only tensors and sizes fixed by the input shapes can be returned")
        where.append((True, sum(keep)) if is_tensor else (False, o))
        keep.append(is_tensor)
    return keep, where


__all__ = ["export_module", "export_aten", "import_exported", "to_core_aten", "trace_fx", "DynamoTrace", "DynamoGraphError", "DataDependentValueError", "scalar_item_inputs", "ImportResult", "UnsupportedOpError", "FallbackWarning", "ATEN"]
