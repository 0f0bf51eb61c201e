"""How many bytes a KV cache takes, by formula, for kvlib configs and published models' shapes.

For every token, every layer (L) stores one key and one value vector per K/V head (n_kv_head), each head_dim
(hs) numbers wide:

    kv_cache_bytes = 2 · B · L · n_kv_head · hs · T · bytes_per_element

with B batch and T cached tokens. Multi-head attention has n_kv_head = n_head (GPT-2); grouped-query attention
shares each K/V head among n_head // n_kv_head query heads (Llama-3); multi-query attention has n_kv_head = 1.
Unit traps: 1 GiB = 2**30 B, 1 GB = 10**9 B, 1 TiB = 2**40 B. The bytes really allocated, to check the formula
against, are measured in kvlib.measure.allocation (its functions are importable from here too).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# Measuring what is really allocated lives in allocation; re-exported here, where notebook 04 and the tests use it.
from .allocation import allocated_bytes, cache_storage_bytes, storage_bytes  # noqa: F401
from ..config import GPT2_SIZES, GPT2Config

KiB, MiB, GiB, TiB = 2**10, 2**20, 2**30, 2**40
kB, MB, GB, TB = 10**3, 10**6, 10**9, 10**12

# Names a reader may type for a cache's element type. "int8" prices the stored values only: real int8 caches
# (e.g. transformers' QuantizedCache) also keep scales and zero points per group of values.
DTYPE_NAMES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp8": torch.float8_e4m3fn, "float8": torch.float8_e4m3fn,
    "int8": torch.int8,
}


def dtype_bytes(dtype: torch.dtype | str) -> int:
    """Bytes per element of a cache dtype: a floating-point or 8-bit integer torch.dtype, or a name in DTYPE_NAMES."""
    if isinstance(dtype, str):
        if dtype.lower() not in DTYPE_NAMES:
            raise ValueError(f"unknown dtype name {dtype!r}; known names: {', '.join(DTYPE_NAMES)}")
        dtype = DTYPE_NAMES[dtype.lower()]
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype or one of {', '.join(DTYPE_NAMES)}; got {type(dtype).__name__}")
    if not (dtype.is_floating_point or dtype in (torch.int8, torch.uint8)):
        raise ValueError(f"a KV cache holds floating-point or 8-bit integer values; got {dtype}")
    return dtype.itemsize


def _check_count(name: str, value: object) -> int:
    # bool is an int subclass, and 2.0 "looks" whole: both are caller mistakes worth naming.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 1, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value}")
    return value


def kv_cache_bytes_per_token(
    *, n_layer: int, n_kv_head: int, head_dim: int, dtype: torch.dtype | str = torch.float16
) -> int:
    """Bytes one token adds to the cache of one sequence: 2 (K and V) · L · n_kv_head · hs · bytes per element."""
    _check_count("n_layer", n_layer)
    _check_count("n_kv_head", n_kv_head)
    _check_count("head_dim", head_dim)
    return 2 * n_layer * n_kv_head * head_dim * dtype_bytes(dtype)


def kv_cache_bytes(
    *,
    n_layer: int,
    n_kv_head: int,
    head_dim: int,
    seq_len: int,
    batch_size: int = 1,
    dtype: torch.dtype | str = torch.float16,
    sliding_window: int | None = None,
) -> int:
    """Bytes of K and V for batch_size sequences of seq_len tokens.

    sliding_window: when set, each layer keeps only the last sliding_window tokens (Mistral-style), so the cache
    stops growing at min(seq_len, sliding_window) tokens.
    """
    _check_count("seq_len", seq_len)
    _check_count("batch_size", batch_size)
    cached = seq_len if sliding_window is None else min(seq_len, _check_count("sliding_window", sliding_window))
    per_token = kv_cache_bytes_per_token(n_layer=n_layer, n_kv_head=n_kv_head, head_dim=head_dim, dtype=dtype)
    return batch_size * cached * per_token


@dataclass(frozen=True)
class ModelPreset:
    """The shapes that set a model's KV-cache size, and its parameter count (None when unknown)."""

    name: str
    n_layer: int  # L: transformer blocks
    n_head: int  # query heads
    n_kv_head: int  # heads that store K/V (= n_head for MHA, 1 for MQA, in between for GQA)
    head_dim: int  # hs: channels per head
    n_params: int | None = None  # weights, for weight bytes and "cache vs weights"
    source: str = ""

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_kv_head", "head_dim"):
            _check_count(f"{self.name}: {name}", getattr(self, name))
        if self.n_params is not None:
            _check_count(f"{self.name}: n_params", self.n_params)
        if self.n_head % self.n_kv_head:
            allowed = [d for d in range(1, self.n_head + 1) if self.n_head % d == 0]
            raise ValueError(
                f"{self.name}: n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head}): each K/V head serves "
                f"an equal group of query heads; allowed here: {allowed}"
            )

    @property
    def hidden_size(self) -> int:
        return self.n_head * self.head_dim

    @classmethod
    def from_hidden(cls, name: str, *, n_layer: int, hidden_size: int, n_head: int, n_kv_head: int | None = None,
                    n_params: int | None = None, source: str = "") -> "ModelPreset":
        """A preset from (layers, hidden size, heads), as papers state them; head_dim = hidden_size // n_head."""
        _check_count("hidden_size", hidden_size)
        _check_count("n_head", n_head)
        if hidden_size % n_head:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by n_head ({n_head}): "
                             "every head gets hidden_size // n_head channels")
        return cls(name, n_layer, n_head, n_head if n_kv_head is None else n_kv_head, hidden_size // n_head,
                   n_params, source)

    @classmethod
    def from_config(cls, config: GPT2Config, name: str = "kvlib GPT2Config", source: str = "") -> "ModelPreset":
        """The preset of a kvlib GPT2Config, its parameters counted by gpt2_parameter_count."""
        return cls(name, config.n_layer, config.n_head, config.n_kv_head, config.head_dim,
                   gpt2_parameter_count(config), source or "kvlib.GPT2Config")


def gpt2_parameter_count(config: GPT2Config) -> int:
    """Parameters of a GPT-2 with tied embeddings, counted from its config (124,439,808 for GPT-2 small)."""
    C, L = config.n_embd, config.n_layer
    # Per block: ln_1 and ln_2 (2C each), c_attn (C·3C + 3C), attn c_proj (C·C + C), c_fc (C·4C + 4C),
    # mlp c_proj (4C·C + C): 12C² + 13C. lm_head shares wte's matrix, so it adds nothing.
    # With n_kv_head < n_head (GQA/MQA) c_attn is C·(C + 2·kv) + (C + 2·kv), kv = n_kv_head·hs, instead of 3C wide.
    kv_saved = 2 * (C - config.n_kv_head * config.head_dim)  # c_attn columns GQA drops
    return config.vocab_size * C + config.n_positions * C + L * (12 * C * C + 13 * C - kv_saved * (C + 1)) + 2 * C


PRESETS: dict[str, ModelPreset] = {
    # GPT-2: Radford et al. 2019, Table 2, and each checkpoint's config.json; counts computed from the config.
    **{name: ModelPreset.from_config(GPT2Config.from_name(name), name, "Radford et al. 2019; config.json")
       for name in GPT2_SIZES},
    # The classic "7B" shape (LLaMA-7B / Llama-2-7B): 32 layers, hidden 4096, 32 heads, FFN 11008, vocab 32000,
    # untied head (Touvron et al. 2023, Table 2; meta-llama/Llama-2-7b-hf config.json). 2·32000·4096 + 32·(4·4096²
    # + 3·4096·11008 + 2·4096) + 4096 = 6,738,415,616.
    "llama-2-7b": ModelPreset.from_hidden("llama-2-7b", n_layer=32, hidden_size=4096, n_head=32, n_params=6_738_415_616,
                                          source="Touvron et al. 2023; Llama-2-7b-hf config.json"),
    # Llama-3-8B, GQA: 32 layers, 32 query heads, 8 K/V heads, head_dim 128, FFN 14336, vocab 128256, untied
    # (meta-llama/Meta-Llama-3-8B config.json). 2·128256·4096 + 32·(2·4096² + 2·4096·1024 + 3·4096·14336
    # + 2·4096) + 4096 = 8,030,261,248.
    "llama-3-8b": ModelPreset("llama-3-8b", 32, 32, 8, 128, 8_030_261_248,
                              "Meta-Llama-3-8B config.json"),
    # OPT-13B: 40 layers, hidden 5120, 40 heads, FFN 20480, vocab 50272, 2050 learned positions, biases, tied
    # head (Zhang et al. 2022, Table 1; facebook/opt-13b config.json); the vLLM paper's 800 KB-per-token model.
    # 50272·5120 + 2050·5120 + 40·(4·(5120² + 5120) + 2·5120·20480 + 20480 + 5120 + 4·5120) + 2·5120
    # = 12,853,473,280.
    "opt-13b": ModelPreset.from_hidden("opt-13b", n_layer=40, hidden_size=5120, n_head=40, n_params=12_853_473_280,
                                       source="Zhang et al. 2022; facebook/opt-13b config.json"),
}

ModelLike = ModelPreset | GPT2Config | str


def resolve_model(model: ModelLike) -> ModelPreset:
    """A ModelPreset from a preset, a kvlib GPT2Config, or a preset name (a key of PRESETS)."""
    if isinstance(model, ModelPreset):
        return model
    if isinstance(model, GPT2Config):
        return ModelPreset.from_config(model)
    if isinstance(model, str):
        if model not in PRESETS:
            raise ValueError(f"unknown preset {model!r}; known presets: {', '.join(PRESETS)}")
        return PRESETS[model]
    raise TypeError(f"model must be a ModelPreset, a kvlib.GPT2Config or a preset name; got {type(model).__name__}")


def kv_cache_bytes_for_config(
    config: ModelLike, seq_len: int, batch_size: int = 1, dtype: torch.dtype | str = torch.float16,
    sliding_window: int | None = None,
) -> int:
    """kv_cache_bytes for the shapes of a GPT2Config, a ModelPreset or a preset name."""
    m = resolve_model(config)
    return kv_cache_bytes(n_layer=m.n_layer, n_kv_head=m.n_kv_head, head_dim=m.head_dim, seq_len=seq_len,
                          batch_size=batch_size, dtype=dtype, sliding_window=sliding_window)


def bytes_per_token_for_config(config: ModelLike, dtype: torch.dtype | str = torch.float16) -> int:
    """kv_cache_bytes_per_token for the shapes of a GPT2Config, a ModelPreset or a preset name."""
    m = resolve_model(config)
    return kv_cache_bytes_per_token(n_layer=m.n_layer, n_kv_head=m.n_kv_head, head_dim=m.head_dim, dtype=dtype)


def weight_bytes(model: ModelLike, dtype: torch.dtype | str = torch.float16) -> int:
    """Bytes of the model's parameters stored in dtype."""
    m = resolve_model(model)
    if m.n_params is None:
        raise ValueError(f"{m.name} has no parameter count (n_params=None); give one to price its weights")
    return m.n_params * dtype_bytes(dtype)


def max_cached_tokens(memory_bytes: int, model: ModelLike, dtype: torch.dtype | str = torch.float16,
                      weight_dtype: torch.dtype | str | None = None) -> int:
    """Tokens (summed over the batch) whose K/V fit in memory_bytes after the weights; 0 if the weights don't fit.

    An upper bound: activations, the CUDA context and allocator slack also need room.
    """
    _check_count("memory_bytes", memory_bytes)
    left = memory_bytes - weight_bytes(model, dtype if weight_dtype is None else weight_dtype)
    return max(left, 0) // bytes_per_token_for_config(model, dtype)


def cache_outgrows_weights_at(model: ModelLike, dtype: torch.dtype | str = torch.float16,
                              weight_dtype: torch.dtype | str | None = None) -> int:
    """The smallest batch × seq_len (tokens cached in total) whose K/V take more bytes than the weights."""
    weights = weight_bytes(model, dtype if weight_dtype is None else weight_dtype)
    return weights // bytes_per_token_for_config(model, dtype) + 1


def format_bytes(n: int) -> str:
    """'34,359,738,368 B = 32.00 GiB = 34.36 GB': exact bytes, then the largest binary and decimal units below n."""
    binary = next(((u, s) for u, s in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)) if n >= s), None)
    decimal = next(((u, s) for u, s in (("TB", TB), ("GB", GB), ("MB", MB), ("kB", kB)) if n >= s), None)
    if binary is None or decimal is None:
        return f"{n:,} B"
    return f"{n:,} B = {n / binary[1]:,.2f} {binary[0]} = {n / decimal[1]:,.2f} {decimal[0]}"
