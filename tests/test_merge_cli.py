"""`petkit merge merge.yaml` end to end on a tiny model folder, against a dense reference."""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml

import petkit
from petkit.cli.main import main
from petkit.testing import tiny_batch, tiny_bert

QUERY = "bert.encoder.layer.0.attention.self.query"


@pytest.fixture()
def two_adapters(tmp_path):
    folder = tmp_path / "base"
    tiny_bert(num_labels=2).save_pretrained(folder)
    saved = []
    for i in range(2):
        am = petkit.adapt(tiny_bert(num_labels=2), petkit.LoraConfig(r=2, targets=["query"]))
        torch.manual_seed(i)
        with torch.no_grad():
            for _, _, d in am.layers("default"):
                for p in d.parameters():
                    p.add_(torch.randn_like(p) * 0.3)
        am.save(tmp_path / f"a{i}", format="peft" if i else "petkit")  # either format is an input
        saved.append(am)
    return folder, saved


def write(tmp_path, spec):
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_merge_writes_the_weighted_delta_w_sum(two_adapters, tmp_path, capsys):
    folder, saved = two_adapters
    spec = {"model": str(folder), "inputs": [{"path": str(tmp_path / "a0"), "weight": 0.6},
                                             {"path": str(tmp_path / "a1"), "weight": 0.4}],
            "heads": "average", "output": str(tmp_path / "merged")}
    assert main(["merge", write(tmp_path, spec)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["max_relative_error"] < 1e-5 and report["modules"] == 2
    merged = petkit.load(tiny_bert(num_labels=2), tmp_path / "merged")
    layer = merged.layer(QUERY)
    base = layer.base_layer
    expected = sum(w * am.layer(QUERY).deltas["default"].delta_weight(base) for w, am in zip((0.6, 0.4), saved))
    torch.testing.assert_close(layer.deltas["default"].delta_weight(base), expected, atol=1e-5, rtol=1e-5)
    batch = tiny_batch(merged.base, seed=1)
    with torch.no_grad():
        assert torch.isfinite(merged(**batch).logits).all()


@pytest.mark.parametrize("change,message", [
    ({"inputs": ["only/one"]}, "inputs must list at least two adapter folders"),
    ({"method": "ties", "density": -1}, r"ties needs a density in \(0, 1\]"),
    ({"colour": "red"}, r"unknown merge settings \['colour'\]"),
    ({"inputs": [{"path": "x", "weight": 1, "extra": 2}, "y"]}, "each input is a folder path or"),
])
def test_bad_merge_specs(two_adapters, tmp_path, change, message, capsys):
    folder, _ = two_adapters
    spec = {"model": str(folder), "inputs": [str(tmp_path / "a0"), str(tmp_path / "a1")],
            "output": str(tmp_path / "merged"), **change}
    assert main(["merge", write(tmp_path, spec)]) != 0
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "merged").exists()


def test_merge_help_names_every_method_of_the_registry_and_every_yaml_key(monkeypatch, capsys):
    from dataclasses import fields

    from petkit.merge import ops
    from petkit.merge.run import MergeSpec
    monkeypatch.setattr(ops, "METHODS", (*ops.METHODS, "a_method_added_later"))  # read from the code, not copied
    with pytest.raises(SystemExit) as done:
        main(["merge", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    methods = re.search(r"methods: (.*)", text).group(1).split(", ")
    assert methods == list(ops.METHODS)
    assert [f.name for f in fields(MergeSpec)] == re.findall(r"^  (\w+): ", text, re.M)
