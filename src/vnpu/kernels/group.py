"""Kernel groups (compiler/siblings.py): a leader node lowers to ONE launch holding its own
kernel's instruction streams and its siblings'; a follower (attrs `launch_with`) lowers to
no launch.

Each member kernel is lowered as if alone. Per core, a sibling's instructions are appended
to the leader's queues with its semaphores renumbered past the leader's and its scratchpad
tiles moved above the leader's; its streams are rotated by the number of cores the leader
keeps busy, so small kernels land on different cores and run side by side. Members share
no data (the pass checks), so no instruction of one waits for the other: the same
instructions, the same results, one launch and one barrier instead of two.
"""
from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from vnpu.ir.graph import Node
from vnpu.isa.instructions import CoreStream, SramRef
from vnpu.isa.program import KernelLaunch
from vnpu.kernels.base import SRAM_ALIGN, KernelContext, KernelError, KernelFn, SramOverflow


def _sram_top(cs: CoreStream) -> int:
    top = 0
    for q in cs.queues.values():
        for ins in q:
            for f in fields(ins):
                for v in _refs(getattr(ins, f.name)):
                    top = max(top, v.offset + v.nbytes)
    return -(-top // SRAM_ALIGN) * SRAM_ALIGN


def _refs(v: Any) -> list[SramRef]:
    if isinstance(v, SramRef):
        return [v]
    if isinstance(v, tuple):
        return [x for x in v if isinstance(x, SramRef)]
    return []


def _shift(v: Any, by: int) -> Any:
    if isinstance(v, SramRef):
        return SramRef(v.offset + by, v.dtype, v.shape)
    if isinstance(v, tuple) and any(isinstance(x, SramRef) for x in v):
        return tuple(_shift(x, by) for x in v)
    return v


def _append(base: CoreStream, extra: CoreStream, sram_cap: int) -> CoreStream:
    """extra's instructions after base's on one core: semaphores and scratchpad relocated."""
    if not len(extra):
        return base
    if not len(base):
        return extra
    s0, m0 = base.semaphores, _sram_top(base)
    if m0 + _sram_top(extra) > sram_cap:
        raise SramOverflow("kernel group: members' scratchpad tiles do not fit one core together")
    out = CoreStream({q: list(v) for q, v in base.queues.items()}, s0 + extra.semaphores)
    for q, instrs in extra.queues.items():
        for ins in instrs:
            ch: dict[str, Any] = {f.name: _shift(getattr(ins, f.name), m0) for f in fields(ins)
                                  if f.name not in ("waits", "signal")}
            ch["waits"] = tuple((s + s0, n) for s, n in ins.waits)
            ch["signal"] = ins.signal + s0 if ins.signal >= 0 else -1
            out.queues.setdefault(q, []).append(replace(ins, **ch))
    return out


def merge_launches(first: KernelLaunch, second: KernelLaunch, sram_cap: int) -> KernelLaunch:
    n = len(first.cores)
    busy = sum(1 for cs in first.cores if len(cs))
    rot = [second.cores[(c - busy) % n] for c in range(n)]
    cores = [_append(a, b, sram_cap) for a, b in zip(first.cores, rot)]
    return KernelLaunch(second.name if second.name.startswith(first.name) else f"{first.name}+{second.name}",
                        first.kind, first.ops + second.ops, cores,
                        first.flops + second.flops, first.min_hbm_bytes + second.min_hbm_bytes, first.dtype)


def grouped(fn: KernelFn, registry: dict[str, KernelFn]) -> KernelFn:
    """fn, made aware of kernel groups."""
    def lower(ctx: KernelContext):
        a = ctx.node.attrs
        if "launch_with" in a:
            return []
        if "siblings" not in a:
            return fn(ctx)
        own = int(a["own_inputs"])
        attrs = {k: v for k, v in a.items() if k not in ("siblings", "own_inputs")}
        node = Node(ctx.node.op, [], [], attrs, ctx.node.name)
        res = fn(KernelContext(ctx.chip, ctx.dtype, node, ctx.inputs[:own], ctx.outputs, ctx.scalars[:own]))
        if isinstance(res, list):
            if len(res) != 1:
                raise KernelError(f"{ctx.node.name}: a kernel group member must take one launch")
            res = res[0]
        pos = own
        apart: list[KernelLaunch] = []
        for sib in a["siblings"]:
            ins = ctx.inputs[pos:pos + sib["inputs"]]
            outs = ctx.inputs[pos + sib["inputs"]:pos + sib["inputs"] + sib["outputs"]]
            sc = ctx.scalars[pos:pos + sib["inputs"]]
            pos += sib["inputs"] + sib["outputs"]
            sub = registry[sib["op"]](KernelContext(ctx.chip, ctx.dtype, Node(sib["op"], [], [], dict(sib["attrs"]),
                                                                              f"{ctx.node.name}+{sib['op']}"), ins, outs, sc))
            sub = sub[0] if isinstance(sub, list) else sub
            try:
                res = merge_launches(res, sub, ctx.chip.core.scratchpad.bytes)
            except SramOverflow:  # a small scratchpad (GPU-like profiles): the members launch apart
                apart.append(sub)
        return [res, *apart] if apart else res
    lower.__wrapped__ = fn  # type: ignore[attr-defined]
    return lower
