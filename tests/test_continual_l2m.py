"""L2M (petkit/continual/l2m.py): key-query selection, the count penalty, per-sample routing through
the engine, gradients of the picked entries only, and whole runs (both scenarios, resume)."""

from __future__ import annotations

import json

import pytest
import torch

from continual_cases import WORDS, tokenizer, toy_model, toy_stream
from petkit.continual import make_learner
from petkit.continual.l2m import L2M
from petkit.continual.model import ContinualClassifier, collate, encode_split
from petkit.continual.run import ContinualConfig, run_stream
from petkit.continual.stream import Stream, Task
from petkit.core.errors import ConfigError
from petkit.core.storage import read_tensors
from petkit.testing import tiny_bert, tiny_gpt2, tiny_llama


def learner_on(stream, dropout=None, **options) -> L2M:
    if dropout is None:
        model = toy_model(stream)
    else:
        backbone = tiny_bert(dropout=dropout).bert
        for p in backbone.parameters():
            p.requires_grad_(False)
        model = ContinualClassifier(backbone, 32, stream.num_classes, "mean")
    learner = make_learner("l2m", options)
    learner.setup(model, stream)
    return learner


def batch_of(stream, t: int, rows) -> dict:
    encoded = encode_split(tokenizer(), stream.tasks[t], stream.tasks[t].train, stream.offsets[t], 64)
    return collate(encoded, rows, 0)


def perturb_pool(learner: L2M) -> None:
    """Move every entry off its identity init (LoRA B = 0, IA³ = 1), so each entry changes the output."""
    torch.manual_seed(1)
    with torch.no_grad():
        for k in range(learner.pool_size):
            for delta in learner.am.deltas(learner.entry(k)):
                for p in delta.parameters():
                    p.add_(torch.randn_like(p) * 0.3)


def pool_grads(learner: L2M) -> dict[int, bool]:
    """Entry -> whether any of its tensors got a non-zero gradient."""
    return {k: any(p.grad is not None and bool(p.grad.abs().sum() > 0)
                   for d in learner.am.deltas(learner.entry(k)) for p in d.parameters())
            for k in range(learner.pool_size)}


def test_options_are_checked():
    """Bug: a pool of 0 entries, an unknown modulator, a negative pull weight or a stray option
    (e.g. `adapter`, which the modulator sets) accepted and failing later, or silently ignored."""
    for options in ({"pool_size": 0}, {"pool_size": 2.5}, {"modulator": "prefix"}, {"pull_weight": -0.1},
                    {"pull_weight": True}, {"count_penalty": "yes"}, {"adapter": {"method": "lora"}}, {"top_k": 2}):
        with pytest.raises(ConfigError):
            make_learner("l2m", options)
    assert make_learner("l2m").pool_size == 30  # the paper's pool


def test_a_sample_picks_the_key_its_query_points_to():
    """Bug: selection by dot product (or by the wrong axis) instead of cosine(query, key): entry 3's
    key is the first query scaled down to a tiny norm, so only the cosine picks it."""
    stream = toy_stream()
    learner = learner_on(stream, pool_size=6)
    batch = batch_of(stream, 0, [0, 1])
    q = learner.query(batch)
    with torch.no_grad():
        learner.model.l2m_keys[3] = q[0] * 1e-3
        learner.model.l2m_keys[5] = q[1] * 7
    assert learner.select(q, penalised=False).tolist() == [3, 5]
    # the query is the masked mean of the input embeddings, not of padding
    emb = learner.am.get_input_embeddings()(batch["input_ids"][0, : int(batch["attention_mask"][0].sum())])
    assert torch.allclose(q[0], emb.mean(0), atol=1e-6)


def test_count_penalty_steers_a_new_task_off_the_entries_used_before():
    """Bug: the penalty missing, applied at inference or in task 0, or normalised otherwise than the
    official code (inv_freq = (1/(usage + 1e-6)) / sum)."""
    stream = toy_stream()
    learner = learner_on(stream, pool_size=4)
    q = learner.query(batch_of(stream, 1, [0, 1]))
    with torch.no_grad():
        learner.model.l2m_keys[0] = q[0]
        learner.model.l2m_keys[1] = q[1]
    # task 0 used entry 0 in 3 batches of 4 and entry 2 in one: the counts as training leaves them
    learner.begin_task(0)
    for picks in ([0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [2, 2, 2, 2]):
        learner._count(torch.tensor(picks))
    assert learner.usage.tolist() == [0.75, 0.0, 0.25, 0.0]
    assert learner.select(q, penalised=True).tolist() == [0, 1]  # no penalty during task 0
    learner.begin_task(1)
    inv = 1 / (torch.tensor([0.75, 0.0, 0.25, 0.0], dtype=torch.float64) + 1e-6)
    assert torch.allclose(learner.inv_freq.double(), inv / inv.sum(), rtol=1e-6)
    chosen = learner.select(q, penalised=True)
    assert chosen[0].item() in (1, 3) and chosen[1].item() == 1  # off entries 0 and 2, which task 0 used
    assert learner.select(q, penalised=False).tolist() == [0, 1]  # inference: the plain cosine
    off = make_learner("l2m", {"pool_size": 4, "count_penalty": False})
    off.setup(toy_model(stream), stream)
    off.model.l2m_keys.data.copy_(learner.model.l2m_keys.data)
    off.usage, off.batches_seen = learner.usage.clone(), learner.batches_seen
    off.begin_task(1)
    assert off.select(q, penalised=True).tolist() == [0, 1]


@pytest.mark.parametrize("modulator", ["lora", "ia3"])
def test_a_mixed_batch_gives_each_sample_its_own_entry(modulator):
    """Bug: the batch run with one entry for every sample (set_active on the first pick) or the base
    alone, instead of per-sample routing; in eval mode and in training mode (autograd path)."""
    stream = toy_stream()
    learner = learner_on(stream, dropout=0.0, pool_size=4, modulator=modulator)
    perturb_pool(learner)
    batch = batch_of(stream, 0, [0, 1, 2])
    chosen = torch.tensor([1, 3, 1])
    for training in (False, True):
        learner.model.train(training)
        with torch.set_grad_enabled(training):
            mixed = learner.routed_logits(batch, chosen)
            for i, k in enumerate(chosen.tolist()):
                learner.am.set_active(learner.entry(k))
                alone = learner.model(batch["input_ids"][i: i + 1], batch["attention_mask"][i: i + 1])
                assert torch.allclose(mixed[i], alone[0], atol=1e-5), (training, i, k)
            learner.am.set_active([])
            base = learner.model(batch["input_ids"], batch["attention_mask"])
            assert not torch.allclose(mixed[1], base[1], atol=1e-3)  # the entries do change the output


def test_only_the_picked_entries_and_keys_get_gradients():
    """Bug: the pull term over every key (all key rows get gradients), gradients leaking into entries
    no sample picked, the base unfrozen, or an entry or the keys left out of the trainable set."""
    stream = toy_stream()
    learner = learner_on(stream, pool_size=5)
    batch = batch_of(stream, 0, [0, 1, 2, 3])
    q = learner.query(batch)
    with torch.no_grad():  # samples 0, 2 -> entry 1; samples 1, 3 -> entry 4
        learner.model.l2m_keys[1] = q[0] + q[2]
        learner.model.l2m_keys[4] = q[1] + q[3] + 0.5 * (q[1] - q[0])
        learner.model.l2m_keys[[0, 2, 3]] = -q[:3]
    learner.begin_task(0)
    assert sorted(set(learner.select(q, penalised=True).tolist())) == [1, 4]
    learner.model.train()
    learner.loss(batch, 0).backward()
    assert pool_grads(learner) == {0: False, 1: True, 2: False, 3: False, 4: True}
    key_grad = learner.model.l2m_keys.grad.abs().sum(1)
    assert (key_grad[[1, 4]] > 0).all() and (key_grad[[0, 2, 3]] == 0).all()
    assert learner.model.head.weight.grad.abs().sum() > 0
    trainable = {id(p) for p in learner.parameters(0)}
    expected = {id(p) for k in range(5) for d in learner.am.deltas(learner.entry(k)) for p in d.parameters()}
    expected |= {id(learner.model.l2m_keys)} | {id(p) for p in learner.model.head.parameters()}
    assert trainable == expected


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_decoders_take_the_pool(family):
    """Bug: L2M-LoRA refused on a model that fuses q, k and v (GPT-2: no attn.q role) or failing on a
    decoder's last-token pooling."""
    stream = toy_stream()
    backbone = tiny_llama().model if family == "llama" else tiny_gpt2().transformer
    for p in backbone.parameters():
        p.requires_grad_(False)
    learner = make_learner("l2m", {"pool_size": 3})
    learner.setup(ContinualClassifier(backbone, 32, stream.num_classes, "last"), stream)
    attention = ("attn.qkv",) if family == "gpt2" else ("attn.q", "attn.v")
    assert learner.am.adapter_config("pool2").targets == (*attention, "mlp.up")
    learner.begin_task(0)
    learner.model.train()
    learner.loss(batch_of(stream, 0, [0, 1]), 0).backward()
    assert any(pool_grads(learner).values())


def similar_stream() -> Stream:
    """Three tasks whose texts share one long filler, so every query is nearly the same."""
    filler = "the a of the a of the a of the a of "

    def task(t, n_train=16, n_eval=4):
        words = [WORDS[2 * t], WORDS[2 * t + 1]]
        split = [[{"text": filler + words[i % 2], "label": i % 2} for i in range(n)] for n in (n_train, n_eval, n_eval)]
        return Task(f"s{t}", words, *split)

    return Stream("similar", "class", [task(t) for t in range(3)])


def test_without_the_count_penalty_tasks_collapse_onto_one_key():
    """Bug: the count penalty not steering later tasks to fresh entries (then, as the paper reports,
    tasks with similar queries share one entry and overwrite each other's modulators)."""
    used = {}
    for penalty in (False, True):
        stream = similar_stream()
        cfg = ContinualConfig(method="l2m", options={"pool_size": 8, "count_penalty": penalty}, epochs=1, lr=5e-3,
                              batch_size=8)
        result = run_stream(cfg, model=toy_model(stream), tokenizer=tokenizer(), stream=stream, progress=False)
        used[penalty] = [set(h) for h in result.extra["l2m_train_keys"]]
    assert len(set.union(*used[False])) == 1  # every task trained the same single entry
    first, second, third = used[True]
    assert not first & second and not (first | second) & third  # each task its own entries


def scenario_stream(scenario):
    return toy_stream(scenario, n_train=16, n_eval=8)


@pytest.mark.parametrize("scenario,modulator", [("class", "lora"), ("task", "ia3")])
def test_runs_a_stream_and_reports_key_usage(tmp_path, scenario, modulator):
    """Bug: the learner failing in a scenario or with a modulator; the keys missing from the checkpoint
    (not on the classifier); key-usage reports that do not count every training and test sample; test
    picks counted into the usage that drives the penalty."""
    stream = scenario_stream(scenario)
    cfg = ContinualConfig(method="l2m", options={"pool_size": 6, "modulator": modulator}, epochs=2, lr=5e-3,
                          batch_size=8, output_dir=str(tmp_path))
    result = run_stream(cfg, model=toy_model(stream), tokenizer=tokenizer(), stream=stream, progress=False)
    assert [len(row) for row in result.matrix] == [1, 2, 3]
    assert all(0 <= a <= 1 for row in result.matrix for a in row)
    assert [sum(h.values()) for h in result.extra["l2m_train_keys"]] == [2 * 16] * 3
    for t, rows in enumerate(result.extra["l2m_test_keys"]):
        assert [sum(h.values()) for h in rows] == [8] * (t + 1)
    saved = json.loads((tmp_path / "progress.json").read_text())["learner"]
    assert saved["batches_seen"] == 3 * 2 * 2  # usage counts training batches only, not test or dev ones
    tensors, _ = read_tensors(tmp_path / "task-2.safetensors")
    assert tuple(tensors["l2m_keys"].shape) == (6, 32)
    assert sum("pool5" in k for k in tensors) > 0


def same_model(stream):
    torch.manual_seed(0)  # toy_model's head starts from the global RNG
    return toy_model(stream)


def test_resume_ends_where_an_uninterrupted_run_does(tmp_path, monkeypatch):
    """Bug: the usage counts not saved (a resumed task 1 would train without the penalty) or the keys
    not restored, so the resumed run picks other entries than the uninterrupted one."""
    stream = scenario_stream("class")

    def config(out):
        return ContinualConfig(method="l2m", options={"pool_size": 6}, epochs=2, lr=5e-3, batch_size=8,
                               output_dir=str(out))

    whole = run_stream(config(tmp_path / "a"), model=same_model(stream), tokenizer=tokenizer(), stream=stream,
                       progress=False)
    end_task = L2M.end_task

    def crash(self, t, data, batches):
        if t == 1:
            raise KeyboardInterrupt
        end_task(self, t, data, batches)

    monkeypatch.setattr(L2M, "end_task", crash)
    with pytest.raises(KeyboardInterrupt):
        run_stream(config(tmp_path / "b"), model=same_model(stream), tokenizer=tokenizer(), stream=stream,
                   progress=False)
    monkeypatch.setattr(L2M, "end_task", end_task)
    resumed = run_stream(config(tmp_path / "b"), resume=True, model=same_model(stream), tokenizer=tokenizer(),
                         stream=stream, progress=False)
    assert resumed.matrix == whole.matrix
    assert resumed.extra == whole.extra
