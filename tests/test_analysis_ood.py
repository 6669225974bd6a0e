"""PT-OOD scores (petkit.analysis.ood, ood_scores, embed) on toy numbers and a tiny random BERT."""

from __future__ import annotations

import math

import pytest
import torch

from petkit.analysis.embed import classifier_outputs, sentence_embeddings
from petkit.analysis.ood import OODBank, logit_scores
from petkit.analysis.ood_scores import Mahalanobis, auroc, detection_metrics, energy, fpr_at_tpr, knn_score, msp
from petkit.core.errors import BaseModelMismatch, ConfigError
from petkit.testing import tiny_bert, tiny_tokenizer

TEXTS = ["a good film", "bad plot", "what time is it?", "the cat sat on the mat", "ok"]


def test_metrics_on_separated_and_identical_scores():
    # catches: ID taken as the negative class (AUROC 0), a threshold on the wrong side of the 95% point
    assert detection_metrics([5, 6, 7], [1, 2, 3]) == {"auroc": 1.0, "fpr95": 0.0}
    same = torch.randn(20000, generator=torch.Generator().manual_seed(0))
    assert auroc(same[:10000], same[10000:]) == pytest.approx(0.5, abs=0.02)
    assert fpr_at_tpr(same[:10000], same[10000:]) == pytest.approx(0.95, abs=0.02)


def test_fpr95_threshold_keeps_95_percent_of_id():
    # 20 ID scores 1..20: accepting 95% of them means the threshold is 2; OOD 1.5 is rejected, 2 and 30 pass
    assert fpr_at_tpr(list(range(1, 21)), [1.5, 2.0, 30.0]) == pytest.approx(2 / 3)
    with pytest.raises(ConfigError, match="need ID and OOD"):
        auroc([], [1.0])


def test_logit_scores():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    s = logit_scores(logits)
    assert torch.allclose(s["msp"], logits.softmax(-1).max(-1).values)
    assert s["msp"][1] == pytest.approx(1 / 3)
    assert torch.allclose(s["energy"], torch.logsumexp(logits, -1))  # higher on the confident row
    assert torch.allclose(s["max_logit"], torch.tensor([2.0, 0.0]))
    assert energy(logits, temperature=2.0)[1] == pytest.approx(2 * math.log(3))
    with pytest.raises(ConfigError, match="temperature"):
        energy(logits, temperature=0)
    assert msp(logits).shape == (2,)


def test_mahalanobis_uses_the_shared_covariance():
    # catches: Euclidean distance (identity precision), per-point instead of class means
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 2, generator=g) * torch.tensor([10.0, 0.1])   # wide along axis 0, narrow along axis 1
    y = torch.arange(4000) % 2
    x = x + torch.stack([torch.tensor([0.0, 0.0]), torch.tensor([0.0, 5.0])])[y]
    m = Mahalanobis(x, y)
    along_wide, along_narrow = m.score(torch.tensor([[5.0, 0.0], [0.0, 0.5]]))
    assert along_wide > along_narrow  # 0.5 across a σ=0.1 axis is farther than 5 along a σ=10 axis
    assert m.score(m.means.float())[0] == pytest.approx(0.0, abs=1e-6)


def test_knn_score_is_the_kth_neighbour_distance_of_normalised_features():
    bank = torch.eye(3)
    query = torch.tensor([[5.0, 0.0, 0.0]])       # normalised: equals bank row 0
    assert knn_score(query, bank, k=1).item() == pytest.approx(0.0, abs=1e-6)
    assert knn_score(query, bank, k=2).item() == pytest.approx(-math.sqrt(2))
    assert knn_score(query, 7 * bank, k=2).item() == pytest.approx(-math.sqrt(2))  # bank normalised too
    with pytest.raises(ConfigError, match="k must be"):
        knn_score(query, bank, k=4)


@pytest.fixture(scope="module")
def tiny():
    return tiny_bert(num_labels=2), tiny_tokenizer()


def test_sentence_embeddings_ignore_padding_and_check_input(tiny):
    # catches: pooling over pad tokens (a short text's embedding would change next to a long one)
    model, tok = tiny
    alone = sentence_embeddings(model, tok, ["ok"])
    batched = sentence_embeddings(model, tok, ["ok", "a much longer sentence than the first"])
    assert torch.allclose(alone[0], batched[0], atol=1e-5)
    assert sentence_embeddings(model, tok, TEXTS, normalize=True).norm(dim=-1).sub(1).abs().max() < 1e-5
    assert not torch.allclose(sentence_embeddings(model, tok, ["ok"], layer=0), alone)
    with pytest.raises(ConfigError, match=r"layer\(s\) \[3\] do not exist: this model has layers 0..2"):
        sentence_embeddings(model, tok, ["ok"], layer=3)
    with pytest.raises(ConfigError, match="empty"):
        sentence_embeddings(model, tok, [])


def test_classifier_outputs_features_are_what_the_head_reads(tiny):
    model, tok = tiny
    logits, feats = classifier_outputs(model, tok, TEXTS)
    assert logits.shape == (5, 2) and feats.shape == (5, 32)
    assert torch.allclose(model.classifier(feats), logits, atol=1e-5)


def test_bank_round_trip_and_refused_for_another_model(tiny, tmp_path):
    # catches: a bank scored or loaded with another model's features (no fingerprint check)
    model, tok = tiny
    bank = OODBank.build(model, tok, TEXTS, k=2)
    scores = bank.score(model, tok, ["a good plot", "zzzz"])
    bank.save(tmp_path / "bank", model)
    base_only = model.base_model  # the same encoder without its head is the same model
    again = OODBank.load(tmp_path / "bank", base_only)
    assert again.k == 2 and torch.allclose(again.score(base_only, tok, ["a good plot", "zzzz"]), scores)
    other = tiny_bert(num_labels=2, seed=1)
    with pytest.raises(BaseModelMismatch, match="OOD bank|ood_bank"):
        OODBank.load(tmp_path / "bank", other)
    with pytest.raises(BaseModelMismatch, match="another model"):
        bank.score(other, tok, ["a good plot"])
    assert len(OODBank.load(tmp_path / "bank", other, force=True).features) == len(TEXTS)
    with pytest.raises(ConfigError, match="k must be"):
        OODBank.build(model, tok, TEXTS, k=6)
