"""Picking each running sequence's next token, and cutting its text at a stop string.

Every row has its own temperature, top_p and random generator (seeded per request when asked), so a
request's output does not depend on which other requests share its batch: greedy rows are exact, and
a seeded sampled row draws from its own generator only.
"""

from __future__ import annotations

import torch


def next_tokens(logits: torch.Tensor, temperatures: list[float], top_ps: list[float],
                generators: list[torch.Generator | None]) -> list[int]:
    """One token per row of (rows, vocab) logits: argmax where the temperature is 0, else a nucleus sample."""
    picks = logits.argmax(-1).tolist()
    sampled = [i for i, t in enumerate(temperatures) if t > 0]
    if not sampled:
        return picks
    rows = torch.tensor(sampled)
    scaled = logits.index_select(0, rows).float() / torch.tensor([temperatures[i] for i in sampled]).unsqueeze(1)
    probs = torch.softmax(scaled, -1)
    for k, i in enumerate(sampled):
        picks[i] = _nucleus(probs[k], top_ps[i], generators[i])
    return picks


def _nucleus(probs: torch.Tensor, top_p: float, generator: torch.Generator | None) -> int:
    """A draw from the smallest set of most likely tokens whose mass reaches top_p."""
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # keep a token if the mass before it is below top_p (so the most likely one always stays)
        keep = (sorted_probs.cumsum(0) - sorted_probs) < top_p
        sorted_probs = sorted_probs * keep
        return int(order[torch.multinomial(sorted_probs, 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


def find_stop(text: str, stops: list[str]) -> int | None:
    """Where the earliest stop string starts in text, or None."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def safe_prefix(text: str, stops: list[str]) -> int:
    """How much of text can be sent now: everything but a trailing piece that could still become a stop
    string once more tokens arrive, or a character the tokenizer has not finished (U+FFFD)."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, end), 0, -1):
            if text[end - k:end] == s[:k]:
                hold = max(hold, k)
                break
    return end - hold
