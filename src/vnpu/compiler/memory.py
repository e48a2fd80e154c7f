"""Layout and memory planning: where every value lives in HBM.

View ops (reshape, permute, expand, slice) cost nothing: their result is a strided view
of their input's buffer. Kernel outputs get buffers in an activation arena, packed by
liveness (best fit over lifetime intervals); weights and inputs get their own regions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from vnpu.ir.graph import Graph, Node, Value
from vnpu.ir.ops import OPS
from vnpu.isa.instructions import HbmRef
from vnpu.kernels import views

ALIGN = 256


class OutOfMemoryError(MemoryError):
    pass


@dataclass
class MemoryPlan:
    refs: dict[int, HbmRef]  # id(Value) -> placement
    weight_bytes: int
    input_bytes: int
    arena_bytes: int
    total_bytes: int


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _view_of(n: Node, src: HbmRef) -> HbmRef | None:
    a = n.attrs
    if n.op == "reshape":
        return views.reshape(src, tuple(a["shape"]))
    if n.op == "permute":
        return views.permute(src, a["perm"])
    if n.op == "expand":
        return views.broadcast_to(src, tuple(a["shape"]))
    if n.op == "slice":
        return views.slice_dim(src, a["axis"], a["start"], a["end"], a.get("step", 1))
    raise KeyError(n.op)


def materialize_views(g: Graph) -> None:
    """Inserts a `copy` before each reshape whose input strides cannot express it.

    Strides are tracked symbolically (offset 0), so this runs before addresses exist.
    """
    sym: dict[int, HbmRef] = {}

    def ref(v: Value) -> HbmRef:
        r = sym.get(id(v))
        if r is None:
            r = sym[id(v)] = HbmRef(0, v.dtype, v.shape, views.contiguous_strides(v.shape))
        return r

    def copy_first_input(n: Node) -> None:
        c = g.add_node("copy", [n.inputs[0]], {}, name=f"{n.name}_contig")
        g.nodes.pop()
        g.nodes.insert(g.nodes.index(n), c)
        n.inputs[0] = c.output

    for n in list(g.nodes):
        if n.op in ("topk", "moe_router", "quantize_rows"):
            # the top-k kernels (and the fused softmax + top-k router) read their rows as one strided
            # 2-D view: a permuted or broadcast input is copied first
            src = ref(n.inputs[0])
            if views.reshape(src, (math.prod(src.shape[:-1]), src.shape[-1])) is None:
                copy_first_input(n)
            continue
        if OPS[n.op].kind != "view":
            continue
        out = _view_of(n, ref(n.inputs[0]))
        if out is None:
            copy_first_input(n)
            out = _view_of(n, ref(n.inputs[0]))
            assert out is not None
        sym[id(n.output)] = out


def _aliases_input(n: Node) -> bool:
    """Nodes whose output is their first input's buffer: views, and in-place index writes."""
    return OPS[n.op].kind == "view" or n.op == "index_write"


def copy_on_write(g: Graph) -> int:
    """index_write writes its destination's buffer in place. That is the point for persistent
    state (a KV cache). Any other destination — a constant, a graph input, a view, or a value
    something else also reads — first gets a fresh `copy` to write into, so that index_write
    keeps index_put's functional meaning on any tensor. A destination with no other reader,
    produced by a kernel (a fresh buffer or an earlier write's result), is written in place.
    Returns the copies inserted."""
    state = {id(v) for v, _ in g.state}
    outputs = {id(v) for v in g.outputs}
    users = g.users()
    inserted = 0
    for n in list(g.nodes):
        if n.op != "index_write":
            continue
        dest = n.inputs[0]
        if id(dest) in state:
            continue
        p = dest.producer
        fresh = p is not None and OPS[p.op].kind != "view" and p.op != "host_call"
        if fresh and len(users.get(id(dest), [])) == 1 and id(dest) not in outputs:
            continue
        c = g.add_node("copy", [dest], {}, name=f"{n.name}_dest")
        g.nodes.pop()
        g.nodes.insert(g.nodes.index(n), c)
        n.inputs[0] = c.output
        users = g.users()
        inserted += 1
    return inserted


def _owned(dest: Value, root: dict[int, Value]) -> bool:
    """A destination copy_on_write left in place: a kernel's output, not a graph input's buffer."""
    return id(dest) not in root and dest.producer is not None


def check_state(g: Graph) -> None:
    """Persistent state must be updated in place: each state's new value is a chain of
    index_writes on the state input itself, and nothing reads the old contents after a write."""
    state_ids = {id(v) for v, _ in g.state}
    root: dict[int, Value] = {id(v): v for v in g.inputs}
    written: set[int] = set()  # ids of state inputs whose buffer already holds newer data
    version: dict[int, Value] = {}  # state input id -> its current value
    for v, _ in g.state:
        version[id(v)] = v
    for n in g.nodes:
        for v in n.inputs:
            r = root.get(id(v))
            if r is not None and id(r) in written and version[id(r)] is not v and not _aliases_input(n):
                raise ValueError(f"{n.name} reads %{v.name}, an old version of state %{r.name} overwritten in place")
        if n.op == "index_write":
            r = root.get(id(n.inputs[0]))
            if (r is None or id(r) not in state_ids) and not _owned(n.inputs[0], root):
                raise ValueError(f"{n.name}: index_write into %{n.inputs[0].name}, which is not persistent state "
                                 "(only KV-cache buffers are written in place)")
            written.add(id(r))
            version[id(r)] = n.output
        if _aliases_input(n) and n.inputs and id(n.inputs[0]) in root:
            root[id(n.output)] = root[id(n.inputs[0])]
    for v, new in g.state:
        if new is not v and root.get(id(new)) is not v:
            raise ValueError(f"state %{v.name} is replaced by %{new.name}, which does not live in its buffer; "
                             "a state must be updated by in-place writes (index_copy_)")


def plan_memory(g: Graph, capacity: int, chip_name: str = "chip", pinned: dict[str, int] | None = None,
                base: int = 0) -> MemoryPlan:
    """Places every value. `pinned` gives fixed offsets to named weights and state buffers
    shared with other programs on the same device; the rest is laid out from `base` up."""
    refs: dict[int, HbmRef] = {}
    pinned = pinned or {}
    top = base

    def place(v: Value, off: int) -> None:
        refs[id(v)] = HbmRef(off, v.dtype, v.shape, views.contiguous_strides(v.shape))

    consts = g.constants()
    shared = 0
    for c in consts:
        if c.name in pinned:
            place(c, pinned[c.name])
            shared += c.type.nbytes
            continue
        place(c, top)
        top = _align(top + c.type.nbytes)
    weight_bytes = top - base + shared
    for v in g.inputs:
        if v.name in pinned:
            place(v, pinned[v.name])
            continue
        place(v, top)
        top = _align(top + v.type.nbytes)
    input_bytes = top - base - (weight_bytes - shared)
    arena0 = top

    # lifetimes over node positions; views extend their root buffer's lifetime
    root: dict[int, Value] = {}
    for v in g.inputs + consts:
        root[id(v)] = v
    birth: dict[int, int] = {}
    death: dict[int, int] = {}
    owned: list[Value] = []
    for i, n in enumerate(g.nodes):
        for v in n.inputs:
            r = root.get(id(v), v)
            death[id(r)] = i
        if _aliases_input(n):
            root[id(n.output)] = root.get(id(n.inputs[0]), n.inputs[0])
        else:
            for o in n.outputs:
                root[id(o)] = o
                birth[id(o)] = i
                death.setdefault(id(o), i)
                owned.append(o)
    end = len(g.nodes)
    for v in g.outputs:
        r = root.get(id(v), v)
        death[id(r)] = end
    # best-fit packing: biggest first, lowest offset that overlaps no live-at-the-same-time buffer
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, birth, death)
    arena = 0
    for v in sorted(owned, key=lambda v: -v.type.nbytes):
        size = _align(max(v.type.nbytes, 1))
        b, d = birth[id(v)], death[id(v)]
        busy = sorted((o, s) for o, s, pb, pd in placed if not (pd < b or d < pb))
        off = 0
        for o, s in busy:
            if off + size <= o:
                break
            off = max(off, o + s)
        placed.append((off, size, b, d))
        arena = max(arena, off + size)
        place(v, arena0 + off)
    total = arena0 + arena
    # views get their placements from their sources
    for n in g.nodes:
        if n.op == "index_write":
            refs[id(n.output)] = refs[id(n.inputs[0])]
        elif OPS[n.op].kind == "view":
            src = refs[id(n.inputs[0])]
            out = _view_of(n, src)
            assert out is not None, f"{n.name}: view not materialized"
            refs[id(n.output)] = out
    total = max(total, max((off + _align(v.type.nbytes) for v in consts + g.inputs if v.name in pinned
                            for off in [pinned[v.name]]), default=0))
    if total > capacity:
        gib, u = next((d, u) for d, u in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"), (1, "B")) if capacity >= d or d == 1)
        raise OutOfMemoryError(
            f"model does not fit {chip_name}'s HBM: needs {total / gib:.2f} {u} (weights {weight_bytes / gib:.2f} {u}, "
            f"inputs {input_bytes / gib:.2f} {u}, activations {arena / gib:.2f} {u}), chip has {capacity / gib:.2f} {u}; "
            f"exceeds it by {(total - capacity) / gib:.2f} {u} ({total - capacity} bytes). "
            f"Use a chip with more HBM, a smaller batch or dtype='bf16'.")
    return MemoryPlan(refs, weight_bytes, input_bytes, arena, total)


__all__ = ["MemoryPlan", "plan_memory", "materialize_views", "copy_on_write", "check_state", "OutOfMemoryError"]
