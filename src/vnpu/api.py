"""Public entry points: `vnpu.compile` (torch.export, ahead of time), the
`torch.compile(backend="vnpu")` backend, `vnpu.from_onnx` and `vnpu.from_tensorflow`.
They wire frontend -> compiler -> runtime."""
from __future__ import annotations

from typing import Any

from vnpu.chip import DEFAULT_CHIP, load_chip
from vnpu.chip.schema import Chip
from vnpu.compiler import compile_graph
from vnpu.dtypes import DType
from vnpu.ir.graph import Graph
from vnpu.runtime.compiled import CompiledModel, ModelInfo


def compile_ir(graph: Graph, chip: str | Chip = DEFAULT_CHIP, dtype: str | DType = "fp32", name: str | None = None,
               fallback_ops: dict[str, int] | None = None) -> CompiledModel:
    chip_ = load_chip(chip)
    dt = DType(dtype)
    output_dtypes = [v.dtype for v in graph.outputs]
    program, optimized = compile_graph(graph, chip_, dt)
    info = ModelInfo(name or graph.name, dt, [r.shape for _, r in program.user_inputs()], output_dtypes,
                     dict(fallback_ops or {}),
                     str(optimized))
    return CompiledModel(program, chip_, info)


def compile(model: Any, example_inputs: tuple | list, chip: str | Chip = DEFAULT_CHIP, dtype: str | DType = "fp32",
            strict: bool = False, example_kwargs: dict | None = None, name: str | None = None) -> CompiledModel:
    """Compiles a torch.nn.Module for the chip through torch.export and Core ATen.

    Ops without a vnpu lowering run on the host with one warning listing them;
    strict=True raises UnsupportedOpError listing every such op instead.
    """
    from vnpu.frontends.torch import export_module

    res = export_module(model, tuple(example_inputs), example_kwargs, strict=strict)
    return compile_ir(res.graph, chip, dtype, name or type(model).__name__, res.fallback_ops)


def from_onnx(model: Any, chip: str | Chip = DEFAULT_CHIP, dtype: str | DType = "fp32",
              input_shapes: dict[str, tuple[int, ...]] | None = None, strict: bool = False,
              name: str | None = None) -> CompiledModel:
    """Compiles an ONNX model (a path, bytes or onnx.ModelProto; opset 13 and newer) for the chip.

    `input_shapes` gives the shape of each input whose dims are dynamic in the model (a
    dynamic dim without one is an error naming it). Nodes without a vnpu lowering run on
    the host (with onnx.reference) with one warning naming them; strict=True raises
    UnsupportedOpError naming every such op type and node instead. Needs `vnpu[onnx]`.
    """
    from pathlib import Path

    from vnpu.frontends.onnx import import_onnx

    default = Path(model).stem if isinstance(model, (str, Path)) else None
    res = import_onnx(model, input_shapes, name=name or default, strict=strict)
    return compile_ir(res.graph, chip, dtype, name or res.graph.name, res.fallback_ops)


def from_tensorflow(model: Any, input_signature: Any = None, chip: str | Chip = DEFAULT_CHIP,
                    dtype: str | DType = "fp32", strict: bool = False, name: str | None = None) -> CompiledModel:
    """Compiles a Keras 3 model, a tf.function or a SavedModel directory for the chip
    (converted with tf2onnx, then imported like any ONNX model). Call the result with TF
    tensors or NumPy arrays; it returns the same kind.

    `input_signature`: a list of tf.TensorSpec (or shapes) with every dim fixed; optional
    when the model's own inputs are fully static or only their batch dim is unknown
    (then batch 1 is compiled). Needs `vnpu[tensorflow]`.
    """
    from vnpu.frontends.tensorflow import tensorflow_to_onnx

    proto, default = tensorflow_to_onnx(model, input_signature)
    from vnpu.frontends.onnx import import_onnx

    res = import_onnx(proto, name=name or default, strict=strict)
    return compile_ir(res.graph, chip, dtype, name or default, res.fallback_ops)


def _concrete(x: Any) -> Any:
    """A SymInt's hint as a plain int (programs are compiled for concrete shapes)."""
    import torch

    if isinstance(x, torch.SymInt):
        return int(x.node.hint)
    return x


def vnpu_backend(gm: Any, example_inputs: list, **kwargs: Any) -> Any:
    """torch.compile backend (entry point `torch_dynamo_backends: vnpu`).

    Options (torch.compile(..., options={...})): chip, dtype, strict. Programs are
    compiled for concrete shapes; a call with new shapes (Dynamo's dynamic-shape graphs)
    compiles and caches another program.
    """
    import torch

    from vnpu.dtypes import numpy_to_torch, torch_to_numpy
    from vnpu.frontends.torch import trace_fx

    opts = kwargs.get("options") or {}
    chip = opts.get("chip", DEFAULT_CHIP)
    dtype = opts.get("dtype", "fp32")
    strict = opts.get("strict", False)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    const_idx = set()
    for i, (node, ex) in enumerate(zip(placeholders, example_inputs)):
        src = str(node.meta.get("grapharg", "") or "") + node.name
        if isinstance(ex, torch.Tensor) and (isinstance(ex, torch.nn.Parameter) or "_parameters_" in src or "_buffers_" in src):
            const_idx.add(i)
    versions = {i: (id(example_inputs[i]), example_inputs[i]._version) for i in const_idx}
    cache: dict[tuple, tuple[CompiledModel, list[int]]] = {}

    def signature(args: list) -> tuple:
        return tuple(tuple(a.shape) if isinstance(a, torch.Tensor) else _concrete(a) for a in args)

    def build(args: list) -> tuple[CompiledModel, list[int]]:
        concrete = [_concrete(a) for a in args]
        res = trace_fx(gm, concrete, const_idx, strict=strict)
        cm = compile_ir(res.graph, chip, dtype, "torch.compile graph", res.fallback_ops)
        runtime_idx = [i for i, a in enumerate(concrete) if isinstance(a, torch.Tensor) and i not in const_idx]
        return cm, runtime_idx

    def run(*args: Any) -> Any:
        for i, (oid, ver) in versions.items():
            if id(args[i]) != oid or args[i]._version != ver:  # weights changed: start over
                return vnpu_backend(gm, list(args), **kwargs)(*args)
        key = signature(list(args))
        if key not in cache:
            cache[key] = build(list(args))
        cm, runtime_idx = cache[key]
        outs = cm.run_numpy([torch_to_numpy(args[i]) for i in runtime_idx])
        return tuple(numpy_to_torch(o) for o in outs)

    first = build(list(example_inputs))
    cache[signature(list(example_inputs))] = first
    run.vnpu_model = first[0]  # type: ignore[attr-defined]
    return run


def generate(model: str, prompt_len: int = 16, max_new_tokens: int = 32, batch: int = 1, chip: str | Chip = DEFAULT_CHIP,
             dtype: str | DType = "bf16", timing_only: bool | None = None, top_k: int | None = None,
             temperature: float = 1.0, seed: int = 0) -> Any:
    """Generation of a zoo LLM on the chip (see vnpu.runtime.llm.generate), greedy or, with
    top_k, top-k sampling at `temperature` (Gumbel noise from np.random.default_rng(seed)):
    returns a GenerationReport with tokens, ttft_s, tpot_s, tokens_per_s, energy_per_token_j
    and memory."""
    from vnpu.runtime.llm import generate as _generate

    return _generate(model, prompt_len, max_new_tokens, batch, chip, dtype, timing_only, top_k=top_k,
                     temperature=temperature, seed=seed)
