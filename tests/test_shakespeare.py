"""The Shakespeare corpus: cleaning, the held-out split, and the pieces of it that ship inside kvlib."""
import math

import pytest
import torch

from kvlib.shakespeare import checkpoint, corpus


def test_strip_gutenberg_keeps_the_work_and_drops_the_boilerplate():
    raw = ("The Project Gutenberg EBook of Hamlet\r\nLicence blah\r\n*** START OF THIS PROJECT GUTENBERG EBOOK ***\r\n"
           "HAMLET\r\n\r\nHam.\r\nTo be, or not to be   \r\n*** END OF THIS PROJECT GUTENBERG EBOOK ***\r\nmore licence\r\n")
    assert corpus.strip_gutenberg(raw) == "HAMLET\n\nHam.\nTo be, or not to be\n"
    # Without markers, only lines naming Project Gutenberg go.
    assert corpus.strip_gutenberg("A\nfrom Project Gutenberg\nB\n") == "A\nB\n"


def test_read_and_split_works(tmp_path):
    for name in (*corpus.HELDOUT_WORKS, "hamlet", "macbeth"):
        (tmp_path / f"{name}_gut.txt").write_text(f"{name.upper()}\n")
    (tmp_path / "hamlet_gut_f.txt").write_text("a folio variant, skipped\n")
    works = corpus.read_works(tmp_path)
    assert list(works) == sorted(works) and set(works) == {*corpus.HELDOUT_WORKS, "hamlet", "macbeth"}
    train, heldout = corpus.split_works(works)
    assert train == "HAMLET\n\n\nMACBETH\n"
    assert all(w.upper() in heldout and w.upper() not in train for w in corpus.HELDOUT_WORKS)
    (tmp_path / "pericles_gut.txt").unlink()
    with pytest.raises(ValueError, match="held-out works"):
        corpus.read_works(tmp_path)
    with pytest.raises(FileNotFoundError, match="no \\*_gut.txt files"):
        corpus.read_works(tmp_path / "missing")


def test_words_and_coverage():
    assert corpus.words("O Romeo, Romeo! 'Tis o'er--wherefore?") == ["o", "romeo", "romeo", "tis", "o'er",
                                                                           "wherefore"]
    vocab = corpus.corpus_words()
    assert {"romeo", "wherefore", "thou", "denmark"} <= vocab and "internet" not in vocab
    assert corpus.word_coverage("thou art a villain") == 1.0
    assert corpus.word_coverage("thou internet smartphone blockchain") == 0.25
    assert corpus.word_coverage("") == 1.0


def test_shipped_heldout_ids_are_gpt2_tokens_of_the_heldout_works():
    ids = corpus.heldout_ids()
    assert ids.dtype == torch.long and ids.dim() == 1 and len(ids) > 50_000
    assert 0 <= int(ids.min()) and int(ids.max()) < 50257
    text = corpus.tokenizer().decode(ids[:2000].tolist())
    assert "Valentine" in text  # The Two Gentlemen of Verona opens the held-out text


def test_unigram_perplexity_by_hand():
    train = torch.tensor([0, 0, 1])  # counts + 1 over V=3: [3, 2, 1] / 6
    heldout = torch.tensor([0, 2])
    expected = math.exp(-(math.log(3 / 6) + math.log(1 / 6)) / 2)
    assert checkpoint.unigram_perplexity(train, heldout, vocab_size=3) == pytest.approx(expected)
