"""The `petkit` command end to end on a tiny model folder and a CSV file (seconds, no real weights)."""

from __future__ import annotations

import csv
import json
import random

import pytest

from petkit.cli.main import main
from petkit.testing import tiny_bert, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-bert")
    tiny_bert(num_labels=2).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def csv_data(tmp_path_factory):
    """A separable toy task: the label says whether the text mentions 'good' words."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "toy.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for _ in range(240):
            good = rng.random() < 0.5
            words = rng.choices(["fine great good", "nice ok good"] if good else ["bad awful", "poor sad bad"], k=3)
            w.writerow([" ".join(words), "pos" if good else "neg"])
    return path


def served_labels(model_folder, adapter):
    """The trained adapter served by `petkit serve` answers with the data's class names."""
    import httpx

    from petkit.serve.config import ServeConfig
    from petkit.serve.run import BackgroundServer
    from petkit.serve.service import load_service

    service = load_service(ServeConfig(model=str(model_folder), task="classify", adapters={"toy": str(adapter)}))
    with BackgroundServer(service) as url:
        r = httpx.post(url + "/v1/classify", json={"model": "toy", "input": ["good great fine", "awful sad bad"]})
    assert [d["label"] for d in r.json()["data"]] == ["pos", "neg"]


def test_train_then_eval_inspect_and_merge(tiny_folder, csv_data, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--model", str(tiny_folder), "--data", str(csv_data), "--method", "lora",
               "-m", "r=4", "-m", "alpha=8", "-m", "targets=all-linear", "-t", "epochs=5", "-t", "lr=1e-2",
               "-t", "batch_size=16", "--max-length", "24", "--output", str(out), "--no-progress"])
    assert rc == 0
    result = json.loads((out / "result.json").read_text())
    assert result["test_after"]["accuracy"] >= 0.9 > result["test_before"]["accuracy"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "adapter" / "labels.json").read_text()) == {"labels": ["neg", "pos"]}
    served_labels(tiny_folder, out / "adapter")

    capsys.readouterr()
    assert main(["eval", "--model", str(tiny_folder), "--data", str(csv_data), "--adapter", str(out / "adapter")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["accuracy"] == pytest.approx(result["test_after"]["accuracy"], abs=1e-4)

    assert main(["inspect", str(out / "adapter"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["adapters"]["default"]["method"] == "lora" and info["adapters"]["default"]["modules"] == 14  # 13 linears + head

    assert main(["merge-unload", "--model", str(tiny_folder), "--adapter", str(out / "adapter"),
                 "--output", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "config.json").is_file()


def test_yaml_config_and_resume(tiny_folder, csv_data, tmp_path):
    out = tmp_path / "run"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {tiny_folder}\ndata: {csv_data}\nmax_length: 24\noutput: {out}\n"
                   "method: {name: ia3}\ntrain: {epochs: 1, lr: 1.0e-2, batch_size: 32, checkpoint_every: 2}\n")
    assert main(["train", "--config", str(cfg), "--no-progress"]) == 0
    assert main(["train", "--config", str(cfg), "--no-progress", "--resume"]) == 0  # already finished: no-op resume
    assert json.loads((out / "result.json").read_text())["method"] == "ia3"


@pytest.mark.parametrize("argv,message", [
    (["train", "--method", "lorax"], "unknown method 'lorax'"),
    (["train", "--method", "lora", "-m", "r=0"], "r must be a positive int"),
    (["train", "--method", "lora", "-m", "oops"], "KEY=VALUE"),
    (["train", "--config", "/nonexistent.yaml"], "not found"),
    (["inspect", "/nonexistent"], "not found|does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    import re
    assert re.search(message, err)


def test_unknown_dataset_and_model(tiny_folder, capsys):
    assert main(["train", "--model", str(tiny_folder), "--data", "nope", "--no-progress"]) == 2
    assert "Known names" in capsys.readouterr().err
    assert main(["train", "--model", "nosuchmodel", "--data", "bbc", "--no-progress"]) == 2
    assert "unknown model 'nosuchmodel'" in capsys.readouterr().err


def test_methods_lists_every_registered_method(capsys):
    import petkit
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert all(m.name in out for m in petkit.all_methods())


def test_soup_of_a_folder_of_runs(tiny_folder, csv_data, tmp_path, capsys):
    runs = tmp_path / "runs"
    for i, lr in enumerate(("3e-3", "1e-2", "3e-2")):
        assert main(["train", "--model", str(tiny_folder), "--data", str(csv_data), "--method", "lora", "-m", "r=2",
                     "-m", "targets=all-linear", "-t", "epochs=1", "-t", f"lr={lr}", "-t", "batch_size=16", "--seed", str(i), "--max-length", "24",
                     "--output", str(runs / f"lr{lr}"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["soup", str(runs), "--model", str(tiny_folder), "--data", str(csv_data), "--max-length", "24",
                 "--output", str(tmp_path / "soup")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["dev"]) == {"lr3e-3", "lr1e-2", "lr3e-2"}
    assert report["soup_dev"] >= max(report["dev"].values())  # greedy: never worse than its best ingredient on dev
    assert report["ingredients"][0] == max(report["dev"], key=report["dev"].get)
    assert (tmp_path / "soup" / "adapter_model.safetensors").is_file()
    assert main(["eval", "--model", str(tiny_folder), "--data", str(csv_data), "--adapter", str(tmp_path / "soup"),
                 "--max-length", "24"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(report["test"]["soup"], abs=1e-4)


def test_soup_needs_two_runs(tiny_folder, csv_data, tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert main(["soup", str(tmp_path / "runs"), "--model", str(tiny_folder), "--data", str(csv_data)]) != 0
    assert "a soup needs at least two runs with an adapter" in capsys.readouterr().err
