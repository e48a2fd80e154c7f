"""Post-training quantization: a scheme turns the graph's weight matmuls into low-precision ones.

A scheme is one entry of SCHEMES. For each matmul whose right operand is a constant weight
[..., K, N] and whose left operand is a float activation, the pass

- quantizes the weight once, at compile time, per output channel (one scale per column n:
  max |W[:, n]| / qmax), saturating to the format's range and rounding half to even;
- quantizes the activation on the chip at run time, per token (one scale per row: the row's
  max |x| / qmax, a reduce kernel) or per tensor with a scale calibrated from example batches;
- runs the matmul on the matrix engine in the format (int8 x int8 -> int32, exact; fp8 x fp8 ->
  fp32), at the format's rate in the chip schema;
- dequantizes in the matmul's epilogue: acc (as fp32) x activation scale x weight scale, which
  fusion merges with the bias / activation / residual that follow.

Quantizing x (fp32 arithmetic throughout, amax the row's or the calibrated max |x|):
q = cast(clamp(round(x * (qmax / amax)), -qmax, qmax), int8) (the cast is exact: an in-range
integer), or for fp8 q = cast(clamp(x * (qmax / amax), -qmax, qmax), fp8) (the cast rounds to
nearest even; the clamp first, because a bare fp8 cast turns overflow into NaN); the
dequantization scale is amax / qmax. One division per row, a multiply per element. Scales stay fp32.

Static (per-tensor) schemes also quantize convolutions (constant OIHW weight): weights per
output channel, activations with their calibrated scale, as int8 CNN deployments do
(TensorRT, onnxruntime's quantize_static); zero padding stays exact (symmetric: 0 is q = 0).
Dynamic schemes leave convolutions in the program's precision: a per-image scale over
C x H x W would be one long reduction before every layer (a barrier and a launch each).

Weight-only schemes (w8a16, w4a16) store each [K, N] weight quantized (int4 packed two per byte
along K) with fp32 scales per output channel or per group of K rows; the matmul kernel streams
the packed bytes and the vector engine dequantizes each B tile before the array multiplies it
in the program's dtype (kernels/matmul._weight_only).

MX schemes (mxfp8, mxfp4; OCP Microscaling v1.0) give weights and activations one E8M0 scale per
block of 32 elements of K: weights at compile time, activations per token on the chip
(quantize_rows with a block); the matrix engine multiplies e4m3 or packed e2m1 elements and
applies the two scales per block (vnpu.formats has the codec), so the matmul's result is the
dequantized fp32 product. They need the chip to list the format as block-scaled.

Not quantized (documented, kept in the program's precision): matmuls between two run-time
operands (attention's Q K^T and P V), depthwise convolutions (they run on the vector engine),
contractions shorter than MIN_K.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vnpu.dtypes import PACKED_ELEMENTS, DType
from vnpu.formats import mx_quantize
from vnpu.ir.graph import Graph, Node, TensorType, Value, is_shape_only, shape_only_array

MIN_K = 16  # smaller contractions gain nothing from the narrow format
KEEP_FP32 = "quant_fp32"  # node attr: set_precision leaves its float outputs (and constant inputs) fp32
QMAX = {DType.int8: 127.0, DType.fp8_e4m3: 448.0, DType.fp8_e5m2: 57344.0, DType.fp4x2_e2m1: 6.0}
MX_EMAX = {DType.fp8_e4m3: 8, DType.fp4x2_e2m1: 2}  # largest normal exponent of the MX element formats


class QuantError(ValueError):
    """An unknown scheme, a format the chip lacks, or calibration data that does not fit."""


@dataclass(frozen=True)
class QuantScheme:
    name: str
    fmt: DType  # the matmul operands' format
    activations: str  # "per_token" (dynamic, computed on the chip) | "per_tensor" (static, calibrated)
    description: str
    smooth: float | None = None  # SmoothQuant's migration strength alpha (calibrated per channel)
    bits: int = 8  # weight bits (weight-only schemes: 8 or 4, int4 packed two per byte)
    group: int | None = None  # weight-only: rows of K per scale (None: one scale per output channel)
    block: int | None = None  # MX ("per_block" activations): elements of K per E8M0 scale, both operands
    min_cosine: float = 0.99  # the accuracy check's floor vs fp32 (report/numerics.py)

    @property
    def needs_calibration(self) -> bool:
        return self.activations == "per_tensor" or self.smooth is not None

    @property
    def weight_only(self) -> bool:
        return self.activations == "none"

    @property
    def block_scaled(self) -> bool:
        return self.activations == "per_block"

    def weight_bytes(self, k: int, n: int) -> int:
        """Bytes of a [K, N] weight stored under this scheme, scales included."""
        if self.block_scaled:  # packed elements + one E8M0 byte per block
            return k * n * self.bits // 8 + n * (k // (self.block or 1))
        scales = n * (k // self.group if self.group else 1)
        return k * n * self.bits // 8 + 4 * scales


SCHEMES: dict[str, QuantScheme] = {s.name: s for s in [
    QuantScheme("w8a8-int8", DType.int8, "per_token",
                "int8 weights per output channel, int8 activations per token (dynamic), int32 accumulation"),
    QuantScheme("w8a16", DType.int8, "none",
                "int8 weights per output channel, dequantized in the GEMM (vector engine) to the program's "
                "dtype: half the weight bytes of bf16, the array at its bf16 rate"),
    QuantScheme("w4a16", DType.int4, "none",
                "int4 weights (two per byte) with one fp32 scale per 128 rows of K, dequantized in the GEMM: "
                "a quarter of the weight bytes of bf16", bits=4, group=128),
    QuantScheme("w8a8-int8-static", DType.int8, "per_tensor",
                "int8 weights per output channel, int8 activations per tensor (scale calibrated from example "
                "batches), int32 accumulation"),
    QuantScheme("w8a8-int8-smooth", DType.int8, "per_token",
                "w8a8-int8 after SmoothQuant (alpha 0.5): activation outlier channels migrated into the "
                "weights with per-channel factors calibrated from example batches", smooth=0.5),
    QuantScheme("w8a8-fp8", DType.fp8_e4m3, "per_token",
                "fp8 e4m3 weights per output channel, fp8 e4m3 activations per token (dynamic), fp32 accumulation"),
    QuantScheme("w8a8-fp8-static", DType.fp8_e4m3, "per_tensor",
                "fp8 e4m3 weights per output channel, fp8 e4m3 activations per tensor (calibrated), fp32 accumulation"),
    QuantScheme("mxfp8", DType.fp8_e4m3, "per_block",
                "OCP MXFP8: e4m3 weights and activations with one E8M0 scale per 32 elements of K (activations' "
                "computed per token on the chip), block-scaled fp8 matmul, fp32 accumulation", block=32),
    QuantScheme("mxfp4", DType.fp4x2_e2m1, "per_block",
                "OCP MXFP4: e2m1 weights and activations (two per byte) with one E8M0 scale per 32 elements of K, "
                "block-scaled fp4 matmul, fp32 accumulation", bits=4, block=32, min_cosine=0.95),
]}


def get_scheme(name: str) -> QuantScheme:
    if name not in SCHEMES:
        raise QuantError(f"unknown quantization scheme {name!r}; known: {', '.join(SCHEMES)}")
    return SCHEMES[name]


def check_chip(scheme: QuantScheme, chip: "object") -> None:
    if scheme.weight_only:  # the array runs the program's dtype; the vector engine dequantizes
        return
    if scheme.block_scaled and not (scheme.fmt in chip.core.matrix.block_scaled and chip.supports(scheme.fmt)):  # type: ignore[attr-defined]
        formats = ", ".join(d.value for d in chip.core.matrix.block_scaled if chip.supports(d)) or "none"  # type: ignore[attr-defined]
        raise QuantError(f"chip {chip.name} has no block-scaled (MX) {scheme.fmt} matrix format, which scheme "  # type: ignore[attr-defined]
                         f"{scheme.name} needs (its block-scaled formats: {formats}); pick another scheme or chip")
    if not chip.supports(scheme.fmt):  # type: ignore[attr-defined]
        rates = ", ".join(d.value for d in chip.core.matrix.rate)  # type: ignore[attr-defined]
        raise QuantError(f"chip {chip.name} has no {scheme.fmt} matrix rate, which scheme {scheme.name} needs "  # type: ignore[attr-defined]
                         f"(its formats: {rates}); pick another scheme or chip")


def quantizable_matmuls(g: Graph, convs: bool = True) -> list[Node]:
    """The nodes the pass rewrites: float activation @ constant float weight with K >= MIN_K
    (matmul), and with `convs` convolutions with a constant OIHW weight that run on the matrix
    engine (not depthwise, which runs on the vector engine)."""
    out = []
    for n in g.nodes:
        if n.op not in ("matmul", "conv2d") or len(n.inputs) != 2 or "epilogue" in n.attrs:
            continue
        a, w = n.inputs
        if not (w.data is not None and a.data is None and a.dtype.is_float and w.dtype.is_float
                and a.dtype not in QMAX):
            continue
        if n.op == "matmul" and w.shape[-2] >= MIN_K:
            out.append(n)
        elif (convs and n.op == "conv2d" and w.type.rank == 4 and not n.attrs.get("weight_gkn")
              and not (n.attrs.get("groups", 1) > 1 and w.shape[1] == 1) and w.type.numel // w.shape[0] >= MIN_K):
            out.append(n)
    return out


def quantize_weight(w: np.ndarray, fmt: DType, axis: int = -2) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel quantization of a weight, its contraction over `axis` (a [..., K, N]
    matmul weight: -2; an OIHW conv weight: (1, 2, 3)): (q in `fmt`, fp32 scales, dims kept)."""
    w = np.asarray(w, np.float32)
    qmax = np.float32(QMAX[fmt])
    amax = np.abs(w).max(axis=axis, keepdims=True)
    scale = np.where(amax > 0, amax / qmax, np.float32(1.0)).astype(np.float32)
    y = np.clip(w / scale, -qmax, qmax)
    q = np.round(y).astype(np.int8) if fmt == DType.int8 else y.astype(fmt.np)
    return q, scale


@dataclass
class QuantPlan:
    """What compile_graph quantizes with: the scheme and, for static ones, the calibrated max
    |activation| per activation value name (runtime/calibrate.py)."""

    scheme: QuantScheme
    act_ranges: dict[str, float] | None = None
    channel_ranges: dict[str, np.ndarray] | None = None  # per activation: max |x| per channel (SmoothQuant)


@dataclass
class QuantStats:
    matmuls: int = 0  # matmuls quantized
    weight_elems: int = 0  # elements of the weights they quantized
    quant_bytes: int = 0  # those weights' bytes in the format, with their scales


def quantize(g: Graph, scheme: QuantScheme, act_scales: dict[str, float] | None = None,
             channel_ranges: dict[str, np.ndarray] | None = None, prologue_bytes: int = 0) -> QuantStats:
    """Rewrites the graph's weight matmuls under `scheme` in place.
    `act_scales`: per activation value name, its calibrated max |x| (per-tensor schemes).
    `prologue_bytes`: scratchpad a GEMM may keep resident to quantize its own activation rows in
    its prologue (decode-sized activations, dynamic schemes), instead of a quantize_rows launch."""
    nodes = quantizable_matmuls(g, convs=scheme.activations == "per_tensor")
    need = act_scales if scheme.activations == "per_tensor" else channel_ranges if scheme.smooth else None
    if scheme.needs_calibration:
        missing = [n.inputs[0].name for n in nodes if n.inputs[0].name not in (need or {})]
        if missing:
            raise QuantError(f"scheme {scheme.name} needs calibration data (activation ranges) for "
                             f"{len(missing)} matmul(s), e.g. {missing[0]}; pass calibration=[example batches]")
    if scheme.smooth is not None:
        nodes = [_smooth(g, n, channel_ranges[n.inputs[0].name], scheme.smooth) for n in nodes]
    if scheme.weight_only:
        nodes = [n for n in nodes if n.op == "matmul" and n.inputs[1].type.rank == 2
                 and n.inputs[1].shape[0] % (scheme.group or 1) == 0 and n.inputs[1].shape[0] % (8 // scheme.bits) == 0]
    if scheme.block_scaled:  # whole blocks of K, one 2-D weight
        nodes = [n for n in nodes if n.op == "matmul" and n.inputs[1].type.rank == 2
                 and n.inputs[1].shape[0] % (scheme.block or 1) == 0]
    stats = QuantStats(matmuls=len(nodes))
    if scheme.weight_only:  # routed experts too: their weights are most of an MoE model's bytes
        for n in [n for n in g.nodes if n.op == "moe_ffn"]:
            before = n.inputs[4].type.numel + n.inputs[5].type.numel
            if _weight_only_experts(g, n, scheme):
                stats.matmuls += 2
                stats.weight_elems += before
                stats.quant_bytes += sum(v.type.nbytes for v in n.inputs[4:8])
    shared: dict[int, tuple[Value, Value]] = {}  # activation -> (q, scale): siblings quantize it once
    for n in nodes:
        if scheme.weight_only or scheme.block_scaled:
            w = n.inputs[1]
            stats.weight_elems += w.type.numel
            stats.quant_bytes += scheme.weight_bytes(*w.shape)
            if scheme.weight_only:
                _weight_only_matmul(g, n, scheme)
            else:
                _mx_matmul(g, n, scheme, shared, _fits_prologue(n, scheme, prologue_bytes))
            continue
        w = n.inputs[1]
        stats.weight_elems += w.type.numel
        channels = w.shape[0] if n.op == "conv2d" else w.type.numel // w.shape[-2]
        stats.quant_bytes += w.type.numel * scheme.fmt.itemsize + channels * 4  # + one fp32 scale per channel
        _quantize_matmul(g, n, scheme, (act_scales or {}).get(n.inputs[0].name), shared,
                         _fits_prologue(n, scheme, prologue_bytes))
    return stats


PROLOGUE_ROWS = 16  # decode-sized activations: every core quantizes all rows itself in the GEMM's prologue


def _fits_prologue(n: Node, scheme: QuantScheme, budget: int) -> bool:
    """Whether matmul `n`'s activation quantizes in the GEMM's prologue: a dynamic scheme, a 2-D
    weight, at most PROLOGUE_ROWS rows whose resident copy fits `budget` bytes of scratchpad."""
    from vnpu.kernels.matmul import prologue_reserved_bytes

    a, w = n.inputs
    rows = int(np.prod(a.shape[:-1]))
    return (budget > 0 and n.op == "matmul" and scheme.activations in ("per_token", "per_block") and w.type.rank == 2
            and scheme.smooth is None and rows <= PROLOGUE_ROWS
            and prologue_reserved_bytes(rows, a.shape[-1], a.dtype, scheme.fmt) <= budget)


def _quantize_matmul(g: Graph, n: Node, scheme: QuantScheme, amax: float | None,
                     shared: dict[int, tuple[Value, Value]], prologue: bool = False) -> None:
    a, w = n.inputs
    fmt = scheme.fmt
    qmax = QMAX[fmt]
    new: list[Node] = []

    def add(op: str, ins: list[Value], attrs: dict | None = None) -> Value:
        node = g.add_node(op, ins, attrs or {}, name=f"{n.name}_{op}")
        g.nodes.pop()
        new.append(node)
        return node.outputs[0]

    def const(name: str, data: np.ndarray, dt: DType) -> Value:
        return g.add_const(f"{n.name}_{name}", data, dt)

    conv = n.op == "conv2d"
    if is_shape_only(w.data):  # a meta-device weight (timing only): shapes, no values
        qw = shape_only_array(w.shape, fmt)
        sw = np.ones(w.shape[:1] + (1,) * (w.type.rank - 1) if conv else w.shape[:-2] + (1, w.shape[-1]), np.float32)
    else:
        qw, sw = quantize_weight(w.data, fmt, (1, 2, 3) if conv else -2)
    if conv:  # per output channel of [N, O, OH, OW]
        sw = sw.reshape(1, -1, 1, 1)
    # named after the weight, so that every program of a model (an LLM's prefill and decode) shares them
    w_q = g.add_const(f"{w.name}_{fmt.value}", qw, fmt)
    w_s = g.add_const(f"{w.name}_{fmt.value}_scale", sw, DType.fp32)
    if w.name in g.weight_names:
        g.weight_names.update((w_q.name, w_s.name))
    f32 = DType.fp32
    keep = {KEEP_FP32: True}  # scales and the dequantization chain stay fp32 in bf16 programs
    if prologue and amax is None:  # the GEMM quantizes a's rows itself; its result is acc x s_x
        mm = Node(n.op, [a, w_q], [], {**n.attrs, "aq_fmt": fmt, "aq_qmax": qmax, **keep}, n.name)
        mm.outputs = [Value(g._fresh(n.name + "_acc"), TensorType(n.output.shape, f32), mm)]
        new.append(mm)
        y = add("mul", [mm.outputs[0], w_s], keep)
        out = n.output
        back = Node("cast", [y], [out], {"dtype": out.dtype}, f"{n.name}_dequant")
        out.producer = back
        new.append(back)
        i = g.nodes.index(n)
        g.nodes[i:i + 1] = new
        return
    if id(a) in shared:
        x_q, s_x = shared[id(a)]
    elif amax is None:  # per token: one kernel computes each row's scale and quantizes it
        qn = g.add_node("quantize_rows", [a], {"fmt": fmt, "qmax": qmax, **keep}, name=f"{n.name}_quant")
        g.nodes.pop()
        new.append(qn)
        x_q, s_x = qn.outputs
    else:
        amax = max(float(amax), 1e-30)
        s_x = const("sx", np.array(np.float32(amax) / np.float32(qmax), np.float32), f32)
        inv_s = const("inv_sx", np.array(np.float32(qmax) / np.float32(amax), np.float32), f32)
        x = a if a.dtype == f32 else add("cast", [a], {"dtype": f32, **keep})
        y = add("mul", [x, inv_s], keep)
        if fmt == DType.int8:
            y = add("round", [y], keep)
        y = add("clamp", [y], {"min": -qmax, "max": qmax, **keep})
        x_q = add("cast", [y], {"dtype": fmt})
    shared[id(a)] = (x_q, s_x)
    mm = Node(n.op, [x_q, w_q], [], {**n.attrs, **keep}, n.name)
    acc_t = TensorType(n.output.shape, DType.int32 if fmt == DType.int8 else f32)
    mm.outputs = [Value(g._fresh(n.name + "_acc"), acc_t, mm)]
    new.append(mm)
    acc = mm.outputs[0] if fmt != DType.int8 else add("cast", [mm.outputs[0]], {"dtype": f32, **keep})
    y = add("mul", [acc, s_x], keep)
    y = add("mul", [y, w_s], keep)
    out = n.output  # keeps its identity (users, graph outputs); set_precision rounds it to the program's dtype
    back = Node("cast", [y], [out], {"dtype": out.dtype}, f"{n.name}_dequant")
    out.producer = back
    new.append(back)
    i = g.nodes.index(n)
    g.nodes[i:i + 1] = new


def quantize_weight_groups(w: np.ndarray, bits: int, group: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-group quantization of a [K, N] weight along K: (q int8 [K, N] in
    -(2^(bits-1))..2^(bits-1) - 1, fp32 scales [K / group, N] = max |w| of the group / (2^(bits-1) - 1))."""
    w = np.asarray(w, np.float32)
    k, n = w.shape
    qmax = np.float32(2 ** (bits - 1) - 1)
    blocks = w.reshape(k // group, group, n)
    amax = np.abs(blocks).max(axis=1)
    scale = np.where(amax > 0, amax / qmax, np.float32(1.0)).astype(np.float32)
    q = np.clip(np.round(blocks / scale[:, None, :]), -qmax - 1, qmax).astype(np.int8)
    return q.reshape(k, n), scale


def pack_int4(q: np.ndarray) -> np.ndarray:
    """[K, N] int8 values in -8..7 -> [K / 2, N] bytes: row 2i in the low nibble, 2i + 1 in the high
    (sim.functional.unpack_int4 is the inverse)."""
    lo, hi = q[0::2].astype(np.uint8) & 0x0F, (q[1::2].astype(np.uint8) & 0x0F) << 4
    return (lo | hi).view(np.int8)


def _weight_only_matmul(g: Graph, n: Node, scheme: QuantScheme) -> None:
    """a @ W -> a @ dequant(Wq, scales): one matmul node whose kernel streams the packed weight."""
    a, w = n.inputs
    k, cols = w.shape
    group = scheme.group or k
    pack = 8 // scheme.bits
    if is_shape_only(w.data):
        packed, scale = shape_only_array((k // pack, cols), DType.int8), np.ones((k // group, cols), np.float32)
    else:
        q, scale = quantize_weight_groups(w.data, scheme.bits, group)
        packed = pack_int4(q) if scheme.bits == 4 else q
    tag = f"int{scheme.bits}g{group}"
    wq = g.add_const(f"{w.name}_{tag}", packed, DType.int8)
    ws = g.add_const(f"{w.name}_{tag}_scale", scale, DType.fp32)
    if w.name in g.weight_names:
        g.weight_names.update((wq.name, ws.name))
    n.inputs = [a, wq, ws]
    n.attrs.update({"wq_bits": scheme.bits, "wq_group": group})


def expert_group(k: int, scheme: QuantScheme) -> int | None:
    """Rows of K per scale for an expert weight with K inputs: the scheme's group (a whole row
    when K is shorter), None when K does not split into groups and packed bytes."""
    group = min(scheme.group or k, k)
    return group if k % group == 0 and k % (8 // scheme.bits) == 0 else None


def _weight_only_experts(g: Graph, n: Node, scheme: QuantScheme) -> bool:
    """moe_ffn's expert weights gate_up [E, 2I, H] and down [E, H, I] stored as the scheme stores
    a dense weight, K-major per expert: packed [E, K * bits / 8, N] int8 and fp32 scales
    [E, K / group, N] (K = H for gate/up, I for down); the kernel gathers and multiplies them
    packed (kernels/moe.py). False (left as they are) when K does not split into groups."""
    gu, dn = n.inputs[4], n.inputs[5]
    groups = [expert_group(w.shape[2], scheme) for w in (gu, dn)]
    if None in groups:
        return False
    pack = 8 // scheme.bits
    new = []
    for w, group in zip((gu, dn), groups):
        e, cols, k = w.shape
        if is_shape_only(w.data):
            packed = shape_only_array((e, k // pack, cols), DType.int8)
            scale = shape_only_array((e, k // group, cols), DType.fp32)
        else:
            qs = [quantize_weight_groups(np.asarray(w.data[i], np.float32).T, scheme.bits, group) for i in range(e)]
            packed = np.stack([pack_int4(q) if scheme.bits == 4 else q for q, _ in qs])
            scale = np.stack([sc for _, sc in qs])
        tag = f"int{scheme.bits}g{group}"
        wq = g.add_const(f"{w.name}_{tag}", packed, DType.int8)
        ws = g.add_const(f"{w.name}_{tag}_scale", scale, DType.fp32)
        if w.name in g.weight_names:
            g.weight_names.update((wq.name, ws.name))
        new += [wq, ws]
    n.inputs = n.inputs[:4] + [new[0], new[2], new[1], new[3]]
    n.attrs.update({"wq_bits": scheme.bits, "wq_group_gate_up": groups[0], "wq_group_down": groups[1]})
    return True


def quantize_weight_mx(w: np.ndarray, fmt: DType, block: int) -> tuple[np.ndarray, np.ndarray]:
    """A [K, N] weight in OCP MX along K: (elements in `fmt` — fp4x2 packs rows 2i, 2i + 1 into one
    byte, [K / 2, N] — and E8M0 scales [K / block, N])."""
    fp4 = fmt == DType.fp4x2_e2m1
    q, scale = mx_quantize(w, MX_EMAX[fmt], QMAX[fmt], block, axis=0, fp4=fp4)
    q = q.view(fmt.np) if fp4 else q.astype(fmt.np)  # fp8: the cast rounds to nearest even (clamped first)
    return q, scale.astype(DType.e8m0.np)


def _mx_matmul(g: Graph, n: Node, scheme: QuantScheme, shared: dict[int, tuple[Value, Value]],
               prologue: bool = False) -> None:
    """a @ W -> mx_matmul(quantize_rows(a, block), W in MX): one block-scaled matmul whose result is
    the dequantized product (fp32), cast to the node's dtype."""
    a, w = n.inputs
    fmt, blk = scheme.fmt, int(scheme.block or 32)
    k, cols = w.shape
    pack = PACKED_ELEMENTS.get(fmt, 1)
    if is_shape_only(w.data):
        qw, sw = shape_only_array((k // pack, cols), fmt), shape_only_array((k // blk, cols), DType.e8m0)
    else:
        qw, sw = quantize_weight_mx(w.data, fmt, blk)
    tag = f"mx{fmt.value}"
    w_q = g.add_const(f"{w.name}_{tag}", qw, fmt)
    w_s = g.add_const(f"{w.name}_{tag}_scale", sw, DType.e8m0)
    if w.name in g.weight_names:
        g.weight_names.update((w_q.name, w_s.name))
    keep = {KEEP_FP32: True}
    new: list[Node] = []
    attrs = {k_: v for k_, v in n.attrs.items() if k_ != "out_dtype"}
    if prologue:  # the GEMM quantizes a's rows per block itself
        mm = Node("matmul", [a, w_q, w_s], [], {**attrs, "aq_fmt": fmt, "aq_qmax": QMAX[fmt], "aq_block": blk,
                                                 "aq_emax": MX_EMAX[fmt], **keep}, n.name)
    elif id(a) in shared:
        x_q, s_x = shared[id(a)]
    else:
        qn = g.add_node("quantize_rows", [a], {"fmt": fmt, "qmax": QMAX[fmt], "block": blk, "emax": MX_EMAX[fmt], **keep},
                        name=f"{n.name}_quant")
        g.nodes.pop()
        new.append(qn)
        x_q, s_x = qn.outputs
        shared[id(a)] = (x_q, s_x)
    if not prologue:
        mm = Node("matmul", [x_q, w_q, s_x, w_s], [], {**attrs, "mx_block": blk, **keep}, n.name)
    mm.outputs = [Value(g._fresh(n.name + "_acc"), TensorType(n.output.shape, DType.fp32), mm)]
    new.append(mm)
    out = n.output
    back = Node("cast", [mm.outputs[0]], [out], {"dtype": out.dtype}, f"{n.name}_dequant")
    out.producer = back
    new.append(back)
    i = g.nodes.index(n)
    g.nodes[i:i + 1] = new


def _smooth(g: Graph, n: Node, x_amax: np.ndarray, alpha: float) -> Node:
    """SmoothQuant: x @ W == (x / s) @ (s W) with s_j = max|x_j|^alpha / max|W_j|^(1 - alpha) per
    input channel j, which flattens x's outlier channels before it is quantized. 1/s folds into
    the producing norm's weight when the activation comes from an rms_norm / layer_norm whose only
    user is this matmul (free, as SmoothQuant does); otherwise a multiply runs before the matmul."""
    a, w = n.inputs
    if n.op != "matmul" or is_shape_only(w.data) or x_amax.shape != (a.shape[-1],):
        return n
    w_amax = np.abs(np.asarray(w.data, np.float32)).reshape(-1, w.shape[-2], w.shape[-1]).max(axis=(0, 2))
    s = (np.maximum(x_amax, 1e-5) ** alpha / np.maximum(w_amax, 1e-5) ** (1 - alpha)).astype(np.float32)
    s = np.clip(s, 1e-5, 1e5)
    ws = g.add_const(f"{w.name}_smooth", (np.asarray(w.data, np.float32) * s[:, None]).astype(w.dtype.np), w.dtype)
    if w.name in g.weight_names:
        g.weight_names.add(ws.name)
    p = a.producer
    users = g.users().get(id(a), [])
    if (p is not None and p.op in ("rms_norm", "layer_norm") and len(p.inputs) > 1 and p.inputs[1].is_const
            and len(users) == 1 and p.inputs[1].shape == (a.shape[-1],)):
        nw = p.inputs[1]
        p.inputs[1] = g.add_const(f"{nw.name}_smooth", (np.asarray(nw.data, np.float32) / s).astype(nw.dtype.np),
                                  nw.dtype)
        if len(p.inputs) > 2 and p.inputs[2].is_const:  # layer_norm's bias scales too
            b = p.inputs[2]
            p.inputs[2] = g.add_const(f"{b.name}_smooth", (np.asarray(b.data, np.float32) / s).astype(b.dtype.np),
                                      b.dtype)
        n.inputs[1] = ws
        return n
    inv = g.add_const(f"{n.name}_inv_smooth", (1.0 / s).astype(a.dtype.np), a.dtype)
    m = g.add_node("mul", [a, inv], {}, name=f"{n.name}_smooth")
    g.nodes.pop()
    g.nodes.insert(g.nodes.index(n), m)
    n.inputs[0], n.inputs[1] = m.outputs[0], ws
    return n


def calibration_targets(g: Graph) -> list[tuple[str, Value]]:
    """(activation name, activation) for every matmul / conv input a per-tensor scheme calibrates,
    on a graph the prequant passes (compiler/lower.prequant_passes) have run on."""
    seen: dict[str, Value] = {}
    for n in quantizable_matmuls(g):
        seen.setdefault(n.inputs[0].name, n.inputs[0])
    return list(seen.items())


__all__ = ["QuantError", "QuantPlan", "QuantScheme", "QuantStats", "SCHEMES", "get_scheme", "check_chip", "quantize", "quantize_weight",
           "quantizable_matmuls", "calibration_targets", "QMAX", "KEEP_FP32", "quantize_weight_mx", "MX_EMAX"]
