"""Cross-kernel weight prefetch into L2 (chip `l2.weight_prefetch_bytes`).

The command processor walks ahead of the running kernel in the launch list. Whatever HBM time
a kernel and the launch gap after it leave idle streams, into a reserved part of L2, the weight
tiles the next kernels load first (in their issue order). Weights are read-only for the whole
program, so this needs no kernel's output, which is why a decode step, whose kernels wait on
one another, still keeps HBM busy. A kernel then starts with those views resident in L2 and its
loads of them hit. Prefetch requests are pipelined: their HBM latency overlaps the kernel in
progress. Only whole DMA views of model constants are prefetched (never activations, KV state
or gathers at runtime indices)."""
from __future__ import annotations

import bisect
from typing import Callable

from vnpu.isa.instructions import DmaLoad
from vnpu.isa.program import KernelLaunch, Program

L2Key = tuple
# (L2 key, HBM traffic bytes) of one prefetchable load
Prefetch = tuple[L2Key, float]


class WeightPrefetcher:
    def __init__(self, program: Program, capacity: int, load_cost: Callable[[DmaLoad, KernelLaunch], Prefetch]):
        spans = sorted((r.offset, r.offset + r.numel * r.dtype.itemsize) for r, _ in program.constants)
        self._starts = [a for a, _ in spans]
        self._ends = [b for _, b in spans]
        self._launches = program.launches
        self._capacity = capacity
        self._load_cost = load_cost
        self._loads: dict[int, list[Prefetch]] = {}  # id(launch.cores) -> its weight loads in issue order
        self._ready: dict[int, list[Prefetch]] = {}  # launch index -> views prefetched for it so far
        self._held = 0.0  # bytes in L2 waiting for their kernel
        self._next = (0, 0)  # (launch index, position in its weight loads) the prefetcher reaches next
        self._credit = 0.0  # idle HBM bytes granted but not yet spent on a whole view

    def _is_weight(self, off: int) -> bool:
        i = bisect.bisect_right(self._starts, off) - 1
        return i >= 0 and off < self._ends[i]

    def weight_loads(self, j: int) -> list[Prefetch]:
        """Launch j's loads of constant views, distinct, in the order its cores issue them
        (round robin over the cores' dma_in queues)."""
        launch = self._launches[j]
        if not isinstance(launch, KernelLaunch):
            return []
        got = self._loads.get(id(launch.cores))
        if got is None:
            per_core = [[ins for ins in cs.queues["dma_in"] if type(ins) is DmaLoad and self._is_weight(ins.src.offset)]
                        for cs in launch.cores]
            seen: set = set()
            got = []
            for pos in range(max((len(p) for p in per_core), default=0)):
                for p in per_core:
                    if pos < len(p):
                        key, nbytes = self._load_cost(p[pos], launch)
                        if key not in seen:
                            seen.add(key)
                            got.append((key, nbytes))
            self._loads[id(launch.cores)] = got
        return got

    def take(self, j: int) -> list[Prefetch]:
        """The views prefetched for launch j, which starts now (later ones are not prefetched)."""
        got = self._ready.pop(j, [])
        self._held -= sum(b for _, b in got)
        if self._next[0] <= j:
            self._next = (j + 1, 0)
            self._credit = 0.0
        return got

    def advance(self, k: int, idle_bytes: float) -> None:
        """Spend the HBM bytes launch k (which just ran) and its launch gap left idle on the
        weight loads of the launches after it, up to the reserved capacity."""
        j, pos = self._next
        if j <= k:
            j, pos = k + 1, 0
        credit = self._credit + idle_bytes
        n = len(self._launches)
        while j < n:
            loads = self.weight_loads(j)
            if pos >= len(loads):
                j, pos = j + 1, 0
                continue
            key, nbytes = loads[pos]
            if nbytes > self._capacity:  # never fits: not prefetched
                pos += 1
                continue
            if self._held + nbytes > self._capacity:
                credit = 0.0  # L2's share is full: the idle time is lost
                break
            if nbytes > credit:
                break  # in flight: the rest of it waits for the next idle time
            credit -= nbytes
            self._held += nbytes
            self._ready.setdefault(j, []).append((key, nbytes))
            pos += 1
        else:
            credit = 0.0
        self._next = (j, pos)
        self._credit = credit
