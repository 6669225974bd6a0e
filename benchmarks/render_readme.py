"""Write the README's performance table from the committed benchmark results (never by hand).

    .venv/bin/python benchmarks/render_readme.py          # rewrite the block in README.md
    .venv/bin/python benchmarks/render_readme.py --check  # exit 1 if README.md is out of date

The block sits between `<!-- perf:start -->` and `<!-- perf:end -->`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "lora_overhead.json"
README = ROOT / "README.md"
START, END = "<!-- perf:start -->", "<!-- perf:end -->"


def _target(t) -> tuple[str, float] | None:
    """Targets are stored as ["<=", 1.1] for times and as "<= 1.0" for memory."""
    if not t:
        return None
    op, value = t.split() if isinstance(t, str) else t
    return op, float(value)


def _row(label: str, value: float, target) -> str:
    t = _target(target)
    if t is None:
        return f"| {label} | {value:.3f} | | |"
    met = value <= t[1] if t[0] == "<=" else abs(value - t[1]) <= 0.03
    return f"| {label} | {value:.3f} | {t[0]} {t[1]:g} | {'yes' if met else '**no**'} |"


def render(results: dict) -> str:
    machine = results["machine"]
    settings = results["settings"]
    lines = [
        f"MiniLM, batch {settings.get('batch', 32)} × {settings.get('seq', 128)} tokens, LoRA r=8 on the 36 attention/FFN "
        f"linears; {machine['cores']} cores, torch {machine['torch']}, peft {machine['peft']}, {machine['date'][:10]}. "
        "Medians of per-round ratios, every variant interleaved in one process "
        "(`benchmarks/results/lora_overhead.md` has times, spreads and method).",
        "",
        "| ratio | measured | target | met |",
        "|---|---|---|---|",
    ]
    for r in results["ratios"]:
        lines.append(_row(r["label"], r["median"], r["target"]))
    for r in results["memory"]["ratios"]:
        lines.append(_row(f"peak training memory, {r['label']}", r["absolute"], r.get("target")))
    return "\n".join(lines)


def updated_readme() -> str:
    text = README.read_text(encoding="utf-8")
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    table = render(json.loads(RESULTS.read_text(encoding="utf-8")))
    return f"{head}{START}\n{table}\n{END}{tail}"


if __name__ == "__main__":
    new = updated_readme()
    if "--check" in sys.argv:
        sys.exit(0 if new == README.read_text(encoding="utf-8") else 1)
    README.write_text(new, encoding="utf-8")
