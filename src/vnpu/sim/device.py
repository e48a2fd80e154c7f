"""The simulated chip: event-driven timing over per-core instruction queues, with
optional functional execution of each instruction at the moment it is issued."""
from __future__ import annotations

import heapq
import os
from collections import OrderedDict
from dataclasses import replace
from typing import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from vnpu.chip.schema import Chip
from vnpu.dtypes import PACKED_ELEMENTS, QUANT_MATMUL_ACC, DType
from vnpu.gcpause import gc_paused
from vnpu.isa import cost
from vnpu.isa.instructions import QUEUES, DmaGather, DmaLoad, DmaScatter, DmaStore, HbmRef, MatMul, VecOp
from vnpu.isa.program import CollectiveLaunch, HostLaunch, KernelLaunch, Program
from vnpu.sim.functional import PREPARERS, hbm_view, prepare_limited_fp8_matmul
from vnpu.sim.prefetch import WeightPrefetcher
from vnpu.sim.profile import KernelProfile, Profile

HostExecutor = Callable[[HostLaunch, list[np.ndarray]], list[np.ndarray]]
# (launch, this chip's inputs (empty lists when timing-only), the cycle the chip reaches it)
#   -> (this chip's outputs, the cycle the collective completes on this chip)
CollectiveExecutor = Callable[[CollectiveLaunch, list[np.ndarray], float], tuple[list[np.ndarray], float]]

_TRY, _DONE = 0, 1
_QI = {q: i for i, q in enumerate(QUEUES)}


class DeadlockError(RuntimeError):
    pass


class HostMemoryError(MemoryError):
    """A functional simulation whose HBM image (and scratchpads) the host cannot hold."""


HOST_MEMORY_SHARE = 0.8  # at most this share of the host's available memory goes to one HBM image


def host_available_bytes() -> int:
    """Memory the host can still give this process: /proc/meminfo's MemAvailable, else the
    available physical pages (sysconf), else 0 (unknown: nothing is refused)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return 0


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def check_host_memory(nbytes: int, what: str) -> None:
    """HostMemoryError unless `nbytes` fits in HOST_MEMORY_SHARE of the host's available memory."""
    avail = host_available_bytes()
    if avail and nbytes > HOST_MEMORY_SHARE * avail:
        raise HostMemoryError(f"{what} needs {_size(nbytes)} of host memory; the host has "
                              f"{_size(avail)} available (at most {HOST_MEMORY_SHARE:.0%} of it is used): "
                              "run it timing-only (--timing-only), or with a smaller batch or input")


class Device:
    """One simulated chip. `functional=False` is timing-only: no tensor data is touched."""

    def __init__(self, chip: Chip, hbm_bytes: int, functional: bool = True, host_executor: HostExecutor | None = None,
                 collective_executor: CollectiveExecutor | None = None):
        if hbm_bytes > chip.hbm.bytes:
            raise MemoryError(f"program needs {hbm_bytes / 2**30:.2f} GiB of HBM; {chip.name} has {chip.hbm.bytes / 2**30:.2f} GiB")
        if functional:  # the HBM image and the scratchpads the cores may touch live in host memory
            check_host_memory(hbm_bytes + chip.cores * chip.core.scratchpad.bytes,
                              f"a functional simulation of {_size(hbm_bytes)} of {chip.name} HBM")
        self.chip = chip
        self.functional = functional
        self.hbm = np.zeros(hbm_bytes, np.uint8) if functional else np.zeros(0, np.uint8)
        self._srams: dict[int, np.ndarray] = {}
        self.host_executor = host_executor
        # runs CollectiveLaunches (chip-to-chip all-reduces) with the other chips of a multi-chip
        # runner (runtime.tensor_parallel); None: this device runs alone and refuses them
        self.collective_executor = collective_executor
        self.trace_events: list[dict] | None = None
        self._lat = cost.hbm_latency_cycles(chip)
        self._l2_lat = cost.l2_latency_cycles(chip)
        self._hbm_bpc = chip.hbm_bytes_per_cycle
        self._dma_bpc = chip.core.dma_bytes_per_cycle
        self._prepared: dict[int, tuple] = {}  # id(instruction) -> (instruction, costs..., start)
        self._memo: dict[str, KernelProfile] = {}  # timing key -> profile of a launch started at cycle 0

    # -- host-side access to simulated HBM --------------------------------------------
    def write(self, ref: HbmRef, value: np.ndarray) -> None:
        if self.functional:
            hbm_view(self.hbm, ref)[...] = np.asarray(value).reshape(ref.shape)

    def read(self, ref: HbmRef) -> np.ndarray:
        return np.array(hbm_view(self.hbm, ref), copy=True)

    def sram(self, core: int) -> np.ndarray:
        s = self._srams.get(core)
        if s is None:
            s = self._srams[core] = np.zeros(self.chip.core.scratchpad.bytes, np.uint8)
        return s

    # -- running programs ----------------------------------------------------------------
    @gc_paused()
    def run(self, program: Program, trace: bool = False) -> Profile:
        # Tile-sized BLAS calls run fastest single-threaded; multi-threaded OpenBLAS spins
        # between thousands of small calls and starves the other core (40x slower here).
        with threadpool_limits(limits=1, user_api="blas"):
            return self._run(program, trace)

    def _run(self, program: Program, trace: bool) -> Profile:
        if self.functional and getattr(program, "timing_only", False):  # getattr: programs saved before the field
            raise ValueError("this program was compiled timing-only (identical kernels share instruction streams): "
                             "run it on a Device(functional=False), or compile it without timing_only")
        chip = self.chip
        prof = Profile(chip=chip.name, clock_hz=chip.clock_hz, cores=chip.cores,
                       peak_flops_per_cycle=2 * chip.peak_macs_per_cycle(program.dtype) if chip.supports(program.dtype) else 0)
        self.trace_events = [] if trace else None
        t = 0.0
        prefetcher = (WeightPrefetcher(program, chip.l2.weight_prefetch_bytes, self._load_key_traffic)
                      if chip.l2.weight_prefetch_bytes and program.constants else None)
        for idx, launch in enumerate(program.launches):
            if isinstance(launch, HostLaunch):
                kp = self._run_host(launch, t)
            elif isinstance(launch, CollectiveLaunch):
                kp = self._run_collective(launch, t)
            else:
                pre = prefetcher.take(idx) if prefetcher is not None else []
                if not self.functional and not trace and launch.timing_key is not None:
                    kp = self._run_kernel_memo(launch, t, pre)
                else:
                    kp = self._run_kernel(launch, t, pre)
            prof.kernels.append(kp)
            launch_gap = chip.launch_gap_cycles(kp.cycles)
            if prefetcher is not None:  # HBM time this launch and the gap after it leave idle
                own = (kp.hbm_bytes - kp.prefetched_bytes) if kp.kind not in ("host", "collective") else 0
                prefetcher.advance(idx, max(kp.cycles + launch_gap - own / self._hbm_bpc, 0.0) * self._hbm_bpc)
            t = kp.start_cycle + kp.cycles + launch_gap
            prof.flops += kp.flops
            prof.macs += kp.macs
            prof.sram_bytes += kp.sram_bytes
            prof.instructions += kp.instructions
            prof.hbm_read_bytes += kp.hbm_read_bytes
            prof.hbm_write_bytes += kp.hbm_bytes - kp.hbm_read_bytes
            if isinstance(launch, HostLaunch):
                prof.host_bytes += kp.hbm_bytes
            for q in QUEUES:
                prof.busy[q] += kp.busy[q]
                prof.stall[q] += kp.stall[q]
        prof.cycles = t
        e = chip.energy
        for kp in prof.kernels:
            prof.energy.sram_j += kp.sram_bytes * e.pj_per_sram_byte * 1e-12
            prof.energy.vector_j += kp.vector_ops * e.pj_per_vector_op * 1e-12
            prof.energy.hbm_j += kp.hbm_bytes * e.pj_per_hbm_byte * 1e-12
            prof.energy.l2_j += (kp.hbm_bytes + kp.l2_hit_bytes) * e.pj_per_l2_byte * 1e-12  # all DMA traffic crosses L2
        pj_default = e.pj_per_mac.get(program.dtype, max(e.pj_per_mac.values()))

        def pj_mac(kp: KernelProfile) -> float:  # a kernel's matrix work in its own format
            return e.pj_per_mac.get(DType(kp.mac_dtype), pj_default) if kp.mac_dtype else pj_default

        prof.energy.mac_j = sum(kp.macs * pj_mac(kp) for kp in prof.kernels) * 1e-12
        prof.energy.static_j = e.static_w * prof.seconds
        for kp in prof.kernels:
            kp.energy_j = (kp.macs * pj_mac(kp) + kp.vector_ops * e.pj_per_vector_op + kp.sram_bytes * e.pj_per_sram_byte
                           + kp.hbm_bytes * (e.pj_per_hbm_byte + e.pj_per_l2_byte)) * 1e-12 + e.static_w * kp.cycles / chip.clock_hz
        prof.l2_bytes = sum(k.hbm_bytes + k.l2_hit_bytes for k in prof.kernels)
        return prof

    def _prepare(self, ins, hbm: np.ndarray, sram: np.ndarray):
        """The instruction's functional start, in this chip's arithmetic: an fp8 MatMul on an array
        with a limited-precision accumulator (core.matrix.fp8_accumulator_bits) accumulates as it does."""
        m = self.chip.core.matrix
        if (m.fp8_accumulator_bits is not None and type(ins) is MatMul and not ins.block
                and ins.a.dtype in (DType.fp8_e4m3, DType.fp8_e5m2)):
            return prepare_limited_fp8_matmul(ins, hbm, sram, m.fp8_accumulator_bits, m.fp8_mma_k, m.fp8_promotion_k)
        return PREPARERS[type(ins)](ins, hbm, sram)

    def _load_key_traffic(self, ins: DmaLoad, launch: KernelLaunch) -> tuple[tuple, float]:
        c = self._instr_cost(ins, launch.dtype)
        return c[6], c[1]

    def _run_kernel_memo(self, launch: KernelLaunch, t0: float, prefetched: list) -> KernelProfile:
        """Timing-only steady-state shortcut: a launch whose timing key was simulated before
        (an identical layer, with as much of it prefetched) reuses that kernel profile, shifted
        to start at t0."""
        key = (launch.timing_key, len(prefetched))
        done = self._memo.get(key)
        if done is None:
            done = self._memo[key] = self._run_kernel(launch, 0.0, prefetched)
        return replace(done, name=launch.name, ops=list(launch.ops), start_cycle=t0,
                       busy=dict(done.busy), stall=dict(done.stall))

    def _run_host(self, launch: HostLaunch, t0: float) -> KernelProfile:
        link = self.chip.host_link
        nbytes = sum(r.numel * r.dtype.itemsize for r in launch.inputs + launch.outputs)
        cycles = (nbytes / (link.bandwidth_gbs * 1e9) + 2 * link.latency_us * 1e-6) * self.chip.clock_hz
        if self.functional:
            if self.host_executor is None:
                raise RuntimeError(f"{launch.name} runs on the host, but no host executor is attached")
            outs = self.host_executor(launch, [self.read(r) for r in launch.inputs])
            for ref, val in zip(launch.outputs, outs):
                self.write(ref, val)
        kp = KernelProfile(launch.name, "host", launch.ops, t0, cycles, 0, 0, nbytes, 0, 0, 0)
        kp.hbm_read_bytes = sum(r.numel * r.dtype.itemsize for r in launch.inputs)
        kp.memory_bound_cycles = cycles
        if self.trace_events is not None:
            self.trace_events.append(_event(launch.name, "host", -1, "host", t0, cycles, self.chip.clock_hz))
        return kp

    def _run_collective(self, launch: CollectiveLaunch, t0: float) -> KernelProfile:
        """Hands a chip-to-chip collective to the collective executor: it gets this chip's
        inputs and arrival cycle, waits for the other chips, and returns this chip's outputs
        and the cycle the collective ends (the time in between counts as this launch's)."""
        if self.collective_executor is None:
            raise RuntimeError(f"{launch.name} is a chip-to-chip {launch.kind} (the program was compiled for several "
                               "chips); a single Device cannot run it: run the program through a multi-chip runner "
                               "(vnpu.runtime.tensor_parallel)")
        outs, end = self.collective_executor(launch, [self.read(r) for r in launch.inputs] if self.functional else [],
                                             t0)
        if self.functional:
            for ref, val in zip(launch.outputs, outs):
                self.write(ref, val)
        kp = KernelProfile(launch.name, "collective", launch.ops, t0, max(end - t0, 0.0), 0, 0, 0, 0, 0, 0)
        if self.trace_events is not None:
            self.trace_events.append(_event(launch.name, "link", -1, "collective", t0, kp.cycles, self.chip.clock_hz))
        return kp

    def _instr_cost(self, ins, dtype) -> tuple:
        """(kind, hbm traffic bytes, engine cycles, macs, vector ops, sram bytes, L2 line key), cached per
        instruction. The key names the HBM view a DmaLoad reads or a DmaStore writes (None for gathers
        and scatters, whose rows depend on runtime indices)."""
        chip = self.chip
        if isinstance(ins, DmaLoad):
            fp = ins.hbm_bytes if ins.hbm_bytes >= 0 else cost.hbm_traffic_bytes(chip, ins.src.footprint_bytes(), ins.src.contiguous_run())
            r = (0, fp, fp / self._dma_bpc, 0, 0, ins.dst.nbytes, (ins.src.offset, ins.src.shape, ins.src.strides))
        elif isinstance(ins, DmaStore):
            fp = cost.hbm_traffic_bytes(chip, ins.dst.footprint_bytes(), ins.dst.contiguous_run())
            r = (1, fp, fp / self._dma_bpc, 0, 0, ins.src.nbytes, (ins.dst.offset, ins.dst.shape, ins.dst.strides))
        elif isinstance(ins, (DmaGather, DmaScatter)):  # whole rows at runtime indices, a burst each at least
            tile = ins.dst if isinstance(ins, DmaGather) else ins.src
            rows = ins.index.numel
            row_bytes = max(tile.nbytes // max(rows, 1), 1)
            fp = rows * max(row_bytes, chip.hbm.burst_bytes)
            r = (0 if isinstance(ins, DmaGather) else 1, fp, fp / self._dma_bpc, 0, 0, tile.nbytes + ins.index.nbytes, None)
        elif isinstance(ins, MatMul):
            m, k = ins.a.shape
            k *= PACKED_ELEMENTS.get(ins.a.dtype, 1)  # packed fp4: two K elements per stored byte
            n = ins.b.shape[0] if ins.trans_b else ins.b.shape[1]
            rate_dt = ins.a.dtype if ins.a.dtype in QUANT_MATMUL_ACC or not chip.supports(dtype) else dtype
            pack = 16 // ins.b_bits if ins.b_bits else 1  # packed weight-only: 16 / bits weights per PE
            cyc = cost.matmul_cycles(chip, m, k, n, rate_dt, ins.continues, ins.drains, pack)
            spad = ins.a.nbytes + ins.b.nbytes + ins.acc.nbytes * (2 if ins.accumulate else 1)
            if ins.block:  # the block / group scales stream with their operands
                spad += (ins.a_scale.nbytes if ins.a_scale is not None else 0) + ins.b_scale.nbytes
            r = (2, 0, cyc, m * k * n, 0, spad, None)
        else:
            n = ins.dst.numel if not ins.op.startswith(("reduce_", "topk_", "moe_route_")) else ins.srcs[0].numel
            work = n
            if ins.op.startswith("topk_"):  # a k-deep compare-exchange pass per element (k=1: a max reduction)
                work = n * max(1, int(dict(ins.attrs)["k"]).bit_length())
            elif ins.op.startswith("moe_route_"):  # a counting sort of the slots by expert id (2 passes)
                work = 2 * n + ins.dst.numel
            r = (3, 0, cost.vector_cycles(chip, ins.op, work), 0, work,
                 ins.dst.nbytes + sum(s.nbytes for s in ins.srcs if not isinstance(s, float)), None)
        return r

    def _run_kernel(self, launch: KernelLaunch, t0: float, prefetched: list | tuple = ()) -> KernelProfile:
        functional = self.functional
        hbm = self.hbm
        lat = self._lat
        hbm_bpc = self._hbm_bpc
        dtype = launch.dtype
        kp = KernelProfile(launch.name, launch.kind, launch.ops, t0, 0.0, launch.flops, 0, 0, 0, 0, 0,
                           mac_dtype=launch.dtype.value)
        busy = [0.0] * 4
        stall = [0.0] * 4
        hbm_free = t0
        # L2: an LRU of the HBM views this kernel has moved, up to the L2's capacity. Each kernel
        # starts cold (no residency across the barrier), which keeps launches independent, except
        # for the weight views the prefetcher brought in for it (sim/prefetch.py).
        l2: OrderedDict = OrderedDict(prefetched)
        l2_used = pre_b = int(sum(b for _, b in prefetched))
        l2_cap = self.chip.l2.bytes
        l2_free = t0
        l2_bpc = self.chip.l2.bytes_per_cycle
        l2_lat = self._l2_lat
        l2_hit = 0
        heap: list = []
        seq = 0
        streams = []
        for ci, cs in enumerate(launch.cores):
            qlists = [cs.queues[q] for q in QUEUES]
            st = [qlists, [0, 0, 0, 0], [t0] * 4, [0] * max(cs.semaphores, 1), {}, self.sram(ci) if functional else None,
                  [t0] * 4]
            streams.append(st)
            for qi in range(4):
                if qlists[qi]:
                    heapq.heappush(heap, (t0, seq, _TRY, ci, qi, None))
                    seq += 1
        end = t0
        macs = vops = sram_b = n_ins = 0
        hbm_b = hbm_rd = pre_b  # the prefetched views were read from HBM on this kernel's behalf
        tr = self.trace_events
        cache = self._prepared
        while heap:
            now, _, kind, ci, qi, payload = heapq.heappop(heap)
            st = streams[ci]
            qlists, ptrs, free_at, sems, waiters, sram, retired = st
            if kind == _DONE:
                write, signal = payload
                if write is not None:
                    dst, val = write
                    dst[...] = val
                if now > end:
                    end = now
                if signal >= 0:
                    sems[signal] += 1
                    for wq in waiters.pop(signal, ()):
                        heapq.heappush(heap, (now, seq, _TRY, ci, wq, None))
                        seq += 1
                continue
            ins = qlists[qi][ptrs[qi]]
            blocked = False
            for s, v in ins.waits:
                if sems[s] < v:
                    waiters.setdefault(s, []).append(qi)
                    blocked = True
                    break
            if blocked:
                continue
            start = now if now > free_at[qi] else free_at[qi]
            stall[qi] += start - free_at[qi]
            # per-instruction cache: its costs and, when functional, its bound memory views
            # (instructions are not mutated after compilation; a replaced one is re-prepared)
            info = cache.get(id(ins))
            if info is None or info[0] is not ins:
                c = self._instr_cost(ins, dtype)
                info = cache[id(ins)] = (ins, *c, self._prepare(ins, hbm, sram) if functional else None)
            _, kind_i, traffic, cyc, m, vo, sb, l2key, prep = info
            if kind_i <= 1:
                # DMA over a channel shared by all cores, first come first served: the L2 port for
                # a load of a view this kernel already moved (a hit), else HBM
                if kind_i == 0 and l2key is not None and l2key in l2:
                    l2.move_to_end(l2key)
                    h0 = start if start > l2_free else l2_free
                    l2_free = chan_end = h0 + traffic / l2_bpc
                    land = l2_lat
                    l2_hit += traffic
                    l2key = None  # already resident
                else:
                    h0 = start if start > hbm_free else hbm_free
                    hbm_free = chan_end = h0 + traffic / hbm_bpc
                    land = lat
                    hbm_b += traffic
                    if kind_i == 0:
                        hbm_rd += traffic
                xfer_end = start + cyc
                if chan_end > xfer_end:
                    xfer_end = chan_end
                occupy = xfer_end - start
                done = xfer_end + land  # requests are pipelined: the engine moves on before data lands
                if done < retired[qi]:  # a queue retires in order: a hit behind a miss waits for it
                    done = retired[qi]
                retired[qi] = done
                if l2key is not None and traffic <= l2_cap:  # allocate (reads and writes), evict LRU
                    if l2key in l2:  # a store over a resident view
                        l2.move_to_end(l2key)
                    else:
                        l2[l2key] = traffic
                        l2_used += traffic
                        while l2_used > l2_cap:
                            l2_used -= l2.popitem(last=False)[1]
            else:
                occupy = cyc
                done = start + cyc
            busy[qi] += occupy
            macs += m
            vops += vo
            sram_b += sb
            n_ins += 1
            commit = prep() if prep is not None else None
            free_at[qi] = start + occupy
            if commit is None and ins.signal < 0:
                if done > end:  # nothing observes its completion: no event needed
                    end = done
            else:
                heapq.heappush(heap, (done, seq, _DONE, ci, qi, (commit, ins.signal)))
                seq += 1
            ptrs[qi] += 1
            if ptrs[qi] < len(qlists[qi]):
                heapq.heappush(heap, (free_at[qi], seq, _TRY, ci, qi, None))
                seq += 1
            if tr is not None:
                tr.append(_event(type(ins).__name__ + (f":{ins.op}" if isinstance(ins, VecOp) else ""), QUEUES[qi], ci, launch.name, start, done - start, self.chip.clock_hz))
        for ci, st in enumerate(streams):
            left = [(QUEUES[q], st[1][q], len(st[0][q])) for q in range(4) if st[1][q] < len(st[0][q])]
            if left:
                raise DeadlockError(f"kernel {launch.name}: core {ci} queues never finished (queue, next, total): {left}; "
                                    f"semaphores {st[3]}")
        kp.cycles = end - t0
        kp.macs = macs
        kp.vector_ops = vops
        kp.sram_bytes = sram_b
        kp.hbm_bytes = hbm_b
        kp.hbm_read_bytes = hbm_rd
        kp.l2_hit_bytes = l2_hit
        kp.prefetched_bytes = pre_b
        kp.instructions = n_ins
        kp.busy = dict(zip(QUEUES, busy))
        kp.stall = dict(zip(QUEUES, stall))
        chip = self.chip
        peak_macs = chip.peak_macs_per_cycle(dtype) if chip.supports(dtype) else 1
        kp.compute_bound_cycles = max(macs / peak_macs, vops / (chip.core.vector.lanes * chip.cores))
        kp.memory_bound_cycles = launch.min_hbm_bytes / hbm_bpc
        return kp


def _event(name: str, queue: str, core: int, kernel: str, start: float, dur: float, hz: float) -> dict:
    us = 1e6 / hz
    return {"name": name, "cat": queue, "ph": "X", "pid": core, "tid": queue, "ts": start * us, "dur": dur * us,
            "args": {"kernel": kernel}}
