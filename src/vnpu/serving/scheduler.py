"""One replica's scheduler, modelled on vLLM's: a paged KV cache in blocks, a per-step token
budget and sequence cap, and the policy that picks each step's batch.

Mechanism (this module): sequences, block accounting, preemption by recompute, progress when a
step completes. Policy (`POLICIES`, one entry each): which waiting and running sequences a step
takes and how many tokens of each.

- `chunked` (vLLM v1's default): running sequences first (a decode token each, or the next
  chunk of an unfinished prompt), then waiting prompts, chunked to fit `max_num_batched_tokens`;
  prefill chunks and decodes share a step (Sarathi-style stall-free batching).
- `prefill_first` (classic vLLM v0): while prompts wait and fit, a step runs whole prompts only;
  otherwise it decodes every running sequence. Decodes stall behind long prefills.
- `orca` (Orca-style reservation): a sequence is admitted only when blocks for its whole prompt
  plus its maximum output are free, and holds them until it finishes; steps as `chunked` but
  without chunking prompts.

KV blocks: a sequence holds ceil(tokens in the cache / block_size) blocks. When a decode needs a
block and none is free, the most recently admitted running sequence is preempted: its blocks are
freed and it returns to the front of the waiting queue, to recompute its prompt and the tokens it
generated so far (vLLM's recompute preemption).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from vnpu.serving.trace import Request


class SchedulerError(ValueError):
    pass


@dataclass(frozen=True)
class SchedulerConfig:
    num_blocks: int  # KV blocks this replica holds
    block_size: int = 16
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    policy: str = "chunked"

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise SchedulerError(f"unknown scheduler policy {self.policy!r}: use one of {', '.join(POLICIES)}")
        for name in ("num_blocks", "block_size", "max_num_batched_tokens", "max_num_seqs"):
            if getattr(self, name) < 1:
                raise SchedulerError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class Sequence:
    req: Request
    computed: int = 0  # tokens whose KV is in the cache (prompt, then generated tokens)
    generated: int = 0  # output tokens produced so far
    blocks: int = 0  # KV blocks held
    reserved: int = 0  # orca: blocks reserved at admission
    admitted_at: int = -1  # admission order (preemption picks the latest)
    preemptions: int = 0
    first_token_s: float | None = None
    token_s: list[float] = field(default_factory=list)  # when each output token was produced
    finish_s: float | None = None

    @property
    def target(self) -> int:
        """Tokens to compute before the next output token: the prompt and the tokens generated so far
        (after a preemption those are recomputed as prompt)."""
        return self.req.prompt_tokens + self.generated

    @property
    def prefilling(self) -> bool:
        return self.computed < self.target


@dataclass(frozen=True)
class StepPlan:
    """One step: (sequence, new tokens, tokens already in its cache, whether it is prefill) per member."""
    items: tuple[tuple[Sequence, int, int, bool], ...]

    @property
    def prefill(self) -> list[tuple[int, int]]:
        """(new tokens, past tokens) of each prefill chunk."""
        return [(n, past) for _, n, past, pre in self.items if pre]

    @property
    def decode(self) -> list[int]:
        """KV length (past tokens) of each decoding sequence."""
        return [past for _, _, past, pre in self.items if not pre]

    @property
    def tokens(self) -> int:
        return sum(n for _, n, _, _ in self.items)


def _item(seq: Sequence, n: int) -> tuple[Sequence, int, int, bool]:
    """A member: decoding when the sequence has output and only its last token's KV is missing."""
    return (seq, n, seq.computed, seq.generated == 0 or seq.target - seq.computed > 1)


class Scheduler:
    def __init__(self, config: SchedulerConfig):
        self.cfg = config
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.free_blocks = config.num_blocks
        self.peak_blocks = 0
        self.peak_running = 0
        self._admitted = 0
        self.preemptions = 0

    # -- blocks ----------------------------------------------------------------------------------------
    def blocks_for(self, tokens: int) -> int:
        return math.ceil(tokens / self.cfg.block_size)

    def fits_ever(self, req: Request) -> bool:
        """Whether the request's prompt and output can ever be held (else it is rejected)."""
        return self.blocks_for(req.prompt_tokens + req.output_tokens) <= self.cfg.num_blocks

    def _grow(self, seq: Sequence, tokens: int) -> bool:
        """Blocks for `tokens` more tokens in seq's cache; False when they are not free."""
        need = self.blocks_for(seq.computed + tokens) - seq.blocks
        if seq.reserved:  # orca: covered by the reservation
            need = max(0, self.blocks_for(seq.computed + tokens) - seq.reserved)
        if need > self.free_blocks:
            return False
        self.free_blocks -= need
        seq.blocks += need
        used = self.cfg.num_blocks - self.free_blocks
        self.peak_blocks = max(self.peak_blocks, used)
        assert self.free_blocks >= 0
        return True

    def _release(self, seq: Sequence) -> None:
        self.free_blocks += max(seq.blocks, seq.reserved)
        seq.blocks = seq.reserved = 0

    def _preempt(self) -> Sequence:
        victim = max(self.running, key=lambda s: s.admitted_at)
        self.running.remove(victim)
        self._release(victim)
        victim.computed = 0
        victim.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(victim)
        return victim

    def _admit(self, seq: Sequence) -> None:
        seq.admitted_at = self._admitted
        self._admitted += 1
        self.running.append(seq)
        self.peak_running = max(self.peak_running, len(self.running))

    # -- interface --------------------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> StepPlan | None:
        """The next step's batch (None: nothing can run now)."""
        items = POLICIES[self.cfg.policy](self)
        return StepPlan(tuple(items)) if items else None

    def complete(self, plan: StepPlan, end_s: float) -> list[Sequence]:
        """Advances every member by its tokens; returns the sequences that finished."""
        done = []
        for seq, n, _, _ in plan.items:
            seq.computed += n
            if seq.computed >= seq.target:  # the step produced its next output token
                seq.generated += 1
                seq.token_s.append(end_s)
                if seq.first_token_s is None:
                    seq.first_token_s = end_s
                if seq.generated >= seq.req.output_tokens:
                    seq.finish_s = end_s
                    self.running.remove(seq)
                    self._release(seq)
                    done.append(seq)
        return done


# -- policies -------------------------------------------------------------------------------------------
def _decodes(sch: Scheduler, budget: int) -> tuple[list, int]:
    """A token for every running sequence whose prompt is done (preempting when blocks run out),
    and the next chunk of those still prefilling."""
    items = []
    for seq in list(sch.running):
        if seq not in sch.running:  # preempted meanwhile
            continue
        if budget <= 0:
            break
        n = 1 if not seq.prefilling else min(seq.target - seq.computed, budget)
        while not sch._grow(seq, n):
            victim = sch._preempt()
            if victim is seq:
                break
        else:
            items.append(_item(seq, n))
            budget -= n
    return items, budget


def _chunked(sch: Scheduler) -> list:
    cfg = sch.cfg
    items, budget = _decodes(sch, cfg.max_num_batched_tokens)
    while sch.waiting and budget > 0 and len(sch.running) < cfg.max_num_seqs:
        seq = sch.waiting[0]
        n = min(seq.target - seq.computed, budget)
        if not sch._grow(seq, n):
            break
        sch.waiting.popleft()
        sch._admit(seq)
        items.append(_item(seq, n))
        budget -= n
    return items


def _prefill_first(sch: Scheduler) -> list:
    cfg = sch.cfg
    items, budget = [], cfg.max_num_batched_tokens
    while sch.waiting and len(sch.running) < cfg.max_num_seqs:
        seq = sch.waiting[0]
        n = seq.target - seq.computed
        if n > budget and items:  # whole prompts only (a prompt longer than the budget runs alone)
            break
        if not sch._grow(seq, n):
            break
        sch.waiting.popleft()
        sch._admit(seq)
        items.append(_item(seq, n))
        budget -= n
    if items:
        return items
    return _decodes(sch, cfg.max_num_batched_tokens)[0]


def _orca(sch: Scheduler) -> list:
    cfg = sch.cfg
    items, budget = _decodes(sch, cfg.max_num_batched_tokens)
    while sch.waiting and len(sch.running) < cfg.max_num_seqs:
        seq = sch.waiting[0]
        n = seq.target - seq.computed
        reserve = sch.blocks_for(seq.req.prompt_tokens + seq.req.output_tokens)
        if (n > budget and items) or reserve > sch.free_blocks:  # a prompt longer than the budget runs alone
            break
        sch.free_blocks -= reserve
        seq.reserved = reserve
        sch.peak_blocks = max(sch.peak_blocks, cfg.num_blocks - sch.free_blocks)
        sch.waiting.popleft()
        sch._admit(seq)
        items.append(_item(seq, n))
        budget -= n
    return items


POLICIES: dict[str, Callable[[Scheduler], list]] = {
    "chunked": _chunked,
    "prefill_first": _prefill_first,
    "orca": _orca,
}
