"""kvlib: GPT-2 inference with and without a KV cache, small enough to read and correct against transformers."""
from .attention import causal_mask, eager_attention, sdpa_attention
from .cache import DynamicKVCache, StaticKVCache
from .config import GPT2_SIZES, GPT2Config
from .generation import decode_one_token, generate, make_cache, prefill, sample_next_token
from .loading import RANDOM_WEIGHTS_ENV, load_gpt2, load_tokenizer, random_gpt2
from .model import GPT2

__all__ = [
    "GPT2", "GPT2Config", "GPT2_SIZES", "DynamicKVCache", "StaticKVCache", "causal_mask", "eager_attention",
    "sdpa_attention", "generate", "prefill", "decode_one_token", "sample_next_token", "make_cache", "load_gpt2",
    "load_tokenizer", "random_gpt2", "RANDOM_WEIGHTS_ENV",
]
