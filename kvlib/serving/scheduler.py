"""Which requests run this step, and how many tokens each (vLLM's / nano-vllm's Scheduler). No tensors.

Every step, within a token budget (`max_num_batched_tokens`) and a row budget (`max_num_seqs`):
1. running requests first, oldest first: one decode token each, or the next chunk of an unfinished prefill;
   a request whose new tokens need a block when none is free preempts the newest running request (by
   recompute: its blocks are freed and it goes back to the front of the waiting queue), itself if it is the newest;
2. then waiting requests, in arrival order, while their first chunk fits and leaves a free block for each running
   request (a watermark against admitting into an immediate preemption): prefix-cache hits first, blocks for the rest.
A request never preempts an older one, so the oldest always progresses: `add_request` refuses any request that
could not run alone in the whole pool, so none waits forever.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ..cache.paged.block_manager import BlockManager
from ..cache.paged.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    seqs: list[Sequence]  # one row each in the step's forward
    num_new_tokens: list[int]  # tokens fed for each (1 for a decode, up to a chunk for a prefill)
    num_preempted: int = 0  # requests preempted while building this batch

    @property
    def num_batched_tokens(self) -> int:
        return sum(self.num_new_tokens)


class Scheduler:
    def __init__(self, block_manager: BlockManager, *, max_num_seqs: int = 64,
                 max_num_batched_tokens: int = 256) -> None:
        for name, value in (("max_num_seqs", max_num_seqs), ("max_num_batched_tokens", max_num_batched_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # oldest admission first

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch([], [])
        budget = self.max_num_batched_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_uncomputed_tokens, budget)
            while not self.block_manager.append_slots(seq, n):
                victim = self.running[-1]
                self._preempt(victim)
                batch.num_preempted += 1
                if victim is seq:
                    break
            else:
                batch.seqs.append(seq)
                batch.num_new_tokens.append(n)
                budget -= n
                i += 1
                continue
            break  # seq itself was preempted: it was the newest, nothing after it runs
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs and not batch.num_preempted:
            seq = self.waiting[0]
            self.block_manager.allocate(seq)  # prefix-cache hits
            n = min(seq.num_uncomputed_tokens, budget)
            # Watermark: leave a free block for each running request to grow into next step, so admitting does
            # not simply cause a preemption (an empty engine admits whatever fits: add_request checked it fits).
            spare = self.block_manager.num_free_blocks - self.block_manager.num_blocks_to_append(seq, n)
            if (self.running and spare < len(self.running)) or not self.block_manager.append_slots(seq, n):
                self.block_manager.free(seq)  # give the hits back; it waits for blocks
                seq.num_computed_tokens = seq.num_cached_tokens = 0
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(n)
            budget -= n
        return batch

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.reset_for_recompute()
        self.waiting.appendleft(seq)

    def postprocess(self, batch: ScheduledBatch, next_tokens: list[int | None],
                    n_positions: int) -> tuple[list[Sequence], list[Sequence]]:
        """Advance each row by its fed tokens; append the sampled token where the row reached its last known token;
        retire finished requests (blocks freed). Returns (the requests that got a token, those that finished)."""
        emitted, finished = [], []
        for seq, n, token in zip(batch.seqs, batch.num_new_tokens, next_tokens):
            seq.num_computed_tokens += n
            self.block_manager.cache_computed_blocks(seq)
            if seq.num_uncomputed_tokens:  # a prefill chunk that is not the last: no token yet
                continue
            seq.append_token(token)
            emitted.append(seq)
            seq.finish_reason = seq.stop_reason(n_positions)
            if seq.finish_reason is not None:
                self._finish(seq)
                finished.append(seq)
        return emitted, finished

    def abort(self, seq: Sequence) -> None:
        """Drop a waiting or running request: its blocks are freed (their cached prefixes stay reusable)."""
        if seq in self.running:
            self.running.remove(seq)
            self.block_manager.free(seq)
        else:
            self.waiting.remove(seq)
        seq.finish_reason = "abort"
        seq.status = SequenceStatus.FINISHED

    def _finish(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.FINISHED
        self.running.remove(seq)
        self.block_manager.free(seq)
