"""petkit.train.generative: answer normalisation, exact match, ROUGE-L, JSON fields, greedy generation."""

from __future__ import annotations

import pytest
import torch

from petkit.data import prompt_ids
from petkit.testing import tiny_chat_tokenizer, tiny_llama
from petkit.train.generative import (
    exact_match,
    exact_match_rate,
    generate_answers,
    generative_scores,
    json_field_accuracy,
    normalize_answer,
    rouge_l,
)


def test_normalize_answer():
    assert normalize_answer("  The Positive.  ") == "positive"
    assert normalize_answer("An apple, a PEAR!") == "apple pear"
    assert normalize_answer("theory of\n\tthe   art") == "theory of art"  # "the" only as a word
    assert normalize_answer("") == ""


def test_exact_match_and_rate():
    assert exact_match("Positive.", "positive") == 1.0
    assert exact_match("positive review", "positive") == 0.0
    assert exact_match_rate(["Sports", "the world", "tech"], ["sports", "world", "business"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        exact_match_rate(["a", "b"], ["a"])


def test_rouge_l_hand_computed():
    pytest.importorskip("rouge_score")
    assert rouge_l(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    # LCS "cat mat" = 2 words: precision 2/2, recall 2/6, F = 2PR/(P+R) = 0.5
    assert rouge_l(["cat mat"], ["the cat sat on the mat"]) == pytest.approx(0.5)
    assert rouge_l(["dog"], ["cat"]) == 0.0
    assert rouge_l(["cat mat", "dog"], ["the cat sat on the mat", "dog"]) == pytest.approx(0.75)
    scores = generative_scores(["Sports."], ["sports"])
    assert scores == {"exact_match": 1.0, "rouge_l": 1.0, "examples": 1}


def test_json_field_accuracy():
    refs = ['{"type": "location", "subtype": "city"}'] * 3
    preds = ['{"type": "location", "subtype": "city"}', '{"type": "location", "subtype": "country"}', "location city"]
    assert json_field_accuracy(preds, refs) == pytest.approx({"valid_json": 2 / 3, "type": 2 / 3, "subtype": 1 / 3})


def test_generate_answers_is_greedy_batched_and_budgeted():
    tok = tiny_chat_tokenizer()
    model = tiny_llama(seed=3)
    records = [{"prompt": "what is two plus two?", "completion": "four"}, {"prompt": "hi", "completion": "hello"}]
    answers = generate_answers(model, tok, records, max_new_tokens=5, batch_size=2)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    for record, answer in zip(records, answers):
        # The same as a hand-written greedy loop on the unpadded prompt: left padding changes nothing.
        ids = torch.tensor([prompt_ids(tok, record)])
        new = []
        with torch.no_grad():
            for _ in range(5):
                nxt = model(input_ids=ids).logits[0, -1].argmax().item()
                if nxt == tok.eos_token_id:
                    break
                new.append(nxt)
                ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        assert answer == tok.decode(new, skip_special_tokens=True).strip()
        assert len(tok(answer, add_special_tokens=False)["input_ids"]) <= 5
    assert not model.training
