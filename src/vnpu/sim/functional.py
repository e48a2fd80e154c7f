"""What each instruction does to simulated memory, with the chip's arithmetic.

Each `start_*` reads its sources when the timing model issues the instruction and
returns a commit function that writes the result when the instruction completes, so a
consumer that runs too early (a missing semaphore wait) reads stale data.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import special

from vnpu.dtypes import DType
from vnpu.formats import mx_scale, pack_fp4, unpack_fp4
from vnpu.isa.instructions import DmaGather, DmaLoad, DmaScatter, DmaStore, HbmRef, MatMul, SramRef, VecOp

F32 = np.float32


def hbm_view(mem: np.ndarray, ref: HbmRef) -> np.ndarray:
    isz = ref.dtype.itemsize
    return np.ndarray(ref.shape, ref.dtype.np, mem, ref.offset, tuple(s * isz for s in ref.strides))


def sram_view(mem: np.ndarray, ref: SramRef) -> np.ndarray:
    return np.ndarray(ref.shape, ref.dtype.np, mem, ref.offset)


def _f32(a: np.ndarray) -> np.ndarray:
    if a.dtype == F32 or a.dtype.kind in "iub":
        return a
    return a.astype(F32)


def _gelu(x: np.ndarray) -> np.ndarray:
    return (0.5 * x * (1.0 + special.erf(x * F32(0.7071067811865476)))).astype(F32, copy=False)


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return (0.5 * x * (1.0 + np.tanh(F32(0.7978845608028654) * (x + F32(0.044715) * x * x * x)))).astype(F32, copy=False)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return special.expit(x).astype(F32, copy=False)


UNARY_FNS: dict[str, Callable[..., np.ndarray]] = {
    "neg": np.negative,
    "relu": lambda x: np.maximum(x, x.dtype.type(0)),
    "gelu": _gelu,
    "gelu_tanh": _gelu_tanh,
    "silu": lambda x: x * _sigmoid(x),
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
    "rsqrt": lambda x: F32(1.0) / np.sqrt(x),
    "erf": lambda x: special.erf(x).astype(x.dtype, copy=False),
    "abs": np.abs,
    "reciprocal": lambda x: F32(1.0) / x,
    "not": np.logical_not,
    "sin": np.sin,
    "cos": np.cos,
    "floor": np.floor,
    "ceil": np.ceil,
    "round": np.round,
    "sign": np.sign,
    "identity": lambda x: x,
    "hardsigmoid": lambda x: np.clip(x / F32(6.0) + F32(0.5), 0, 1).astype(x.dtype, copy=False),
    "hardswish": lambda x: x * np.clip(x / F32(6.0) + F32(0.5), 0, 1).astype(x.dtype, copy=False),
}

BINARY_FNS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
    "maximum": np.maximum, "minimum": np.minimum, "pow": np.power,
    "eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
    "and": np.logical_and, "or": np.logical_or, "fmod": np.fmod, "floordiv": np.floor_divide,
}


def vector_compute(op: str, srcs: list[np.ndarray | float], attrs: dict, out_dtype: np.dtype,
                   out_shape: tuple[int, ...] = ()) -> np.ndarray:
    """One vector instruction's arithmetic: fp32 for floats, native for ints and bools."""
    args = [(_f32(s) if isinstance(s, np.ndarray) else s) for s in srcs]
    if op not in ("cast", "dequant") and np.dtype(out_dtype).kind not in "iub":  # ints into a float result: in fp32, not wrapping int8
        args = [a.astype(F32) if isinstance(a, np.ndarray) and a.dtype.kind in "iu" and a.dtype.itemsize <= 2
                else a for a in args]  # (narrow ints are exact in fp32; wider ones keep their own arithmetic)
    if op in MATH_UNARY_FNS:
        return MATH_UNARY_FNS[op](args[0], attrs)
    if op in BINARY_FNS:
        a, b = args
        if isinstance(a, float) and isinstance(b, np.ndarray):
            a = b.dtype.type(a)
        if isinstance(b, float) and isinstance(a, np.ndarray):
            b = a.dtype.type(b)
        return BINARY_FNS[op](a, b)
    if op in UNARY_FNS:
        return UNARY_FNS[op](args[0])
    if op == "clamp":
        x = args[0]
        lo, hi = attrs.get("min"), attrs.get("max")
        return np.clip(x, -np.inf if lo is None else lo, np.inf if hi is None else hi).astype(x.dtype, copy=False)
    if op == "pow_scalar":
        return np.power(args[0], F32(attrs["exponent"]))
    if op == "dequant":  # weight-only GEMM: q [rows / pack, cols] int8 (int4: two per byte) x group scales
        return dequantize_weight_tile(args[0], args[1], int(attrs["bits"]), int(attrs["group"]))
    if op == "mx_scale":  # OCP MX: a block's E8M0 scale 2^(floor(log2 amax) - emax of the element format)
        return mx_scale(args[0], int(attrs["emax"]))
    if op == "pack_fp4":  # fp32 values already in range -> e2m1 (nearest even), two per byte along the last axis
        return pack_fp4(args[0]).view(out_dtype)
    if op == "cast":
        x = args[0]
        tgt = np.dtype(out_dtype)
        if tgt.kind not in "iub" or x.dtype.kind != "f":  # to a float (bf16/fp8 are kind "V"): the store rounds
            return x
        return (np.trunc(x) if tgt.kind in "iu" else x != 0).astype(tgt)  # float -> int truncates like C/PyTorch
    if op == "where":
        c, a, b = args
        return np.where(c, a, b)
    if op == "fill":
        return np.full((), attrs["value"], F32)
    if op == "iota":  # start + index along attrs["axis"] (default the last), broadcast over the rest
        ax = int(attrs.get("axis", -1)) % max(len(out_shape), 1)
        ramp = np.arange(out_shape[ax] if out_shape else 1, dtype=F32) + F32(attrs.get("start", 0))
        return np.broadcast_to(ramp.reshape([-1 if i == ax else 1 for i in range(len(out_shape))]), out_shape)
    if op == "take":  # dst[..., j] = srcs[0][..., srcs[1][..., j]] (a gather within each row)
        return np.take_along_axis(args[0], np.asarray(args[1]).astype(np.int64), axis=-1)
    if op.startswith("moe_route_"):
        tables = moe_schedule(args[0], int(attrs["k"]), int(attrs["experts"]), int(attrs["rows"]), int(attrs["tiles"]))
        return tables[("moe_route_experts", "moe_route_tokens", "moe_route_slots").index(op)]
    if op in ("topk_values", "topk_indices"):
        x = args[0]
        k = int(attrs["k"])
        order = np.argsort(-x, axis=-1, kind="stable")[..., :k]  # stable: ties keep the lower index
        return order.astype(np.int64) if op == "topk_indices" else np.take_along_axis(x, order, axis=-1)
    if op.startswith("reduce_"):  # over the last axis, or attrs["axis"]; keepdims
        x = args[0]
        kind = op[7:]
        ax = int(attrs.get("axis", -1))
        if kind == "sum":
            return np.add.reduce(x, axis=ax, keepdims=True, dtype=F32 if x.dtype.kind == "f" else None)
        if kind == "max":
            return np.max(x, axis=ax, keepdims=True)
        if kind == "min":
            return np.min(x, axis=ax, keepdims=True)
        if kind == "prod":
            return np.multiply.reduce(x, axis=ax, keepdims=True, dtype=F32 if x.dtype.kind == "f" else None)
    raise NotImplementedError(f"vector op {op!r} has no functional model")


def moe_schedule(ids: np.ndarray, k: int, experts: int, rows: int, tiles: int) -> tuple[np.ndarray, ...]:
    """Routed slots grouped by expert into tiles of `rows`: (expert per tile, token per row,
    slot per row). Slot s = t*K + k is row s of the flattened [T, K] routing; pad rows point
    at token 0 and slot T*K; tiles past the last used one compute nothing useful (expert 0)."""
    flat = ids.astype(np.int64).ravel()
    n = flat.size
    if n and (flat.min() < 0 or flat.max() >= experts):
        raise IndexError(f"expert id out of range [0, {experts})")
    order = np.argsort(flat, kind="stable")
    tile_e = np.zeros(tiles, np.int64)
    tile_tok = np.zeros((tiles, rows), np.int64)
    tile_slot = np.full((tiles, rows), n, np.int64)
    t = 0
    start = 0
    for e, c in zip(*np.unique(flat[order], return_counts=True)):
        for r0 in range(0, c, rows):
            sl = order[start + r0:start + min(c, r0 + rows)]
            tile_e[t] = e
            tile_tok[t, :len(sl)] = sl // k
            tile_slot[t, :len(sl)] = sl
            t += 1
        start += c
    assert t <= tiles, (t, tiles)
    return tile_e, tile_tok, tile_slot


# Each prepare_* binds an instruction's memory views once (the simulated memories never
# move) and returns `start`: called when the instruction issues, it reads the sources and
# returns (destination view, value) to be written when the instruction completes.
Start = Callable[[], tuple[np.ndarray, np.ndarray]]


def prepare_dma_load(ins: DmaLoad, hbm: np.ndarray, sram: np.ndarray) -> Start:
    src = hbm_view(hbm, ins.src)
    dst = sram_view(sram, ins.dst).reshape(ins.src.shape)

    def start() -> tuple[np.ndarray, np.ndarray]:
        return dst, src.copy()
    return start


def prepare_dma_gather(ins: DmaGather, hbm: np.ndarray, sram: np.ndarray) -> Start:
    index = sram_view(sram, ins.index)
    table = hbm_view(hbm, ins.table)
    n = table.shape[0]
    dst = sram_view(sram, ins.dst)

    def start() -> tuple[np.ndarray, np.ndarray]:
        idx = index.astype(np.int64).ravel()
        idx = np.where(idx < 0, idx + n, idx)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"gather index out of range [0, {n}): min {idx.min()}, max {idx.max()}")
        return dst, table[idx].reshape(dst.shape)
    return start


def prepare_dma_scatter(ins: DmaScatter, hbm: np.ndarray, sram: np.ndarray) -> Start:
    index = sram_view(sram, ins.index)
    table = hbm_view(hbm, ins.table)
    n = table.shape[0]
    src = sram_view(sram, ins.src)

    class _Rows:  # the commit writes table[idx] = rows (a fancy-index assignment, not a view)
        def __init__(self, idx: np.ndarray):
            self.idx = idx

        def __setitem__(self, key: object, val: np.ndarray) -> None:
            table[self.idx] = val

    def start() -> tuple[object, np.ndarray]:
        idx = index.astype(np.int64).ravel()
        idx = np.where(idx < 0, idx + n, idx)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"scatter index out of range [0, {n}): min {idx.min()}, max {idx.max()}")
        return _Rows(idx), src.reshape((idx.size,) + table.shape[1:]).copy()
    return start


def prepare_dma_store(ins: DmaStore, hbm: np.ndarray, sram: np.ndarray) -> Start:
    src = sram_view(sram, ins.src).reshape(ins.dst.shape)
    dst = hbm_view(hbm, ins.dst)

    def start() -> tuple[np.ndarray, np.ndarray]:
        return dst, src.copy()
    return start


def prepare_matmul(ins: MatMul, hbm: np.ndarray, sram: np.ndarray) -> Start:
    a = sram_view(sram, ins.a)
    b = sram_view(sram, ins.b)
    acc = sram_view(sram, ins.acc)
    accumulate = ins.accumulate
    if ins.trans_b:
        b = b.T

    if ins.b_bits:  # packed weight-only B: dequantized to fp32 in the PEs
        sb_w, bits, group = sram_view(sram, ins.b_scale), ins.b_bits, ins.block

        def start_wq() -> tuple[np.ndarray, np.ndarray]:
            r = _f32(a) @ dequantize_weight_tile(b, sb_w, bits, group)
            if accumulate:
                r += acc
            return acc, r
        return start_wq

    if ins.block:  # block-scaled (MX) operands with their E8M0 scales
        sa, sb, blk = sram_view(sram, ins.a_scale), sram_view(sram, ins.b_scale), ins.block

        def start_mx() -> tuple[np.ndarray, np.ndarray]:
            r = mx_matmul(a, b, sa, sb, blk)
            if accumulate:
                r += acc
            return acc, r
        return start_mx

    if a.dtype.kind == "i":  # int8 x int8: exact int32 accumulation (float64 holds every partial sum exactly)
        def start_int() -> tuple[np.ndarray, np.ndarray]:
            r = _exact_int_matmul(a, b)
            if accumulate:
                r = r + acc
            return acc, r
        return start_int

    def start() -> tuple[np.ndarray, np.ndarray]:
        r = _f32(a) @ _f32(b)  # bf16/fp16/fp8 operands are exact in fp32; products accumulate in fp32
        if accumulate:
            r += acc
        return acc, r
    return start


def _truncate_significand(x: np.ndarray, bits: int) -> np.ndarray:
    """x with its significand cut (toward zero) to `bits` bits, float64."""
    m, e = np.frexp(x)  # x = m * 2^e, 0.5 <= |m| < 1
    return np.ldexp(np.trunc(m * 2.0 ** bits) / 2.0 ** bits, e)


def limited_fp8_matmul(a: np.ndarray, b: np.ndarray, bits: int, mma_k: int, promote_k: int | None) -> np.ndarray:
    """a @ b for fp8 operands on an array whose accumulator keeps `bits` significand bits (chip
    core.matrix.fp8_accumulator_bits): every group of `mma_k` products along K is summed exactly
    (float64 holds them) and added to the accumulator, which is truncated toward zero to `bits`
    bits; every `promote_k` elements the accumulator is added into an fp32 sum and restarts at 0
    (None: never). The fp32 sum is the result."""
    av, bv = a.astype(np.float64), b.astype(np.float64)
    k = av.shape[1]
    seg = promote_k or k
    total = np.zeros((av.shape[0], bv.shape[1]), np.float32)
    for s0 in range(0, k, seg):
        acc = np.zeros(total.shape, np.float64)
        for g0 in range(s0, min(s0 + seg, k), mma_k):
            g1 = min(g0 + mma_k, s0 + seg, k)
            acc = _truncate_significand(acc + av[:, g0:g1] @ bv[g0:g1], bits)
        total = (total + acc.astype(np.float32)).astype(np.float32)
    return total


def prepare_limited_fp8_matmul(ins: MatMul, hbm: np.ndarray, sram: np.ndarray, bits: int, mma_k: int,
                               promote_k: int | None) -> Start:
    """An fp8 MatMul on a chip with a limited-precision fp8 accumulator (limited_fp8_matmul)."""
    a, b, acc = sram_view(sram, ins.a), sram_view(sram, ins.b), sram_view(sram, ins.acc)
    if ins.trans_b:
        b = b.T
    accumulate = ins.accumulate

    def start() -> tuple[np.ndarray, np.ndarray]:
        r = limited_fp8_matmul(a, b, bits, mma_k, promote_k)
        if accumulate:  # across instructions the partial sums live in the fp32 accumulator tile
            r = (r + acc).astype(np.float32)
        return acc, r
    return start


def _exact_int_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b for int8 operands as the array's int32 accumulators hold it. Each product is at most
    2^14 in magnitude, so float64 (53-bit mantissa) sums any K < 2^39 exactly, at BLAS speed; the
    result wraps to int32 like the hardware's accumulator (K <= 2^17 never wraps)."""
    r = a.astype(np.float64) @ b.astype(np.float64)
    return r.astype(np.int64).astype(np.int32)


# -- OCP MX block-scaled matmul (the codec is vnpu.formats) ---------------------------------
def mx_matmul(a: np.ndarray, b: np.ndarray, sa: np.ndarray, sb: np.ndarray, block: int) -> np.ndarray:
    """The array's block-scaled product: sum_j sa[:, j] sb[j, :] (a_j @ b_j) over K blocks of
    `block`, rounded once to fp32. The elements and scales are exact in float64 and every
    product is exact; the sum runs in float64 (error ~2^-53 relative, far below an fp32 ulp)."""
    if a.dtype == DType.fp4x2_e2m1.np:
        av, bv = unpack_fp4(a, -1), unpack_fp4(b, 0)
    else:
        av, bv = a.astype(np.float64), b.astype(np.float64)
    k = av.shape[1]
    if bv.shape[0] != k or sa.shape != (av.shape[0], k // block) or sb.shape != (k // block, bv.shape[1]):
        raise ValueError(f"block-scaled matmul: operands {av.shape} @ {bv.shape} with scales {sa.shape}, "
                         f"{sb.shape} do not form blocks of {block}")
    av = av * np.repeat(sa.astype(np.float64), block, axis=1)
    bv = bv * np.repeat(sb.astype(np.float64), block, axis=0)
    return (av @ bv).astype(F32)


def prepare_vec(ins: VecOp, hbm: np.ndarray, sram: np.ndarray) -> Start:
    srcs: list[np.ndarray | float] = []
    for i, s in enumerate(ins.srcs):
        if isinstance(s, SramRef):
            v = sram_view(sram, s)
            view = ins.views[i] if i < len(ins.views) else None
            srcs.append(v.reshape(view) if view is not None else v)
        else:
            srcs.append(float(s))
    dst = sram_view(sram, ins.dst)
    op, attrs = ins.op, dict(ins.attrs)

    def start() -> tuple[np.ndarray, np.ndarray]:
        return dst, vector_compute(op, srcs, attrs, dst.dtype, dst.shape)
    return start


PREPARERS = {DmaLoad: prepare_dma_load, DmaGather: prepare_dma_gather, DmaScatter: prepare_dma_scatter,
             DmaStore: prepare_dma_store,
             MatMul: prepare_matmul, VecOp: prepare_vec}


# -- elementwise math family (opinfo): PyTorch's definitions in fp32 ---------------------------
def _softplus(x: np.ndarray, beta: float, threshold: float) -> np.ndarray:
    bx = x * F32(beta)
    soft = np.log1p(np.exp(np.minimum(bx, F32(threshold)))) / F32(beta)
    return np.where(bx > F32(threshold), x, soft).astype(x.dtype, copy=False)


def _elu(x: np.ndarray, a: dict) -> np.ndarray:
    alpha, scale, inp = F32(a.get("alpha", 1.0)), F32(a.get("scale", 1.0)), F32(a.get("input_scale", 1.0))
    neg = np.expm1(np.minimum(x, F32(0)) * inp) * alpha
    return (np.where(x > 0, x, neg) * scale).astype(x.dtype, copy=False)


def _logit(x: np.ndarray, eps: float | None) -> np.ndarray:
    if eps is not None:
        x = np.clip(x, F32(eps), F32(1 - eps))
    return np.log(x / (F32(1) - x))


def _shrink(x: np.ndarray, lambd: float, soft: bool) -> np.ndarray:
    lam = F32(lambd)
    keep = np.abs(x) > lam
    if not soft:
        return np.where(keep, x, F32(0)).astype(x.dtype, copy=False)
    return np.where(x > lam, x - lam, np.where(x < -lam, x + lam, F32(0))).astype(x.dtype, copy=False)


def _nan_to_num(x: np.ndarray, a: dict) -> np.ndarray:
    if x.dtype.kind != "f":
        return x
    fi = np.finfo(x.dtype)
    pos, neg = a.get("posinf"), a.get("neginf")
    return np.nan_to_num(x, nan=a.get("nan", 0.0), posinf=fi.max if pos is None else pos,
                         neginf=fi.min if neg is None else neg)


def _xlogy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x * log(y), 0 where x == 0 unless y is NaN (torch.xlogy)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.multiply(x, np.log(y))
    return np.where((np.asarray(x) == 0) & ~np.isnan(y), F32(0), r).astype(np.result_type(x, y), copy=False)


def _remainder(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Python-style modulo (the sign of the divisor), as torch.remainder: a - b * floor(a / b)."""
    if np.asarray(a).dtype.kind == "f" or np.asarray(b).dtype.kind == "f":
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.fmod(a, b)
            return np.where((r != 0) & ((r < 0) != (np.asarray(b) < 0)), r + b, r)
    return np.mod(a, b)


MATH_UNARY_FNS: dict[str, Callable[[np.ndarray, dict], np.ndarray]] = {
    "log1p": lambda x, a: np.log1p(x), "expm1": lambda x, a: np.expm1(x), "log2": lambda x, a: np.log2(x),
    "log10": lambda x, a: np.log10(x), "exp2": lambda x, a: np.exp2(x), "tan": lambda x, a: np.tan(x),
    "asin": lambda x, a: np.arcsin(x), "acos": lambda x, a: np.arccos(x), "atan": lambda x, a: np.arctan(x),
    "sinh": lambda x, a: np.sinh(x), "cosh": lambda x, a: np.cosh(x), "asinh": lambda x, a: np.arcsinh(x),
    "acosh": lambda x, a: np.arccosh(x), "atanh": lambda x, a: np.arctanh(x),
    "erfinv": lambda x, a: special.erfinv(x).astype(x.dtype, copy=False),
    "erfc": lambda x, a: special.erfc(x).astype(x.dtype, copy=False),
    "trunc": lambda x, a: np.trunc(x), "frac": lambda x, a: x - np.trunc(x),
    "square": lambda x, a: x * x,
    "leaky_relu": lambda x, a: np.where(x > 0, x, x * F32(a.get("slope", 0.01))).astype(x.dtype, copy=False),
    "elu": _elu,
    "softplus": lambda x, a: _softplus(x, a.get("beta", 1.0), a.get("threshold", 20.0)),
    "softsign": lambda x, a: x / (F32(1) + np.abs(x)),
    "mish": lambda x, a: x * np.tanh(_softplus(x, 1.0, 20.0)),
    "log_sigmoid": lambda x, a: -_softplus(-x, 1.0, 20.0),
    "logit": lambda x, a: _logit(x, a.get("eps")),
    "hardshrink": lambda x, a: _shrink(x, a.get("lambd", 0.5), soft=False),
    "softshrink": lambda x, a: _shrink(x, a.get("lambd", 0.5), soft=True),
    "threshold": lambda x, a: np.where(x > F32(a["threshold"]), x, F32(a["value"])).astype(x.dtype, copy=False),
    "nan_to_num": _nan_to_num,
    "isnan": lambda x, a: np.isnan(x), "isinf": lambda x, a: np.isinf(x), "isfinite": lambda x, a: np.isfinite(x),
    "isposinf": lambda x, a: np.isposinf(x), "isneginf": lambda x, a: np.isneginf(x),
    "signbit": lambda x, a: np.signbit(x),
}
BINARY_FNS.update({
    "remainder": _remainder, "atan2": np.arctan2, "hypot": np.hypot, "logaddexp": np.logaddexp,
    "copysign": np.copysign, "xlogy": _xlogy,
})


def unpack_int4(q: np.ndarray) -> np.ndarray:
    """[rows, cols] int8 bytes -> [2 * rows, cols] int8 values in -8..7: row 2i is byte row i's low
    nibble, row 2i + 1 its high nibble (packing along K, two weights per byte)."""
    b = np.asarray(q).view(np.int8)
    lo = (b << 4).astype(np.int8) >> 4  # arithmetic shifts sign-extend each nibble
    hi = b >> 4
    out = np.empty((2 * b.shape[0],) + b.shape[1:], np.int8)
    out[0::2], out[1::2] = lo, hi
    return out


def dequantize_weight_tile(q: np.ndarray, scales: np.ndarray, bits: int, group: int) -> np.ndarray:
    """The vector engine's dequant instruction: q (int8, or int4 packed along rows) times the
    fp32 scale of its group of `group` rows, in fp32 (the store rounds to the tile's dtype)."""
    vals = unpack_int4(q) if bits == 4 else np.asarray(q)
    s = np.repeat(np.asarray(scales, F32), group, axis=0)[:vals.shape[0]]
    return vals.astype(F32) * s
