"""Cipher-English: a synthetic "low-resource language" made from English by a letter substitution.

A seeded permutation of a-z with no fixed point is applied to every letter of every word (case kept;
digits, punctuation and spaces untouched). Being a permutation, it maps words to words one-to-one, so the
meaning and the syntax survive while the tokenisation and the model's lexical knowledge do not. This is
the small-scale stand-in for a real low-resource language (see docs/crosslingual.md); it tests
tokenisation and lexicon, not real language distance.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Sequence

from petkit.core.errors import ConfigError

WORD = re.compile(r"[A-Za-z]+")
NOISE_MODES = ("keep", "replace")


class Cipher:
    """A fixed word-level bijection English -> cipher-English, from a seeded letter derangement."""

    def __init__(self, seed: int = 0):
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"Cipher seed must be an int, got {seed!r}")
        self.seed = seed
        letters = string.ascii_lowercase
        rng = random.Random(seed)
        shuffled = list(letters)
        # a derangement: no letter maps to itself, so every word changes (a fixed letter would leave
        # words such as "a" or "i" readable English)
        while any(a == b for a, b in zip(letters, shuffled)):
            rng.shuffle(shuffled)
        target = "".join(shuffled)
        self._forward = str.maketrans(letters + letters.upper(), target + target.upper())
        self._inverse = str.maketrans(target + target.upper(), letters + letters.upper())

    def encode(self, text: str) -> str:
        return text.translate(self._forward)

    def decode(self, text: str) -> str:
        return text.translate(self._inverse)

    def noisy_decode(self, text: str, p: float, seed: int = 0, mode: str = "keep",
                     vocabulary: Sequence[str] | None = None) -> str:
        """Decode with word error rate p: each word independently, with probability p, is not translated.

        mode="keep" leaves the word ciphered (a copied unknown word); mode="replace" puts a random word of
        ``vocabulary`` (default: the decoded words of this text) in its place. The draw is seeded per call.
        """
        if not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ConfigError(f"noisy_decode needs a word error rate p in [0, 1], got {p!r}")
        if mode not in NOISE_MODES:
            raise ConfigError(f"noisy_decode mode must be one of {NOISE_MODES}, got {mode!r}")
        rng = random.Random(seed)
        words = vocabulary or [self.decode(w) for w in WORD.findall(text)] or [""]

        def one(match: re.Match) -> str:
            word = match.group(0)
            if rng.random() >= p:
                return self.decode(word)
            return word if mode == "keep" else rng.choice(words)

        return WORD.sub(one, text)


def cipher_dataset(records: Sequence[dict], cipher: Cipher, field: str = "text") -> list[dict]:
    """Copies of the records with only ``field`` ciphered (labels and every other field untouched)."""
    out = []
    for i, record in enumerate(records):
        if not isinstance(record.get(field), str):
            raise ConfigError(f"record {i} has no text field {field!r} to cipher")
        out.append({**record, field: cipher.encode(record[field])})
    return out
