"""Cipher-English (petkit.data.cipher): bijective, exact round trip, noisy decoding at the asked rate."""

import re

import pytest

from petkit.core.errors import ConfigError
from petkit.data.cipher import Cipher, cipher_dataset

TEXT = "The film's 2 stars: a slow, dull MESS -- but I liked the score!"
WORDS = ("the quick brown fox jumps over a lazy dog and i said it was not bad at all but "
         "rather good zebra yak xylophone queen").split()


def test_word_map_is_a_bijection_that_changes_every_word():
    # catches: a letter map that is not a permutation (two words collide) or that keeps letters fixed
    c = Cipher(3)
    encoded = [c.encode(w) for w in WORDS]
    assert len(set(encoded)) == len(set(WORDS))
    assert all(e != w for e, w in zip(encoded, WORDS))
    letters = "abcdefghijklmnopqrstuvwxyz"
    assert sorted(c.encode(letters)) == list(letters)


def test_round_trip_is_exact_and_keeps_case_digits_punctuation():
    # catches: a decode that is not the inverse, or case/punctuation lost
    c = Cipher(0)
    enc = c.encode(TEXT)
    assert enc != TEXT
    assert c.decode(enc) == TEXT
    assert c.noisy_decode(enc, 0.0, seed=5) == TEXT
    assert re.sub(r"[A-Za-z]", "", enc) == re.sub(r"[A-Za-z]", "", TEXT)
    assert enc.split()[4] == enc.split()[4].lower() and enc.split()[7].isupper()


def test_seeds_give_different_ciphers():
    assert Cipher(0).encode("sentiment") != Cipher(1).encode("sentiment")


@pytest.mark.parametrize("mode", ["keep", "replace"])
def test_noisy_decode_errs_on_about_p_of_the_words(mode):
    # catches: p applied per text or per letter instead of per word, or the error flag inverted
    c = Cipher(0)
    words = [w for w in WORDS * 40]
    noisy = c.noisy_decode(c.encode(" ".join(words)), 0.1, seed=1, mode=mode).split()
    assert len(noisy) == len(words)
    wrong = sum(a != b for a, b in zip(noisy, words)) / len(words)
    assert 0.06 < wrong < 0.14
    if mode == "keep":  # an error leaves the cipher word in place
        assert all(n == w or n == c.encode(w) for n, w in zip(noisy, words))


def test_cipher_dataset_changes_the_text_only():
    # catches: labels (or other fields) ciphered too, or the input records mutated
    c = Cipher(0)
    records = [{"text": "good film", "label": 1, "id": "a"}, {"text": "bad film", "label": 0, "id": "b"}]
    out = cipher_dataset(records, c)
    assert [r["label"] for r in out] == [1, 0] and [r["id"] for r in out] == ["a", "b"]
    assert [c.decode(r["text"]) for r in out] == ["good film", "bad film"]
    assert records[0]["text"] == "good film"


def test_bad_input_is_a_config_error():
    c = Cipher(0)
    with pytest.raises(ConfigError, match="p"):
        c.noisy_decode("x", 1.5)
    with pytest.raises(ConfigError, match="mode"):
        c.noisy_decode("x", 0.1, mode="drop")
    with pytest.raises(ConfigError, match="text"):
        cipher_dataset([{"label": 1}], c)
    with pytest.raises(ConfigError, match="seed"):
        Cipher("0")


def test_no_letter_is_left_in_place_for_any_seed():
    # catches: a plain shuffle (a fixed letter leaves words such as "a" or "i" readable English)
    letters = "abcdefghijklmnopqrstuvwxyz"
    for seed in range(50):
        assert all(a != b for a, b in zip(letters, Cipher(seed).encode(letters))), seed
