"""ONNX lowerings: control flow (If, Loop, Scan) unrolled at import time, and sequences as compile-time lists.

vnpu programs are static dataflow graphs, so control flow is resolved while importing: a
subgraph body is imported into the same Graph (`OnnxContext.inline`, its env chaining to the
enclosing one), once per branch, iteration or scan step. An If on a constant condition inlines
the branch taken; on a run-time condition both branches (ONNX subgraphs have no side effects)
and `where` selects between their outputs. A Loop needs a constant trip count or a condition
that folds to a constant every iteration; a Scan steps over its inputs' static length (an
opset-8 Scan, with its batch axis, is rewritten as one opset-9 Scan per batch element before
the model is upgraded: `upgrade_scan8`). The
unrolled body nodes of a model are bounded by MAX_UNROLLED_NODES; past it the node is not
lowered (the host runs it, or strict=True names it).

Sequences are Python lists of tensor Values (`SeqValue`): their length is known at import,
their elements are computed by the program. Optionals are `OptionalValue`s. Neither may be a
graph input or output (programs take and return tensors).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from vnpu.dtypes import DType
from vnpu.frontends.errors import UnsupportedOpError
from vnpu.frontends.onnx.importer import TAKES_NON_TENSORS, OnnxContext as Cx, OnnxModelError, OnnxValue, \
    OptionalValue, SeqValue, UnrollLimitError, _elem_dtype, onnx_op
from vnpu.frontends.onnx.onnx_ops import _axis, _gather, _reshape_to, _wrap_negative
from vnpu.ir.graph import Value
from vnpu.ir.ops import IRTypeError

Ins = list[Any]  # a node's inputs: Values, SeqValues, OptionalValues, None for an omitted one


def _control_op(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Registers a lowering that may take sequence / optional inputs."""
    TAKES_NON_TENSORS.update(names)
    return onnx_op(*names)


def _scalar(v: Value) -> Any:
    return np.asarray(v.data).reshape(-1)[0]


def _const_index(v: Any) -> int | None:
    """A constant integer scalar input (a position, a trip count) as an int; None at run time."""
    if not isinstance(v, Value) or not v.is_const or v.type.numel != 1:
        return None
    return int(_scalar(v))


def _stack(cx: Cx, xs: list[Value], axis: int) -> Value | None:
    """xs (equal shapes) stacked along a new axis `axis` (of the result's rank); None when their
    shapes or dtypes differ."""
    first = xs[0]
    if any(x.shape != first.shape or x.dtype != first.dtype for x in xs):
        return None
    axis = _axis(axis, first.type.rank + 1)
    shape = list(first.shape)
    shape.insert(axis, 1)
    parts = [_reshape_to(cx, x, shape) for x in xs]
    if all(p.is_const for p in parts):
        return cx.const(np.concatenate([np.asarray(p.data) for p in parts], axis=axis), first.dtype)
    return parts[0] if len(parts) == 1 else cx.emit("concat", parts, {"axis": axis})


def _step(cx: Cx, x: Value, axis: int, i: int) -> Value:
    """x[..., i, ...] along `axis`, that axis removed."""
    shape = [d for k, d in enumerate(x.shape) if k != axis]
    if x.is_const:
        return cx.const(np.take(np.asarray(x.data), i, axis=axis), x.dtype)
    s = cx.emit("slice", [x], {"axis": axis, "start": i, "end": i + 1, "step": 1})
    return _reshape_to(cx, s, shape)


# -- If ------------------------------------------------------------------------------------------
def _select(cx: Cx, cond: Value, a: OnnxValue, b: OnnxValue) -> OnnxValue | None:
    """where(cond, a, b) for the outputs of two branches, elementwise through sequences and
    optionals; None when their shapes, dtypes or structure differ."""
    if a is b:
        return a
    if isinstance(a, Value) and isinstance(b, Value):
        if a.shape != b.shape or a.dtype != b.dtype:
            return None
        return cx.emit("where", [cond, a, b])
    if isinstance(a, SeqValue) and isinstance(b, SeqValue):
        if len(a) != len(b):
            return None
        items = [_select(cx, cond, x, y) for x, y in zip(a, b)]
        return None if any(v is None for v in items) else SeqValue(items, a.elem_dtype)
    if isinstance(a, OptionalValue) and isinstance(b, OptionalValue):
        if a.value is None or b.value is None:
            return a if a.value is None and b.value is None else None
        v = _select(cx, cond, a.value, b.value)
        return None if v is None else OptionalValue(v)
    return None


@_control_op("If")
def _if(cx: Cx, ins: Ins, attrs: dict) -> tuple | None:
    cond = ins[0]
    then_g, else_g = attrs["then_branch"], attrs["else_branch"]
    if cond.is_const:
        taken = then_g if bool(_scalar(cond)) else else_g
        return cx.tentatively(lambda: tuple(cx.inline(taken, [])))
    if cond.type.numel != 1:
        return None
    c = _reshape_to(cx, cx.cast(cond, DType.bool), [])  # a scalar condition broadcasts to any output shape

    def both() -> tuple | None:
        outs = [_select(cx, c, a, b) for a, b in zip(cx.inline(then_g, []), cx.inline(else_g, []))]
        return None if any(v is None for v in outs) else tuple(outs)

    # a branch the data never takes may not even import for these shapes: then the node is not lowered
    return cx.tentatively(both, (UnrollLimitError, OnnxModelError, IRTypeError, UnsupportedOpError))


# -- Loop ----------------------------------------------------------------------------------------
@_control_op("Loop")
def _loop(cx: Cx, ins: Ins, attrs: dict) -> tuple | None:
    body = attrs["body"]
    trips_in = ins[0] if len(ins) > 0 else None
    cond_in = ins[1] if len(ins) > 1 else None
    carried = list(ins[2:])
    trips = _const_index(trips_in) if trips_in is not None else None
    if trips_in is not None and trips is None:
        return None  # a run-time trip count: the number of iterations is not known at import
    if cond_in is not None and not (isinstance(cond_in, Value) and cond_in.is_const):
        return None
    n_scan = len(body.output) - 1 - len(carried)

    def unroll() -> tuple | None:
        state = list(carried)
        scans: list[list[Value]] = [[] for _ in range(n_scan)]
        go = True if cond_in is None else bool(_scalar(cond_in))
        i = 0
        while go and (trips is None or i < trips):
            outs = cx.inline(body, [cx.const(np.array(i, np.int64), DType.int64), cx.const(np.array(go), DType.bool),
                                    *state])
            c = outs[0]
            if not (isinstance(c, Value) and c.is_const):
                return None  # whether to go on is known only at run time
            go = bool(_scalar(c))
            state = outs[1:1 + len(carried)]
            for k, v in enumerate(outs[1 + len(carried):]):
                if not isinstance(v, Value):
                    return None
                scans[k].append(v)
            i += 1
            if not body.node and i > cx.unroll_budget:  # a body of no nodes spends no budget
                raise UnrollLimitError(f"node {cx.node_label} (Loop): more than {cx.unroll_budget} iterations")
        stacked = []
        for vs in scans:
            if not vs:
                return None  # no iteration ran: the scan output's element shape is not known
            s = _stack(cx, vs, 0)
            if s is None:
                return None
            stacked.append(s)
        return (*state, *stacked)

    return cx.tentatively(unroll)


# -- Scan (opset 9 and newer) --------------------------------------------------------------------
@_control_op("Scan")
def _scan(cx: Cx, ins: Ins, attrs: dict) -> tuple | None:
    body = attrs["body"]
    n_in = int(attrs["num_scan_inputs"])
    n_state = len(ins) - n_in
    states, xs = list(ins[:n_state]), list(ins[n_state:])
    if any(not isinstance(x, Value) for x in xs):
        return None
    n_out = len(body.output) - n_state
    in_axes = [_axis(int(a), x.type.rank) for a, x in zip(attrs.get("scan_input_axes", [0] * n_in), xs)]
    in_dirs = list(attrs.get("scan_input_directions", [0] * n_in))
    out_axes = list(attrs.get("scan_output_axes", [0] * n_out))
    out_dirs = list(attrs.get("scan_output_directions", [0] * n_out))
    lengths = {x.shape[a] for x, a in zip(xs, in_axes)}
    if len(lengths) != 1 or 0 in lengths:
        return None  # scan inputs of different lengths, or none to step over
    steps = lengths.pop()
    if steps * len(body.node) > cx.unroll_budget:
        return None  # more unrolled body nodes than the model's budget allows

    def unroll() -> tuple | None:
        state = states
        scans: list[list[Value]] = [[] for _ in range(n_out)]
        for t in range(steps):
            elems = [_step(cx, x, a, steps - 1 - t if d else t) for x, a, d in zip(xs, in_axes, in_dirs)]
            outs = cx.inline(body, [*state, *elems])
            state = outs[:n_state]
            for k, v in enumerate(outs[n_state:]):
                if not isinstance(v, Value):
                    return None
                scans[k].append(v)
        stacked = []
        for vs, a, d in zip(scans, out_axes, out_dirs):
            s = _stack(cx, vs[::-1] if d else vs, int(a))  # direction 1: the last step's element comes first
            if s is None:
                return None
            stacked.append(s)
        return (*state, *stacked)

    return cx.tentatively(unroll)


# -- sequences -----------------------------------------------------------------------------------
def _position(cx: Cx, v: Any, n: int, default: int, inserting: bool = False) -> int | None:
    """A constant sequence position (negative counts from the end) in range; None at run time.
    Inserting, n itself is a valid position (the end)."""
    if v is None:
        return default
    p = _const_index(v)
    if p is None:
        return None
    p = p + n if p < 0 else p
    if not 0 <= p < n + (1 if inserting else 0):
        raise OnnxModelError(f"node {cx.node_label} ({cx.node.op_type}): position {_const_index(v)} is out of range "
                             f"for a sequence of {n}")
    return p


def _seq(cx: Cx, v: Any) -> SeqValue:
    if not isinstance(v, SeqValue):
        raise OnnxModelError(f"node {cx.node_label} ({cx.node.op_type}) takes a sequence; its input is a "
                             f"{'tensor' if isinstance(v, Value) else 'optional'}")
    return v


@_control_op("SequenceConstruct")
def _sequence_construct(cx: Cx, ins: Ins, attrs: dict) -> SeqValue:
    return SeqValue([v for v in ins if v is not None])


@_control_op("SequenceEmpty")
def _sequence_empty(cx: Cx, ins: Ins, attrs: dict) -> SeqValue:
    return SeqValue([], _elem_dtype(int(attrs.get("dtype", 1))))  # 1: FLOAT, the default


@_control_op("SequenceLength")
def _sequence_length(cx: Cx, ins: Ins, attrs: dict) -> Value:
    return cx.const(np.array(len(_seq(cx, ins[0])), np.int64), DType.int64)


@_control_op("SequenceAt")
def _sequence_at(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    seq = _seq(cx, ins[0])
    p = _position(cx, ins[1], len(seq), 0)
    if p is not None:
        return seq[p]
    # a run-time position: the elements (of one shape) stacked, the one asked for gathered
    if not seq or ins[1].type.numel != 1:
        return None
    stacked = _stack(cx, list(seq), 0)
    if stacked is None:
        return None
    return _gather(cx, [stacked, _reshape_to(cx, _wrap_negative(cx, ins[1], len(seq)), [])], {"axis": 0})


@_control_op("SequenceInsert")
def _sequence_insert(cx: Cx, ins: Ins, attrs: dict) -> SeqValue | None:
    seq = _seq(cx, ins[0])
    p = _position(cx, ins[2] if len(ins) > 2 else None, len(seq), len(seq), inserting=True)
    if p is None:
        return None
    items = list(seq)
    items.insert(p, ins[1])
    return SeqValue(items, seq.elem_dtype or ins[1].dtype)


@_control_op("SequenceErase")
def _sequence_erase(cx: Cx, ins: Ins, attrs: dict) -> SeqValue | None:
    seq = _seq(cx, ins[0])
    if not seq:
        raise OnnxModelError(f"node {cx.node_label} (SequenceErase): the sequence is empty")
    p = _position(cx, ins[1] if len(ins) > 1 else None, len(seq), len(seq) - 1)
    if p is None:
        return None
    return SeqValue(seq[:p] + seq[p + 1:], seq.elem_dtype)


@_control_op("SplitToSequence")
def _split_to_sequence(cx: Cx, ins: Ins, attrs: dict) -> SeqValue | None:
    x = ins[0]
    axis = _axis(int(attrs.get("axis", 0)), x.type.rank)
    n = x.shape[axis]
    split = ins[1] if len(ins) > 1 else None
    squeeze = False
    if split is None:
        sizes = [1] * n
        squeeze = not attrs.get("keepdims", 1)
    else:
        given = cx.ints(split)
        if given is None:
            return None  # run-time split sizes: the elements' shapes are not known at import
        if split.type.rank == 0:  # one chunk size; the last chunk takes what is left
            if given[0] <= 0:
                raise OnnxModelError(f"node {cx.node_label} (SplitToSequence): split size {given[0]} is not positive")
            sizes = [min(given[0], n - s) for s in range(0, n, given[0])]
        else:
            sizes = given
        if sum(sizes) != n:
            raise OnnxModelError(f"node {cx.node_label} (SplitToSequence): split sizes {sizes} do not add up to "
                                 f"the axis length {n}")
    items, start = [], 0
    for s in sizes:
        if squeeze:
            items.append(_step(cx, x, axis, start))
        elif s == n:
            items.append(x)
        else:
            items.append(cx.emit("slice", [x], {"axis": axis, "start": start, "end": start + s, "step": 1}))
        start += s
    return SeqValue(items, x.dtype)


@_control_op("ConcatFromSequence")
def _concat_from_sequence(cx: Cx, ins: Ins, attrs: dict) -> Value | None:
    seq = _seq(cx, ins[0])
    if not seq:
        return None  # an empty sequence has no element shape to concatenate
    axis = int(attrs["axis"])
    if attrs.get("new_axis", 0):
        return _stack(cx, list(seq), axis)
    axis = _axis(axis, seq[0].type.rank)
    if len(seq) == 1:
        return seq[0]
    parts = [cx.cast(v, seq[0].dtype) for v in seq]
    return cx.emit("concat", parts, {"axis": axis})


@_control_op("SequenceMap")
def _sequence_map(cx: Cx, ins: Ins, attrs: dict) -> tuple | None:
    body = attrs["body"]
    seqs = [v for v in ins if isinstance(v, SeqValue)]
    n = len(seqs[0]) if seqs else 0
    if any(len(s) != n for s in seqs):
        raise OnnxModelError(f"node {cx.node_label} (SequenceMap): its input sequences differ in length")
    if n * len(body.node) > cx.unroll_budget:
        return None

    def unroll() -> tuple:
        outs: list[list[Value]] = [[] for _ in body.output]
        for i in range(n):
            bound = [v[i] if isinstance(v, SeqValue) else v for v in ins]
            for k, v in enumerate(cx.inline(body, bound)):
                outs[k].append(v)
        # (the body's declared element type, for an empty result)
        return tuple(SeqValue(vs, vs[0].dtype if vs else _elem_dtype(o.type.tensor_type.elem_type))
                     for o, vs in zip(body.output, outs))

    return cx.tentatively(unroll)


# -- optionals -----------------------------------------------------------------------------------
@_control_op("Optional")
def _optional(cx: Cx, ins: Ins, attrs: dict) -> OptionalValue:
    return OptionalValue(ins[0] if ins else None)


@_control_op("OptionalHasElement")
def _optional_has_element(cx: Cx, ins: Ins, attrs: dict) -> Value:
    v = ins[0] if ins else None
    has = v.value is not None if isinstance(v, OptionalValue) else v is not None  # a tensor / sequence input: present
    return cx.const(np.array(has), DType.bool)


@_control_op("OptionalGetElement")
def _optional_get_element(cx: Cx, ins: Ins, attrs: dict) -> OnnxValue:
    v = ins[0]
    if isinstance(v, OptionalValue):
        if v.value is None:
            raise OnnxModelError(f"node {cx.node_label} (OptionalGetElement): the optional is empty")
        return v.value
    return v  # a tensor or sequence input is its own element (opset 18)


# -- Scan, opset 8 (a batch axis) ------------------------------------------------------------------
_LEGACY_DOMAIN = "vnpu.legacy"


def upgrade_scan8(proto: Any, target_opset: int) -> Any | None:
    """An opset-8 model whose top-level Scan nodes (batch axis first, sequence_lens omitted) are
    rewritten as one opset-9 Scan per batch element, the rest of the model upgraded by the ONNX
    version converter; None when some Scan cannot be rewritten (sequence_lens given, a batch
    size not known statically, a body that does not upgrade on its own).

    (The converter's own Scan 8 -> 9 step drops the batch axis from the model's inputs and
    outputs, changing what the program takes and returns; the Scans are kept out of its way
    behind placeholder nodes of another domain, which it leaves alone.)"""
    import onnx
    from onnx import helper, version_converter

    opset = next(int(i.version) for i in proto.opset_import if i.domain in ("", "ai.onnx"))
    try:
        typed = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 - no shapes: no batch size
        return None
    types = {vi.name: vi.type for vi in list(typed.graph.input) + list(typed.graph.value_info) + list(typed.graph.output)}

    def batch_of(name: str) -> int | None:
        t = types.get(name)
        if t is None or not t.HasField("tensor_type") or not t.tensor_type.shape.dim:
            return None
        d = t.tensor_type.shape.dim[0]
        return int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    scans: dict[str, tuple[Any, Any, int]] = {}  # placeholder name -> (the Scan node, its upgraded body, batch size)
    for k, node in enumerate(m.graph.node):
        if node.op_type != "Scan" or node.domain not in ("", "ai.onnx"):
            continue
        if node.input and node.input[0]:
            return None  # sequence_lens: per-element lengths are not static
        batches = {batch_of(i) for i in node.input[1:] if i}
        if len(batches) != 1 or None in batches:
            return None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        body = onnx.ModelProto()
        body.CopyFrom(helper.make_model(attrs["body"], opset_imports=[helper.make_opsetid("", opset)],
                                        ir_version=proto.ir_version))
        try:
            body = version_converter.convert_version(body, target_opset)
        except Exception:  # noqa: BLE001 - e.g. a body reading the enclosing graph's values
            return None
        name = f"__scan8_{k}"
        original = onnx.NodeProto()
        original.CopyFrom(node)  # (node itself is overwritten by the placeholder below)
        scans[name] = (original, body.graph, batches.pop())
        placeholder = helper.make_node("Scan8", [i for i in node.input[1:]], list(node.output), name=name,
                                       domain=_LEGACY_DOMAIN)
        m.graph.node[k].CopyFrom(placeholder)
    if not scans:
        return None
    m.opset_import.append(helper.make_opsetid(_LEGACY_DOMAIN, 1))
    try:
        m = version_converter.convert_version(m, target_opset)
    except Exception:  # noqa: BLE001
        return None
    nodes = []
    for node in m.graph.node:
        if node.domain != _LEGACY_DOMAIN:
            nodes.append(node)
            continue
        scan, body, batch = scans[node.name]
        attrs = {a.name: helper.get_attribute_value(a) for a in scan.attribute}
        n_in = int(attrs["num_scan_inputs"])
        pre = node.name
        axis0 = f"{pre}_axis0"
        nodes.append(helper.make_node("Constant", [], [axis0], value=helper.make_tensor(axis0, onnx.TensorProto.INT64, [1], [0])))
        per_batch: list[list[str]] = [[] for _ in scan.output]
        for b in range(batch):
            at = f"{pre}_b{b}"
            nodes.append(helper.make_node("Constant", [], [at], value=helper.make_tensor(at, onnx.TensorProto.INT64, [], [b])))
            ins = []
            for i in node.input:  # element b of every state and scan input (the batch axis dropped)
                ins.append(f"{pre}_{i}_b{b}")
                nodes.append(helper.make_node("Gather", [i, at], [ins[-1]], axis=0))
            outs = [f"{pre}_{o}_b{b}" for o in scan.output]
            extra = {"scan_input_directions": list(attrs["directions"])} if "directions" in attrs else {}
            nodes.append(helper.make_node("Scan", ins, outs, name=f"{scan.name or pre}_b{b}", body=body,
                                          num_scan_inputs=n_in, **extra))
            for k, o in enumerate(outs):
                per_batch[k].append(f"{o}_1")
                nodes.append(helper.make_node("Unsqueeze", [o, axis0], [per_batch[k][-1]]))
        for o, parts in zip(scan.output, per_batch):  # the batch axis back in front
            nodes.append(helper.make_node("Concat", parts, [o], axis=0) if len(parts) > 1
                         else helper.make_node("Identity", parts, [o]))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    keep = [i for i in m.opset_import if i.domain != _LEGACY_DOMAIN]
    del m.opset_import[:]
    m.opset_import.extend(keep)
    return m
