"""Vocabulary extension (petkit.transfer.extend) with SmolLM2's real tokenizer and a tiny random Llama of
its vocabulary size: mean-initialised rows, old rows untouched (after resizing and after training),
exact round trips, lower fertility, and the refusals."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import petkit
from petkit.core.errors import ConfigError
from petkit.data.cipher import Cipher
from petkit.models import load_tokenizer
from petkit.train import TrainConfig, train
from petkit.transfer.extend import extend_vocabulary, fertility, frequent_words, train_new_rows

TEXTS = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog"]


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    return load_tokenizer("smollm2")


def tiny(vocab: int, tied: bool) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied)
    return LlamaForCausalLM(config).eval()


def fresh(tokenizer):
    import copy
    return copy.deepcopy(tokenizer)


@pytest.mark.parametrize("tied", [True, False])
def test_new_rows_are_subword_means_and_old_rows_stay(smollm2_tokenizer, tied):
    tok = fresh(smollm2_tokenizer)
    model = tiny(len(tok), tied)
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()
    words = [Cipher(0).encode(w) for w in ("cat", "dog", "mat")]
    pieces = [tok(" " + w, add_special_tokens=False).input_ids for w in words]
    report = extend_vocabulary(model, tok, words)
    assert report.added == 3 and report.first_new == len(before_in)
    new_in = model.get_input_embeddings().weight
    assert torch.equal(new_in[:report.first_new], before_in)
    for i, ids in enumerate(pieces):
        assert torch.allclose(new_in[report.first_new + i], before_in[ids].mean(0))
        out_row = model.get_output_embeddings().weight[report.first_new + i]
        assert torch.allclose(out_row, (before_in if tied else before_out)[ids].mean(0))
    assert (model.get_output_embeddings().weight is new_in) == tied


def test_round_trip_is_exact_and_fertility_drops(smollm2_tokenizer):
    tok, cipher = fresh(smollm2_tokenizer), Cipher(0)
    texts = [cipher.encode(t) for t in TEXTS]
    before = fertility(tok, texts)
    extend_vocabulary(tiny(len(tok), True), tok, frequent_words(texts, 20))
    assert fertility(tok, texts) < before / 1.5
    for text in texts + [cipher.encode("the cats, sat.")]:  # words inside longer words and before punctuation
        assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text


def test_training_moves_only_the_new_rows(smollm2_tokenizer):
    tok = fresh(smollm2_tokenizer)
    model = tiny(len(tok), True)
    report = extend_vocabulary(model, tok, [Cipher(0).encode(w) for w in ("cat", "dog")])
    adapted = petkit.adapt(model, petkit.LoraConfig(r=2, targets="all-linear"))
    train_new_rows(model, report.first_new)
    before = model.get_input_embeddings().weight.detach().clone()
    ids = tok([" " + Cipher(0).encode("the cat and the dog")] * 4, add_special_tokens=False, return_tensors="pt").input_ids
    data = [{"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row} for row in ids]
    train(adapted, data, TrainConfig(lr=1e-2, max_steps=3, batch_size=2, eval_every_epoch=False), task="causal_lm",
          progress=False)
    after = model.get_input_embeddings().weight.detach()
    assert torch.equal(after[:report.first_new], before[:report.first_new])
    assert not torch.equal(after[report.first_new:], before[report.first_new:])


def test_frequent_words_counts_letter_runs():
    assert frequent_words(TEXTS, 3) == ["the", "cat", "sat"]
    assert "a" not in frequent_words(TEXTS, 100)  # one-letter words are left to the old tokens


def test_refusals_change_nothing(smollm2_tokenizer):
    tok = fresh(smollm2_tokenizer)
    model = tiny(len(tok), True)
    size = len(tok)
    with pytest.raises(ConfigError, match="whitespace"):
        extend_vocabulary(model, tok, ["good", "two words"])
    with pytest.raises(ConfigError, match="already a single token"):
        extend_vocabulary(model, tok, ["the"])
    with pytest.raises(ConfigError, match="embedding rows"):
        extend_vocabulary(tiny(100, True), tok, [Cipher(0).encode("cat")])
    assert len(tok) == size and model.get_input_embeddings().weight.shape[0] == size
    with pytest.raises(ConfigError, match="first_new"):
        train_new_rows(model, size + 5)
    with pytest.raises(ConfigError, match="positive"):
        frequent_words(TEXTS, 0)
    with pytest.raises(ConfigError, match="at least one word"):
        fertility(tok, [""])
