"""The leaderboard's PNG plots (matplotlib, Agg backend: no display needed).

- accuracy_vs_params.png: test accuracy (mean ± std over seeds) against trainable parameters, log-x,
  one panel per task, one colour per method family;
- memory_time.png: training memory and step time per method (bars; the dashed line is full FT);
- heatmap.png: mean test accuracy, methods × tasks.

A language-modelling task is plotted by test perplexity instead (its own y axis in
accuracy_vs_params.png; in heatmap.png only when no task is a classification one, since one colour
scale cannot hold both): `plot_note` says so under the plots in leaderboard.md.
"""

from __future__ import annotations

import math
from pathlib import Path

from petkit.bench.leaderboard import Board, task_metric, task_score
from petkit.bench.summary import task_name


def write_plots(out: Path, board: Board) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = sorted({r["family"] for r in board.rows})
    colour = {f: plt.get_cmap("tab10")(k % 10) for k, f in enumerate(families)}
    paths = [_accuracy_vs_params(plt, out, board, colour), _memory_time(plt, out, board, colour),
             _heatmap(plt, out, board)]
    plt.close("all")
    return paths


def plot_note(board: Board) -> str:
    """One line for leaderboard.md on how the plots show language-modelling tasks."""
    lm = [task_name(t) for t in board.tasks if task_metric(board, t) == "perplexity"]
    classification = [t for t in board.tasks if task_metric(board, t) == "accuracy"]
    heatmap = ("the heatmap shows the classification tasks only" if classification else
               "the heatmap shows test perplexity (lower is better)")
    return (f"Plots: {', '.join(lm)} {'is a language-modelling task' if len(lm) == 1 else 'are language-modelling tasks'}"
            f", plotted by test perplexity (lower is better) against trainable parameters; {heatmap}.")


def _scale(metric: str | None) -> tuple[float, str]:
    """Plot units of a metric: accuracy in %, perplexity as is."""
    return (1.0, "test perplexity (lower is better)") if metric == "perplexity" else (100.0, "test accuracy (%)")


def _accuracy_vs_params(plt, out: Path, board: Board, colour: dict) -> Path:
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, len(board.tasks), figsize=(max(7.0, 4.5 * len(board.tasks)), 4.5), squeeze=False)
    metrics = [task_metric(board, t) for t in board.tasks]
    points = []
    for k, (ax, task) in enumerate(zip(axes[0], board.tasks)):
        scale, label = _scale(metrics[k])
        for r in board.rows:
            cell = r["tasks"].get(task)
            if cell is None or not cell["params"]:
                continue
            _, mean, std = task_score(cell)
            ax.errorbar(cell["params"], scale * mean, yerr=scale * std, fmt="o", color=colour[r["family"]], capsize=3)
            points.append((ax, cell["params"], scale * mean, r["method"]))
        if k and metrics[k] != metrics[0]:  # the first panel's label is set below; others only when different
            ax.set_ylabel(label)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # decade labels only: the minor ones overlap
        ax.set_title(task_name(task))
        ax.set_xlabel("trainable parameters")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(_scale(metrics[0])[1])
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=c, label=f) for f, c in colour.items()]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), frameon=False)
    fig.tight_layout(rect=(0, 0.06 * (1 + (len(handles) - 1) // 4), 1, 1))
    _place_labels(fig, points)
    return _save(fig, out / "accuracy_vs_params.png")


def _place_labels(fig, points, fontsize: int = 8) -> None:
    """Name every point without labels overlapping: from the highest point down, a label goes just
    above-right of its point, or lower until its box is free (with a thin line back to the point when
    it had to move). Methods often share a parameter count, so their points stack in one column."""
    fig.canvas.draw()  # fixes the axis limits, so data coordinates map to pixels
    to_pixels = fig.dpi / 72.0
    height, char = (fontsize + 2) * to_pixels, 0.62 * fontsize * to_pixels
    placed: dict = {}
    for ax, x, y, name in sorted(points, key=lambda p: -p[0].transData.transform((p[1], p[2]))[1]):
        px, py = ax.transData.transform((x, y))
        left, right, top = px + 4 * to_pixels, px + 4 * to_pixels + char * len(name), py + 4 * to_pixels + height
        boxes = placed.setdefault(ax, [])
        while any(left < r and l < right and top - height < t and b < top for l, r, t, b in boxes):
            top -= height / 2
        boxes.append((left, right, top, top - height))
        offset = ((left - px) / to_pixels, (top - height - py) / to_pixels)
        moved = offset[1] < 0
        ax.annotate(name, (x, y), textcoords="offset points", xytext=offset, fontsize=fontsize,
                    arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5} if moved else None)


def _memory_time(plt, out: Path, board: Board, colour: dict) -> Path:
    methods = [r["method"] for r in board.rows]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(methods) + 4), 4))
    for ax, key, label in ((axes[0], "train_mb", "training memory (MB added by training)"),
                           (axes[1], "step_ms", "train step time (ms, median)")):
        values = [0 if _nan(r[key]) else r[key] for r in board.rows]
        ax.bar(methods, values, color=[colour[r["family"]] for r in board.rows])
        ref = next((r[key] for r in board.rows if r["method"] == board.baseline), None)
        if ref is not None and not _nan(ref):  # the dashed line: the baseline the ratios divide by
            ax.axhline(ref, linestyle="--", color="grey", linewidth=1)
        ax.set_title(label, fontsize=10)
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return _save(fig, out / "memory_time.png")


def _heatmap(plt, out: Path, board: Board) -> Path:
    # one colour scale: the classification tasks (accuracy), or, when there are none, perplexity
    metrics = {t: task_metric(board, t) for t in board.tasks}
    metric = "perplexity" if "accuracy" not in metrics.values() and "perplexity" in metrics.values() else "accuracy"
    tasks = [t for t in board.tasks if metrics[t] in (metric, None)]
    scale, label = _scale(metric)
    grid = [[scale * task_score(r["tasks"][t])[1] if t in r["tasks"] else math.nan for t in tasks] for r in board.rows]
    fig, ax = plt.subplots(figsize=(1.4 * len(tasks) + 3, 0.45 * len(board.rows) + 1.5))
    # reversed colours for perplexity, so the better cells are the bright ones either way
    image = ax.imshow(grid, cmap="viridis" if metric == "accuracy" else "viridis_r", aspect="auto")
    middle = sum(image.get_clim()) / 2
    ax.set_xticks(range(len(tasks)), [task_name(t) for t in tasks])
    ax.set_yticks(range(len(board.rows)), [r["method"] for r in board.rows])
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if not _nan(value):
                bright = value > middle if metric == "accuracy" else value < middle
                ax.text(j, i, f"{value:.1f}" if metric == "accuracy" else f"{value:.2f}", ha="center", va="center",
                        fontsize=8, color="black" if bright else "white")  # readable on light and dark cells
    fig.colorbar(image, ax=ax, label=label)
    fig.tight_layout()
    return _save(fig, out / "heatmap.png")


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path
