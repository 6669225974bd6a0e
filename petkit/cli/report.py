"""The table a fine-tuning run ends with: test metrics before and after, trainable parameters, time, adapter size."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def print_report(report: dict, console: Console) -> None:
    """What `petkit train` and `make demo` print after a run (petkit.pipeline.run's report)."""
    table = Table(title=f"{report['method']} on {report['model']} / {report['data']}")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for key in report["test_after"]:
        table.add_row(f"test {key}", f"{report['test_before'].get(key, float('nan')):.4f}", f"{report['test_after'][key]:.4f}")
    console.print(table)
    pct = 100 * report["trainable_parameters"] / report["base_parameters"]
    console.print(f"trainable parameters: {report['trainable_parameters']:,} ({pct:.2f}% of {report['base_parameters']:,})")
    processes = f" in {report['processes']} processes" if report.get("processes", 1) > 1 else ""
    console.print(f"training: {report['steps']} steps in {report['train_seconds']} s{processes}")
    if "adapter" in report:
        console.print(f"adapter: {report['adapter']} ({report['adapter_bytes'] / 1024:.1f} KiB)")
