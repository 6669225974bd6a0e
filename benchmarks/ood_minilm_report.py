"""ood.md and ood.png from ood.json (benchmarks/ood_minilm.py): mean ± std over seeds."""

from __future__ import annotations

import statistics
from pathlib import Path

MAIN = ["knn (frozen)", "probe msp", "probe max_logit", "probe energy", "probe mahalanobis",
        "lora msp", "lora max_logit", "lora energy", "lora mahalanobis"]


def _values(result: dict, pair: str, score: str, metric: str) -> list[float]:
    task = pair.split(" → ")[0]
    return [run["pairs"][pair][score][metric] for run in result["runs"][task].values()]


def _cell(values: list[float]) -> str:
    mean = 100 * statistics.mean(values)
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def pairs_of(result: dict) -> list[str]:
    return [p for runs in result["runs"].values() for p in next(iter(runs.values()))["pairs"]]


def verdict(result: dict, pair: str) -> dict:
    """The paper's claim on one pair: kNN on frozen features vs the fine-tuned model's MSP and energy."""
    knn = statistics.mean(_values(result, pair, "knn (frozen)", "auroc"))
    rivals = {s: statistics.mean(_values(result, pair, s, "auroc")) for s in ("lora msp", "lora energy")}
    return {"knn_auroc": knn, **{f"{s}_auroc": v for s, v in rivals.items()}, "knn_wins": knn > max(rivals.values())}


def render(result: dict, out: Path) -> None:
    pairs = pairs_of(result)
    seeds = len(result["settings"].get("seeds_done", result["settings"]["seeds"]))
    lines = ["# PT-OOD on MiniLM: kNN on frozen features vs logit scores", "",
             f"AUROC ↑ and FPR@95%TPR ↓ (%), mean ± std over {seeds} seed(s); ID = positive. "
             f"kNN: k = {result['settings']['k']} on the L2-normalised frozen sentence embeddings of the ID training "
             "texts. probe: linear softmax probe on those embeddings. lora: MiniLM + LoRA fine-tuned on the ID task.",
             "", "| score | " + " | ".join(f"{p} AUROC | {p} FPR95" for p in pairs) + " |",
             "|---|" + "---|---|" * len(pairs)]
    for score in MAIN:
        cells = [f"{_cell(_values(result, p, score, 'auroc'))} | {_cell(_values(result, p, score, 'fpr95'))}"
                 for p in pairs]
        lines.append(f"| {score} | " + " | ".join(cells) + " |")
    lines += ["", "ID test accuracy (%) and the hyper-parameters chosen on ID dev:", "",
              "| ID task | probe acc | probe L2 (per seed) | LoRA acc | LoRA lr |", "|---|---|---|---|---|"]
    for task, runs in result["runs"].items():
        r = list(runs.values())
        l2s = ", ".join(f"{x['probe']['l2']:g}" for x in r)
        lines.append(f"| {task} | {_cell([x['probe']['test_accuracy'] for x in r])} | {l2s} | "
                     f"{_cell([x['lora']['test_accuracy'] for x in r])} | {r[0]['lora']['lr']:g} |")
    grid = result["settings"]["probe_l2_grid"]
    edge = sorted({f"{task} seed {seed}: {r['probe']['l2']:g}" for task, runs in result["runs"].items()
                   for seed, r in runs.items() if r["probe"]["l2"] in (grid[0], grid[-1])})
    lines += ["", f"Grids: probe L2 {', '.join(f'{v:g}' for v in grid)}"
              + (f" (chosen at the grid's edge: {'; '.join(edge)})" if edge else "") + "; "
              f"LoRA lr {', '.join(f'{v:g}' for v in result['settings']['lora_lr_grid'])} (seed 0 only, dev accuracy "
              "per lr in ood.json).", "",
              "k sensitivity of the frozen kNN (AUROC %, not used to choose k):", "",
              "| pair | " + " | ".join(f"k={k}" for k in result["settings"]["k_sweep"]) + " |",
              "|---|" + "---|" * len(result["settings"]["k_sweep"])]
    for p in pairs:
        lines.append(f"| {p} | " + " | ".join(_cell(_values(result, p, f"knn k={k}", "auroc"))
                                              for k in result["settings"]["k_sweep"]) + " |")
    lines += ["", "kNN on frozen features vs the fine-tuned model's MSP / energy (AUROC %, mean over seeds):", ""]
    for p in pairs:
        v = verdict(result, p)
        lines.append(f"- {p}: kNN {100 * v['knn_auroc']:.1f}, LoRA MSP {100 * v['lora msp_auroc']:.1f}, "
                     f"LoRA energy {100 * v['lora energy_auroc']:.1f} → kNN {'better' if v['knn_wins'] else 'not better'}")
    lines += ["", f"Run time: {result['seconds']} s.", ""]
    (out / "ood.md").write_text("\n".join(lines), encoding="utf-8")
    _plot(result, pairs, out / "ood.png")


def _plot(result: dict, pairs: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 4.2))
    width = 0.8 / len(MAIN)
    cmap = plt.get_cmap("tab10")
    for i, score in enumerate(MAIN):
        vals = [_values(result, p, score, "auroc") for p in pairs]
        means = [100 * statistics.mean(v) for v in vals]
        errs = [100 * statistics.stdev(v) if len(v) > 1 else 0 for v in vals]
        ax.bar([j + (i - len(MAIN) / 2 + 0.5) * width for j in range(len(pairs))], means, width, yerr=errs,
               label=score, color=cmap(i), hatch="//" if score.startswith("lora") else None, edgecolor="white")
    ax.set_xticks(range(len(pairs)), pairs)
    ax.set_ylabel("AUROC (%)")
    ax.set_ylim(40, 100)
    ax.axhline(50, color="grey", lw=0.8, ls=":")
    ax.set_title("OOD detection on MiniLM: kNN on frozen features vs probe / LoRA logit scores")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: the bars fill the axes
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
