"""Chrome / Perfetto trace JSON from the simulator's trace events.

The simulator records one complete event (``ph: "X"``) per instruction: ``pid`` = core,
``tid`` = queue name, ``ts``/``dur`` in µs, ``args.kernel`` = the kernel it belongs to; host
(fallback) ops come as ``pid = -1, tid = "host"``. This module turns them into a trace that
https://ui.perfetto.dev and chrome://tracing open directly:

* every core is a process named ``core N`` (sorted by core number) whose threads are its queues
  ``dma_in``, ``matrix``, ``vector``, ``dma_out`` in that order (thread ids are integers, named
  with ``thread_name`` metadata, because not every viewer accepts string ids);
* viewers require the slices of one thread to nest, but DMA instructions overlap (requests are
  pipelined: the engine issues the next one before the previous data lands), so overlapping
  events of a queue are spread over extra lanes named ``dma_in 2``, ``dma_in 3``, ...;
* host ops go to a process named ``host`` after the cores;
* when a Profile is given, a ``kernels`` process (shown first) has one span per kernel launch,
  with its cycles, FLOPs and HBM bytes in ``args``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from vnpu.isa.instructions import QUEUES
from vnpu.sim.profile import Profile

_QUEUE_TID = {q: i for i, q in enumerate(QUEUES)}
_LANE_STRIDE = 1000  # thread id = queue index + 1000 * lane
_EPS_US = 1e-6


def _meta(kind: str, pid: int, name: str, tid: int | None = None) -> dict[str, Any]:
    ev: dict[str, Any] = {"name": kind, "ph": "M", "pid": pid, "args": {"name": name}}
    if tid is not None:
        ev["tid"] = tid
    return ev


def _sort(kind: str, pid: int, index: int, tid: int | None = None) -> dict[str, Any]:
    ev: dict[str, Any] = {"name": kind, "ph": "M", "pid": pid, "args": {"sort_index": index}}
    if tid is not None:
        ev["tid"] = tid
    return ev


def chrome_trace(events: Iterable[dict], profile: Profile | None = None, cores: int | None = None,
                 metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"traceEvents": [...], "displayTimeUnit": "ns", "otherData": metadata}``.

    `events` are the simulator's (``device.trace_events`` / ``CompiledModel.last_trace``).
    `cores` is the chip's core count (host ops and the kernel track are numbered after it);
    taken from `profile` when not given.
    """
    events = list(events or [])
    if cores is None:
        cores = profile.cores if profile is not None else 1 + max((e.get("pid", 0) for e in events), default=-1)
    host_pid = cores
    kernels_pid = cores + 1
    base_tids: dict[tuple[int, str], int] = {}
    lanes: dict[tuple[int, int], list[float]] = {}  # (pid, base tid) -> end time of each lane
    out: list[dict[str, Any]] = []
    threads: set[tuple[int, int, str, int]] = set()  # (pid, tid, name, sort index)
    for e in sorted(events, key=lambda ev: (ev.get("ts", 0.0), -ev.get("dur", 0.0))):
        pid = e.get("pid", 0)
        if not isinstance(pid, int) or pid < 0:
            pid = host_pid
        qname = str(e.get("tid", ""))
        base = _QUEUE_TID.get(qname)
        if base is None:
            base = base_tids.setdefault((pid, qname), len(QUEUES) + len(base_tids))
        # Viewers need the slices of one thread to nest; DMA requests overlap (they are pipelined),
        # so overlapping events go to extra lanes "dma_in 2", "dma_in 3", ...
        ts, dur = float(e.get("ts", 0.0)), float(e.get("dur", 0.0))
        ends = lanes.setdefault((pid, base), [])
        lane = next((i for i, end in enumerate(ends) if ts >= end - _EPS_US), len(ends))
        if lane == len(ends):
            ends.append(ts + dur)
        else:
            ends[lane] = ts + dur
        tid = base + _LANE_STRIDE * lane
        threads.add((pid, tid, qname if lane == 0 else f"{qname} {lane + 1}", base * _LANE_STRIDE + lane))
        ev = dict(e)
        ev["pid"] = pid
        ev["tid"] = tid
        out.append(ev)

    meta: list[dict[str, Any]] = []
    pids = sorted({t[0] for t in threads})
    if profile is not None and profile.kernels:
        pids = sorted(set(pids) | {kernels_pid})
        us = 1e6 / profile.clock_hz
        for i, k in enumerate(profile.kernels):
            out.append({"name": k.name, "cat": "kernel", "ph": "X", "pid": kernels_pid, "tid": 0,
                        "ts": k.start_cycle * us, "dur": k.cycles * us,
                        "args": {"index": i, "kind": k.kind, "ops": list(k.ops), "cycles": k.cycles,
                                 "flops": k.flops, "hbm_bytes": k.hbm_bytes, "bound": k.bound,
                                 "roofline_fraction": round(k.roofline_fraction, 4)}})
        threads.add((kernels_pid, 0, "launches", 0))
    for pid in pids:
        if pid == kernels_pid:
            name, order = "kernels", -1
        elif pid == host_pid:
            name, order = "host", host_pid
        else:
            name, order = f"core {pid}", pid
        meta.append(_meta("process_name", pid, name))
        meta.append(_sort("process_sort_index", pid, order))
    for pid, tid, tname, order in sorted(threads):
        meta.append(_meta("thread_name", pid, tname, tid))
        meta.append(_sort("thread_sort_index", pid, order, tid))
    out.sort(key=lambda ev: (ev.get("ts", 0.0), ev["pid"], ev["tid"]))
    trace: dict[str, Any] = {"traceEvents": meta + out, "displayTimeUnit": "ns"}
    if metadata:
        trace["otherData"] = dict(metadata)
    return trace


def write_trace(path: str | Path, events: Iterable[dict], profile: Profile | None = None,
                cores: int | None = None, metadata: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        json.dump(chrome_trace(events, profile, cores, metadata), f, separators=(",", ":"))
    return path


def timing_trace(program: Any, chip: Any) -> tuple[Profile, list[dict]]:
    """Timing-only simulation with tracing on: (profile, trace events). No tensor data is touched."""
    from vnpu.sim.device import Device

    dev = Device(chip, program.hbm_bytes, functional=False)
    prof = dev.run(program, trace=True)
    return prof, list(dev.trace_events or [])
