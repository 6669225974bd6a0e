"""`petkit train --quantize BITS`: QLoRA-style fine-tuning from the command line (tiny Llama, your own files)."""

from __future__ import annotations

import json

import pytest

from petkit.core.errors import ConfigError
from petkit.pipeline import RunSpec, prepare
from petkit.quant import PackedLinear, quantized_layers
import test_pipeline_sft as sft
from petkit.cli.main import main

folder, files, train_args = sft.folder, sft.files, sft.train_args  # its fixtures, and its train command


def test_train_on_a_4_bit_base_from_the_command_line(folder, files, tmp_path):
    """Catches a --quantize flag that never reaches the model (the run would train on the float base)
    or an adapter whose file does not load back onto the float base it was made from."""
    config = tmp_path / "run.yaml"
    config.write_text("quantize: {bits: 2, scheme: int, group_size: 16}\n")  # the tiny model is 32 wide
    assert main(train_args(folder, files, tmp_path / "run", "--config", str(config), "--quantize", "4")) == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["test_after"]["loss"] < result["test_before"]["loss"]
    from petkit import load
    from petkit.testing import tiny_llama
    am = load(tiny_llama(seed=0), tmp_path / "run" / "adapter")  # the fingerprint allows the base's rounding
    assert len(list(am.layers(am.adapters[0]))) == 14
    spec = json.loads((tmp_path / "run" / "spec.json").read_text())
    assert spec["quantize"] == {"bits": 4, "scheme": "int", "group_size": 16}  # the flag's bits over the file's


def test_the_run_setting_quantizes_the_base_before_adapting(folder, files):
    spec = RunSpec(model=str(folder), data={k: str(v) for k, v in files.items()}, task="sft", max_length=64,
                   quantize={"bits": 2, "scheme": "int", "group_size": 16})
    layers = quantized_layers(prepare(spec).model)
    assert len(layers) == 14 and all(isinstance(m, PackedLinear) and m.format.bits == 2 for m in layers.values())


@pytest.mark.parametrize("setting, words", [({"group_size": 64}, "bits"), ({"bits": 4, "grup_size": 64}, "group_size"),
                                            (4, "mapping")])
def test_bad_quantize_settings_are_named(setting, words):
    with pytest.raises(ConfigError, match=words):
        RunSpec(quantize=setting)
