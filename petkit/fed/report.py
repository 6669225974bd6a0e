"""What a federated run leaves behind: report.json, a per-round table and an accuracy-per-round plot."""

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


def write(report: dict, out: Path, curves: dict[str, dict] | None = None) -> None:
    """report.json, rounds.md and accuracy.png (this run, plus any other named runs' reports in curves)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(public(report), indent=1, default=str) + "\n")
    (out / "rounds.md").write_text(rounds_table(report))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, run in {"this run": report, **(curves or {})}.items():
        points = [(0, run["initial_test"])] + [(r["round"], r.get("test")) for r in run["rounds"]]
        xs = [x for x, t in points if t and "accuracy" in t]
        ax.plot(xs, [100 * t["accuracy"] for _, t in points if t and "accuracy" in t], marker="o", ms=3, label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy of the global model (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)
    plt.close(fig)
