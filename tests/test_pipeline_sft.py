"""`petkit train --task sft`: your own split files, the answer-only loss, generated answers scored
before and after, packing, and clear errors for data that is not what was asked for (tiny Llama)."""

from __future__ import annotations

import json

import pytest

from petkit.cli.main import main
from petkit.pipeline import RunSpec, prepare
from petkit.testing import tiny_chat_tokenizer, tiny_llama

QA = [{"prompt": f"what is {a} plus {b}?", "completion": str(a + b)} for a in range(6) for b in range(5)]


@pytest.fixture
def folder(tmp_path):
    tiny_llama(seed=0).save_pretrained(tmp_path / "lm")
    tiny_chat_tokenizer().save_pretrained(tmp_path / "lm")
    return tmp_path / "lm"


@pytest.fixture
def files(tmp_path):
    paths = {}
    for split, rows in (("train", QA[:20]), ("dev", QA[20:25]), ("test", QA[25:])):
        paths[split] = tmp_path / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def train_args(folder, files, out, *extra):
    return ["train", "--model", str(folder), "--train-file", str(files["train"]), "--dev-file", str(files["dev"]),
            "--test-file", str(files["test"]), "--task", "sft", "--method", "lora", "-m", "targets=all-linear",
            "-t", "max_steps=3", "-t", "batch_size=4", "-t", "lr=1e-2", "--answers", "3", "--max-length", "64",
            "--output", str(out), "--no-progress", *extra]


def test_sft_from_your_own_split_files(folder, files, tmp_path, capsys):
    assert main(train_args(folder, files, tmp_path / "run")) == 0
    printed = capsys.readouterr().out
    assert "20 of 20 examples kept" in printed and "tokens scored" in printed
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    for when in ("test_before", "test_after"):
        assert {"loss", "perplexity", "exact_match", "rouge_l"} <= set(result[when])
    assert result["test_after"]["loss"] < result["test_before"]["loss"]
    assert (tmp_path / "run" / "adapter").is_dir()


def test_the_splits_are_the_files_and_the_loss_is_on_the_answers(folder, files):
    prep = prepare(RunSpec(model=str(folder), data={k: str(v) for k, v in files.items()}, task="sft", max_length=64))
    assert (len(prep.train), len(prep.dev), len(prep.test)) == (20, 5, 5) and prep.task == "causal_lm"
    assert prep.test_records == QA[25:]
    tok = prep.tokenizer
    row = prep.train[0]
    scored = [t for t, label in zip(row["input_ids"], row["labels"]) if label != -100]
    assert tok.decode(scored) == QA[0]["completion"] + "<|im_end|>"


def test_packing_trains_on_padding_free_rows(folder, files, tmp_path):
    prep = prepare(RunSpec(model=str(folder), data={k: str(v) for k, v in files.items()}, task="sft", max_length=100,
                           packing=True))
    assert len(prep.train) < 20 and "attention_mask" not in prep.train.collate([prep.train[0]])
    assert len(prep.dev) == 5  # evaluation splits stay one example per row
    assert main(train_args(folder, files, tmp_path / "run", "--packing", "--max-length", "100")) == 0


def test_data_that_is_not_what_was_asked_for(folder, files, capsys):
    def error(*argv):
        assert main(list(argv)) == 2
        return capsys.readouterr().err

    assert "not both" in error("train", "--model", str(folder), "--data", "x.jsonl", "--train-file", str(files["train"]))
    msg = error("train", "--model", str(folder), "--train-file", str(files["train"]), "--task", "classification")
    assert "'classification' was asked for" in msg and "holds sft data" in msg
    assert "need --train-file" in error("train", "--model", str(folder), "--dev-file", str(files["dev"]))
    assert "apply to SFT data" in error("train", "--model", "minilm", "--data", "bbc", "--packing")
    with pytest.raises(Exception, match="answers"):
        RunSpec(answers=-1)
