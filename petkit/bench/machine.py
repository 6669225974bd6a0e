"""What a run was measured on: the CPU and the library versions, stored in each run's record so a report
rendered later (or on another machine) states where its numbers came from."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def cpu() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version
    parts = [f"python {platform.python_version()}"]
    for package in ("petkit", "torch", "transformers", "peft"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            pass
    return ", ".join(parts)


def recorded(records: list[dict], key: str) -> str:
    """The values of `key` over the records, each with its number of runs when they differ, and how
    many runs did not record it (records made before the field existed)."""
    counts: dict[str, int] = {}
    for r in records:
        counts[r.get(key)] = counts.get(r.get(key), 0) + 1
    missing = counts.pop(None, 0)
    if len(counts) == 1 and not missing:
        return next(iter(counts))
    parts = [f"{value} ({_runs(n)})" for value, n in sorted(counts.items())]
    if missing:
        parts.append(f"not recorded for {_runs(missing)} made before records kept it")
    return "; ".join(parts)


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"
