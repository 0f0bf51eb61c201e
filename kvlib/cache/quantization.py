"""Asymmetric (min/max) integer quantization of K/V blocks, int8 or int4 packed two per byte, and its byte count.

A group of values x shares a scale and a zero point (the group's minimum):

    scale = (max x - min x) / (2**nbits - 1),   code = round((x - min x) / scale) in [0, 2**nbits - 1],
    x ≈ code · scale + min x                    (error at most scale / 2 per value)

Groups run along one axis of a (B, nkv, T, hs) block: "token" groups `group_size` channels of one token (one
scale per token per group: KIVI's choice for values), "channel" groups `group_size` consecutive tokens of one channel
(one scale per channel per group: KIVI's choice for keys, whose outliers sit in a few fixed channels).
int4 codes are packed two per uint8 byte along hs: low nibble = even channel, high nibble = odd channel.
"""
from __future__ import annotations

import torch

NBITS = (4, 8)
AXES = ("token", "channel")


def check_quant_args(nbits: int, key_quant: str, value_quant: str, group_size: int, residual_length: int,
                     head_dim: int) -> None:
    """Raise a ValueError/TypeError naming what is allowed unless the quantization settings are valid."""
    for name, value in (("nbits", nbits), ("group_size", group_size), ("residual_length", residual_length)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if nbits not in NBITS:
        raise ValueError(f"nbits must be 4 or 8 (int4 packed two per byte, or int8), got {nbits}")
    for name, value in (("key_quant", key_quant), ("value_quant", value_quant)):
        if value not in AXES:
            raise ValueError(f"{name} must be 'token' (groups of channels per token) or 'channel' (groups of "
                             f"tokens per channel), got {value!r}")
    if group_size < 1 or head_dim % group_size:
        allowed = [d for d in range(1, head_dim + 1) if head_dim % d == 0]
        raise ValueError(f"group_size ({group_size}) must divide head_dim ({head_dim}), the axis values are grouped "
                         f"along per token; allowed: {allowed}")
    if nbits == 4 and head_dim % 2:
        raise ValueError(f"int4 packs two channels per byte, so head_dim must be even, got {head_dim}")
    if residual_length < 0:
        raise ValueError(f"residual_length must be >= 0 (recent tokens kept in full precision), got {residual_length}")


def flush_unit(key_quant: str, value_quant: str, group_size: int) -> int:
    """Tokens that leave the full-precision window together: group_size when a tensor groups along tokens, else 1."""
    return group_size if "channel" in (key_quant, value_quant) else 1


def quantized_tokens(seq_len: int, residual_length: int, unit: int) -> int:
    """Tokens held quantized after seq_len tokens: the oldest whole multiple of `unit` beyond the window."""
    return max(0, seq_len - residual_length) // unit * unit


def _grouped(x: torch.Tensor, axis: str, group_size: int) -> torch.Tensor:
    """(B, nkv, T, hs) as groups: token -> (B, nkv, T, hs/G, G); channel -> (B, nkv, T/G, G, hs)."""
    B, nkv, T, hs = x.shape
    if axis == "token":
        return x.reshape(B, nkv, T, hs // group_size, group_size)
    return x.reshape(B, nkv, T // group_size, group_size, hs)


def quantize(x: torch.Tensor, nbits: int, axis: str, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes (B, nkv, T, hs · nbits / 8) uint8, scale and zero point (B, nkv, T, hs/G) [token] or (B, nkv, T/G, hs)
    [channel] in x's dtype, for a block x (B, nkv, T, hs); for axis "channel" T must be a multiple of group_size."""
    reduce = -1 if axis == "token" else -2
    groups = _grouped(x, axis, group_size)  # (..., G) or (..., G, hs)
    low, high = groups.amin(dim=reduce, keepdim=True), groups.amax(dim=reduce, keepdim=True)
    qmax = 2**nbits - 1
    scale = (high - low) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant group: every code 0, exact
    codes = torch.round((groups - low) / scale).clamp_(0, qmax).to(torch.uint8).reshape(x.shape)  # (B, nkv, T, hs)
    if nbits == 4:
        codes = codes[..., 0::2] | (codes[..., 1::2] << 4)  # (B, nkv, T, hs/2): two codes per byte
    return codes, scale.squeeze(reduce), low.squeeze(reduce)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, nbits: int, axis: str,
               group_size: int) -> torch.Tensor:
    """The (B, nkv, T, hs) values code · scale + zero, in the dtype of scale."""
    if nbits == 4:
        codes = torch.stack([codes & 0x0F, codes >> 4], dim=-1).flatten(-2)  # (B, nkv, T, hs): unpack the nibbles
    reduce = -1 if axis == "token" else -2
    groups = _grouped(codes.to(scale.dtype), axis, group_size)
    return (groups * scale.unsqueeze(reduce) + zero.unsqueeze(reduce)).reshape(codes.shape)  # (B, nkv, T, hs)


def quantized_kv_cache_bytes(
    *, n_layer: int, n_kv_head: int, head_dim: int, seq_len: int, batch_size: int = 1, nbits: int = 8,
    group_size: int, residual_length: int, key_quant: str = "channel", value_quant: str = "token",
    dtype: torch.dtype = torch.float16,
) -> int:
    """Bytes a QuantizedKVCache holds for batch_size sequences of seq_len tokens (what its nbytes reports).

    Of the seq_len tokens, n_q = quantized_tokens(...) are held as codes (hs · nbits / 8 bytes per head) plus one
    scale and one zero point (dtype) per group of group_size values; the other seq_len - n_q stay in dtype:

        2 · B · L · n_kv_head · [n_q · hs · nbits/8 + 2 · (n_q · hs / G) · e + (seq_len - n_q) · hs · e]
    """
    check_quant_args(nbits, key_quant, value_quant, group_size, residual_length, head_dim)
    n_q = quantized_tokens(seq_len, residual_length, flush_unit(key_quant, value_quant, group_size))
    e = torch.empty((), dtype=dtype).element_size()
    per_head = n_q * head_dim * nbits // 8 + 2 * (n_q * head_dim // group_size) * e + (seq_len - n_q) * head_dim * e
    return 2 * batch_size * n_layer * n_kv_head * per_head
