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
_KVLIB_ONLY = ("attn_implementation", "n_kv_head")  # fields transformers' GPT2Config does not have


@dataclass
class GPT2Config:
    vocab_size: int = 50257  # tokens in the BPE vocabulary
    n_positions: int = 1024  # longest sequence the learned position embeddings cover
    n_embd: int = 768  # C: width of the residual stream
    n_layer: int = 12  # L: transformer blocks
    n_head: int = 12  # nh: attention heads per block (GPT-2 has as many K/V heads as query heads)
    layer_norm_epsilon: float = 1e-5  # added to the variance in every LayerNorm
    attn_implementation: str = "eager"  # "eager": explicit matmuls (readable, FLOP-countable); "sdpa": fused
    n_kv_head: int | None = None  # heads that store K/V: None = n_head (MHA, GPT-2); 1 = MQA; in between = GQA

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
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if isinstance(self.n_kv_head, bool) or not isinstance(self.n_kv_head, int):
            raise TypeError(f"GPT2Config.n_kv_head must be an int or None, got {type(self.n_kv_head).__name__}")
        if self.n_kv_head <= 0 or self.n_head % self.n_kv_head:
            allowed = [d for d in range(1, self.n_head + 1) if self.n_head % d == 0]
            raise ValueError(
                f"n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head}): each K/V head serves an equal "
                f"group of n_head // n_kv_head query heads; allowed here: {allowed} (None means n_head)"
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
    def n_kv_groups(self) -> int:
        """g: query heads sharing each K/V head (1 for MHA, n_head for MQA)."""
        return self.n_head // self.n_kv_head

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
        names = [f.name for f in fields(cls) if f.name not in _KVLIB_ONLY]
        missing = [n for n in names if not hasattr(hf_config, n)]
        if missing:
            raise TypeError(f"expected a transformers GPT2Config; {type(hf_config).__name__} lacks {missing}")
        return cls(**{n: getattr(hf_config, n) for n in names})

    def to_hf(self):
        """The equivalent `transformers.GPT2Config` (no dropout, so it computes what kvlib computes)."""
        from transformers import GPT2Config as HFGPT2Config

        if self.n_kv_head != self.n_head:
            raise ValueError(
                f"transformers' GPT-2 has no grouped-query attention: this config has n_kv_head={self.n_kv_head} < "
                f"n_head={self.n_head}; only n_kv_head == n_head (or None) converts. kvlib.model.gqa.expand_kv_heads(model) "
                "gives the equivalent multi-head model, which does"
            )
        kwargs = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _KVLIB_ONLY}
        return HFGPT2Config(
            **kwargs,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            activation_function="gelu_new",
            bos_token_id=min(50256, self.vocab_size - 1),
            eos_token_id=min(50256, self.vocab_size - 1),
        )
