"""The class prompts of CoOp as token slots: ``[CLS] v_1 … v_M name suffix [SEP]`` (or the name in
front of / in the middle of the context), padded to one length. The token embeddings of everything but
the context are fixed; the context slots are overwritten by learnable vectors before the encoder runs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from petkit.core.errors import ConfigError


@dataclass
class PromptSlots:
    input_ids: torch.Tensor       # (K, L) token ids; context slots hold a placeholder id
    attention_mask: torch.Tensor  # (K, L)
    ctx_positions: torch.Tensor   # (K, M) where each class's context vectors go


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def context_token_ids(tokenizer, words: str) -> list[int]:
    """Token ids of the init words (they fix M when the context is initialised from words)."""
    ids = _ids(tokenizer, words)
    if not ids:
        raise ConfigError(f"ctx_init {words!r} tokenizes to nothing")
    return ids


def build_slots(tokenizer, class_names: list[str], n_ctx: int, position: str, suffix: str) -> PromptSlots:
    """Token layout of every class prompt. A name that tokenizes to nothing is refused by index."""
    if not class_names:
        raise ConfigError("class_names is empty: CoOp needs at least one class")
    names = [_ids(tokenizer, name) if isinstance(name, str) else [] for name in class_names]
    empty = [i for i, ids in enumerate(names) if not ids]
    if empty:
        raise ConfigError(f"class names {[class_names[i] for i in empty]!r} (index {empty}) tokenize to nothing; "
                          f"give each class a name in words")
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None or tokenizer.pad_token_id is None:
        raise ConfigError("CoOp prompts need a BERT-style tokenizer with [CLS], [SEP] and [PAD] tokens")
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    tail = _ids(tokenizer, suffix) + [sep]
    half = n_ctx // 2
    rows, positions = [], []
    for name in names:
        if position == "end":
            before, after = n_ctx, 0
        elif position == "front":
            before, after = 0, n_ctx
        else:  # middle: M/2 context vectors, the name, the other M/2
            before, after = half, n_ctx - half
        row = [cls] + [pad] * before + name + [pad] * after + tail
        start_after = 1 + before + len(name)
        positions.append(list(range(1, 1 + before)) + list(range(start_after, start_after + after)))
        rows.append(row)
    length = max(map(len, rows))
    input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, :len(row)] = torch.tensor(row)
        attention_mask[i, :len(row)] = 1
    return PromptSlots(input_ids, attention_mask, torch.tensor(positions, dtype=torch.long))
