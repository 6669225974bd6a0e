"""Write the result tables of benchmarks/README.md from the committed benchmark results (never by hand).

    .venv/bin/python benchmarks/render_readme.py          # rewrite the blocks in benchmarks/README.md
    .venv/bin/python benchmarks/render_readme.py --check  # exit 1 if benchmarks/README.md is out of date

Blocks: `<!-- perf:start -->` … `<!-- perf:end -->` (LoRA overhead), `<!-- leaderboard:start -->` …
`<!-- leaderboard:end -->` (the MiniLM `petkit bench` leaderboard, or how far its run has got) and
`<!-- peft:start -->` … `<!-- peft:end -->` (petkit / PEFT ratios from the `--against peft` benches);
and the headline numbers in the top-level README.md, `<!-- headline:start -->` … `<!-- headline:end -->`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "lora_overhead.json"
LEADERBOARD = ROOT / "benchmarks" / "results" / "minilm"
AGAINST_PEFT = {"MiniLM": LEADERBOARD, "SmolLM2-135M": ROOT / "benchmarks" / "results" / "smollm2"}
README = ROOT / "benchmarks" / "README.md"
FRONT_README = ROOT / "README.md"  # the top-level README: headline numbers only


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


def _cell(task: dict) -> str:
    """Accuracy (%) for classification tasks, perplexity for language-modelling ones."""
    if "ppl_mean" in task:
        return f"ppl {task['ppl_mean']:.2f} ± {task['ppl_std']:.2f}"
    return f"{100 * task['acc_mean']:.1f} ± {100 * task['acc_std']:.1f}"


def render_leaderboard(folder: Path) -> str:
    board = folder / "leaderboard.json"
    if not board.is_file():
        runs = folder / "results.jsonl"
        done = sum(1 for line in runs.read_text(encoding="utf-8").splitlines()[1:] if line.strip()) if runs.is_file() else 0
        return (f"The leaderboard run has not finished yet ({done} runs recorded in "
                f"`{runs.relative_to(ROOT)}`); re-running its command resumes it.")
    data = json.loads(board.read_text(encoding="utf-8"))
    tasks, base = data["tasks"], data.get("baseline", "full")
    lines = [f"**{data['statement']}** Test accuracy (%) or perplexity, mean ± std over seeds; full table, protocol and plots in "
             f"`{(folder / 'leaderboard.md').relative_to(ROOT)}`.", "",
             "| # | method | " + " | ".join(tasks) + f" | trainable params | train memory × {base} | step × {base} |",
             "|---|---|" + "---|" * len(tasks) + "---|---|---|"]
    for i, row in enumerate(data["rows"], 1):
        cells = [_cell(row["tasks"][t]) if t in row["tasks"] else "–" for t in tasks]
        lines.append(f"| {i} | `{row['method']}` | " + " | ".join(cells) +
                     f" | {row['params']:,.0f} | {row.get('train_mb_vs_baseline') or float('nan'):.2f} "
                     f"| {row.get('step_vs_baseline') or float('nan'):.2f} |")
    return "\n".join(lines)


def _ratio(x) -> str:
    return "–" if x is None or x != x else f"{x:.2f}"


def render_peft(folders: dict[str, Path]) -> str:
    """One row per (model, method, task) from each bench's leaderboard.json; ratios are petkit / PEFT."""
    lines = ["| model | method | task | seeds | petkit | PEFT | step time | train memory | adapter size "
             "| inference unmerged | inference merged |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    pending = []
    for model, folder in folders.items():
        board = folder / "leaderboard.json"
        if not board.is_file():
            pending.append(f"{model} (`{folder.relative_to(ROOT)}`)")
            continue
        for p in json.loads(board.read_text(encoding="utf-8"))["peft"]:
            ppl = "ppl" in p
            score = (lambda v: f"ppl {v:.2f}") if ppl else (lambda v: f"{100 * v:.1f}%")
            key = "ppl" if ppl else "acc"
            lines.append(f"| {model} | `{p['method']}` | {p['task']} | {p['seeds']} | {score(p[f'petkit_{key}'])} "
                         f"| {score(p[f'peft_{key}'])} | {_ratio(p['step'])} | {_ratio(p['train_mb'])} "
                         f"| {_ratio(p['adapter_bytes'])} | {_ratio(p['unmerged'])} | {_ratio(p['merged'])} |")
    if pending:
        lines += ["", f"Not finished yet: {', '.join(pending)}; re-running its bench command resumes it."]
    return "\n".join(lines)


def _ratio_of(results: dict, label: str) -> float:
    (value,) = [r["median"] for r in results["ratios"] if r["label"] == label]
    return value


def render_headline(results: dict, folder: Path, top: int = 3) -> str:
    """A few lines for the top-level README, each pointing at the full table in benchmarks/README.md."""
    memory = {r["label"]: r["absolute"] for r in results["memory"]["ratios"]}
    lines = [f"- **LoRA vs Hugging Face PEFT** (MiniLM, batch {results['settings'].get('batch', 32)} × "
             f"{results['settings'].get('seq', 128)}, r=8): a training step takes "
             f"{_ratio_of(results, 'petkit LoRA step / PEFT LoRA step'):.2f}× PEFT's time and "
             f"{memory['petkit LoRA / PEFT LoRA']:.2f}× its peak memory, and "
             f"{_ratio_of(results, 'petkit LoRA step / ideal step'):.2f}× an ideal frozen step that computes no weight "
             "gradient; one unmerged adapter costs "
             f"{_ratio_of(results, 'petkit unmerged inference / base'):.2f}× the base model's inference time "
             f"(PEFT {_ratio_of(results, 'PEFT unmerged inference / base'):.2f}×). "
             "[Method and every ratio](benchmarks/README.md#lora-overhead)."]
    board = folder / "leaderboard.json"
    if board.is_file():
        data = json.loads(board.read_text(encoding="utf-8"))
        rows = ", ".join(f"`{row['method']}` " + " / ".join(_cell(row["tasks"][t]).split(" ±")[0] if t in row["tasks"]
                                                            else "–" for t in data["tasks"])
                         for row in data["rows"][:top])
        lines.append(f"- **MiniLM leaderboard** ({', '.join(data['tasks'])} test accuracy, mean over seeds, "
                     f"ordered by {data.get('ordered_by', 'borda').capitalize()}): {rows}. "
                     "[Full leaderboard](benchmarks/README.md#minilm-leaderboard).")
    return "\n".join(lines)


def updated_front_readme() -> str:
    text = FRONT_README.read_text(encoding="utf-8")
    return _replace_block(text, "headline", render_headline(json.loads(RESULTS.read_text(encoding="utf-8")), LEADERBOARD))


def _replace_block(text: str, name: str, content: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    return f"{head}{start}\n{content}\n{end}{tail}"


def updated_readme() -> str:
    text = README.read_text(encoding="utf-8")
    text = _replace_block(text, "perf", render(json.loads(RESULTS.read_text(encoding="utf-8"))))
    text = _replace_block(text, "leaderboard", render_leaderboard(LEADERBOARD))
    return _replace_block(text, "peft", render_peft(AGAINST_PEFT))


if __name__ == "__main__":
    wanted = {README: updated_readme(), FRONT_README: updated_front_readme()}
    if "--check" in sys.argv:
        sys.exit(0 if all(new == path.read_text(encoding="utf-8") for path, new in wanted.items()) else 1)
    for path, new in wanted.items():
        path.write_text(new, encoding="utf-8")
