"""Tokenisation and collation into model-ready tensors.

Examples are tokenised once, up front, without padding; ``collate`` pads each batch only to its own
longest sequence. The datasets are plain map-style torch Datasets that carry their collate function,
so a trainer can order batches itself (seeded per epoch) and skip already-seen batches on resume.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from petkit.core.errors import ConfigError

IGNORE_INDEX = -100  # label value the HF losses skip
_PAD_VALUES = {"attention_mask": 0, "token_type_ids": 0, "labels": IGNORE_INDEX, "lm_labels": IGNORE_INDEX}


def pad_token_id(tokenizer) -> int:
    """The id used for padding. Decoder tokenizers often have no pad token: fall back to EOS.

    Padded positions are masked out and never scored, so the id itself does not matter.
    """
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


def pad_batch(features: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack a list of feature dicts, right-padding every list-valued field to the batch maximum."""
    batch = {}
    for key in features[0]:
        values = [f[key] for f in features]
        if not isinstance(values[0], (list, tuple)):
            batch[key] = torch.tensor(values)
            continue
        longest = max(len(v) for v in values)
        fill = _PAD_VALUES.get(key, pad_id)
        batch[key] = torch.tensor([list(v) + [fill] * (longest - len(v)) for v in values], dtype=torch.long)
    return batch


class ClassificationDataset(Dataset):
    """Tokenised ``{"text", "text_pair"?, "label"}`` examples; items carry ``labels`` for the HF loss."""

    def __init__(self, tokenizer, examples: Sequence[dict], max_length: int = 128):
        self.pad_id = pad_token_id(tokenizer)
        self.features: list[dict] = []
        if not examples:
            return
        texts = [ex["text"] for ex in examples]
        pairs = [ex["text_pair"] for ex in examples] if "text_pair" in examples[0] else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        for i, ex in enumerate(examples):
            self.features.append({**{k: enc[k][i] for k in keys}, "labels": int(ex["label"])})

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return self.features[i]

    def collate(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        return pad_batch(features, self.pad_id)


class LMBlockDataset(Dataset):
    """Fixed-length token blocks of one running text; ``labels`` equal ``input_ids`` (the model shifts)."""

    def __init__(self, blocks: list[list[int]], pad_id: int):
        self.blocks = blocks
        self.pad_id = pad_id

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.blocks[i]}

    def collate(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        ids = [f["input_ids"] for f in features]
        return pad_batch(
            [{"input_ids": x, "attention_mask": [1] * len(x), "labels": x} for x in ids], self.pad_id
        )


def lm_blocks(tokenizer, text: str | Sequence, block_length: int, drop_last: bool = False) -> LMBlockDataset:
    """Tokenise a text and cut it into ``block_length``-token blocks.

    ``text`` may be one string or a list of chunks (strings or ``{"text": ...}`` dicts, as in
    ``TaskData.train``), joined with blank lines. The last, shorter block is kept (and padded at
    collation) unless ``drop_last``. No special tokens are added: blocks are windows of running text.
    """
    if block_length < 2:
        raise ConfigError(f"block_length must be >= 2 (a block needs a token to predict), got {block_length}")
    if not isinstance(text, str):
        text = "\n\n".join(c["text"] if isinstance(c, dict) else c for c in text)
    # verbose=False: the whole text is longer than model_max_length on purpose; we cut it ourselves.
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    blocks = [ids[i : i + block_length] for i in range(0, len(ids), block_length)]
    if blocks and (len(blocks[-1]) < 2 or (drop_last and len(blocks[-1]) < block_length)):
        blocks.pop()
    return LMBlockDataset(blocks, pad_token_id(tokenizer))


def _loader(dataset, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    # An explicit generator keeps the shuffle reproducible and leaves the global torch RNG untouched.
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(seed), collate_fn=dataset.collate)


def classification_batches(
    tokenizer, examples: Sequence[dict], batch_size: int, max_length: int = 128,
    shuffle: bool = False, seed: int = 0,
) -> DataLoader:
    """A DataLoader of padded classification batches (``input_ids``, ``attention_mask``, ``labels``, …)."""
    return _loader(ClassificationDataset(tokenizer, examples, max_length), batch_size, shuffle, seed)


def lm_batches(
    tokenizer, text: str | Sequence, block_length: int, batch_size: int,
    shuffle: bool = False, seed: int = 0,
) -> DataLoader:
    """A DataLoader of causal-LM batches of ``block_length``-token blocks (see ``lm_blocks``)."""
    return _loader(lm_blocks(tokenizer, text, block_length), batch_size, shuffle, seed)
