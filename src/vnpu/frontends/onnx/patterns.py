"""IR rewrites that undo exporters' decompositions, so that an ONNX model compiles to the
same program as the PyTorch model it came from (torch.export keeps aten.gelu whole, while
ONNX before opset 20 has no Gelu and exporters spell it out with Erf)."""
from __future__ import annotations

import math

import numpy as np

from vnpu.ir.graph import Graph, Node, Value


def _scalar(v: Value, target: float, rel: float = 1e-4) -> bool:
    return v.is_const and v.type.numel == 1 and math.isclose(float(np.asarray(v.data, np.float64).reshape(-1)[0]),
                                                             target, rel_tol=rel)


def _other(n: Node, v: Value) -> Value | None:
    """The other operand of a binary node that has `v` as one operand."""
    if len(n.inputs) != 2:
        return None
    a, b = n.inputs
    return b if a is v else a if b is v else None


def _gelu_input(g: Graph, final: Node, producers: dict[int, Node]) -> Value | None:
    """x when `final` computes 0.5 * x * (1 + erf(x / sqrt(2))), in any association order."""
    if final.op != "mul":
        return None

    def prod(v: Value) -> Node | None:
        return producers.get(id(v))

    def one_plus_erf(v: Value) -> Value | None:  # 1 + erf(x / sqrt2) -> x
        n = prod(v)
        if n is None or n.op != "add":
            return None
        for e in n.inputs:
            en = prod(e)
            if en is not None and en.op == "erf" and _scalar(_other(n, e) or e, 1.0):
                un = prod(en.inputs[0])
                if un is not None and un.op == "div" and _scalar(un.inputs[1], math.sqrt(2)):
                    return un.inputs[0]
                if un is not None and un.op == "mul":
                    for x in un.inputs:
                        if _scalar(_other(un, x) or x, 1 / math.sqrt(2)):
                            return x
        return None

    a, b = final.inputs
    for half, rest in ((a, b), (b, a)):
        if _scalar(half, 0.5):  # 0.5 * (x * (1 + erf))
            rn = prod(rest)
            if rn is not None and rn.op == "mul":
                for t in rn.inputs:
                    x = one_plus_erf(t)
                    if x is not None and _other(rn, t) is x:
                        return x
    for p, q in ((a, b), (b, a)):  # (0.5 * x) * (1 + erf)  or  x * (0.5 * (1 + erf))
        x = one_plus_erf(q)
        pn = prod(p)
        if x is not None and pn is not None and pn.op == "mul" and x in pn.inputs and _scalar(_other(pn, x) or x, 0.5):
            return x
        x_ = None
        qn = prod(q)
        if qn is not None and qn.op == "mul":
            for t in qn.inputs:
                if _scalar(_other(qn, t) or t, 0.5):
                    x_ = one_plus_erf(t)
        if x_ is not None and p is x_:
            return x_
    return None


def lift_gelu(g: Graph) -> int:
    producers = {id(o): n for n in g.nodes for o in n.outputs}
    count = 0
    for n in g.nodes:
        x = _gelu_input(g, n, producers)
        if x is not None:
            n.op, n.inputs, n.attrs = "gelu", [x], {}
            count += 1
    return count


def drop_dead_nodes(g: Graph) -> int:
    """Removes nodes whose results nothing reads (left behind by folding and lifting)."""
    live = {id(v) for v in g.outputs}
    keep: list[Node] = []
    for n in reversed(g.nodes):
        if any(id(o) in live for o in n.outputs):
            keep.append(n)
            live.update(id(v) for v in n.inputs)
    dropped = len(g.nodes) - len(keep)
    g.nodes = list(reversed(keep))
    return dropped
