"""Continuous batching over a paged KV cache: `LLMEngine` (add_request, step), its `Scheduler` (waiting and
running queues, chunked prefill, preemption by recompute) and `ModelRunner` (one batched forward per step).

May import: kvlib.config, kvlib.attention, kvlib.cache and kvlib.model.
"""
from .engine import EngineStats, LLMEngine, RequestOutput
from .model_runner import ModelRunner
from .scheduler import ScheduledBatch, Scheduler
