"""One request's bookkeeping: its token ids, its block table and its status. No tensors (nano-vllm's `Sequence`).

The K/V of the first `num_computed_tokens` tokens are in the block pool, in the blocks listed by `block_table`
(token i lives in block `block_table[i // block_size]`, slot `i % block_size` of it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class SequenceStatus(Enum):
    WAITING = "waiting"  # queued: no blocks (never admitted, or preempted and requeued)
    RUNNING = "running"  # holds blocks; prefill chunks or decode tokens are scheduled for it each step
    FINISHED = "finished"  # done: its blocks are freed


@dataclass(eq=False)
class Sequence:
    seq_id: int
    token_ids: list[int]  # prompt, then every generated token
    max_new_tokens: int
    eos_token_id: int | None = None
    num_prompt_tokens: int = -1  # set from token_ids when -1
    stop_token_ids: tuple[int, ...] = ()  # more tokens that end the request (SamplingParams.stop_token_ids)
    finish_reason: str | None = None  # once finished: "stop" (EOS or a stop token), "length" or "abort"
    block_table: list[int] = field(default_factory=list)  # block ids, in token order
    num_computed_tokens: int = 0  # tokens whose K/V are in the pool (from the prefix cache or computed here)
    num_cached_tokens: int = 0  # of those, tokens taken from the prefix cache at the last admission
    status: SequenceStatus = SequenceStatus.WAITING
    num_preemptions: int = 0

    def __post_init__(self) -> None:
        if self.num_prompt_tokens == -1:
            self.num_prompt_tokens = len(self.token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_completion_tokens(self) -> int:
        return self.num_tokens - self.num_prompt_tokens

    @property
    def completion_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_uncomputed_tokens(self) -> int:
        """Tokens still to feed through the model: the rest of the prompt, or the newest generated token."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    def stop_reason(self, n_positions: int) -> str | None:
        """Why the request is finished after its last appended token: "stop" (EOS or a stop token), "length"
        (max_new_tokens reached, or the position embeddings full), None if it goes on."""
        if self.num_completion_tokens and (self.token_ids[-1] == self.eos_token_id
                                           or self.token_ids[-1] in self.stop_token_ids):
            return "stop"
        if self.num_completion_tokens >= self.max_new_tokens or self.num_tokens >= n_positions:
            return "length"
        return None

    def should_stop(self, n_positions: int) -> bool:
        return self.stop_reason(n_positions) is not None

    def reset_for_recompute(self) -> None:
        """Preemption by recompute: forget every block; the tokens (generated ones included) are kept."""
        self.block_table = []
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0
        self.status = SequenceStatus.WAITING
        self.num_preemptions += 1

    def __repr__(self) -> str:
        return (f"Sequence(id={self.seq_id}, {self.status.value}, tokens={self.num_tokens} "
                f"(prompt {self.num_prompt_tokens}), computed={self.num_computed_tokens}, blocks={self.block_table})")
