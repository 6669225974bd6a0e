"""The text analogue of S²: a long text seen at several "scales" by the same frozen encoder.

Scale n covers the first n windows of the text (each window = ``window`` tokens with [CLS]/[SEP], the
encoder's native input), every window goes through the encoder on its own (as S²'s tiles do), and the
window embeddings are averaged per scale (S² area-pools tile features back to the base size). The
scales' features are concatenated: scale 1 alone is plain truncation. A text shorter than n windows
averages the windows it has.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from petkit.core.errors import ConfigError

from .pooling import encode


def _check_chunkings(chunkings: Sequence[int], max_chunks: int) -> list[int]:
    if isinstance(chunkings, (int, float)) or not len(chunkings):
        raise ConfigError(f"chunkings must be a non-empty list of integers >= 1, got {chunkings!r}")
    bad = [c for c in chunkings if isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= max_chunks]
    if bad:
        raise ConfigError(f"chunkings must be integers in 1..{max_chunks} (windows embedded), got {list(chunkings)!r}")
    return list(chunkings)


def text_windows(tokenizer, text: str, window: int, max_chunks: int) -> list[list[int]]:
    """Token ids of the first ``max_chunks`` consecutive windows of text, each with [CLS] … [SEP]."""
    body = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    step = window - 2
    pieces = [body[i:i + step] for i in range(0, max(len(body), 1), step)][:max_chunks]
    return [[tokenizer.cls_token_id, *piece, tokenizer.sep_token_id] for piece in pieces]


@torch.no_grad()
def window_embeddings(encoder: nn.Module, tokenizer, texts: Sequence[str], *, window: int = 128, max_chunks: int = 4,
                      batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm embeddings of each text's first ``max_chunks`` windows, (N, max_chunks, d), and which
    windows exist, (N, max_chunks) bool. The encoder runs frozen, in eval mode."""
    if not isinstance(window, int) or window < 3:
        raise ConfigError(f"window must be an int >= 3 (room for [CLS], [SEP] and a token), got {window!r}")
    if not isinstance(max_chunks, int) or max_chunks < 1:
        raise ConfigError(f"max_chunks must be a positive int, got {max_chunks!r}")
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise ConfigError("window_embeddings needs a BERT-style tokenizer with [CLS] and [SEP]")
    owners, sequences = [], []
    for i, text in enumerate(texts):
        for j, ids in enumerate(text_windows(tokenizer, text, window, max_chunks)):
            owners.append((i, j))
            sequences.append(ids)
    order = sorted(range(len(sequences)), key=lambda k: len(sequences[k]))  # similar lengths share a batch
    was_training = encoder.training
    encoder.eval()
    d = encoder.get_input_embeddings().weight.shape[1]
    out = torch.zeros(len(texts), max_chunks, d)
    present = torch.zeros(len(texts), max_chunks, dtype=torch.bool)
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            length = max(len(sequences[k]) for k in chunk)
            ids = torch.full((len(chunk), length), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, k in enumerate(chunk):
                ids[row, :len(sequences[k])] = torch.tensor(sequences[k])
                mask[row, :len(sequences[k])] = 1
            rows = encode(encoder, mask, input_ids=ids)
            for row, k in enumerate(chunk):
                out[owners[k]] = rows[row]
                present[owners[k]] = True
    finally:
        encoder.train(was_training)
    return out, present


def s2_text_features(windows: torch.Tensor, present: torch.Tensor, chunkings: Sequence[int] = (1, 2, 4)) -> torch.Tensor:
    """(N, d·len(chunkings)): per chunking n, the mean of the first n existing windows; concatenated."""
    chunkings = _check_chunkings(chunkings, windows.shape[1])
    feats = []
    for n in chunkings:
        weight = present[:, :n].unsqueeze(-1).to(windows.dtype)
        feats.append((windows[:, :n] * weight).sum(1) / weight.sum(1).clamp_min(1))
    return torch.cat(feats, dim=-1)
