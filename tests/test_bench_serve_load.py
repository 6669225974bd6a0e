"""benchmarks/serve_load.py end to end in its --quick mode: tiny random models behind a real `petkit serve`
process and the naive PEFT server, every cell measured, the results files written and sane."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "serve_load.py"
DATA = Path(os.environ.get("PETKIT_DATA_DIR", ROOT.parent / "shared" / "data"))

NEEDED = ("fastapi", "uvicorn", "prometheus_client", "httpx", "peft", "matplotlib")


def _module():
    spec = importlib.util.spec_from_file_location("serve_load", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # ~20 s on an idle 2-core machine (65 s on a busy one): four server processes, ~100 requests
@pytest.mark.skipif(not (DATA / "ag_news").is_dir() or not (DATA / "sst2").is_dir(),
                    reason="needs shared/data (PETKIT_DATA_DIR) for the request texts")
def test_quick_run_measures_every_cell(tmp_path, monkeypatch):
    for module in NEEDED:
        pytest.importorskip(module)
    monkeypatch.setenv("PETKIT_DATA_DIR", str(DATA))
    bench = _module()
    out = tmp_path / "out"
    bench.main(["--quick", "--out", str(out), "--work", str(tmp_path / "work")])

    result = json.loads((out / "serve_load.json").read_text())
    assert (out / "serve_load.md").is_file() and (out / "serve_load.png").stat().st_size > 1000
    assert [part["kind"] for part in result["kinds"]] == ["generate", "classify"]
    for part in result["kinds"]:
        naive = bench.QUICK_NAIVE_CELLS[part["kind"]]
        expected = {("petkit", c, m) for c in bench.QUICK_CONCURRENCY for m in bench.QUICK_MIXES}
        expected |= {("naive", c, m) for c, mixes in naive.items() for m in mixes}
        assert {(c["system"], c["concurrency"], c["mix"]) for c in part["cells"]} == expected
        for cell in part["cells"]:
            assert cell["requests"] == bench.QUICK_REQUESTS[cell["concurrency"]]
            assert cell["requests_per_s"] > 0 and cell["wall_s"] > 0
            assert 0 < cell["p50_s"] <= cell["p99_s"]
            if part["kind"] == "generate":
                assert cell["tokens_per_s"] > 0
                assert cell["completion_tokens"] == cell["requests"] * part["max_tokens"]
            if cell["system"] == "petkit":
                assert cell["vs_base"] > 0
        # every adapter stayed on the model: no load time inside the timed cells
        assert part["petkit_adapters_resident"] == max(bench.QUICK_MIXES)
    steps = result["step_profile"]["step_ms"]
    assert len(steps) == 2 * len(bench.QUICK_MIXES) and all(ms > 0 for ms in steps.values())
    measured = {(t["kind"], t["what"]) for t in result["targets"]}
    assert any("naive" in what for _, what in measured) and any("loss" in what for _, what in measured)
    markdown = (out / "serve_load.md").read_text()
    assert "| petkit | 4 | 4 |" in markdown and "| naive | 4 | 4 |" in markdown
