"""Metric functions and the ``metrics.jsonl`` log."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    if not labels:
        return float("nan")
    return sum(int(p == y) for p, y in zip(predictions, labels)) / len(labels)


def class_accuracy(predictions: Sequence[int], labels: Sequence[int]) -> list[float]:
    """Accuracy on each class's examples, classes 0..max(label) (NaN for a class with none)."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    right, seen = [0] * (max(labels, default=-1) + 1), [0] * (max(labels, default=-1) + 1)
    for p, y in zip(predictions, labels):
        seen[y], right[y] = seen[y] + 1, right[y] + int(p == y)
    return [r / n if n else float("nan") for r, n in zip(right, seen)]


def macro_f1(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Unweighted mean of per-class F1 over every class seen in labels or predictions
    (scikit-learn's ``f1_score(average="macro")``). A class never predicted scores 0."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    classes = sorted(set(labels) | set(predictions))
    if not classes:
        return float("nan")
    scores = []
    for c in classes:
        tp = sum(1 for p, y in zip(predictions, labels) if p == c and y == c)
        wrong = sum(1 for p, y in zip(predictions, labels) if (p == c) != (y == c))  # false pos + false neg
        scores.append(2 * tp / (2 * tp + wrong) if tp or wrong else 0.0)
    return sum(scores) / len(scores)


def perplexity(mean_token_loss: float) -> float:
    """exp of the mean per-token cross-entropy (inf instead of an OverflowError)."""
    try:
        return math.exp(mean_token_loss)
    except OverflowError:
        return float("inf")


class MetricsLog:
    """Appends one JSON object per line to ``<output_dir>/metrics.jsonl`` and keeps them in memory."""

    def __init__(self, output_dir: str | Path | None):
        self.path = Path(output_dir) / "metrics.jsonl" if output_dir else None
        self.records: list[dict] = []

    def start_fresh(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def keep_only(self, keep: Callable[[dict], bool]) -> None:
        """Load the existing log, dropping records a resumed run will write again (atomic rewrite)."""
        if self.path is None or not self.path.is_file():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        self.records = [r for r in (json.loads(line) for line in lines if line.strip()) if keep(r)]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self.records), encoding="utf-8")
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        self.records.append(record)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
