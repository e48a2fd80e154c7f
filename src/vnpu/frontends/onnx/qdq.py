"""QDQ models -> integer matmuls and convolutions.

onnxruntime's QDQ format (`quantize_static(..., quant_format=QuantFormat.QDQ)`) keeps every
MatMul / Gemm / Conv a float op between DequantizeLinear nodes:

    DequantizeLinear(x_q) -> Conv / MatMul / Gemm <- DequantizeLinear(w_q const, per tensor or per axis)
                                  [<- DequantizeLinear(int32 bias)]  [-> QuantizeLinear]

and relies on the runtime to recognize the group and run it on integers (onnxruntime's QDQ
selectors fuse it into QLinearConv / QLinearMatMul / QGemm). Lowered node by node, the float op
would be an fp32 matmul on dequantized tensors. This pass rewrites each such group into
standard ONNX integer ops before import:

    ConvInteger / MatMulInteger(x_q, w_q, x_zp, w_zp)           int32 accumulator, on the int8 matrix engine
    [-> Add(int32 bias)]                                       the bias, when its scale is x_scale * w_scale
    -> Cast(float) -> Mul(x_scale * w_scale / y_scale)          onnxruntime's requantization multiplier
    -> QuantizeLinear(scale 1, y_zp)                            round half to even, + zero point, saturate

or, without a QuantizeLinear after it, Cast -> Mul(x_scale * w_scale) [-> Add(float bias)]: the
dequantization epilogue. fusion.py merges these elementwise ops into the matmul / conv kernel.

Why on the ONNX graph before import, not on the IR: the group is explicit in ONNX (node types,
initializers, attributes such as `axis` and `transB`), while after import DequantizeLinear has
become generic sub / mul / cast chains and the float op an fp32 matmul whose int8 origin would have
to be re-derived. Rewriting into MatMulInteger / ConvInteger reuses their lowerings
(ops_quant.py), the same ones the QOperator-format and dynamically quantized models take, so there
is one integer path. The model is copied before it is changed; one that has no group is returned
unchanged.
"""
from __future__ import annotations

from typing import Any

import numpy as np

FLOAT, UINT8, INT8, INT32 = 1, 2, 3, 6
Q8 = (INT8, UINT8)


class _Graph:
    """Look-ups over one onnx.GraphProto: producers, consumers, initializers, element types."""

    def __init__(self, graph: Any):
        from onnx import numpy_helper

        self.g = graph
        self.inits = {t.name: t for t in graph.initializer}
        self._arrays: dict[str, np.ndarray] = {}
        self._to_array = numpy_helper.to_array
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.consumers: dict[str, list[Any]] = {}
        for n in graph.node:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in graph.output}
        self.types = {t.name: int(t.data_type) for t in graph.initializer}
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                self.types.setdefault(vi.name, int(vi.type.tensor_type.elem_type))

    def array(self, name: str) -> np.ndarray | None:
        if name not in self.inits:
            return None
        if name not in self._arrays:
            self._arrays[name] = self._to_array(self.inits[name])
        return self._arrays[name]


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


class _Dequant:
    """A DequantizeLinear's operands: its quantized input, scale and zero point (constants)."""

    def __init__(self, q: str, elem: int, scale: np.ndarray, zp_name: str | None, zp: np.ndarray, axis: int):
        self.q, self.elem, self.scale, self.zp_name, self.zp, self.axis = q, elem, scale, zp_name, zp, axis


def _dequant(gr: _Graph, name: str, rank: int | None) -> _Dequant | None:
    """The DequantizeLinear producing `name` with a constant scale and zero point, or None.
    `rank`: the quantized tensor's rank, to normalize a per-axis `axis` (None: per tensor only)."""
    n = gr.producer.get(name)
    if n is None or n.op_type != "DequantizeLinear" or n.domain not in ("", "ai.onnx"):
        return None
    if _attr(n, "block_size", 0):
        return None
    scale = gr.array(n.input[1])
    zp_name = n.input[2] if len(n.input) > 2 and n.input[2] else None
    zp = gr.array(zp_name) if zp_name else None
    if scale is None or scale.dtype != np.float32 or (zp_name and zp is None):
        return None
    elem = gr.types.get(zp_name) if zp_name else gr.types.get(n.input[0])
    if elem is None:
        return None
    if zp is None:
        zp = np.zeros(scale.shape, np.int64)
    axis = int(_attr(n, "axis", 1))
    if scale.size != 1:
        if rank is None or scale.ndim != 1 or zp.shape != scale.shape:
            return None
        axis = axis + rank if axis < 0 else axis
    elif zp.size != 1:
        return None
    return _Dequant(n.input[0], elem, scale.reshape(-1), zp_name, zp.reshape(-1), axis)


def fuse_qdq(model: Any) -> tuple[Any, int]:
    """(the model with its QDQ matmul / conv groups rewritten into integer ops, how many)."""
    if not _find_groups(model.graph, dry_run=True):
        return model, 0
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m, _find_groups(m.graph, dry_run=False)


def _find_groups(graph: Any, dry_run: bool) -> int:
    """Plans every group on the unchanged graph (groups never overlap: each has its own float op
    and QuantizeLinear), then, unless `dry_run`, puts each group's integer nodes in its float op's place."""
    gr = _Graph(graph)
    replaced: dict[int, list[Any]] = {}  # node index -> the nodes standing in for it
    removed: set[str] = set()  # outputs of the QuantizeLinear nodes folded into a group (protobuf
    # hands out a new wrapper object on every access: nodes are told apart by their outputs)
    for idx, node in enumerate(graph.node):
        if node.op_type in ("Conv", "MatMul", "Gemm") and node.domain in ("", "ai.onnx"):
            plan = _plan(gr, node)
            if plan is None:
                continue
            replaced[idx] = [] if dry_run else _integer_nodes(gr, node, *plan)
            if plan[-1] is not None:
                removed.add(plan[-1].output[0])
    if replaced and not dry_run:
        kept: list[Any] = []
        for idx, node in enumerate(graph.node):
            if node.op_type == "QuantizeLinear" and node.output[0] in removed:
                continue
            if idx in replaced:
                kept.extend(replaced[idx])
            else:
                c = type(node)()
                c.CopyFrom(node)
                kept.append(c)
        del graph.node[:]
        graph.node.extend(kept)
        _drop_orphaned_dequants(graph)
    return len(replaced)


def _plan(gr: _Graph, node: Any) -> tuple | None:
    """What the group around `node` is made of, or None when it is not one this pass takes."""
    op = node.op_type
    if len(node.input) < 2:
        return None
    x = _dequant(gr, node.input[0], None)
    if x is None or x.elem not in Q8:
        return None
    w_arr = gr.array(_dequant_input(gr, node.input[1]) or "")
    out_axis = 0 if op == "Conv" else 1
    if op == "Gemm":
        if _attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0:
            return None
        out_axis = 0 if _attr(node, "transB", 0) else 1
    w = _dequant(gr, node.input[1], None if w_arr is None else w_arr.ndim)
    if w is None or w.elem not in Q8:
        return None
    if w_arr is None:  # a run-time right operand (attention's Q K^T): per tensor, MatMul only
        if op != "MatMul" or w.scale.size != 1:
            return None
    else:
        if op == "Conv" and w_arr.ndim < 3 or op != "Conv" and w_arr.ndim != 2:
            return None
        if w.scale.size != 1 and (w.axis != out_axis or w.scale.size != w_arr.shape[out_axis]):
            return None
    channels = w_arr.shape[out_axis] if w_arr is not None else 1
    # the bias: an int32 DequantizeLinear of x_scale * w_scale (folded into the accumulator), or a float tensor
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    bias_q = None
    if bias is not None:
        if op == "MatMul":
            return None
        bq = _dequant(gr, bias, 1)
        b_arr = gr.array(bq.q) if bq is not None else None
        if bq is not None and bq.elem == INT32 and b_arr is not None and b_arr.size == channels and not np.any(bq.zp):
            acc_scale = np.float32(x.scale[0]) * w.scale.astype(np.float32)
            if np.allclose(bq.scale, acc_scale, rtol=1e-6, atol=0):
                bias_q = b_arr.reshape(-1).astype(np.int32)
        if bias_q is None and gr.types.get(bias, FLOAT) != FLOAT:
            return None
    # the requantization: the only consumer a per-tensor QuantizeLinear to an 8-bit type
    y = node.output[0]
    quant = None
    users = gr.consumers.get(y, [])
    if y not in gr.outputs and len(users) == 1 and users[0].op_type == "QuantizeLinear" and users[0].input[0] == y:
        q = users[0]
        sy = gr.array(q.input[1])
        zy_name = q.input[2] if len(q.input) > 2 and q.input[2] else None
        if sy is not None and sy.size == 1 and sy.dtype == np.float32 and zy_name and \
                gr.array(zy_name) is not None and gr.array(zy_name).size == 1 and gr.types.get(zy_name) in Q8:
            quant = q
    return x, w, w_arr, bias, bias_q, quant


def _dequant_input(gr: _Graph, name: str) -> str | None:
    n = gr.producer.get(name)
    return n.input[0] if n is not None and n.op_type == "DequantizeLinear" else None


def _integer_nodes(gr: _Graph, node: Any, x: _Dequant, w: _Dequant, w_arr: np.ndarray | None, bias: str | None,
                   bias_q: np.ndarray | None, quant: Any) -> list[Any]:
    """The integer ops standing in for `node` (and `quant`); their new initializers are added to the graph."""
    from onnx import TensorProto, helper, numpy_helper

    g = gr.g
    op = node.op_type
    base = (node.name or node.output[0]).replace("/", "_") + "_qdq"
    new: list[Any] = []
    inits: list[Any] = []

    def init(suffix: str, arr: np.ndarray) -> str:
        t = numpy_helper.from_array(arr, f"{base}_{suffix}")
        inits.append(t)
        return t.name

    def emit(op_type: str, inputs: list[str], suffix: str, output: str | None = None, **attrs: Any) -> str:
        out = output or f"{base}_{suffix}"
        new.append(helper.make_node(op_type, inputs, [out], name=f"{base}_{suffix}", **attrs))
        return out

    conv = op == "Conv"
    channels = w.scale.size
    # per output channel, broadcast over the accumulator: [1, M, 1, ...] for a conv, [N] for a matmul
    rank_out = len(w_arr.shape) if conv else 1
    chan_shape = [1, channels] + [1] * (rank_out - 2) if conv else [channels]
    w_name = w.q
    if op == "Gemm" and _attr(node, "transB", 0):
        w_t = np.ascontiguousarray(w_arr.T)  # stored [K, N] once, as MatMulInteger reads it
        w_name = init("w", w_t)
        _declare(g, w_name, w.elem)
    x_zp = x.zp_name or ""
    w_zp = w.zp_name or ""
    if not w_zp and w.elem == UINT8:  # an absent zero point is 0 of the tensor's type
        w_zp = init("w_zp", np.zeros((), np.uint8))
    if w.zp.size != 1 and w.zp_name:
        w_zp = w.zp_name
    _declare(g, x.q, x.elem)
    _declare(g, w.q, w.elem)
    ins = [x.q, w_name, x_zp, w_zp]
    while ins and not ins[-1]:
        ins.pop()
    if conv:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        acc = emit("ConvInteger", ins, "acc", **attrs)
    else:
        acc = emit("MatMulInteger", ins, "acc")
    if bias_q is not None:
        acc = emit("Add", [acc, init("bias", bias_q.reshape(chan_shape))], "acc_bias")
    accf = emit("Cast", [acc], "accf", to=TensorProto.FLOAT)
    sx = np.float32(x.scale[0])
    acc_scale = (sx * w.scale.astype(np.float32)).astype(np.float32)  # float32 products, as onnxruntime
    scale_shape = chan_shape if channels > 1 else []
    float_bias = bias if bias is not None and bias_q is None else None
    if quant is not None and float_bias is None:
        sy = np.float32(gr.array(quant.input[1]).reshape(()))
        multiplier = (acc_scale / sy).astype(np.float32)
        yf = emit("Mul", [accf, init("multiplier", multiplier.reshape(scale_shape))], "requant")
        emit("QuantizeLinear", [yf, init("one", np.array(1.0, np.float32)), quant.input[2]], "quant",
             output=quant.output[0])
    else:
        yf = emit("Mul", [accf, init("scale", acc_scale.reshape(scale_shape))], "dequant",
                  output=None if float_bias is not None or quant is not None else node.output[0])
        if float_bias is not None:
            if conv:  # [M] -> [1, M, 1, ...] against the [N, M, ...] output
                float_bias = emit("Reshape", [float_bias, init("bias_shape", np.array(chan_shape, np.int64))], "bias_col")
            yf = emit("Add", [yf, float_bias], "bias", output=None if quant is not None else node.output[0])
        if quant is not None:
            emit("QuantizeLinear", [yf, quant.input[1], quant.input[2]], "quant", output=quant.output[0])
    g.initializer.extend(inits)
    return new


def _declare(g: Any, name: str, elem: int) -> None:
    """Records the ONNX element type of `name` (ops_quant reads integer types from the model)."""
    from onnx import helper

    known = [v.name for v in g.value_info] + [t.name for t in g.initializer] + [v.name for v in g.input]
    if name and name not in known:
        g.value_info.append(helper.make_tensor_value_info(name, elem, None))


def _drop_orphaned_dequants(graph: Any) -> None:
    """Removes the DequantizeLinear nodes nothing reads any more (the weights' and biases')."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input if i} | outputs
        dead = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] not in used}
        if not dead:
            return
        kept = []
        for n in graph.node:
            if not (n.op_type == "DequantizeLinear" and n.output[0] in dead):
                c = type(n)()
                c.CopyFrom(n)
                kept.append(c)
        del graph.node[:]
        graph.node.extend(kept)
