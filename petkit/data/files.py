"""Read user data files: CSV, TSV, JSON Lines and plain text.

Every reader returns raw records ``{"text": str, "text_pair"?: str, "label"?: raw value}``; turning raw
labels into integer ids and splitting is ``load_dataset``'s job.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from petkit.core.errors import ConfigError

SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".txt": "text"}


def load_file(
    path: str | Path,
    text_field: str = "text",
    label_field: str | None = None,
    text_pair_field: str | None = None,
    *,
    columns: list[str] | None = None,
    encoding: str = "utf-8",
) -> list[dict]:
    """Read one data file into raw records.

    - ``.csv`` / ``.tsv``: a header row names the columns (or pass ``columns=`` for a headerless file).
      TSV is read without quote handling, so quotes inside text stay literal.
    - ``.jsonl``: one JSON object per line.
    - ``.txt``: the whole file is one record ``{"text": ...}`` (a running text for language modelling).

    ``label_field`` / ``text_pair_field`` default to ``"label"`` / ``"text_pair"`` when such a column
    exists; naming a column that is not there is an error that lists the columns found.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(f"cannot read {path}: unsupported suffix {path.suffix!r} (supported: {', '.join(SUFFIXES)})")
    if kind == "text":
        return [{"text": path.read_text(encoding=encoding)}]

    rows = _read_jsonl(path, encoding) if kind == "jsonl" else _read_delimited(path, kind, columns, encoding)
    if not rows:
        raise ConfigError(f"{path} holds no rows")
    found = list(rows[0].keys())
    fields = {"text": _pick(text_field, True, "text", found, path)}
    pair = _pick(text_pair_field, text_pair_field is not None, "text_pair", found, path)
    label = _pick(label_field, label_field is not None, "label", found, path)
    if pair:
        fields["text_pair"] = pair
    if label:
        fields["label"] = label

    records = []
    for n, row in enumerate(rows, start=1):
        rec = {}
        for key, column in fields.items():
            value = row.get(column)
            if value is None or (key != "label" and not isinstance(value, str)):
                raise ConfigError(f"{path}, row {n}: column {column!r} is missing or not text: {value!r}")
            rec[key] = value
        records.append(rec)
    return records


def _pick(requested: str | None, required: bool, default: str, found: list[str], path: Path) -> str | None:
    """The column to use for one field, or None when an optional field is absent."""
    name = requested or default
    if name in found:
        return name
    if required:
        raise ConfigError(f"column {name!r} not found in {path}; columns are {found}")
    return None


def _read_delimited(path: Path, kind: str, columns: list[str] | None, encoding: str) -> list[dict]:
    options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if kind == "tsv" else {}
    with path.open(encoding=encoding, newline="") as f:
        reader = csv.DictReader(f, fieldnames=columns, **options)
        return [row for row in reader if any(v for v in row.values() if isinstance(v, str))]


def _read_jsonl(path: Path, encoding: str) -> list[dict]:
    rows = []
    with path.open(encoding=encoding) as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}, line {n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}, line {n}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows
