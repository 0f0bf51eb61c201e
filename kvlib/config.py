"""GPT-2 hyper-parameters, named as in Hugging Face's `transformers.GPT2Config`."""
from __future__ import annotations

from dataclasses import dataclass, fields

# (n_layer, n_head, n_embd) of the four released GPT-2 checkpoints (Radford et al. 2019, Table 2;
# the `config.json` of each on the Hugging Face hub).
GPT2_SIZES: dict[str, tuple[int, int, int]] = {
    "gpt2": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280),
    "gpt2-xl": (48, 25, 1600),
}

ATTN_IMPLEMENTATIONS = ("eager", "sdpa")


@dataclass
class GPT2Config:
    vocab_size: int = 50257  # tokens in the BPE vocabulary
    n_positions: int = 1024  # longest sequence the learned position embeddings cover
    n_embd: int = 768  # C: width of the residual stream
    n_layer: int = 12  # L: transformer blocks
    n_head: int = 12  # nh: attention heads per block (GPT-2 has as many K/V heads as query heads)
    layer_norm_epsilon: float = 1e-5  # added to the variance in every LayerNorm
    attn_implementation: str = "eager"  # "eager": explicit matmuls (readable, FLOP-countable); "sdpa": fused

    def __post_init__(self) -> None:
        for f in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, f)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"GPT2Config.{f} must be an int, got {type(value).__name__} {value!r}")
            if value <= 0:
                raise ValueError(f"GPT2Config.{f} must be positive, got {value}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): "
                "each head gets n_embd // n_head channels"
            )
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {self.attn_implementation!r}"
            )

    @property
    def head_dim(self) -> int:
        """hs: channels per attention head."""
        return self.n_embd // self.n_head

    @property
    def n_kv_head(self) -> int:
        """Heads that store K/V in the cache (equal to n_head: GPT-2 uses plain multi-head attention)."""
        return self.n_head

    @classmethod
    def from_name(cls, name: str, **overrides) -> "GPT2Config":
        """The config of a released checkpoint: "gpt2", "gpt2-medium", "gpt2-large" or "gpt2-xl"."""
        if name not in GPT2_SIZES:
            raise ValueError(f"unknown GPT-2 size {name!r}; known sizes: {', '.join(GPT2_SIZES)}")
        n_layer, n_head, n_embd = GPT2_SIZES[name]
        return cls(n_layer=n_layer, n_head=n_head, n_embd=n_embd, **overrides)

    @classmethod
    def from_hf(cls, hf_config) -> "GPT2Config":
        """Copy the fields kvlib uses from a `transformers.GPT2Config`."""
        names = [f.name for f in fields(cls) if f.name != "attn_implementation"]
        missing = [n for n in names if not hasattr(hf_config, n)]
        if missing:
            raise TypeError(f"expected a transformers GPT2Config; {type(hf_config).__name__} lacks {missing}")
        return cls(**{n: getattr(hf_config, n) for n in names})

    def to_hf(self):
        """The equivalent `transformers.GPT2Config` (no dropout, so it computes what kvlib computes)."""
        from transformers import GPT2Config as HFGPT2Config

        kwargs = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "attn_implementation"}
        return HFGPT2Config(
            **kwargs,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            activation_function="gelu_new",
            bos_token_id=min(50256, self.vocab_size - 1),
            eos_token_id=min(50256, self.vocab_size - 1),
        )
