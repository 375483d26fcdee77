"""Sentences to speak: the usage examples of Princeton WordNet 3.0.

Source: Debian package `wordnet-base` (`/usr/share/wordnet/data.{noun,verb,adj,adv}`); each synset's gloss
carries quoted usage examples written by the WordNet lexicographers ("he could sense her latent hostility to
him"): ~48,000 short pieces of everyday modern English, ~35,000 of 4-25 words. Licence: the WordNet 3.0
licence (Princeton University), a permissive BSD-style licence: use, copying, modification and distribution
for any purpose, without fee, provided the copyright notice is kept (see
/usr/share/doc/wordnet-base/copyright). The corpus stores the sentences it used in its `text` column.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

WORDNET_DIRS = (Path("/usr/share/wordnet"), Path("/usr/local/share/wordnet"))
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
LICENCE = "WordNet 3.0 licence (Princeton University; permissive, BSD-style)"

_QUOTED = re.compile(r'"([^"]+)"')
_ALLOWED = re.compile(r"^[A-Za-z0-9 ,.;:'?!\-]+$")


def find_wordnet() -> Path:
    for folder in WORDNET_DIRS:
        if all((folder / name).is_file() for name in WORDNET_FILES):
            return folder
    raise FileNotFoundError("WordNet's database was not found: install the Debian package `wordnet-base`")


def clean(example: str) -> str | None:
    """A usage example → a speakable sentence, or None if it is not one."""
    text = example.replace("`", "'").replace("''", "'").strip(" ;,")
    text = re.sub(r"\s+", " ", text)
    if not text or not _ALLOWED.match(text) or "--" in text or "..." in text:
        return None
    if re.search(r"\b(etc|e\.g|i\.e)\b", text):
        return None
    text = text[0].upper() + text[1:]
    if text[-1] not in ".?!":
        text += "."
    return text


def load_sentences(min_words: int = 4, max_words: int = 25, folder: str | Path | None = None) -> list[str]:
    """All distinct WordNet usage examples of `min_words`..`max_words` words, cleaned, in a fixed order."""
    folder = Path(folder) if folder else find_wordnet()
    seen: set[str] = set()
    sentences: list[str] = []
    for name in WORDNET_FILES:
        for line in (folder / name).read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "| " not in line:  # licence header lines start with two spaces
                continue
            for example in _QUOTED.findall(line.split("| ", 1)[1]):
                text = clean(example)
                if text is None or not min_words <= len(text.split()) <= max_words:
                    continue
                key = text.lower()
                if key not in seen:
                    seen.add(key)
                    sentences.append(text)
    return sentences


def split_sentences(sentences: list[str], fractions: dict[str, float], seed: int = 0) -> dict[str, list[str]]:
    """Disjoint pools of sentences per split (so no sentence is heard in two splits)."""
    order = np.random.default_rng(seed).permutation(len(sentences))
    pools, start = {}, 0
    names = list(fractions)
    for k, name in enumerate(names):
        end = len(order) if k == len(names) - 1 else start + int(round(fractions[name] * len(order)))
        pools[name] = [sentences[i] for i in order[start:end]]
        start = end
    return pools
