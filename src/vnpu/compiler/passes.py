"""Graph-to-graph passes run before fusion: precision and legalization for the kernels."""
from __future__ import annotations

import numpy as np

from typing import TYPE_CHECKING

from vnpu.dtypes import DType
from vnpu.ir.graph import Graph, Node, TensorType, Value, is_shape_only, shape_only_array

if TYPE_CHECKING:
    from vnpu.chip.schema import Chip


# the floats the program's precision applies to; fp8 tensors (quantized operands) keep their format
WIDE_FLOATS = (DType.fp32, DType.bf16, DType.fp16)


def set_precision(g: Graph, dtype: DType) -> None:
    """Stores every floating-point tensor in `dtype` (weights rounded once, at compile time).

    Kernels still accumulate and evaluate norms, softmax and transcendentals in fp32.
    """
    if dtype == DType.fp32:
        return
    seen: set[int] = selection_keys(g)  # stay fp32
    for n in g.nodes:  # quantization scales and dequantization chains (compiler/quantize.py)
        if n.attrs.get("quant_fp32"):
            seen.update(id(v) for v in n.outputs)
            seen.update(id(v) for v in n.inputs if v.is_const)

    def fix(v: Value) -> None:
        if id(v) in seen:
            return
        seen.add(id(v))
        if v.dtype in WIDE_FLOATS and v.dtype != dtype:
            v.type = TensorType(v.shape, dtype)
            if v.data is not None:
                if is_shape_only(v.data):  # a meta-device weight's stand-in: keep it free
                    v.data = shape_only_array(v.data.shape, dtype)
                else:
                    v.data = v.data.astype(dtype.np)

    for v in g.inputs:
        fix(v)
    for n in g.nodes:
        for v in n.inputs + n.outputs:
            fix(v)
        if (n.op in ("matmul", "conv2d") and n.inputs[0].dtype in (DType.fp8_e4m3, DType.fp8_e5m2, DType.fp4x2_e2m1)
                and not n.attrs.get("quant_fp32")):
            n.attrs["out_dtype"] = dtype  # the fp32 accumulator is stored in the program's precision
        if n.op == "cast" and DType(n.attrs["dtype"]) in WIDE_FLOATS and not n.attrs.get("quant_fp32"):
            n.attrs["dtype"] = dtype
        if n.op == "host_call":
            n.attrs["out_types"] = [TensorType(t.shape, dtype) if t.dtype in WIDE_FLOATS else t for t in n.attrs["out_types"]]
    for v in g.outputs:
        fix(v)


def selection_keys(g: Graph) -> set[int]:
    """ids of the values that a top-k selects on and that elementwise ops compute on the chip
    (Gumbel-max sampling's candidates / T + noise), with those ops' float operands that come
    from outside the chain (the noise input, 1 / T). They keep fp32 storage: rounded to bf16,
    keys of logits around 40 are 0.25 apart, so the noise's finer differences tie and the
    first candidate wins (a biased sample). Candidates read straight from the logits (greedy
    argmax, MoE routing on softmax output) are not affected."""
    from vnpu.ir.ops import OPS

    producer = {id(o): n for n in g.nodes for o in n.outputs}
    keep: set[int] = set()
    stack = [n.inputs[0] for n in g.nodes if n.op == "topk"]
    while stack:
        v = stack.pop()
        p = producer.get(id(v))
        if id(v) in keep or p is None or OPS[p.op].kind != "elementwise":
            continue
        keep.add(id(v))
        for u in p.inputs:
            if u.dtype.is_float:
                if id(u) in producer:
                    stack.append(u)
                else:
                    keep.add(id(u))
    keep.update(id(n.outputs[0]) for n in g.nodes if n.op == "topk" and id(n.inputs[0]) in keep)  # its values
    return keep


def _insert_before(g: Graph, anchor: Node, op: str, inputs: list[Value], attrs: dict) -> Value:
    node = g.add_node(op, inputs, attrs, name=f"{anchor.name}_{op}")
    g.nodes.pop()
    g.nodes.insert(g.nodes.index(anchor), node)
    return node.output


def legalize(g: Graph) -> None:
    """Rewrites nodes into the forms the kernels take.

    - conv2d / pool2d padding becomes an explicit `pad` node (zeros, or -inf for max pooling),
    - constant conv weights are laid out once as [groups, C/g*kh*kw, O/g] GEMM operands.
    """
    for n in list(g.nodes):
        if n.op in ("conv2d", "pool2d"):
            (pt, pb), (pl, pr) = n.attrs["padding"]
            if pt or pb or pl or pr:
                fill = float("-inf") if n.op == "pool2d" and n.attrs["kind"] in ("max", "argmax") else 0.0
                if n.op == "pool2d" and n.attrs["kind"] == "avg" and not n.attrs.get("count_include_pad", True):
                    raise NotImplementedError("avg pooling with count_include_pad=False")
                x = n.inputs[0]
                pads = [(0, 0), (0, 0), (pt, pb), (pl, pr)]
                if x.is_const:
                    padded = g.add_const(x.name + "_pad", np.pad(x.data, pads, constant_values=fill), x.dtype)
                else:
                    padded = _insert_before(g, n, "pad", [x], {"pads": pads, "value": fill})
                n.inputs[0] = padded
                n.attrs["padding"] = ((0, 0), (0, 0))
        if n.op == "conv2d" and n.inputs[1].is_const and not n.attrs.get("weight_gkn"):
            w = n.inputs[1]
            o, cg, kh, kw = w.shape
            grp = n.attrs.get("groups", 1)
            data = w.data.reshape(grp, o // grp, cg * kh * kw).transpose(0, 2, 1)
            n.inputs[1] = g.add_const(w.name + "_gkn", np.ascontiguousarray(data), w.dtype)
            n.attrs["weight_gkn"] = (o, cg, kh, kw)


def split_decode_attention(g: Graph, chip: "Chip") -> None:
    """Attention with too few (batch x KV head x query block) units to occupy the cores (decode)
    splits its keys over cores and gains a scratch output for the partial results
    (kernels.attention.choose_kv_splits)."""
    from vnpu.ir.ops import infer_types
    from vnpu.kernels.attention import choose_kv_splits

    for n in g.nodes:
        if n.op != "attention" or n.attrs.get("prefill") or "kv_splits" in n.attrs:
            continue
        q, k = n.inputs[0], n.inputs[1]
        b, hq, s, _ = q.shape
        splits = choose_kv_splits(chip.cores, b, k.shape[1], s, hq, int(n.attrs.get("kv_len", k.shape[2])))
        if splits > 1:
            n.attrs["kv_splits"] = splits
            scratch = infer_types("attention", [v.type for v in n.inputs], n.attrs)[1]
            n.outputs.append(Value(g._fresh(f"{n.name}_partials"), scratch, n))


def unfuse_oversized_attention(g: Graph, chip: "Chip", dtype: DType) -> bool:
    """Attention whose smallest tiles do not fit the chip's scratchpad (a head dim of
    thousands on a 16 KiB core) becomes softmax(q k^T * scale [masked]) v on the matmul,
    where and softmax kernels, which tile any size. Returns whether anything changed."""
    from vnpu.kernels.attention import attention_tiles

    changed = False
    for n in list(g.nodes):
        if n.op != "attention" or len(n.outputs) != 1:
            continue
        q, k, v = n.inputs[:3]
        qpos = n.inputs[3] if len(n.inputs) > 3 else None
        b, hq, s, d = q.shape
        hkv, dv = k.shape[1], v.shape[3]
        kv_len = int(n.attrs.get("kv_len", k.shape[2]))
        try:
            attention_tiles(chip.core.scratchpad.bytes, hq // hkv, s, kv_len, d, dv, dtype, n.output.dtype,
                            qpos is not None, False)
            continue
        except ValueError:
            pass
        changed = True
        grp = hq // hkv

        def emit(op: str, inputs: list[Value], attrs: dict) -> Value:
            return _insert_before(g, n, op, inputs, attrs)

        if kv_len < k.shape[2]:
            k = emit("slice", [k], {"axis": 2, "start": 0, "end": kv_len, "step": 1})
            v = emit("slice", [v], {"axis": 2, "start": 0, "end": kv_len, "step": 1})
        # query heads h*grp .. h*grp+grp-1 share KV head h: [B, Hkv, grp, S, D]
        qg = emit("reshape", [q], {"shape": [b, hkv, grp * s, d]})
        kt = emit("permute", [k], {"perm": [0, 1, 3, 2]})
        scores = emit("matmul", [qg, kt], {})
        fdt = scores.dtype
        scale = g.add_const(f"{n.name}_scale", np.asarray(float(n.attrs["scale"])).astype(fdt.np), fdt)
        scores = emit("mul", [scores, scale], {})
        if qpos is not None:  # key j visible to query i iff j <= q_pos[i]
            keys = g.add_const(f"{n.name}_keys", np.arange(kv_len, dtype=np.int64).reshape(1, kv_len), DType.int64)
            pos = emit("reshape", [qpos], {"shape": [s, 1]})
            if pos.dtype != DType.int64:
                pos = emit("cast", [pos], {"dtype": DType.int64})
            visible = emit("le", [keys, pos], {})  # [S, L]
            scores = emit("reshape", [scores], {"shape": [b, hkv, grp, s, kv_len]})
            neg = g.add_const(f"{n.name}_neg", np.asarray(float("-inf")).astype(fdt.np), fdt)
            scores = emit("where", [visible, scores, neg], {})
            scores = emit("reshape", [scores], {"shape": [b, hkv, grp * s, kv_len]})
        probs = emit("softmax", [scores], {"axis": 3, "log": False})
        if probs.dtype != v.dtype:
            probs = emit("cast", [probs], {"dtype": v.dtype})
        o = emit("matmul", [probs, v], {})  # [B, Hkv, grp*S, Dv]
        o = emit("reshape", [o], {"shape": [b, hq, s, dv]})
        o = emit("permute", [o], {"perm": [0, 2, 1, 3]})
        if o.dtype != n.output.dtype:
            o = emit("cast", [o], {"dtype": n.output.dtype})
        g.replace_uses(n.output, o)
        g.nodes.remove(n)
    return changed
