"""The rows of the method table, from the method registry: `petkit methods` prints them and
docgen.py writes them into the README, so the two never differ."""

from __future__ import annotations

COLUMNS = ("method", "kind", "PEFT type", "mergeable", "what", "reference")


def method_rows() -> list[tuple[str, ...]]:
    """One row per registered method, in COLUMNS order."""
    from petkit.core.registry import all_methods
    return [(m.name, m.kind, m.peft_type or "petkit-only", "yes" if m.mergeable else "no", m.summary, m.spec)
            for m in all_methods()]
