"""Wrapper analysis: linear CKA, per-layer features and probes, pruning ΔW back, the reFT metric, and
`petkit probe layers|cka|revive` on a tiny model folder (seconds, no real weights)."""

from __future__ import annotations

import csv
import random

import pytest
import torch

import petkit
from petkit.analysis.similarity import cka_per_layer, linear_cka
from petkit.analysis.wrapper import layer_features, probe_layers, prune_delta, steps_to_recover
from petkit.cli.main import main
from petkit.core.errors import ConfigError
from petkit.data import ClassificationDataset
from petkit.testing import tiny_bert, tiny_tokenizer


def features(n=200, d=16, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


# --- linear CKA ---------------------------------------------------------------------------------

def test_cka_is_one_for_rotations_scales_and_shifts_of_the_same_features():
    # Catches: a missing centring (the shift), a missing normalisation (the scale), or an elementwise
    # comparison of features instead of their Gram structure (the rotation).
    x = features()
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(1)))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.7 * x @ rotation + 5.0) == pytest.approx(1.0, abs=1e-9)


def test_cka_is_not_invariant_to_an_anisotropic_map_and_low_for_unrelated_features():
    # Catches: a "CKA" that whitens its inputs (then any invertible map would give 1).
    x = features()
    stretch = torch.diag(torch.logspace(0, 3, 16))
    assert linear_cka(x, x @ stretch) < 0.9
    assert linear_cka(x, features(seed=5)) < 0.2


def test_cka_bad_input_and_per_layer():
    with pytest.raises(ConfigError, match="same examples"):
        linear_cka(features(10), features(11))
    with pytest.raises(ConfigError, match="constant"):
        linear_cka(torch.ones(5, 3), features(5))
    out = cka_per_layer({0: features(), 1: features(seed=2)}, {1: features(seed=2), 2: features()})
    assert list(out) == [1] and out[1] == pytest.approx(1.0)


# --- features and probes ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy():
    tok = tiny_tokenizer()
    rng = random.Random(0)
    words = ["good fine", "bad awful", "nice great", "poor sad"]
    examples = [{"text": " ".join(rng.choices(words, k=rng.randint(1, 4))), "label": rng.randint(0, 1)} for _ in range(40)]
    return tok, ClassificationDataset(tok, examples, max_length=32)


def test_layer_features_pool_real_tokens_only(toy):
    # Catches: pooling over padding (an example's features would depend on its batch-mates' length).
    _, data = toy
    model = tiny_bert(num_labels=2, layers=2)
    together = layer_features(model, data, batch_size=8)
    alone = layer_features(model, data, batch_size=1)
    assert sorted(together) == [0, 1, 2] and together[2].shape == (len(data), model.config.hidden_size)
    for i in together:
        torch.testing.assert_close(together[i], alone[i], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(together[0], together[2])  # layers differ: each layer is its own output


def test_a_layer_that_does_not_exist_names_the_valid_range(toy):
    _, data = toy
    with pytest.raises(ConfigError, match=r"layer\(s\) \[3\] do not exist: this model has layers 0..2"):
        layer_features(tiny_bert(num_labels=2, layers=2), data, layers=[0, 3])


def test_probe_reads_a_planted_label_and_is_at_chance_on_noise():
    # Catches: probes scored on the wrong labels or layers mixed up (the planted layer must win).
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (400,), generator=g)
    noise = torch.randn(400, 8, generator=g)
    planted = noise.clone()
    planted[:, 0] += 8.0 * labels  # the label, linearly readable
    feats = {0: noise, 1: planted}
    acc = probe_layers({k: v[:300] for k, v in feats.items()}, labels[:300].tolist(),
                       {k: v[300:] for k, v in feats.items()}, labels[300:].tolist())
    assert acc[1] > 0.95
    assert acc[0] < 0.5


# --- pruning the change back and the reFT metric ------------------------------------------------

def test_prune_delta_puts_back_the_largest_changes_first():
    # Catches: ranking by the smallest |ΔW|, by the weights instead of their change, or per tensor.
    base = {"a": torch.zeros(4), "b": torch.ones(2), "head": torch.zeros(1)}
    adapted = {"a": torch.tensor([0.1, -5.0, 0.2, 3.0]), "b": torch.tensor([1.0, 1.5]), "extra": torch.ones(3),
               "head": torch.ones(1) * 9}
    half = prune_delta(base, {k: v for k, v in adapted.items() if k != "head"}, 2 / 6)  # 2 of the 6 shared entries
    assert half["a"].tolist() == pytest.approx([0.1, 0.0, 0.2, 0.0])  # -5 and 3 are the top |ΔW|; 0.5 stays
    assert half["b"].tolist() == [1.0, 1.5] and torch.equal(half["extra"], torch.ones(3))
    assert all(torch.equal(prune_delta(base, adapted, 0.0)[k], adapted[k]) for k in adapted)
    everything = prune_delta(base, adapted, 1.0)
    assert all(torch.equal(everything[k], base[k]) for k in base)
    with pytest.raises(ConfigError, match="fraction"):
        prune_delta(base, adapted, 1.5)


def test_steps_to_recover_counts_steps_to_a_share_of_the_original():
    curve = [(0, 0.1), (10, 0.5), (20, 0.85), (30, 0.95)]
    assert steps_to_recover(curve, original=1.0, share=0.9) == 30
    assert steps_to_recover(curve, original=0.9, share=0.9) == 20  # 0.81 is reached at step 20
    assert steps_to_recover(curve, original=1.0, share=1.0) is None


# --- the CLI ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folder_and_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    tiny_bert(num_labels=2).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    rng = random.Random(0)
    path = folder / "toy.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for _ in range(120):
            good = rng.random() < 0.5
            w.writerow([" ".join(rng.choices(["good fine", "nice"] if good else ["bad", "awful sad"], k=3)),
                        "pos" if good else "neg"])
    adapter = folder / "adapter"
    petkit.adapt(tiny_bert(num_labels=2), petkit.LoraConfig(r=2, init="gaussian")).save(adapter)
    return folder, path, adapter


def test_cli_layers_probe_compare_revive(folder_and_data, capsys):
    import json
    folder, data, adapter = folder_and_data
    common = ["--model", str(folder), "--data", str(data), "--json"]
    assert main(["probe", "layers", *common, "--layers", "0,2"]) == 0
    assert list(json.loads(capsys.readouterr().out)["base"]) == ["0", "2"]
    assert main(["probe", "cka", *common, "--adapter", str(adapter)]) == 0
    cka = json.loads(capsys.readouterr().out)["CKA"]
    assert cka["0"] == pytest.approx(1.0) and len(cka) == 3  # LoRA on attention leaves the embeddings alone
    assert main(["probe", "revive", *common, "--adapter", str(adapter), "--fraction", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["top 100.0% ΔW pruned"] == pytest.approx(out["base"])  # all of ΔW back: the base itself


def test_cli_bad_layer_is_one_clear_line(folder_and_data, capsys):
    folder, data, _ = folder_and_data
    assert main(["probe", "layers", "--model", str(folder), "--data", str(data), "--layers", "7"]) == 2
    assert "this model has layers 0..2" in capsys.readouterr().err
