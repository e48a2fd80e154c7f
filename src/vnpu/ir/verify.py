"""Structural checks of a Graph: defined-before-use, unique names, types matching inference."""
from __future__ import annotations

from vnpu.ir.graph import Graph
from vnpu.ir.ops import OPS, infer_types


class IRVerifyError(ValueError):
    pass


def verify(g: Graph) -> None:
    defined: set[int] = {id(v) for v in g.inputs}
    names: set[str] = set()
    problems: list[str] = []
    for v in g.inputs:
        if v.name in names:
            problems.append(f"duplicate value name %{v.name}")
        names.add(v.name)
    for n in g.nodes:
        if n.op not in OPS:
            problems.append(f"{n.name}: unknown op {n.op!r}")
            continue
        for v in n.inputs:
            if not v.is_const and id(v) not in defined:
                problems.append(f"{n.name}: input %{v.name} used before it is defined")
        try:
            expect = infer_types(n.op, [v.type for v in n.inputs], n.attrs)
        except ValueError as e:
            problems.append(f"{n.name}: {e}")
            expect = [o.type for o in n.outputs]
        if expect != [o.type for o in n.outputs]:
            problems.append(f"{n.name}: output types {[str(o.type) for o in n.outputs]} != inferred {[str(t) for t in expect]}")
        for o in n.outputs:
            if o.name in names:
                problems.append(f"duplicate value name %{o.name}")
            names.add(o.name)
            defined.add(id(o))
    for v in g.outputs:
        if not v.is_const and id(v) not in defined:
            problems.append(f"graph output %{v.name} is never defined")
    if problems:
        raise IRVerifyError("invalid IR graph:\n  " + "\n  ".join(problems))
