"""CLP-Transfer: a model moved to a new tokenizer through a helper model's similarities."""

from __future__ import annotations

import pytest
import torch

from petkit.core.errors import ConfigError
from petkit.testing import tiny_bert, tiny_chat_tokenizer, tiny_llama, tiny_tokenizer
from petkit.transfer import clp_rows, clp_transfer


def vocabularies():
    source_vocab = {"a": 0, "b": 1, "c": 2, "d": 3}
    target_vocab = {"b": 0, "x": 1, "a": 2, "y": 3}
    torch.manual_seed(0)
    return torch.randn(4, 5), source_vocab, torch.randn(4, 3), target_vocab


def test_overlap_rows_are_copied_and_the_others_are_convex_combinations_of_them():
    """Catches similarities measured in the source's space, weights not normalised, or overlap rows
    taken from the helper."""
    source, sv, helper, tv = vocabularies()
    rows, report = clp_rows(source, sv, helper, tv)
    assert (report.overlap, report.combined + report.fallback, report.target_size) == (2, 2, 4)
    assert torch.equal(rows[0], source[1]) and torch.equal(rows[2], source[0])  # b and a
    keys = torch.nn.functional.normalize(helper[[0, 2]], dim=1)  # the overlap in target order: b (0), a (2)
    for t in (1, 3):
        sim = (torch.nn.functional.normalize(helper[t], dim=0) @ keys.T).clamp_min(0)
        if sim.sum() > 0:
            expected = (sim / sim.sum()) @ source[[1, 0]]
            assert torch.allclose(rows[t], expected, atol=1e-6)


def test_keep_follows_the_released_code_and_no_overlap_is_refused():
    source, sv, helper, tv = vocabularies()
    rows, _ = clp_rows(source, sv, helper, tv, negative="keep")
    keys = torch.nn.functional.normalize(helper[[0, 2]], dim=1)
    sim = torch.nn.functional.normalize(helper[1], dim=0) @ keys.T
    assert torch.allclose(rows[1], (sim / sim.sum()) @ source[[1, 0]], atol=1e-5)
    with pytest.raises(ConfigError, match="share no token"):
        clp_rows(source, sv, helper, {"p": 0, "q": 1})
    with pytest.raises(ConfigError, match="negative must be one of"):
        clp_rows(source, sv, helper, tv, negative="abs")
    with pytest.raises(ConfigError, match="fewer than the target tokenizer's ids"):
        clp_rows(source, sv, helper[:2], tv)


def test_a_decoder_moves_to_another_tokenizer_and_runs_with_it():
    """tiny Llama with the chat tokenizer → the BERT-style tokenizer (a helper BERT uses it): the shared
    characters keep their rows, the model reads the new ids."""
    model, source_tok, target_tok = tiny_llama(), tiny_chat_tokenizer(), tiny_tokenizer()
    before = model.get_input_embeddings().weight.detach().clone()
    report = clp_transfer(model, source_tok, tiny_bert(), target_tok)
    after = model.get_input_embeddings().weight
    assert after.shape[0] == report.target_size == len(target_tok.get_vocab())
    for char in "abcxyz0.":
        assert torch.equal(after[target_tok.convert_tokens_to_ids(char)], before[source_tok.convert_tokens_to_ids(char)])
    ids = target_tok("hello world", return_tensors="pt")["input_ids"]
    assert model(input_ids=ids).logits.shape[-1] == report.target_size
    assert model.config.pad_token_id == target_tok.pad_token_id


def test_overlap_only_leaves_the_rest_at_the_fallback():
    source, sv, helper, tv = vocabularies()
    full, _ = clp_rows(source, sv, helper, tv)
    only, report = clp_rows(source, sv, helper, tv, combine=False)
    assert report.fallback == 2 and torch.equal(only[0], full[0])
    assert not torch.allclose(only[1], full[1])
