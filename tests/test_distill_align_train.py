"""Training with the GPT4Image alignment loss (petkit.distill.align_train) and the digits descriptions
of benchmarks/align_digits.py."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from petkit.core.errors import ConfigError
from petkit.distill.align import LOSSES, text_alignment_loss
from petkit.distill.align_train import AlignConfig, AlignedClassifier, AlignedExamples, embed_texts
from petkit.testing import tiny_bert, tiny_tokenizer
from petkit.train import TrainConfig, evaluate, train

TEXT = 6


def parts(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU()), nn.Linear(8, 3)


def aligned(seed: int = 0, **config) -> AlignedClassifier:
    features, head = parts(seed)
    return AlignedClassifier(features, head, 8, TEXT, AlignConfig(**config))


def batch(n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g),
            F.normalize(torch.randn(n, TEXT, generator=g), dim=-1))


def grads(module: nn.Module) -> dict:
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def test_lambda_zero_gives_exactly_the_baseline_gradients():
    """Catches λ = 0 still changing training (the projector's path leaking into the features, a second
    forward, another loss scale): the gradients must equal plain cross-entropy's, bit for bit."""
    x, y, t = batch()
    features, head = parts()
    F.cross_entropy(head(features(x)), y).backward()
    baseline = {**{f"features.{k}": v for k, v in grads(features).items()}, **{f"head.{k}": v for k, v in grads(head).items()}}
    model = aligned(weight=0.0).train()
    model(x, labels=y, text_embeddings=t).loss.backward()
    ours = grads(model)
    assert ours.keys() == baseline.keys()
    assert all(torch.equal(ours[k], baseline[k]) for k in baseline)
    moved = aligned(weight=0.3).train()
    moved(x, labels=y, text_embeddings=t).loss.backward()
    assert not torch.equal(grads(moved)["features.1.weight"], baseline["features.1.weight"])  # λ > 0 does act


@pytest.mark.parametrize("kind", LOSSES)
def test_the_loss_is_ce_plus_lambda_times_the_chosen_alignment_loss(kind):
    """Catches λ applied twice or not at all, the config's loss or τ not passed on, and supcon not
    receiving the labels."""
    x, y, t = batch()
    model = aligned(loss=kind, weight=0.7, temperature=0.35).train()
    out = model(x, labels=y, text_embeddings=t)
    torch.manual_seed(0)
    features = model.features(x)
    expected = F.cross_entropy(model.head(features), y) + 0.7 * text_alignment_loss(
        model.projector(features), t, kind, 0.35, labels=y)
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert torch.allclose(out.loss, out.ce_loss + 0.7 * out.text_loss, atol=1e-6)


def test_byol_is_zero_when_the_projected_features_equal_the_text():
    """Catches the projector applied to anything but the classifier's features, or z left
    un-normalised: with t = z the BYOL term must vanish."""
    x, y, _ = batch()
    model = aligned(loss="byol", weight=1.0).eval()  # eval: BatchNorm gives the same z twice
    z = model.projector(model.features(x)).detach()
    out = model(x, labels=y, text_embeddings=z)
    assert out.text_loss.abs() < 1e-5
    assert torch.allclose(out.loss, out.ce_loss, atol=1e-5)


def test_the_inference_graph_costs_what_the_baseline_costs():
    """Catches the projector shipped with the model (extra parameters or compute at inference) or an
    inference graph whose predictions differ from the trained model's."""
    features, head = parts()
    baseline = sum(p.numel() for p in [*features.parameters(), *head.parameters()])
    model = aligned()
    deployed = model.inference_model()
    assert sum(p.numel() for p in deployed.parameters()) == baseline
    assert not any("projector" in k for k in deployed.state_dict())
    x, _, _ = batch()
    assert torch.equal(deployed(x), model(x).logits)
    assert sum(p.numel() for p in model.parameters()) > baseline  # the projector exists while training


def test_the_text_embeddings_are_constants():
    """Catches gradients flowing into the description embeddings (the text encoder is frozen; the
    embeddings are fixed targets) or the alignment term not reaching the projector and features."""
    x, y, t = batch()
    t = t.clone().requires_grad_(True)
    model = aligned(weight=1.0).train()
    model(x, labels=y, text_embeddings=t).loss.backward()
    assert t.grad is None
    assert model.projector.net[0].weight.grad is not None


def test_misaligned_or_broken_description_embeddings_are_refused():
    """Catches the released code's silent misalignment (its length assert is commented out): counts
    that differ, rows of the wrong width, NaN or all-zero rows, each one clear error, and a refused
    forward must leave the model (BatchNorm statistics included) untouched."""
    x, y, t = batch()
    with pytest.raises(ConfigError, match="one description embedding per example"):
        AlignedExamples(x, y, t[:-1])
    with pytest.raises(ConfigError, match="one label per example"):
        AlignedExamples(x, y[:-1], t)
    broken = t.clone()
    broken[2] = float("nan")
    broken[4] = 0
    with pytest.raises(ConfigError, match=r"rows \[2, 4\]"):
        AlignedExamples(x, y, broken)
    model = aligned().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="one 6-wide row per example"):
        model(x, labels=y, text_embeddings=t[:-1])
    with pytest.raises(ConfigError, match="one 6-wide row per example"):
        model(x, labels=y, text_embeddings=torch.randn(len(x), TEXT + 1))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("bad, message", [
    ({"loss": "triplet"}, "must be one of"), ({"weight": -0.1}, "weight"), ({"weight": math.nan}, "weight"),
    ({"weight": True}, "weight"), ({"temperature": 0}, "temperature"), ({"projector": "deit"}, "projector"),
])
def test_a_bad_config_is_refused(bad, message):
    """Catches an unknown loss surfacing only at the first step, or a negative/NaN λ or τ = 0 training
    silently on a meaningless objective."""
    with pytest.raises(ConfigError, match=message):
        AlignConfig(**bad)


def test_embed_texts_mean_pools_over_real_tokens_only():
    """Catches padding tokens counted in the mean (a text's embedding would depend on its batch
    mates), missing normalisation, dropout left on, or gradients into the encoder."""
    model, tokenizer = tiny_bert(dropout=0.5).train(), tiny_tokenizer()
    texts = ["a 3", "a much longer description of the digit"]
    rows = embed_texts(model, tokenizer, texts)
    alone = embed_texts(model, tokenizer, texts[:1])
    assert torch.allclose(rows[0], alone[0], atol=1e-5)
    assert torch.allclose(rows.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert not rows.requires_grad and all(p.grad is None for p in model.parameters())
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        hidden = model(**tokenizer(texts[:1], return_tensors="pt"), output_hidden_states=True).hidden_states[-1]
    assert torch.allclose(alone[0], F.normalize(hidden[0].mean(0), dim=-1), atol=1e-5)


@pytest.mark.parametrize("texts", [["fine", ""], ["fine", "   "], ["fine", math.nan], ["fine", None], []])
def test_embed_texts_refuses_empty_or_missing_descriptions(texts):
    """Catches an empty or NaN description (a missing cell in a table) embedded as if it were text,
    which would give that example a meaningless target."""
    with pytest.raises(ConfigError, match="descriptions|no descriptions"):
        embed_texts(tiny_bert(), tiny_tokenizer(), texts)
    with pytest.raises(ConfigError, match="needs its tokenizer"):
        embed_texts(tiny_bert(), None, ["fine"])


def test_it_trains_with_the_petkit_trainer_and_evaluates_without_text():
    """Catches a wrapper that does not fit petkit's trainer contract (.loss/.logits from keyword
    batches), evaluation that demands descriptions, or a one-example batch crashing the projector's
    BatchNorm."""
    x, y, t = batch(n=13, seed=3)
    model = aligned(weight=1.0)
    result = train(model, AlignedExamples(x, y, t), TrainConfig(lr=1e-2, max_steps=4, batch_size=6), progress=False)
    assert math.isfinite(result.train_loss)  # 13 = 6 + 6 + 1: the last batch holds one example
    metrics = evaluate(model, AlignedExamples(x, y))
    assert 0 <= metrics["accuracy"] <= 1
    one = model.train()(x[:1], labels=y[:1], text_embeddings=t[:1])
    assert one.text_loss is None and torch.equal(one.loss, one.ce_loss)


def _descriptions():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "digits_descriptions.py"
    spec = importlib.util.spec_from_file_location("digits_descriptions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digits_descriptions_measure_loops_slant_and_name_the_class_at_rate_p():
    """Catches a loop counter that counts the outside or closes diagonal gaps, a slant with the wrong
    sign (image rows grow downward), and the class name leaking in at p = 0 or missing at p = 1."""
    d = _descriptions()
    ring = np.zeros((8, 8), bool)
    ring[1:7, 2:6] = True
    ring[2:6, 3:5] = False
    assert d.closed_loops(ring) == 1
    eight = ring.copy()
    eight[3:5, 3:5] = True  # a bar across the middle: two loops
    assert d.closed_loops(eight) == 2
    assert d.closed_loops(np.eye(8, dtype=bool)) == 0
    diagonal = ~np.zeros((4, 4), bool)
    diagonal[1, 1] = diagonal[2, 2] = False  # two hole pixels touching only at a corner: two loops, not one
    assert d.closed_loops(diagonal) == 2
    right = np.fliplr(np.eye(8)) * 16  # "/" : the top of the stroke is on the right
    assert d.slant(right) > 0 and d.slant(np.eye(8) * 16) < 0
    images = np.stack([ring * 16.0, eight * 16.0, right, np.eye(8) * 16])
    labels = np.array([0, 8, 1, 7])
    assert not any("It is the digit" in s for s in d.describe(images, labels, p=0.0))
    named = d.describe(images, labels, p=1.0)
    assert [s.split()[-1] for s in named] == ["zero.", "eight.", "one.", "seven."]
    assert "one closed loop" in named[0] and "two closed loops" in named[1] and "to the right" in named[2]
