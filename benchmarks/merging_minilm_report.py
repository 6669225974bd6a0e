"""merging.md (tables, mean ± std over seeds) and three plots from merging_minilm.py's merging.json."""

from __future__ import annotations

import statistics
from pathlib import Path


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def pct(values) -> str:
    m, s = mean_std(values)
    return f"{100 * m:.1f} ± {100 * s:.1f}"


def soup_rows(soups: list[dict]) -> list[tuple[str, list[dict]]]:
    """(label, one {dev, test} per seed) for every single run, the dev-chosen best single and both soups."""
    rows = [(name, [s["singles"][name] for s in soups]) for name in soups[0]["singles"]]
    return rows + [("best single (on dev)", [s["best_single"] for s in soups]),
                   ("uniform soup", [s["uniform"] for s in soups]), ("greedy soup", [s["greedy"] for s in soups])]


def merge_labels(multi: list[dict]) -> list[str]:
    return [k for k in multi[0] if k != "individual"]


def soups_section(soups: list[dict], seeds: str) -> list[str]:
    lines = [f"## Soups (SST-2, 4 LoRA runs differing in learning rate; accuracy %, mean ± std over {seeds})", "",
             "| model | dev | test |", "|---|---|---|"]
    lines += [f"| {label} | {pct(v['dev'] for v in per)} | {pct(v['test'] for v in per)} |"
              for label, per in soup_rows(soups)]
    chosen = "; ".join(f"seed {i}: {', '.join(s['greedy_ingredients'])}" for i, s in enumerate(soups))
    return lines + ["", f"Greedy soup ingredients (order and acceptance on dev): {chosen}."]


def multitask_section(multi: list[dict], lambdas: list[float], rank: int, seeds: str) -> list[str]:
    tasks = list(multi[0]["individual"]["test"])
    labels = merge_labels(multi)
    lines = ["", "## Multi-task merge of one LoRA per task (test accuracy %, each task with its own head)", "",
             f"Mean ± std over {seeds}. λ chosen per seed by mean dev accuracy over the tasks; SVD error: relative "
             f"error ‖ΔW − BA‖/‖ΔW‖ of the rank-{rank} re-factorisation, mean over modules (max over modules and seeds).",
             "", "| merge | λ (per seed) | " + " | ".join(tasks) + " | mean | dev mean | SVD error |",
             "|---" * (len(tasks) + 5) + "|"]

    def row(label, per, lam="–", error="–"):
        cells = [pct(r["test"][t] for r in per) for t in tasks]
        means = [pct(sum(r[split][t] for t in tasks) / len(tasks) for r in per) for split in ("test", "dev")]
        return f"| {label} | {lam} | " + " | ".join(cells) + f" | {means[0]} | {means[1]} | {error} |"

    lines.append(row("individual adapters", [m["individual"] for m in multi]))
    for label in labels:
        per = [m[label] for m in multi]
        if "lambda" not in per[0]:
            lines.append(row(label, per))
            continue
        lam = ", ".join(f"{r['lambda']:g}" + ("*" if r["at_edge"] else "") for r in per)
        error = f"{100 * mean_std(r['svd_error']['mean'] for r in per)[0]:.1f}% " \
                f"({100 * max(r['svd_error']['max'] for r in per):.1f}%)"
        lines.append(row(label, per, lam, error))
    lines += ["", "\\* still at the edge of the grid after extending it by one point.", "",
              "Mean dev accuracy over the tasks (%) per λ, mean over seeds (– not evaluated: the grid is extended "
              "only where a seed's choice sat at its edge):", ""]
    tried = sorted({float(k) for label in labels for m in multi for k in m[label].get("dev_by_lambda", {})})
    lines += ["| merge | " + " | ".join(f"λ={lam:g}" for lam in tried) + " |", "|---" * (len(tried) + 1) + "|"]
    for label in labels:
        if "lambda" not in multi[0][label]:
            continue
        cells = []
        for lam in tried:
            got = [m[label]["dev_by_lambda"][f"{lam:g}"] for m in multi if f"{lam:g}" in m[label]["dev_by_lambda"]]
            cells.append(f"{100 * mean_std(got)[0]:.1f}" + ("" if len(got) == len(multi) else f" ({len(got)})")
                         if got else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + ["", f"Grid: {', '.join(f'{lam:g}' for lam in lambdas)}; (n): evaluated for n seeds only."]


def dimat_section(dimat: dict, seeds: str) -> list[str]:
    per = dimat["per_seed"]
    lines = ["", f"## DIMAT: {dimat['agents']} agents, non-IID AG News (mean agent accuracy % on held-out data, "
                 f"mean ± std over {seeds})", "",
             "| schedule | before merging | after round 1 | last round |", "|---|---|---|---|"]
    for label in per[0]["curves"]:
        curves = [p["curves"][label] for p in per]
        lines.append(f"| {label} | {pct(c[0] for c in curves)} | {pct(c[1] for c in curves)} | "
                     f"{pct(c[-1] for c in curves)} |")
    return lines


def render(results: dict, out: Path) -> None:
    seeds = f"{len(results['seeds'])} seeds"
    lines = soups_section(results["soups"], seeds)
    lines += multitask_section(results["multitask"], results["lambdas"], results["rank"], seeds)
    lines += dimat_section(results["dimat"], seeds)
    (out / "merging.md").write_text("\n".join(lines) + "\n")
    plot(results, out)


def plot(results: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = soup_rows(results["soups"])
    stats = [mean_std(100 * v["test"] for v in per) for _, per in rows]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(range(len(rows)), [m for m, _ in stats], yerr=[s for _, s in stats], capsize=3,
           color=["0.6"] * (len(rows) - 2) + ["C0", "C1"])
    ax.set_xticks(range(len(rows)), [label for label, _ in rows], rotation=20)
    ax.set_ylabel("SST-2 test accuracy (%)")
    ax.set_ylim(max(0, min(m - s for m, s in stats) - 5), 100)
    fig.tight_layout()
    fig.savefig(out / "soups.png", dpi=120)

    multi = results["multitask"]
    tasks = list(multi[0]["individual"]["test"])
    labels = ["individual"] + merge_labels(multi)
    fig, ax = plt.subplots(figsize=(9, 3.8))
    width = 0.8 / len(tasks)
    lowest = 100.0
    for k, t in enumerate(tasks):
        stats = [mean_std(100 * m[label]["test"][t] for m in multi) for label in labels]
        lowest = min(lowest, *(m - s for m, s in stats))
        ax.bar([i + k * width for i in range(len(labels))], [m for m, _ in stats], width,
               yerr=[s for _, s in stats], capsize=2, label=t)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels, rotation=20, fontsize=8)
    ax.set_ylabel("test accuracy (%), dev-chosen λ")
    ax.set_ylim(max(0, lowest - 5), 100)
    ax.legend(ncol=len(tasks), loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "multitask.png", dpi=120)

    per = results["dimat"]["per_seed"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label in per[0]["curves"]:
        stats = [mean_std(100 * v for v in round_) for round_ in zip(*(p["curves"][label] for p in per))]
        means = [m for m, _ in stats]
        ax.plot(range(len(stats)), means, marker="o", label=label)
        ax.fill_between(range(len(stats)), [m - s for m, s in stats], [m + s for m, s in stats], alpha=0.15)
    ax.set_xlabel("round (0: local training only)")
    ax.set_ylabel("mean agent accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "dimat.png", dpi=120)
    plt.close("all")
