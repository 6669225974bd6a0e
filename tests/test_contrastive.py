"""ContraBERT-style contrastive augmentation: token perturbations, InfoNCE, the MoCo queue and
momentum encoder, and the objective inside petkit's trainer (tiny random models, seconds)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import petkit
from petkit.core.errors import ConfigError
from petkit.testing import tiny_bert, tiny_tokenizer
from petkit.train import TrainConfig, train
from petkit.train.contrastive import ContrastiveObjective, TokenAugmenter, info_nce
from petkit.data import ClassificationDataset

SPECIALS, PAD, MASK = [0, 1, 2, 3], 0, 4
ROW = [2] + list(range(10, 30)) + [3]  # [CLS] 20 tokens [SEP]


def augmenter(kind, rate=0.2, seed=0):
    return TokenAugmenter(SPECIALS, PAD, MASK, kinds=[kind], rate=rate, seed=seed)


@pytest.mark.parametrize("kind", ["drop", "swap", "mask"])
def test_perturbations_touch_rate_of_the_tokens_and_never_the_specials(kind):
    # Catches: perturbing [CLS]/[SEP], a rate off by a factor, swap losing or inventing tokens.
    out = augmenter(kind, 0.2).perturb(ROW, kind)
    assert out[0] == 2 and out[-1] == 3
    if kind == "drop":
        assert len(out) == len(ROW) - 4 and set(out) < set(ROW)
    elif kind == "mask":
        assert out.count(MASK) == 4 and [t for t in out if t != MASK] == [t for t in ROW if t in out]
    else:
        assert sorted(out) == sorted(ROW) and sum(a != b for a, b in zip(out, ROW)) == 4
    assert augmenter(kind, 0.0).perturb(ROW, kind) == ROW
    for seed in range(10):  # at a high rate too: the specials stay first and last
        heavy = augmenter(kind, 0.9, seed).perturb(ROW, kind)
        assert heavy[0] == 2 and heavy[-1] == 3 and heavy.count(2) == heavy.count(3) == 1


def test_batch_augmentation_keeps_labels_and_pads_consistently():
    # Catches: an augmentation that changes the label, or a mask that disagrees with the new lengths.
    ids = torch.tensor([ROW, ROW[:8] + [3] + [PAD] * 13])
    ids[1, 8] = 3
    mask = (torch.arange(len(ROW)) < torch.tensor([[len(ROW)], [9]])).long()
    labels = torch.tensor([1, 0])
    out = TokenAugmenter(SPECIALS, PAD, MASK, rate=0.3, seed=1)({"input_ids": ids, "attention_mask": mask, "labels": labels})
    assert torch.equal(out["labels"], labels)
    for row, m in zip(out["input_ids"], out["attention_mask"]):
        real = row[m.bool()].tolist()
        assert real[0] == 2 and real[-1] == 3 and (row[~m.bool()] == PAD).all()


def test_info_nce_matches_the_formula_and_needs_aligned_positives():
    # Catches: positives misaligned with their queries (the loss would not be small when q == k),
    # the positive not at logit 0 or the temperature applied the wrong way.
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(6, 8, generator=g), dim=1)
    queue = F.normalize(torch.randn(10, 8, generator=g), dim=1)
    k = F.normalize(q + 0.1 * torch.randn(6, 8, generator=g), dim=1)
    tau = 0.2
    by_hand = -torch.log(torch.exp((q * k).sum(1) / tau) /
                         (torch.exp((q * k).sum(1) / tau) + torch.exp(q @ queue.T / tau).sum(1))).mean()
    assert info_nce(q, k, queue, tau).item() == pytest.approx(by_hand.item(), rel=1e-5)
    aligned, shuffled = info_nce(q, k, None, 0.05), info_nce(q, k.roll(1, 0), None, 0.05)
    assert aligned < 0.5 < math.log(6) < shuffled


def test_queue_is_first_in_first_out_and_wraps():
    model = petkit.adapt(tiny_bert(num_labels=2), petkit.LoraConfig(r=2))
    objective = ContrastiveObjective(model, augmenter("mask"), queue_size=4)
    width = model.config.hidden_size
    keys = torch.arange(6.0).unsqueeze(1).expand(6, width)
    objective.enqueue(keys[:3])
    objective.enqueue(keys[3:])  # 3 and 4 fill slots 3 and 0 (overwriting 0), 5 goes to slot 1
    assert objective.queue[:, 0].tolist() == [4.0, 5.0, 2.0, 3.0] and int(objective.queue_next) == 2


def test_momentum_update_formula_and_trainer_wiring():
    # Catches: the EMA weights swapped (θ' ← (1-m)θ' + mθ), frozen weights touched, or the update never
    # running inside petkit's trainer.
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    data = ClassificationDataset(tok, [{"text": t, "label": i % 2} for i, t in enumerate(["good", "bad", "fine day", "sad"] * 4)])
    model = petkit.adapt(tiny_bert(num_labels=2), petkit.LoraConfig(r=2, init="gaussian"))
    objective = ContrastiveObjective(model, TokenAugmenter.for_tokenizer(tok, rate=0.3), momentum=0.9, weight=0.5)
    key_before = {n: p.detach().clone() for n, p in objective.key_encoder.named_parameters()}
    train(objective, data, TrainConfig(lr=1e-2, max_steps=1, batch_size=16), task="classification", progress=False)
    for name, p in model.named_parameters():
        key = dict(objective.key_encoder.named_parameters())[name]
        expected = 0.9 * key_before[name] + 0.1 * p.detach() if p.requires_grad else key_before[name]
        torch.testing.assert_close(key, expected)
    assert any(not torch.equal(key_before[n], p) for n, p in objective.key_encoder.named_parameters())
    assert math.isfinite(objective.last_contrastive_loss) and objective.last_contrastive_loss > 0


def test_the_term_is_added_with_its_weight_only_in_training():
    # Catches: the InfoNCE term leaking into evaluation, or added without (or with the wrong) weight.
    tok = tiny_tokenizer()
    data = ClassificationDataset(tok, [{"text": t, "label": i % 2} for i, t in enumerate(["good one", "bad one", "fine", "sad"])])
    batch = data.collate(data.features)
    model = petkit.adapt(tiny_bert(num_labels=2, dropout=0.0), petkit.LoraConfig(r=2))
    objective = ContrastiveObjective(model, TokenAugmenter.for_tokenizer(tok), weight=0.25, negatives="batch").train()
    plain = model(**batch).loss
    with torch.no_grad():
        total = objective(**batch).loss
    assert total.item() == pytest.approx(plain.item() + 0.25 * objective.last_contrastive_loss, rel=1e-5)
    objective.eval()
    assert objective(**batch).loss.item() == pytest.approx(model(**batch).loss.item())


def test_bad_settings_are_config_errors():
    model = tiny_bert(num_labels=2)
    with pytest.raises(ConfigError, match="negatives"):
        ContrastiveObjective(model, augmenter("mask"), negatives="memory-bank")
    with pytest.raises(ConfigError, match="mask_id"):
        TokenAugmenter(SPECIALS, PAD, None, kinds=["mask"])
    with pytest.raises(ConfigError, match="kinds"):
        TokenAugmenter(SPECIALS, PAD, MASK, kinds=["shuffle"])
    with pytest.raises(ConfigError, match="rate"):
        TokenAugmenter(SPECIALS, PAD, MASK, rate=1.0)
