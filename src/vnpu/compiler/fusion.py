"""Fusion: elementwise epilogues into matmul/conv, elementwise chains into one kernel.

Fused groups become single IR nodes carrying an `Expr`, so the kernel that runs them
reads each external operand once and writes only the group's final result to HBM.
"""
from __future__ import annotations

from dataclasses import dataclass

from vnpu.ir.graph import Graph, Node, TensorType, Value
from vnpu.ir.ops import OPS, broadcast_shapes
from vnpu.kernels.base import Expr, Step


def _is_ew(n: Node) -> bool:
    return OPS[n.op].kind == "elementwise"


def _scalar_like(v: Value) -> bool:
    return v.type.numel == 1


def _reshape_base(v: Value) -> Value:
    """The tensor a chain of reshapes starts from (reshape(reshape(y)) is a view of y)."""
    while v.producer is not None and v.producer.op == "reshape":
        v = v.producer.inputs[0]
    return v


def sink_reshapes(g: Graph) -> int:
    """elementwise(reshape(mm), ...) -> reshape(elementwise(mm, ...)) when `mm` comes from a
    matmul, so that bias, activation and residual fuse into the matmul's epilogue
    (Linear layers on 3-D inputs reshape to 2-D around the matmul)."""
    changed = 0
    users = g.users()
    out_ids = {id(v) for v in g.outputs}
    new_nodes: list[Node] = list(g.nodes)
    for n in list(g.nodes):
        if not _is_ew(n) or n.op == "where":
            continue
        for ai, r in enumerate(n.inputs):
            R = r.producer
            if R is None or R.op != "reshape" or len(users.get(id(r), [])) != 1 or id(r) in out_ids:
                continue
            x = R.inputs[0]
            if (x.producer is None or not (x.producer.op == "matmul" or _is_ew(x.producer))
                    or n.output.shape != r.shape or x.shape == r.shape):
                continue
            new_inputs: list[Value] | None = []
            pre: list[Node] = []
            for bi, o in enumerate(n.inputs):
                if bi == ai:
                    new_inputs.append(x)
                elif o.type.rank <= x.type.rank and (_scalar_like(o) or (
                        o.shape[-1:] == r.shape[-1:] == x.shape[-1:] and all(d == 1 for d in o.shape[:-1]))):
                    new_inputs.append(o)
                elif o.shape == r.shape:
                    base = _reshape_base(o)
                    if base.shape == x.shape:
                        new_inputs.append(base)
                    else:
                        rn = Node("reshape", [base], [], {"shape": list(x.shape)}, f"{o.name}_r")
                        rn.outputs = [Value(g._fresh(f"{o.name}_r"), TensorType(x.shape, o.dtype), rn)]
                        pre.append(rn)
                        new_inputs.append(rn.outputs[0])
                else:
                    new_inputs = None
                    break
            if new_inputs is None:
                continue
            old_out = n.output
            ew = Node(n.op, new_inputs, [], dict(n.attrs), n.name)
            ew.outputs = [Value(g._fresh(n.name), TensorType(x.shape, old_out.dtype), ew)]
            # the old output Value keeps its identity (users and graph outputs) but is now a view
            back = Node("reshape", [ew.outputs[0]], [old_out], {"shape": list(old_out.shape)}, f"{n.name}_view")
            old_out.producer = back
            i = new_nodes.index(n)
            new_nodes[i:i + 1] = [ew, back]
            for rn in pre:  # right after its source, so a matmul epilogue may read it
                src = rn.inputs[0].producer
                new_nodes.insert(new_nodes.index(src) + 1 if src is not None else 0, rn)
            new_nodes.remove(R) if len(users.get(id(R.output), [])) == 1 else None
            users = _users_of(new_nodes)
            changed += 1
            break
    g.nodes = new_nodes
    return changed


def _users_of(nodes: list[Node]) -> dict[int, list[Node]]:
    out: dict[int, list[Node]] = {}
    for n in nodes:
        for v in n.inputs:
            out.setdefault(id(v), []).append(n)
    return out


@dataclass
class _Chain:
    """A fused group being built: operands and steps referring to them by object."""

    operands: list[Value]
    steps: list[tuple[str, list[tuple[str, object]], dict, TensorType]]  # op, args ("in", Value)|("step", i), attrs, type

    def add(self, node: Node, link: Value | None, link_step: int | None) -> None:
        args: list[tuple[str, object]] = []
        for v in node.inputs:
            if link is not None and v is link:
                args.append(("step", link_step) if link_step is not None else ("in", v))
            else:
                if not any(v is o for o in self.operands):
                    self.operands.append(v)
                args.append(("in", v))
        self.steps.append((node.op, args, dict(node.attrs), node.output.type))

    def expr(self, n_fixed: int, fixed: list[Value]) -> Expr:
        slots = fixed + [o for o in self.operands if not any(o is f for f in fixed)]
        n_in = len(slots)

        def idx(a: tuple[str, object]) -> int:
            kind, ref = a
            if kind == "step":
                return n_in + int(ref)  # type: ignore[arg-type]
            for i, s in enumerate(slots):
                if s is ref:
                    return i
            raise KeyError(ref)

        steps = tuple(Step(op, tuple(idx(a) for a in args), tuple(sorted((k, v) for k, v in attrs.items()))) for op, args, attrs, _ in self.steps)
        return Expr(n_in, steps, self.steps[-1][3].dtype, tuple(t.dtype for *_, t in self.steps))


def fuse_epilogues(g: Graph) -> int:
    """Absorbs single-use elementwise successors (bias, scale/shift, activation, residual)
    into matmul and conv2d nodes."""
    fused = 0
    for p in list(g.nodes):
        if p.op not in ("matmul", "conv2d") or "epilogue" in p.attrs:
            continue
        main_in = list(p.inputs)
        acc = p.output
        chain = _Chain([], [])
        cur = acc
        members: list[Node] = []
        while True:
            users = g.users().get(id(cur), [])
            if len(users) != 1 or any(cur is o for o in g.outputs):
                break
            u = users[0]
            if not _is_ew(u) or u.output.shape != acc.shape or sum(v is cur for v in u.inputs) != 1:
                break
            if any(broadcast_shapes(v.shape, acc.shape) != acc.shape for v in u.inputs):
                break
            # operands must already be defined before p (they are loaded in p's epilogue)
            pos = g.nodes.index(p)
            defined_later = {id(o) for n in g.nodes[pos:] for o in n.outputs}
            if any(id(v) in defined_later and v is not cur for v in u.inputs):
                break
            chain.add(u, cur, len(chain.steps) - 1 if chain.steps else None)
            members.append(u)
            cur = u.output
        if not members:
            continue
        expr = chain.expr(1, [acc])  # slot 0 is the accumulator
        extra = [o for o in chain.operands if o is not acc]
        final = members[-1].output
        for m in members:
            g.nodes.remove(m)
        p.inputs = main_in + extra
        p.attrs["epilogue"] = expr
        p.attrs["out_type"] = final.type
        p.outputs = [final]
        final.producer = p
        fused += len(members)
    return fused


def fuse_elementwise(g: Graph) -> int:
    """Groups chains of elementwise nodes into fused_elementwise nodes (singletons too)."""
    users = g.users()
    out_ids = {id(v) for v in g.outputs}
    group_of: dict[int, int] = {}  # node id -> group index
    groups: list[list[Node]] = []
    for n in g.nodes:
        if not _is_ew(n):
            continue
        target = None
        for v in n.inputs:
            pnode = v.producer
            if (pnode is not None and id(pnode) in group_of and len(users.get(id(v), [])) == 1
                    and id(v) not in out_ids and v.shape == n.output.shape and sum(w is v for w in n.inputs) == 1):
                target = group_of[id(pnode)]
                break
        if target is None:
            groups.append([n])
            group_of[id(n)] = len(groups) - 1
        else:
            groups[target].append(n)
            group_of[id(n)] = target
    count = 0
    for members in groups:
        chain = _Chain([], [])
        internal = {id(m.output): i for i, m in enumerate(members)}
        for m in members:
            args: list[tuple[str, object]] = []
            for v in m.inputs:
                if id(v) in internal and internal[id(v)] < members.index(m):
                    args.append(("step", internal[id(v)]))
                else:
                    if not any(v is o for o in chain.operands):
                        chain.operands.append(v)
                    args.append(("in", v))
            chain.steps.append((m.op, args, dict(m.attrs), m.output.type))
        expr = chain.expr(0, [])
        final = members[-1].output
        node = Node("fused_elementwise", list(chain.operands), [final],
                    {"expr": expr, "out_type": final.type}, name=members[-1].name if len(members) == 1 else f"fused_{members[-1].name}")
        g.splice(node, members[-1], members[:-1])
        count += 1
    return count


def fuse(g: Graph) -> None:
    sink_reshapes(g)
    fuse_epilogues(g)
    fuse_elementwise(g)
