"""Personalised accuracy, the score every system reports per client: the test accuracy of each class
weighted by the share of that class in the client's training data, Σ_c π_n(c)·acc(c). A shared global
model is scored per client the same way as pFedPG's personal models."""

from __future__ import annotations


def label_shares(prep, indices) -> list[float]:
    counts = [0] * prep.model.config.num_labels
    for i in indices:
        counts[prep.train.features[i]["labels"]] += 1
    return [c / len(indices) for c in counts]


def personal_accuracy(per_class: list[float], shares: list[float]) -> float:
    """Σ_c π(c)·acc(c) over the classes the test set has, π renormalised over them."""
    pairs = [(s, a) for s, a in zip(shares, per_class) if a == a and s > 0]  # a == a: not NaN
    total = sum(s for s, _ in pairs)
    return sum(s * a for s, a in pairs) / total if total else float("nan")
