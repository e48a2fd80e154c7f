"""A quantized KV cache (`kv_cache="fp8"`): keys and values stored in fp8 e4m3 with one fp32
scale per cached row (a token's head), as LLM servers store them (vLLM --kv-cache-dtype fp8;
the scale per token and head instead of per tensor, so nothing needs calibrating).

For every attention whose K and V are KV-cache state written by index_write (DecoderStep's
cache appends):
- the cache state becomes fp8, and a scale state [B, Hkv, L, 1] fp32 joins it;
- the append quantizes as it writes (index_write attrs `quant`, part "values"), and a sibling
  append writes the rows' scales (part "scale"): amax / 448 per row, amax = max |x|;
- attention reads the fp8 cache and both scales (attrs `kv_quant`) and dequantizes per block
  in the scratchpad (kernels/attention.py).
The cache's HBM bytes and the attention's KV traffic halve (bf16 programs), plus 4 bytes per
row of head_dim elements for the scale.
"""
from __future__ import annotations

from vnpu.compiler.quantize import QMAX
from vnpu.dtypes import DType
from vnpu.ir.graph import Graph, Node, TensorType, Value

KV_FORMATS = {"fp8": DType.fp8_e4m3}


class KVCacheError(ValueError):
    pass


def kv_cache_format(name: str | None) -> DType | None:
    """The element format of a `kv_cache` option: None (the program's dtype) or "fp8"."""
    if name in (None, "", "auto", "none"):
        return None
    if name not in KV_FORMATS:
        raise KVCacheError(f"unknown KV-cache format {name!r}: use one of {', '.join(KV_FORMATS)} "
                           "(or leave it unset for the program's dtype)")
    return KV_FORMATS[name]


def _cache_append(g: Graph, v: Value) -> Node | None:
    """The index_write whose output `v` is, if it appends to a state input."""
    n = v.producer
    state_inputs = {id(a) for a, _ in g.state}
    if n is None or n.op != "index_write" or id(n.inputs[0]) not in state_inputs or "quant" in n.attrs:
        return None
    return n


def quantize_kv_cache(g: Graph, fmt: DType) -> int:
    """Rewrites the graph's KV caches to `fmt` in place; returns the attentions rewritten."""
    qmax = QMAX[fmt]
    count = 0
    for att in [n for n in g.nodes if n.op == "attention"]:
        if "kv_quant" in att.attrs or len(att.inputs) != 4:
            continue
        writes = [_cache_append(g, x) for x in att.inputs[1:3]]
        if any(w is None for w in writes):
            raise KVCacheError(f"attention {att.name}: its keys and values are not a KV cache the step appends to "
                               "(index_write into persistent state); a quantized KV cache needs one")
        scales = []
        for w in writes:
            cache = w.inputs[0]
            cache.type = TensorType(cache.shape, fmt)
            w.outputs[0].type = cache.type
            if cache.name in g.state_init:
                g.state_init[cache.name] = g.state_init[cache.name].astype(fmt.np)
            s_type = TensorType(cache.shape[:-1] + (1,), DType.fp32)
            s_in = g.add_input(f"{cache.name}_scale", s_type)
            w.attrs["quant"] = {"fmt": fmt.value, "qmax": qmax, "part": "values"}
            sw = Node("index_write", [s_in, w.inputs[1], w.inputs[2]], [],
                      {"axis": w.attrs["axis"], "quant": {"fmt": fmt.value, "qmax": qmax, "part": "scale"}},
                      f"{w.name}_scale")
            sw.outputs = [Value(g._fresh(f"{w.name}_scale"), s_type, producer=sw)]
            g.nodes.insert(g.nodes.index(w) + 1, sw)
            g.state.append((s_in, sw.outputs[0]))
            scales.append(sw.outputs[0])
        att.inputs = att.inputs + scales
        att.attrs["kv_quant"] = fmt.value
        count += 1
    return count
