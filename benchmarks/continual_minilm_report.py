"""continual.md and the plots from benchmarks/results/continual-minilm/<stream>/<variant>/seed<k>.json."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from petkit.continual import ContinualResult
from petkit.continual.metrics import summarise
from petkit.continual.report import plot_curves, plot_heatmap, seen_average_curve

ORDER = ["seq-full", "seq-lora", "joint", "per-task", "lae-lora", "lae-lora-nofreeze", "lae-adapter", "lae-prefix",
         "lae-prefix-nocomp", "ovor", "oneprompt", "l2m", "l2m-nopenalty", "mora"]
HEATMAPS = ["seq-lora", "lae-lora", "ovor", "l2m", "mora", "joint"]


def load_results(root: Path) -> dict[str, dict[str, list[ContinualResult]]]:
    """{stream: {variant: [result per seed]}} of every finished run under root."""
    out: dict = {}
    for path in sorted(root.glob("*/*/seed*.json")):
        record = json.loads(path.read_text())
        wall = record.pop("wall_seconds", None)
        result = ContinualResult(**record)
        result.extra["wall_seconds"] = wall
        out.setdefault(path.parent.parent.name, {}).setdefault(path.parent.name, []).append(result)
    return out


def mean_sd(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def mean(values: list[float]) -> float:
    return statistics.mean(values) if values else math.nan


def mean_matrix(results: list[ContinualResult]) -> list[list[float]]:
    return [[mean([r.matrix[i][j] for r in results]) for j in range(i + 1)] for i in range(len(results[0].matrix))]


def main_table(variants: dict[str, list[ContinualResult]]) -> list[str]:
    lines = ["| variant | seeds | last acc | average acc | forgetting | BWT | seconds / run |", "|---|---|---|---|---|---|---|"]
    for name in [v for v in ORDER if v in variants]:
        runs = variants[name]
        lines.append(f"| {name} | {len(runs)} | {mean_sd([r.metrics['last'] for r in runs])} | "
                     f"{mean_sd([r.metrics['average'] for r in runs])} | {mean_sd([r.metrics['forgetting'] for r in runs])} "
                     f"| {mean_sd([r.metrics['bwt'] for r in runs])} | {mean([r.extra['wall_seconds'] or 0 for r in runs]):.0f} |")
    return lines


def aware_table(variants) -> list[str]:
    lines = ["| variant | last acc | last within-task acc | within-task forgetting |", "|---|---|---|---|"]
    for name in [v for v in ORDER if v in variants]:
        runs = [r for r in variants[name] if r.task_aware]
        if runs:
            lines.append(f"| {name} | {mean_sd([r.metrics['last'] for r in runs])} | "
                         f"{mean_sd([summarise(r.task_aware)['last'] for r in runs])} | "
                         f"{mean_sd([summarise(r.task_aware)['forgetting'] for r in runs])} |")
    return lines


def lae_table(variants) -> list[str]:
    lines = ["| variant | online expert | offline expert | ensemble |", "|---|---|---|---|"]
    for name in [v for v in ORDER if v.startswith("lae") and v in variants]:
        runs = variants[name]
        online = [summarise(r.extra["online"])["last"] for r in runs]   # each expert's own accuracy matrix
        offline = [summarise(r.extra["offline"])["last"] for r in runs]
        lines.append(f"| {name} | {mean_sd(online)} | {mean_sd(offline)} | {mean_sd([r.metrics['last'] for r in runs])} |")
    return lines


def ovor_table(variants) -> list[str]:
    if "ovor" not in variants:
        return []
    runs = variants["ovor"]
    keys = [("energy_id_train_before", "energy_id_train_after"), ("energy_id_test_before", "energy_id_test_after"),
            ("energy_outlier_before", "energy_outlier_after")]
    lines = ["| energy (mean over tasks and seeds) | before VOR | after VOR |", "|---|---|---|"]
    for before, after in keys:
        if before in runs[0].extra:
            lines.append(f"| {before.removesuffix('_before').replace('energy_', '')} | "
                         f"{mean([v for r in runs for v in r.extra[before]]):.3f} | "
                         f"{mean([v for r in runs for v in r.extra[after]]):.3f} |")
    return lines


def l2m_table(variants) -> list[str]:
    lines = ["| variant | distinct entries trained per task | tasks sharing their main entry with an earlier task | "
             "test samples routed to their task's main training entry |", "|---|---|---|---|"]
    for name in ("l2m", "l2m-nopenalty"):
        if name not in variants:
            continue
        distinct, shared, routed = [], [], []
        for r in variants[name]:
            mains = [max(keys, key=keys.get) if keys else None for keys in r.extra["l2m_train_keys"]]
            distinct += [len(keys) for keys in r.extra["l2m_train_keys"]]
            shared += _shared_main_entry(r)
            final = r.extra["l2m_test_keys"][-1]
            hits = sum(final[j].get(mains[j], 0) for j in range(len(mains)))
            routed.append(hits / max(1, sum(sum(c.values()) for c in final)))
        lines.append(f"| {name} | {mean(distinct):.1f} | {mean(shared):.2f} | {mean(routed):.2f} |")
    return lines


def _metric(variants, name: str, how) -> list[float]:
    return [how(r) for r in variants.get(name, [])]


def _claim(text: str, ours: list[float], theirs: list[float], lower_is_better: bool = False) -> str:
    """One row: the claim, both sides' mean ± sd, in how many seeds it holds, and the verdict: holds (better
    on average and worse in no seed), mixed (better on average, worse in some seed), tie, or refuted."""
    if not ours or not theirs:
        return f"| {text} | – | – | not run |"
    sign = -1 if lower_is_better else 1
    gaps = [sign * (a - b) for a, b in zip(ours, theirs)]
    better, worse = sum(g > 1e-9 for g in gaps), sum(g < -1e-9 for g in gaps)
    gap = mean(gaps)
    verdict = ("tie" if abs(gap) <= 1e-9 else "refuted" if gap < 0 else "holds" if worse == 0 else "mixed")
    return (f"| {text} | {mean_sd(ours)} | {mean_sd(theirs)} | better in {better}, worse in {worse} of {len(gaps)} "
            f"seeds: {verdict} |")


def directions(variants) -> list[str]:
    last = lambda r: r.metrics["last"]  # noqa: E731
    forget = lambda r: r.metrics["forgetting"]  # noqa: E731
    lines = ["| the paper's direction | this side | the other side | verdict |", "|---|---|---|---|"]
    for name in ("lae-lora", "lae-adapter", "lae-prefix"):
        if name in variants:
            on = _metric(variants, name, lambda r: summarise(r.extra["online"])["last"])
            off = _metric(variants, name, lambda r: summarise(r.extra["offline"])["last"])
            ensemble = _metric(variants, name, last)
            lines.append(_claim(f"{name}: ensemble > offline expert (last acc)", ensemble, off))
            lines.append(_claim(f"{name}: offline > online expert (last acc)", off, on))
            lines.append(_claim(f"{name}: ensemble > online expert (last acc)", ensemble, on))
    lines.append(_claim("LAE freeze-then-tune helps: lae-lora > lae-lora-nofreeze (last acc)",
                        _metric(variants, "lae-lora", last), _metric(variants, "lae-lora-nofreeze", last)))
    lines.append(_claim("prefix compensation helps: lae-prefix > lae-prefix-nocomp (last acc)",
                        _metric(variants, "lae-prefix", last), _metric(variants, "lae-prefix-nocomp", last)))
    if "ovor" in variants:
        after = _metric(variants, "ovor", lambda r: mean(r.extra["energy_id_test_after"]))
        before = _metric(variants, "ovor", lambda r: mean(r.extra["energy_id_test_before"]))
        lines.append(_claim("VOR lowers the ID energy (test, mean over tasks)", after, before, lower_is_better=True))
    lines.append(_claim("VOR raises last accuracy: ovor > oneprompt", _metric(variants, "ovor", last),
                        _metric(variants, "oneprompt", last)))
    lines.append(_claim("L2M forgets less than seq-lora", _metric(variants, "l2m", forget),
                        _metric(variants, "seq-lora", forget), lower_is_better=True))
    shared = lambda r: mean(_shared_main_entry(r))  # noqa: E731
    lines.append(_claim("L2M without the count penalty collapses: tasks sharing an earlier task's main entry",
                        _metric(variants, "l2m-nopenalty", shared), _metric(variants, "l2m", shared)))
    lines.append(_claim("MoRA forgets less than seq-lora", _metric(variants, "mora", forget),
                        _metric(variants, "seq-lora", forget), lower_is_better=True))
    return lines


def _shared_main_entry(r: ContinualResult) -> list[float]:
    """For each task after the first: 1 if its most-picked training entry was an earlier task's."""
    mains, out = [], []
    for keys in r.extra["l2m_train_keys"]:
        main = max(keys, key=keys.get) if keys else None
        if mains:
            out.append(float(main in mains))
        mains.append(main)
    return out


def write_report(root: Path) -> Path:
    results = load_results(root)
    lines = ["# Continual learning on MiniLM (and the decoder stream on SmolLM2)", "",
             "Written by `benchmarks/continual_minilm.py` (settings in its docstring). Test accuracy; mean ± sd over "
             "seeds. last = mean accuracy over all tasks after the last one; average = mean over tasks of the mean "
             "accuracy on the tasks seen so far; forgetting = mean drop from each task's best earlier accuracy; "
             "BWT = mean change from just after a task to the end.", ""]
    for stream, variants in results.items():
        any_run = next(iter(variants.values()))[0]
        lines += [f"## {stream} ({any_run.scenario}-incremental: {' → '.join(any_run.stream)})", ""]
        lines += main_table(variants) + [""]
        lines += ["### The papers' directions", ""] + directions(variants) + [""]
        if any_run.scenario == "class":
            lines += ["### Within-task accuracy (the task id given at test time, same scores)", "",
                      "This tells a task still learnt but out-scored by other tasks' classes from one forgotten.",
                      ""] + aware_table(variants) + [""]
        lines += ["### LAE: each expert alone (last accuracy)", ""] + lae_table(variants) + [""]
        if ovor_table(variants):
            lines += ["### OVOR: energies of the current task's data", ""] + ovor_table(variants) + [""]
        if any(v in variants for v in ("l2m", "l2m-nopenalty")):
            lines += ["### L2M: key usage", ""] + l2m_table(variants) + [""]
        curves = {name: [mean(c) for c in zip(*(seen_average_curve(r) for r in variants[name]))]
                  for name in ORDER if name in variants}
        plot_curves(curves, root / f"{stream}-curve.png", f"{stream}: mean accuracy on the tasks seen so far",
                    any_run.stream)
        lines += [f"![curve]({stream}-curve.png)", ""]
        for name in [h for h in HEATMAPS if h in variants]:
            runs = variants[name]
            averaged = ContinualResult(runs[0].config, runs[0].stream, runs[0].scenario, mean_matrix(runs), [],
                                       summarise(mean_matrix(runs)), [])
            plot_heatmap(averaged, root / f"{stream}-{name}.png", f"{name}, mean over {len(runs)} seeds")
        lines += [" ".join(f"![{h}]({stream}-{h}.png)" for h in HEATMAPS if h in variants), ""]
    path = root / "continual.md"
    path.write_text("\n".join(lines) + "\n")
    return path
