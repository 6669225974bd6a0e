"""Read user data files: CSV, TSV, JSON Lines, Parquet and plain text.

``read_rows`` returns a table file's rows as they are (SFT records keep their fields: see
``sft_formats``); ``load_file`` turns them into raw classification/LM records ``{"text": str,
"text_pair"?: str, "label"?: raw value}``. Turning raw labels into integer ids and splitting is
``load_dataset``'s job.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from petkit.core.errors import ConfigError

SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
            ".txt": "text"}


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
    - ``.parquet``: read with pyarrow (nested columns, e.g. chat ``messages``, become lists of dicts).
    - ``.txt``: the whole file is one record ``{"text": ...}`` (a running text for language modelling).

    ``label_field`` / ``text_pair_field`` default to ``"label"`` / ``"text_pair"`` when such a column
    exists; naming a column that is not there is an error that lists the columns found.
    """
    path = Path(path)
    if _kind(path) == "text":
        return [{"text": path.read_text(encoding=encoding)}]
    return to_records(read_rows(path, columns=columns, encoding=encoding), path, text_field, label_field,
                      text_pair_field)


def _kind(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(f"cannot read {path}: unsupported suffix {path.suffix!r} (supported: {', '.join(SUFFIXES)})")
    return kind


def read_rows(path: str | Path, *, columns: list[str] | None = None, encoding: str = "utf-8") -> list[dict]:
    """The rows of a CSV/TSV/JSONL/Parquet file as dicts, unchanged (at least one row, or ConfigError)."""
    path = Path(path)
    kind = _kind(path)
    if kind == "text":
        raise ConfigError(f"{path} is plain text, not a table of rows")
    if kind == "jsonl":
        rows = _read_jsonl(path, encoding)
    elif kind == "parquet":
        rows = _read_parquet(path)
    else:
        rows = _read_delimited(path, kind, columns, encoding)
    if not rows:
        raise ConfigError(f"{path} holds no rows")
    return rows


def to_records(rows: list[dict], path: Path, text_field: str = "text", label_field: str | None = None,
               text_pair_field: str | None = None) -> list[dict]:
    """Raw classification/LM records of table rows (see ``load_file``)."""
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


def _read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"reading {path} needs pyarrow: pip install pyarrow") from None
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise ConfigError(f"{path}: not a readable Parquet file ({e})") from None
    return table.to_pylist()
