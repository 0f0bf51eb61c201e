"""A sliding-window KV cache with optional attention sinks: constant memory once full.

Each query at position p attends to its last `window` tokens (p - window < j <= p) and to the first `sink_tokens`
tokens (StreamingLLM's attention sinks), i.e. the mask `kvlib.attention.sliding_window_mask`. The cache keeps
exactly those keys: the first sink_tokens positions in a small buffer of their own, and every later position p in
slot p mod window of a rolling buffer (Mistral's), overwriting the token that just left the window.

GPT-2's positions are learned and absolute: positions keep counting (token p still gets position embedding p; the
cache reports p as its length), only the set of keys kept changes. So GPT-2 cannot stream past n_positions.

Shapes: B batch, nkv = n_kv_head K/V heads, hs head size, W window, S sink tokens, T_new tokens fed this call.
"""
from __future__ import annotations

import torch

from ..attention import check_window, sliding_window_mask
from ..config import GPT2Config
from .contiguous import resolve_crop


def check_states_for(config: GPT2Config, kind: str, key_states: torch.Tensor, value_states: torch.Tensor,
                     layer_idx: int) -> None:
    """Raise unless the states are (B, n_kv_head, T_new, head_dim) tensors of the config and layer_idx is valid."""
    if not isinstance(key_states, torch.Tensor) or not isinstance(value_states, torch.Tensor):
        raise TypeError("key_states and value_states must be tensors")
    if key_states.dim() != 4 or key_states.shape != value_states.shape:
        raise ValueError("key_states and value_states must both be (batch, n_kv_head, seq_len, head_dim); "
                         f"got {tuple(key_states.shape)} and {tuple(value_states.shape)}")
    expected = (config.n_kv_head, config.head_dim)
    if (key_states.shape[1], key_states.shape[3]) != expected:
        raise ValueError(f"this {kind} was built for (n_kv_head, head_dim) = {expected}, got states for "
                         f"{(key_states.shape[1], key_states.shape[3])}: build the cache from model.config")
    if isinstance(layer_idx, bool) or not isinstance(layer_idx, int) or not 0 <= layer_idx < config.n_layer:
        raise ValueError(f"layer_idx must be in 0..{config.n_layer - 1}, got {layer_idx!r}")


def check_model_config(cache_config: GPT2Config, model_config: GPT2Config, kind: str) -> None:
    """Raise unless a model of model_config can use a cache built for cache_config (same layers and K/V shapes)."""
    ours = (cache_config.n_layer, cache_config.n_kv_head, cache_config.head_dim)
    theirs = (model_config.n_layer, model_config.n_kv_head, model_config.head_dim)
    if ours != theirs:
        raise ValueError(f"this {kind} was built for (n_layer, n_kv_head, head_dim) = {ours}; the model has "
                         f"{theirs}: build the cache with the model's own config (model.config)")


class SlidingWindowKVCache:
    """Keeps the last `window` tokens (rolling buffer, slot p mod window) plus the first `sink_tokens` of each layer."""

    builds_attention_mask = True  # the model asks this cache for the mask over the keys it returns

    def __init__(self, config: GPT2Config, window: int, sink_tokens: int = 0) -> None:
        if not isinstance(config, GPT2Config):
            raise TypeError(f"config must be a kvlib.GPT2Config (e.g. model.config), got {type(config).__name__}")
        check_window(window, sink_tokens)
        self.config, self.window, self.sink_tokens = config, window, sink_tokens
        self.sink_keys: list[torch.Tensor] = []  # per layer: (B, nkv, S, hs), positions 0..S-1
        self.sink_values: list[torch.Tensor] = []
        self.ring_keys: list[torch.Tensor] = []  # per layer: (B, nkv, W, hs), position p >= S in slot p % W
        self.ring_values: list[torch.Tensor] = []
        self._seen = [0] * config.n_layer  # tokens fed per layer = the next token's position

    def kept_positions(self, seen: int) -> torch.Tensor:
        """Positions held after `seen` tokens, in order: sinks [0, min(S, seen)), then window [max(S, seen-W), seen)."""
        S, W = self.sink_tokens, self.window
        return torch.cat([torch.arange(min(S, seen)), torch.arange(max(S, seen - W), max(S, seen))])

    def attention_mask(self, T_new: int, device: torch.device | str | None = None) -> torch.Tensor:
        """(T_new, kept + T_new) mask over the keys the next update returns: the banded mask's kept columns."""
        seen = self._seen[0]
        key_pos = torch.cat([self.kept_positions(seen), torch.arange(seen, seen + T_new)])  # (kept + T_new,)
        full = sliding_window_mask(T_new, seen + T_new, self.window, self.sink_tokens)  # (T_new, seen + T_new)
        return full[:, key_pos].to(device)  # (T_new, kept + T_new)

    def check_config(self, config: GPT2Config) -> None:
        check_model_config(self.config, config, type(self).__name__)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the kept (B, nkv, kept, hs) keys/values followed by the T_new new ones; then store the new ones."""
        check_states_for(self.config, type(self).__name__, key_states, value_states, layer_idx)
        if layer_idx == len(self.ring_keys):  # first call for this layer: allocate S + W slots, once
            B, nkv, _, hs = key_states.shape
            new = lambda n: key_states.new_zeros(B, nkv, n, hs)  # noqa: E731
            self.sink_keys.append(new(self.sink_tokens)), self.sink_values.append(new(self.sink_tokens))
            self.ring_keys.append(new(self.window)), self.ring_values.append(new(self.window))
        elif layer_idx > len(self.ring_keys):
            raise ValueError(f"layer_idx must be in 0..{len(self.ring_keys)} (layers are filled in order), got {layer_idx}")
        ring = self.ring_keys[layer_idx]
        if key_states.shape[0] != ring.shape[0] or key_states.dtype != ring.dtype or key_states.device != ring.device:
            raise ValueError(f"this cache holds batch {ring.shape[0]} of {ring.dtype} on {ring.device}; got batch "
                             f"{key_states.shape[0]} of {key_states.dtype} on {key_states.device}: one cache per request")
        seen, T_new, S, W = self._seen[layer_idx], key_states.shape[-2], self.sink_tokens, self.window
        sink_n = min(S, seen)
        slots = torch.arange(max(S, seen - W), max(S, seen), device=ring.device) % W  # window, chronological
        out = []
        for sinks, buffer, states in ((self.sink_keys[layer_idx], ring, key_states),
                                      (self.sink_values[layer_idx], self.ring_values[layer_idx], value_states)):
            out.append(torch.cat([sinks[:, :, :sink_n], buffer[:, :, slots], states], dim=-2))  # (B, nkv, kept+T_new, hs)
            positions = torch.arange(seen, seen + T_new, device=ring.device)  # (T_new,) absolute positions
            to_sink = positions < S
            sinks[:, :, positions[to_sink]] = states[:, :, to_sink]
            # Only the last W tokens past the sinks survive; writing just those keeps the slot indices distinct.
            rolling = torch.nonzero(~to_sink).flatten()[-W:]  # indices into the new tokens
            buffer[:, :, positions[rolling] % W] = states[:, :, rolling]  # slot p mod W: overwrite p - W
        self._seen[layer_idx] = seen + T_new
        return out[0], out[1]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens fed so far (the next token's position), not the tokens kept."""
        return self._seen[layer_idx]

    def held_tokens(self, layer_idx: int = 0) -> int:
        """Tokens whose K/V are kept: min(seen, S + W)."""
        return min(self._seen[layer_idx], self.sink_tokens + self.window)

    @property
    def batch_size(self) -> int | None:
        return self.ring_keys[0].shape[0] if self.ring_keys else None

    def reset(self) -> None:
        """Forget the tokens; the buffers stay allocated (stale slots are never read)."""
        self._seen = [0] * len(self._seen)

    def record_overwrites(self, num_new_tokens: int) -> None:
        """Before a forward of num_new_tokens tokens that may be rolled back (a speculative verification): copy the
        ring slots those tokens will overwrite, so that crop can put them back. Token p writes slot p mod W over
        token p - W, which the window still needs if p is later rejected; once the ring has wrapped, nothing else
        holds it. Copies num_new_tokens slots per layer; crop puts back what it needs and drops the records."""
        if isinstance(num_new_tokens, bool) or not isinstance(num_new_tokens, int) or num_new_tokens < 1:
            raise ValueError(f"num_new_tokens must be an int >= 1, got {num_new_tokens!r}")
        if num_new_tokens > self.window:
            raise ValueError(f"a forward that may be rolled back must fit the window: {num_new_tokens} new tokens > "
                             f"window {self.window} (its own first tokens would be overwritten before the rollback)")
        seen = self._seen[0]
        positions = torch.arange(seen, seen + num_new_tokens)
        positions = positions[positions >= self.sink_tokens]  # sink positions have buffers of their own
        slots = positions % self.window
        saved = [(k[:, :, slots.to(k.device)].clone(), v[:, :, slots.to(k.device)].clone())
                 for k, v in zip(self.ring_keys, self.ring_values)]  # per layer: (B, nkv, n, hs) each
        records = self.__dict__.setdefault("_records", [])
        if records and records[-1][0] + records[-1][1] != seen:  # stale (a reset, or a crop since): start over
            records.clear()
        records.append((seen, num_new_tokens, positions, slots, saved))

    def crop(self, max_length: int) -> None:
        """Keep the first max_length tokens (negative: drop that many), restoring from the records what rejected
        tokens overwrote. Raises if the window after the rollback needs a token that a rejected one overwrote and
        no record kept (the ring had wrapped): rewinding the position alone would attend to the rejected K/V."""
        seen, S, W = self._seen[0], self.sink_tokens, self.window
        keep = resolve_crop(max_length, seen, type(self).__name__)
        records = self.__dict__.pop("_records", [])
        if records and records[-1][0] + records[-1][1] != seen:
            records = []  # made before other forwards: they describe slots that have changed since
        lost = range(max(S, keep - W), min(keep, seen - W))  # needed after the rollback, overwritten by p + W >= keep
        first_recorded = records[0][0] if records else seen
        if len(lost) and lost[0] + W < first_recorded:
            raise ValueError(
                f"{type(self).__name__} cannot roll back from {seen} to {keep} tokens: the ring has wrapped, and the "
                f"rejected tokens overwrote positions {lost[0]}..{lost[-1]}, which the window still needs. Call "
                "record_overwrites(num_new_tokens) before each forward that may be rolled back")
        for _, _, positions, slots, saved in reversed(records):  # oldest last: its copies are the oldest contents
            rejected = positions >= keep
            for ring_k, ring_v, (old_k, old_v) in zip(self.ring_keys, self.ring_values, saved):
                ring_k[:, :, slots[rejected].to(ring_k.device)] = old_k[:, :, rejected.to(old_k.device)]
                ring_v[:, :, slots[rejected].to(ring_v.device)] = old_v[:, :, rejected.to(old_v.device)]
        self._seen = [keep] * len(self._seen)

    @property
    def nbytes(self) -> int:
        """Bytes of the K and V kept (filled slots), all layers."""
        return sum(2 * self.held_tokens(i) * t[:, :, :1].numel() * t.element_size() for i, t in enumerate(self.ring_keys))

    @property
    def nbytes_allocated(self) -> int:
        """Bytes of the buffers, S + W slots per layer: constant however long the sequence."""
        return sum(t.numel() * t.element_size()
                   for t in self.sink_keys + self.sink_values + self.ring_keys + self.ring_values)

    def __len__(self) -> int:
        return len(self.ring_keys)

    def __repr__(self) -> str:
        return (f"SlidingWindowKVCache(window={self.window}, sink_tokens={self.sink_tokens}, "
                f"seq_length={self.get_seq_length()}, held={self.held_tokens()}, nbytes={self.nbytes})")
