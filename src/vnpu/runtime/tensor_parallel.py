"""Functional multi-chip LLM serving: tensor-parallel (dense) / expert-parallel (MoE) decoders
on N simulated chips, computing real tokens.

Each chip holds its shard of the model with the full model's weights
(workloads.llm_zoo.shard_model: the shapes runtime.llm.shard_spec gives the timing-only path)
in an LLMSession of its own, whose programs contain `all_reduce` CollectiveLaunches (after
the embedding lookup, attention's o_proj and each MLP / MoE block). A step runs all chips at
once, one host thread per chip (each in its own LLMSession.run); at each collective every
chip's Device hands its buffer to the group's executor, which waits for all chips, sums the
buffers on the host in fp32 in chip order and gives every chip the sum. Its time: the chips
meet at the latest arrival, then the ring all-reduce's time (isa.cost.allreduce_seconds);
so a step's time is, segment by segment, the slowest chip plus the collectives.

Greedy token: each chip's program returns the logits of its vocabulary rows; the host takes
the argmax over all chips' logits (the real vocabulary only), which is the token the
exchange of each chip's best (logit, id) gives; the step is charged that exchange
(an all-reduce of n candidates of 16 B per sequence, as step_collectives charges it).

Differences from the timing-only multi-chip path (runtime.llm.generate, chips > 1):
- the vocabulary-parallel embedding adds one all-reduce of [B*S, H] per step (2L + 1 instead
  of the 2L that step_collectives counts);
- MoE: the router is whole on every chip and routing is the full model's global top-k; each
  chip runs all k slots of every token through its grouped-matmul kernel, those of other
  chips' experts with weight 0, where the timing path assumes balanced routing (k / n slots
  per chip); the experts are combined with all-reduces (no all-to-all schedule).
Greedy decoding only (no top-k sampling) for now.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from vnpu.chip import DEFAULT_CHIP, load_chip
from vnpu.chip.schema import Chip
from vnpu.dtypes import DType
from vnpu.gcpause import gc_paused
from vnpu.isa.cost import allreduce_seconds
from vnpu.isa.program import CollectiveLaunch
from vnpu.runtime.llm import LLMSession, PhaseCost, _capacity, candidate_exchange
from vnpu.sim.device import Device


@dataclass
class TPStepCost(PhaseCost):
    """One step's cost on all chips: seconds of the slowest chip (collectives included), energy,
    HBM bytes and flops summed over the chips; comm_s the link time in it, link_bytes what the
    chips sent each other (ring all-reduces: 2 (n - 1) / n of each tensor per chip)."""

    comm_s: float = 0.0
    link_bytes: float = 0.0
    collectives: int = 0


class AllReduceGroup:
    """The chips of one tensor-parallel group, meeting at each CollectiveLaunch (one thread
    per chip). `executor(rank)` is that chip's Device.collective_executor."""

    def __init__(self, chip: Chip, chips: int):
        self.chip = chip
        self.n = chips
        self._barrier = threading.Barrier(chips)
        self._slots: list = [None] * chips
        self.comm_s = 0.0  # link time and bytes since the last take_counters()
        self.link_bytes = 0.0
        self.collectives = 0

    def abort(self) -> None:
        self._barrier.abort()

    def reset(self) -> None:
        """Ready for a new run (after an aborted one), counters zeroed."""
        self._barrier.reset()
        self.take_counters()

    def take_counters(self) -> tuple[float, float, int]:
        out = (self.comm_s, self.link_bytes, self.collectives)
        self.comm_s, self.link_bytes, self.collectives = 0.0, 0.0, 0
        return out

    def executor(self, rank: int):
        def run(launch: CollectiveLaunch, inputs: list[np.ndarray], t: float) -> tuple[list[np.ndarray], float]:
            if launch.kind != "all_reduce":
                raise NotImplementedError(f"collective {launch.kind!r}")
            self._slots[rank] = (launch.name, inputs, t)
            self._barrier.wait()
            slots = list(self._slots)
            names = {s[0] for s in slots}
            if len(names) != 1:
                raise RuntimeError(f"chips reached different collectives: {sorted(names)}")
            outs = []
            for i, x in enumerate(inputs):  # exact fp32 sum in chip order, the same on every chip
                acc = slots[0][1][i].astype(np.float32)
                for r in range(1, self.n):
                    acc = acc + slots[r][1][i].astype(np.float32)
                outs.append(acc.astype(x.dtype))
            nbytes = sum(r.numel * r.dtype.itemsize for r in launch.inputs)
            secs = allreduce_seconds(self.chip, nbytes, self.n)
            end = max(s[2] for s in slots) + secs * self.chip.clock_hz
            if rank == 0:
                self.comm_s += secs
                self.link_bytes += self.n * 2 * (self.n - 1) / self.n * nbytes
                self.collectives += 1
            self._barrier.wait()  # all have read the slots before anyone writes the next ones
            return outs, end
        return run


class _ChipSession(LLMSession):
    """An LLMSession whose device runs collectives with the other chips of its group."""

    def __init__(self, *args, collective, **kwargs):
        super().__init__(*args, **kwargs)
        self._collective = collective

    def _dev(self) -> Device:
        dev = super()._dev()
        dev.collective_executor = self._collective
        return dev


class TensorParallelSession:
    """N chips serving one model (its shards from workloads.llm_zoo.shard_model) in lockstep."""

    def __init__(self, full_model, spec, chips: int, chip: Chip, dtype: DType, batch: int, capacity: int,
                 name: str = "llm"):
        from vnpu.workloads.llm_zoo import DecoderStep, shard_model

        if chips < 2:
            raise ValueError("a tensor-parallel session needs at least 2 chips")
        if chip.chip_link is None:
            raise ValueError(f"{chip.name} has no chip_link in its schema: it cannot serve over {chips} chips")
        self.chips, self.chip, self.batch = chips, chip, batch
        self.vocab = full_model.config.vocab_size
        self.group = AllReduceGroup(chip, chips)
        self.sessions = [
            _ChipSession(DecoderStep(shard_model(full_model, spec, r, chips), batch, capacity), chip, dtype, batch,
                         name=f"{name}_chip{r}", collective=self.group.executor(r))
            for r in range(chips)]

    def _step(self, pool: ThreadPoolExecutor, progs, ids: np.ndarray, pos: np.ndarray):
        def one(r: int):
            try:
                return self.sessions[r].run(progs[r], ids, pos)
            except BaseException:
                self.group.abort()  # release the chips waiting at a collective
                raise

        futs = [pool.submit(one, r) for r in range(self.chips)]
        errors = [e for e in (f.exception() for f in futs) if e is not None]
        if errors:  # the failing chip's error, not the barrier it broke for the others
            raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
        outs = [f.result() for f in futs]
        logits = np.concatenate([o[1] for o in outs], axis=-1)[:, :self.vocab]
        tok = np.argmax(logits, axis=-1).astype(np.int64)  # greedy over all chips' vocabulary rows
        comm_s, link_b, ncoll = self.group.take_counters()
        n = self.chips
        sample_s, sample_b = candidate_exchange(self.chip, n, self.batch)  # each chip's best (logit, id)
        pj = self.chip.chip_link.energy_pj_per_byte or 0.0
        profs = [o[2] for o in outs]
        link_b += sample_b
        cost = TPStepCost(max(p.seconds for p in profs) + sample_s,
                          sum(p.energy.total_j for p in profs) + n * self.chip.energy.static_w * sample_s
                          + link_b * pj * 1e-12,
                          float(sum(p.hbm_bytes for p in profs)), float(sum(p.flops for p in profs)),
                          comm_s + sample_s, link_b, ncoll + 1)
        return tok, logits, cost

    @gc_paused()
    def generate(self, prompt: np.ndarray, max_new_tokens: int):
        """Greedy tokens [B, new], logits [B, new, V] and per-step costs (prefill first)."""
        prompt = np.asarray(prompt, dtype=np.int64)
        b, s = prompt.shape
        if b != self.batch:
            raise ValueError(f"prompt batch {b} != session batch {self.batch}")
        self.group.reset()
        for sess in self.sessions:
            sess.reset()
        steps, toks, logits_all = [], [], []
        # one BLAS thread for the whole run: the per-chip Device.run calls set and restore it
        # concurrently, so the process-wide setting must not change in between
        with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(self.chips) as pool:
            progs = [sess.prefill_program(s) for sess in self.sessions]  # compiled here, not in the threads
            tok, logits, cost = self._step(pool, progs, prompt, np.arange(s))
            toks.append(tok), logits_all.append(logits), steps.append(cost)
            for i in range(max_new_tokens - 1):
                pos = s + i
                progs = [sess.decode_program(pos) for sess in self.sessions]
                tok, logits, cost = self._step(pool, progs, tok.reshape(b, 1), np.array([pos]))
                toks.append(tok), logits_all.append(logits), steps.append(cost)
        return np.stack(toks, axis=1), np.stack(logits_all, axis=1), steps


def tensor_parallel_generate(model_name: str, prompt_ids: np.ndarray, max_new_tokens: int, chips: int,
                             chip: str | Chip = DEFAULT_CHIP, dtype: str | DType = "fp32",
                             ) -> tuple[np.ndarray, list[TPStepCost]]:
    """Greedy generation of a (small, functional) zoo model on `chips` simulated chips:
    (tokens [B, max_new_tokens], per-step costs: the prefill, then each decode step)."""
    from vnpu.workloads.llm_zoo import build_llm, get_llm

    spec = get_llm(model_name)
    prompt_ids = np.asarray(prompt_ids, dtype=np.int64)
    b, s = prompt_ids.shape
    full = build_llm(spec)
    sess = TensorParallelSession(full, spec, chips, load_chip(chip) if isinstance(chip, str) else chip,
                                 DType(dtype), b, _capacity(s, max_new_tokens), name=model_name)
    tokens, _, steps = sess.generate(prompt_ids, max_new_tokens)
    return tokens, steps


__all__ = ["tensor_parallel_generate", "TensorParallelSession", "AllReduceGroup", "TPStepCost"]
