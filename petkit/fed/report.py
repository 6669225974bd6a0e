"""What a federated run leaves behind: the global adapter, report.json, a per-round table and an
accuracy-per-round plot."""

from __future__ import annotations

import json
from pathlib import Path


def public(report: dict) -> dict:
    """The report without tensors (JSON-able)."""
    return {k: v for k, v in report.items() if not k.endswith("_state")}


def rounds_table(report: dict) -> str:
    lines = ["| round | clients | accepted | rejected | dropped | test accuracy | up MB | down MB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["rounds"]:
        test = r.get("test") or {}
        acc = f"{100 * test['accuracy']:.1f}" if "accuracy" in test else "–"
        lines.append(f"| {r['round']} | {r['sampled']} | {r['accepted']} | {len(r['rejected'])} | {len(r['dropped'])} "
                     f"| {acc} | {r['bytes_up'] / 1e6:.2f} | {r['bytes_down'] / 1e6:.2f} |")
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
    plot_accuracy({"global adapter": report}, out / "accuracy.png", "test accuracy of the global model (%)")


def save(report: dict, job, out: Path) -> None:
    """The global adapter under out/adapter, then ``write``'s files."""
    from .client import setup
    from .payload import load_trainable

    _, am, _ = setup(job.to_json())  # cached: the process that served the job reuses its model
    load_trainable(am, report["final_state"])
    am.save(out / "adapter")
    write(report, out)


def plot_accuracy(runs: dict[str, dict], path: Path, ylabel: str, xlabel: str = "round") -> None:
    """Test accuracy per round (round 0: before training) of one or more runs' reports, one line each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for label, run in runs.items():
        points = [(0, run["initial_test"])] + [(r["round"], r.get("test")) for r in run["rounds"]]
        points = [(x, 100 * t["accuracy"]) for x, t in points if t and "accuracy" in t]
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", ms=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
