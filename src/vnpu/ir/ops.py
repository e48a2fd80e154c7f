"""The IR's operator set: one entry per op with its shape/dtype inference.

Frontends lower framework ops onto these; kernels implement them. Elementwise ops
broadcast NumPy-style and require equal input dtypes (frontends insert `cast`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from vnpu.dtypes import PACKED_ELEMENTS, QUANT_MATMUL_ACC, DType
from vnpu.ir.graph import TensorType


class IRTypeError(ValueError):
    pass


@dataclass(frozen=True)
class OpDef:
    name: str
    infer: Callable[[list[TensorType], dict[str, Any]], list[TensorType]]
    kind: str  # elementwise | matmul | conv | reduce | norm | pool | gather | view | copy | host | fused | attention | scatter | topk | moe | collective


OPS: dict[str, OpDef] = {}

UNARY = {
    "neg", "relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "exp", "log", "sqrt", "rsqrt",
    "erf", "abs", "reciprocal", "clamp", "cast", "not", "sin", "cos", "floor", "ceil", "round",
    "pow_scalar", "hardswish", "hardsigmoid", "identity", "sign",
}
BINARY = {"add", "sub", "mul", "div", "maximum", "minimum", "pow", "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "fmod", "floordiv"}
COMPARE = {"eq", "ne", "lt", "le", "gt", "ge", "and", "or"}
TRANSCENDENTAL = {"gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "exp", "log", "sqrt", "rsqrt", "erf", "reciprocal", "sin", "cos", "pow", "pow_scalar", "div"}


def register(name: str, kind: str):
    def deco(fn: Callable[[list[TensorType], dict[str, Any]], list[TensorType]]):
        OPS[name] = OpDef(name, fn, kind)
        return fn
    return deco


def infer_types(op: str, ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    if op not in OPS:
        raise IRTypeError(f"unknown IR op {op!r}")
    if "siblings" in attrs:  # a kernel group's leader (compiler/siblings.py): its own inputs come first
        ins = ins[:attrs["own_inputs"]]
    return OPS[op].infer(ins, attrs)


def broadcast_shapes(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(rank):
        dims = {s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0} - {1}
        if len(dims) > 1:
            raise IRTypeError(f"shapes {shapes} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def _same_dtype(op: str, ins: list[TensorType]) -> DType:
    dts = {t.dtype for t in ins}
    if len(dts) != 1:
        raise IRTypeError(f"{op}: inputs have mixed dtypes {sorted(map(str, dts))}; insert a cast")
    return dts.pop()


def _unary(name: str):
    def infer(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        (x,) = ins
        dt = DType(attrs["dtype"]) if name == "cast" else (DType.bool if name == "not" else x.dtype)
        return [TensorType(x.shape, dt)]
    return infer


def _binary(name: str):
    def infer(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        dt = _same_dtype(name, ins)
        return [TensorType(broadcast_shapes(*(t.shape for t in ins)), DType.bool if name in COMPARE else dt)]
    return infer


for _n in UNARY:
    register(_n, "elementwise")(_unary(_n))
for _n in BINARY:
    register(_n, "elementwise")(_binary(_n))


@register("where", "elementwise")
def _where(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    c, a, b = ins
    if c.dtype != DType.bool:
        raise IRTypeError("where: condition must be bool")
    return [TensorType(broadcast_shapes(c.shape, a.shape, b.shape), _same_dtype("where", [a, b]))]


@register("fused_elementwise", "fused")
def _fused(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    return [attrs["out_type"]]


@register("matmul", "matmul")
def _matmul(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    if "wq_bits" in attrs:  # weight-only: b = quantized [K / pack, N] int8, ins[2] = scales [K / group, N]
        return [_weight_only_matmul(ins, attrs)]
    if "mx_block" in attrs:  # block-scaled: ins[2], ins[3] = E8M0 scales of a and b
        return [_mx_matmul(ins, attrs)]
    if "aq_fmt" in attrs:  # a float, quantized in the matmul's prologue
        return [_prologue_quant_matmul(ins, attrs)]
    a, b = ins[0], ins[1]
    if a.rank < 2 or b.rank < 2:
        raise IRTypeError(f"matmul needs rank >= 2 operands, got {a} and {b}")
    if a.shape[-1] != b.shape[-2]:
        raise IRTypeError(f"matmul: inner dims differ: {a} @ {b}")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    dt = matmul_result_dtype(a.dtype, b.dtype)
    if dt == DType.fp32 and a.dtype != DType.fp32 and "out_dtype" in attrs:  # fp8 operands, rounded on store
        dt = DType(attrs["out_dtype"])
    if "out_type" in attrs:  # with a fused epilogue
        return [attrs["out_type"]]
    return [TensorType(batch + (a.shape[-2], b.shape[-1]), dt)]


def _mx_matmul(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    """OCP MX: a [..., M, K] and b [K, N] in fp8 e4m3, or packed fp4 (fp4x2_e2m1: a [..., M, K / 2],
    b [K / 2, N], pairs along K), with E8M0 scales ins[2] [..., M, K / block] and ins[3]
    [K / block, N]; the result is the fp32 dequantized product (the scales apply in the array)."""
    a, b, sa, sb = ins[0], ins[1], ins[2], ins[3]
    blk = int(attrs["mx_block"])
    pack = PACKED_ELEMENTS.get(a.dtype, 1)
    k = a.shape[-1] * pack if a.rank else 0
    if (a.dtype not in (DType.fp8_e4m3, DType.fp4x2_e2m1) or b.dtype != a.dtype or b.rank != 2 or a.rank < 2
            or b.shape[0] * pack != k or blk <= 0 or k % blk):
        raise IRTypeError(f"MX matmul: {a} @ {b} (block {blk}) do not match")
    if (sa.dtype, sb.dtype) != (DType.e8m0, DType.e8m0) or sa.shape != a.shape[:-1] + (k // blk,) \
            or sb.shape != (k // blk, b.shape[1]):
        raise IRTypeError(f"MX matmul: scales {sa}, {sb} do not fit {a} @ {b} in blocks of {blk}")
    if "out_type" in attrs:
        return attrs["out_type"]
    return TensorType(a.shape[:-1] + (b.shape[1],), DType(attrs.get("out_dtype", DType.fp32)))


def _prologue_quant_matmul(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    """a [..., M, K] float, quantized to attrs["aq_fmt"] in the matmul's prologue (per token; with
    attrs["aq_block"] per OCP MX block), @ ins[1], the weight in that format [K (/ 2 for fp4), N];
    MX: ins[2] its E8M0 scales [K / block, N]. The result is fp32: the accumulator times each
    row's activation scale (per token) or the block-scaled product (MX)."""
    a, b = ins[0], ins[1]
    fmt, blk = DType(attrs["aq_fmt"]), int(attrs.get("aq_block", 0))
    pack = PACKED_ELEMENTS.get(fmt, 1)
    k = a.shape[-1] if a.rank else 0
    if not a.dtype.is_float or a.rank < 2 or b.dtype != fmt or b.rank != 2 or b.shape[0] * pack != k:
        raise IRTypeError(f"prologue-quantized matmul: {a} @ {b} ({fmt}) do not match")
    if blk and (k % blk or ins[2].dtype != DType.e8m0 or ins[2].shape != (k // blk, b.shape[1])):
        raise IRTypeError(f"prologue-quantized MX matmul: weight scales {ins[2]} do not fit {b} in blocks of {blk}")
    if "out_type" in attrs:
        return attrs["out_type"]
    return TensorType(a.shape[:-1] + (b.shape[1],), DType.fp32)


def _weight_only_matmul(ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    """a [..., M, K] float @ dequant(b) where b holds int8 weights [K, N] (wq_bits 8) or int4 ones
    packed two per byte along K [K / 2, N] (wq_bits 4), and ins[2] their fp32 scales per group
    of attrs["wq_group"] rows of K [K / group, N]; the result is in a's dtype."""
    a, b, s = ins[0], ins[1], ins[2]
    bits, group = int(attrs["wq_bits"]), int(attrs["wq_group"])
    k = a.shape[-1]
    pack = 8 // bits
    if bits not in (4, 8) or b.dtype != DType.int8 or b.rank != 2 or b.shape[0] * pack != k or k % group:
        raise IRTypeError(f"weight-only matmul: {a} @ int{bits} weights {b} (group {group}) do not match")
    if s.shape != (k // group, b.shape[1]) or s.dtype != DType.fp32:
        raise IRTypeError(f"weight-only matmul: scales {s}, expected fp32[{k // group},{b.shape[1]}]")
    if "out_type" in attrs:
        return attrs["out_type"]
    return TensorType(a.shape[:-1] + (b.shape[1],), a.dtype)


def matmul_result_dtype(a: DType, b: DType) -> DType:
    """The dtype a matmul of `a` and `b` operands produces (its accumulator's for quantized ones)."""
    if a in QUANT_MATMUL_ACC or b in QUANT_MATMUL_ACC:
        if QUANT_MATMUL_ACC.get(a) != QUANT_MATMUL_ACC.get(b) or QUANT_MATMUL_ACC.get(a) is None:
            raise IRTypeError(f"matmul: quantized operands must both be int8 or both fp8, got {a} and {b}")
        return QUANT_MATMUL_ACC[a]
    if a != b:
        raise IRTypeError(f"matmul: inputs have mixed dtypes {sorted(map(str, {a, b}))}; insert a cast")
    return a


def conv_out_size(size: int, k: int, stride: int, pad_lo: int, pad_hi: int, dilation: int) -> int:
    return (size + pad_lo + pad_hi - dilation * (k - 1) - 1) // stride + 1


@register("conv2d", "conv")
def _conv2d(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    x, w = ins[0], ins[1]
    # after legalization a constant weight is stored as [groups, C/g*kh*kw, O/g]; attrs keep OIHW
    wshape = tuple(attrs.get("weight_gkn") or w.shape)
    if x.rank != 4 or len(wshape) != 4:
        raise IRTypeError(f"conv2d expects NCHW input and OIHW weight, got {x} and {w}")
    g = attrs.get("groups", 1)
    if x.shape[1] != wshape[1] * g:
        raise IRTypeError(f"conv2d: input channels {x.shape[1]} != weight {wshape[1]} x groups {g}")
    sh, sw = attrs["stride"]
    (pt, pb), (pl, pr) = attrs["padding"]
    dh, dw = attrs.get("dilation", (1, 1))
    oh = conv_out_size(x.shape[2], wshape[2], sh, pt, pb, dh)
    ow = conv_out_size(x.shape[3], wshape[3], sw, pl, pr, dw)
    if "out_type" in attrs:
        return [attrs["out_type"]]
    dt = matmul_result_dtype(x.dtype, w.dtype)
    if dt == DType.fp32 and x.dtype != DType.fp32 and "out_dtype" in attrs:  # fp8 operands, rounded on store
        dt = DType(attrs["out_dtype"])
    return [TensorType((x.shape[0], wshape[0], oh, ow), dt)]


@register("pool2d", "pool")
def _pool2d(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """kinds max / avg / sum, and argmax (int64 indices; a second input: the flat input index of
    each output's window taps, [OH, OW, kh*kw])."""
    x = ins[0]
    kh, kw = attrs["kernel"]
    sh, sw = attrs["stride"]
    (pt, pb), (pl, pr) = attrs["padding"]
    dh, dw = attrs.get("dilation", (1, 1))
    oh = conv_out_size(x.shape[2], kh, sh, pt, pb, dh)
    ow = conv_out_size(x.shape[3], kw, sw, pl, pr, dw)
    if attrs["kind"] == "argmax":
        if len(ins) != 2 or ins[1].shape != (oh, ow, kh * kw):
            raise IRTypeError(f"pool2d argmax needs window taps [{oh}, {ow}, {kh * kw}], got {ins[1:]}")
        return [TensorType((x.shape[0], x.shape[1], oh, ow), DType.int64)]
    return [TensorType((x.shape[0], x.shape[1], oh, ow), x.dtype)]


@register("pad", "copy")
def _pad(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    (x,) = ins
    pads = attrs["pads"]
    if len(pads) != x.rank:
        raise IRTypeError("pad: one (before, after) pair per dimension")
    return [TensorType(tuple(d + lo + hi for d, (lo, hi) in zip(x.shape, pads)), x.dtype)]


@register("reduce", "reduce")
def _reduce(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    (x,) = ins
    axes = set(attrs["axes"])
    if attrs.get("keepdim", False):
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    else:
        shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    return [TensorType(shape, x.dtype)]


@register("softmax", "norm")
def _softmax(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    return [ins[0]]


@register("layer_norm", "norm")
def _layer_norm(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    x = ins[0]
    n = attrs["axis_count"]
    for p in ins[1:]:
        if p.shape != x.shape[x.rank - n:]:
            raise IRTypeError(f"layer_norm: parameter {p} does not match normalized shape {x.shape[x.rank - n:]}")
    return [x]


@register("gather", "gather")
def _gather(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    table, idx = ins
    if idx.dtype not in (DType.int64, DType.int32):
        raise IRTypeError("gather: indices must be int32/int64")
    ax = attrs.get("axis", 0)
    return [TensorType(table.shape[:ax] + idx.shape + table.shape[ax + 1:], table.dtype)]


@register("reshape", "view")
def _reshape(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    (x,) = ins
    shape = tuple(attrs["shape"])
    n = 1
    for d in shape:
        n *= d
    if n != x.numel:
        raise IRTypeError(f"reshape {x} -> {shape}: element counts differ")
    return [TensorType(shape, x.dtype)]


@register("permute", "view")
def _permute(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    (x,) = ins
    perm = attrs["perm"]
    if sorted(perm) != list(range(x.rank)):
        raise IRTypeError(f"permute: {perm} is not a permutation of {x.rank} dims")
    return [TensorType(tuple(x.shape[p] for p in perm), x.dtype)]


@register("expand", "view")
def _expand(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    (x,) = ins
    shape = tuple(attrs["shape"])
    if broadcast_shapes(x.shape, shape) != shape:
        raise IRTypeError(f"expand: {x} cannot expand to {shape}")
    return [TensorType(shape, x.dtype)]


@register("slice", "view")
def _slice(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    (x,) = ins
    ax, start, end, step = attrs["axis"], attrs["start"], attrs["end"], attrs.get("step", 1)
    if not (0 <= start <= end <= x.shape[ax]) or step < 1:
        raise IRTypeError(f"slice: [{start}:{end}:{step}] out of range for dim {ax} of {x}")
    shape = list(x.shape)
    shape[ax] = len(range(start, end, step))
    return [TensorType(tuple(shape), x.dtype)]


@register("concat", "copy")
def _concat(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    ax = attrs["axis"]
    dt = _same_dtype("concat", ins)
    base = ins[0].shape
    for t in ins[1:]:
        if t.rank != len(base) or any(a != b for i, (a, b) in enumerate(zip(t.shape, base)) if i != ax):
            raise IRTypeError(f"concat: shapes {[str(t) for t in ins]} differ outside axis {ax}")
    shape = list(base)
    shape[ax] = sum(t.shape[ax] for t in ins)
    return [TensorType(tuple(shape), dt)]


@register("copy", "copy")
def _copy(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    return [ins[0]]


@register("bitcast", "copy")
def _bitcast(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """x's bytes read as attrs dtype (the same width): ONNX BitCast."""
    (x,) = ins
    dt = DType(attrs["dtype"])
    if dt.itemsize != x.dtype.itemsize:
        raise IRTypeError(f"bitcast: {x.dtype} -> {dt} changes the element width")
    return [TensorType(x.shape, dt)]


@register("host_call", "host")
def _host_call(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    return list(attrs["out_types"])


# -- LLM ops ----------------------------------------------------------------------------------
@register("attention", "attention")
def _attention(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """q [B, Hq, S, D], k/v [B, Hkv, L, D(v)], optional q_pos int [S] -> [B, S, Hq, Dv].

    With q_pos, key j is visible to query i iff j <= q_pos[i] (causal over a KV cache);
    without, every key is visible. attrs: scale; kv_len (keys read, default L: a decode
    program for a KV-length bucket reads only the first kv_len cache slots); kv_splits (> 1:
    the keys are split over cores, flash-decoding style, and a second output
    [splits, B, S, Hq, Dv + 2] fp32 holds each split's unnormalized O, running max and sum);
    kv_quant (a quantized KV cache, compiler/kv_cache.py): k and v are in that format (fp8) and
    two more inputs after q_pos, k_scale / v_scale [B, Hkv, L, 1] fp32, give each cached row's
    dequantization scale."""
    q, k, v = ins[:3]
    kvq = attrs.get("kv_quant")
    if kvq is not None:
        if len(ins) != 6 or k.dtype != DType(kvq) or v.dtype != DType(kvq):
            raise IRTypeError(f"attention with a {kvq} KV cache takes q, k, v ({kvq}), q_pos, k_scale, v_scale")
        for sc, x in ((ins[4], k), (ins[5], v)):
            if sc.shape != x.shape[:3] + (1,) or sc.dtype != DType.fp32:
                raise IRTypeError(f"attention: KV scales must be fp32 {x.shape[:3] + (1,)}, got {sc}")
    if q.rank != 4 or k.rank != 4 or v.rank != 4:
        raise IRTypeError(f"attention expects rank-4 q, k, v, got {q}, {k}, {v}")
    b, hq, s, d = q.shape
    if k.shape[0] != b or v.shape[:3] != k.shape[:3] or k.shape[3] != d:
        raise IRTypeError(f"attention: k {k} / v {v} do not match q {q}")
    if hq % k.shape[1]:
        raise IRTypeError(f"attention: {hq} query heads are not a multiple of {k.shape[1]} KV heads")
    if len(ins) > 3 and (ins[3].shape != (s,) or ins[3].dtype.is_float):
        raise IRTypeError(f"attention: q_pos must be int [{s}], got {ins[3]}")
    if not (0 < attrs.get("kv_len", k.shape[2]) <= k.shape[2]):
        raise IRTypeError(f"attention: kv_len {attrs.get('kv_len')} outside 1..{k.shape[2]}")
    out = [TensorType((b, s, hq, v.shape[3]), q.dtype if kvq is not None else _same_dtype("attention", [q, k, v]))]
    splits = int(attrs.get("kv_splits", 1))
    if splits > 1:
        out.append(TensorType((splits, b, s, hq, v.shape[3] + 2), DType.fp32))
    return out


@register("index_write", "scatter")
def _index_write(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """dest with dest[..., index[i], ...] = src[..., i, ...] along `axis`, written in place
    into dest's buffer (KV-cache append); dest must be persistent state."""
    dest, idx, src = ins
    ax = attrs["axis"]
    if idx.rank != 1 or idx.dtype.is_float:
        raise IRTypeError(f"index_write: index must be a 1-D int tensor, got {idx}")
    want = dest.shape[:ax] + (idx.shape[0],) + dest.shape[ax + 1:]
    q = attrs.get("quant")  # a quantized KV cache (compiler/kv_cache.py): rows quantized as they are written
    if q is not None:
        # "values": dest holds cast(clamp(x * qmax / amax)) in q["fmt"]; "scale": dest [..., 1] fp32
        # holds amax / qmax, amax = max |x| over the row (the last axis)
        if q["part"] == "scale":
            want = want[:-1] + (src.shape[-1],)
            ok = dest.dtype == DType.fp32 and dest.shape[-1] == 1 and ax < dest.rank - 1
        else:
            ok = dest.dtype == DType(q["fmt"]) and ax < dest.rank - 1
        if src.shape != want or not ok or not src.dtype.is_float:
            raise IRTypeError(f"index_write ({q['part']} of a {q['fmt']} cache): dest {dest}, src {src} do not match")
        return [dest]
    if src.shape != want:
        raise IRTypeError(f"index_write: src {src} should have shape {want}")
    return [TensorType(dest.shape, _same_dtype("index_write", [dest, src]))]


@register("topk", "topk")
def _topk(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """The k largest along the last axis, largest first (ties: lower index first): values, int64 indices."""
    (x,) = ins
    k = attrs["k"]
    if not (1 <= k <= x.shape[-1]):
        raise IRTypeError(f"topk: k={k} outside 1..{x.shape[-1]}")
    shape = x.shape[:-1] + (k,)
    return [TensorType(shape, x.dtype), TensorType(shape, DType.int64)]


@register("moe_router", "moe")
def _moe_router(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """MoE routing in one op: p = softmax(logits, last axis) (stored in attrs prob_dtype),
    the top-k of p (ties: lower index first), and with attrs normalize the top-k weights
    divided by their sum (the sum stored in attrs sum_dtype): weights [.., k] in attrs
    out_dtype, int64 expert ids [.., k]. Each intermediate is rounded to the dtype the
    unfused softmax / topk / sum / div chain stores it in, so the result is the same.
    With attrs route (moe_route's attributes), also the moe_route schedule of the ids."""
    (x,) = ins
    k = attrs["k"]
    if not (1 <= k <= x.shape[-1]):
        raise IRTypeError(f"moe_router: k={k} outside 1..{x.shape[-1]}")
    if not x.dtype.is_float:
        raise IRTypeError(f"moe_router: logits must be float, got {x}")
    shape = x.shape[:-1] + (k,)
    out = [TensorType(shape, DType(attrs.get("out_dtype", x.dtype))), TensorType(shape, DType.int64)]
    if "route" in attrs:  # the moe_route schedule of the ids as three more outputs
        out += _moe_route([out[1]], attrs["route"])
    return out


@register("moe_combine", "moe")
def _moe_combine(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """The weighted top-k sum of the expert outputs: y [T, K, H], w [T, K, 1] [, residual r
    with T*H elements] -> sum_k(y * w) [+ r] as [T, H] (or attrs out_shape, T*H elements). y * w is rounded to attrs mul_dtype
    and the sum to attrs sum_dtype before the residual add, as the unfused mul / reduce / add
    kernels store them."""
    y, w = ins[:2]
    t, k, h = y.shape
    if w.shape != (t, k, 1):
        raise IRTypeError(f"moe_combine: weights {w} do not match the expert outputs {y}")
    if len(ins) > 2 and ins[2].numel != t * h:
        raise IRTypeError(f"moe_combine: residual {ins[2]} is not [{t}, {h}]")
    shape = tuple(attrs.get("out_shape", (t, h)))
    if math.prod(shape) != t * h:
        raise IRTypeError(f"moe_combine: out_shape {shape} does not hold [{t}, {h}]")
    return [TensorType(shape, DType(attrs.get("out_dtype", y.dtype)))]


def moe_tiles(tokens_x_k: int, experts: int, rows: int) -> int:
    """Tiles of `rows` routed slots that cover any routing of tokens_x_k slots over `experts`:
    each used expert's slots are padded to whole tiles, so at most
    floor((T*K + min(E, T*K) * (rows - 1)) / rows) tiles (T*K / rows + E in the worst case)."""
    return (tokens_x_k + min(experts, tokens_x_k) * (rows - 1)) // rows


@register("moe_route", "moe")
def _moe_route(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """Top-k expert ids [T, K] -> the grouped-matmul schedule: per tile its expert [NT] and the
    token [NT, rows] and slot (t*K + k) [NT, rows] of each row; pad rows get token 0 and slot
    T*K (a dump row), unused tiles expert 0."""
    (idx,) = ins
    if idx.rank != 2 or idx.dtype.is_float:
        raise IRTypeError(f"moe_route: expert ids must be int [T, K], got {idx}")
    nt = moe_tiles(idx.numel, attrs["experts"], attrs["rows"])
    return [TensorType((nt,), DType.int64), TensorType((nt, attrs["rows"]), DType.int64),
            TensorType((nt, attrs["rows"]), DType.int64)]


@register("moe_ffn", "moe")
def _moe_ffn(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """x [T, H], the moe_route schedule, gate_up [E, 2I, H], down [E, H, I] -> per routed slot
    down[e] @ (silu(g) * u), (g, u) = gate_up[e] @ x[t]: [T*K + 1, H] (last row: pad dump),
    and a scratch output [tiles, rows, I]: the activations between the two matmuls."""
    x, tile_e, tile_tok, tile_slot, gu, dn = ins[:6]
    t, h = x.shape
    if tile_tok.shape != tile_slot.shape or tile_tok.shape[0] != tile_e.shape[0]:
        raise IRTypeError("moe_ffn: inconsistent routing tables")
    bits = attrs.get("wq_bits")
    if bits:  # weight-only experts (compiler/quantize.py): packed K-major int8 [E, K * bits / 8, N] + scales
        gs, ds = ins[6:8]
        e, i2 = gu.shape[0], gu.shape[2]
        pack = 8 // bits
        ggu, gdn = attrs["wq_group_gate_up"], attrs["wq_group_down"]
        want = [((e, h // pack, i2), DType.int8), ((e, i2 // 2 // pack, h), DType.int8),
                ((e, h // ggu, i2), DType.fp32), ((e, i2 // 2 // gdn, h), DType.fp32)]
        if [(v.shape, v.dtype) for v in ins[4:8]] != want:
            raise IRTypeError(f"moe_ffn: quantized expert weights {ins[4:8]} do not match hidden size {h}")
        return [TensorType((attrs["slots"] + 1, h), x.dtype), TensorType(tile_tok.shape + (i2 // 2,), x.dtype)]
    e, i2, h2 = gu.shape
    if h2 != h or dn.shape != (e, h, i2 // 2):
        raise IRTypeError(f"moe_ffn: expert weights {gu}, {dn} do not match hidden size {h}")
    dt = _same_dtype("moe_ffn", [x, gu, dn])
    return [TensorType((attrs["slots"] + 1, h), dt), TensorType(tile_tok.shape + (i2 // 2,), dt)]


@register("rms_norm", "norm")
def _rms_norm(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """x * rsqrt(mean(x^2, last axis) + eps) [* weight] (RMSNorm: no centring, no bias)."""
    x = ins[0]
    if len(ins) > 1 and ins[1].shape != x.shape[-1:]:
        raise IRTypeError(f"rms_norm: weight {ins[1]} does not match the last dim of {x}")
    return [x]


@register("quantize_rows", "norm")
def _quantize_rows(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """Dynamic per-row quantization (kernels/quantize_rows.py): x [..., K] float -> q [..., K] in
    attrs["fmt"] (int8 / fp8) and the row's dequantization scale [..., 1] fp32 (max|x| / attrs["qmax"])."""
    (x,) = ins
    if not x.dtype.is_float or x.rank < 1:
        raise IRTypeError(f"quantize_rows: needs a float tensor, got {x}")
    fmt = DType(attrs["fmt"])
    if fmt not in QUANT_MATMUL_ACC:
        raise IRTypeError(f"quantize_rows: format {fmt} is not a matrix-engine format")
    blk = int(attrs.get("block", 0))
    if blk:  # OCP MX: an E8M0 scale per `block` elements of each row; fp4 packs two per byte
        k, pack = x.shape[-1], PACKED_ELEMENTS.get(fmt, 1)
        if k % blk or blk % pack:
            raise IRTypeError(f"quantize_rows: rows of {k} elements do not split into blocks of {blk}")
        return [TensorType(x.shape[:-1] + (k // pack,), fmt), TensorType(x.shape[:-1] + (k // blk,), DType.e8m0)]
    return [TensorType(x.shape, fmt), TensorType(x.shape[:-1] + (1,), DType.fp32)]


@register("rope", "rope")
def _rope(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """Rotary embedding (rotate-half form): x * cos + cat(-x2, x1) * sin over the last axis,
    with x1, x2 the halves of x; cos/sin broadcast to x. With attrs norm_eps, x is first
    RMS-normalized over the last axis (times the optional 4th input, a weight)."""
    x, c, s = ins[:3]
    if len(ins) > 3 and ins[3].shape != x.shape[-1:]:
        raise IRTypeError(f"rope: norm weight {ins[3]} does not match the last dim of {x}")
    if x.shape[-1] % 2:
        raise IRTypeError(f"rope: last dim of {x} is odd")
    if broadcast_shapes(x.shape, c.shape, s.shape) != x.shape:
        raise IRTypeError(f"rope: cos {c} / sin {s} do not broadcast to {x}")
    return [TensorType(x.shape, _same_dtype("rope", [x, c, s]))]


@register("all_reduce", "collective")
def _all_reduce(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """x -> the sum of x over the chips running this program together (tensor / expert
    parallelism), on every chip; lowered to a CollectiveLaunch, run by a multi-chip runner."""
    (x,) = ins
    return [x]


# -- grouped matmul for transformers' MoE path (lead) -------------------------------------------
@register("moe_matmul", "moe")
def _moe_matmul(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    """x [T, K], the moe_route schedule, w [E, N, K] -> per routed slot w[e] @ x[token]:
    [slots + 1, N] (last row: the pad rows' dump). One projection of a grouped MoE matmul."""
    x, tile_e, tile_tok, tile_slot, w = ins
    if x.rank != 2 or w.rank != 3 or w.shape[2] != x.shape[1]:
        raise IRTypeError(f"moe_matmul: weights {w} do not match the rows {x} (w is [experts, out, in])")
    if tile_tok.shape != tile_slot.shape or tile_tok.shape[0] != tile_e.shape[0]:
        raise IRTypeError("moe_matmul: inconsistent routing tables")
    return [TensorType((attrs["slots"] + 1, w.shape[1]), _same_dtype("moe_matmul", [x, w]))]


# -- elementwise math family (opinfo) --------------------------------------------------------
# attrs: leaky_relu slope; elu alpha, scale, input_scale (selu / celu are elu with constants);
# softplus beta, threshold; logit eps (None: no clamp); hardshrink / softshrink lambd;
# threshold threshold, value; nan_to_num nan, posinf, neginf.
MATH_UNARY = {
    "log1p", "expm1", "log2", "log10", "exp2", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh",
    "atanh", "erfinv", "erfc", "trunc", "frac", "leaky_relu", "elu", "softplus", "softsign", "mish", "logit",
    "hardshrink", "softshrink", "threshold", "nan_to_num", "log_sigmoid", "square",
}
MATH_PREDICATES = {"isnan", "isinf", "isfinite", "isposinf", "isneginf", "signbit"}  # float -> bool
MATH_BINARY = {"remainder", "atan2", "hypot", "logaddexp", "copysign", "xlogy"}
UNARY |= MATH_UNARY | MATH_PREDICATES
BINARY |= MATH_BINARY
TRANSCENDENTAL |= {
    "log1p", "expm1", "log2", "log10", "exp2", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh",
    "atanh", "erfinv", "erfc", "elu", "softplus", "mish", "logit", "log_sigmoid", "atan2", "hypot", "logaddexp",
    "xlogy",
}


def _predicate(ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    (x,) = ins
    return [TensorType(x.shape, DType.bool)]


for _n in MATH_UNARY:
    register(_n, "elementwise")(_unary(_n))
for _n in MATH_PREDICATES:
    register(_n, "elementwise")(_predicate)
for _n in MATH_BINARY:
    register(_n, "elementwise")(_binary(_n))
