"""Scoring generated answers: normalised exact match, ROUGE-L, JSON fields, and greedy generation.

    answers = generate_answers(model, tokenizer, data.test[:200], max_new_tokens=16)
    scores = generative_scores(answers, [reference_answer(r) for r in data.test[:200]])

Normalisation (SQuAD-style): lower case, punctuation removed, the articles a/an/the dropped,
whitespace collapsed, so "The Positive." matches "positive". ROUGE-L comes from Google's
``rouge-score`` package (F-measure of the longest common subsequence of words).
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Sequence

import torch

from petkit.core.errors import ConfigError

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def _pairs(predictions: Sequence[str], references: Sequence[str]) -> list[tuple[str, str]]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    return list(zip(predictions, references))


def exact_match_rate(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of exact matches (the accuracy of generated label words); NaN for no examples."""
    pairs = _pairs(predictions, references)
    return sum(exact_match(p, r) for p, r in pairs) / len(pairs) if pairs else float("nan")


def rouge_l(predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = False) -> float:
    """Mean ROUGE-L F-measure (``rouge-score``; its tokenizer lower-cases and splits on non-alphanumerics)."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise ConfigError("ROUGE-L needs the rouge-score package: pip install rouge-score") from None
    pairs = _pairs(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
    return sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in pairs) / len(pairs) if pairs else float("nan")


def json_field_accuracy(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """For structured answers (a JSON object each): ``valid_json`` (share of predictions that parse
    to an object) and, per key of the references, the share of predictions with the equal value."""
    pairs = _pairs(predictions, references)
    if not pairs:
        return {}
    keys = list(dict.fromkeys(k for _, r in pairs for k in json.loads(r)))
    valid, right = 0, dict.fromkeys(keys, 0)
    for p, r in pairs:
        try:
            got = json.loads(p.strip())
        except json.JSONDecodeError:
            continue
        if not isinstance(got, dict):
            continue
        valid += 1
        for k, v in json.loads(r).items():
            right[k] += int(got.get(k) == v)
    return {"valid_json": valid / len(pairs), **{k: n / len(pairs) for k, n in right.items()}}


def generative_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    return {"exact_match": exact_match_rate(predictions, references), "rouge_l": rouge_l(predictions, references),
            "examples": len(predictions)}


@torch.no_grad()
def generate_answers(model, tokenizer, records: Sequence[dict], max_new_tokens: int = 32, batch_size: int = 8,
                     chat_template: bool | None = None) -> list[str]:
    """Greedy answers to SFT records, each at most ``max_new_tokens`` tokens, stopping at EOS.

    The prompt is built exactly as in training (``petkit.data.prompt_ids``), left-padded in batches;
    the answer is the decoded new tokens without special tokens, stripped. The model's mode is restored.
    """
    from petkit.data import pad_token_id, prompt_ids

    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    pad, device = pad_token_id(tokenizer), next(model.parameters()).device
    was_training = model.training
    model.eval()
    answers = []
    try:
        for start in range(0, len(records), batch_size):
            prompts = [prompt_ids(tokenizer, r, chat_template) for r in records[start : start + batch_size]]
            longest = max(len(p) for p in prompts)
            ids = torch.tensor([[pad] * (longest - len(p)) + p for p in prompts], device=device)
            mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts], device=device)
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
            answers += [tokenizer.decode(row[longest:], skip_special_tokens=True).strip() for row in out]
    finally:
        model.train(was_training)
    return answers
