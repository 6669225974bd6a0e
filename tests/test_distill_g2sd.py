"""G2SD: shared masking, the generic feature loss, the distillation token and the student builder."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from petkit.core.errors import ConfigError
from petkit.data.batches import ClassificationDataset
from petkit.distill.g2sd import (
    DistillationTokenClassifier,
    FeatureDistiller,
    GenericConfig,
    SpecificConfig,
    TextDataset,
    generic_distill,
    generic_loss,
    shared_mask,
    specific_distill,
    teacher_predictions,
)
from petkit.distill.bert_student import (
    bert_student,
    copy_projected_embeddings,
    parameter_count,
    safetensors_bytes,
    student_config,
)
from petkit.testing import tiny_bert, tiny_tokenizer

TEXTS = ["a fine film", "dull and slow", "the cast is great", "no plot at all", "warm, funny and wise",
         "i want my money back", "a small gem", "tedious"]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def teacher_and_student(seed: int = 0):
    teacher = tiny_bert(num_labels=2, seed=seed)
    return teacher, bert_student(teacher.config, layers=1, width=16, heads=2, seed=seed + 1)


def labelled(tokenizer):
    return ClassificationDataset(tokenizer, [{"text": t, "label": i % 2} for i, t in enumerate(TEXTS)], 32)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------ generic stage


def test_teacher_and_student_read_the_same_masked_ids(tokenizer):
    """Catches two independent mask draws (or the student reading the unmasked ids): the paper's
    shared noise is what lets the student predict the teacher's view of the very same corruption."""
    teacher, student = teacher_and_student()
    data = TextDataset(tokenizer, TEXTS, 32)
    distiller = FeatureDistiller(teacher, student, GenericConfig(mask_ratio=0.4), data.mask_token_id)
    seen = {}
    teacher.register_forward_pre_hook(lambda m, a, kw: seen.__setitem__("teacher", kw["input_ids"].clone()),
                                       with_kwargs=True)
    student.register_forward_pre_hook(lambda m, a, kw: seen.__setitem__("student", kw["input_ids"].clone()),
                                      with_kwargs=True)
    batch = data.collate([data[i] for i in range(len(data))])
    out = distiller(**batch, generator=torch.Generator().manual_seed(3))
    assert torch.equal(seen["teacher"], seen["student"])
    assert out.masked.any()
    assert (seen["student"][out.masked] == tokenizer.mask_token_id).all()
    assert torch.equal(seen["student"][~out.masked], batch["input_ids"][~out.masked])


def test_the_mask_takes_ceil_ratio_of_the_maskable_tokens_and_never_specials_or_padding():
    """Catches masking [CLS]/[SEP]/padding, a count off by one, or a row left with no masked token."""
    maskable = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    for seed in range(5):
        masked = shared_mask(maskable, 0.3, torch.Generator().manual_seed(seed))
        assert not (masked & ~maskable).any()
        assert masked.sum(1).tolist() == [math.ceil(0.3 * 8), 1]
    a = shared_mask(maskable, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(a, shared_mask(maskable, 0.5, torch.Generator().manual_seed(1)))  # the noise decides


def test_the_generic_loss_is_zero_when_the_student_predicts_the_normalised_teacher():
    """Catches a target without the affine-free LayerNorm (or with it on the student side instead)."""
    hidden = torch.randn(2, 5, 8) * 3 + 1
    attention = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    masked = torch.zeros(2, 5, dtype=torch.bool)
    masked[:, 1] = True
    target = F.layer_norm(hidden, (8,))
    assert generic_loss(target, hidden, attention, masked) == 0
    assert generic_loss(hidden, hidden, attention, masked) > 0


def test_the_generic_loss_is_smooth_l1_with_beta_2_over_the_chosen_tokens():
    """Catches the default beta of 1, padding in the mean, or supervise_all=False still scoring every token."""
    torch.manual_seed(0)
    s, hidden = torch.randn(2, 4, 6) * 3, torch.randn(2, 4, 6)
    attention = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    masked = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    t = F.layer_norm(hidden, (6,))
    diff = (s - t).abs()
    per = torch.where(diff < 2, 0.5 * diff ** 2 / 2, diff - 1).mean(-1)
    assert torch.allclose(generic_loss(s, hidden, attention, masked), per[attention.bool()].mean())
    assert torch.allclose(generic_loss(s, hidden, attention, masked, supervise_all=False), per[masked].mean())


def test_generic_distill_trains_the_student_and_head_and_never_the_frozen_teacher(tokenizer):
    """Catches gradients (or weight decay) reaching the teacher, the teacher left in train mode (dropout
    in the targets), or a stage that does not learn at all."""
    teacher, student = teacher_and_student()
    teacher.train()
    modes = []
    teacher.register_forward_pre_hook(lambda m, args: modes.append(m.training))
    before_t, before_s = snapshot(teacher), snapshot(student)
    data = TextDataset(tokenizer, TEXTS * 4, 32)
    result = generic_distill(teacher, student, data, GenericConfig(epochs=8, batch_size=8, lr=3e-3))
    assert same(snapshot(teacher), before_t)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert modes and not any(modes)  # eval mode in every step, not just at the end
    assert not same(snapshot(student), before_s)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]


def test_the_generic_stage_uses_the_optimizer_the_paper_names(tokenizer, monkeypatch):
    """Catches AdamW's default betas (0.9, 0.999) or weight decay on LayerNorm scales slipping in."""
    teacher, student = teacher_and_student()
    captured = {}
    original = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        captured["groups"] = [(g["betas"], g["weight_decay"], len(g["params"])) for g in self.param_groups]
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    generic_distill(teacher, student, TextDataset(tokenizer, TEXTS, 32), GenericConfig(epochs=1, batch_size=8))
    assert [g[:2] for g in captured["groups"]] == [((0.9, 0.95), 0.05), ((0.9, 0.95), 0.0)]


# ----------------------------------------------------------------------------------- specific stage


def classifier(distill_weight: float = 0.5, seed: int = 0):
    _, student = teacher_and_student(seed)
    torch.manual_seed(seed)
    return DistillationTokenClassifier(student, 2, True, distill_weight).train()


def batch_of(tokenizer):
    data = labelled(tokenizer)
    return data.collate([data[i] for i in range(len(data))])


def test_the_distillation_head_learns_only_from_the_teachers_labels(tokenizer):
    """Catches the dist head scored against the true labels (or the cls head against the teacher's),
    which would make the two heads one and the distillation token pointless."""
    model = classifier()
    model.eval()  # no dropout anywhere, so passes differ only in their labels ...
    model.training = True  # ... while the top module still computes the training loss
    batch = batch_of(tokenizer)
    y = batch.pop("labels")

    def grads(labels, teacher_labels):
        model.zero_grad()
        model(**batch, labels=labels, teacher_labels=teacher_labels).loss.backward()
        return model.cls_head.weight.grad.clone(), model.dist_head.weight.grad.clone()

    cls_a, dist_a = grads(y, y)
    cls_b, dist_b = grads(1 - y, y)        # other true labels: the dist head's gradient does not move
    cls_c, dist_c = grads(y, 1 - y)        # other teacher labels: the cls head's gradient does not move
    assert torch.allclose(dist_a, dist_b) and not torch.allclose(cls_a, cls_b)
    assert torch.allclose(cls_a, cls_c) and not torch.allclose(dist_a, dist_c)


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 1.0])
def test_the_loss_weights_the_two_terms_by_lambda(tokenizer, lam):
    """Catches λ applied to the wrong term, or the paper's ½·½ written as a sum without the halves."""
    model = classifier(lam)
    model.eval()
    model.training = True
    batch = batch_of(tokenizer)
    y = batch.pop("labels")
    t = 1 - y
    loss = model(**batch, labels=y, teacher_labels=t).loss
    hidden = _hidden(model, batch)
    expected = (1 - lam) * F.cross_entropy(model.cls_head(hidden[:, 0]), y) + lam * F.cross_entropy(
        model.dist_head(hidden[:, 1]), t)
    assert torch.allclose(loss, expected, atol=1e-6)


def _hidden(model, batch):
    ids, mask = batch["input_ids"], batch["attention_mask"]
    embeds = model.encoder.embeddings.word_embeddings(ids)
    embeds = torch.cat([embeds[:, :1], model.dist_token.expand(len(ids), -1, -1), embeds[:, 1:]], 1)
    mask = torch.cat([mask[:, :1], mask[:, :1], mask[:, 1:]], 1)
    return model.encoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state


def test_inference_averages_the_two_heads_softmax(tokenizer):
    """Catches inference from the class head alone (DeiT averages both) or averaging logits instead."""
    model = classifier().eval()
    batch = batch_of(tokenizer)
    out = model(**batch)
    hidden = _hidden(model, batch)
    mean = (model.cls_head(hidden[:, 0]).softmax(-1) + model.dist_head(hidden[:, 1]).softmax(-1)) / 2
    assert torch.allclose(out.logits.exp(), mean, atol=1e-6)
    assert torch.allclose(out.loss, F.nll_loss(mean.log(), batch["labels"]), atol=1e-6)


def test_training_with_the_token_but_no_teacher_labels_is_refused(tokenizer):
    """Catches a silent fallback to plain CE when the teacher's labels are missing from the batch."""
    model = classifier()
    with pytest.raises(ConfigError, match="teacher_labels"):
        model(**batch_of(tokenizer))


def test_specific_distill_hands_the_teachers_argmax_to_the_dist_head(tokenizer, monkeypatch):
    """Catches soft targets, the true labels, or teacher labels misaligned with the examples."""
    teacher, student = teacher_and_student()
    data = labelled(tokenizer)
    expected = teacher_predictions(teacher, data)
    seen = []
    original = DistillationTokenClassifier.forward

    def spy(self, *args, **kwargs):
        seen.append((kwargs["input_ids"].clone(), kwargs["teacher_labels"].clone()))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DistillationTokenClassifier, "forward", spy)
    specific_distill(student, data, 2, SpecificConfig(epochs=1, batch_size=3), teacher=teacher)
    by_ids = {tuple(t for t in data[i]["input_ids"]): expected[i] for i in range(len(data))}
    for ids, teacher_labels in seen:
        for row, label in zip(ids.tolist(), teacher_labels.tolist()):
            assert by_ids[tuple(t for t in row if t != 0)] == label


def test_without_a_teacher_the_student_is_a_plain_classifier(tokenizer):
    """Catches the scratch baseline secretly carrying a distillation token (or its head) around."""
    _, student = teacher_and_student()
    result = specific_distill(student, labelled(tokenizer), 2, SpecificConfig(epochs=1, batch_size=4))
    assert result.model.dist_token is None and result.model.dist_head is None
    batch = batch_of(tokenizer)
    out = result.model(**batch)
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, batch["labels"]))


def test_selection_keeps_the_best_epochs_weights(tokenizer):
    """Catches returning the last epoch's weights when an earlier one scored best on dev."""
    teacher, student = teacher_and_student()
    scores = iter([0.2, 0.9, 0.1])
    kept = {}

    def select(model):
        score = next(scores)
        kept[score] = snapshot(model)
        return score

    result = specific_distill(student, labelled(tokenizer), 2, SpecificConfig(epochs=3, batch_size=4),
                              teacher=teacher, select=select)
    assert result.best_epoch == 2
    assert same(snapshot(result.model), kept[0.9])


# ------------------------------------------------------------------------------------------ student


def test_the_student_has_the_asked_shape_and_parameter_count():
    """Catches a student that silently keeps the teacher's width/depth, or the wrong FFN default."""
    teacher = tiny_bert(num_labels=2)
    student = bert_student(teacher.config, layers=3, width=24, heads=4)
    v, p, t, d, f, n = 100, 64, 2, 24, 96, 3  # vocab, positions, token types, width, FFN = 4d, layers
    embeddings = (v + p + t) * d + 2 * d
    block = 4 * (d * d + d) + 2 * d + (d * f + f) + (f * d + d) + 2 * d
    assert parameter_count(student) == embeddings + n * block
    assert student.config.vocab_size == teacher.config.vocab_size
    assert safetensors_bytes(student) > 4 * parameter_count(student)  # fp32 + a small header


def test_projected_embeddings_keep_the_teachers_geometry():
    """Catches a random (not PCA) projection or copying the wrong table: distances between words
    must correlate with the teacher's after projection."""
    teacher = tiny_bert(num_labels=2)
    student = bert_student(teacher.config, layers=1, width=16, heads=2)
    copy_projected_embeddings(student, teacher)
    t = teacher.bert.embeddings.word_embeddings.weight.detach()
    s = student.embeddings.word_embeddings.weight.detach()
    dt, ds = torch.pdist(t - t.mean(0)), torch.pdist(s - s.mean(0))
    assert torch.corrcoef(torch.stack([dt, ds]))[0, 1] > 0.9


# ---------------------------------------------------------------------------------------- bad input


def test_a_vocabulary_mismatch_is_refused_and_leaves_the_student_unchanged(tokenizer):
    """Catches distilling between models that read different token ids (garbage targets, no error)."""
    teacher = tiny_bert(num_labels=2)
    cfg = student_config(teacher.config, layers=1, width=16, heads=2)
    cfg.vocab_size = 120
    from transformers import BertModel

    student = BertModel(cfg, add_pooling_layer=False)
    before = snapshot(student)
    with pytest.raises(ConfigError, match="vocabularies differ"):
        generic_distill(teacher, student, TextDataset(tokenizer, TEXTS, 32))
    with pytest.raises(ConfigError, match="vocabularies differ"):
        specific_distill(student, labelled(tokenizer), 2, teacher=teacher)
    assert same(snapshot(student), before)


@pytest.mark.parametrize("layer", [0, 3, -1])
def test_a_teacher_layer_out_of_range_is_refused(tokenizer, layer):
    """Catches hidden_states[0] (the embeddings) or a negative index silently used as a target."""
    teacher, student = teacher_and_student()
    with pytest.raises(ConfigError, match="teacher_layer must be in 1..2"):
        generic_distill(teacher, student, TextDataset(tokenizer, TEXTS, 32), GenericConfig(teacher_layer=layer))


@pytest.mark.parametrize("ratio", [0, 1, 1.5, -0.1])
def test_a_mask_ratio_outside_0_1_is_refused(ratio):
    """Catches ratio 0 (nothing to predict) or 1 (no context) being accepted."""
    with pytest.raises(ConfigError, match="mask_ratio must lie strictly between 0 and 1"):
        GenericConfig(mask_ratio=ratio)


@pytest.mark.parametrize("kwargs, message", [
    ({"distill_weight": 1.5}, "distill_weight"), ({"warmup": 1.0}, "warmup"), ({"epochs": 0}, "epochs"),
    ({"betas": (0.9, 1.0)}, "betas"), ({"lr": 0}, "lr"),
])
def test_bad_stage_settings_are_refused(kwargs, message):
    """Catches settings that would train nothing or diverge being accepted."""
    with pytest.raises(ConfigError, match=message):
        SpecificConfig(**kwargs)


def test_a_bad_student_shape_is_refused():
    """Catches a width that the heads do not divide (HF fails later, obscurely) or a zero-layer student."""
    teacher = tiny_bert(num_labels=2)
    with pytest.raises(ConfigError, match="multiple of its heads"):
        bert_student(teacher.config, layers=1, width=30, heads=4)
    with pytest.raises(ConfigError, match="layers must be a positive int"):
        bert_student(teacher.config, layers=0, width=16, heads=2)
    wide = bert_student(teacher.config, layers=1, width=64, heads=2)
    with pytest.raises(ConfigError, match="wider than the teacher"):
        copy_projected_embeddings(wide, teacher)


def test_a_teacher_predicting_labels_the_task_lacks_is_refused(tokenizer):
    """Catches a teacher fine-tuned on another label set (CE would index out of range mid-run)."""
    teacher = tiny_bert(num_labels=3, seed=4)
    _, student = teacher_and_student()
    with torch.no_grad():
        teacher.classifier.bias.copy_(torch.tensor([-9.0, -9.0, 9.0]))
    before = snapshot(student)
    with pytest.raises(ConfigError, match="predicts label 2"):
        specific_distill(student, labelled(tokenizer), 2, teacher=teacher)
    assert same(snapshot(student), before)


def test_a_sequence_with_no_room_for_the_distillation_token_is_refused():
    """Catches an input at the position limit reaching HF's position table one row short (an index error
    deep inside the embeddings) instead of a message that says to truncate."""
    model = classifier().eval()
    ids = torch.ones(2, model.config.max_position_embeddings, dtype=torch.long)
    with pytest.raises(ConfigError, match="truncate one token shorter"):
        model(input_ids=ids, attention_mask=torch.ones_like(ids))


def test_precomputed_teacher_labels_must_match_the_data(tokenizer):
    """Catches labels from another subset (or without their teacher) silently misaligned with the examples."""
    teacher, student = teacher_and_student()
    data = labelled(tokenizer)
    with pytest.raises(ConfigError, match="one label per training example"):
        specific_distill(student, data, 2, teacher=teacher, teacher_labels=[0] * (len(data) - 1))
    with pytest.raises(ConfigError, match="need their teacher"):
        specific_distill(student, data, 2, teacher_labels=[0] * len(data))
