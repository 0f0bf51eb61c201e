"""Multi-head latent attention (MLA, DeepSeek-V2) converted from a trained multi-head GPT-2, and its absorbed decode.

GPT-2's keys and values are linear in the normalised hidden state x (B, T, C): K = x W_k + b_k, V = x W_v + b_v, with
[W_k | W_v] a (C, 2C) matrix. Its SVD, [W_k | W_v] = U S Vᵀ, factors it through C numbers per token; keeping the top
r = kv_lora_rank singular directions gives a down-projection W_DKV = U_r (C, r) and an up-projection W_UKV = S_r V_rᵀ
(r, 2C). The layer caches the latent c = x W_DKV (r numbers per token) and rebuilds K = c W_UK, V = c W_UV.
GPT-2 adds positions at the input (no rotary embedding), so nothing else changes; at r = C the conversion is exact.

The biases need no latent: the key bias adds q·b_k to every score of a query, the same for every key, and softmax
ignores a constant; the value bias comes out of attention unchanged, because a query's weights sum to 1, so it moves
into c_proj's bias (b_o + b_v W_o).

Absorbed decode (DeepSeek-V2 §2.1.2): q·k_j = q · (c_j W_UK) = (q W_UKᵀ) · c_j, so the query is mapped into the
latent space once and scores are taken against the cached latents; likewise Σ_j a_j (c_j W_UV) W_O = (Σ_j a_j c_j)
(W_UV W_O). Keys and values are never built: decode is multi-query attention over one r-wide head.

Shapes: B batch, T_new tokens fed this call, T_total = cached + T_new, C channels, nh heads, hs head size,
r = kv_lora_rank.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..attention import ATTENTION_FUNCTIONS
from ..cache.latent import LatentKVCache
from .gpt2 import GPT2, Conv1D


class LatentAttention(nn.Module):
    """A GPT-2 attention layer that caches a rank-r latent instead of K and V (no rotary part: GPT-2 has none).

    absorb: None (default) takes the absorbed path for one-token steps and rebuilds K/V otherwise (vLLM's split:
    decode absorbed, prefill as ordinary multi-head attention); True or False forces one path.
    """

    def __init__(self, n_embd: int, n_head: int, kv_lora_rank: int, layer_idx: int,
                 attn_implementation: str = "eager") -> None:
        super().__init__()
        self.n_embd, self.n_head, self.kv_lora_rank, self.layer_idx = n_embd, n_head, kv_lora_rank, layer_idx
        self.attn_implementation = attn_implementation
        self.q_proj = Conv1D(n_embd, n_embd)  # (C, C): the query columns of GPT-2's c_attn
        self.kv_a_proj = nn.Parameter(torch.empty(n_embd, kv_lora_rank))  # W_DKV (C, r): x -> latent, no bias
        self.kv_b_proj = nn.Parameter(torch.empty(kv_lora_rank, 2 * n_embd))  # W_UKV (r, 2C): latent -> k | v
        self.c_proj = Conv1D(n_embd, n_embd)  # W_O (C, C), bias b_o + b_v W_O
        self.absorb: bool | None = None

    def absorbed_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_UK per head (nh, hs, r), to map a query into the latent space, and W_UV W_O per head (nh, r, C)."""
        r, nh, C = self.kv_lora_rank, self.n_head, self.n_embd
        hs = C // nh
        w_uk, w_uv = self.kv_b_proj.split(C, dim=1)  # 2 × (r, C): head h in columns h·hs .. (h+1)·hs
        w_uk = w_uk.view(r, nh, hs).permute(1, 2, 0)  # (nh, hs, r)
        w_uv_o = w_uv.view(r, nh, hs).transpose(0, 1) @ self.c_proj.weight.view(nh, hs, C)  # (nh, r, C)
        return w_uk, w_uv_o

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None,
                past_key_values: LatentKVCache | None) -> torch.Tensor:
        B, T_new, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        q = self.q_proj(x).view(B, T_new, nh, hs).transpose(1, 2)  # (B, nh, T_new, hs)
        latent = x @ self.kv_a_proj  # (B, T_new, r): all this layer caches
        if past_key_values is not None:
            if not hasattr(past_key_values, "update_latent"):
                raise TypeError(f"a latent-attention model caches latents, not K/V: pass a kvlib LatentKVCache, "
                                f"not a {type(past_key_values).__name__} (kvlib.generate builds one itself)")
            latent = past_key_values.update_latent(latent, self.layer_idx)  # (B, T_total, r)
        absorb = (T_new == 1 and past_key_values is not None) if self.absorb is None else self.absorb
        if absorb:
            return self._absorbed(q, latent, attention_mask)
        k, v = (latent @ self.kv_b_proj).split(C, dim=-1)  # (B, T_total, C) each: K and V rebuilt
        k = k.view(B, -1, nh, hs).transpose(1, 2)  # (B, nh, T_total, hs)
        v = v.view(B, -1, nh, hs).transpose(1, 2)  # (B, nh, T_total, hs)
        y = ATTENTION_FUNCTIONS[self.attn_implementation](q, k, v, attention_mask)  # (B, nh, T_new, hs)
        return self.c_proj(y.transpose(1, 2).reshape(B, T_new, C))  # (B, T_new, C)

    def _absorbed(self, q: torch.Tensor, latent: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Multi-query attention over the latent: one r-wide key/value head shared by all nh query heads."""
        w_uk, w_uv_o = self.absorbed_weights()  # (nh, hs, r), (nh, r, C)
        q_latent = q @ w_uk  # (B, nh, T_new, r): W_UK absorbed into the query
        c = latent[:, None]  # (B, 1, T_total, r): the same "key" and "value" for every head
        scores = (q_latent @ c.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, nh, T_new, T_total): 1/√hs, as before
        if attention_mask is not None:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        o_latent = torch.softmax(scores, dim=-1) @ c  # (B, nh, T_new, r): attention-weighted latents
        out = (o_latent @ w_uv_o).sum(dim=1)  # (B, T_new, C): W_UV W_O per head, heads summed
        return out + self.c_proj.bias


class LatentGPT2(GPT2):
    """GPT-2 whose attention layers cache a kv_lora_rank latent per token (LatentAttention). Build it with
    `to_latent_attention(model, kv_lora_rank)`; `kvlib.generate` gives it a LatentKVCache."""

    def __init__(self, config, kv_lora_rank: int) -> None:
        super().__init__(config)
        _check_rank(kv_lora_rank, config.n_embd)
        self.kv_lora_rank = kv_lora_rank
        for i, block in enumerate(self.transformer.h):
            block.attn = LatentAttention(config.n_embd, config.n_head, kv_lora_rank, i, config.attn_implementation)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """GPT-2's initialisation, with the latent projections drawn like the K/V projections they replace."""
        super().reset_parameters(generator)  # zeroes what it does not know (q_proj.weight, kv_a_proj, kv_b_proj)
        for block in self.transformer.h:
            if isinstance(block.attn, LatentAttention):
                for p in (block.attn.q_proj.weight, block.attn.kv_a_proj, block.attn.kv_b_proj):
                    p.normal_(0.0, 0.02, generator=generator)

    def load_hf_state_dict(self, state_dict):
        raise TypeError("a LatentGPT2 has no Hugging Face GPT-2 counterpart: load the MHA model and convert it with "
                        "kvlib.model.mla.to_latent_attention")

    def to_hf(self):
        raise TypeError("transformers' GPT-2 has no latent attention: compare the MHA model this one was converted "
                        "from, or this model at kv_lora_rank = n_embd, which computes the same")


def kv_singular_values(model: GPT2) -> torch.Tensor:
    """(n_layer, C) singular values of each layer's [W_k | W_v] (C, 2C), largest first (fp64)."""
    _check_mha(model)
    C = model.config.n_embd
    return torch.stack([torch.linalg.svdvals(b.attn.c_attn.weight.detach().double()[:, C:])
                        for b in model.transformer.h])


def to_latent_attention(model: GPT2, kv_lora_rank: int) -> LatentGPT2:
    """A LatentGPT2 copy of a multi-head GPT2 whose layers cache kv_lora_rank numbers per token instead of 2C.

    Per layer: [W_k | W_v] = U S Vᵀ (in fp64), W_DKV = U_r, W_UKV = S_r V_rᵀ; the key bias dropped (softmax ignores
    it), the value bias folded into c_proj's bias. kv_lora_rank = n_embd reproduces the model up to rounding.
    The model given is left unchanged.
    """
    _check_mha(model)
    C = model.config.n_embd
    _check_rank(kv_lora_rank, C)
    dtype, device = model.lm_head.weight.dtype, model.lm_head.weight.device
    new = LatentGPT2(model.config, kv_lora_rank).to(dtype=dtype, device=device)
    new.weights_source = f"{model.weights_source}, converted to latent attention (kv_lora_rank={kv_lora_rank})"
    own = {k: v for k, v in model.state_dict().items() if ".attn." not in k}
    with torch.no_grad():
        for name, tensor in new.state_dict().items():
            if name in own:
                tensor.copy_(own[name])
        for old, block in zip(model.transformer.h, new.transformer.h):
            w_q, w_kv = old.attn.c_attn.weight.double().split([C, 2 * C], dim=1)  # (C, C), (C, 2C)
            b_q, _b_k, b_v = old.attn.c_attn.bias.double().split(C)  # the key bias is not needed (see above)
            U, S, Vh = torch.linalg.svd(w_kv, full_matrices=False)  # (C, C), (C,), (C, 2C)
            attn, w_o = block.attn, old.attn.c_proj.weight.double()  # (C, C)
            attn.q_proj.weight.copy_(w_q), attn.q_proj.bias.copy_(b_q)
            attn.kv_a_proj.copy_(U[:, :kv_lora_rank])  # (C, r): orthonormal columns
            attn.kv_b_proj.copy_(S[:kv_lora_rank, None] * Vh[:kv_lora_rank])  # (r, 2C)
            attn.c_proj.weight.copy_(w_o)
            attn.c_proj.bias.copy_(old.attn.c_proj.bias.double() + b_v @ w_o)  # b_o + b_v W_O
    return new.train(model.training)


def set_absorb(model: LatentGPT2, absorb: bool | None) -> None:
    """Choose every layer's decode path: True (absorbed), False (rebuild K/V), None (absorbed for one-token steps)."""
    if not isinstance(model, LatentGPT2):
        raise TypeError(f"model must be a kvlib.model.mla.LatentGPT2, got {type(model).__name__}")
    if absorb not in (True, False, None):
        raise ValueError(f"absorb must be True, False or None, got {absorb!r}")
    for block in model.transformer.h:
        block.attn.absorb = absorb


def _check_mha(model: GPT2) -> None:
    if not isinstance(model, GPT2) or isinstance(model, LatentGPT2):
        raise TypeError(f"model must be a multi-head kvlib.GPT2, got {type(model).__name__}")
    if model.config.n_kv_head != model.config.n_head:
        raise ValueError(f"convert a multi-head model (n_kv_head == n_head == {model.config.n_head}); this one has "
                         f"n_kv_head={model.config.n_kv_head} (expand it first with kvlib.model.gqa.expand_kv_heads)")


def _check_rank(kv_lora_rank: int, C: int) -> None:
    if isinstance(kv_lora_rank, bool) or not isinstance(kv_lora_rank, int):
        raise TypeError(f"kv_lora_rank must be an int, got {type(kv_lora_rank).__name__}")
    if not 1 <= kv_lora_rank <= C:
        raise ValueError(f"kv_lora_rank must be in 1..n_embd={C}: [W_k | W_v] is (C, 2C), so rank C is already "
                         f"exact; got {kv_lora_rank}")
