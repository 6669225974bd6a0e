"""One way to build a config from a mapping (petkit/core/mapping.py): a misspelt key a user wrote is
an error naming the closest valid key at every entry point (Python, YAML, `-m`/`-t`/`-s`); a saved
adapter file with a key from a newer petkit still loads, with a warning; one integer check."""

from __future__ import annotations

import dataclasses
import json
import re
import warnings

import pytest
import yaml

import petkit
from petkit.bench import BenchConfig
from petkit.cli.main import main
from petkit.core.errors import ConfigError
from petkit.core.mapping import closest, int_at_least
from petkit.core.registry import all_methods, config_from_dict
from petkit.fed import FedJob
from petkit.merge.run import MergeSpec
from petkit.pipeline import RunSpec
from petkit.testing import tiny_bert
from petkit.train import TrainConfig

SHARED = {"targets", "exclude", "train_head"}


def _misspelt_field(config_cls) -> tuple[str, str]:
    """(a method-specific field, that field with its last letter doubled)."""
    names = [f.name for f in dataclasses.fields(config_cls) if f.name not in SHARED] or ["targets"]
    return names[0], names[0] + names[0][-1]


ADAPTER_CASES = [pytest.param(m.config, id=m.name) for m in all_methods()]


@pytest.mark.parametrize("config_cls", ADAPTER_CASES)
def test_every_adapter_config_names_the_closest_field(config_cls):
    right, wrong = _misspelt_field(config_cls)
    for build in (config_cls.from_dict, lambda d: config_from_dict({"method": config_cls.method, **d})):
        with pytest.raises(ConfigError, match=rf"unknown {config_cls.method} settings \['{wrong}'\] "
                                              rf"\(did you mean '{right}'\?\); known: .*{right}"):
            build({wrong: 1})


PYTHON_CASES = [
    ("bench", lambda: BenchConfig.from_dict({"methods": "lora", "sedes": 3}), "sedes", "seeds"),
    ("bench-budget", lambda: BenchConfig.from_dict({"budgte": "steps=40"}), "budgte", "budget"),
    ("train", lambda: TrainConfig.from_dict({"lerning_rate": 1e-3}), "lerning_rate", "lr"),
    ("train-in-run", lambda: RunSpec(train={"batch_sise": 4}).train_config(), "batch_sise", "batch_size"),
    ("method-in-run", lambda: RunSpec(method={"name": "lora", "rr": 4}).method_config(), "rr", "r"),
    ("fed", lambda: FedJob.from_dict({"round": 3}), "round", "rounds"),
    ("fed-run-field", lambda: FedJob.from_dict({"max_lenght": 32}), "max_lenght", "max_length"),
    ("run", lambda: RunSpec.from_dict({"modle": "minilm"}), "modle", "model"),
    ("merge", lambda: MergeSpec.from_dict({"model": "minilm", "densty": 0.5}), "densty", "density"),
    ("merge-model", lambda: MergeSpec.from_dict({"modle": "minilm"}), "modle", "model"),
]


@pytest.mark.parametrize("build,wrong,right", [c[1:] for c in PYTHON_CASES], ids=[c[0] for c in PYTHON_CASES])
def test_every_run_config_names_the_closest_key(build, wrong, right):
    with pytest.raises(ConfigError, match=rf"\['{wrong}'\] \(did you mean '{right}'\?\); known: .*\b{right}\b"):
        build()


def _yaml(tmp_path, data) -> str:
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


CLI_CASES = [
    ("-m", lambda tmp: ["train", "--method", "lora", "-m", "rr=4"], "rr", "r"),
    ("-t", lambda tmp: ["train", "--method", "lora", "-t", "lerning_rate=1e-3"], "lerning_rate", "lr"),
    ("-s", lambda tmp: ["fed", "-s", "clients=2", "-s", "round=3", "--output", str(tmp / "fed")], "round", "rounds"),
    ("train-yaml", lambda tmp: ["train", "--config", _yaml(tmp, {"max_lenght": 32})], "max_lenght", "max_length"),
    ("method-yaml", lambda tmp: ["train", "--config", _yaml(tmp, {"method": {"name": "ia3", "targetz": ["query"]}})],
     "targetz", "targets"),
    ("bench-yaml", lambda tmp: ["bench", "--config", _yaml(tmp, {"sedes": 3})], "sedes", "seeds"),
    ("merge-yaml", lambda tmp: ["merge", _yaml(tmp, {"model": "minilm", "inputs": ["a", "b"], "methd": "ties"})],
     "methd", "method"),
    ("fed-yaml", lambda tmp: ["fed", _yaml(tmp, {"clints": 2}), "--output", str(tmp / "fed")],
     "clints", "clients"),
]


@pytest.mark.parametrize("argv,wrong,right", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_every_cli_entry_point_names_the_closest_key(argv, wrong, right, tmp_path, capsys):
    assert main(argv(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert re.search(rf"\['{wrong}'\] \(did you mean '{right}'\?\)", err), err


def test_several_unknown_keys_each_get_their_guess_and_far_ones_none():
    with pytest.raises(ConfigError, match=r"\['densty', 'rnk'\] \(did you mean 'density' for 'densty', "
                                          r"'rank' for 'rnk'\?\)"):
        MergeSpec.from_dict({"model": "m", "densty": 0.5, "rnk": 4})
    with pytest.raises(ConfigError, match=r"unknown merge settings \['zzzz'\]; known: density"):
        MergeSpec.from_dict({"model": "m", "zzzz": 1})
    assert closest("learning_rate", ["lr", "warmup"]) == "lr"  # spelled out
    assert closest("bs", ["batch_size", "seed"]) == "batch_size"  # abbreviated
    assert closest("zzzz", ["lr", "warmup"]) is None


def test_old_federated_names_still_work_with_a_future_warning():
    with pytest.warns(FutureWarning, match="partition"):
        assert FedJob.from_dict({"split": "iid"}).partition == "iid"


# -- saved files: a newer petkit's keys are kept out, with a warning, and the file loads ------------

def test_a_saved_adapter_with_an_unknown_key_still_loads_with_a_warning(tmp_path):
    am = petkit.adapt(tiny_bert(), petkit.LoraConfig(r=2, targets=["query"]))
    am.save(tmp_path / "adapter")
    path = tmp_path / "adapter" / "adapter_config.json"
    saved = json.loads(path.read_text())
    (entry,) = saved["adapters"].values()
    entry["config"]["from_the_future"] = {"knob": 1}
    path.write_text(json.dumps(saved))
    with pytest.warns(UserWarning, match=r"ignoring unknown keys \['from_the_future'\].*newer petkit"):
        again = petkit.load(tiny_bert(), tmp_path / "adapter")
    assert again.adapter_config("default") == petkit.LoraConfig(r=2, targets=["query"])
    with pytest.warns(UserWarning, match="ignoring unknown keys"):
        assert config_from_dict(entry["config"], saved=True) == petkit.LoraConfig(r=2, targets=["query"])
    with pytest.raises(ConfigError, match="from_the_future"):  # the same dict written by a user is an error
        config_from_dict(entry["config"])


def test_saved_configs_without_unknown_keys_load_silently():
    data = petkit.LoraConfig(r=4, targets=["query"]).to_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert petkit.LoraConfig.from_saved(data) == petkit.LoraConfig.from_dict(data)


# -- the one integer check --------------------------------------------------------------------------

@pytest.mark.parametrize("value,minimum,message", [
    (True, 1, "n must be an integer, got True"),
    (False, 0, "n must be an integer, got False"),
    (2.0, 1, "n must be an integer, got 2.0"),
    (2.5, 1, "n must be an integer, got 2.5"),
    ("3", 1, "n must be an integer, got '3'"),
    (None, 1, "n must be an integer, got None"),
    (0, 1, "n must be >= 1, got 0"),
    (-2, 1, "n must be >= 1, got -2"),
    (-1, 0, "n must be >= 0, got -1"),
])
def test_int_at_least_rejects_bools_floats_and_small_values(value, minimum, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        int_at_least("n", value, minimum)


def test_int_at_least_passes_integers_and_adds_the_hint():
    assert int_at_least("n", 1) == 1 and int_at_least("n", 0, 0) == 0
    with pytest.raises(ConfigError, match=r"steps must be >= 5, got 4: too few"):
        int_at_least("steps", 4, 5, ": too few")


@pytest.mark.parametrize("build,message", [
    (lambda: TrainConfig(epochs=True), "epochs must be an integer, got True"),
    (lambda: FedJob(clients=0), "clients must be >= 1, got 0"),
    (lambda: FedJob(rounds=2.0), "rounds must be an integer, got 2.0"),
    (lambda: FedJob(local_loss_steps=True), "local_loss_steps must be an integer, got True"),
    (lambda: BenchConfig(methods=("lora",), seeds=False), "seeds must be an integer, got False"),
    (lambda: BenchConfig(methods=("lora",), jobs=-1), "jobs must be >= 1, got -1"),
])
def test_the_run_configs_share_the_integer_check(build, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build()
