"""The READMEs' promises that can drift: the two opening commands (README.md) and the generated result
tables (benchmarks/README.md)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_opens_with_the_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("```")[1]
    assert [line.split("#")[0].strip() for line in block.strip().splitlines()] == ["make demo", "make test"]


def test_performance_table_is_generated_from_the_committed_results():
    spec = importlib.util.spec_from_file_location("render_readme", ROOT / "benchmarks" / "render_readme.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    assert render.updated_readme() == (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8"), \
        "benchmarks/README.md's performance table is out of date: run .venv/bin/python benchmarks/render_readme.py"
