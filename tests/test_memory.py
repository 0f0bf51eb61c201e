"""kvlib.measure.memory: the KV-cache formula, its presets and errors, checked against kvlib's caches and against the
allocator; and the memory calculator widget."""
import matplotlib
import pytest
import torch
from transformers import GPT2LMHeadModel

import kvlib
from kvlib.measure import memory
from kvlib.teaching import widgets
from kvlib.measure.memory import GB, GiB, KiB, TiB, kB

matplotlib.use("Agg")


# --- the formula and the published numbers -------------------------------------------------------------------

def test_classic_example_is_32_gib_not_32_tib():
    # batch 32, 32 layers, hidden 4096 (32 heads of 128), 2048 tokens, fp16
    n = memory.kv_cache_bytes(n_layer=32, n_kv_head=32, head_dim=128, seq_len=2048, batch_size=32, dtype="fp16")
    assert n == 2 * 32 * 32 * 4096 * 2048 * 2 == 34_359_738_368
    assert n == 32 * GiB and n / 1024**4 == n / TiB == 0.03125
    assert round(n / GB, 2) == 34.36


def test_gpt2_small_and_opt13b_per_token():
    assert memory.bytes_per_token_for_config(kvlib.GPT2Config(), torch.float32) == 73_728
    assert memory.kv_cache_bytes_for_config(kvlib.GPT2Config(), 1024, dtype=torch.float32) == 75_497_472
    opt = memory.bytes_per_token_for_config("opt-13b", "fp16")
    assert opt == 2 * 5120 * 40 * 2 == 819_200 == 800 * KiB and opt / kB == 819.2


def test_rasbt_mha_vs_gqa_estimate():
    # LLMs-from-scratch ch04/04_gqa: 4096-dim, 32 layers, 32k context, bf16: MHA 17.18 GB, GQA (8 KV heads) 4.29 GB
    mha = memory.kv_cache_bytes(n_layer=32, n_kv_head=32, head_dim=128, seq_len=32768, dtype="bf16")
    gqa = memory.kv_cache_bytes_for_config("llama-3-8b", 32768, dtype=torch.bfloat16)
    assert (round(mha / GB, 2), round(gqa / GB, 2)) == (17.18, 4.29)
    assert mha == 4 * gqa


@pytest.mark.parametrize("factor", ["n_layer", "n_kv_head", "head_dim", "seq_len", "batch_size"])
def test_bytes_are_linear_in_every_factor(factor):
    base = dict(n_layer=3, n_kv_head=2, head_dim=5, seq_len=7, batch_size=2)
    doubled = {**base, factor: 2 * base[factor]}
    assert memory.kv_cache_bytes(**doubled) == 2 * memory.kv_cache_bytes(**base) == 2 * 2 * 3 * 2 * 5 * 7 * 2 * 2


@pytest.mark.parametrize("dtype, size", [
    (torch.float32, 4), ("fp32", 4), (torch.float16, 2), ("half", 2), ("BF16", 2), (torch.bfloat16, 2),
    ("int8", 1), (torch.int8, 1), ("fp8", 1), (torch.float64, 8),
])
def test_dtype_bytes(dtype, size):
    assert memory.dtype_bytes(dtype) == size
    assert memory.kv_cache_bytes(n_layer=1, n_kv_head=1, head_dim=1, seq_len=1, dtype=dtype) == 2 * size


def test_sliding_window_caps_the_cache():
    kw = dict(n_layer=32, n_kv_head=8, head_dim=128, batch_size=1)
    full = memory.kv_cache_bytes(seq_len=32768, **kw)
    windowed = memory.kv_cache_bytes(seq_len=32768, sliding_window=4096, **kw)
    assert full == 8 * windowed
    assert memory.kv_cache_bytes(seq_len=1000, sliding_window=4096, **kw) == memory.kv_cache_bytes(seq_len=1000, **kw)


# --- presets and weights ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(kvlib.GPT2_SIZES))
def test_gpt2_parameter_count_matches_kvlib_and_transformers(name):
    config = kvlib.GPT2Config.from_name(name)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        ours = sum(p.numel() for p in kvlib.GPT2(config).parameters())
        theirs = GPT2LMHeadModel(config.to_hf()).num_parameters()
    assert memory.gpt2_parameter_count(config) == memory.PRESETS[name].n_params == ours == theirs


def test_other_presets_recomputed_from_their_architecture():
    def llama(L, C, kv_dim, ffn, vocab):  # untied embeddings, RMSNorm weights only, no biases
        return 2 * vocab * C + L * (2 * C * C + 2 * C * kv_dim + 3 * C * ffn + 2 * C) + C

    assert memory.PRESETS["llama-2-7b"].n_params == llama(32, 4096, 4096, 11008, 32000)
    assert memory.PRESETS["llama-3-8b"].n_params == llama(32, 4096, 8 * 128, 14336, 128256)
    C, ffn = 5120, 20480  # OPT-13B: biases everywhere, LayerNorms, tied head, 2048 + 2 learned positions
    opt = 50272 * C + 2050 * C + 40 * (4 * (C * C + C) + 2 * C * ffn + ffn + C + 4 * C) + 2 * C
    assert memory.PRESETS["opt-13b"].n_params == opt
    shapes = {n: (p.n_layer, p.n_head, p.n_kv_head, p.head_dim) for n, p in memory.PRESETS.items()}
    assert shapes["llama-2-7b"] == (32, 32, 32, 128) and shapes["llama-3-8b"] == (32, 32, 8, 128)
    assert shapes["opt-13b"] == (40, 40, 40, 128) and shapes["gpt2-xl"] == (48, 25, 25, 64)


def test_weight_bytes_match_a_real_model(tiny_config, tiny_model):
    real = sum(p.numel() * p.element_size() for p in tiny_model.parameters())
    assert memory.weight_bytes(tiny_config, torch.float32) == real
    assert memory.weight_bytes("llama-2-7b", "fp16") == 13_476_831_232


@pytest.mark.parametrize("name", ["gpt2", "llama-2-7b", "llama-3-8b", "opt-13b"])
@pytest.mark.parametrize("budget_gib", [24, 80])
def test_max_cached_tokens_is_the_largest_that_fits(name, budget_gib):
    budget = budget_gib * GiB
    n = memory.max_cached_tokens(budget, name)
    weights, per_token = memory.weight_bytes(name), memory.bytes_per_token_for_config(name)
    if weights > budget:
        assert n == 0
    else:
        assert weights + n * per_token <= budget < weights + (n + 1) * per_token


def test_opt13b_weights_do_not_fit_24_gib_in_fp32():
    assert memory.max_cached_tokens(24 * GiB, "opt-13b", dtype="fp32") == 0


@pytest.mark.parametrize("name", list(memory.PRESETS))
def test_cache_outgrows_weights_at(name):
    n = memory.cache_outgrows_weights_at(name)
    per_token, weights = memory.bytes_per_token_for_config(name), memory.weight_bytes(name)
    assert (n - 1) * per_token <= weights < n * per_token


# --- bad input ------------------------------------------------------------------------------------------------

GOOD = dict(n_layer=2, n_kv_head=2, head_dim=4, seq_len=8, batch_size=1)


@pytest.mark.parametrize("field", list(GOOD))
@pytest.mark.parametrize("bad, error", [(0, ValueError), (-3, ValueError), (True, TypeError), (2.0, TypeError),
                                        ("8", TypeError), (None, TypeError)])
def test_bad_sizes_are_named(field, bad, error):
    with pytest.raises(error, match=f"{field} must be an int >= 1"):
        memory.kv_cache_bytes(**{**GOOD, field: bad})


@pytest.mark.parametrize("dtype, error, words", [
    ("fp12", ValueError, "known names"), ("int4", ValueError, "known names"), (torch.bool, ValueError, "floating"),
    (torch.int32, ValueError, "floating"), (4, TypeError, "torch.dtype"),
])
def test_bad_dtypes(dtype, error, words):
    with pytest.raises(error, match=words):
        memory.kv_cache_bytes(**GOOD, dtype=dtype)


def test_bad_shapes_and_models():
    with pytest.raises(ValueError, match=r"n_kv_head \(3\) must divide n_head \(8\).*\[1, 2, 4, 8\]"):
        memory.ModelPreset("x", 2, 8, 3, 64)
    with pytest.raises(ValueError, match=r"hidden_size \(100\) must be divisible by n_head \(3\)"):
        memory.ModelPreset.from_hidden("x", n_layer=2, hidden_size=100, n_head=3)
    with pytest.raises(ValueError, match="sliding_window must be an int >= 1"):
        memory.kv_cache_bytes(**GOOD, sliding_window=0)
    with pytest.raises(ValueError, match="unknown preset 'gpt5'; known presets: gpt2"):
        memory.kv_cache_bytes_for_config("gpt5", 10)
    with pytest.raises(TypeError, match="ModelPreset, a kvlib.GPT2Config or a preset name"):
        memory.weight_bytes(42)
    with pytest.raises(ValueError, match="no parameter count"):
        memory.weight_bytes(memory.ModelPreset("x", 2, 8, 2, 64))
    with pytest.raises(ValueError, match="memory_bytes must be an int >= 1"):
        memory.max_cached_tokens(0, "gpt2")


# --- measured against predicted -------------------------------------------------------------------------------

def _fill(model, kind, batch_size, prompt_len, decode_steps, max_seq_len=64):
    """Prefill a seeded prompt into a fresh cache, then decode greedily; return the cache."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch_size, prompt_len), generator=generator)
    cache = kvlib.make_cache(model, kind, batch_size, max_seq_len)
    with torch.inference_mode():
        token = kvlib.prefill(model, ids, cache).argmax(-1)
        for _ in range(decode_steps):
            token = kvlib.decode_one_token(model, token, cache).argmax(-1)
    return cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_cache_nbytes_equals_the_formula(tiny_model, kind, batch_size, dtype):
    model = tiny_model.to(dtype)
    cache = _fill(model, kind, batch_size, prompt_len=5, decode_steps=4, max_seq_len=40)
    predicted = memory.kv_cache_bytes_for_config(model.config, 9, batch_size, dtype)
    reserved = memory.kv_cache_bytes_for_config(model.config, 40, batch_size, dtype)
    assert cache.get_seq_length() == 9 and cache.nbytes == predicted
    # Storage behind the tensors, not kvlib's bookkeeping: the static cache keeps its whole buffers alive.
    assert memory.cache_storage_bytes(cache) == cache.nbytes_allocated == (reserved if kind == "static" else predicted)


def test_views_keep_their_whole_storage_alive(tiny_model):
    # K and V split from the fused c_attn output are views: together they keep q's third alive as well.
    x = torch.randn(2, 6, tiny_model.config.n_embd)
    qkv = tiny_model.transformer.h[0].attn.c_attn(x).view(2, 6, 3, 4, 8)  # (B, T, 3, nh, hs)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, T, hs) views
    assert memory.storage_bytes([k, v]) * 2 == (k.nbytes + v.nbytes) * 3


def test_dynamic_cache_holds_compact_copies_after_prefill(tiny_model):
    # The cache copies the prompt's K/V out of that fused output (as HF's DynamicCache does): no hidden bytes.
    cache = _fill(tiny_model, "dynamic", 2, prompt_len=6, decode_steps=0)
    assert memory.cache_storage_bytes(cache) == cache.nbytes == memory.kv_cache_bytes_for_config(
        tiny_model.config, 6, 2, torch.float32)


@pytest.fixture(scope="module")
def gpt2_small():
    return kvlib.random_gpt2(kvlib.GPT2Config(), seed=0)


@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_gpt2_small_cache_matches_the_formula(gpt2_small, kind):
    cache = _fill(gpt2_small, kind, 1, prompt_len=6, decode_steps=2, max_seq_len=1024)
    assert cache.nbytes == 8 * 73_728 == memory.kv_cache_bytes_for_config(gpt2_small.config, 8, dtype=torch.float32)
    reserved = 75_497_472 if kind == "static" else 8 * 73_728
    assert memory.cache_storage_bytes(cache) == cache.nbytes_allocated == reserved


def test_allocator_sees_a_new_static_cache():
    # The allocator's own count (torch.profiler on CPU, torch.cuda.memory_allocated on a GPU), not kvlib's.
    config = kvlib.GPT2Config()
    new, allocated = memory.allocated_bytes(lambda: kvlib.StaticKVCache(config, 2, 512, dtype=torch.float32))
    assert allocated == new.nbytes_allocated == memory.kv_cache_bytes_for_config(config, 512, 2, "fp32")


def test_allocator_sees_the_dynamic_prefill(tiny_model):
    ids = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(0))
    cache = kvlib.DynamicKVCache()
    with torch.inference_mode():
        tiny_model(ids[:, :1])  # warm-up outside the measurement
        logits, allocated = memory.allocated_bytes(lambda: kvlib.prefill(tiny_model, ids, cache))
    # What survives the prefill: the cache's storages (the fused qkv outputs) and the returned logits.
    assert allocated == memory.cache_storage_bytes(cache) + logits.untyped_storage().nbytes()
    assert allocated > cache.nbytes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_memory_allocated_matches_the_formula(tiny_config):
    model = kvlib.random_gpt2(tiny_config).to("cuda", torch.float16)
    cache, allocated = memory.allocated_bytes(
        lambda: kvlib.StaticKVCache(tiny_config, 4, 256, dtype=torch.float16, device="cuda"), "cuda")
    assert allocated == cache.nbytes_allocated == memory.kv_cache_bytes_for_config(tiny_config, 256, 4)
    assert _fill(model, "dynamic", 2, 5, 3).nbytes == memory.kv_cache_bytes_for_config(tiny_config, 8, 2)


def test_format_bytes():
    assert memory.format_bytes(34_359_738_368) == "34,359,738,368 B = 32.00 GiB = 34.36 GB"
    assert memory.format_bytes(819_200) == "819,200 B = 800.00 KiB = 819.20 kB"
    assert memory.format_bytes(999) == "999 B"


# --- the calculator widget ------------------------------------------------------------------------------------

def test_calculator_estimate_is_the_formula():
    est = widgets.memory_calculator_estimate(n_layer=32, n_head=32, n_kv_head=32, head_dim=128, seq_len=2048,
                                             batch_size=32, dtype="fp16", n_params=6_738_415_616)
    assert est["total_bytes"] == 34_359_738_368 and est["bytes_per_token"] == 524_288
    assert est["weight_bytes"] == 2 * 6_738_415_616
    assert widgets.memory_summary_text(est).startswith("KV cache: 32 GiB = 34.36 GB; 34,359,738,368 B")
    with pytest.raises(ValueError, match="must divide n_head"):
        widgets.memory_calculator_estimate(n_layer=2, n_head=6, n_kv_head=4, head_dim=8, seq_len=4)


def _expected(calc):
    c = {k: w.value for k, w in calc.controls.items()}
    return memory.kv_cache_bytes(n_layer=c["n_layer"], n_kv_head=c["n_kv_head"], head_dim=c["head_dim"],
                                 seq_len=c["seq_len"], batch_size=c["batch_size"], dtype=c["dtype"],
                                 sliding_window=c["sliding_window"] or None)


CLASSIC = 34_359_738_368  # llama-2-7b shapes, batch 32, 2048 tokens, fp16


@pytest.mark.parametrize("control, value, total", [
    ("n_layer", 16, CLASSIC // 2), ("n_kv_head", 8, CLASSIC // 4), ("head_dim", 64, CLASSIC // 2),
    ("seq_len", 4096, 2 * CLASSIC), ("batch_size", 3, CLASSIC // 32 * 3), ("dtype", "fp32", 2 * CLASSIC),
    ("dtype", "int8", CLASSIC // 2), ("sliding_window", 512, CLASSIC // 4), ("preset", "llama-3-8b", CLASSIC // 4),
    ("n_head", 64, CLASSIC),  # query heads store nothing: only the K/V heads count
])
def test_changing_a_control_changes_the_total_correctly(control, value, total):
    calc = widgets.memory_calculator("llama-2-7b", seq_len=2048, batch_size=32, plot=False)
    before = calc.total.value
    assert calc.estimate["total_bytes"] == _expected(calc) == CLASSIC and "32 GiB" in before
    calc.controls[control].value = value
    assert calc.total.value != before
    assert calc.estimate["total_bytes"] == _expected(calc) == total
    assert f"{total:,} B" in calc.total.value and f"{total / GiB:,.4g} GiB" in calc.total.value
    # Editing a shape leaves the preset (its parameter count no longer applies); choosing a preset applies it.
    shape_edit = control in ("n_layer", "n_head", "n_kv_head", "head_dim")
    assert calc.controls["preset"].value == ("custom" if shape_edit else value if control == "preset" else "llama-2-7b")
    assert ("weights in" in calc.total.value) == (not shape_edit)


def test_calculator_contract_and_invalid_setting():
    calc = widgets.memory_calculator(plot=True)
    assert "kvlib-memory-calculator" in calc._dom_classes and "kvlib-memory-total" in calc.total._dom_classes
    slider = calc.controls["seq_len"]
    assert type(slider).__name__ == "IntSlider" and slider.description == "seq_len"
    assert "kvlib-seq-len-slider" in slider._dom_classes and calc.total in calc.children
    image = calc.children[-1]
    png = image.value
    assert png[:4] == b"\x89PNG"
    slider.value = 100
    assert image.value != png and calc.estimate["total_bytes"] == 100 * 36_864
    calc.controls["n_kv_head"].value = 5  # does not divide GPT-2's 12 heads
    assert calc.estimate is None and "must divide n_head (12)" in calc.total.value
    with pytest.raises(ValueError, match="unknown preset"):
        widgets.memory_calculator("gpt5")
