"""Pack short SFT examples into rows of up to ``max_length`` tokens, without attention across them.

A packed row is padding-free: examples are concatenated, ``position_ids`` restart at 0 at each
example, and the batch has **no** ``attention_mask``. transformers (5.x) then derives a
block-diagonal causal mask from the position resets (``masking_utils.find_packed_sequence_indices``),
but only when no KV cache is built: with ``use_cache=True`` the examples silently attend to each
other. So ``collate`` passes ``use_cache=False`` with every batch (the trainer calls
``model(**batch)``), and the label of each example's first token is -100 so it is never predicted
from the previous example's last token. The loss of a packed batch then equals that of the same
examples padded one per row (tests/test_sft_data.py checks this on a tiny Llama).

Rows are filled best-fit-decreasing: longest example first, each into the fullest row it still fits.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from petkit.core.errors import ConfigError

from .batches import IGNORE_INDEX


def pack_rows(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Indices of the examples in each row, best-fit-decreasing (deterministic: ties by index)."""
    if any(n > max_length for n in lengths):
        raise ConfigError(f"an example of {max(lengths)} tokens does not fit a packed row of {max_length}: "
                          f"truncate examples to max_length first")
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, row) sorted: the first with room >= n is the best fit
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            space, row = free.pop(k)
        else:
            space, row = max_length, len(rows)
            rows.append([])
        rows[row].append(i)
        if space - n > 0:
            bisect.insort(free, (space - n, row))
    return [sorted(r) for r in rows]  # source order inside a row


class PackedSFTDataset(Dataset):
    """Rows of packed examples from an ``SFTDataset`` (or any features with input_ids and labels)."""

    def __init__(self, examples, max_length: int):
        features = list(getattr(examples, "features", examples))
        self.pad_id = getattr(examples, "pad_id", 0)
        self.stats = getattr(examples, "stats", None)
        self.max_length = max_length
        self.rows = []
        for members in pack_rows([len(f["input_ids"]) for f in features], max_length):
            ids, labels, positions = [], [], []
            for i in members:
                f = features[i]
                ids += f["input_ids"]
                labels += [IGNORE_INDEX] + list(f["labels"][1:])  # never predicted across the boundary
                positions += range(len(f["input_ids"]))
            self.rows.append({"input_ids": ids, "labels": labels, "position_ids": positions,
                              "seq_lengths": [len(features[i]["input_ids"]) for i in members]})

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]

    def collate(self, rows: Sequence[dict]) -> dict:
        """Rows right-padded to the longest; the padding is its own segment (positions from 0), which
        no real token can attend to (it comes after them) and which is never scored."""
        longest = max(len(r["input_ids"]) for r in rows)
        ids, labels, positions = [], [], []
        for r in rows:
            pad = longest - len(r["input_ids"])
            ids.append(r["input_ids"] + [self.pad_id] * pad)
            labels.append(r["labels"] + [IGNORE_INDEX] * pad)
            positions.append(list(r["position_ids"]) + list(range(pad)))
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                "position_ids": torch.tensor(positions), "use_cache": False}

    def fill(self) -> float:
        """Share of row capacity holding tokens (1.0 = no padding would be needed)."""
        return sum(len(r["input_ids"]) for r in self.rows) / (len(self.rows) * self.max_length) if self.rows else 0.0
