"""Deterministic shuffles, stratified splits and subsamples.

The order is derived from SHA-256 of ``(salt, seed, index)`` rather than from ``random`` or numpy:
neither promises the same shuffle across Python/numpy versions, and Python's ``hash()`` of strings
changes per process. Same seed, same split, on any machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def permutation(n: int, seed: int, salt: str = "") -> list[int]:
    """A seeded permutation of ``range(n)`` that is identical on every platform and version."""

    def key(i: int) -> bytes:
        return hashlib.sha256(f"{salt}\x00{seed}\x00{i}".encode()).digest()

    return sorted(range(n), key=key)


def shuffled(items: Sequence, seed: int, salt: str = "") -> list:
    return [items[i] for i in permutation(len(items), seed, salt)]


def _largest_remainder(sizes: list[int], total: int) -> list[int]:
    """Share ``total`` among groups in proportion to ``sizes``, summing exactly to ``total``."""
    whole = sum(sizes)
    exact = [total * s / whole for s in sizes]
    counts = [int(x) for x in exact]
    # Hand the leftover units to the largest fractional parts; ties go to the earlier group.
    order = sorted(range(len(sizes)), key=lambda g: (-(exact[g] - counts[g]), g))
    for g in order[: total - sum(counts)]:
        counts[g] += 1
    return counts


def _groups_by_label(examples: Sequence[dict]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(ex["label"], []).append(i)
    return dict(sorted(groups.items()))


def stratified_split(
    examples: Sequence[dict], fractions: Sequence[float], seed: int, salt: str = "split"
) -> list[list[dict]]:
    """Split labelled examples into parts of the given fractions, keeping label proportions.

    Every part after the first gets ``round(fraction * class size)`` of each class; the first part
    takes the rest, so no example is lost. Each part is returned in a seeded shuffled order.
    """
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"split fractions must sum to 1, got {list(fractions)}")
    parts: list[list[int]] = [[] for _ in fractions]
    for label, idx in _groups_by_label(examples).items():
        idx = shuffled(idx, seed, f"{salt}/label={label}")
        start = len(idx)
        for p in range(len(fractions) - 1, 0, -1):
            take = round(fractions[p] * len(idx))
            parts[p].extend(idx[start - take : start])
            start -= take
        parts[0].extend(idx[:start])
    return [[examples[i] for i in shuffled(part, seed, f"{salt}/part={p}")] for p, part in enumerate(parts)]


def stratified_sample(examples: Sequence[dict], n: int | None, seed: int, salt: str = "sample") -> list[dict]:
    """A seeded subsample of ``n`` labelled examples with the same label mix (all of them if n is None)."""
    if n is None or n >= len(examples):
        return list(examples)
    if n < 0:
        raise ValueError(f"sample size must be >= 0, got {n}")
    groups = _groups_by_label(examples)
    counts = _largest_remainder([len(g) for g in groups.values()], n)
    chosen: list[int] = []
    for (label, idx), k in zip(groups.items(), counts):
        chosen.extend(shuffled(idx, seed, f"{salt}/label={label}")[:k])
    # Keep the source order: callers that pass an already-shuffled split keep their shuffle.
    return [examples[i] for i in sorted(chosen)]


def contiguous_split(chunks: Sequence, fractions: Sequence[float]) -> list[list]:
    """Split in reading order (for language modelling, where shuffling would leak context)."""
    bounds = [0]
    for f in fractions[:-1]:
        bounds.append(bounds[-1] + round(f * len(chunks)))
    bounds.append(len(chunks))
    return [list(chunks[a:b]) for a, b in zip(bounds, bounds[1:])]


def shuffled_split(items: Sequence, fractions: Sequence[float], seed: int, salt: str = "split") -> list[list]:
    """A seeded split of unlabelled items (e.g. SFT records): shuffle, then cut in the given fractions."""
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"split fractions must sum to 1, got {list(fractions)}")
    return contiguous_split(shuffled(items, seed, salt), fractions)


def seeded_sample(items: Sequence, n: int | None, seed: int, salt: str = "sample") -> list:
    """``n`` items chosen by seed, in their source order (all of them if n is None)."""
    if n is None or n >= len(items):
        return list(items)
    return [items[i] for i in sorted(permutation(len(items), seed, salt)[:n])]
