"""The compiler driver: IR graph -> passes -> memory plan -> kernels -> Program."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from vnpu.chip.schema import Chip
from vnpu.dtypes import DType
from vnpu.gcpause import gc_paused
from vnpu.ir.graph import Graph, Node
from vnpu.ir.ops import OPS
from vnpu.ir.verify import verify
from vnpu.isa.instructions import HbmRef
from vnpu.isa.program import CollectiveLaunch, HostLaunch, KernelLaunch, Program
from vnpu.kernels import KERNELS, KernelContext
from vnpu.compiler.fusion import fuse
from vnpu.compiler.memory import check_state, copy_on_write, materialize_views, plan_memory
from vnpu.compiler.quantize import QuantPlan, check_chip, quantize
from vnpu.compiler.passes import legalize, set_precision, split_decode_attention, unfuse_oversized_attention
from vnpu.compiler.patterns import rewrite_llm_patterns


class CompileError(RuntimeError):
    pass


@dataclass
class KernelCache:
    """Kernels lowered by timing-only compiles, by timing key (-> the first node's name and its
    launches), for the programs of one chip (the key does not name the chip)."""

    chip_fingerprint: str = ""
    lowered: dict[str, tuple[str, list[KernelLaunch]]] = field(default_factory=dict)


def chip_fingerprint(chip: Chip) -> str:
    return hashlib.sha256(chip.model_dump_json().encode()).hexdigest()[:16]


def prequant_passes(g: Graph, dtype: DType, kv_cache: DType | None = None) -> None:
    """The passes before quantization (in place): what calibration must see too, so that the
    activations it measures carry the names the quantization pass looks up."""
    set_precision(g, dtype)
    rewrite_llm_patterns(g, kv_cache)  # merged Q/K/V and gate/up matmuls quantize as one


def optimize(graph: Graph, dtype: DType, chip: Chip | None = None, quant: QuantPlan | None = None,
             kv_cache: DType | None = None) -> Graph:
    """Runs the graph passes on a copy: precision, LLM patterns (and a quantized KV cache in
    `kv_cache`'s format), quantization (`quant`), legalization, fusion, layout. With `chip`, also
    the rewrites that depend on its sizes (attention too large for its scratchpad)."""
    g = graph.clone()
    prequant_passes(g, dtype, kv_cache)
    if quant is not None:
        quantize(g, quant.scheme, quant.act_ranges, quant.channel_ranges,
                 prologue_bytes=chip.core.scratchpad.bytes // 4 if chip is not None else 0)
    legalize(g)
    if chip is not None:
        unfuse_oversized_attention(g, chip, dtype)
    fuse(g)
    materialize_views(g)
    verify(g)
    return g


def _attr_key(v: Any) -> Any:
    if isinstance(v, dict):
        return tuple((k, _attr_key(x)) for k, x in sorted(v.items(), key=lambda kv: str(kv[0])))
    if isinstance(v, (list, tuple)):
        return tuple(_attr_key(x) for x in v)
    if isinstance(v, np.ndarray):
        flat = v.reshape(-1) if v.size <= 1 << 16 else np.concatenate([v.reshape(-1)[:4096], v.reshape(-1)[-4096:]])
        return ("array", v.shape, v.strides, str(v.dtype), hashlib.blake2b(np.ascontiguousarray(flat).tobytes(),
                                                                           digest_size=16).hexdigest())
    return repr(v)


def kernel_timing_key(node: Node, refs: list[HbmRef], scalars: list[float | None], dtype: DType) -> str:
    """What a kernel's instruction streams, and so its timing, depend on: the op, its
    attributes, the shapes, strides and dtypes of its operands, which operands share an
    address, its immediates and the precision; not where in HBM the operands live. Each
    launch starts on an idle chip after a barrier, so launches with equal keys (a
    transformer's identical layers, a ResNet stage's repeated blocks) take the same cycles
    and timing-only runs simulate one of them (sim/device.py). Distinct operands are assumed
    not to overlap partially (views of one buffer would have to coincide tile for tile)."""
    alias: dict[int, int] = {}
    operands = tuple((r.shape, r.strides, r.dtype.value, alias.setdefault(r.offset, len(alias))) for r in refs)
    key = (node.op, _attr_key(node.attrs), operands, tuple(scalars), dtype.value)
    return hashlib.blake2b(repr(key).encode(), digest_size=16).hexdigest()


@gc_paused()
def compile_graph(graph: Graph, chip: Chip, dtype: DType | str = DType.fp32, pinned: dict[str, int] | None = None,
                  base: int = 0, timing_only: bool = False,
                  kernel_cache: KernelCache | None = None, quant: QuantPlan | None = None,
                  kv_cache: DType | None = None) -> tuple[Program, Graph]:
    """`pinned`/`base`: see memory.plan_memory (programs sharing weights and state on one device).
    `kv_cache`: the KV cache's element format when quantized (compiler/kv_cache.py).

    `timing_only`: a node whose timing key was lowered before (an identical layer) reuses that
    kernel's instruction streams instead of being lowered again, since it takes the same time
    (kernel_timing_key). Its streams then address the first node's operands, so the Program
    is marked timing-only and refuses functional runs. `kernel_cache` (timing_only) carries
    the lowered kernels over to the next compile_graph call: programs of one model (an LLM's
    prefill and decode buckets) share their identical kernels (the LM head, say)."""
    dtype = DType(dtype)
    if not chip.supports(dtype):
        raise CompileError(f"{chip.name} has no matrix rate for {dtype}; supported: {', '.join(d.value for d in chip.core.matrix.rate)}")
    verify(graph)
    if quant is not None:
        check_chip(quant.scheme, chip)
    g = optimize(graph, dtype, chip, quant, kv_cache)
    split_decode_attention(g, chip)
    copy_on_write(g)
    try:
        check_state(g)
    except ValueError as e:
        raise CompileError(str(e)) from None
    plan = plan_memory(g, chip.hbm.bytes, chip.name, pinned, base)
    launches: list[KernelLaunch | HostLaunch | CollectiveLaunch] = []
    cache = kernel_cache if kernel_cache is not None else KernelCache()
    fingerprint = chip_fingerprint(chip)
    if cache.chip_fingerprint and cache.chip_fingerprint != fingerprint:
        raise CompileError(f"kernel_cache holds kernels lowered for another chip; use one KernelCache per chip ({chip.name})")
    cache.chip_fingerprint = fingerprint
    lowered = cache.lowered  # timing key -> (first node's name, its launches), when timing_only
    for n in g.nodes:
        kind = OPS[n.op].kind
        if kind == "view" or all(v.type.numel == 0 for v in n.outputs):
            continue  # views move no data; an empty result needs no work
        ins = [plan.refs[id(v)] for v in n.inputs]
        outs = [plan.refs[id(v)] for v in n.outputs]
        if n.op == "host_call":
            launches.append(HostLaunch(n.name, n.attrs["target"], ins, outs, n.attrs.get("payload"), ops=[n.attrs["target"]]))
            continue
        if kind == "collective":
            launches.append(CollectiveLaunch(n.name, n.op, ins, outs, ops=[n.op]))
            continue
        fn = KERNELS.get(n.op)
        if fn is None:
            raise CompileError(f"no kernel implements IR op {n.op!r} (node {n.name})")
        scalars = [float(v.data.reshape(-1)[0]) if (v.is_const and v.type.numel == 1 and v.dtype.is_float) else None
                   for v in n.inputs]
        key = kernel_timing_key(n, ins + outs, scalars, dtype)
        if timing_only and key in lowered:
            first, done = lowered[key]
            launches.extend(replace(l, name=l.name.replace(first, n.name, 1)) for l in done)
            continue
        ctx = KernelContext(chip, dtype, n, ins, outs, scalars)
        res = fn(ctx)  # a kernel may take several launches (e.g. split attention and its combine)
        res = res if isinstance(res, list) else [res]
        for i, launch in enumerate(res):
            launch.timing_key = f"{key}:{i}"
            launches.append(launch)
        lowered[key] = (n.name, res)
    consts = [(plan.refs[id(c)], c.data) for c in g.constants()]
    prog = Program(
        chip_name=chip.name, chip_fingerprint=fingerprint, dtype=dtype, launches=launches,
        hbm_bytes=plan.total_bytes, inputs=[plan.refs[id(v)] for v in g.inputs],
        outputs=[plan.refs[id(v)] for v in g.outputs], constants=consts,
        input_names=[v.name for v in g.inputs], output_names=[v.name for v in g.outputs],
        weight_bytes=plan.weight_bytes, activation_bytes=plan.arena_bytes,
        state=[(v.name, plan.refs[id(v)]) for v, _ in g.state],
        state_init=[(plan.refs[id(v)], g.state_init[v.name]) for v, _ in g.state if v.name in g.state_init],
        weight_names=sorted(c.name for c in g.constants() if c.name in g.weight_names),
        timing_only=timing_only,
    )
    return prog, g
