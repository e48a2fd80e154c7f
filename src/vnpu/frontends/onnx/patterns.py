"""IR rewrites that undo exporters' decompositions, so that an ONNX model compiles to the
same program as the PyTorch model it came from, and to the chip's fused kernels:
GELU spelled out with Erf (ONNX before opset 20 has no Gelu), and layer normalization
spelled out as moments (TF/Keras: mean, squared difference, rsqrt, scale and shift)."""
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


def _gelu_input(final: Node) -> Value | None:
    """x when `final` computes 0.5 * x * (1 + erf(x / sqrt(2))), in any association order."""
    if final.op != "mul":
        return None

    def prod(v: Value) -> Node | None:
        return v.producer

    def scaled(u: Value, sign: float) -> Value | None:  # x / sqrt2 (sign 1) or -x / sqrt2 (sign -1) -> x
        un = prod(u)
        if un is None:
            return None
        if un.op == "neg" and sign < 0:
            return scaled(un.inputs[0], 1.0)
        if un.op == "div" and _scalar(un.inputs[1], sign * math.sqrt(2)):
            return un.inputs[0]
        if un.op == "mul":
            for x in un.inputs:
                o = _other(un, x) or x
                if _scalar(o, sign / math.sqrt(2)):
                    return x
                xn = prod(x)
                if sign < 0 and xn is not None and xn.op == "neg" and _scalar(o, 1 / math.sqrt(2)):
                    return xn.inputs[0]
        return None

    def one_plus_erf(v: Value) -> Value | None:  # 1 + erf(x / sqrt2), or erfc(-x / sqrt2) = 1 - erf(-x / sqrt2) -> x
        n = prod(v)
        if n is not None and n.op == "sub" and _scalar(n.inputs[0], 1.0):
            en = prod(n.inputs[1])
            return scaled(en.inputs[0], -1.0) if en is not None and en.op == "erf" else None
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
    count = 0
    for n in g.nodes:
        x = _gelu_input(n)
        if x is not None:
            n.op, n.inputs, n.attrs = "gelu", [x], {}
            count += 1
    return count


class _Producers:
    """The node that computes a value, when it is one of some ops (Value.producer, filtered)."""

    def op(self, v: Value, *ops: str) -> Node | None:
        n = v.producer
        return n if n is not None and n.op in ops else None


def _pairs(n: Node) -> list[tuple[Value, Value]]:
    a, b = n.inputs[0], n.inputs[1]
    return [(a, b), (b, a)]


def _moments_mean(p: _Producers, v: Value, x: Value | None = None) -> tuple[Node, Value] | None:
    """v = reduce_mean(x, last k axes, keepdim) -> (node, x)."""
    n = p.op(v, "reduce")
    if n is None or n.attrs.get("kind") != "mean" or not n.attrs.get("keepdim"):
        return None
    src = n.inputs[0]
    axes = sorted(n.attrs["axes"])
    if axes != list(range(src.type.rank - len(axes), src.type.rank)) or (x is not None and src is not x):
        return None
    return n, src


def _inv_std(p: _Producers, v: Value) -> tuple[Value, Value, float] | None:
    """v = 1 / sqrt(var + eps) with var = mean((x - mean(x))^2) -> (x, mean, eps)."""
    r = p.op(v, "rsqrt", "reciprocal")
    if r is None:
        return None
    u = r.inputs[0]
    if r.op == "reciprocal":
        sq = p.op(u, "sqrt")
        if sq is None:
            return None
        u = sq.inputs[0]
    add = p.op(u, "add")
    if add is None:
        return None
    for var, eps in _pairs(add):
        if not (eps.is_const and eps.type.numel == 1):
            continue
        red = _moments_mean(p, var)
        if red is None:
            continue
        sq_node = p.op(red[1], "mul")
        if sq_node is None or sq_node.inputs[0] is not sq_node.inputs[1]:
            continue
        d = p.op(sq_node.inputs[0], "sub")
        if d is None:
            continue
        x, mean = d.inputs
        m = _moments_mean(p, mean, x)
        if m is not None and m[0].attrs["axes"] == red[0].attrs["axes"]:
            return x, mean, float(np.asarray(eps.data, np.float64).reshape(-1)[0])
    return None


def _scale(p: _Producers, s: Value) -> tuple[Value, Value, float, Value | None] | None:
    """s = inv_std * gamma (or inv_std alone) -> (x, mean, eps, gamma)."""
    got = _inv_std(p, s)
    if got is not None:
        return (*got, None)
    n = p.op(s, "mul")
    if n is None:
        return None
    for inv, gamma in _pairs(n):
        got = _inv_std(p, inv)
        if got is not None and gamma.is_const:
            return (*got, gamma)
    return None


def _layer_norm_parts(p: _Producers, n: Node) -> tuple[Value, Value | None, Value | None, float, int] | None:
    """n = x * s + (beta - mean * s), as TF's batch_normalization formula spells layer norm."""
    if n.op != "add":
        return None
    for xs, shift in _pairs(n):
        xm = p.op(xs, "mul")
        if xm is None:
            continue
        for x, s in _pairs(xm):
            sc = _scale(p, s)
            if sc is None or sc[0] is not x:
                continue
            _, mean, eps, gamma = sc
            # shift: beta - mean * s, written add(mul(neg(mean), s), beta) or sub(beta, mul(mean, s)), or no beta
            beta = _shift_beta(p, shift, mean, s)
            if beta is False:
                continue
            k = len(p.op(mean, "reduce").attrs["axes"])  # type: ignore[union-attr]
            return x, gamma, beta, eps, k  # type: ignore[return-value]
    return None


def _shift_beta(p: _Producers, t: Value, mean: Value, s: Value) -> Value | None | bool:
    def is_neg_mean_times_s(v: Value) -> bool:
        m = p.op(v, "mul")
        if m is None:
            return False
        for a, b in _pairs(m):
            ng = p.op(a, "neg")
            if b is s and ng is not None and ng.inputs[0] is mean:
                return True
        return False

    def is_mean_times_s(v: Value) -> bool:
        m = p.op(v, "mul")
        return m is not None and any(a is mean and b is s for a, b in _pairs(m))

    if is_neg_mean_times_s(t):
        return None
    a = p.op(t, "add")
    if a is not None:
        for u, beta in _pairs(a):
            if beta.is_const and is_neg_mean_times_s(u):
                return beta
    sb = p.op(t, "sub")
    if sb is not None and sb.inputs[0].is_const and is_mean_times_s(sb.inputs[1]):
        return sb.inputs[0]
    return False


def lift_layer_norm(g: Graph) -> int:
    p = _Producers()
    count = 0
    for n in g.nodes:
        parts = _layer_norm_parts(p, n)
        if parts is None:
            continue
        x, gamma, beta, eps, k = parts
        norm_shape = x.shape[x.type.rank - k:]
        params = []
        for v in (gamma, beta):
            if v is None:
                continue
            data = np.asarray(v.data)
            if data.size != int(np.prod(norm_shape)) and data.size != 1:
                break
            params.append(g.add_const(v.name + "_ln", np.broadcast_to(data.reshape(data.shape[-k:] if data.ndim >= k
                                                                             else data.shape), norm_shape).copy(), v.dtype))
        else:
            n.op, n.inputs = "layer_norm", [x] + params
            n.attrs = {"axis_count": k, "eps": eps, "has_weight": gamma is not None, "has_bias": beta is not None}
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
