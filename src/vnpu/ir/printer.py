"""Readable text form of a Graph, one node per line."""
from __future__ import annotations

import numpy as np

from vnpu.ir.graph import Graph, Value


def _fmt_attr(v: object) -> str:
    ops = getattr(v, "ops", None)
    if ops is not None and hasattr(v, "steps"):  # a fused expression: show its op chain
        return "(" + " -> ".join(ops) + ")"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt_attr(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}={_fmt_attr(x)}" for k, x in v.items()) + "}"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _ref(v: Value) -> str:
    if v.is_const and v.data is not None and v.data.size == 1:
        return f"{v.data.reshape(()).item():g}" if v.dtype.is_float else str(v.data.reshape(()).item())
    return ("$" if v.is_const else "%") + v.name


def format_graph(g: Graph) -> str:
    lines = [f"graph {g.name}({', '.join(f'%{v.name}: {v.type}' for v in g.inputs)}) {{"]
    for c in g.constants():
        if c.data is not None and c.data.size > 1:
            lines.append(f"  ${c.name}: {c.type} = const")
    for n in g.nodes:
        outs = ", ".join(f"%{o.name}: {o.type}" for o in n.outputs)
        attrs = " {" + ", ".join(f"{k}={_fmt_attr(v)}" for k, v in n.attrs.items() if k not in ("payload", "out_type")) + "}" if n.attrs else ""
        lines.append(f"  {outs} = {n.op}({', '.join(_ref(v) for v in n.inputs)}){attrs}")
    lines.append(f"  return {', '.join(_ref(v) for v in g.outputs)}")
    lines.append("}")
    return "\n".join(lines)


def summarize_const(v: Value) -> str:
    d = v.data if v.data is not None else np.zeros(0)
    return f"${v.name}: {v.type} mean={float(np.mean(d)) if d.size else 0:.3g}"
