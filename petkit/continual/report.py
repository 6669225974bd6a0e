"""How a continual run is shown: the accuracy matrix as a table and a heat map, and the curve of the
average accuracy over the tasks seen so far, after each task (one line per run on one plot)."""

from __future__ import annotations

from pathlib import Path

from .run import ContinualResult


def matrix_table(result: ContinualResult) -> str:
    """Markdown: rows = after task i, columns = task j."""
    names = result.stream
    lines = ["| after \\ on | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for i, row in enumerate(result.matrix):
        cells = [f"{row[j]:.3f}" if j < len(row) else "" for j in range(len(names))]
        lines.append(f"| {names[i]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def metrics_line(result: ContinualResult) -> str:
    m = result.metrics
    return (f"last {m['last']:.3f} · average {m['average']:.3f} · forgetting {m['forgetting']:.3f} · "
            f"BWT {m['bwt']:+.3f}")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_heatmap(result: ContinualResult, path: Path, title: str = "") -> Path:
    plt = _pyplot()
    n = len(result.stream)
    grid = [[row[j] if j < len(row) else float("nan") for j in range(n)] for row in result.matrix]
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.5, 1.0 * len(grid) + 1.8))
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if value == value:  # not NaN
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black")
    ax.set_xticks(range(n), result.stream, rotation=30, ha="right")
    ax.set_yticks(range(len(grid)), [f"after {s}" for s in result.stream[: len(grid)]])
    ax.set_xlabel("tested on")
    ax.set_title(title or f"{result.config.get('method')}: {metrics_line(result)}", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def seen_average_curve(result: ContinualResult) -> list[float]:
    """Mean accuracy over the tasks seen so far, after each task."""
    return [sum(row) / len(row) for row in result.matrix]


def plot_curves(results: dict[str, list[float]], path: Path, title: str, tasks: list[str]) -> Path:
    """One line per name: accuracy on the tasks seen so far after each task (e.g. a mean over seeds)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colours = plt.get_cmap("tab20").colors  # 20 distinct colours: a dozen methods stay apart
    for i, (name, curve) in enumerate(results.items()):
        ax.plot(range(1, len(curve) + 1), curve, marker="os^D"[i % 4], linestyle=("-", "--")[i // 10 % 2],
                color=colours[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20], label=name)
    ax.set_xticks(range(1, len(tasks) + 1), [f"{i + 1}: {t}" for i, t in enumerate(tasks)], rotation=20, ha="right",
                  fontsize=7)
    ax.set_ylabel("mean accuracy on tasks seen so far")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
