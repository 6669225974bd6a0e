"""What a federated run leaves behind: the global adapter, report.json, a per-round table and an
accuracy-per-round plot."""

from __future__ import annotations

import json
from pathlib import Path

from .local import setup
from .payload import load_trainable
from .registry import get_system


def public(report: dict) -> dict:
    """The report without tensors (JSON-able)."""
    return {k: v for k, v in report.items() if not k.endswith("_state")}


def personal_mean(record: dict) -> float | None:
    """Mean personalised accuracy over the clients scored in a round (None if none were)."""
    values = [v for v in record.get("personal") or [] if v is not None and v == v]
    return sum(values) / len(values) if values else None


def rounds_table(report: dict) -> str:
    lines = ["| round | clients | accepted | rejected | dropped | test accuracy | personalised (mean) | up MB | down MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    for r in report["rounds"]:
        test = r.get("test") or {}
        lines.append(f"| {r['round']} | {r['sampled']} | {r['accepted']} | {len(r['rejected'])} | {len(r['dropped'])} "
                     f"| {pct(test.get('accuracy'))} | {pct(personal_mean(r))} "
                     f"| {r['bytes_up'] / 1e6:.2f} | {r['bytes_down'] / 1e6:.2f} |")
    lines.append("")
    lines.append(f"Sent both ways: {report['bytes_total'] / 1e6:.1f} MB, {100 * report['bytes_ratio']:.2f}% of "
                 f"full-model FedAvg's {report['full_model_bytes_total'] / 1e6:.0f} MB for the same rounds.")
    if "dp" in report:
        dp = report["dp"]
        lines.append(f"Client-level DP: clip {dp['clip']}, noise multiplier {dp['noise_multiplier']}: "
                     f"(ε = {dp['epsilon']:.2f}, δ = {dp['delta']:g}) after {len(report['rounds'])} rounds "
                     f"(RDP accounting, sampling rate {dp['sampling_rate']:.2f} treated as Poisson).")
    return "\n".join(lines) + "\n"


def write(report: dict, out: Path) -> None:
    """report.json, rounds.md and accuracy.png."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(public(report), indent=1, default=str) + "\n")
    (out / "rounds.md").write_text(rounds_table(report))
    if report.get("initial_test") is None and any("personal" in r for r in report["rounds"]):
        # personal models only (pFedPG): no global test accuracy to plot
        plot_accuracy({"pFedPG": report}, out / "accuracy.png", "personalised accuracy, mean over clients (%)",
                      metric="personal")
    else:
        plot_accuracy({"global adapter": report}, out / "accuracy.png", "test accuracy of the global model (%)")


def save(report: dict, job, out: Path) -> Path:
    """What the server ends with (the system's ``save``, by default ``save_adapter``), then ``write``'s
    files; returns where the former went."""
    out.mkdir(parents=True, exist_ok=True)
    where = (get_system(job.system).save or save_adapter)(report, job, out)
    write(report, out)
    return where


def save_adapter(report: dict, job, out: Path) -> Path:
    """The global adapter under out/adapter (SFPrompt's: the prompt and the tail, two named adapters)."""
    am = setup(job).am  # cached: the process that served the job reuses its model
    load_trainable(am, report["final_state"])
    where = out / "adapter"
    am.save(where)
    return where


def plot_accuracy(runs: dict[str, dict], path: Path, ylabel: str, xlabel: str = "round",
                  metric: str = "accuracy") -> None:
    """Accuracy per round (round 0: before training) of one or more runs' reports, one line each:
    the global model's test accuracy, or (metric="personal") the mean personalised accuracy."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for i, (label, run) in enumerate(runs.items()):  # a run keeps its colour (C<i>) in every plot of the same runs
        if metric == "personal":
            points = [(r["round"], personal_mean(r)) for r in run["rounds"]]
        else:
            points = [(0, run.get("initial_test"))] + [(r["round"], r.get("test")) for r in run["rounds"]]
            points = [(x, t.get("accuracy")) for x, t in points if t]
        points = [(x, 100 * y) for x, y in points if y is not None]
        if not points:
            continue
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", ms=3, label=label, color=f"C{i}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
