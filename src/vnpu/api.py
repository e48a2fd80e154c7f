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
               fallback_ops: dict[str, int] | None = None, quant: str | None = None,
               calibration: Any = None, calibration_method: str = "minmax") -> CompiledModel:
    chip_ = load_chip(chip)
    dt = DType(dtype)
    output_dtypes = [v.dtype for v in graph.outputs]
    quant_bytes: list[int] = []
    plan = None
    if quant is not None:
        plan = quant_plan(graph, chip_, dt, quant, calibration, calibration_method)
        stats = quant_stats(graph, dt, plan)
        quant_bytes = [stats.weight_elems * dt.itemsize, stats.quant_bytes]
    program, optimized = compile_graph(graph, chip_, dt, quant=plan)
    info = ModelInfo(name or graph.name, dt, [r.shape for _, r in program.user_inputs()], output_dtypes,
                     dict(fallback_ops or {}),
                     str(optimized), quant or "", quant_bytes)
    return CompiledModel(program, chip_, info)


def quant_plan(graph: Graph, chip: Chip, dtype: DType, quant: str, calibration: Any = None,
               calibration_method: str = "minmax") -> Any:
    """The QuantPlan compile_graph quantizes `graph` with under scheme `quant` (compiler/quantize.py);
    static schemes calibrate on `calibration` (example batches)."""
    from vnpu.compiler.quantize import QuantError, QuantPlan, check_chip, get_scheme

    scheme = get_scheme(quant)
    check_chip(scheme, chip)
    if not scheme.needs_calibration:
        return QuantPlan(scheme)
    if not calibration:
        raise QuantError(f"scheme {quant} needs calibration (activation ranges): pass calibration="
                         "[example batches] (each a tuple of the model's inputs)")
    from vnpu.runtime.calibrate import activation_stats

    ranges, channels = activation_stats(graph, chip, calibration, calibration_method)
    return QuantPlan(scheme, ranges, channels)


def quant_stats(graph: Graph, dtype: DType, plan: Any) -> Any:
    """What `plan` quantizes in `graph`: QuantStats (matmuls, weight elements, quantized bytes)."""
    from vnpu.compiler.lower import prequant_passes
    from vnpu.compiler.quantize import quantize

    g = graph.clone()
    prequant_passes(g, dtype)
    return quantize(g, plan.scheme, plan.act_ranges, plan.channel_ranges)


def compile(model: Any, example_inputs: tuple | list, chip: str | Chip = DEFAULT_CHIP, dtype: str | DType = "fp32",
            strict: bool = False, example_kwargs: dict | None = None, name: str | None = None,
            quant: str | None = None, calibration: Any = None, calibration_method: str = "minmax") -> CompiledModel:
    """Compiles a torch.nn.Module for the chip through torch.export and Core ATen.

    Ops without a vnpu lowering run on the host with one warning listing them;
    strict=True raises UnsupportedOpError listing every such op instead.
    `quant`: a post-training quantization scheme (vnpu.compiler.quantize.SCHEMES, e.g.
    "w8a8-int8"); static ones calibrate on `calibration`, a list of example batches.
    """
    if quant is not None:  # a bad scheme or chip is refused before the model is traced
        from vnpu.compiler.quantize import check_chip, get_scheme

        check_chip(get_scheme(quant), load_chip(chip))
    from vnpu.frontends.torch import export_module

    res = export_module(model, tuple(example_inputs), example_kwargs, strict=strict)
    return compile_ir(res.graph, chip, dtype, name or type(model).__name__, res.fallback_ops, quant, calibration,
                      calibration_method)


def from_onnx(model: Any, chip: str | Chip = DEFAULT_CHIP, dtype: str | DType = "fp32",
              input_shapes: dict[str, tuple[int, ...]] | None = None, strict: bool = False,
              name: str | None = None, quant: str | None = None, calibration: Any = None,
              calibration_method: str = "minmax") -> CompiledModel:
    """Compiles an ONNX model (a path, bytes or onnx.ModelProto; opset 13 and newer) for the chip.

    `input_shapes` gives the shape of each input whose dims are dynamic in the model (a
    dynamic dim without one is an error naming it). Nodes without a vnpu lowering run on
    the host (with onnx.reference) with one warning naming them; strict=True raises
    UnsupportedOpError naming every such op type and node instead. Needs `vnpu[onnx]`.
    """
    from pathlib import Path

    from vnpu.frontends.onnx import import_onnx

    default = Path(model).stem if isinstance(model, (str, Path)) else None
    if quant is not None:
        from vnpu.compiler.quantize import check_chip, get_scheme

        check_chip(get_scheme(quant), load_chip(chip))
    res = import_onnx(model, input_shapes, name=name or default, strict=strict)
    return compile_ir(res.graph, chip, dtype, name or res.graph.name, res.fallback_ops, quant, calibration,
                      calibration_method)


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


DEFAULT_CACHE_SIZE = 8  # programs kept per torch.compile graph (like Dynamo's own recompile limit)


class RecompileWarning(UserWarning):
    """A torch.compile graph met more call signatures than its program cache holds."""


def vnpu_backend(gm: Any, example_inputs: list, **kwargs: Any) -> Any:
    """torch.compile backend (entry point `torch_dynamo_backends: vnpu`).

    Options (torch.compile(..., options={...})): chip, dtype, strict, cache_size. Dynamo's
    graphs may have symbolic sizes (dynamic=True, mark_dynamic, automatic dynamic after a
    shape change); chip programs are compiled for concrete shapes, so each call is
    specialized on its signature (tensor shapes and dtypes, the values of int/float/bool
    inputs and of scalar tensors the graph reads with .item()) and one program per
    signature is kept, at most `cache_size` (default 8), least recently used evicted with a
    one-time RecompileWarning. The first program is built at the first call, so errors
    (UnsupportedOpError under strict=True) reach the caller unwrapped.
    """
    import collections
    import warnings

    import torch

    from vnpu.dtypes import numpy_to_torch, torch_to_numpy
    from vnpu.frontends.torch import DynamoTrace, scalar_item_inputs, trace_fx

    opts = dict(kwargs.get("options") or {})
    unknown = set(opts) - {"chip", "dtype", "strict", "cache_size"}
    if unknown:
        raise ValueError(f"vnpu backend: unknown option(s) {sorted(unknown)}; known: chip, dtype, strict, cache_size")
    chip = opts.get("chip", DEFAULT_CHIP)
    dtype = opts.get("dtype", "fp32")
    strict = bool(opts.get("strict", False))
    cache_size = opts.get("cache_size", DEFAULT_CACHE_SIZE)
    if not isinstance(cache_size, int) or isinstance(cache_size, bool) or cache_size < 1:
        raise ValueError(f"vnpu backend: options['cache_size'] must be an int >= 1, got {cache_size!r}")
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    const_idx = set()
    for i, (node, ex) in enumerate(zip(placeholders, example_inputs)):
        src = str(node.meta.get("grapharg", "") or "") + node.name
        if isinstance(ex, torch.Tensor) and (isinstance(ex, torch.nn.Parameter) or "_parameters_" in src or "_buffers_" in src):
            const_idx.add(i)
    value_idx = scalar_item_inputs(gm) - const_idx
    versions = {i: (id(example_inputs[i]), example_inputs[i]._version) for i in const_idx}
    cache: collections.OrderedDict[tuple, tuple[CompiledModel | None, DynamoTrace]] = collections.OrderedDict()
    stats = {"builds": 0, "evictions": 0, "warned": False}

    def signature(args: tuple) -> tuple:
        key: list = []
        for i, a in enumerate(args):
            if i in const_idx:
                continue  # weights: checked by identity and version instead
            if isinstance(a, torch.Tensor):
                key.append((tuple(a.shape), a.dtype, a.item() if i in value_idx else None))
            else:
                key.append((type(a).__name__, a))
        return tuple(key)

    def build(args: tuple) -> tuple[CompiledModel | None, DynamoTrace]:
        traced = trace_fx(gm, list(args), const_idx, strict=strict, value_indices=value_idx)
        res = traced.result
        # a graph whose results are all Python numbers fixed by the signature needs no program
        cm = compile_ir(res.graph, chip, dtype, "torch.compile graph", res.fallback_ops) if res.graph.outputs else None
        stats["builds"] += 1
        return cm, traced

    def lookup(args: tuple) -> tuple[CompiledModel | None, DynamoTrace]:
        key = signature(args)
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        entry = cache[key] = build(args)
        if len(cache) > cache_size:
            cache.popitem(last=False)
            stats["evictions"] += 1
            if not stats["warned"]:
                stats["warned"] = True
                warnings.warn(
                    f"vnpu: a torch.compile graph has been compiled for {stats['builds']} different call "
                    f"signatures (shapes / scalar values), more than its cache holds (cache_size={cache_size}); "
                    "least recently used programs are evicted and rebuilt when needed. If every call has new "
                    "shapes (e.g. a growing sequence), pad inputs to a few fixed sizes, or raise "
                    "options={'cache_size': N}.", RecompileWarning, stacklevel=3)
        return entry

    def run(*args: Any) -> Any:
        for i, (oid, ver) in versions.items():
            if id(args[i]) != oid or args[i]._version != ver:  # weights changed: start over
                versions[i] = (id(args[i]), args[i]._version)
                cache.clear()
        cm, traced = lookup(args)
        run.vnpu_model = cm  # type: ignore[attr-defined]  # the program of the latest call
        outs = cm.run_numpy([torch_to_numpy(args[i]) for i in traced.runtime_indices]) if cm is not None else []
        for i, k in traced.mutations:  # the graph updated this input in place
            args[i].copy_(numpy_to_torch(outs[k]))
        return tuple(numpy_to_torch(outs[k]) if from_program else k for from_program, k in traced.outputs)

    run.vnpu_cache = cache  # type: ignore[attr-defined]
    run.vnpu_stats = stats  # type: ignore[attr-defined]
    return run


def generate(model: str, prompt_len: int = 16, max_new_tokens: int = 32, batch: int = 1, chip: str | Chip = DEFAULT_CHIP,
             dtype: str | DType = "bf16", timing_only: bool | None = None, top_k: int | None = None,
             temperature: float = 1.0, seed: int = 0, quant: str | None = None, kv_cache: str | None = None) -> Any:
    """Generation of a zoo LLM on the chip (see vnpu.runtime.llm.generate), greedy or, with
    top_k, top-k sampling at `temperature` (Gumbel noise from np.random.default_rng(seed)):
    returns a GenerationReport with tokens, ttft_s, tpot_s, tokens_per_s, energy_per_token_j
    and memory. `quant`: a post-training scheme for every linear layer; `kv_cache`: "fp8" for an
    fp8 KV cache (a scale per token and head)."""
    from vnpu.runtime.llm import generate as _generate

    return _generate(model, prompt_len, max_new_tokens, batch, chip, dtype, timing_only, top_k=top_k,
                     temperature=temperature, seed=seed, quant=quant, kv_cache=kv_cache)
