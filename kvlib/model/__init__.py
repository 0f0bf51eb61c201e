"""GPT-2 and generation: the model (`gpt2`), the checks on its inputs (`forward_inputs`), greedy and sampled
decoding with and without a cache (`generation`), left-padded batches (`batching`), loading real or seeded weights
and the tokenizer (`loading`, `weights`), cache conversion to and from transformers (`hf`), and the conversion of
a trained checkpoint to fewer K/V heads (`gqa`).

May import: kvlib.config, kvlib.attention and kvlib.cache.
"""
from .batching import left_pad
from .generation import decode_one_token, generate, make_cache, prefill, sample_next_token
from .gpt2 import GPT2
from .hf import from_dynamic_cache, to_dynamic_cache, to_static_cache
from .loading import RANDOM_WEIGHTS_ENV, load_gpt2, load_tokenizer, random_gpt2
from .weights import SHAKESPEARE_DIR
