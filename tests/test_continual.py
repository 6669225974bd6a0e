"""petkit.continual's framework: metrics, streams, the runner (evaluation, resume), the baselines."""

from __future__ import annotations

import math

import pytest
import torch

from petkit.continual import ContinualConfig, Stream, run_stream
from petkit.continual.learner import make_learner
from petkit.continual.metrics import average_accuracy, backward_transfer, forgetting, last_accuracy, summarise
from petkit.continual.model import collate, encode_split
from petkit.continual.stream import build_stream, task_from_dataset
from petkit.core.errors import ConfigError
from petkit.train.checkpoint import CheckpointError

from continual_cases import tokenizer, toy_model, toy_stream, toy_task
from test_data import needs_shared

FAST = {"epochs": 2, "lr": 5e-3, "batch_size": 8}


def run(method, stream=None, options=None, output=None, resume=False, seed=0, model=None, **settings):
    stream = stream or toy_stream()
    cfg = ContinualConfig(method=method, options=options or {}, output_dir=output, seed=seed, **{**FAST, **settings})
    tok = tokenizer() if model is None or model.pooling == "mean" else _chat_tokenizer()
    return run_stream(cfg, model=model or toy_model(stream, seed), tokenizer=tok, stream=stream, progress=False,
                      resume=resume)


def _chat_tokenizer():
    from petkit.testing import tiny_chat_tokenizer
    return tiny_chat_tokenizer()


# -- metrics ------------------------------------------------------------------------------------------

MATRIX = [[0.9], [0.6, 0.8], [0.5, 0.7, 1.0]]


def test_metrics_match_their_definitions_on_a_hand_worked_matrix():
    """Catches an off-by-one in any metric (e.g. forgetting taking the max over the last row too, or
    average accuracy averaging the last row only)."""
    assert last_accuracy(MATRIX) == pytest.approx((0.5 + 0.7 + 1.0) / 3)
    assert average_accuracy(MATRIX) == pytest.approx((0.9 + 0.7 + (2.2 / 3)) / 3)
    assert forgetting(MATRIX) == pytest.approx(((0.9 - 0.5) + (0.8 - 0.7)) / 2)
    assert backward_transfer(MATRIX) == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)
    # forgetting uses the best earlier accuracy, not the first: task 0 peaks after task 1 here
    assert forgetting([[0.5], [0.9, 0.8], [0.6, 0.8, 1.0]]) == pytest.approx(((0.9 - 0.6) + 0.0) / 2)
    assert math.isnan(summarise([[0.7]])["forgetting"])


def test_a_ragged_matrix_is_refused():
    with pytest.raises(ValueError, match="one row per task"):
        last_accuracy([[0.5], [0.5]])


# -- streams ------------------------------------------------------------------------------------------

def test_class_incremental_tasks_must_bring_new_classes():
    """Catches a stream that silently merges a repeated class into two head rows."""
    with pytest.raises(ConfigError, match="class 'river'.*task 0"):
        Stream("bad", "class", [toy_task(0), toy_task(1, classes=[1, 3])])
    Stream("fine", "task", [toy_task(0), toy_task(1, classes=[1, 3])])  # tasks of their own may share labels


def test_empty_tasks_single_task_streams_and_unknown_scenarios_are_refused():
    with pytest.raises(ConfigError, match="at least two"):
        Stream("one", "class", [toy_task(0)])
    empty = toy_task(1)
    empty.train = []
    with pytest.raises(ConfigError, match="task 1 .*no train examples"):
        Stream("empty", "class", [toy_task(0), empty])
    with pytest.raises(ConfigError, match="scenario must be one of"):
        Stream("x", "domain", [toy_task(0), toy_task(1)])
    with pytest.raises(ConfigError, match="1 class; a task needs at least two"):
        Stream("x", "class", [toy_task(0), toy_task(1, classes=[2])])


def test_a_method_that_needs_the_task_id_refuses_a_class_incremental_stream():
    with pytest.raises(ConfigError, match="per-task works on task-incremental streams only"):
        run("per-task", toy_stream("class"))


def test_streams_from_mappings_and_files(tmp_path):
    """A task from a data file with a subset of its classes, relabelled in the order given; the
    mapping's bad keys and classes fail with the names a user needs."""
    rows = ["text,label"] + [f"{w} thing {i},{w}" for i in range(30) for w in ("red", "blue", "green")]
    data = tmp_path / "colours.csv"
    data.write_text("\n".join(rows))
    task = task_from_dataset(str(data), ["green", "red"])
    assert task.labels == ["green", "red"]
    assert {ex["text"].split()[0] for ex in task.train if ex["label"] == 0} == {"green"}
    stream = build_stream({"name": "colours", "scenario": "task", "tasks": [
        {"dataset": str(data), "classes": ["red", "blue"]}, {"dataset": str(data), "classes": ["blue", "green"]}]},
        max_train=20)
    assert stream.offsets == [0, 2, 4] and all(len(t.train) == 20 for t in stream.tasks)
    with pytest.raises(ConfigError, match="has no class 'purple'"):
        task_from_dataset(str(data), ["purple", "red"])
    with pytest.raises(ConfigError, match="unknown stream keys"):
        build_stream({"scenario": "class", "tasks": [], "epochs": 3})
    with pytest.raises(ConfigError, match="unknown stream 'nope'"):
        build_stream("nope")
    with pytest.raises(ConfigError, match="class 'red'"):
        build_stream({"scenario": "class", "tasks": [{"dataset": str(data), "classes": ["red", "blue"]},
                                                     {"dataset": str(data), "classes": ["red", "green"]}]})


@needs_shared
def test_named_streams_load_from_the_shared_data():
    stream = build_stream("trec-classes", max_train=30, max_eval=10)
    assert [t.labels for t in stream.tasks] == [["ABBR", "DESC"], ["ENTY", "HUM"], ["LOC", "NUM"]]
    assert stream.offsets == [0, 2, 4, 6]
    assert all(len(t.train) <= 30 and len(t.test) <= 10 for t in stream.tasks)


# -- the model and the runner --------------------------------------------------------------------------

def test_mean_pooling_ignores_padding():
    """Catches pooling over pad tokens: the same text alone and padded in a batch gives the same features."""
    stream = toy_stream()
    model = toy_model(stream).eval()
    tok = tokenizer()
    enc = encode_split(tok, stream.tasks[0], [{"text": "apple", "label": 0}, {"text": "apple apple apple the", "label": 1}],
                       0, 32)
    both = collate(enc, [0, 1], tok.pad_token_id)
    alone = collate(enc, [0], tok.pad_token_id)
    with torch.no_grad():
        assert torch.allclose(model.features(both["input_ids"], both["attention_mask"])[0],
                              model.features(alone["input_ids"], alone["attention_mask"])[0], atol=1e-5)


def test_old_head_rows_do_not_move_when_later_tasks_train():
    """The loss covers the current task's classes only and the optimiser is fresh per task, so the rows
    of earlier classes keep their values exactly. Catches CE over all classes, or an optimiser kept
    across tasks (Adam's momentum would keep moving old rows)."""
    stream = toy_stream()
    model = toy_model(stream)
    learner = make_learner("seq-lora")
    cfg = ContinualConfig(method="seq-lora", **FAST)
    snapshots = []

    original = learner.end_task

    def end_task(t, data, batches):
        snapshots.append(model.head.weight.detach().clone())
        original(t, data, batches)
    learner.end_task = end_task
    import petkit.continual.run as run_module
    make = run_module.make_learner
    run_module.make_learner = lambda name, options: learner
    try:
        run_stream(cfg, model=model, tokenizer=tokenizer(), stream=stream, progress=False)
    finally:
        run_module.make_learner = make
    assert torch.equal(snapshots[0][:2], snapshots[2][:2])
    assert torch.equal(snapshots[1][2:4], snapshots[2][2:4])
    assert not torch.equal(snapshots[1][4:], snapshots[2][4:])


def test_the_matrix_is_lower_triangular_and_evaluates_among_the_right_classes():
    """Class-incremental: among all classes seen so far; task-incremental: among the task's own."""
    result = run("seq-lora", toy_stream("class"))
    assert [len(r) for r in result.matrix] == [1, 2, 3]
    assert [len(r) for r in result.dev_matrix] == [1, 2, 3]
    assert set(result.metrics) == {"last", "average", "forgetting", "bwt"}
    task = run("seq-lora", toy_stream("task"))
    # the task id limits the choice to two classes: never worse than chance by construction of argmax
    assert task.matrix[0] == pytest.approx(result.matrix[0])  # after task 0 both choose between the same two
    # among a task's own classes: the task scenario's own matrix; in the class scenario never below the
    # matrix (a sample right among all seen classes is right among its task's), and equal for task 0 then
    assert task.task_aware == task.matrix
    assert all(w >= a for rw, ra in zip(result.task_aware, result.matrix) for w, a in zip(rw, ra))
    assert [row[0] for row in result.task_aware][:1] == result.matrix[0]
    assert result.task_aware != result.matrix  # the toy's class-incremental rows are out-scored somewhere
    assert len(task.seconds) == 3


def test_per_task_adapters_do_not_forget_and_score_with_the_task_s_own_adapter():
    """Catches scoring every task with the last adapter (the earlier columns would then change)."""
    result = run("per-task", toy_stream("task"))
    for j in range(3):
        column = [row[j] for row in result.matrix[j:]]
        assert column == [column[0]] * len(column)
    assert result.metrics["forgetting"] == 0.0


def test_joint_training_sees_every_earlier_task():
    """Catches joint training that only sees the current task (it would forget task 0 like seq-lora)."""
    stream = toy_stream("class")
    learner = make_learner("joint")
    seen = []
    original = learner.loss

    def loss(batch, t):
        seen.append((t, set(batch["labels"].tolist())))
        return original(batch, t)
    learner.loss = loss
    import petkit.continual.run as run_module
    make = run_module.make_learner
    run_module.make_learner = lambda name, options: learner
    try:
        run_stream(ContinualConfig(method="joint", **FAST), model=toy_model(stream), tokenizer=tokenizer(),
                   stream=stream, progress=False)
    finally:
        run_module.make_learner = make
    last = set().union(*(labels for t, labels in seen if t == 2))
    assert last == set(range(6))


@pytest.mark.parametrize("method,options,scenario", [
    ("seq-lora", {}, "class"), ("seq-full", {}, "class"), ("lae", {"ema_decay": 0.9, "freeze_epochs": 1}, "class"),
    ("mora", {"experts_per_task": 2}, "task"), ("per-task", {}, "task")])
def test_an_interrupted_run_resumes_to_the_same_result(tmp_path, method, options, scenario):
    """Stop after task 1 (a crash during task 2), resume: the matrix equals an uninterrupted run's
    exactly. Catches lost learner state (LAE's offline expert, MoRA's frozen experts, per-task
    adapters), a dropout RNG that restarts, or a checkpoint that misses trained tensors."""
    stream = toy_stream(scenario)
    whole = run(method, stream, options, output=str(tmp_path / "whole"))

    import petkit.continual.run as run_module
    original = run_module._train_task

    def crash_at_task_2(learner, model, t, *args):
        if t == 2:
            raise KeyboardInterrupt
        return original(learner, model, t, *args)
    run_module._train_task = crash_at_task_2
    try:
        with pytest.raises(KeyboardInterrupt):
            run(method, stream, options, output=str(tmp_path / "cut"))
    finally:
        run_module._train_task = original
    assert not (tmp_path / "cut" / "result.json").exists()
    resumed = run(method, stream, options, output=str(tmp_path / "cut"), resume=True)
    assert resumed.matrix == whole.matrix
    assert resumed.extra == whole.extra
    from safetensors.torch import load_file
    ours, theirs = load_file(tmp_path / "cut" / "task-2.safetensors"), load_file(tmp_path / "whole" / "task-2.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_resume_refuses_other_settings_and_broken_checkpoints(tmp_path):
    run("seq-lora", output=str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="already holds a continual run"):
        run("seq-lora", output=str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="lr differ"):
        run("seq-lora", output=str(tmp_path / "a"), resume=True, lr=1e-2)
    tensors = tmp_path / "a" / "task-2.safetensors"
    good = tensors.read_bytes()
    tensors.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="cannot resume.*corrupt or truncated"):
        run("seq-lora", output=str(tmp_path / "a"), resume=True)
    from safetensors.torch import save_file
    save_file({"head.weight": torch.zeros(6, 32), "nope": torch.zeros(1)}, str(tensors))
    with pytest.raises(CheckpointError, match="do not fit this model .*unknown nope"):
        run("seq-lora", output=str(tmp_path / "a"), resume=True)
    save_file({"head.weight": torch.zeros(6, 32)}, str(tensors))
    with pytest.raises(CheckpointError, match="trained tensors missing"):
        run("seq-lora", output=str(tmp_path / "a"), resume=True)


def test_unknown_methods_and_options_fail_clearly():
    with pytest.raises(ConfigError, match="unknown continual method 'ewc'"):
        make_learner("ewc")
    with pytest.raises(ConfigError, match="ema_decay must be in"):
        make_learner("lae", {"ema_decay": 1.5})
    with pytest.raises(ConfigError, match="freeze_epochs=3 with epochs=2 leaves the PET frozen"):
        run("lae", options={"freeze_epochs": 3})
    with pytest.raises(ConfigError, match="lae has no option 'decay'.*ema_decay"):
        make_learner("lae", {"decay": 0.9})


# -- decoders ------------------------------------------------------------------------------------------

def instruct_stream():
    from continual_cases import WORDS, examples
    from petkit.continual import Task
    tasks = []
    for t in range(2):
        words = [WORDS[2 * t], WORDS[2 * t + 1]]
        rows = [{"text": f"which word? {ex['text']}", "label": ex["label"]} for ex in examples([2 * t, 2 * t + 1], 16, t)]
        tasks.append(Task(f"i{t}", words, rows, rows[:8], rows[:8], words=words))
    return Stream("instruct", "task", tasks)


def test_a_decoder_reads_the_last_prompt_token_and_its_head_starts_from_the_answer_words():
    """The head rows of an instruction task are the LM head's rows of the answer words' first tokens, so
    step 0 is the model's own answer; features come from the last real token whatever the padding.
    Catches pooling a pad token, or head rows taken from the wrong word."""
    from petkit.continual.model import classifier_for
    from petkit.data.sft import encode
    from petkit.testing import tiny_chat_tokenizer, tiny_llama
    stream = instruct_stream()
    lm, tok = tiny_llama(), tiny_chat_tokenizer()
    model = classifier_for(lm.model, stream, 0, lm_head=lm.get_output_embeddings(), tokenizer=tok)
    assert model.pooling == "last"
    for row, word in zip(range(4), ["apple", "river", "stone", "cloud"]):
        assert torch.equal(model.head.weight[row], lm.lm_head.weight[encode(tok, word)[0]])
    enc = encode_split(tok, stream.tasks[0], stream.tasks[0].test[:2] + [{"text": "a", "label": 0}], 0, 200)
    assert tok.decode(enc.ids[0]).endswith("assistant\n")  # the chat prompt, ready for the answer
    batch = collate(enc, [0, 1, 2], tok.pad_token_id)
    alone = collate(enc, [2], tok.pad_token_id)
    with torch.no_grad():
        logits = lm(input_ids=alone["input_ids"]).logits[0, -1]
        ours = model(batch["input_ids"], batch["attention_mask"])[2]
        assert torch.allclose(ours[:2], logits[[encode(tok, w)[0] for w in ("apple", "river")]], atol=1e-5)
    result = run("seq-lora", stream, model=model)
    assert [len(r) for r in result.matrix] == [1, 2]


# -- the command line ------------------------------------------------------------------------------------

def test_petkit_continual_writes_the_matrix_plots_and_resumes(tmp_path, capsys):
    from petkit.cli.main import main
    from petkit.testing import tiny_bert, tiny_tokenizer
    folder = tmp_path / "model"
    tiny_bert().bert.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    rows = ["text,label"] + [f"{w} {w} thing {i},{w}" for i in range(24) for w in ("red", "blue", "green", "pink")]
    (tmp_path / "colours.csv").write_text("\n".join(rows))
    stream = tmp_path / "stream.yaml"
    stream.write_text(f"scenario: class\ntasks:\n  - {{dataset: {tmp_path / 'colours.csv'}, classes: [red, blue]}}\n"
                      f"  - {{dataset: {tmp_path / 'colours.csv'}, classes: [green, pink]}}\n")
    out = tmp_path / "run"
    args = ["continual", "--stream", str(stream), "--method", "lae", "-o", "ema_decay=0.9", "-o", "freeze_epochs=1",
            "--model", str(folder), "-s", "epochs=2", "-s", "batch_size=8", "--output", str(out), "--no-progress"]
    assert main(args) == 0
    for name in ("result.json", "matrix.md", "heatmap.png", "curve.png", "progress.json"):
        assert (out / name).is_file(), name
    assert "forgetting" in (out / "matrix.md").read_text()
    assert main(args) == 2
    assert "already holds a continual run" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0  # nothing left to do: the saved result again
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"scenario: class\ntasks:\n  - {{dataset: {tmp_path / 'colours.csv'}, classes: [red, blue]}}\n")
    assert main(["continual", "--stream", str(bad), "--model", str(folder), "--output", str(tmp_path / "r2")]) == 2
    assert "needs at least two" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("method,options", [
    ("seq-lora", {}), ("joint", {}), ("lae", {"pet": "lora", "freeze_epochs": 1}), ("lae", {"pet": "adapter", "freeze_epochs": 1}),
    ("lae", {"pet": "prefix", "freeze_epochs": 1}), ("ovor", {"vor_epochs": 1}), ("l2m", {"pool_size": 3}),
    ("mora", {"experts_per_task": 2})])
def test_every_method_runs_on_decoder_backbones(family, method, options):
    """Roles and hooks on the architectures people use, not only BERT: GPT-2 fuses q, k and v in one
    Conv1D layer, Llama has grouped-query attention and rotary positions."""
    from petkit.continual import ContinualClassifier
    from petkit.testing import tiny_gpt2, tiny_llama
    stream = toy_stream("class", tasks=2, n_train=16, n_eval=8)
    lm = tiny_gpt2() if family == "gpt2" else tiny_llama()
    backbone = lm.transformer if family == "gpt2" else lm.model
    for p in backbone.parameters():
        p.requires_grad_(False)
    torch.manual_seed(0)
    model = ContinualClassifier(backbone, backbone.config.hidden_size, stream.num_classes, "last")
    result = run(method, stream, options, model=model)
    assert [len(r) for r in result.matrix] == [1, 2]
