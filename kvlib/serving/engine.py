"""LLMEngine: continuous batching over a paged KV cache, in vLLM's / nano-vllm's vocabulary.

    engine = LLMEngine(model, num_blocks=64, block_size=16)
    rid = engine.add_request(prompt_token_ids, max_new_tokens=32)
    while engine.has_unfinished_requests():
        for out in engine.step():             # schedule -> run one batched forward -> postprocess
            print(out.request_id, out.token_ids)

Greedy decoding. After every step the block accounting is checked: free + in use == num_blocks, and every block's
reference count equals the number of block tables holding it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..model.gpt2 import GPT2
from ..cache.paged.block_manager import BlockManager, blocks_needed
from ..cache.paged.sequence import Sequence
from .model_runner import ModelRunner
from .scheduler import Scheduler


@dataclass
class RequestOutput:
    request_id: int
    prompt_token_ids: list[int]
    token_ids: list[int]  # generated tokens
    num_cached_tokens: int  # prompt tokens served by the prefix cache (at the last admission)
    num_preemptions: int


@dataclass
class EngineStats:
    """Counters the engine keeps, one entry per step where it says so."""
    num_steps: int = 0
    batch_sizes: list[int] = field(default_factory=list)  # rows per step
    batched_tokens: list[int] = field(default_factory=list)  # real tokens fed per step
    padded_tokens: list[int] = field(default_factory=list)  # rows x T_new per step (what the forward computes)
    used_blocks: list[int] = field(default_factory=list)  # blocks in use after each step's schedule
    num_prompt_tokens: int = 0  # prompt tokens of every request added
    num_computed_prompt_tokens: int = 0  # tokens prefilled (prefix hits excluded; recompute after preemption included)
    num_generated_tokens: int = 0
    num_preemptions: int = 0


class LLMEngine:
    def __init__(self, model: GPT2, num_blocks: int, block_size: int = 16, *, enable_prefix_caching: bool = True,
                 max_num_seqs: int = 64, max_num_batched_tokens: int = 256, check_invariants: bool = True) -> None:
        if not isinstance(model, GPT2):
            raise TypeError(f"model must be a kvlib.GPT2, got {type(model).__name__}")
        self.model = model
        self.block_manager = BlockManager(num_blocks, block_size, enable_prefix_caching=enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, max_num_seqs=max_num_seqs,
                                   max_num_batched_tokens=max_num_batched_tokens)
        self.model_runner = ModelRunner(model, num_blocks, block_size)
        self.check_invariants = check_invariants
        self.stats = EngineStats()
        self._next_id = 0
        self._requests: dict[int, Sequence] = {}

    def add_request(self, prompt_token_ids: list[int], max_new_tokens: int, *, eos_token_id: int | None = None) -> int:
        """Queue a request; returns its id. Bad input raises ValueError/TypeError and queues nothing."""
        cfg = self.model.config
        if hasattr(prompt_token_ids, "tolist"):
            prompt_token_ids = prompt_token_ids.tolist()
        if not isinstance(prompt_token_ids, (list, tuple)) or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in prompt_token_ids):
            raise TypeError("prompt_token_ids must be a list of int token ids")
        if not prompt_token_ids:
            raise ValueError("empty prompt: a request needs at least one prompt token")
        if not all(0 <= t < cfg.vocab_size for t in prompt_token_ids):
            raise ValueError(f"token ids must be in [0, {cfg.vocab_size})")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        if eos_token_id is not None and not (isinstance(eos_token_id, int) and 0 <= eos_token_id < cfg.vocab_size):
            raise ValueError(f"eos_token_id must be None or a token id in [0, {cfg.vocab_size}), got {eos_token_id!r}")
        total = len(prompt_token_ids) + max_new_tokens
        if total > cfg.n_positions:
            raise ValueError(f"request of {len(prompt_token_ids)} prompt + {max_new_tokens} new tokens = {total} "
                             f"exceeds n_positions={cfg.n_positions}")
        bm = self.block_manager
        if blocks_needed(total, bm.block_size) > bm.num_blocks:
            raise ValueError(f"the pool is too small for this request: {total} tokens need "
                             f"{blocks_needed(total, bm.block_size)} blocks of {bm.block_size}, the pool has "
                             f"{bm.num_blocks}")
        seq = Sequence(self._next_id, list(prompt_token_ids), max_new_tokens, eos_token_id)
        self.stats.num_prompt_tokens += seq.num_prompt_tokens
        self._next_id += 1
        self._requests[seq.seq_id] = seq
        self.scheduler.add(seq)
        return seq.seq_id

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[RequestOutput]:
        """One engine step: schedule, one batched forward, postprocess. Returns the requests finished in it."""
        batch = self.scheduler.schedule()
        self.stats.num_preemptions += batch.num_preempted
        if not batch.seqs:
            if self.scheduler.running or not self.scheduler.waiting:
                return []
            raise RuntimeError("no request could be scheduled with an empty pool")  # add_request prevents it
        s = self.stats
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            is_decode = seq.num_uncomputed_tokens == 1 and seq.num_completion_tokens > 0
            s.num_computed_prompt_tokens += n - is_decode  # prefill work (recomputed tokens after preemption too)
            s.num_generated_tokens += n == seq.num_uncomputed_tokens  # the row reaches its end: a token comes out
        next_tokens = self.model_runner.run(batch)
        s.num_steps += 1
        s.batch_sizes.append(len(batch.seqs))
        s.batched_tokens.append(batch.num_batched_tokens)
        s.padded_tokens.append(len(batch.seqs) * max(batch.num_new_tokens))
        s.used_blocks.append(self.block_manager.num_used_blocks)
        finished = self.scheduler.postprocess(batch, next_tokens, self.model.config.n_positions)
        if self.check_invariants:
            self.block_manager.check_invariants(self.scheduler.running)
        return [self._output(seq) for seq in finished]

    def _output(self, seq: Sequence) -> RequestOutput:
        del self._requests[seq.seq_id]
        return RequestOutput(seq.seq_id, seq.token_ids[:seq.num_prompt_tokens], seq.completion_token_ids,
                             seq.num_cached_tokens, seq.num_preemptions)

    def generate(self, prompts: list[list[int]], max_new_tokens: int | list[int], *,
                 eos_token_id: int | None = None) -> list[list[int]]:
        """Run prompts to completion; the generated tokens of each, in prompt order."""
        counts = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
        ids = [self.add_request(p, n, eos_token_id=eos_token_id) for p, n in zip(prompts, counts)]
        done: dict[int, list[int]] = {}
        while self.has_unfinished_requests():
            for out in self.step():
                done[out.request_id] = out.token_ids
        return [done[i] for i in ids]
