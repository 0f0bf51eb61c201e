import pytest
import torch

import kvlib
from kvlib.__main__ import main as cli_main
from tests.conftest import hf_gpt2


def test_random_fallback_is_seeded_says_so_and_has_gpt2_shapes(capsys):
    model, tokenizer = kvlib.load_gpt2("gpt2")  # conftest forces KVLIB_RANDOM_WEIGHTS=1
    assert "KVLIB_RANDOM_WEIGHTS=1 is set" in capsys.readouterr().err
    assert model.weights_source.startswith("random (seed 0")
    assert sum(p.numel() for p in model.parameters()) == 124_439_808  # GPT-2 small, tied embeddings counted once
    again, _ = kvlib.load_gpt2("gpt2")
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))


def test_tokenizer_is_real_gpt2_bpe_offline():
    tokenizer = kvlib.load_tokenizer()
    assert tokenizer.encode("Lionel Messi is a") == [43, 295, 417, 36128, 318, 257]
    assert tokenizer.eos_token_id == 50256 and tokenizer.decode([198]) == "\n"


def test_loads_real_weights_from_a_local_directory(tmp_path, monkeypatch, tiny_config):
    hf = hf_gpt2(tiny_config, seed=3)
    hf.save_pretrained(tmp_path)
    monkeypatch.delenv("KVLIB_RANDOM_WEIGHTS")
    model, _ = kvlib.load_gpt2(tmp_path)
    assert "real weights" in model.weights_source
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-5, rtol=0)


def test_bad_names_and_dtypes_are_rejected(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown model 'gpt-3'"):
        kvlib.load_gpt2("gpt-3")
    with pytest.raises(TypeError, match="floating-point torch.dtype"):
        kvlib.load_gpt2("gpt2", dtype=torch.int8)
    monkeypatch.delenv("KVLIB_RANDOM_WEIGHTS")
    with pytest.raises(ValueError, match="could not load GPT-2 weights from directory"):
        kvlib.load_gpt2(tmp_path)  # an empty directory is not a checkpoint


def test_from_hf_rejects_non_models():
    with pytest.raises(TypeError, match="GPT2LMHeadModel"):
        kvlib.GPT2.from_hf(object())


def _cached_real_gpt2():
    try:
        from transformers import GPT2LMHeadModel

        return GPT2LMHeadModel.from_pretrained("gpt2", local_files_only=True)
    except OSError:
        return None


def test_real_gpt2_small_continues_messi_as_published():
    hf = _cached_real_gpt2()
    if hf is None:
        pytest.skip("real GPT-2 weights are not in the local Hugging Face cache (no network here)")
    model, tokenizer = kvlib.GPT2.from_hf(hf), kvlib.load_tokenizer()
    ids = torch.tensor([tokenizer.encode("Lionel Messi is a")])
    for kwargs in (dict(use_cache=False), dict(cache="dynamic"), dict(cache="static")):
        out = kvlib.generate(model, ids, 13, **kwargs)
        assert tokenizer.decode(out[0, ids.shape[1]:]) == " player who has been a key part of the team's success."


def test_cli_streams_text_and_reports_tokens_per_second(capsys):
    assert cli_main(["generate", "--prompt", "Lionel Messi is a", "--max-new-tokens", "5", "--cache", "static"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Lionel Messi is a") and "5 tokens in" in out and "tokens/s, static cache, cpu" in out


def test_cli_generates_with_the_shakespeare_model(capsys):
    assert cli_main(["generate", "--model", "shakespeare", "--prompt", "To be, or not to be", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("To be, or not to be") and "weights: kvlib's Shakespeare GPT-2" in out


def test_cli_reports_bad_requests_without_a_traceback():
    with pytest.raises(SystemExit, match="unknown model 'marlowe'"):
        cli_main(["generate", "--model", "marlowe", "--prompt", "Hello"])
    with pytest.raises(SystemExit, match="exceeds the model's n_positions=1024"):
        cli_main(["generate", "--prompt", "Hello", "--max-new-tokens", "5000", "--no-cache"])
    with pytest.raises(SystemExit, match="no CUDA GPU|not a device name"):
        cli_main(["generate", "--prompt", "Hello", "--device", "cuda" if not torch.cuda.is_available() else "tpu"])
