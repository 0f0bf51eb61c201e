"""LLMEngine: continuous batching over a paged KV cache, in vLLM's / nano-vllm's vocabulary.

    engine = LLMEngine(model, num_blocks=64, block_size=16)
    rid = engine.add_request(prompt_token_ids, max_new_tokens=32)                  # greedy
    rid = engine.add_request(prompt_token_ids, sampling_params=SamplingParams(max_tokens=32, temperature=0.8,
                                                                              top_p=0.9, seed=0))
    while engine.has_unfinished_requests():
        for out in engine.step():             # schedule -> run one forward -> sample -> postprocess
            print(out.request_id, out.new_token_ids, out.finished)   # every request that got a token this step

`abort_request(rid)` drops a request (its blocks are freed; the others go on untouched). After every step the block
accounting is checked (unless check_invariants=False): free + in use == num_blocks, and every block's reference
count equals the number of block tables holding it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..model.gpt2 import GPT2
from ..cache.paged.block_manager import BlockManager, blocks_needed
from ..cache.paged.sequence import Sequence
from .model_runner import ModelRunner, PaddedModelRunner
from .sampling import SamplingParams
from .scheduler import Scheduler


@dataclass
class RequestOutput:
    """A request's state after a step that gave it a token (vLLM's RequestOutput, cumulative token_ids)."""
    request_id: int
    prompt_token_ids: list[int]
    token_ids: list[int]  # every token generated so far
    num_cached_tokens: int  # prompt tokens served by the prefix cache (at the last admission)
    num_preemptions: int
    new_token_ids: list[int] = field(default_factory=list)  # the tokens this step added (streaming)
    finished: bool = True
    finish_reason: str | None = None  # "stop", "length" or "abort" once finished


@dataclass
class EngineStats:
    """Counters the engine keeps, one entry per step where it says so."""
    num_steps: int = 0
    batch_sizes: list[int] = field(default_factory=list)  # rows per step
    batched_tokens: list[int] = field(default_factory=list)  # real tokens fed per step
    padded_tokens: list[int] = field(default_factory=list)  # positions the forward computes per step (packed rows:
    #                                                          the real tokens; padded rows: rows x longest chunk)
    used_blocks: list[int] = field(default_factory=list)  # blocks in use after each step's schedule
    num_prompt_tokens: int = 0  # prompt tokens of every request added
    num_computed_prompt_tokens: int = 0  # tokens prefilled (prefix hits excluded; recompute after preemption included)
    num_generated_tokens: int = 0
    num_preemptions: int = 0
    num_aborted: int = 0


class LLMEngine:
    """packed_rows=False runs the engine as it was before packed rows (left-padded rows, K/V gathered), to compare;
    attention picks the packed forward's attention ("fast", or a reference: "online_softmax", "split", "gather");
    prepack_weights lays the weights out for this CPU's matrix kernels (a copy, made once per model);
    enforce_eager=False runs every step of decode rows only as one graph compiled by torch.compile (vLLM's default;
    kvlib's is eager, because compiling takes tens of seconds per model: kvlib.serving.compiled_step)."""

    def __init__(self, model: GPT2, num_blocks: int, block_size: int = 16, *, enable_prefix_caching: bool = True,
                 max_num_seqs: int = 64, max_num_batched_tokens: int = 256, check_invariants: bool = True,
                 packed_rows: bool = True, attention: str = "fast", prepack_weights: bool = True,
                 enforce_eager: bool = True, seed: int = 0) -> None:
        if not isinstance(model, GPT2):
            raise TypeError(f"model must be a kvlib.GPT2, got {type(model).__name__}")
        self.model = model
        self.block_manager = BlockManager(num_blocks, block_size, enable_prefix_caching=enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, max_num_seqs=max_num_seqs,
                                   max_num_batched_tokens=max_num_batched_tokens)
        if packed_rows:
            self.model_runner = ModelRunner(model, num_blocks, block_size, attention=attention, prepack=prepack_weights,
                                            enforce_eager=enforce_eager)
        elif not enforce_eager:
            raise ValueError("enforce_eager=False compiles the packed-rows step: it needs packed_rows=True")
        else:
            self.model_runner = PaddedModelRunner(model, num_blocks, block_size)
        self.check_invariants = check_invariants
        self.stats = EngineStats()
        self.generator = torch.Generator().manual_seed(seed)  # requests that sample without a seed of their own
        self._next_id = 0
        self._requests: dict[int, Sequence] = {}
        self._sampling: dict[int, tuple[SamplingParams, torch.Generator | None]] = {}

    def add_request(self, prompt_token_ids: list[int], max_new_tokens: int | None = None, *,
                    eos_token_id: int | None = None, sampling_params: SamplingParams | None = None) -> int:
        """Queue a request; returns its id. Greedy with max_new_tokens, or as sampling_params say. Bad input raises
        ValueError/TypeError and queues nothing (the requests already in the engine are untouched)."""
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
        params = self._sampling_params(max_new_tokens, sampling_params)
        max_new_tokens = params.max_tokens
        if eos_token_id is not None and (isinstance(eos_token_id, bool) or not isinstance(eos_token_id, int)
                                         or not 0 <= eos_token_id < cfg.vocab_size):
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
        seq = Sequence(self._next_id, list(prompt_token_ids), max_new_tokens, eos_token_id,
                       stop_token_ids=params.stop_token_ids)
        generator = None if params.seed is None else torch.Generator().manual_seed(params.seed)
        self.stats.num_prompt_tokens += seq.num_prompt_tokens
        self._next_id += 1
        self._requests[seq.seq_id] = seq
        self._sampling[seq.seq_id] = (params, generator)
        self.scheduler.add(seq)
        return seq.seq_id

    def _sampling_params(self, max_new_tokens, sampling_params) -> SamplingParams:
        if sampling_params is None:
            if max_new_tokens is None:
                raise ValueError("give max_new_tokens (greedy) or sampling_params")
            if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
                raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
            return SamplingParams(max_tokens=max_new_tokens)
        if not isinstance(sampling_params, SamplingParams):
            raise TypeError(f"sampling_params must be a kvlib.serving.SamplingParams, got "
                            f"{type(sampling_params).__name__}")
        if max_new_tokens is not None and max_new_tokens != sampling_params.max_tokens:
            raise ValueError(f"max_new_tokens={max_new_tokens!r} differs from sampling_params.max_tokens="
                             f"{sampling_params.max_tokens}: give one of them")
        sampling_params.check_vocab(self.model.config.vocab_size)
        return sampling_params

    def abort_request(self, request_id: int) -> RequestOutput:
        """Stop a waiting or running request now: its blocks go back to the pool, its tokens so far are returned
        (finish_reason "abort"); every other request goes on as if it had never been there."""
        seq = self._requests.get(request_id) if isinstance(request_id, int) else None
        if seq is None:
            raise ValueError(f"request {request_id!r} is not in the engine (finished, aborted or never added); "
                             f"unfinished: {sorted(self._requests)}")
        self.scheduler.abort(seq)
        self.stats.num_aborted += 1
        if self.check_invariants:
            self.block_manager.check_invariants(self.scheduler.running)
        return self._output(seq, [])

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[RequestOutput]:
        """One engine step: schedule, one forward, sample, postprocess. Returns an output for every request that got
        a token in this step (finished ones included, with finished=True)."""
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
        sampling = [self._sampling[seq.seq_id] for seq in batch.seqs]
        next_tokens = self.model_runner.run(batch, [p for p, _ in sampling],
                                            [g or self.generator for _, g in sampling])
        s.num_steps += 1
        s.batch_sizes.append(len(batch.seqs))
        s.batched_tokens.append(batch.num_batched_tokens)
        s.padded_tokens.append(self.model_runner.computed_positions(batch))
        s.used_blocks.append(self.block_manager.num_used_blocks)
        emitted, _ = self.scheduler.postprocess(batch, next_tokens, self.model.config.n_positions)
        if self.check_invariants:
            self.block_manager.check_invariants(self.scheduler.running)
        return [self._output(seq, seq.token_ids[-1:]) for seq in emitted]

    def _output(self, seq: Sequence, new_token_ids: list[int]) -> RequestOutput:
        finished = seq.is_finished
        if finished:
            del self._requests[seq.seq_id]
            del self._sampling[seq.seq_id]
        return RequestOutput(seq.seq_id, seq.token_ids[:seq.num_prompt_tokens], seq.completion_token_ids,
                             seq.num_cached_tokens, seq.num_preemptions, list(new_token_ids), finished,
                             seq.finish_reason)

    def generate(self, prompts: list[list[int]], max_new_tokens: int | list[int] | None = None, *,
                 eos_token_id: int | None = None,
                 sampling_params: SamplingParams | list[SamplingParams] | None = None) -> list[list[int]]:
        """Run prompts to completion; the generated tokens of each, in prompt order."""
        n = len(prompts)
        counts = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * n
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * n
        if len(counts) != n or len(params) != n:
            raise ValueError(f"{n} prompts need as many max_new_tokens / sampling_params")
        ids = [self.add_request(p, c, eos_token_id=eos_token_id, sampling_params=sp)
               for p, c, sp in zip(prompts, counts, params)]
        done: dict[int, list[int]] = {}
        while self.has_unfinished_requests():
            for out in self.step():
                if out.finished:
                    done[out.request_id] = out.token_ids
        return [done[i] for i in ids]
