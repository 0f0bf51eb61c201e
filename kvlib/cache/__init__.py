"""The cache kinds: one request's (or one batch's) keys and values, per layer, in transformers' layout.

- `contiguous`: DynamicKVCache (grows by concatenation) and StaticKVCache (preallocated, written in place);
- `quantized` (with `quantization`, the int8/int4 codes): QuantizedKVCache, KIVI-style with a residual window;
- `sliding_window`: SlidingWindowKVCache, a ring buffer of the last W tokens plus attention sinks;
- `paged`: PagedKVCache over a pool of fixed-size blocks, with its BlockManager and Sequence bookkeeping.

May import: kvlib.config and kvlib.attention only.
"""
from .contiguous import DynamicKVCache, KVCache, StaticKVCache
from .latent import LatentKVCache
from .paged import PagedKVCache
from .quantized import QuantizedKVCache
from .sliding_window import SlidingWindowKVCache
