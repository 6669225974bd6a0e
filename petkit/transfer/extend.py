"""Vocabulary extension: new whole-word tokens for a language the tokenizer splits badly.

The common recipe for adapting an LLM to a new language (Yamaguchi et al. 2024 find the simple
initialisations robust): add the language's frequent words to the tokenizer, give each new row the
mean of the rows of the sub-words the old tokenizer split it into (input embeddings, and output
embeddings too when they are not tied), then train the new rows, usually with an adapter, on text in
that language. The old rows stay exactly as they were: `train_new_rows` masks their gradient.

Words are added with their leading space (" word"), the way a byte-level BPE sees a word inside a
sentence, so the fertility (tokens per word) of running text drops; a word at the very start of a text
still splits into sub-words.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from petkit.core.errors import ConfigError

_WORD = re.compile(r"[^\W\d_]+")  # letters only: the words a tokenizer would split


@dataclass
class ExtendReport:
    added: int        # new tokens
    skipped: int      # words the vocabulary already had as one token
    first_new: int    # id of the first new row (rows below it are the old vocabulary)


def frequent_words(texts, n: int, min_length: int = 2) -> list[str]:
    """The n most frequent words (runs of letters, at least min_length long) in texts, most frequent first."""
    if n <= 0:
        raise ConfigError(f"n must be a positive number of words, got {n}")
    counts = Counter(w for t in texts for w in _WORD.findall(t) if len(w) >= min_length)
    return [w for w, _ in counts.most_common(n)]


def fertility(tokenizer, texts) -> float:
    """Tokens per whitespace-separated word over texts (no special tokens)."""
    words = sum(len(t.split()) for t in texts)
    if words == 0:
        raise ConfigError("fertility needs texts with at least one word")
    return sum(len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts) / words


def extend_vocabulary(model: nn.Module, tokenizer, words: list[str]) -> ExtendReport:
    """Add " word" tokens for words the tokenizer does not hold as one piece; mean-initialise their rows.

    Changes tokenizer and model in place. Nothing changes if a word is blank or holds whitespace."""
    from tokenizers import AddedToken

    bad = [w for w in words if not w or any(c.isspace() for c in w)]
    if bad:
        raise ConfigError(f"vocabulary words must be non-empty and hold no whitespace, got {bad[0]!r}")
    pieces = {w: tokenizer(" " + w, add_special_tokens=False).input_ids for w in dict.fromkeys(words)}
    new = [w for w, ids in pieces.items() if len(ids) > 1]
    if not new:
        raise ConfigError("every word is already a single token: nothing to add")
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    tied = outputs is not None and outputs.weight is inputs.weight
    first = len(tokenizer)
    if inputs.weight.shape[0] < first:
        raise ConfigError(f"the model has {inputs.weight.shape[0]} embedding rows but the tokenizer {first} "
                          "tokens: is this the model's own tokenizer?")
    means_in = torch.stack([inputs.weight[pieces[w]].mean(0) for w in new]).detach()
    means_out = None if tied or outputs is None else \
        torch.stack([outputs.weight[pieces[w]].mean(0) for w in new]).detach()
    added = tokenizer.add_tokens([AddedToken(" " + w, normalized=False) for w in new])
    if added != len(new):  # the tokenizer held some as added tokens already: the rows would not line up
        raise ConfigError(f"the tokenizer took {added} of {len(new)} new words; extend a fresh tokenizer")
    model.resize_token_embeddings(first + added, mean_resizing=False)  # rows are set below
    with torch.no_grad():
        model.get_input_embeddings().weight[first:first + added] = means_in
        if means_out is not None:
            model.get_output_embeddings().weight[first:first + added] = means_out
    return ExtendReport(added=added, skipped=len(pieces) - added, first_new=first)


def train_new_rows(model: nn.Module, first_new: int) -> list:
    """Make the embedding rows from first_new on trainable and keep every older row fixed (its gradient
    is zeroed, so an optimizer without weight decay never moves it). Returns the hook handles."""
    handles = []
    layers = {id(m.weight): m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    for layer in layers.values():
        if not 0 < first_new < layer.weight.shape[0]:
            raise ConfigError(f"first_new must point inside the embedding ({layer.weight.shape[0]} rows), got {first_new}")
        layer.weight.requires_grad_(True)
        handles.append(layer.weight.register_hook(lambda g: torch.cat([torch.zeros_like(g[:first_new]), g[first_new:]])))
    return handles
