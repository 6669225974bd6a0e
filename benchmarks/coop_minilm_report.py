"""Tables and a plot for benchmarks/coop_minilm.py from its JSON files (run alone to re-render)."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"


def summary(result: dict) -> dict[str, dict[int, list[float]]]:
    """method → shots → test accuracies over seeds."""
    table: dict[str, dict[int, list[float]]] = {}
    for run in result["runs"]:
        table.setdefault(run["method"], {}).setdefault(run["shots"], []).append(run["test"])
    return table


def write_report(out: Path) -> None:
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"), key=lambda p: ("cocoop" in p.name, p.name))]
    lines = ["# CoOp on MiniLM: learned context vs hand templates vs linear probe", "",
             "Test accuracy (%), mean ± sd over seeds (K-shot sample and init). Written by "
             "`benchmarks/coop_minilm.py`.", ""]
    for result in results:
        table = summary(result)
        shots = sorted({k for per in table.values() for k in per})
        seeds = sorted({r["seed"] for r in result["runs"]})
        lines += [f"## {result['dataset']} (classes: {', '.join(result['class_names'])}; "
                  f"{len(seeds)} seeds; dev {result['n_dev']}, test {result['n_test']}; {result['splits']})", "",
                  "| method | " + " | ".join(f"K={k}" for k in shots) + " |", "|---|" + "---:|" * len(shots)]
        for template, acc in result["zero_shot"].items():
            label = "zero-shot ensemble" if template == "ensemble" else f"zero-shot `{template}`"
            lines.append(f"| {label} | " + " | ".join(f"{100 * acc['test']:.1f}" for _ in shots) + " |")
        for method, per in table.items():
            lines.append(f"| {method} | " + " | ".join(_mean_sd(per[k]) if k in per else "" for k in shots) + " |")
        steps = {}
        for run in result["runs"]:
            if "best_step" in run:
                steps.setdefault(run["method"], []).append(run["best_step"])
        lines += ["", f"CoOp steps kept by dev accuracy (grid 25…{result['steps']} every 25): "
                  + "; ".join(f"{m}: {sorted(v)}" for m, v in steps.items()), ""]
        cs = [r["C"] for r in result["runs"] if r["method"] == "linear probe"]
        lines += [f"Linear-probe C picked on dev (grid 0.01…100): {sorted(cs)}", ""]
        best = max((t for t in result["zero_shot"] if t != "ensemble"), key=lambda t: result["zero_shot"][t]["dev"])
        lines += [f"Template with the best dev accuracy: `{best}` (test {100 * result['zero_shot'][best]['test']:.1f}); "
                  f"CoOp's init words: \"{result['init_words']}\".", ""]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    _plot(results, out / "accuracy_vs_shots.png")


def _plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, result in zip(axes[0], results):
        for method, per in summary(result).items():
            shots = sorted(per)
            means = [100 * statistics.mean(per[k]) for k in shots]
            sds = [100 * (statistics.stdev(per[k]) if len(per[k]) > 1 else 0) for k in shots]
            ax.errorbar(shots, means, yerr=sds, marker="o", capsize=3, label=method)
        ens = 100 * result["zero_shot"]["ensemble"]["test"]
        best = max(result["zero_shot"].items(), key=lambda kv: kv[1]["test"])
        ax.axhline(ens, color="grey", ls="--", label="zero-shot ensemble")
        if best[0] != "ensemble":
            ax.axhline(100 * best[1]["test"], color="black", ls=":", label="best single template (picked on test)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["shots"] for r in result["runs"]}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("examples per class (K)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(result["dataset"])
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    write_report(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "results" / "coop-minilm")
