"""Regression (continuous) heads on adapted models: data checks, standardisation, pooling, the joint
text + value loss (VLA4CD), saving with the adapter, bad input, and petkit's and transformers' trainers.

Everything runs on tiny random models (petkit.testing) in seconds."""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers

import petkit
import petkit.hf
from petkit.core.errors import ConfigError
from petkit.core.registry import config_from_dict
from petkit.data import JointRegressionDataset, RegressionDataset, check_targets, load_dataset
from petkit.data.records import from_splits
from petkit.models.regression import RegressionConfig, RegressionModel, saved_config
from petkit.testing import tiny_bert, tiny_llama, tiny_tokenizer
from petkit.train import TrainConfig, evaluate, train
from petkit.train.regression_metrics import regression_metrics, spearman

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

ENCODER_LORA = petkit.LoraConfig(r=4, alpha=8, targets=["query", "value"])
DECODER_LORA = petkit.LoraConfig(r=4, alpha=8, targets=["q_proj", "v_proj"])


def encoder(seed: int = 0, **settings) -> RegressionModel:
    return RegressionModel(tiny_bert(seed=seed, dropout=0.0).bert, RegressionConfig(**settings))


def decoder(seed: int = 0, **settings) -> RegressionModel:
    return RegressionModel(tiny_llama(seed=seed), RegressionConfig(**settings))


def records(n: int = 48, seed: int = 0) -> list[dict]:
    """Texts whose targets a model can read off them: how many 'a's, and the length (two outputs, far
    apart in scale, so standardisation matters)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        k, extra = int(torch.randint(0, 6, (1,), generator=g)), int(torch.randint(0, 6, (1,), generator=g))
        text = " ".join(["a"] * k + ["b"] * extra)
        rows.append({"text": text, "target": [float(k), 100.0 + 10.0 * (k + extra)]})
    return rows


def dataset(rows, max_length: int = 24) -> RegressionDataset:
    return RegressionDataset(tiny_tokenizer(), rows, max_length, outputs=2)


def batch_of(rows) -> dict:
    data = dataset(rows)
    return data.collate([data[i] for i in range(len(data))])


# -- data ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "high"])
def test_a_target_that_is_not_a_finite_number_is_refused_naming_its_row(bad):
    rows = records(5)
    rows[3] = {"text": "odd one", "target": [1.0, bad]}
    with pytest.raises(ConfigError, match=r"row 3 \('odd one'\)"):
        check_targets(rows, "mine")
    with pytest.raises(ConfigError, match="row 3"):
        from_splits("mine", {"train": rows})


def test_records_with_a_different_number_of_targets_are_refused():
    rows = records(5)
    rows[2] = {"text": "short", "target": 1.0}
    with pytest.raises(ConfigError, match="row 2 has 1 target.*2 were expected"):
        check_targets(rows, "mine")
    with pytest.raises(ConfigError, match="row 0 has 2 target.*3 were expected"):
        RegressionDataset(tiny_tokenizer(), records(3), outputs=3)


def test_a_file_of_text_and_target_records_loads_as_regression_data(tmp_path):
    path = tmp_path / "prices.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records(40)))
    data = load_dataset(path, max_train=10)
    assert data.task == "regression" and data.labels == ["target_0", "target_1"]
    assert len(data.train) == 10 and len(data.dev) == len(data.test) == 4
    assert all(isinstance(r["target"], list) for r in data.train)


def test_batches_carry_float_targets_beside_padded_tokens():
    batch = batch_of(records(4))
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (4, 2)
    assert batch["input_ids"].dtype == torch.long


# -- the model ---------------------------------------------------------------------------------------

def test_predictions_come_back_in_original_units():
    """Catches: the standardisation not undone at predict time (or undone twice)."""
    model = encoder(outputs=2).standardise(([5.0, 150.0], [2.0, 30.0]))
    batch = batch_of(records(4))
    with torch.no_grad():
        model.regressor.net[-1].weight.zero_()
        model.regressor.net[-1].bias.copy_(torch.tensor([1.0, -0.5]))  # z = (1, -0.5) for every input
        out = model(**batch)
    torch.testing.assert_close(out.logits, torch.tensor([[7.0, 135.0]]).expand(4, 2))


def test_the_loss_is_taken_on_standardised_targets():
    """Catches: a loss in original units (the large-scale output would swamp the other)."""
    model = encoder(outputs=2).standardise(([5.0, 150.0], [2.0, 30.0]))
    batch = batch_of(records(6))
    with torch.no_grad():
        out = model(**batch)
        z = (out.logits - model.target_mean) / model.target_std
        wanted = torch.nn.functional.mse_loss(z, (batch["labels"] - model.target_mean) / model.target_std)
    torch.testing.assert_close(out.loss, wanted)
    assert out.loss < 10  # an original-units loss would be in the thousands


def test_huber_loss_is_a_setting():
    model = encoder(outputs=2, loss="huber", huber_delta=0.5).standardise(([0.0, 0.0], [1.0, 1.0]))
    batch = batch_of(records(6))
    with torch.no_grad():
        out = model(**batch)
    torch.testing.assert_close(out.loss, torch.nn.functional.huber_loss(out.logits, batch["labels"], delta=0.5))


def test_standardise_sets_the_train_targets_mean_and_std():
    rows = records(30)
    model = encoder(outputs=2).standardise(rows)
    values = torch.tensor([r["target"] for r in rows])
    torch.testing.assert_close(model.target_mean, values.mean(0))
    torch.testing.assert_close(model.target_std, values.std(0, unbiased=False))


def _alone_vs_padded(model, rows):
    padded = batch_of(rows)
    lengths = padded["attention_mask"].sum(1)
    assert lengths.min() < lengths.max()  # some rows really are padded
    with torch.no_grad():
        together = model(**padded).logits
        alone = torch.cat([model(**batch_of([r])).logits for r in rows])
    return together, alone


def test_a_decoder_reads_the_last_real_token_not_padding():
    """Catches: the pad token's state (position -1) taken instead of the last real token's."""
    together, alone = _alone_vs_padded(decoder(outputs=2), records(6))
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_left_padding_reads_the_same_token():
    model = decoder(outputs=2)
    rows = records(4)
    right = batch_of(rows)
    left = {k: v.clone() for k, v in right.items()}
    for i, n in enumerate(right["attention_mask"].sum(1).tolist()):
        for key in ("input_ids", "attention_mask"):
            row = right[key][i]
            left[key][i] = torch.cat([row[n:], row[:n]])
    with torch.no_grad():
        torch.testing.assert_close(model(**left).logits, model(**right).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler"])
def test_an_encoders_pooled_features_ignore_padding(pooling):
    """Catches: a mean over padded positions too (the mask not applied)."""
    together, alone = _alone_vs_padded(encoder(outputs=2, pooling=pooling), records(6))
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_auto_pooling_is_the_pooler_on_an_encoder_and_the_last_token_on_a_decoder():
    assert encoder().pooling == "pooler" and decoder().pooling == "last"


def test_a_batch_with_the_wrong_number_of_targets_is_refused():
    model = encoder(outputs=3)
    with pytest.raises(ConfigError, match="2 target.*head has 3 output"):
        model(**batch_of(records(2)))


def test_bad_settings_are_refused_in_words():
    with pytest.raises(ConfigError, match="loss must be one of mse, huber"):
        RegressionConfig(loss="l1")
    with pytest.raises(ConfigError, match="2 names for 3 outputs"):
        RegressionConfig(outputs=3, names=("a", "b"))
    with pytest.raises(ConfigError, match="causal-LM backbone"):
        encoder(lm_weight=1.0)


# -- training with any method -------------------------------------------------------------------------

METHODS = {
    "lora": lambda kind: ENCODER_LORA if kind == "encoder" else DECODER_LORA,
    "bottleneck": lambda kind: config_from_dict({"method": "bottleneck", "bottleneck": 8,
                                                 "targets": ["output.dense"] if kind == "encoder" else ["mlp.down_proj"]}),
    "prompt": lambda kind: config_from_dict({"method": "prompt", "num_virtual_tokens": 3}),
}


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_head_trains_with_any_method_and_the_loss_falls(kind, method):
    rows = records(48)
    torch.manual_seed(0)
    model = (encoder if kind == "encoder" else decoder)(outputs=2, pooling="mean" if kind == "encoder" else "auto")
    model.standardise(rows)
    am = petkit.adapt(model, METHODS[method](kind))
    head_before = {k: v.clone() for k, v in am.adapter_parameters("default").items() if "regressor" in k}
    data = dataset(rows)
    before = evaluate(am, data, "regression")
    train(am, data, TrainConfig(lr=1e-2, epochs=6, batch_size=8, eval_every_epoch=False), task="regression",
          progress=False)
    after = evaluate(am, data, "regression")
    assert head_before and all(not torch.equal(v, am.adapter_parameters("default")[k]) for k, v in head_before.items())
    assert after["loss"] < 0.97 * before["loss"]  # tiny random decoders learn slowly: the loss must fall
    assert {"mse", "mae", "r2", "pearson", "spearman"} <= set(after)


def test_the_learned_targets_are_predicted_in_their_units():
    rows = records(64)
    torch.manual_seed(0)
    model = encoder(outputs=2, pooling="mean").standardise(rows)
    am = petkit.adapt(model, petkit.LoraConfig(r=8, alpha=16, targets=["query", "value", "dense"]))
    train(am, dataset(rows), TrainConfig(lr=1e-2, epochs=25, batch_size=16, eval_every_epoch=False), task="regression",
          progress=False)
    metrics = evaluate(am, dataset(rows), "regression")
    assert metrics["r2"] > 0.8, metrics
    assert metrics["mae"] < 0.25 * sum(model.target_std.tolist()) / 2  # well under one std, in original units


def test_a_prompt_tuned_decoder_still_reads_the_last_real_token():
    """Catches: the mask's positions not shifted past the prompt tokens put in front of the input."""
    am = petkit.adapt(decoder(outputs=2).standardise(records(20)),
                      config_from_dict({"method": "prompt", "num_virtual_tokens": 3}))
    together, alone = _alone_vs_padded(am, records(6))
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    one = batch_of(records(1))
    with torch.no_grad():
        hidden = am.base.backbone(input_ids=one["input_ids"], attention_mask=one["attention_mask"],
                                  output_hidden_states=True).hidden_states[-1]
        assert hidden.shape[1] == one["input_ids"].shape[1] + 3  # the prompt is in front
        wanted = am.base.regressor(hidden[:, -1]) * am.base.target_std + am.base.target_mean
        torch.testing.assert_close(am(**one).logits, wanted)


# -- VLA4CD: text and values from one decoder -----------------------------------------------------------

def joint_rows(n: int = 6, seed: int = 0) -> list[dict]:
    """A question, a text answer and the values, as VLA4CD's driving records are."""
    return [{"text": f"count: {r['text']}", "answer": "a" * int(r["target"][0]) + ".", "target": r["target"]}
            for r in records(n, seed)]


def joint_batch(rows) -> dict:
    data = JointRegressionDataset(tiny_tokenizer(), rows, max_length=48, outputs=2)
    return data.collate([data[i] for i in range(len(data))])


def test_joint_records_score_the_answer_tokens_only():
    row = joint_rows(1)[0]
    tok = tiny_tokenizer()
    item = JointRegressionDataset(tok, [row], outputs=2)[0]
    prompt = len(tok(row["text"])["input_ids"])
    answer = tok(row["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert item["lm_labels"] == [-100] * prompt + answer and item["input_ids"][prompt:] == answer


def test_the_joint_loss_is_the_weighted_sum_of_the_text_and_value_losses():
    model = decoder(outputs=2, lm_weight=0.3, regression_weight=2.0).standardise(records(20))
    batch = joint_batch(joint_rows())
    with torch.no_grad():
        out = model(**batch)
        text = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              labels=batch["lm_labels"]).loss
    torch.testing.assert_close(out.lm_loss, text)
    torch.testing.assert_close(out.loss, 2.0 * out.regression_loss + 0.3 * out.lm_loss)
    assert out.lm_logits.shape[:2] == batch["input_ids"].shape


def test_label_smoothing_follows_vla4cds_formula():
    model = decoder(outputs=2, lm_weight=1.0, label_smoothing=0.1)
    batch = joint_batch(joint_rows())
    with torch.no_grad():
        out = model(**batch)
    logp = out.lm_logits[:, :-1].log_softmax(-1)
    targets = batch["lm_labels"][:, 1:]
    scored = targets != -100
    nll = -logp[scored].gather(-1, targets[scored][:, None]).mean()
    uniform = -logp[scored].mean()
    torch.testing.assert_close(out.lm_loss, 0.9 * nll + 0.1 * uniform, rtol=1e-4, atol=1e-5)


def test_padding_is_not_scored_as_text_in_the_joint_loss():
    """Catches: lm_labels padded with the pad id (pad tokens scored as text) instead of -100."""
    model = decoder(outputs=2, lm_weight=1.0)
    rows = joint_rows()
    batch = joint_batch(rows)
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        together = model(**batch).lm_loss
        alone = [model(**joint_batch([r])) for r in rows]
    tokens = [int((joint_batch([r])["lm_labels"][:, 1:] != -100).sum()) for r in rows]
    mean = sum(o.lm_loss * n for o, n in zip(alone, tokens)) / sum(tokens)
    torch.testing.assert_close(together, mean, rtol=1e-4, atol=1e-5)


def test_joint_training_lowers_both_losses_with_lora():
    rows = joint_rows(48)
    torch.manual_seed(0)
    lora = petkit.LoraConfig(r=4, alpha=8, targets=["q_proj", "v_proj", "o_proj", "down_proj"])  # o, down: text moves
    am = petkit.adapt(decoder(outputs=2, lm_weight=1.0).standardise(rows), lora)
    data = [joint_batch(rows[i:i + 8]) for i in range(0, 48, 8)]

    def losses():
        with torch.no_grad():
            outs = [am(**b) for b in data]
        return sum(float(o.regression_loss) for o in outs), sum(float(o.lm_loss) for o in outs)

    value_before, text_before = losses()
    optimizer = torch.optim.AdamW([p for p in am.parameters() if p.requires_grad], lr=1e-2)
    am.train()
    for _ in range(5):
        for b in data:
            am(**b).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    am.eval()
    value_after, text_after = losses()
    assert value_after < 0.5 * value_before and text_after < 0.97 * text_before


# -- saving with the adapter ---------------------------------------------------------------------------

def test_save_and_load_restore_the_head_and_the_units(tmp_path):
    """Catches: the standardisation not saved (a reload would predict in standardised units)."""
    rows = records(32)
    torch.manual_seed(0)
    am = petkit.adapt(encoder(outputs=2, pooling="mean", head="mlp").standardise(rows), ENCODER_LORA)
    train(am, dataset(rows), TrainConfig(lr=1e-2, epochs=2, batch_size=8, eval_every_epoch=False), task="regression",
          progress=False)
    am.save(tmp_path)
    saved = json.loads((tmp_path / "task.json").read_text())
    assert saved["task"] == "regression" and saved["mean"] == pytest.approx(am.base.target_mean.tolist())
    assert any("regressor" in k for k in am.adapter_parameters("default"))

    config = saved_config(tmp_path)
    assert config == RegressionConfig(outputs=2, pooling="mean", head="mlp")
    fresh = RegressionModel(tiny_bert(seed=0, dropout=0.0).bert, config)  # mean 0, std 1 until loaded
    back = petkit.load(fresh, tmp_path)
    batch = batch_of(rows[:5])
    with torch.no_grad():
        torch.testing.assert_close(back(**batch).logits, am(**batch).logits)


def test_a_regression_adapter_onto_a_classifier_is_refused(tmp_path):
    am = petkit.adapt(encoder(outputs=2), ENCODER_LORA)
    am.save(tmp_path)
    classifier = tiny_bert(seed=0)
    with pytest.raises(ConfigError, match="'regression' adapter.*BertForSequenceClassification cannot take it"):
        petkit.load(classifier, tmp_path)
    assert not isinstance(classifier, petkit.AdaptedModel) and not any(
        "deltas" in n for n, _ in classifier.named_modules())  # left as it was


def test_a_classification_adapter_onto_a_regression_model_is_refused(tmp_path):
    petkit.adapt(tiny_bert(seed=0), ENCODER_LORA).save(tmp_path)
    with pytest.raises(ConfigError, match="no regression task.json"):
        petkit.load(encoder(outputs=2), tmp_path)


def test_an_adapter_for_another_head_is_refused(tmp_path):
    petkit.adapt(encoder(outputs=2), ENCODER_LORA).save(tmp_path)
    with pytest.raises(ConfigError, match="outputs=2"):
        petkit.load(encoder(outputs=3), tmp_path)
    with pytest.raises(ConfigError, match="pooling='pooler'"):
        petkit.load(encoder(outputs=2, pooling="mean"), tmp_path)


# -- metrics and transformers' Trainer ---------------------------------------------------------------------

def test_metrics_match_scipy_and_scikit_learn():
    stats = pytest.importorskip("scipy.stats")
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    y = torch.randn(30, 2, generator=g) * torch.tensor([1.0, 50.0])
    p = y + torch.randn(30, 2, generator=g) * torch.tensor([0.5, 40.0])
    p[:4, 0] = 0.25  # ties, which Spearman ranks by their average
    m = regression_metrics(p.tolist(), y.tolist(), names=["a", "b"])
    assert m["r2"] == pytest.approx(metrics.r2_score(y.numpy(), p.numpy()), rel=1e-6)
    assert m["mse_b"] == pytest.approx(metrics.mean_squared_error(y[:, 1].numpy(), p[:, 1].numpy()), rel=1e-5)
    assert m["mae"] == pytest.approx(metrics.mean_absolute_error(y.numpy(), p.numpy()), rel=1e-5)
    for j, name in enumerate("ab"):
        assert m[f"pearson_{name}"] == pytest.approx(stats.pearsonr(p[:, j], y[:, j])[0], rel=1e-5)
        assert m[f"spearman_{name}"] == pytest.approx(stats.spearmanr(p[:, j], y[:, j])[0], rel=1e-5)
    # the flat-vector form the pruning benchmarks rank importance scores with
    assert spearman(p[:, 0], y[:, 0]) == pytest.approx(stats.spearmanr(p[:, 0], y[:, 0])[0], rel=1e-5)
    assert math.isnan(regression_metrics([[1.0]], [[1.0]])["pearson"])


def test_transformers_trainer_trains_a_regression_adapter_and_checkpoints_its_units(tmp_path):
    rows = records(32)
    am = petkit.adapt(encoder(outputs=2, pooling="mean").standardise(rows), ENCODER_LORA)
    data = dataset(rows)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=4,
                                          learning_rate=1e-2, save_strategy="steps", save_steps=4, report_to=[],
                                          use_cpu=True, disable_tqdm=True, remove_unused_columns=False)
    trainer = petkit.hf.Trainer(model=am, args=args, train_dataset=data, eval_dataset=data, data_collator=data.collate)
    trainer.train()
    assert math.isfinite(trainer.evaluate()["eval_loss"])
    checkpoint = tmp_path / "checkpoint-4"
    assert (checkpoint / "task.json").is_file()
    back = petkit.load(encoder(outputs=2, pooling="mean"), checkpoint)
    batch = batch_of(rows[:4])
    with torch.no_grad():
        torch.testing.assert_close(back(**batch).logits, am(**batch).logits)


# -- run specs and the CLI ---------------------------------------------------------------------------------

def test_a_run_spec_names_a_mistyped_head_setting():
    from petkit.pipeline import RunSpec
    with pytest.raises(ConfigError, match="loss"):
        RunSpec(data="vader", regression={"los": "huber"})


def test_petkit_train_takes_the_regression_task_and_head_settings():
    from petkit.cli.commands import _spec_from_args
    from petkit.cli.main import build_parser
    args = build_parser().parse_args(["train", "--data", "vader", "--task", "regression", "-r", "loss=huber",
                                      "-r", "pooling=mean"])
    spec = _spec_from_args(args)
    assert spec.task == "regression" and spec.regression == {"loss": "huber", "pooling": "mean"}
    assert spec.regression_config(2, ["valence", "rater_std"]) == RegressionConfig(
        outputs=2, names=("valence", "rater_std"), loss="huber", pooling="mean")
