"""A sparsity sweep as a table and a plot: dev and test accuracy against sparsity, one line per kind,
the dense model's tolerance band and each kind's tolerance point marked."""

from __future__ import annotations

from pathlib import Path


def _curves(points: list[dict]) -> dict[str, list[dict]]:
    dense = [p for p in points if p["kind"] == "dense"]
    kinds = sorted({p["kind"] for p in points} - {"dense", "nm"})
    return {k: sorted(dense + [p for p in points if p["kind"] == k], key=lambda p: p["sparsity"]) for k in kinds}


def sweep_table(result: dict) -> str:
    points = result["points"]
    sparsities = sorted({p["sparsity"] for p in points if p["kind"] != "nm"})
    curves = _curves(points)
    lines = ["| kind | " + " | ".join(f"{s:.0%}" for s in sparsities) + " | within tolerance (dev) | sharp drop (dev) |",
             "|---" * (len(sparsities) + 3) + "|"]
    for kind, curve in curves.items():
        by = {p["sparsity"]: p for p in curve}
        cells = [f"{by[s]['dev']:.3f} / {by[s]['test']:.3f}" if s in by else "" for s in sparsities]
        summary = result["summary"].get(kind, {})
        knee = summary.get("sharp_drop")
        lines.append(f"| {kind} | " + " | ".join(cells) + f" | {summary.get('within_tolerance', 0):.0%} "
                     f"(test {summary.get('test_there', float('nan')):.3f}) | "
                     f"{'–' if knee is None else f'{knee:.0%}'} |")
    for p in points:
        if p["kind"] == "nm":
            lines.append(f"\nN:M {p['nm'][0]}:{p['nm'][1]} ({p['sparsity']:.0%}): dev {p['dev']:.3f} / test {p['test']:.3f}")
    return "\n".join(lines) + "\n\ncells: dev / test accuracy"


def plot_sweep(result: dict, path: Path, title: str, tolerance: float) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    dense = next(p for p in result["points"] if p["kind"] == "dense")
    for ax, split in zip(axes, ("dev", "test")):
        for kind, curve in _curves(result["points"]).items():
            ax.plot([p["sparsity"] for p in curve], [p[split] for p in curve], marker="o", label=kind)
            if split == "dev":
                s = result["summary"][kind]["within_tolerance"]
                ax.axvline(s, linestyle=":", alpha=0.4, color=ax.lines[-1].get_color())
        for p in result["points"]:
            if p["kind"] == "nm":
                ax.scatter([p["sparsity"]], [p[split]], marker="s", zorder=3, label=f"{p['nm'][0]}:{p['nm'][1]}")
        if split == "dev":
            ax.axhspan(dense["dev"] - tolerance, dense["dev"], alpha=0.1, color="grey")
        ax.set_xlabel("sparsity of the attention and FFN weights")
        ax.set_title(split)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
