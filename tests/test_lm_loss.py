"""The causal-LM loss from labelled positions only equals the model's own loss (value and gradients),
projects only those positions through the LM head, and is not used where it cannot apply."""

from __future__ import annotations

import pytest
import torch

import petkit
from petkit.train import TrainConfig, train
from petkit.train.lm_loss import can_keep_labelled_logits, training_loss
from petkit.testing import tiny_llama


def sft_batch(seed: int = 0) -> dict:
    """Prompt tokens and right padding unlabelled: 7 of 24 next-token targets scored."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (3, 8), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    labels = ids.clone()
    labels[:, :5] = -100                 # the prompt
    labels[mask == 0] = -100             # padding
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def adapted(dtype=torch.float64):
    torch.manual_seed(0)
    am = petkit.adapt(tiny_llama(seed=0), petkit.LoraConfig(r=2, targets="all-linear", init="gaussian")).to(dtype)
    with torch.no_grad():
        for name, p in am.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
    return am.train()


def grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_labelled_positions_only_give_the_models_own_loss_and_gradients():
    am, batch = adapted(), sft_batch()
    assert can_keep_labelled_logits(am)
    own = am(**batch).loss
    own.backward()
    expected = grads(am)
    am.zero_grad()
    loss = training_loss(am, batch, "causal_lm", labelled_only=True)
    loss.backward()
    torch.testing.assert_close(loss, own, rtol=1e-6, atol=0)  # both take the cross-entropy in float32
    for name, g in grads(am).items():
        torch.testing.assert_close(g, expected[name], rtol=1e-5, atol=1e-7, msg=name)


def test_the_lm_head_sees_only_the_labelled_positions():
    am, batch = adapted(), sft_batch()
    rows = []
    am.base.lm_head.register_forward_hook(lambda _m, inputs, _o: rows.append(inputs[0].shape))
    training_loss(am, batch, "causal_lm", labelled_only=True)
    assert rows == [torch.Size([int((batch["labels"][:, 1:] != -100).sum()), 32])]  # 7 rows, not 3 x 8
    rows.clear()
    full = dict(batch, labels=batch["input_ids"])  # a plain LM batch: nothing to skip, the model's own path
    training_loss(am, full, "causal_lm", labelled_only=True)
    assert rows == [torch.Size([3, 8, 32])]


def test_a_batch_with_nothing_scored_gives_a_zero_with_a_graph():
    am, batch = adapted(), sft_batch()
    batch["labels"][:] = -100
    loss = training_loss(am, batch, "causal_lm", labelled_only=True)
    loss.backward()
    assert loss.item() == 0 and all(torch.count_nonzero(g) == 0 for g in grads(am).values())


def test_models_whose_sequence_a_mask_cannot_index_keep_their_own_loss():
    am = petkit.adapt(tiny_llama(seed=0), petkit.PromptTuningConfig(num_virtual_tokens=3))
    assert not can_keep_labelled_logits(am)  # the prompt lengthens the sequence
    assert can_keep_labelled_logits(tiny_llama()) and not can_keep_labelled_logits(torch.nn.Linear(2, 2))
    batch = sft_batch()
    torch.testing.assert_close(training_loss(am, batch, "causal_lm"), am(**batch).loss)


class Rows(torch.utils.data.Dataset):
    def __init__(self, batches):
        self.rows = [{k: v[i] for k, v in b.items()} for b in batches for i in range(len(b["input_ids"]))]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    def collate(self, rows):
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def test_the_trainer_uses_it_and_trains_what_the_models_own_loss_trains(monkeypatch):
    data = Rows([sft_batch(s) for s in range(3)])
    cfg = TrainConfig(lr=1e-2, max_steps=3, batch_size=3, eval_every_epoch=False)
    fast = adapted()
    heads = []
    fast.base.lm_head.register_forward_hook(lambda _m, inputs, _o: heads.append(inputs[0].dim()))
    train(fast, data, cfg, task="causal_lm", progress=False)
    assert heads == [2, 2, 2]  # flattened labelled rows on every step
    import petkit.train.loop as loop
    monkeypatch.setattr(loop, "can_keep_labelled_logits", lambda _model: False)
    slow = adapted()
    train(slow, data, cfg, task="causal_lm", progress=False)
    for (name, a), b in zip(fast.adapter_parameters("default").items(), slow.adapter_parameters("default").values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)
