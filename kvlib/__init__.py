"""kvlib: GPT-2 inference with and without a KV cache, small enough to read and correct against transformers."""
from . import batching, bugs, evaluate, flops, gqa, hf, memory, quantization, shakespeare, trace
from .attention import causal_mask, eager_attention, sdpa_attention, sliding_window_mask
from .batching import left_pad, padding_waste
from .cache import DynamicKVCache, StaticKVCache
from .checkpoint import SHAKESPEARE_DIR
from .config import GPT2_SIZES, GPT2Config
from .evaluate import perplexity
from .flops import FlopCount, forward_flops, generation_flops, measure_flops, step_flops
from .generation import decode_one_token, generate, make_cache, prefill, sample_next_token
from .hf import from_dynamic_cache, to_dynamic_cache, to_static_cache
from .loading import RANDOM_WEIGHTS_ENV, load_gpt2, load_tokenizer, random_gpt2
from .memory import PRESETS, kv_cache_bytes, kv_cache_bytes_for_config, kv_cache_bytes_per_token
from .model import GPT2
from . import paged, serving
from .paged import PagedKVCache
from .serving import LLMEngine
from .quantized_cache import QuantizedKVCache
from .sliding_window import SlidingWindowKVCache

__all__ = [
    "GPT2", "GPT2Config", "GPT2_SIZES", "DynamicKVCache", "StaticKVCache", "causal_mask", "eager_attention",
    "sdpa_attention", "generate", "prefill", "decode_one_token", "sample_next_token", "make_cache", "load_gpt2",
    "load_tokenizer", "random_gpt2", "RANDOM_WEIGHTS_ENV", "kv_cache_bytes", "kv_cache_bytes_per_token",
    "kv_cache_bytes_for_config", "PRESETS", "FlopCount", "forward_flops", "step_flops", "generation_flops",
    "measure_flops", "to_dynamic_cache", "to_static_cache", "from_dynamic_cache", "left_pad", "padding_waste",
    "batching", "bugs", "flops", "hf", "memory", "trace",
    "SHAKESPEARE_DIR", "perplexity", "evaluate", "shakespeare",
    "PagedKVCache", "LLMEngine", "paged", "serving",
    "gqa", "sliding_window_mask", "SlidingWindowKVCache", "QuantizedKVCache", "quantization",
]
