"""The engines the serving bench drives through engine_driver.serve(), each behind add / step / has_unfinished.

- `KvlibEngine`: kvlib's LLMEngine (continuous batching over paged blocks), through its public API only.
- `StaticBatcher`: static batching, as a server built on `generate` does it: waiting requests are grouped in arrival
  order into one batch whose contiguous reservation fits the KV budget, prefilled together (left padding), decoded
  until the batch's longest request is done; only then is the next batch formed. Two reservations, both named:
  "exact" reserves prompt + max_new_tokens per row (what `generate` with a static cache allocates: the batch's
  longest prompt plus its largest max_new_tokens, for every row) and "max" reserves the model's n_positions per row
  (Orca (Max) in the vLLM paper).
- `hf_continuous_batching`: transformers' own continuous batching (offline only: it runs its own loop).
Shapes: B rows of a static batch, T_prompt its longest prompt, V vocabulary.
"""
from __future__ import annotations

import logging
import time
from collections import deque

import torch

from ...model.batching import left_pad
from ...model.generation import decode_one_token, make_cache, prefill
from ...model.gpt2 import GPT2
from ...serving import LLMEngine, RequestOutput

STREAMS = "finished" in getattr(RequestOutput, "__dataclass_fields__", {})  # step() returns every running request

RESERVATIONS = ("exact", "max")


class KvlibEngine:
    """kvlib's LLMEngine behind serve(). Tokens so far per request: from the step's outputs (every request that got
    a token, where the engine streams; where it returns only finished requests, the running ones' `Sequence`s are
    read as well, read only)."""

    def __init__(self, model: GPT2, num_blocks: int, block_size: int, **knobs) -> None:
        self.engine = LLMEngine(model, num_blocks, block_size, check_invariants=False, **knobs)
        self.index: dict[int, int] = {}  # the engine's request id -> the bench's request index

    def add(self, i: int, prompt: list[int], n: int) -> None:
        self.index[self.engine.add_request(prompt, n)] = i

    def step(self) -> dict[int, list[int]]:
        outputs = self.engine.step()
        got = {self.index[o.request_id]: list(o.token_ids) for o in outputs}
        if not STREAMS:
            for seq in self.engine.scheduler.running:
                got.setdefault(self.index[seq.seq_id], seq.completion_token_ids)
        return got

    def has_unfinished(self) -> bool:
        return self.engine.has_unfinished_requests()

    def counters(self) -> dict:
        st = self.engine.stats
        return dict(steps=st.num_steps, rows=list(st.batch_sizes), batched_tokens=list(st.batched_tokens),
                    padded_tokens=list(st.padded_tokens), used_blocks=list(st.used_blocks),
                    preemptions=st.num_preemptions, computed_prompt_tokens=st.num_computed_prompt_tokens)


class StaticBatcher:
    """Static batching within a KV budget of `budget_tokens` slots, reservation "exact" or "max" (see above)."""

    def __init__(self, model: GPT2, budget_tokens: int, reservation: str = "exact") -> None:
        if reservation not in RESERVATIONS:
            raise ValueError(f"reservation must be one of {RESERVATIONS}, got {reservation!r}")
        self.model, self.budget, self.reservation = model, budget_tokens, reservation
        self.waiting: deque = deque()
        self.batch = None  # (bench indices, output lengths, tokens so far per row, cache, mask, last tokens)
        self.rows: list[int] = []  # rows computed per step (finished rows included: they wait for the longest)
        self.useful: list[int] = []  # rows that produced a token the request asked for

    def row_reservation(self, group: list[tuple[int, list[int], int]]) -> int:
        if self.reservation == "max":
            return self.model.config.n_positions
        return max(len(p) for _, p, _ in group) + max(n for _, _, n in group)

    def add(self, i: int, prompt: list[int], n: int) -> None:
        if self.row_reservation([(i, prompt, n)]) > self.budget:
            raise ValueError(f"request {i} needs {self.row_reservation([(i, prompt, n)])} slots, the KV budget is "
                             f"{self.budget}")
        self.waiting.append((i, prompt, n))

    def has_unfinished(self) -> bool:
        return bool(self.waiting) or self.batch is not None

    def fits(self, group: list) -> bool:
        """The group's reservation fits the budget, and its rows fit the context once left-padded."""
        longest = max(len(p) for _, p, _ in group) + max(n for _, _, n in group)
        return len(group) * self.row_reservation(group) <= self.budget and longest <= self.model.config.n_positions

    def _form_batch(self) -> list:
        group = [self.waiting.popleft()]
        while self.waiting and self.fits(group + [self.waiting[0]]):
            group.append(self.waiting.popleft())
        return group

    @torch.inference_mode()
    def step(self) -> dict[int, list[int]]:
        if self.batch is None:  # prefill a new batch
            group = self._form_batch()
            ids, mask = left_pad([p for _, p, _ in group], pad_token_id=0)  # (B, T_prompt)
            cache = make_cache(self.model, "static", len(group), self.row_reservation(group))
            token = prefill(self.model, ids, cache, mask).argmax(-1)  # (B,)
            self.batch = [[i for i, _, _ in group], [n for _, _, n in group], [[] for _ in group], cache, mask]
        else:  # one decode step for every row, finished or not
            index, wanted, done, cache, mask = self.batch
            mask = torch.cat([mask, mask.new_ones(len(index), 1)], dim=1)
            self.batch[4] = mask
            last = torch.tensor([row[-1] for row in done])
            token = decode_one_token(self.model, last, cache, mask).argmax(-1)  # (B,)
        index, wanted, done = self.batch[:3]
        got = {}
        for r, t in enumerate(token.tolist()):
            if len(done[r]) < wanted[r]:
                done[r].append(t)
                got[index[r]] = list(done[r])
            else:
                done[r].append(t)  # a finished row still computes: its place is reserved until the batch ends
        self.rows.append(len(index))
        self.useful.append(len(got))
        if all(len(d) >= w for d, w in zip(done, wanted)):
            self.batch = None
        return got

    def counters(self) -> dict:
        return dict(steps=len(self.rows), rows=list(self.rows), useful_rows=list(self.useful))


def hf_continuous_batching(model: GPT2, requests, num_blocks: int, block_size: int,
                           max_batch_tokens: int) -> dict:
    """transformers' continuous batching (the manager behind `generate_batch`) over the same KV budget (its default
    sizes the cache from free memory: gigabytes on a CPU), all requests submitted at once, warmed up first."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    logging.getLogger("ContinuousBatchingLogger").setLevel(logging.ERROR)
    hf = model.to_hf()
    gc = GenerationConfig(max_new_tokens=max(o for _, o in requests), do_sample=False, eos_token_id=None,
                          pad_token_id=0)
    cb = ContinuousBatchingConfig(page_size=block_size, num_blocks=num_blocks, max_batch_tokens=max_batch_tokens)
    hf.generate_batch([requests[0][0][:4]], generation_config=gc, continuous_batching_config=cb, max_new_tokens=2,
                      progress_bar=False)  # warm-up
    with hf.continuous_batching_context_manager(generation_config=gc, block=True, warmup=False,
                                                continuous_batching_config=cb) as manager:
        start = time.perf_counter()
        ids = [manager.add_request(p, request_id=f"r{i}", max_new_tokens=o) for i, (p, o) in enumerate(requests)]
        done = {}
        while len(done) < len(ids):
            result = manager.get_result(timeout=600)
            if result is None:
                raise RuntimeError("transformers' continuous batching returned no result")
            if result.is_finished():
                done[result.request_id] = list(result.generated_tokens)
        elapsed = time.perf_counter() - start
    return dict(elapsed_s=elapsed, tokens=[done[i] for i in ids])
