"""GPT-2 with an optional KV cache. Module names match Hugging Face's GPT-2 state-dict keys.

Shapes: B batch, T_new tokens fed in this call, T_total = cached + T_new, C = n_embd channels,
nh heads, hs = C // nh head size, V vocabulary. What a forward is given is checked, and its mask and positions
built, in kvlib.model.forward_inputs.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention import ATTENTION_FUNCTIONS
from ..cache.contiguous import KVCache
from ..config import GPT2Config
from .forward_inputs import check_forward_inputs, check_input_ids, mask_and_positions


class Conv1D(nn.Module):
    """A linear layer storing its weight as (in, out), as GPT-2 checkpoints do (HF calls it Conv1D).

    Keeping that layout makes loading a plain copy, and `addmm(bias, x, W)` with W (in, out) streams the
    weight faster for one-token products on CPU than `F.linear` with (out, in).
    """

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))  # (in, out)
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addmm(self.bias, x.reshape(-1, x.size(-1)), self.weight)  # (B*T, out)
        return out.view(*x.shape[:-1], -1)  # (B, T, out)


def repeat_kv(states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, n_kv_head, T, hs) -> (B, n_kv_head * n_rep, T, hs): query head h reads K/V head h // n_rep."""
    if n_rep == 1:
        return states
    B, n_kv, T, hs = states.shape
    return states[:, :, None].expand(B, n_kv, n_rep, T, hs).reshape(B, n_kv * n_rep, T, hs)  # (B, nh, T, hs)


class GPT2Attention(nn.Module):
    def __init__(self, config: GPT2Config, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        # q, k, v projections in one matrix: (C, C + 2 · n_kv_head · hs), i.e. (C, 3C) for GPT-2's MHA
        kv_width = config.n_kv_head * config.head_dim
        self.c_attn = Conv1D(config.n_embd, config.n_embd + 2 * kv_width)
        self.c_proj = Conv1D(config.n_embd, config.n_embd)

    def forward(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None, past_key_values: KVCache | None
    ) -> torch.Tensor:
        B, T_new, C = x.shape
        nh, n_kv, hs = self.config.n_head, self.config.n_kv_head, self.config.head_dim
        q, k, v = self.c_attn(x).split([C, n_kv * hs, n_kv * hs], dim=-1)  # q | k | v side by side
        q = q.view(B, T_new, nh, hs).transpose(1, 2)  # (B, nh, T_new, hs)
        k = k.view(B, T_new, n_kv, hs).transpose(1, 2)  # (B, n_kv, T_new, hs)
        v = v.view(B, T_new, n_kv, hs).transpose(1, 2)  # (B, n_kv, T_new, hs)
        if past_key_values is not None:
            # The only difference between the cached and the uncached path: K and V of earlier tokens come
            # from the cache instead of being recomputed. Old queries are never needed again.
            k, v = past_key_values.update(k, v, self.layer_idx)  # (B, n_kv, T_total, hs)
        # Grouped-query attention: each K/V head serves nh // n_kv query heads; the cache holds only n_kv heads.
        k, v = repeat_kv(k, nh // n_kv), repeat_kv(v, nh // n_kv)  # (B, nh, T_total, hs)
        attend = ATTENTION_FUNCTIONS[self.config.attn_implementation]
        y = attend(q, k, v, attention_mask)  # (B, nh, T_new, hs)
        y = y.transpose(1, 2).reshape(B, T_new, C)  # (B, T_new, C): heads side by side
        return self.c_proj(y)


class GPT2MLP(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.c_fc = Conv1D(config.n_embd, 4 * config.n_embd)
        self.c_proj = Conv1D(4 * config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # GPT-2's "gelu_new"


class GPT2Block(nn.Module):
    def __init__(self, config: GPT2Config, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = GPT2Attention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = GPT2MLP(config)

    def forward(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None, past_key_values: KVCache | None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attention_mask, past_key_values)
        return x + self.mlp(self.ln_2(x))


class LMHead(nn.Module):
    """Logits x Wᵀ with W (V, C), the token embedding matrix (GPT-2 ties the two): nn.Linear without a bias,
    plus a CPU fast path for inference."""

    def __init__(self, n_embd: int, vocab_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, n_embd))  # (V, C)
        self._weight_t: torch.Tensor | None = None  # (C, V) copy for the CPU fast path
        self._weight_t_key: tuple | None = None
        # False: always F.linear on the tied (V, C) weight, no second copy (V·C more bytes: 154 MB for GPT-2
        # small in fp32, 31% of its weights). kvlib.measure.bench times kvlib both ways.
        self.transposed_copy = True

    @property
    def copy_nbytes(self) -> int:
        """Bytes the CPU fast path's transposed copy holds now (0 before the first eager CPU forward)."""
        return 0 if self._weight_t is None else self._weight_t.numel() * self._weight_t.element_size()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight  # (V, C)
        if not self.transposed_copy:
            return F.linear(x, w)  # (B, T, V)
        if w.device.type != "cpu" or torch.is_grad_enabled():
            return F.linear(x, w)  # (B, T, V)
        # On CPU a one-token product streams a contiguous (C, V) matrix ~1.7x faster than F.linear's (V, C)
        # (measured: 5.7 vs 9.6 ms for GPT-2 small). Keep a transposed copy, rebuilt if the weight changes.
        # torch.compile cannot trace the staleness check (it compares data pointers): a compiled step reads the copy
        # an eager forward made, as kvlib.measure.compiled's eager prefill does before every compiled decode.
        key = None if torch.compiler.is_compiling() else (w.data_ptr(), w._version, w.dtype)
        if key is not None and self._weight_t_key != key:
            self._weight_t = w.detach().t().contiguous()  # (C, V)
            self._weight_t_key = key
        if self._weight_t is None:  # compiled before any eager forward built the copy: right, only slower
            return F.linear(x, w)  # (B, T, V)
        return x @ self._weight_t  # (B, T, V)


class GPT2Transformer(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embeddings, tied to lm_head
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)  # learned position embeddings
        self.h = nn.ModuleList(GPT2Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)


class GPT2(nn.Module):
    """GPT-2 language model. Stateless: per-request state lives in the cache the caller passes in."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        if not isinstance(config, GPT2Config):
            raise TypeError(f"config must be a kvlib.GPT2Config, got {type(config).__name__}")
        self.config = config
        self.transformer = GPT2Transformer(config)
        self.lm_head = LMHead(config.n_embd, config.vocab_size)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        self.weights_source = "initialised in memory"  # load_gpt2 says where the weights came from
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """GPT-2's initialisation: N(0, 0.02), residual projections scaled by 1/√(2L), LayerNorms at identity."""
        std = 0.02
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                p.normal_(0.0, std / (2 * self.config.n_layer) ** 0.5, generator=generator)
            elif name.endswith(("wte.weight", "wpe.weight", "c_attn.weight", "c_fc.weight")):
                p.normal_(0.0, std, generator=generator)
            elif ".ln_" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:  # biases
                p.zero_()

    def forward(
        self,
        input_ids: torch.Tensor,
        past_key_values: KVCache | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        """Logits (B, T_new, V) for input_ids (B, T_new), or (B, logits_to_keep, V) when logits_to_keep > 0.

        past_key_values: a kvlib cache, read and updated in place; positions start at its get_seq_length().
        attention_mask: (B, T_total) with 1 for real tokens and 0 for (left) padding, covering cached and new
            tokens, as in transformers; or a boolean (B or 1, 1 or nh, T_new, T_total) mask used as given.
        position_ids: (B or 1, T_new); derived from the cache length (and the padding mask) when omitted.
        """
        check_input_ids(input_ids, self.config.vocab_size)
        check_forward_inputs(self.config, input_ids.shape, past_key_values, attention_mask, position_ids,
                             logits_to_keep)
        B, T_new = input_ids.shape
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        T_total = past_len + T_new
        if T_total > self.config.n_positions:
            raise ValueError(
                f"{past_len} cached + {T_new} new tokens = {T_total} exceeds n_positions={self.config.n_positions}, "
                "the longest sequence GPT-2's position embeddings cover"
            )
        mask, positions = mask_and_positions(input_ids, past_len, attention_mask, position_ids)
        if hasattr(past_key_values, "check_config"):  # caches built from a config (windowed, quantized)
            past_key_values.check_config(self.config)
        if getattr(past_key_values, "builds_attention_mask", False):
            # A cache that keeps only some keys (SlidingWindowKVCache) knows which, so it builds the mask over them.
            if attention_mask is not None:
                raise ValueError(f"{type(past_key_values).__name__} builds its own banded mask: pass no attention_mask "
                                 "(padded batches are not supported with it)")
            mask = past_key_values.attention_mask(T_new, device=input_ids.device)  # (T_new, kept + T_new)
        x = self.transformer.wte(input_ids) + self.transformer.wpe(positions)  # (B, T_new, C)
        for block in self.transformer.h:
            x = block(x, mask, past_key_values)  # (B, T_new, C)
        x = self.transformer.ln_f(x)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]  # (B, logits_to_keep, C): generation needs only the last position
        return self.lm_head(x)  # (B, T_new or logits_to_keep, V)

    @classmethod
    def from_hf(cls, hf_model) -> "GPT2":
        """A kvlib GPT2 with the weights of a `transformers.GPT2LMHeadModel` (copied: the two stay independent)."""
        if not hasattr(hf_model, "state_dict") or not hasattr(hf_model, "config"):
            raise TypeError(f"expected a transformers GPT2LMHeadModel, got {type(hf_model).__name__}")
        config = GPT2Config.from_hf(hf_model.config)
        hf_act = getattr(hf_model.config, "activation_function", "gelu_new")
        if hf_act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"kvlib's GPT-2 uses the tanh GELU; this model uses {hf_act!r}")
        model = cls(config).to(dtype=hf_model.dtype, device=hf_model.device)
        model.load_hf_state_dict(hf_model.state_dict())
        model.weights_source = getattr(hf_model.config, "name_or_path", "") or "a transformers GPT2LMHeadModel"
        return model

    @torch.no_grad()
    def load_hf_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy a Hugging Face GPT-2 state dict in, key for key (no transposes: both store Conv1D as (in, out))."""
        own = self.state_dict()
        state_dict = {k: v for k, v in state_dict.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
        state_dict.setdefault("lm_head.weight", state_dict.get("transformer.wte.weight"))
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        if missing or unexpected:
            raise ValueError(f"not a GPT-2 state dict for this config: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name, tensor in own.items():
            if tensor.shape != state_dict[name].shape:
                raise ValueError(f"{name}: checkpoint has {tuple(state_dict[name].shape)}, model expects {tuple(tensor.shape)}")
            tensor.copy_(state_dict[name])

    def to_hf(self):
        """A `transformers.GPT2LMHeadModel` with this model's weights (for side-by-side comparisons)."""
        from transformers import GPT2LMHeadModel

        hf = GPT2LMHeadModel(self.config.to_hf()).to(dtype=self.lm_head.weight.dtype, device=self.lm_head.weight.device)
        hf.load_state_dict(self.state_dict(), strict=False)
        return hf.eval()
