"""Pattern rewrites for decoder LLMs, run before fusion.

- `merge_sibling_matmuls`: matmuls that read the same activation with constant weights
  (Q/K/V projections, gate/up) become one matmul over the concatenated weights, its
  result split by slice views: one weight stream and one kernel launch instead of several.
- `fuse_rms_norm`: mean(x*x) -> +eps -> rsqrt -> x*r [-> *w] becomes one `rms_norm` node
  (the layer_norm kernel without centring) instead of four or five kernels.
- `fuse_rope`: x*cos + cat(-x[h:], x[:h])*sin becomes one `rope` node (rotate-half RoPE);
  `fuse_norm_into_rope` folds an RMSNorm feeding it (Qwen3's q/k norms) into that node.
- `fuse_moe_router`: softmax -> topk(k) [-> w / sum(w)] [-> moe_route] (Qwen3-MoE / Mixtral
  routing) becomes one `moe_router` node (weights, expert ids [, the expert schedule]): one
  kernel instead of five.
- `fuse_moe_combine`: the weighted top-k sum of the expert outputs, sum_k(y * w) [+ residual],
  becomes one `moe_combine` node: one kernel instead of three.
- `group_sibling_kernels` (compiler/siblings.py): neighbouring q/k RoPE and K/V cache appends
  share one kernel launch.
- `drop_noop_casts`: casts to the dtype a value already has.
"""
from __future__ import annotations

import numpy as np

from vnpu.compiler.siblings import group_sibling_kernels
from vnpu.dtypes import DType
from vnpu.ir.graph import Graph, Node, TensorType, Value, is_shape_only, shape_only_array
from vnpu.ir.ops import OPS


def _single_use(g: Graph, users: dict[int, list[Node]], v: Value) -> bool:
    return len(users.get(id(v), [])) == 1 and not any(v is o for o in g.outputs)


def drop_noop_casts(g: Graph) -> int:
    n_drop = 0
    for n in list(g.nodes):
        if n.op == "cast" and n.inputs[0].dtype == n.output.dtype:
            g.replace_uses(n.output, n.inputs[0])
            g.nodes.remove(n)
            n_drop += 1
    return n_drop


def _scalar(v: Value) -> float | None:
    if v.is_const and v.type.numel == 1 and v.dtype.is_float:
        return float(np.asarray(v.data).reshape(-1)[0])
    return None


def fuse_rms_norm(g: Graph) -> int:
    count = 0
    for red in list(g.nodes):
        if red not in g.nodes or red.op != "reduce" or red.attrs.get("kind") != "mean" or not red.attrs.get("keepdim"):
            continue
        sq = red.inputs[0].producer
        rank = red.inputs[0].type.rank
        if sq is None or sq.op != "mul" or sq.inputs[0] is not sq.inputs[1] or list(red.attrs["axes"]) != [rank - 1]:
            continue
        a = sq.inputs[0]
        users = g.users()
        chain = [sq, red]
        if not _single_use(g, users, sq.output) or not _single_use(g, users, red.output):
            continue
        add = users[id(red.output)][0]
        eps = None
        if add.op == "add":
            other = add.inputs[1] if add.inputs[0] is red.output else add.inputs[0]
            eps = _scalar(other)
        # an eps of higher rank would broadcast the result to a shape rms_norm does not produce
        if eps is None or add.output.shape != red.output.shape or not _single_use(g, users, add.output):
            continue
        rs = users[id(add.output)][0]
        if rs.op != "rsqrt" or not _single_use(g, users, rs.output):
            continue
        mul = users[id(rs.output)][0]
        if mul.op != "mul" or {id(v) for v in mul.inputs} != {id(a), id(rs.output)} or mul.output.shape != a.shape:
            continue
        chain += [add, rs, mul]
        last = mul
        weight = None
        if _single_use(g, users, mul.output):
            wm = users[id(mul.output)][0]
            # the one reader may be a one-input op (a permute): only a binary mul can be the weight
            other = (wm.inputs[1] if wm.inputs[0] is mul.output else wm.inputs[0]) if wm.op == "mul" else None
            if (other is not None and other.is_const and other.shape == a.shape[-1:]
                    and other.dtype == a.dtype and wm.output.shape == a.shape):
                weight = other
                chain.append(wm)
                last = wm
        out = last.output
        node = Node("rms_norm", [a] + ([weight] if weight is not None else []), [out],
                    {"eps": eps, "axis_count": 1, "has_weight": weight is not None, "has_bias": False, "rms": True},
                    name=f"rms_norm_{out.name}")
        g.splice(node, last, chain[:-1])
        count += 1
    return count


def _slice_of(v: Value, x: Value, start: int, end: int) -> bool:
    p = v.producer
    ax = x.type.rank - 1
    return (p is not None and p.op == "slice" and p.inputs[0] is x and p.attrs["axis"] == ax
            and p.attrs["start"] == start and p.attrs["end"] == end and p.attrs.get("step", 1) == 1)


def fuse_rope(g: Graph) -> int:
    count = 0
    for add in list(g.nodes):
        if add not in g.nodes or add.op != "add":
            continue
        users = g.users()
        muls = [v.producer for v in add.inputs]
        if any(m is None or m.op != "mul" or not _single_use(g, users, m.output) for m in muls):
            continue
        found = None
        for rot_m, plain_m in ((muls[0], muls[1]), (muls[1], muls[0])):
            for ri in (0, 1):
                cat = rot_m.inputs[ri].producer
                sin = rot_m.inputs[1 - ri]
                if cat is None or cat.op != "concat" or len(cat.inputs) != 2:
                    continue
                neg = cat.inputs[0].producer
                if neg is None or neg.op != "neg":
                    continue
                x_slice2 = neg.inputs[0]
                x = x_slice2.producer.inputs[0] if x_slice2.producer is not None and x_slice2.producer.op == "slice" else None
                if x is None:
                    continue
                d = x.shape[-1]
                h = d // 2
                if (d % 2 or cat.attrs["axis"] != x.type.rank - 1 or not _slice_of(x_slice2, x, h, d)
                        or not _slice_of(cat.inputs[1], x, 0, h)):
                    continue
                if x not in plain_m.inputs:
                    continue
                cos = plain_m.inputs[1] if plain_m.inputs[0] is x else plain_m.inputs[0]
                if add.output.shape != x.shape:
                    continue
                found = (x, cos, sin, [rot_m, plain_m, cat, neg])
                break
            if found:
                break
        if not found:
            continue
        x, cos, sin, chain = found
        if not (_single_use(g, users, chain[2].output) and _single_use(g, users, chain[3].output)):
            continue
        out = add.output
        node = Node("rope", [x, cos, sin], [out], {}, name=f"rope_{out.name}")
        g.splice(node, add, chain)
        # the two half slices are views; drop them when nothing else reads them
        users = g.users()
        for m in list(g.nodes):
            if m.op == "slice" and m.inputs[0] is x and not users.get(id(m.output)) and not any(m.output is o for o in g.outputs):
                g.nodes.remove(m)
        count += 1
    return count


def fuse_norm_into_rope(g: Graph) -> int:
    """rope(views(rms_norm(y, w))) -> rope(views(y)) with the norm applied in the rope kernel
    (Qwen3's per-head q/k norms feed RoPE directly): one kernel and one HBM round trip less."""
    count = 0
    for rope in [n for n in g.nodes if n.op == "rope" and "norm_eps" not in n.attrs]:
        users = g.users()
        chain: list[Node] = []
        v = rope.inputs[0]
        while v.producer is not None and v.producer.op == "permute" and _single_use(g, users, v):
            if v.producer.attrs["perm"][-1] != v.type.rank - 1:
                break
            chain.append(v.producer)
            v = v.producer.inputs[0]
        norm = v.producer
        if norm is None or norm.op != "rms_norm" or not _single_use(g, users, v) or not chain:
            continue
        y = norm.inputs[0]
        for view in reversed(chain):  # the same views, now over the norm's input
            nv = g.add_node(view.op, [y], dict(view.attrs), name=f"{view.name}_pre")
            g.nodes.pop()
            g.nodes.insert(g.nodes.index(rope), nv)
            y = nv.output
        rope.inputs = [y, rope.inputs[1], rope.inputs[2]] + norm.inputs[1:]
        rope.attrs["norm_eps"] = norm.attrs["eps"]
        rope.attrs["norm_weight"] = len(norm.inputs) > 1
        for n in chain + [norm]:
            g.nodes.remove(n)
        count += 1
    return count


def _base(v: Value) -> Value:
    while v.producer is not None and v.producer.op == "reshape":
        v = v.producer.inputs[0]
    return v


def merge_sibling_matmuls(g: Graph) -> int:
    """Matmuls A @ W_i with the same A (up to reshape views) and constant 2-D W_i -> A @ [W_1 .. W_n].

    A matmul whose result feeds a constant (bias) add is left alone: merged, its bias would
    no longer fuse into the matmul's epilogue and would cost a kernel of its own (BERT's
    Q/K/V), which is more than the merge saves."""
    users = g.users()

    def feeds_bias_add(v: Value) -> bool:  # through reshape views, as an epilogue would fuse it
        for u in users.get(id(v), ()):
            if u.op == "add" and any(x.is_const for x in u.inputs):
                return True
            if u.op == "reshape" and feeds_bias_add(u.outputs[0]):
                return True
        return False

    groups: dict[tuple, list[Node]] = {}
    for n in g.nodes:
        if (n.op == "matmul" and len(n.inputs) == 2 and "epilogue" not in n.attrs and n.inputs[1].is_const
                and n.inputs[1].type.rank == 2 and n.inputs[0].type.rank == 2 and not feeds_bias_add(n.output)):
            key = (id(_base(n.inputs[0])), n.inputs[0].shape, n.inputs[1].shape[0], n.inputs[1].dtype)
            groups.setdefault(key, []).append(n)
    merged = 0
    for members in groups.values():
        if len(members) < 2:
            continue
        ws = [m.inputs[1] for m in members]
        widths = [w.shape[1] for w in ws]
        k = ws[0].shape[0]
        dt = ws[0].dtype
        shape = (k, sum(widths))
        if any(is_shape_only(w.data) for w in ws):
            data = shape_only_array(shape, dt)
        else:
            data = np.ascontiguousarray(np.concatenate([w.data for w in ws], axis=1))
        name = g._fresh("cat_" + "_".join(w.name for w in ws))
        wcat = Value(name, TensorType(shape, dt), data=data)
        if all(w.name in g.weight_names for w in ws):
            g.weight_names.add(name)
        first = members[0]
        a = first.inputs[0]
        mm = Node("matmul", [a, wcat], [], {}, name=f"{first.name}_merged")
        m_rows = a.shape[0]
        mm.outputs = [Value(g._fresh(mm.name), TensorType((m_rows, shape[1]), members[0].output.dtype), mm)]
        pos = g.nodes.index(first)
        new_nodes = [mm]
        col = 0
        for m, wdt in zip(members, widths):
            out = m.output
            sl = Node("slice", [mm.outputs[0]], [out], {"axis": 1, "start": col, "end": col + wdt, "step": 1},
                      name=f"{m.name}_part")
            out.producer = sl
            new_nodes.append(sl)
            col += wdt
        for m in members:
            g.nodes.remove(m)
        g.nodes[pos:pos] = new_nodes
        merged += len(members)
    return merged


def fuse_moe_router(g: Graph) -> int:
    """softmax(x, last axis) -> topk(k) [-> vals / sum(vals, last axis, keepdim)] becomes one
    `moe_router` node with outputs (weights, ids). The softmax result must feed only the topk,
    and with the normalization the top-k values only the sum and the division. The dtypes the
    chain stores its intermediates in go into the attributes (the kernel rounds to them)."""
    count = 0
    for tk in [n for n in g.nodes if n.op == "topk"]:
        users = g.users()
        p = tk.inputs[0]
        sm = p.producer
        if sm is None or sm.op != "softmax" or sm.attrs.get("log") or not _single_use(g, users, p):
            continue
        x = sm.inputs[0]
        if sm.attrs["axis"] % x.type.rank != x.type.rank - 1 or not x.dtype.is_float:
            continue
        vals, ids = tk.outputs
        chain = [sm, tk]
        weights = vals
        attrs = {"k": int(tk.attrs["k"]), "normalize": False, "prob_dtype": p.dtype}
        vu = users.get(id(vals), [])
        red = next((u for u in vu if u.op == "reduce"), None)
        div = next((u for u in vu if u.op == "div"), None)
        if (len(vu) == 2 and red is not None and div is not None and not any(vals is o for o in g.outputs)
                and red.attrs.get("kind") == "sum" and red.attrs.get("keepdim")
                and [a % vals.type.rank for a in red.attrs["axes"]] == [vals.type.rank - 1]
                and div.inputs[0] is vals and div.inputs[1] is red.output and _single_use(g, users, red.output)
                and div.output.shape == vals.shape and red.output.dtype.is_float
                # an elementwise reader could have fused with the division (one rounding, not two)
                and not any(OPS[u.op].kind in ("elementwise", "fused") for u in users.get(id(div.output), []))):
            chain += [red, div]
            weights = div.output
            attrs.update(normalize=True, sum_dtype=red.output.dtype)
        attrs["out_dtype"] = weights.dtype
        node = Node("moe_router", [x], [weights, ids], attrs, name=f"moe_router_{tk.name}")
        g.splice(node, sm, chain[1:])
        iu = g.users().get(id(ids), [])
        if len(iu) == 1 and iu[0].op == "moe_route" and ids.type.rank == 2 and not any(ids is o for o in g.outputs):
            route = iu[0]  # the schedule from the ids while they are in scratchpad
            node.attrs["route"] = dict(route.attrs)
            node.outputs = node.outputs + route.outputs
            for o in route.outputs:
                o.producer = node
            g.nodes.remove(route)
        count += 1
    return count


def _view_base(v: Value) -> Value:
    while v.producer is not None and v.producer.op in ("reshape", "slice"):
        v = v.producer.inputs[0]
    return v


def fuse_moe_combine(g: Graph) -> int:
    """sum(y * w, axis 1) [-> reshape -> + r] over the expert outputs y [T, K, H] of a moe_ffn
    node and the routing weights w [T, K, 1] becomes one `moe_combine` node (with the residual
    add folded in when the sum feeds only it). The dtypes of the product and of the sum go into
    the attributes: the kernel rounds to them as the unfused kernels store them."""
    count = 0
    for red in [n for n in g.nodes if n.op == "reduce"]:
        users = g.users()
        a = red.attrs
        mv = red.inputs[0]
        mul = mv.producer
        if (a.get("kind") != "sum" or a.get("keepdim") or [x % 3 for x in a["axes"]] != [1] or mv.type.rank != 3
                or mul is None or mul.op != "mul" or not _single_use(g, users, mv) or not mv.dtype.is_float):
            continue
        y, w = mul.inputs
        if y.shape[-1] == 1 and w.shape[-1] != 1:
            y, w = w, y
        t, k, h = mv.shape
        if (y.shape != (t, k, h) or w.shape != (t, k, 1) or not y.dtype.is_float or not w.dtype.is_float
                or _view_base(y).producer is None or _view_base(y).producer.op != "moe_ffn"):
            continue
        out = red.output
        chain = [mul, red]
        ins = [y, w]
        attrs = {"mul_dtype": mv.dtype, "sum_dtype": out.dtype, "out_dtype": out.dtype}
        final = out
        if _single_use(g, users, out):
            rs = users[id(out)][0]
            if rs.op == "reshape" and rs.output.type.numel == t * h and _single_use(g, users, rs.output):
                add = users[id(rs.output)][0]
                if add.op == "add" and len(add.inputs) == 2:
                    r = add.inputs[1] if add.inputs[0] is rs.output else add.inputs[0]
                    if (r is not rs.output and r.shape == rs.output.shape == add.output.shape
                            and r.dtype.is_float and not r.is_const):
                        chain += [rs, add]
                        ins.append(r)
                        attrs["out_dtype"] = add.output.dtype
                        final = add.output
        if final is not out:
            attrs["out_shape"] = list(final.shape)
        node = Node("moe_combine", ins, [final], attrs, name=f"moe_combine_{red.name}")
        g.splice(node, chain[-1], chain[:-1])
        count += 1
    return count


def rewrite_llm_patterns(g: Graph, kv_cache: DType | None = None) -> None:
    """The LLM rewrites in order; `kv_cache`: the KV cache's format when quantized (fp8:
    compiler/kv_cache.py), rewritten before the cache appends are grouped."""
    drop_noop_casts(g)
    fuse_rms_norm(g)
    fuse_rope(g)
    fuse_norm_into_rope(g)
    fuse_moe_router(g)
    fuse_moe_combine(g)
    merge_sibling_matmuls(g)
    if kv_cache is not None:
        from vnpu.compiler.kv_cache import quantize_kv_cache
        quantize_kv_cache(g, kv_cache)
    group_sibling_kernels(g)
