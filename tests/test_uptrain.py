"""Uptraining a converted model: a run cut into pieces equals one run, and the command converts, trains, saves,
resumes and reloads what it says (on the shipped model, with tiny batches and a few steps)."""
import json
from dataclasses import replace

import pytest
import torch

import kvlib
from kvlib.model import mla
from kvlib.shakespeare import corpus, train, uptrain


def tiny_setup():
    config = kvlib.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=16, vocab_size=40)
    cfg = train.TrainConfig(n_layer=1, n_head=2, n_embd=16, context=16, batch_size=2, max_steps=6,
                            restricted_steps=0, lr=1e-2, min_lr=1e-3, warmup_steps=2, eval_every=10**9, seed=0)
    ids = torch.randint(0, 40, (400,), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    return config, cfg, ids


@pytest.mark.parametrize("convert", [lambda m: m, lambda m: mla.to_latent_attention(m, 4)], ids=["mha", "mla"])
def test_a_run_cut_into_pieces_equals_one_run(convert):
    config, cfg, ids = tiny_setup()
    heldout = ids[:64].long()
    one, _ = train.train(ids, heldout, cfg, progress=False, init=convert(kvlib.random_gpt2(config, seed=3)))
    state: dict = {}
    piece, h1 = train.train(ids, heldout, cfg, progress=False, init=convert(kvlib.random_gpt2(config, seed=3)),
                            resume=state, stop_step=2)
    assert state["step"] == 2 and h1["step"] == [0, 1] and not h1["eval_loss"]  # no evaluation before the end
    piece, h2 = train.train(ids, heldout, cfg, progress=False, init=piece, resume=state)
    assert h2["step"] == [2, 3, 4, 5] and len(h2["eval_loss"]) == 1 and h2["tokens_seen"] == 4 * 2 * 16
    for (name, a), b in zip(one.state_dict().items(), piece.state_dict().values()):
        assert torch.equal(a, b), name


def test_convert_kinds_and_names():
    model = kvlib.random_gpt2(kvlib.GPT2Config(n_layer=1, n_head=4, n_embd=16, n_positions=8, vocab_size=30))
    assert uptrain.convert(model, "gqa", n_kv_head=1).config.n_kv_head == 1
    assert uptrain.convert(model, "mla", kv_lora_rank=4).kv_lora_rank == 4
    control = uptrain.convert(model, "mha")
    assert control is not model and all(torch.equal(a, b) for a, b in zip(control.state_dict().values(),
                                                                           model.state_dict().values()))
    assert [uptrain.run_name(*a) for a in (("mha",), ("gqa", 2), ("mla", 1, 16))] == ["mha", "gqa2", "mla16"]
    with pytest.raises(ValueError, match="kind must be one of"):
        uptrain.convert(model, "mqa")


def test_the_command_trains_in_pieces_and_reloads(tmp_path, monkeypatch):
    # The shipped model, a few steps of 2 × 32 tokens, and a short held-out text: the whole command in seconds.
    monkeypatch.setattr(uptrain, "DEFAULTS", replace(uptrain.DEFAULTS, batch_size=2, context=32, max_steps=3))
    monkeypatch.setattr(uptrain, "_heldout", lambda: corpus.heldout_ids()[:200])
    data = tmp_path / "data"
    data.mkdir()
    torch.save(corpus.heldout_ids()[:5000].to(torch.int32), data / "train_ids.pt")  # stand-in text
    common = ["--kind", "gqa", "--n-kv-head", "2", "--data", str(data), "--threads", "1"]
    first = uptrain.main(common + ["--until", "1", "--out", str(tmp_path / "a")])
    assert first["steps_done"] == 1 and "heldout_ppl" not in first
    with pytest.raises(ValueError, match="pass --resume"):
        uptrain.main(common + ["--out", str(tmp_path / "a")])
    done = uptrain.main(common + ["--resume", "--out", str(tmp_path / "a")])
    whole = uptrain.main(common + ["--out", str(tmp_path / "b")])
    assert done["steps_done"] == whole["steps_done"] == 3 and len(done["pieces"]) == 2
    assert done["heldout_ppl"] == pytest.approx(whole["heldout_ppl"], rel=1e-6)
    assert [v for p in done["pieces"] for v in p["train_loss"]] == pytest.approx(whole["pieces"][0]["train_loss"])
    model, info = uptrain.load(tmp_path / "a")
    assert model.config.n_kv_head == 2 and info == json.loads((tmp_path / "a" / uptrain.INFO_NAME).read_text())
    with pytest.raises(ValueError, match="is finished"):
        uptrain.main(common + ["--resume", "--out", str(tmp_path / "a")])
    with pytest.raises(ValueError, match="other settings"):
        uptrain.main(["--kind", "mla", "--data", str(data), "--resume", "--out", str(tmp_path / "a")])
