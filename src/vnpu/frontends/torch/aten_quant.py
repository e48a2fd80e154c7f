"""Quantized PyTorch models (PT2E `convert_pt2e`, torchao `quantize_`) lowered to integer kernels.

PT2E graphs carry `quantized_decomposed` ops around float ops: an activation goes through
quantize_per_tensor -> dequantize_per_tensor, a weight is an int8 constant behind
dequantize_per_channel, and the float linear / conv consumes both dequantized tensors.
torchao's configs export as plain ATen (int8 weights cast to float, `_int_mm`).

- quantize_per_tensor: x * (1 / scale) in fp32 (as torch computes it), round half to even,
  + zero point, clamp to [quant_min, quant_max], cast (uint8 is stored in int32, as the
  importer maps torch.uint8).
- dequantize_*: (cast(q, fp32) - zero point) * scale, elementwise on the chip.
- dequantize(q_x) -> mm / addmm / linear / convolution <- dequantize(int8 constant weight):
  the matmul / conv2d (2-D, 1-D, grouped; not depthwise) runs on the int8 operands (int32, exact) and the dequantization is its
  epilogue: (acc - zx * sum_k qw) as fp32 * (sx * sw) + bias, which fusion merges with what
  follows (relu, the next layer's quantize: requantization). uint8 activations are shifted by
  -128 into int8 with the shift folded into the zero point; a padded convolution pads the
  shifted activation with its zero point, so that padding is the real 0.0 as in eager.
- `_int_mm` (torchao's dynamic int8 activations): the int8 matmul itself.
- pt2e dynamic activations: choose_qparams.tensor computed on the chip (reductions + torch's
  determine_qparams in fp32); quantize / dequantize_per_tensor.tensor take the run-time qparams,
  and the int8 matmul's epilogue subtracts zx * sum_k qw in int32 and multiplies by sx * sw.
- weight-only int8 (a float activation): the int8 weight stays int8 in HBM and is widened
  (cast, - zero point, * scale) on the chip before a float matmul; KEEP_UNFOLDED stops the
  importer from folding that chain into an fp32 constant. A fused weight-only GEMM (int8
  weight read by the matrix engine's loader, float activation) is not a kernel yet.

To fuse across ops without a graph pass, a dequantize whose FX users are all ops handled here
returns a *deferred* Value: a stand-in that only these handlers see, resolved either into the
int8 kernel or into the float dequantization chain (emitted then) when the int8 form does not
apply. The int8 forms extend aten_ops' lowerings of those ops (their entries are wrapped).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx

from vnpu.compiler.quantize import KEEP_FP32
from vnpu.dtypes import DType, torch_to_dtype
from vnpu.frontends.torch.aten_ops import _dim, _per_dim
from vnpu.frontends.torch.importer import ATEN, KEEP_UNFOLDED, ImportContext as Cx, aten, op_name
from vnpu.ir.graph import TensorType, Value

INT8_MIN, INT8_MAX = -128, 127
UINT8_SHIFT = 128  # uint8 data minus this is int8; the zero point moves by the same amount
DEQUANT_OPS = ("dequantize_per_tensor.default", "dequantize_per_tensor.tensor", "dequantize_per_channel.default")
KEEP = {KEEP_FP32: True}  # scales and dequantization chains stay fp32 in bf16 programs


@dataclass
class QuantSource:
    """A dequantized tensor as its integer data and affine parameters: real = (q - zp) * scale."""
    q: Value  # int8, or int32 holding uint8 data
    scale: np.ndarray  # float64, broadcastable against q
    zero_point: np.ndarray  # int64, broadcastable against q
    qmin: int
    qmax: int
    out_dtype: DType  # the dequantized tensor's dtype
    stand_in: Value  # the deferred Value the importer holds for it
    resolved: Value | None = None  # the float chain, once a user needed it
    # dynamic (pt2e choose_qparams): the scale and zero point computed on the chip, fp32 [1] Values
    # (scale / zero_point above are then placeholders)
    scale_v: Value | None = None
    zp_v: Value | None = None

    @property
    def per_tensor(self) -> bool:
        return self.scale.size == 1 and self.zero_point.size == 1


def _sources(cx: Cx) -> dict[int, QuantSource]:
    """The import's deferred dequantizations, by id of their stand-in Value."""
    table = getattr(cx, "_quant_sources", None)
    if table is None:
        table = {}
        cx._quant_sources = table  # type: ignore[attr-defined]
    return table


def _source(cx: Cx, v: Any) -> QuantSource | None:
    return _sources(cx).get(id(v)) if isinstance(v, Value) else None


def _fx_users_handled(node: fx.Node) -> bool:
    """Every user of the node is an op whose lowering here resolves a deferred operand."""
    return bool(node.users) and all(u.op == "call_function" and op_name(u.target) in RESOLVING for u in node.users)


def _defer(cx: Cx, src: QuantSource) -> Value:
    _sources(cx)[id(src.stand_in)] = src
    return src.stand_in


def _dequant_chain(cx: Cx, src: QuantSource) -> Value:
    """(cast(q, fp32) - zp) * scale on the chip (the float form of a dequantized tensor)."""
    x = cx.emit("cast", [src.q], {"dtype": DType.fp32})  # a node even for constant q: HBM keeps int8
    if src.scale_v is not None:  # dynamic: (q - zp) * scale with the chip's own qparams
        y = cx.emit("mul", [cx.emit("sub", [x, src.zp_v], KEEP), src.scale_v], KEEP)
        return y if src.out_dtype == DType.fp32 else cx.emit("cast", [y], {"dtype": src.out_dtype})
    if np.any(src.zero_point):
        x = cx.emit("sub", [x, cx.g.add_const("zero_point", src.zero_point.astype(np.float32), DType.fp32)])
    y = cx.emit("mul", [x, cx.g.add_const("scale", src.scale.astype(np.float32), DType.fp32)])
    return y if src.out_dtype == DType.fp32 else cx.emit("cast", [y], {"dtype": src.out_dtype})


def resolve(cx: Cx, v: Any) -> Any:
    """A deferred Value replaced by its float dequantization (emitted on first use); others as they are."""
    if isinstance(v, (list, tuple)):
        return type(v)(resolve(cx, o) for o in v)
    src = _source(cx, v)
    if src is None:
        return v
    if src.resolved is None:
        src.resolved = _dequant_chain(cx, src)
    return src.resolved


# -- quantize / dequantize ----------------------------------------------------------------------------
def _scalar(v: Any) -> float | None:
    """A Python number, or the value of a one-element constant tensor; None for run-time tensors."""
    if isinstance(v, Value):
        return float(np.asarray(v.data).reshape(-1)[0]) if v.is_const and v.type.numel == 1 else None
    return float(v)


def _storage(dtype: torch.dtype) -> DType | None:
    return torch_to_dtype(dtype) if dtype in (torch.int8, torch.uint8) else None


def _runtime_scalar(v: Any) -> bool:
    return isinstance(v, Value) and not v.is_const and v.type.numel == 1


@aten("choose_qparams.tensor")
def _choose_qparams(cx: Cx, x: Value, qmin: int, qmax: int, eps: float, dtype: torch.dtype) -> tuple | None:
    """pt2e dynamic quantization's per-tensor affine qparams, on the chip, as torch computes them
    (torch.ao.quantization.utils.determine_qparams, in fp32): lo = min(min x, 0), hi = max(max x, 0),
    scale = max((hi - lo) / (qmax - qmin), eps), zero point = clamp(qmin - round(lo / scale), qmin, qmax).
    Returns (scale fp32 [1], zero point int64 [1]); the quantize / dequantize handlers take them."""
    if not x.dtype.is_float or _storage(dtype) is None or x.type.numel == 0:
        return None
    x32 = cx.cast(x, DType.fp32)
    axes = list(range(x.type.rank))
    lo, hi = (cx.emit("reshape", [cx.emit("reduce", [x32], {"kind": k, "axes": axes, "keepdim": True, **KEEP})],
                      {"shape": [1]}) for k in ("min", "max"))
    zero = cx.const(np.zeros(1, np.float32), DType.fp32)
    lo = cx.emit("minimum", [lo, zero], KEEP)
    hi = cx.emit("maximum", [hi, zero], KEEP)
    scale = cx.emit("div", [cx.emit("sub", [hi, lo], KEEP), cx.const(np.float32(qmax - qmin), DType.fp32)], KEEP)
    scale = cx.emit("maximum", [scale, cx.const(np.float32(eps), DType.fp32)], KEEP)
    zp = cx.emit("sub", [cx.const(np.float32(qmin), DType.fp32), cx.emit("round", [cx.emit("div", [lo, scale], KEEP)],
                                                                          KEEP)], KEEP)
    zp = cx.emit("clamp", [zp], {"min": float(qmin), "max": float(qmax), **KEEP})
    return scale, cx.emit("cast", [zp], {"dtype": DType.int64})


def _runtime_qparams(cx: Cx, scale: Value, zero_point: Value) -> tuple[Value, Value]:
    """A run-time (scale, zero point) pair as fp32 [1] Values."""
    return cx.cast(scale, DType.fp32), cx.emit("cast", [zero_point], {"dtype": DType.fp32, **KEEP})


@aten("quantize_per_tensor.default", "quantize_per_tensor.tensor")
def _quantize_per_tensor(cx: Cx, x: Value, scale: Any, zero_point: Any, quant_min: int, quant_max: int,
                         dtype: torch.dtype) -> Value | None:
    s, z = _scalar(scale), _scalar(zero_point)
    out = _storage(dtype)
    if out is not None and x.dtype.is_float and _runtime_scalar(scale) and _runtime_scalar(zero_point):
        # dynamic: torch multiplies by 1.0 / scale (rounded to fp32), rounds half to even, adds the zero point
        sv, zv = _runtime_qparams(cx, scale, zero_point)
        y = cx.emit("mul", [cx.cast(x, DType.fp32), cx.emit("reciprocal", [sv], KEEP)], KEEP)
        y = cx.emit("add", [cx.emit("round", [y], KEEP), zv], KEEP)
        y = cx.emit("clamp", [y], {"min": float(quant_min), "max": float(quant_max), **KEEP})
        return cx.emit("cast", [y], {"dtype": out})
    if s is None or z is None or out is None or not x.dtype.is_float:
        return None
    x = cx.cast(x, DType.fp32)
    inv = np.float32(1.0 / s)  # torch multiplies by 1.0 / scale, the Python double rounded to fp32
    y = cx.emit("mul", [x, cx.const(inv, DType.fp32)], KEEP)
    y = cx.emit("round", [y], KEEP)  # half to even, as torch.round
    if z:
        y = cx.emit("add", [y, cx.const(z, DType.fp32)], KEEP)
    y = cx.emit("clamp", [y], {"min": float(quant_min), "max": float(quant_max), **KEEP})
    return cx.emit("cast", [y], {"dtype": out})  # exact: an in-range integer


def _dequantize(cx: Cx, q: Value, scale: np.ndarray, zero_point: np.ndarray, quant_min: int, quant_max: int,
                out_dtype: torch.dtype | None) -> Value | None:
    if q.dtype not in (DType.int8, DType.int32):
        return None
    out = torch_to_dtype(out_dtype) if out_dtype is not None else DType.fp32
    stand_in = Value(cx.g._fresh(f"{q.name}_dequant"), TensorType(q.shape, out))
    src = QuantSource(q, scale.astype(np.float64), zero_point.astype(np.int64), int(quant_min), int(quant_max),
                      out, stand_in)
    if cx.node is not None and _fx_users_handled(cx.node):
        return _defer(cx, src)
    src.resolved = _dequant_chain(cx, src)
    return src.resolved


@aten("dequantize_per_tensor.default", "dequantize_per_tensor.tensor")
def _dequantize_per_tensor(cx: Cx, q: Value, scale: Any, zero_point: Any, quant_min: int, quant_max: int,
                           dtype: torch.dtype, *, out_dtype: torch.dtype | None = None) -> Value | None:
    s, z = _scalar(scale), _scalar(zero_point)
    if (s is None or z is None) and _runtime_scalar(scale) and _runtime_scalar(zero_point) \
            and q.dtype in (DType.int8, DType.int32):
        sv, zv = _runtime_qparams(cx, scale, zero_point)
        out = torch_to_dtype(out_dtype) if out_dtype is not None else DType.fp32
        stand_in = Value(cx.g._fresh(f"{q.name}_dequant"), TensorType(q.shape, out))
        src = QuantSource(q, np.ones(1), np.zeros(1, np.int64), int(quant_min), int(quant_max), out, stand_in,
                          scale_v=sv, zp_v=zv)
        if cx.node is not None and _fx_users_handled(cx.node):
            return _defer(cx, src)
        src.resolved = _dequant_chain(cx, src)
        return src.resolved
    if s is None or z is None:
        return None
    # torch: (q.to(fp32) - zp) * scale with a Python float scale, i.e. fp32(scale)
    return _dequantize(cx, q, np.array(np.float32(s), np.float64), np.array(int(z)), quant_min, quant_max, out_dtype)


def _along(p: Value | None, axis: int, rank: int, dtype: Any) -> np.ndarray | None:
    """A constant per-channel parameter shaped to broadcast along `axis` of a rank-`rank` tensor."""
    if p is None:
        return np.zeros([1] * rank, dtype)
    if not p.is_const:
        return None
    a = np.asarray(p.data).astype(dtype).reshape(-1)
    shape = [1] * rank
    shape[axis] = a.size
    return a.reshape(shape)


@aten("dequantize_per_channel.default")
def _dequantize_per_channel(cx: Cx, q: Value, scales: Value, zero_points: Value | None, axis: int, quant_min: int,
                            quant_max: int, dtype: torch.dtype, *, out_dtype: torch.dtype | None = None) -> Value | None:
    axis = _dim(axis, q.type.rank)
    s = _along(scales, axis, q.type.rank, np.float64)
    z = _along(zero_points, axis, q.type.rank, np.int64)
    if s is None or z is None:
        return None
    if scales.dtype == DType.fp32:
        s = s.astype(np.float32).astype(np.float64)
    return _dequantize(cx, q, s, z, quant_min, quant_max, out_dtype)


def _keeps_int8_weight(cx: Cx, node: fx.Node, vals: list[Value]) -> bool:
    """A dequantize or float cast of an int8 weight matrix: lowered on the chip (the weight stays
    int8 in HBM), not folded into an fp32 constant at import."""
    name = op_name(node.target)
    if name not in DEQUANT_OPS and name not in ("_to_copy.default", "to.dtype"):
        return False
    w = vals[0]
    if w.dtype != DType.int8 or w.type.rank < 2 or w.type.numel <= max(w.shape) or w.name not in cx.g.weight_names:
        return False  # scales, zero points and vectors fold as before
    return name in DEQUANT_OPS or cx.out_dtype().is_float


KEEP_UNFOLDED.append(_keeps_int8_weight)


# -- int8 matmul / conv2d with a dequantization epilogue ----------------------------------------------
def _activation_int8(cx: Cx, src: QuantSource, runtime_ok: bool = False) -> tuple[Value, Any] | None:
    """The activation as int32 data in int8's range (uint8 shifted by -128) and its zero point in
    that range (an int, or with `runtime_ok` a dynamic fp32 [1] Value); the caller casts to int8
    (after padding, for convolutions). None: not 8-bit per tensor."""
    if not src.per_tensor or src.q.is_const or (src.zp_v is not None and not runtime_ok):
        return None
    if src.zp_v is not None:
        if INT8_MIN <= src.qmin and src.qmax <= INT8_MAX:
            return src.q, src.zp_v
        if 0 <= src.qmin and src.qmax <= 255:
            q = cx.emit("sub", [cx.cast(src.q, DType.int32), cx.const(UINT8_SHIFT, DType.int32)], KEEP)
            return q, cx.emit("sub", [src.zp_v, cx.const(np.float32(UINT8_SHIFT), DType.fp32)], KEEP)
        return None
    z = int(src.zero_point.reshape(-1)[0])
    if INT8_MIN <= src.qmin and src.qmax <= INT8_MAX:
        return src.q, z
    if 0 <= src.qmin and src.qmax <= 255:
        q = cx.emit("sub", [cx.cast(src.q, DType.int32), cx.const(UINT8_SHIFT, DType.int32)], KEEP)
        return q, z - UINT8_SHIFT
    return None


def _weight_int8(cx: Cx, src: QuantSource, channel_axis: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A constant weight as int8 (q - zp, when that stays in int8's range) and its scales, one per
    output channel along `channel_axis` (or one per tensor); None otherwise."""
    if not src.q.is_const:
        return None
    rank = src.q.type.rank
    if any(d != 1 for i, d in enumerate(src.scale.shape) if i != channel_axis) or \
            any(d != 1 for i, d in enumerate(src.zero_point.shape) if i != channel_axis):
        return None
    centered = np.asarray(src.q.data).astype(np.int64) - src.zero_point
    if centered.size and (centered.min() < INT8_MIN or centered.max() > INT8_MAX):
        return None
    scale = src.scale.reshape([-1 if i == channel_axis else 1 for i in range(rank)]) if src.scale.size > 1 \
        else src.scale.reshape([1] * rank)
    return centered.astype(np.int8), scale


def _int8_const(cx: Cx, src: QuantSource, data: np.ndarray) -> Value:
    """The int8 weight the kernel reads (a weight of the model when its source is)."""
    w = cx.g.add_const(f"{src.q.name}_i8", data, DType.int8)
    if src.q.name in cx.g.weight_names:
        cx.g.weight_names.add(w.name)
    return w


def _epilogue(cx: Cx, acc: Value, correction: np.ndarray | Value, scale: np.ndarray | Value, bias: Value | None,
              out: DType) -> Value:
    """int32 acc -> (acc - correction) as fp32 * scale (+ bias), in `out` (correction int32 and
    scale fp32: constants, or Values computed on the chip for dynamic activations)."""
    if isinstance(correction, Value):
        acc = cx.emit("sub", [acc, correction], KEEP)
    elif np.any(correction):
        acc = cx.emit("sub", [acc, cx.g.add_const("zp_correction", correction.astype(np.int32), DType.int32)], KEEP)
    y = cx.emit("cast", [acc], {"dtype": DType.fp32, **KEEP})
    if not isinstance(scale, Value):
        scale = cx.g.add_const("dequant_scale", scale.astype(np.float32), DType.fp32)
    y = cx.emit("mul", [y, scale], KEEP)
    if bias is not None:
        y = cx.emit("add", [y, cx.cast(bias, DType.fp32)], KEEP)
    return y if out == DType.fp32 else cx.emit("cast", [y], {"dtype": out})


def _int8_matmul(cx: Cx, a: Any, b: Any, bias: Value | None) -> Value | None:
    """dequant(x) [M, K] @ dequant(int8 weight) [K, N] (+ bias [N]) as an int8 matmul."""
    sa, sb = _source(cx, a), _source(cx, b)
    if sa is None or sb is None or sb.q.type.rank != 2 or sa.q.type.rank < 2:
        return None
    act = _activation_int8(cx, sa, runtime_ok=True)
    wt = _weight_int8(cx, sb, 1)
    if act is None or wt is None or (bias is not None and bias.type.rank > 1):
        return None
    xq, zx = act
    wq, sw = wt
    x8 = cx.emit("cast", [xq], {"dtype": DType.int8}) if xq.dtype != DType.int8 else xq
    acc = cx.emit("matmul", [x8, _int8_const(cx, sb, wq)], KEEP)
    colsum = wq.astype(np.int64).sum(axis=0, keepdims=True)  # sum_k qw[k, n]
    if isinstance(zx, Value):  # dynamic: zx * colsum in int32 (exact: |zx| <= 255, |colsum| <= 128 K)
        z32 = cx.emit("cast", [zx], {"dtype": DType.int32, **KEEP})
        correction = cx.emit("mul", [z32, cx.g.add_const("colsum", colsum.astype(np.int32), DType.int32)], KEEP)
        scale = cx.emit("mul", [sa.scale_v, cx.g.add_const("w_scale", np.asarray(sw, np.float32), DType.fp32)], KEEP)
    else:
        correction = zx * colsum
        scale = float(sa.scale.reshape(-1)[0]) * sw
    return _epilogue(cx, acc, correction, scale, bias, cx.out_dtype())


def _mm(cx: Cx, a: Any, b: Any) -> Value | None:
    return _int8_matmul(cx, a, b, None)


def _addmm(cx: Cx, bias: Value, a: Any, b: Any, *, beta: Any = 1, alpha: Any = 1) -> Value | None:
    return _int8_matmul(cx, a, b, bias) if beta == 1 and alpha == 1 else None


def _linear(cx: Cx, x: Any, w: Any, bias: Value | None = None) -> Value | None:
    src = _source(cx, w)
    if src is None or src.q.type.rank != 2:
        return None
    return _int8_matmul(cx, x, _permuted(cx, src, [1, 0], None), bias)


def _conv(cx: Cx, x: Any, w: Any, bias: Value | None, stride: list, padding: list, dilation: list,
          transposed: bool, output_padding: list, groups: int) -> Value | None:
    """dequant(x) conv dequant(int8 weight) (+ bias) as an int8 conv2d: 2-D, or 1-D as 2-D over a
    unit height. Depthwise convolutions (one input channel per group) stay float: the int8
    depthwise kernel is not exact (see the report of this module's branch)."""
    sx, sw = _source(cx, x), _source(cx, w)
    if sx is None or sw is None or transposed or sx.q.type.rank not in (3, 4) or sw.q.type.rank != sx.q.type.rank:
        return None
    if groups != 1 and sw.q.shape[1] == 1:
        return None
    act = _activation_int8(cx, sx)
    wt = _weight_int8(cx, sw, 0)
    if act is None or wt is None:
        return None
    xq, zx = act
    wq, scale_w = wt
    one_d = sx.q.type.rank == 3
    nd = 1 if one_d else 2
    pads, strides, dils = _per_dim(padding, nd), _per_dim(stride, nd), _per_dim(dilation, nd)
    if one_d:  # [N, C, L] -> [N, C, 1, L], [O, C/g, K] -> [O, C/g, 1, K]
        xq = cx.emit("reshape", [xq], {"shape": [xq.shape[0], xq.shape[1], 1, xq.shape[2]]})
        wq = wq.reshape(wq.shape[0], wq.shape[1], 1, wq.shape[2])
        pads, strides, dils = [0] + pads, [1] + strides, [1] + dils
    x8 = cx.emit("cast", [xq], {"dtype": DType.int8}) if xq.dtype != DType.int8 else xq
    if zx and any(pads):  # eager pads the float tensor with 0.0, which is q = zx: pad with zx, conv unpadded
        x8 = cx.emit("pad", [x8], {"pads": [(0, 0), (0, 0), (pads[0], pads[0]), (pads[1], pads[1])], "value": float(zx)})
        pads = [0, 0]
    acc = cx.emit("conv2d", [x8, _int8_const(cx, sw, wq)],
                  {"stride": tuple(strides), "padding": ((pads[0], pads[0]), (pads[1], pads[1])),
                   "dilation": tuple(dils), "groups": int(groups), **KEEP})
    o = wq.shape[0]
    correction = (zx * wq.astype(np.int64).sum(axis=(1, 2, 3))).reshape(1, o, 1, 1)
    scale = float(sx.scale.reshape(-1)[0]) * scale_w.reshape(1, -1, 1, 1)
    if bias is not None:
        bias = cx.g.add_const(bias.name, np.asarray(bias.data).reshape(1, o, 1, 1), bias.dtype) if bias.is_const \
            else cx.emit("reshape", [bias], {"shape": [1, o, 1, 1]})
    y = _epilogue(cx, acc, correction, scale, bias, cx.out_dtype())
    return cx.emit("reshape", [y], {"shape": list(cx.meta_type().shape)}) if one_d else y


def _permuted(cx: Cx, src: QuantSource, perm: list[int], node: fx.Node | None) -> Value | None:
    """A constant quantized weight permuted (at import: it is a constant), still deferred."""
    if not src.q.is_const:
        return None
    q = cx.g.add_const(f"{src.q.name}_t", np.transpose(np.asarray(src.q.data), perm), src.q.dtype)
    if src.q.name in cx.g.weight_names:
        cx.g.weight_names.add(q.name)
    out = QuantSource(q, np.transpose(src.scale, perm), np.transpose(src.zero_point, perm), src.qmin, src.qmax,
                      src.out_dtype, Value(cx.g._fresh(f"{q.name}_dequant"), TensorType(q.shape, src.out_dtype)),
                      scale_v=src.scale_v, zp_v=src.zp_v)
    return _defer(cx, out)


def _permute(cx: Cx, x: Any, dims: list) -> Value | None:
    src = _source(cx, x)
    if src is None or cx.node is None or not _fx_users_handled(cx.node):
        return None
    return _permuted(cx, src, [_dim(d, x.type.rank) for d in dims], cx.node)


def _t(cx: Cx, x: Any) -> Value | None:
    return _permute(cx, x, [1, 0]) if isinstance(x, Value) and x.type.rank == 2 else None


def _view(cx: Cx, x: Any, shape: list) -> Value | None:
    """A per-tensor quantized activation reshaped (a Linear on [B, S, D] flattens it for addmm): the
    reshape moves the integer data, the parameters stay."""
    src = _source(cx, x)
    if src is None or not src.per_tensor or cx.node is None or not _fx_users_handled(cx.node):
        return None
    out_shape = cx.meta_type().shape
    q = src.q if out_shape == src.q.shape else cx.emit("reshape", [src.q], {"shape": list(out_shape)})
    rank = len(out_shape)
    return _defer(cx, QuantSource(q, src.scale.reshape([1] * rank), src.zero_point.reshape([1] * rank), src.qmin,
                                  src.qmax, src.out_dtype, Value(cx.g._fresh(f"{q.name}_dequant"),
                                                                 TensorType(out_shape, src.out_dtype)),
                                  scale_v=src.scale_v, zp_v=src.zp_v))


def _to_copy(cx: Cx, x: Any, *args: Any, **kwargs: Any) -> Value | None:
    """An int8 weight cast to float (torchao's weight-only configs) as a cast node: kept unfolded
    by KEEP_UNFOLDED, the weight stays int8 in HBM."""
    out = cx.out_dtype()
    if isinstance(x, Value) and x.is_const and x.dtype == DType.int8 and out.is_float and \
            cx.node is not None and _keeps_int8_weight(cx, cx.node, [x]):
        return cx.emit("cast", [x], {"dtype": out})
    return None


@aten("_int_mm.default")
def _int_mm(cx: Cx, a: Value, b: Value) -> Value | None:
    """torch._int_mm: int8 [M, K] @ int8 [K, N] -> int32, the chip's int8 matmul."""
    if a.dtype != DType.int8 or b.dtype != DType.int8 or a.type.rank != 2 or b.type.rank != 2:
        return None
    return cx.emit("matmul", [a, b])


def _extend(name: str, quantized: Callable[..., Value | None]) -> None:
    """aten_ops' lowering of `name` preceded by its quantized form: when that declines, the float
    lowering runs on the operands' float dequantizations."""
    float_lowering = ATEN[name]

    def lowering(cx: Cx, *args: Any, **kwargs: Any) -> Any:
        out = quantized(cx, *args, **kwargs)
        if out is not None:
            return out
        return float_lowering(cx, *resolve(cx, args), **{k: resolve(cx, v) for k, v in kwargs.items()})

    lowering.__qualname__ = f"quantized_{float_lowering.__qualname__}"
    ATEN[name] = lowering


# ops whose lowerings resolve deferred operands (a dequantize feeding only these is deferred)
RESOLVING = {"mm.default": _mm, "addmm.default": _addmm, "linear.default": _linear,
             "convolution.default": _conv, "permute.default": _permute, "t.default": _t,
             "view.default": _view, "_unsafe_view.default": _view, "reshape.default": _view}
for _name, _fn in RESOLVING.items():
    _extend(_name, _fn)
for _name in ("_to_copy.default", "to.dtype"):
    _extend(_name, _to_copy)
