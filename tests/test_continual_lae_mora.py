"""LAE (accumulation, ensemble, freeze-then-tune, prefix compensation) and MoRA's continual protocol."""

from __future__ import annotations

import pytest
import torch

import petkit
from petkit.continual import ContinualConfig, run_stream
from petkit.continual.learner import make_learner
from petkit.continual.model import collate, encode_split
from petkit.methods.prefix import PrefixTuningConfig
from petkit.models.attention import compensated_attention
from petkit.testing import tiny_batch, tiny_bert, tiny_llama

from continual_cases import tokenizer, toy_model, toy_stream

FAST = {"epochs": 2, "lr": 5e-3, "batch_size": 8}


def setup(method, options=None, scenario="class"):
    stream = toy_stream(scenario)
    model = toy_model(stream)
    learner = make_learner(method, options or {})
    torch.manual_seed(0)
    learner.setup(model, stream)
    tok = tokenizer()
    enc = encode_split(tok, stream.tasks[0], stream.tasks[0].train, 0, 32)
    return stream, model, learner, collate(enc, list(range(8)), tok.pad_token_id)


def params(learner, name):
    return [p.detach().clone() for p in learner._tensors(name)]


# -- LAE -------------------------------------------------------------------------------------------------

def test_lae_offline_expert_starts_as_the_online_one_and_follows_it_by_ema():
    """θ_off ← d·θ_off + (1 − d)·θ_on after a step. Catches an offline expert that starts fresh, an EMA
    with the weights swapped, or one that runs before task 2 exists."""
    _, model, learner, batch = setup("lae", {"ema_decay": 0.9})
    learner.begin_task(0)
    assert not learner.has_offline
    learner.after_step(0)  # nothing to average yet
    with torch.no_grad():
        for p in learner._tensors("online"):
            p.add_(torch.randn_like(p))
    learner.begin_task(1)
    assert [torch.equal(a, b) for a, b in zip(params(learner, "offline"), params(learner, "online"))] == \
           [True] * len(params(learner, "online"))
    before_off = params(learner, "offline")
    with torch.no_grad():
        for p in learner._tensors("online"):
            p.add_(1.0)
    learner.after_step(1)
    for off, before, on in zip(params(learner, "offline"), before_off, params(learner, "online")):
        assert torch.allclose(off, 0.9 * before + 0.1 * on)
    assert all(not p.requires_grad for p in learner._tensors("offline"))


def test_lae_freeze_then_tune_keeps_the_pet_still_while_the_head_learns():
    """Catches freezing in the first task too, or never unfreezing."""
    _, _, learner, _ = setup("lae", {"freeze_epochs": 2})
    learner.begin_task(0)
    learner.begin_epoch(0, 0)
    assert all(p.requires_grad for p in learner._tensors("online"))
    learner.begin_task(1)
    for epoch, trains in ((0, False), (1, False), (2, True)):
        learner.begin_epoch(1, epoch)
        assert all(p.requires_grad == trains for p in learner._tensors("online"))
    assert all(p.requires_grad for p in learner.model.head.parameters())


def test_lae_ensemble_is_the_larger_probability_of_the_two_experts():
    """Catches averaging, or an ensemble that runs one expert twice."""
    _, model, learner, batch = setup("lae")
    learner.begin_task(1)
    with torch.no_grad():
        for p in learner._tensors("online"):
            p.add_(0.5 * torch.randn_like(p))
    model.eval()
    classes = range(0, 4)
    with torch.no_grad():
        on = learner.expert_logits("online", batch, classes).softmax(-1)
        off = learner.expert_logits("offline", batch, classes).softmax(-1)
        assert not torch.allclose(on, off)
        assert torch.equal(learner.scores(batch, classes, None), torch.maximum(on, off))
        learner.ensemble = "energy"
        picked = learner.scores(batch, classes, None)
    on_logits = learner.expert_logits("online", batch, classes)
    off_logits = learner.expert_logits("offline", batch, classes)
    use_off = off_logits.logsumexp(-1) > on_logits.logsumexp(-1)  # lower energy = larger logsumexp
    assert torch.allclose(picked, torch.where(use_off[:, None], off, on))


@pytest.mark.parametrize("pet", ["lora", "adapter", "prefix"])
def test_lae_runs_with_each_pet_and_reports_each_expert(pet):
    stream = toy_stream("class")
    cfg = ContinualConfig(method="lae", options={"pet": pet, "ema_decay": 0.5, "freeze_epochs": 1}, **FAST)
    result = run_stream(cfg, model=toy_model(stream), tokenizer=tokenizer(), stream=stream, progress=False)
    assert [len(r) for r in result.extra["online"]] == [1, 2, 3]
    assert result.extra["online"][0] == result.extra["offline"][0] == result.matrix[0]  # one expert in task 0


def test_lae_prefix_starts_small_and_uniform():
    _, _, learner, _ = setup("lae", {"pet": "prefix"})
    values = torch.cat([p.flatten() for p in learner._tensors("online")])
    assert 0 <= values.min() and values.max() <= 0.01
    assert learner.adapter.compensate


# -- prefix compensation (petkit's prefix method, `compensate`) ------------------------------------------

def test_compensated_attention_equals_its_decomposition():
    """With the prefix's weights renormalised, the output is softmax-over-the-prefix·P_v plus (1 − λ)
    times attention over the tokens alone, λ the prefix's share of the mass. Catches renormalising the
    token block instead, a mask applied after the softmax, or grouped-query heads paired wrongly."""
    torch.manual_seed(0)
    b, h, kv, lq, m, lt, d = 2, 4, 2, 5, 3, 5, 8
    q = torch.randn(b, h, lq, d, dtype=torch.float64)
    k, v = torch.randn(b, kv, m + lt, d, dtype=torch.float64), torch.randn(b, kv, m + lt, d, dtype=torch.float64)
    mask = torch.zeros(b, 1, lq, m + lt, dtype=torch.float64)
    mask[1, ..., -2:] = torch.finfo(torch.float64).min  # the second sample's last two tokens are padding
    module = torch.nn.Module().eval()
    out, _ = compensated_attention(module, q, k, v, mask, m, scaling=0.3)

    ke, ve = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    scores = q @ ke.transpose(2, 3) * 0.3 + mask
    prefix_only = scores[..., :m].softmax(-1) @ ve[..., :m, :]
    tokens_only = scores[..., m:].softmax(-1) @ ve[..., m:, :]
    lam = scores.softmax(-1)[..., :m].sum(-1, keepdim=True)
    expected = (prefix_only + (1 - lam) * tokens_only).transpose(1, 2)
    assert torch.allclose(out, expected, atol=1e-10)


@pytest.mark.parametrize("build", [tiny_bert, tiny_llama])
def test_prefix_compensation_is_wired_into_the_model_and_agrees_across_attention_kernels(build):
    """compensate changes what the model computes (catches a flag that is read nowhere), and eager and
    sdpa models give the same compensated output (the wrapper, not one kernel, does it)."""
    outputs = {}
    for impl in ("eager", "sdpa"):
        for compensate in (False, True):
            model = build(seed=0)
            model.set_attn_implementation(impl)
            am = petkit.adapt(model, PrefixTuningConfig(num_virtual_tokens=3, projection=False, compensate=compensate,
                                                        train_head=False))
            torch.manual_seed(1)
            with torch.no_grad():
                for p in am.model_deltas["default"].parameters():
                    p.normal_()
            batch = tiny_batch(model, seed=2)
            batch.pop("labels", None)
            with torch.no_grad():
                outputs[impl, compensate] = am.eval()(**batch).logits
    assert not torch.allclose(outputs["eager", False], outputs["eager", True], atol=1e-4)
    assert torch.allclose(outputs["eager", True], outputs["sdpa", True], atol=1e-5)


def test_a_compensated_prefix_is_not_written_as_a_peft_file(tmp_path):
    am = petkit.adapt(tiny_llama(), PrefixTuningConfig(num_virtual_tokens=2, projection=False, compensate=True))
    with pytest.raises(petkit.ConfigError, match="compensation"):
        am.save(tmp_path / "a", format="peft")


# -- MoRA, continual ---------------------------------------------------------------------------------------

def test_mora_freezes_earlier_experts_and_adds_new_ones_each_task():
    """After task 1 the experts of task 0 hold exactly their task-0 values and task 1's have moved.
    Catches a gradient mask on the wrong side (rows vs columns) or a frozen count that never grows."""
    stream = toy_stream("class")
    model = toy_model(stream)
    learner = make_learner("mora", {"experts_per_task": 2, "top_k": 2})
    snapshots = []

    def end_task(t, data, batches):
        snapshots.append([(d.A.detach().clone(), d.B.detach().clone()) for d in learner.deltas()])
    learner.end_task = end_task
    import petkit.continual.run as run_module
    make = run_module.make_learner
    run_module.make_learner = lambda name, options: learner
    try:
        run_stream(ContinualConfig(method="mora", **FAST), model=model, tokenizer=tokenizer(), stream=stream,
                   progress=False)
    finally:
        run_module.make_learner = make
    for (a0, b0), (a1, b1), (a2, b2) in zip(*snapshots):
        assert a0.shape[0] == 6  # 2 experts x 3 tasks, allocated at once
        assert torch.equal(a0[:2], a2[:2]) and torch.equal(b0[:, :2], b2[:, :2])      # task 0's experts
        assert torch.equal(a1[2:4], a2[2:4]) and torch.equal(b1[:, 2:4], b2[:, 2:4])  # task 1's experts
        assert not torch.equal(b0[:, 2:4], b1[:, 2:4])                                # they trained in task 1
    assert any(not torch.equal(b1[:, 4:], b2[:, 4:]) for (_, b1), (_, b2) in zip(snapshots[1], snapshots[2]))


def test_mora_experts_not_yet_added_take_no_part():
    """Catches `live` being ignored: experts of later tasks would route tokens from task 0 on."""
    _, model, learner, batch = setup("mora", {"experts_per_task": 2})
    learner.begin_task(0)
    model.eval()
    with torch.no_grad():
        for d in learner.deltas():
            d.B.normal_()
        before = model(batch["input_ids"], batch["attention_mask"])
        for d in learner.deltas():
            d.B[:, 2:] += 10.0
            d.A[2:] *= 5.0
        assert torch.equal(before, model(batch["input_ids"], batch["attention_mask"]))
        learner.begin_task(1)
        assert not torch.allclose(before, model(batch["input_ids"], batch["attention_mask"]))
