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

Prefix caching (`prefix_caching`, vLLM's automatic prefix caching at block granularity): the full
blocks of a request's shared prefix (trace `prefix_id` / `prefix_tokens`) are published to a cache
keyed by (prefix id, block index) once computed. A later request with that prefix references the
leading cached blocks instead of computing them (at least one prompt token is always computed);
blocks no sequence references stay cached until an allocation evicts them, least recently
released first. free + blocks held by sequences + cached blocks = capacity at all times.
"""
from __future__ import annotations

from collections import OrderedDict, deque
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
    prefix_caching: bool = False
    max_model_len: int | None = None  # the model's context: longer requests are rejected

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise SchedulerError(f"unknown scheduler policy {self.policy!r}: use one of {', '.join(POLICIES)}")
        for name in ("num_blocks", "block_size", "max_num_batched_tokens", "max_num_seqs"):
            if getattr(self, name) < 1:
                raise SchedulerError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(eq=False)  # identity: a sequence is itself, whatever its progress
class Sequence:
    req: Request
    computed: int = 0  # tokens whose KV is in the cache (prompt, then generated tokens)
    generated: int = 0  # output tokens produced so far
    blocks: int = 0  # KV blocks held (its own)
    shared: int = 0  # leading prefix blocks it references in the prefix cache
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
        self.cached: dict[tuple, int] = {}  # prefix cache: (prefix id, block index) -> sequences referencing it
        self.evictable: OrderedDict[tuple, None] = OrderedDict()  # cached blocks nobody references, LRU first
        self.cached_tokens_hit = 0  # prompt tokens served from the prefix cache

    # -- blocks ----------------------------------------------------------------------------------------
    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.cfg.block_size)

    def rejection(self, req: Request) -> str:
        """Why the request can never be served here ("" when it can)."""
        n = req.prompt_tokens + req.output_tokens
        if self.cfg.max_model_len is not None and n > self.cfg.max_model_len:
            return f"prompt {req.prompt_tokens} + output {req.output_tokens} tokens exceed the model's context ({self.cfg.max_model_len})"
        if self.blocks_for(n) > self.cfg.num_blocks:
            return (f"prompt {req.prompt_tokens} + output {req.output_tokens} tokens exceed the replica's KV cache "
                    f"({self.cfg.num_blocks} blocks of {self.cfg.block_size})")
        return ""

    def fits_ever(self, req: Request) -> bool:
        """Whether the request's prompt and output can ever be held (else it is rejected)."""
        return not self.rejection(req)

    def _take(self, n: int) -> bool:
        """n blocks out of the free pool, evicting unreferenced cached prefix blocks when needed."""
        if n > self.free_blocks + len(self.evictable):
            return False
        while n > self.free_blocks:
            key, _ = self.evictable.popitem(last=False)
            del self.cached[key]
            self.free_blocks += 1
        self.free_blocks -= n
        self.peak_blocks = max(self.peak_blocks, self.cfg.num_blocks - self.free_blocks)
        return True

    def _grow(self, seq: Sequence, tokens: int) -> bool:
        """Blocks for `tokens` more tokens in seq's cache; False when they are not free."""
        need = self.blocks_for(seq.computed + tokens) - seq.shared - seq.blocks
        if seq.reserved:  # orca: covered by the reservation
            need = max(0, self.blocks_for(seq.computed + tokens) - seq.shared - seq.reserved)
        if need > 0 and not self._take(need):
            return False
        seq.blocks += max(need, 0)
        return True

    def _release(self, seq: Sequence) -> None:
        self.free_blocks += max(seq.blocks, seq.reserved)
        seq.blocks = seq.reserved = 0
        self._drop_shared(seq)

    # -- prefix cache -----------------------------------------------------------------------------------
    def _hit(self, seq: Sequence) -> None:
        """A sequence about to be admitted references the cached leading blocks of its prefix."""
        r = seq.req
        if not self.cfg.prefix_caching or r.prefix_id is None or seq.computed or seq.shared:
            return
        bs = self.cfg.block_size
        limit = min(r.prefix_tokens // bs, (seq.target - 1) // bs)  # at least one token is computed
        hit = 0
        while hit < limit and (r.prefix_id, hit) in self.cached:
            hit += 1
        for i in range(hit):
            key = (r.prefix_id, i)
            self.cached[key] += 1
            self.evictable.pop(key, None)
        seq.shared, seq.computed = hit, hit * bs
        self.cached_tokens_hit += hit * bs

    def _unhit(self, seq: Sequence) -> None:
        """Undoes _hit for a sequence that could not be admitted after all."""
        self.cached_tokens_hit -= seq.shared * self.cfg.block_size
        self._drop_shared(seq)
        seq.computed = 0

    def held_blocks(self) -> int:
        """Blocks in use: sequences' own (or reserved) blocks plus the prefix cache's."""
        return sum(max(q.blocks, q.reserved) for q in list(self.running) + list(self.waiting)) + len(self.cached)

    def _drop_shared(self, seq: Sequence) -> None:
        for i in range(seq.shared):
            key = (seq.req.prefix_id, i)
            self.cached[key] -= 1
            if not self.cached[key]:
                self.evictable[key] = None
        seq.shared = 0

    def _publish(self, seq: Sequence) -> None:
        """Full prefix blocks the sequence has computed go to the prefix cache (it references them)."""
        r = seq.req
        full = min(seq.computed, r.prefix_tokens) // self.cfg.block_size
        while seq.shared < full:
            key = (r.prefix_id, seq.shared)
            if key in self.cached:  # computed meanwhile by another sequence: reference that one
                self.cached[key] += 1
                self.evictable.pop(key, None)
                self.free_blocks += 1
            else:
                self.cached[key] = 1
            if seq.reserved:
                seq.reserved -= 1
            else:
                seq.blocks -= 1
            seq.shared += 1

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
            if self.cfg.prefix_caching and seq.req.prefix_id is not None:
                self._publish(seq)
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
    preempted: set[int] = set()
    for seq in list(sch.running):
        if id(seq) in preempted:
            continue
        if budget <= 0:
            break
        n = min(seq.target - seq.computed, budget)  # 1 for a decode
        while not sch._grow(seq, n):
            victim = sch._preempt()
            preempted.add(id(victim))
            if any(it[0] is victim for it in items):  # (the latest admitted is normally not yet in the batch)
                budget += sum(it[1] for it in items if it[0] is victim)
                items = [it for it in items if it[0] is not victim]
            if victim is seq:
                break
        else:
            items.append(_item(seq, n))
            budget -= n
    return items, budget


def _admit_next(sch: Scheduler, tokens: Callable[[Sequence], int | None],
                allocate: Callable[[Sequence, int], bool] | None = None) -> tuple | None:
    """Admits the head of the waiting queue with `tokens(seq)` tokens this step (after its prefix
    cache hit), if `allocate` (default: blocks for them) succeeds; None leaves it waiting."""
    seq = sch.waiting[0]
    sch._hit(seq)
    n = tokens(seq)
    if n is None or not (allocate or sch._grow)(seq, n):
        sch._unhit(seq)
        return None
    sch.waiting.popleft()
    sch._admit(seq)
    return _item(seq, n)


def _whole_prompt(budget: int, items: list) -> Callable[[Sequence], int | None]:
    """A whole prompt when it fits the budget, or when it is alone in the step (None: wait)."""
    return lambda q: None if (q.target - q.computed > budget and items) else q.target - q.computed


def _chunked(sch: Scheduler) -> list:
    cfg = sch.cfg
    items, budget = _decodes(sch, cfg.max_num_batched_tokens)
    while sch.waiting and budget > 0 and len(sch.running) < cfg.max_num_seqs:
        item = _admit_next(sch, lambda q: min(q.target - q.computed, budget))
        if item is None:
            break
        items.append(item)
        budget -= item[1]
    return items


def _prefill_first(sch: Scheduler) -> list:
    cfg = sch.cfg
    items, budget = [], cfg.max_num_batched_tokens
    while sch.waiting and len(sch.running) < cfg.max_num_seqs:
        item = _admit_next(sch, _whole_prompt(budget, items))
        if item is None:
            break
        items.append(item)
        budget -= item[1]
    if items:
        return items
    return _decodes(sch, cfg.max_num_batched_tokens)[0]


def _orca(sch: Scheduler) -> list:
    cfg = sch.cfg
    items, budget = _decodes(sch, cfg.max_num_batched_tokens)

    def reserve(seq: Sequence, n: int) -> bool:  # blocks for the whole prompt and maximum output, held to the end
        blocks = sch.blocks_for(seq.req.prompt_tokens + seq.req.output_tokens) - seq.shared
        if not sch._take(blocks):
            return False
        seq.reserved = blocks
        return True

    while sch.waiting and len(sch.running) < cfg.max_num_seqs:
        item = _admit_next(sch, _whole_prompt(budget, items), reserve)
        if item is None:
            break
        items.append(item)
        budget -= item[1]
    return items


POLICIES: dict[str, Callable[[Scheduler], list]] = {
    "chunked": _chunked,
    "prefill_first": _prefill_first,
    "orca": _orca,
}
