"""Continuous batching over a paged KV cache: `LLMEngine` (add_request, step, abort_request), its `Scheduler`
(waiting and running queues, chunked prefill, preemption by recompute), `ModelRunner` (one packed-rows forward per
step, kvlib.serving.packed_forward) and per-request `SamplingParams`.

May import: kvlib.config, kvlib.attention, kvlib.cache and kvlib.model.
"""
from .engine import EngineStats, LLMEngine, RequestOutput
from .model_runner import ModelRunner, PaddedModelRunner
from .sampling import SamplingParams
from .scheduler import ScheduledBatch, Scheduler
