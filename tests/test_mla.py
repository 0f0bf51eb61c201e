"""Latent attention converted from a multi-head GPT-2: exact at full rank (against transformers too), biases handled,
absorbed decode == attention over the rebuilt K/V, cached == uncached, and the latent cache's bytes to the byte."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import kvlib
from kvlib.cache.latent import LatentKVCache, latent_cache_bytes
from kvlib.model import gqa, mla

SHAPE = dict(n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=97)  # hs = 8, C = 32


def peaked_model(attn="eager", seed=0, dtype=torch.float64) -> kvlib.GPT2:
    """A random GPT-2 with large attention weights (peaked softmax) and non-zero biases everywhere: GPT-2's own
    initialisation (std 0.02, zero biases) gives near-uniform attention and would hide bias and rounding mistakes."""
    model = kvlib.GPT2(kvlib.GPT2Config(**SHAPE, attn_implementation=attn)).to(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 0.3 if "c_attn" in name else (0.5 if name.endswith("bias") else 0.1)
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * std)
    return model.eval()


def ids(B, T, seed=0):
    return torch.randint(0, SHAPE["vocab_size"], (B, T), generator=torch.Generator().manual_seed(seed))


def test_rank_c_reproduces_the_model_and_transformers():
    model = peaked_model(dtype=torch.float32)
    latent = mla.to_latent_attention(model, SHAPE["n_embd"])
    x = ids(2, 24)
    with torch.no_grad():
        ours, theirs, original = latent(x), model.to_hf()(x).logits, model(x)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)  # the outside oracle
    torch.testing.assert_close(ours, original, atol=1e-4, rtol=1e-4)
    assert (ours - original).abs().max() < 1e-4 < original.abs().max()


def test_key_bias_changes_nothing_and_the_value_bias_moves_into_c_proj():
    model = peaked_model()
    C, x = SHAPE["n_embd"], ids(1, 20)
    with torch.no_grad():
        before = model(x)
        for block in model.transformer.h:
            block.attn.c_attn.bias[C:2 * C] += 3.0  # every score of a query shifts by q·Δb_k: softmax ignores it
        torch.testing.assert_close(model(x), before, atol=1e-10, rtol=0)
    latent = mla.to_latent_attention(model, C)
    b_v = model.transformer.h[0].attn.c_attn.bias[2 * C:]
    w_o, b_o = model.transformer.h[0].attn.c_proj.weight, model.transformer.h[0].attn.c_proj.bias
    torch.testing.assert_close(latent.transformer.h[0].attn.c_proj.bias, b_o + b_v @ w_o)
    assert b_v.abs().max() > 0.1  # the fold is really exercised


@pytest.mark.parametrize("rank", [1, 5, 16])
def test_low_rank_keys_and_values_are_the_projection_onto_the_top_singular_directions(rank):
    model = peaked_model()
    latent = mla.to_latent_attention(model, rank)
    C = SHAPE["n_embd"]
    w_kv = model.transformer.h[1].attn.c_attn.weight.detach()[:, C:]  # (C, 2C)
    U = torch.linalg.svd(w_kv).U[:, :rank]  # (C, r)
    attn = latent.transformer.h[1].attn
    torch.testing.assert_close(attn.kv_a_proj @ attn.kv_b_proj, U @ U.T @ w_kv)  # best rank-r approximation
    torch.testing.assert_close(attn.kv_a_proj.T @ attn.kv_a_proj, torch.eye(rank, dtype=torch.float64))
    s = mla.kv_singular_values(model)[1]
    err = torch.linalg.matrix_norm(attn.kv_a_proj.detach() @ attn.kv_b_proj.detach() - w_kv)
    assert math.isclose(float(err), float(s[rank:].square().sum().sqrt()), rel_tol=1e-9)  # Eckart–Young


@settings(max_examples=15, deadline=None)
@given(rank=st.integers(1, 32), B=st.integers(1, 3), T=st.integers(1, 12), attn=st.sampled_from(["eager", "sdpa"]))
def test_absorbed_attention_equals_attention_over_rebuilt_keys_and_values(rank, B, T, attn):
    latent = mla.to_latent_attention(peaked_model(attn), rank)
    x = ids(B, T, seed=rank)
    with torch.no_grad():
        mla.set_absorb(latent, False)
        rebuilt = latent(x)
        mla.set_absorb(latent, True)
        absorbed = latent(x)
    torch.testing.assert_close(absorbed, rebuilt, atol=1e-10, rtol=1e-10)


@settings(max_examples=15, deadline=None)
@given(rank=st.sampled_from([2, 8, 32]), absorb=st.sampled_from([None, True, False]), B=st.integers(1, 2),
       chunks=st.lists(st.integers(1, 6), min_size=1, max_size=5))
def test_cached_equals_uncached_and_the_cache_holds_exactly_the_latents(rank, absorb, B, chunks):
    latent = mla.to_latent_attention(peaked_model(), rank)
    mla.set_absorb(latent, absorb)
    x = ids(B, sum(chunks), seed=len(chunks))
    cache, start, parts = kvlib.make_cache(latent, "dynamic", B, sum(chunks)), 0, []
    assert isinstance(cache, LatentKVCache)
    with torch.no_grad():
        full = latent(x)
        for n in chunks:
            parts.append(latent(x[:, start:start + n], cache))
            start += n
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-10, rtol=1e-10)
    assert cache.get_seq_length() == sum(chunks) and cache.latent_cache[0].shape == (B, sum(chunks), rank)
    assert cache.nbytes == latent_cache_bytes(n_layer=2, kv_lora_rank=rank, seq_len=sum(chunks), batch_size=B,
                                              dtype=torch.float64) == B * 2 * sum(chunks) * rank * 8


def test_generate_with_the_latent_cache_equals_uncached_and_the_original_at_rank_c():
    model = peaked_model(dtype=torch.float32)
    prompt = ids(2, 5)
    full = mla.to_latent_attention(model, SHAPE["n_embd"])
    cached, uncached = kvlib.generate(full, prompt, 20), kvlib.generate(full, prompt, 20, use_cache=False)
    assert torch.equal(cached, uncached) and torch.equal(cached, kvlib.generate(model, prompt, 20))
    small = mla.to_latent_attention(model, 4)
    assert torch.equal(kvlib.generate(small, prompt, 20), kvlib.generate(small, prompt, 20, use_cache=False))


def test_mistakes_get_clear_errors():
    model = peaked_model()
    for bad, err in ((0, ValueError), (33, ValueError), (2.0, TypeError), (True, TypeError)):
        with pytest.raises(err, match="kv_lora_rank"):
            mla.to_latent_attention(model, bad)
    with pytest.raises(ValueError, match="n_kv_head=2"):
        mla.to_latent_attention(gqa.mean_pool_kv_heads(model, 2), 8)
    latent = mla.to_latent_attention(model, 8)
    with pytest.raises(TypeError, match="multi-head"):
        mla.to_latent_attention(latent, 8)
    with pytest.raises(TypeError, match="latent"):
        gqa.mean_pool_kv_heads(latent, 2)
    with pytest.raises(TypeError, match="caches latents, not K/V"):
        latent(ids(1, 3), kvlib.DynamicKVCache())
    with pytest.raises(TypeError, match="holds the latents"):
        model(ids(1, 3), LatentKVCache())
    with pytest.raises(ValueError, match="only cache='dynamic'"):
        kvlib.generate(latent, ids(1, 3), 2, cache="static")
    with pytest.raises(TypeError, match="no latent attention"):
        latent.to_hf()
    with pytest.raises(ValueError, match="absorb must be"):
        mla.set_absorb(latent, "yes")
    cache = LatentKVCache()
    with torch.no_grad():
        latent(ids(1, 3), cache)
        with pytest.raises(ValueError, match="one cache per request"):
            latent(ids(2, 1), cache)
    with pytest.raises(ValueError, match="seq_len"):
        latent_cache_bytes(n_layer=2, kv_lora_rank=8, seq_len=0)


def test_the_model_given_is_left_unchanged():
    model = peaked_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mla.to_latent_attention(model, 4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_latent_model_built_directly_is_initialised_like_gpt2():
    model = mla.LatentGPT2(kvlib.GPT2Config(**SHAPE), 8)
    attn = model.transformer.h[0].attn
    for p in (attn.q_proj.weight, attn.kv_a_proj, attn.kv_b_proj):
        assert torch.isfinite(p).all() and 0.01 < float(p.detach().std()) < 0.03
    assert model.kv_lora_rank == 8 and float(attn.q_proj.bias.detach().abs().max()) == 0.0


@settings(max_examples=15, deadline=None)
@given(B=st.integers(1, 2), chunks=st.lists(st.integers(1, 7), min_size=1, max_size=5),
       attn=st.sampled_from(["eager", "sdpa"]), seed=st.integers(0, 3))
def test_the_latent_cache_at_rank_c_matches_the_proven_dynamic_cache_step_by_step(B, chunks, attn, seed):
    """Against DynamicKVCache (proven against transformers): the same logits after every chunk, and the K/V rebuilt
    from the held latents are the K/V it holds, less the biases the conversion moved (b_k dropped, b_v in c_proj)."""
    model = peaked_model(attn, seed=seed)
    latent, C, nh = mla.to_latent_attention(model, SHAPE["n_embd"]), SHAPE["n_embd"], SHAPE["n_head"]
    x = ids(B, sum(chunks), seed=seed)
    proven, held, start = kvlib.DynamicKVCache(), LatentKVCache(), 0
    with torch.no_grad():
        for n in chunks:
            torch.testing.assert_close(latent(x[:, start:start + n], held), model(x[:, start:start + n], proven),
                                       atol=1e-9, rtol=1e-9)
            start += n
        for layer, block in enumerate(latent.transformer.h):
            k, v = (held.latent_cache[layer] @ block.attn.kv_b_proj).split(C, dim=-1)  # (B, T, C) each
            b_k, b_v = model.transformer.h[layer].attn.c_attn.bias[C:].split(C)
            for rebuilt, bias, exact in ((k, b_k, proven.key_cache[layer]), (v, b_v, proven.value_cache[layer])):
                heads = (rebuilt + bias).view(B, -1, nh, C // nh).transpose(1, 2)  # (B, nh, T, hs)
                torch.testing.assert_close(heads, exact, atol=1e-9, rtol=1e-9)
    assert held.get_seq_length() == proven.get_seq_length() == sum(chunks)
    assert held.nbytes * 2 == proven.nbytes  # rank C: half the numbers of K and V
