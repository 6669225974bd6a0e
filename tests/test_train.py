"""petkit.train: config validation, schedules, metrics, the loop, checkpoints and exact resume.

Models are tiny random BERT/GPT-2 with most weights frozen (as an adapter would leave them) and
dropout on, so resuming has to restore the RNG, not just the weights.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import textwrap
from dataclasses import FrozenInstanceError, replace

import pytest
import torch

from petkit.core.errors import ConfigError
from petkit.data import ClassificationDataset, classification_batches, lm_blocks
from petkit.testing import tiny_bert, tiny_gpt2, tiny_tokenizer
from petkit.train import (
    CheckpointError,
    TrainConfig,
    accuracy,
    evaluate,
    list_checkpoints,
    load_checkpoint,
    lr_factor,
    macro_f1,
    perplexity,
    train,
    warmup_steps,
)
from petkit.train import checkpoint as checkpoint_module


class Crash(Exception):
    pass


def crash_at(step):
    def on_step(info):
        if info.step == step:
            raise Crash(f"simulated crash after step {step}")
    return on_step


def examples(n, seed):
    """Three classes told apart by which letters they use: learnable by a tiny model in seconds."""
    rng = random.Random(seed)
    alphabets = ["abcdefgh", "ijklmnop", "qrstuvwx"]
    return [{"text": "".join(rng.choice(alphabets[i % 3]) for _ in range(rng.randint(6, 14))), "label": i % 3}
            for i in range(n)]


TOKENIZER = tiny_tokenizer()
TRAIN = ClassificationDataset(TOKENIZER, examples(40, 0), max_length=32)
DEV = ClassificationDataset(TOKENIZER, examples(24, 1), max_length=32)


def bert(seed=0, dropout=None):
    """Tiny BERT with only the top layer, pooler and classifier trainable."""
    model = tiny_bert(seed=seed, dropout=dropout)
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith(("classifier", "bert.pooler", "bert.encoder.layer.1."))
    return model


def gpt2(seed=0):
    """Tiny GPT-2 with only the last block trainable."""
    model = tiny_gpt2(seed=seed)
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("transformer.h.1.")
    return model


def lm_data():
    text = " ".join("the quick brown fox jumps over the lazy dog" for _ in range(8))
    return lm_blocks(TOKENIZER, text, block_length=16)


def trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_same_weights(a, b, atol=0.0):
    ta, tb = trainable(a), trainable(b)
    assert ta.keys() == tb.keys()
    for name in ta:
        if atol:
            torch.testing.assert_close(ta[name], tb[name], atol=atol, rtol=0, msg=name)
        else:
            assert torch.equal(ta[name], tb[name]), f"{name} differs"


# ------------------------------------------------------------------------------------ config

@pytest.mark.parametrize("kwargs, message", [
    ({"lr": -1}, "lr must be > 0, got -1"),
    ({"lr": 0}, "lr must be > 0, got 0"),
    ({"epochs": 0}, "epochs must be >= 1, got 0"),
    ({"batch_size": 2.5}, "batch_size must be an integer, got 2.5"),
    ({"grad_accum": True}, "grad_accum must be an integer, got True"),
    ({"warmup": 1.5}, r"warmup as a ratio must be in \[0, 1\), got 1.5"),
    ({"warmup": -3}, "warmup must be >= 0, got -3"),
    ({"schedule": "step"}, "schedule must be one of linear, cosine, constant, got 'step'"),
    ({"max_grad_norm": 0}, "max_grad_norm must be > 0, got 0"),
    ({"weight_decay": -0.1}, "weight_decay must be >= 0, got -0.1"),
    ({"checkpoint_every": 10}, "checkpoint_every=10 needs an output_dir"),
    ({"keep_checkpoints": 0, "output_dir": "x"}, "keep_checkpoints must be >= 1, got 0"),
    ({"max_steps": 0}, "max_steps must be >= 1, got 0"),
])
def test_config_errors_are_readable(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_config_is_frozen_and_round_trips():
    cfg = TrainConfig(lr=3e-4, warmup=100, output_dir="runs/x")
    with pytest.raises(FrozenInstanceError):
        cfg.lr = 1.0
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="future_knob"):  # issue 16: a key the user wrote must exist
        TrainConfig.from_dict({"lr": 0.1, "future_knob": 1})


# ---------------------------------------------------------------------------------- schedules

def test_schedule_values_at_known_steps():
    assert [lr_factor(s, 10, 2, "linear") for s in (0, 1, 2, 6, 9)] == [0.0, 0.5, 1.0, 0.5, 0.125]
    assert [lr_factor(s, 10, 2, "cosine") for s in (2, 6, 10)] == pytest.approx([1.0, 0.5, 0.0])
    assert [lr_factor(s, 10, 2, "constant") for s in (0, 1, 2, 9)] == [0.0, 0.5, 1.0, 1.0]
    assert warmup_steps(TrainConfig(warmup=0.1), 25) == 3 and warmup_steps(TrainConfig(warmup=7), 5) == 5


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_schedules_match_transformers(schedule):
    import transformers

    make = {"linear": transformers.get_linear_schedule_with_warmup,
            "cosine": transformers.get_cosine_schedule_with_warmup,
            "constant": lambda opt, w, t: transformers.get_constant_schedule_with_warmup(opt, w)}[schedule]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make(opt, 3, 17)
    ours = [lr_factor(s, 17, 3, schedule) for s in range(17)]
    theirs = []
    for _ in range(17):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_trainer_applies_the_schedule(tmp_path):
    seen = []
    cfg = TrainConfig(lr=0.01, epochs=1, batch_size=4, warmup=2, schedule="linear")
    train(bert(), TRAIN, cfg, progress=False, on_step=lambda info: seen.append(info.lr))
    assert seen == pytest.approx([0.01 * lr_factor(s, 10, 2, "linear") for s in range(10)])


# ------------------------------------------------------------------------------------ metrics

def test_metric_functions():
    labels, preds = [0, 0, 1, 1, 2], [0, 1, 1, 1, 0]
    assert accuracy(preds, labels) == 0.6
    assert macro_f1(preds, labels) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert macro_f1(labels, labels) == 1.0
    assert perplexity(0.0) == 1.0 and perplexity(math.log(10)) == pytest.approx(10)
    assert perplexity(1e6) == math.inf


def test_evaluate_lm_reports_perplexity_and_restores_mode():
    model = tiny_gpt2().train()
    metrics = evaluate(model, lm_data(), task="causal_lm", batch_size=4)
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]))
    assert metrics["tokens"] == sum(len(b["input_ids"]) - 1 for b in lm_data())
    assert model.training


# ----------------------------------------------------------------------------------- the loop

def test_loss_falls_and_only_trainable_params_change(tmp_path):
    model = bert()
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = evaluate(model, DEV)
    cfg = TrainConfig(lr=1e-2, epochs=6, batch_size=8, warmup=0.1, output_dir=str(tmp_path))
    result = train(model, TRAIN, cfg, eval_data=DEV, progress=False)
    assert result.eval_metrics["loss"] < before["loss"] - 0.3
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.eval_metrics["accuracy"] > 0.6
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen_before[name]), f"frozen {name} changed"

    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4, 5, 6]
    assert {"step", "train_loss", "lr", "samples_per_s", "eval_loss", "eval_accuracy", "eval_macro_f1"} <= set(lines[0])
    assert lines == result.history


def test_lm_training_reports_tokens(tmp_path):
    cfg = TrainConfig(lr=1e-2, epochs=2, batch_size=2, output_dir=str(tmp_path))
    result = train(gpt2(), lm_data(), cfg, eval_data=lm_data(), task="causal_lm", progress=False)
    assert "tokens_per_s" in result.history[0] and "eval_perplexity" in result.history[0]
    assert result.history[1]["eval_loss"] < result.history[0]["eval_loss"]


def test_max_steps_stops_mid_epoch_and_evaluates_at_the_end():
    cfg = TrainConfig(lr=1e-3, epochs=99, max_steps=7, batch_size=4)
    result = train(bert(), TRAIN, cfg, eval_data=DEV, progress=False)
    assert result.steps == 7 and result.epochs == 0  # 10 batches per epoch: stopped inside the first
    assert result.history[-1]["event"] == "final" and result.history[-1]["step"] == 7


def test_grad_accumulation_matches_a_bigger_batch():
    runs = {}
    for batch_size, accum in ((8, 1), (4, 2)):
        model = bert(dropout=0.0)
        cfg = TrainConfig(lr=5e-3, epochs=2, batch_size=batch_size, grad_accum=accum, max_grad_norm=None)
        result = train(model, TRAIN, cfg, progress=False)
        runs[accum] = (model, result)
    assert runs[1][1].steps == runs[2][1].steps == 10
    assert_same_weights(runs[1][0], runs[2][0], atol=1e-5)


def test_dataloader_input_is_accepted():
    loader = classification_batches(TOKENIZER, examples(16, 0), batch_size=3)
    with pytest.warns(UserWarning, match="batch_size 3 is ignored"):
        result = train(bert(), loader, TrainConfig(batch_size=4), progress=False)
    assert result.steps == 4


def test_nothing_trainable_is_an_error():
    model = tiny_bert()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters with requires_grad=True"):
        train(model, TRAIN, TrainConfig(), progress=False)


# ----------------------------------------------------------------------- checkpoints and resume

def resume_cfg(output_dir, **overrides):
    """15 steps: 3 epochs x 5 steps (10 micro-batches of 4, accumulated in pairs); checkpoint every 3."""
    settings = dict(lr=5e-3, epochs=3, batch_size=4, grad_accum=2, warmup=2, schedule="cosine",
                    weight_decay=0.01, seed=7, checkpoint_every=3, keep_checkpoints=2)
    return TrainConfig(**{**settings, **overrides}, output_dir=str(output_dir))


def reference_run(tmp_path, make=bert, data=TRAIN, task="classification"):
    model = make()
    cfg = resume_cfg(tmp_path / "reference")
    result = train(model, data, cfg, eval_data=DEV if task == "classification" else None, task=task, progress=False)
    return model, result


@pytest.mark.parametrize("crash_step, expected_resume", [
    (8, "step-00000006"),   # mid-epoch (5 steps per epoch): skips the batches already seen
    (5, "step-00000003"),   # at an epoch boundary, redoing steps 4-5 and the epoch-end evaluation
])
def test_resume_after_crash_is_bit_identical(tmp_path, crash_step, expected_resume):
    reference, ref_result = reference_run(tmp_path)
    cfg = resume_cfg(tmp_path / "crashed")
    with pytest.raises(Crash):
        train(bert(), TRAIN, cfg, eval_data=DEV, progress=False, on_step=crash_at(crash_step))
    resumed = bert()  # a fresh process would rebuild the same (frozen) base
    result = train(resumed, TRAIN, cfg, eval_data=DEV, progress=False, resume=True)
    assert result.resumed_from.name == expected_resume
    assert result.steps == ref_result.steps == 15
    assert_same_weights(resumed, reference)
    assert result.eval_metrics == ref_result.eval_metrics

    # metrics.jsonl reads as if the run had never stopped (timings aside).
    def comparable(records):
        return [{k: v for k, v in r.items() if k not in ("elapsed_s", "samples_per_s")} for r in records]

    logged = [json.loads(line) for line in (tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()]
    assert comparable(logged) == comparable(result.history) == comparable(ref_result.history)


def test_resume_lm_with_dropout_is_bit_identical(tmp_path):
    reference, _ = reference_run(tmp_path, make=gpt2, data=lm_data(), task="causal_lm")
    cfg = resume_cfg(tmp_path / "crashed")
    with pytest.raises(Crash):
        train(gpt2(), lm_data(), cfg, task="causal_lm", progress=False, on_step=crash_at(4))
    resumed = gpt2()
    train(resumed, lm_data(), cfg, task="causal_lm", progress=False, resume=True)
    assert_same_weights(resumed, reference)


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    """A real crash: a child process is killed with SIGKILL while it trains, then we resume here."""
    reference, _ = reference_run(tmp_path)
    out = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import sys, time, torch
        torch.set_num_threads(1)
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})
        import test_train as t
        cfg = t.resume_cfg({str(out)!r})
        def on_step(info):
            if info.step == 7:
                print("ready", flush=True)
                time.sleep(600)  # killed here, between checkpoints
        t.train(t.bert(), t.TRAIN, cfg, eval_data=t.DEV, progress=False, on_step=on_step)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
    finally:
        child.kill()
        child.wait()
    resumed = bert()
    cfg = resume_cfg(out)
    result = train(resumed, TRAIN, cfg, eval_data=DEV, progress=False, resume=True)
    assert result.resumed_from.name == "step-00000006"
    assert_same_weights(resumed, reference)


def test_checkpoint_contents_and_pruning(tmp_path):
    _, result = reference_run(tmp_path)
    folders = list_checkpoints(tmp_path / "reference")
    assert [f.name for f in folders] == ["step-00000012", "step-00000015"]  # keep_checkpoints=2
    assert result.checkpoint == folders[-1]
    assert sorted(p.name for p in folders[-1].iterdir()) == [
        "trainable.safetensors", "trainer_state.json", "trainer_state.safetensors"]
    ckpt = load_checkpoint(folders[-1])
    assert set(ckpt.params) == {n for n, p in bert().named_parameters() if p.requires_grad}
    assert ckpt.state_tensors["rng.torch"].dtype == torch.uint8
    loop = ckpt.state["loop"]
    assert (loop["step"], loop["epoch"], loop["batches_done"], loop["eval_step"]) == (15, 3, 0, 15)
    assert loop["eval_metrics"] == result.eval_metrics and loop["train_loss"] == result.train_loss
    assert ckpt.state["rng"]["python"][0] == 3 and ckpt.state["rng"]["numpy"][0] == "MT19937"
    # No pickle anywhere: the only non-safetensors file is JSON.
    assert json.loads((folders[-1] / "trainer_state.json").read_text())["format"] == "petkit-checkpoint/1"


def test_resume_of_a_finished_run_does_nothing(tmp_path):
    reference, ref_result = reference_run(tmp_path)
    again = bert()
    result = train(again, TRAIN, resume_cfg(tmp_path / "reference"), eval_data=DEV,
                   progress=False, resume=True, on_step=crash_at(1))  # would raise if any step ran
    assert (result.steps, result.eval_metrics, result.history) == (15, ref_result.eval_metrics, ref_result.history)
    assert_same_weights(again, reference)


def test_fresh_run_will_not_mix_with_old_checkpoints(tmp_path):
    reference_run(tmp_path)
    with pytest.raises(CheckpointError, match="already holds checkpoints of an earlier run: pass resume=True"):
        train(bert(), TRAIN, resume_cfg(tmp_path / "reference"), progress=False)


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path):
    reference, _ = reference_run(tmp_path)
    cfg = resume_cfg(tmp_path / "crashed")
    with pytest.raises(Crash):
        train(bert(), TRAIN, cfg, progress=False, on_step=crash_at(10))
    newest = list_checkpoints(cfg.output_dir)[-1]
    weights = newest / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="trainable.safetensors is corrupt or truncated"):
        load_checkpoint(newest)

    resumed = bert()
    with pytest.warns(UserWarning) as warned:
        result = train(resumed, TRAIN, cfg, eval_data=DEV, progress=False, resume=True)
    messages = [str(w.message) for w in warned]
    assert any("skipping unusable checkpoint" in m and "step-00000009" in m for m in messages)
    assert any("resuming from the older checkpoint step-00000006" in m for m in messages)
    assert result.resumed_from.name == "step-00000006"
    assert_same_weights(resumed, reference)


def test_no_usable_checkpoint_is_a_clear_error(tmp_path):
    cfg = resume_cfg(tmp_path, epochs=1)
    train(bert(), TRAIN, cfg, progress=False)
    for folder in list_checkpoints(tmp_path):
        (folder / "trainer_state.json").write_text('{"format": "petkit-check')
    with pytest.raises(CheckpointError, match="(?s)no usable checkpoint.*trainer_state.json is corrupt or truncated"):
        with pytest.warns(UserWarning):
            train(bert(), TRAIN, cfg, progress=False, resume=True)


def test_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    cfg = resume_cfg(tmp_path)
    real_save = checkpoint_module.save_file
    calls = []

    def failing_save(tensors, path):
        calls.append(path)
        if len(calls) == 3:  # the 2nd checkpoint's first file: die half-way through writing it
            path.write_bytes(b"partial")
            raise OSError("disk full")
        real_save(tensors, path)

    monkeypatch.setattr(checkpoint_module, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        train(bert(), TRAIN, cfg, progress=False)
    assert [f.name for f in list_checkpoints(tmp_path)] == ["step-00000003"]
    assert load_checkpoint(list_checkpoints(tmp_path)[0]).step == 3
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    assert leftovers  # the half-written folder is never picked up, and is cleaned by the next save

    monkeypatch.setattr(checkpoint_module, "save_file", real_save)
    train(bert(), TRAIN, cfg, progress=False, resume=True)
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp-")]


def test_resume_refuses_a_different_data_order(tmp_path):
    cfg = resume_cfg(tmp_path, epochs=1)
    train(bert(), TRAIN, cfg, progress=False)
    with pytest.raises(CheckpointError, match="batch_size was 4 in that run and is 8 now"):
        train(bert(), TRAIN, replace(cfg, batch_size=8), progress=False, resume=True)


def test_resume_without_checkpoints_starts_fresh(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=8, output_dir=str(tmp_path / "new"))
    with pytest.warns(UserWarning, match="no checkpoint yet"):
        result = train(bert(), TRAIN, cfg, progress=False, resume=True)
    assert result.resumed_from is None and result.steps == 5


def test_progress_bar_prints_epoch_summaries(capsys):
    train(bert(), TRAIN, TrainConfig(epochs=1, batch_size=8), eval_data=DEV, progress=True)
    out = capsys.readouterr().out
    assert "epoch=1" in out and "samples_per_s=" in out and "eval_accuracy=" in out
