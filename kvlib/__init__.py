"""kvlib: GPT-2 inference with and without a KV cache, small enough to read and correct against transformers.

The package, by concept (each subpackage's docstring says what lives there and what it may import):

    kvlib.config, kvlib.attention   GPT2Config; causal masks and the attention functions
    kvlib.cache                     the cache kinds: dynamic, static, quantized, sliding window, paged
    kvlib.model                     GPT-2, generation, loading, transformers interop, head conversions
    kvlib.serving                   continuous batching over the paged cache (LLMEngine)
    ---- the library above imports nothing below; everything below may import it ----
    kvlib.shakespeare               the small Shakespeare GPT-2: corpus, training, its checkpoint, perplexity
    kvlib.measure                   instruments: FLOPs, bytes, timing, the benchmarks, the quality sweep
    kvlib.teaching                  the notebooks' props: classic bugs, traces, step grids, widgets, figures

Below the line, each may import the ones above it (teaching may import measure; measure may import shakespeare),
never the other way. This module re-exports the library's short public API.
"""
from .attention import causal_mask, eager_attention, sdpa_attention, sliding_window_mask
from .cache import DynamicKVCache, PagedKVCache, QuantizedKVCache, SlidingWindowKVCache, StaticKVCache
from .config import GPT2_SIZES, GPT2Config
from .model import (GPT2, RANDOM_WEIGHTS_ENV, SHAKESPEARE_DIR, decode_one_token, from_dynamic_cache, generate,
                    left_pad, load_gpt2, load_tokenizer, make_cache, prefill, random_gpt2, sample_next_token,
                    to_dynamic_cache, to_static_cache)
from .serving import LLMEngine

__all__ = [
    "GPT2Config", "GPT2_SIZES", "causal_mask", "sliding_window_mask", "eager_attention", "sdpa_attention",
    "DynamicKVCache", "StaticKVCache", "QuantizedKVCache", "SlidingWindowKVCache", "PagedKVCache",
    "GPT2", "generate", "prefill", "decode_one_token", "sample_next_token", "make_cache", "left_pad",
    "load_gpt2", "load_tokenizer", "random_gpt2", "RANDOM_WEIGHTS_ENV", "SHAKESPEARE_DIR",
    "to_dynamic_cache", "to_static_cache", "from_dynamic_cache", "LLMEngine",
]
