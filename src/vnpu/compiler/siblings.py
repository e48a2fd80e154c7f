"""Sibling small kernels in one launch.

Two kernels of the same small op with no data between them (a layer's q and k RoPE, its K
and V cache appends) each pay a kernel launch and an HBM round trip of latency for a few
kilobytes. `group_sibling_kernels` groups runs of up to MAX_GROUP such neighbours: the last
node (the leader) takes the earlier ones' (the followers') inputs and outputs as extra inputs
and attrs `siblings` / `own_inputs`; each follower keeps its place in the graph (so memory
planning and in-place state writes see it as before), moved to just before the leader, and
gets attrs `launch_with`. kernels/group.py then lowers the leader to one launch holding both
kernels' instruction streams and the follower to none. The extra inputs keep every buffer
of the follower live until the leader runs. The instructions are the same as apart, so
the results are too.
"""
from __future__ import annotations

from vnpu.ir.graph import Graph, Node
from vnpu.ir.ops import OPS

# small per-layer kernels worth one launch for two: the decode step's q/k RoPE and K/V appends
GROUPABLE = ("rope", "index_write")


def _independent(g: Graph, f: Node, l: Node) -> bool:
    """Nothing from f's position up to and including l reads f's outputs."""
    outs = {id(o) for o in f.outputs}
    i, j = g.nodes.index(f), g.nodes.index(l)
    return not any(id(v) in outs for n in g.nodes[i + 1:j + 1] for v in n.inputs)


MAX_GROUP = 4  # a quantized KV cache appends four rows per layer: K, its scales, V, its scales


def group_sibling_kernels(g: Graph, ops: tuple[str, ...] = GROUPABLE) -> int:
    count = 0
    kernels = [n for n in g.nodes if OPS[n.op].kind not in ("view", "host")]
    i = 0
    while i + 1 < len(kernels):
        run = [kernels[i]]
        for l in kernels[i + 1:i + MAX_GROUP]:
            if l.op != run[0].op or run[0].op not in ops or not all(_independent(g, f, l) for f in run):
                break
            run.append(l)
        if len(run) < 2 or any(k in n.attrs for n in run for k in ("siblings", "launch_with")):
            i += 1
            continue
        *followers, l = run
        l.attrs["own_inputs"] = len(l.inputs)
        # no names in the attributes: identical layers keep identical timing keys
        l.attrs["siblings"] = []
        for f in followers:
            g.nodes.remove(f)
            g.nodes.insert(g.nodes.index(l), f)
            l.attrs["siblings"].append({"op": f.op, "attrs": dict(f.attrs), "inputs": len(f.inputs),
                                        "outputs": len(f.outputs)})
            l.inputs = l.inputs + f.inputs + f.outputs
            f.attrs["launch_with"] = "next"
            count += 1
        i += len(run)
    return count
