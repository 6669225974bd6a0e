"""The sparsity curve's two readings and the sweep that produces it."""

from __future__ import annotations

import json

import pytest

from petkit.core.errors import ConfigError
from petkit.prune.curve import sharp_drop, within_tolerance
from petkit.prune.sweep import SweepConfig, run_sweep
from petkit.testing import tiny_bert, tiny_tokenizer

CURVE = {0.0: 0.90, 0.1: 0.905, 0.2: 0.895, 0.3: 0.893, 0.4: 0.88, 0.5: 0.80, 0.6: 0.60, 0.7: 0.62}


def test_the_tolerance_point_stops_at_the_first_larger_drop():
    """0.4 falls 2 points: the answer is 0.3, and the noisy 0.7 after the collapse does not count.
    Catches a scan that takes the last sparsity within tolerance anywhere on the curve."""
    assert within_tolerance(CURVE, 0.01) == 0.3
    assert within_tolerance(CURVE, 0.5) == 0.7
    assert within_tolerance({0.0: 0.5, 0.1: 0.3}, 0.01) == 0.0


def test_the_sharp_drop_is_where_the_slope_grows_most():
    """Drop per unit of sparsity on each step: −0.05, 0.1, 0.02, 0.13, 0.8, 2.0, −0.2; its increase is
    largest at 0.5 (0.8 → 2.0), where the collapse steepens. A first difference would answer 0.6."""
    assert sharp_drop(CURVE) == 0.5
    assert sharp_drop({0.0: 0.9, 0.5: 0.85}) is None
    with pytest.raises(ConfigError, match="sparsity 0"):
        sharp_drop({0.1: 0.9, 0.2: 0.8, 0.3: 0.5})


def test_sweep_settings_are_checked():
    with pytest.raises(ConfigError, match="kinds are"):
        SweepConfig(kinds=["magnitude"])
    with pytest.raises(ConfigError, match="must include 0"):
        SweepConfig(sparsities=[0.5])
    with pytest.raises(ConfigError, match="sparsity must be"):
        SweepConfig(sparsities=[0.0, 1.0])


def tiny_setup(tmp_path):
    folder = tmp_path / "model"
    tiny_bert(num_labels=2).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    rows = ["text,label"] + [f"{w} {w} thing {i},{w}" for i in range(40) for w in ("red", "blue")]
    (tmp_path / "d.csv").write_text("\n".join(rows))
    return folder


def test_a_sweep_runs_every_point_once_and_resumes(tmp_path):
    folder = tiny_setup(tmp_path)
    run = {"model": str(folder), "data": str(tmp_path / "d.csv"), "method": {"name": "full"},
           "train": {"lr": 1e-3, "epochs": 1, "batch_size": 16}, "max_length": 16}
    cfg = SweepConfig(run=run, kinds=["global", "random"], sparsities=[0.0, 0.5, 0.9], nm=[[2, 4]],
                      output=str(tmp_path / "out"))
    result = run_sweep(cfg, progress=False, log=lambda *_: None)
    kinds = sorted((p["kind"], p["sparsity"]) for p in result["points"])
    assert kinds == [("dense", 0.0), ("global", 0.5), ("global", 0.9), ("nm", 0.5), ("random", 0.5), ("random", 0.9)]
    assert {p["removed"] for p in result["points"] if p["kind"] == "global" and p["sparsity"] == 0.5} == \
           {p["removed"] for p in result["points"] if p["kind"] == "random" and p["sparsity"] == 0.5}
    assert set(result["summary"]) == {"global", "random"}
    saved = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert len(saved["points"]) == 6
    calls = []
    again = run_sweep(cfg, progress=False, log=calls.append)
    assert calls == [] and again["points"] == result["points"]


def test_petkit_prune_sweep_and_apply(tmp_path, capsys):
    from petkit.cli.main import main
    from petkit.prune import load_pruned
    folder = tiny_setup(tmp_path)
    out = tmp_path / "sweep"
    assert main(["prune", "sweep", "--model", str(folder), "--data", str(tmp_path / "d.csv"), "--kinds", "global",
                 "--sparsities", "0,0.5", "--nm", "2:4", "-t", "epochs=1", "-t", "batch_size=16", "--output", str(out),
                 "--no-progress"]) == 0
    for name in ("sweep.json", "sweep.md", "sweep.png"):
        assert (out / name).is_file(), name
    assert "2:4" in (out / "sweep.md").read_text()
    assert main(["prune", "apply", "--model", str(folder), "--sparsity", "0.8", "--output", str(tmp_path / "p")]) == 0
    assert "removed" in capsys.readouterr().out
    loaded = load_pruned(tmp_path / "p")
    assert type(loaded).__name__ == "BertModel"
    assert main(["prune", "apply", "--model", str(folder), "--sparsity", "1.5", "--output", str(tmp_path / "q")]) == 2
    assert "sparsity must be a number in [0, 1)" in capsys.readouterr().err
    assert main(["prune", "apply", "--model", str(folder), "--kind", "nm", "--nm", "2-4", "--output", str(tmp_path / "q")]) == 2
    assert "two integers like 2:4" in capsys.readouterr().err
