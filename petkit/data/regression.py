"""Regression records: ``{"text": str, "target": float | [float, ...]}``, checked and tokenised.

Targets stay in their original units here; the model standardises them (petkit.models.regression),
so a prediction comes back in the units the data was written in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from petkit.core.errors import ConfigError

from .batches import IGNORE_INDEX, pad_batch, pad_token_id

TARGET_FIELD = "target"


def target_values(row: dict, where: str, index: int) -> list[float]:
    """One record's targets as a list of finite floats (a bare number is one target)."""
    raw = row.get(TARGET_FIELD) if isinstance(row, dict) else None
    values = list(raw) if isinstance(raw, (list, tuple)) else [raw]
    text = str(row.get("text", ""))[:40] if isinstance(row, dict) else ""
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: row {index} ({text!r}) has a target that is not a number: {raw!r}") from None
    if not floats:
        raise ConfigError(f"{where}: row {index} ({text!r}) has an empty target list")
    bad = [v for v in floats if not math.isfinite(v)]
    if bad:
        raise ConfigError(f"{where}: row {index} ({text!r}) has a non-finite target {bad[0]} (NaN or inf): "
                          f"fix or drop that row")
    return floats


def check_targets(rows: Sequence[dict], where: str, outputs: int | None = None) -> int:
    """The number of targets per record; a ConfigError naming the first row that is not finite or
    does not have that many (``outputs``, or the first row's count)."""
    for i, row in enumerate(rows):
        n = len(target_values(row, where, i))
        outputs = n if outputs is None else outputs
        if n != outputs:
            raise ConfigError(f"{where}: row {i} has {n} target(s) but {outputs} were expected "
                              f"(every record needs the same number of targets as the head has outputs)")
    return outputs or 0


def target_names(outputs: int, names: Sequence[str] | None = None) -> list[str]:
    """The targets' names: the given ones (one per output), else target / target_0, target_1, ..."""
    if names is None:
        return ["target"] if outputs == 1 else [f"target_{i}" for i in range(outputs)]
    if len(names) != outputs:
        raise ConfigError(f"{len(names)} target names ({', '.join(names)}) for {outputs} target(s) per record")
    return list(names)


def target_stats(rows: Sequence[dict]) -> tuple[list[float], list[float]]:
    """Per-output mean and (population) standard deviation of the targets: what the model standardises by.
    A constant output gets std 1, so it is centred but not divided by zero."""
    values = torch.tensor([target_values(r, "targets", i) for i, r in enumerate(rows)], dtype=torch.float64)
    if not len(values):
        raise ConfigError("cannot standardise targets from an empty split")
    std = values.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return values.mean(0).tolist(), std.tolist()


class RegressionDataset(Dataset):
    """Tokenised regression records; ``labels`` are the float targets (a (batch, outputs) tensor)."""

    def __init__(self, tokenizer, examples: Sequence[dict], max_length: int = 128, outputs: int | None = None):
        self.pad_id = pad_token_id(tokenizer)
        self.features: list[dict] = []
        if not examples:
            return
        check_targets(examples, "regression data", outputs)
        texts = [ex["text"] for ex in examples]
        pairs = [ex["text_pair"] for ex in examples] if "text_pair" in examples[0] else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        for i, ex in enumerate(examples):
            self.features.append({**{k: enc[k][i] for k in keys}, "labels": target_values(ex, "regression data", i)})

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return self.features[i]

    def collate(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        batch = pad_batch([{k: v for k, v in f.items() if k != "labels"} for f in features], self.pad_id)
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.float32)
        return batch


class JointRegressionDataset(RegressionDataset):
    """VLA4CD-style records for a decoder that answers in text and in values at once:
    ``{"text": prompt, "answer": text, "target": [...]}``. ``lm_labels`` score the answer tokens (and
    the EOS after them) only; the head reads the last real token, the end of the answer."""

    def __init__(self, tokenizer, examples: Sequence[dict], max_length: int = 256, outputs: int | None = None):
        self.pad_id = pad_token_id(tokenizer)
        self.features = []
        if not examples:
            return
        check_targets(examples, "joint regression data", outputs)
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        for i, ex in enumerate(examples):
            if not isinstance(ex.get("answer"), str):
                raise ConfigError(f"joint regression data: row {i} has no text 'answer' (the text to learn)")
            prompt = tokenizer(ex["text"])["input_ids"]
            answer = tokenizer(ex["answer"], add_special_tokens=False)["input_ids"] + eos
            ids = (prompt + answer)[:max_length]
            lm_labels = ([IGNORE_INDEX] * len(prompt) + answer)[:max_length]
            self.features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "lm_labels": lm_labels,
                                  "labels": target_values(ex, "joint regression data", i)})
