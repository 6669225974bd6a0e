"""petkit serve's parts without HTTP: the shared KV cache, sampling and stop strings, continuous batching
against one-at-a-time generation, the adapter pool (LRU, budget, unload while in use) and path checks."""

from __future__ import annotations

import os

import pytest
import torch

import petkit
from petkit.core.errors import AdapterFileError, ConfigError
from petkit.serve.adapters import AdapterPool, Forbidden, UnknownAdapter, resolve_under
from petkit.serve.decode import Decoder, Sequence
from petkit.serve.sampling import find_stop, next_tokens, safe_prefix
from petkit.testing import tiny_chat_tokenizer, tiny_llama
from serve_cases import lora_llama, reference


def seq(tok, text, adapter, n, events=None, **kw) -> Sequence:
    events = [] if events is None else events
    return Sequence(prompt=tok(text)["input_ids"], adapter=adapter, max_tokens=n,
                    emit=lambda k, p: events.append((k, p)), **kw)


# -- continuous batching -------------------------------------------------------------------------
def test_sequences_joining_and_leaving_the_batch_decode_what_each_would_alone():
    """Bugs caught: a wrong position id for left-padded rows, a joined cache not padded on the left, rows
    of the cache kept in the wrong order after one leaves, an adapter routed to the wrong row."""
    tok, am = tiny_chat_tokenizer(), lora_llama()
    dec = Decoder(am, tok, eos_ids=set())
    plan = [("hello there", "a", 12), ("a much longer prompt than that", None, 5), ("hi", "b", 9),
            ("what is up with this", "a", 7)]
    seqs = [seq(tok, *p) for p in plan]
    dec.admit(seqs[:2])
    for _ in range(3):
        dec.step()
    dec.admit([seqs[2]])  # joins a running batch whose cache is longer
    for _ in range(3):
        dec.step()  # the second sequence (5 tokens) has left by now
    dec.admit([seqs[3]])
    while dec.running:
        dec.step()
    for s, (text, adapter, n) in zip(seqs, plan):
        assert s.generated == reference(am, tok(text)["input_ids"], adapter, n), (text, adapter)
        assert s.finish_reason == "length"
    assert dec.kv is None  # everything left: no cache kept


def test_the_cache_never_keeps_columns_no_row_uses():
    tok, am = tiny_chat_tokenizer(), lora_llama()
    dec = Decoder(am, tok, eos_ids=set())
    long, short = seq(tok, "a much longer prompt than that", None, 2), seq(tok, "hi", "a", 6)
    dec.admit([long, short])
    dec.step()
    dec.step()  # the long one is done and leaves here
    assert dec.kv.columns == len(short.prompt) + len(short.generated) - 1  # the newest token is not cached yet
    assert dec.kv.cache.layers[0].keys.shape[2] == dec.kv.columns


def test_end_of_sequence_and_stop_strings_end_a_sequence_and_are_not_sent():
    tok, am = tiny_chat_tokenizer(), lora_llama()
    free = reference(am, tok("hello")["input_ids"], "a", 10)
    text = tok.decode(free, skip_special_tokens=True)
    assert len(text) >= 6 and all(t > 3 for t in free)  # the seeded model writes plain characters
    j = next(j for j in range(1, 10) if free[j] not in free[:j])  # a token seen first at position j
    events, stop_events = [], []
    s1 = seq(tok, "hello", "a", 10, events)
    dec = Decoder(am, tok, eos_ids={free[j]})  # ... counts as end-of-sequence
    dec.admit([s1])
    while dec.running:
        dec.step()
    assert s1.finish_reason == "stop" and s1.generated == free[:j + 1]
    assert "".join(p for k, p in events if k == "text") == tok.decode(free[:j])

    stop = text[2:4]
    s2 = seq(tok, "hello", "a", 10, stop_events, stops=[stop])
    dec = Decoder(am, tok, eos_ids=set())
    dec.admit([s2])
    while dec.running:
        dec.step()
    sent = "".join(p for k, p in stop_events if k == "text")
    assert s2.finish_reason == "stop" and sent == text[:text.index(stop)] and stop_events[-1] == ("done", "stop")


def test_ignore_eos_decodes_max_tokens():
    tok, am = tiny_chat_tokenizer(), lora_llama()
    free = reference(am, tok("hello")["input_ids"], None, 6)
    dec = Decoder(am, tok, eos_ids={free[1]})
    s = seq(tok, "hello", None, 6, ignore_eos=True)
    dec.admit([s])
    while dec.running:
        dec.step()
    assert s.generated == free and s.finish_reason == "length"


def test_a_cancelled_sequence_leaves_and_the_others_are_unchanged():
    tok, am = tiny_chat_tokenizer(), lora_llama()
    dec = Decoder(am, tok, eos_ids=set())
    keep, gone = seq(tok, "hello there", "b", 8), seq(tok, "bye", "a", 8)
    dec.admit([gone, keep])
    dec.step()
    gone.cancelled = True
    dec.step()
    assert dec.running == [keep] and dec.kv.rows == 1 and gone.finish_reason == "cancelled"
    while dec.running:
        dec.step()
    assert keep.generated == reference(am, keep.prompt, "b", 8)


def test_seeded_sampling_does_not_depend_on_the_batch():
    tok, am = tiny_chat_tokenizer(), lora_llama()

    def run(batch_with_others: bool) -> list[int]:
        dec = Decoder(am, tok, eos_ids=set())
        mine = seq(tok, "hello", "a", 10, temperature=1.0, top_p=0.9, seed=7)
        others = [seq(tok, "other text", "b", 10, temperature=1.0)] if batch_with_others else []
        dec.admit([mine, *others])
        while dec.running:
            dec.step()
        return mine.generated

    assert run(False) == run(True)


# -- sampling --------------------------------------------------------------------------------------
def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    draws = {next_tokens(logits, [1.0], [0.75], [torch.Generator().manual_seed(i)])[0] for i in range(200)}
    assert draws == {0, 1}  # 0.5 < 0.75, 0.5 + 0.3 >= 0.75: tokens 2 and 3 are out
    draws = {next_tokens(logits, [1.0], [0.4], [torch.Generator().manual_seed(i)])[0] for i in range(50)}
    assert draws == {0}
    greedy = next_tokens(torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]]), [0.0, 0.0], [1.0, 1.0], [None, None])
    assert greedy == [1, 0]


def test_text_that_could_still_become_a_stop_string_is_held_back():
    assert safe_prefix("hello wor", ["world"]) == len("hello ")
    assert safe_prefix("hello", ["xyz"]) == 5
    assert safe_prefix("abc\ufffd", []) == 3  # an unfinished multi-byte character
    assert find_stop("a. b. c", [". c", "b."]) == 3


# -- adapter pool ------------------------------------------------------------------------------------
@pytest.fixture
def adapter_dir(tmp_path):
    for name in ["a", "b", "c"]:  # c in PEFT's format (saved as "default", so at the folder's top)
        am = petkit.adapt(tiny_llama(), petkit.LoraConfig(r=4, targets="all-linear"), "default" if name == "c" else name)
        am.save(tmp_path / name, format="peft" if name == "c" else "petkit")
    return tmp_path


def test_least_recently_used_idle_adapters_are_evicted_and_reloaded_on_demand(adapter_dir):
    pool = AdapterPool(petkit.AdaptedModel(tiny_llama()), "base", max_resident=2)
    for name in "abc":
        pool.register(name, adapter_dir / name)
    assert list(pool.resident) == ["b", "c"] and sorted(pool.known) == ["a", "b", "c"]
    assert pool.reserve("a") == "a"
    pool.ensure_resident("a")  # evicted, so loaded again; b is now the least recently used
    assert list(pool.resident) == ["c", "a"] and pool.model.adapters == ["c", "a"]
    assert pool.reserve("c") == "c"
    pool.ensure_resident("c")
    pool.release("a")
    pool.release("c")
    assert pool.loads == 4 and pool.evictions == 2


def test_adapters_in_use_are_not_evicted_and_unload_waits_for_them(adapter_dir):
    pool = AdapterPool(petkit.AdaptedModel(tiny_llama()), "base", max_resident=1)
    pool.register("a", adapter_dir / "a")
    pool.reserve("a")
    pool.ensure_resident("a")
    pool.register("b", adapter_dir / "b")  # over budget, but a is in use
    assert set(pool.resident) == {"a", "b"}
    pool.unload("a")
    with pytest.raises(UnknownAdapter):
        pool.reserve("a")  # no new requests for it...
    assert "a" in pool.model.adapters  # ...but the running one keeps its weights
    with pytest.raises(ConfigError, match="still use it"):
        pool.register("a", adapter_dir / "a")
    pool.release("a")
    assert "a" not in pool.model.adapters and "a" not in pool.resident


def test_the_byte_budget_evicts(adapter_dir):
    pool = AdapterPool(petkit.AdaptedModel(tiny_llama()), "base", max_resident=10)
    pool.register("a", adapter_dir / "a")
    one = pool.resident_bytes()
    pool.max_bytes = int(one * 1.5)
    pool.register("b", adapter_dir / "b")
    assert list(pool.resident) == ["b"]


def test_an_adapter_for_another_base_is_refused_and_changes_nothing(tmp_path, adapter_dir):
    other = petkit.adapt(tiny_llama(seed=5), petkit.LoraConfig(r=4, targets="all-linear"), "x")
    other.save(tmp_path / "other")
    pool = AdapterPool(petkit.AdaptedModel(tiny_llama()), "base")
    pool.register("a", adapter_dir / "a")
    with pytest.raises(AdapterFileError, match="base weights differ"):
        pool.register("x", tmp_path / "other")
    assert pool.model.adapters == ["a"] and sorted(pool.known) == ["a"]


def test_whole_model_adapters_are_refused_at_load(tmp_path):
    am = petkit.adapt(tiny_llama(), petkit.PromptTuningConfig(num_virtual_tokens=2), "p")
    am.save(tmp_path / "p")
    pool = AdapterPool(petkit.AdaptedModel(tiny_llama()), "base")
    with pytest.raises(AdapterFileError, match="whole model"):
        pool.register("p", tmp_path / "p")
    assert pool.model.adapters == [] and not pool.known


def test_unknown_names_list_what_is_served(adapter_dir):
    pool = AdapterPool(petkit.AdaptedModel(tiny_llama()), "base")
    pool.register("a", adapter_dir / "a")
    assert pool.reserve("base") is None
    with pytest.raises(UnknownAdapter, match="Served: base, a"):
        pool.reserve("nope")


def test_only_safetensors_folders_load(tmp_path, adapter_dir):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "adapter_config.json").write_text((adapter_dir / "c" / "adapter_config.json").read_text())
    (folder / "adapter_model.bin").write_bytes(b"not read")
    pool = AdapterPool(petkit.AdaptedModel(tiny_llama()), "base")
    with pytest.raises(AdapterFileError, match="safetensors only"):
        pool.register("p", folder)


# -- paths -----------------------------------------------------------------------------------------------
def test_adapter_paths_stay_inside_the_adapter_directory(tmp_path, adapter_dir):
    root = adapter_dir
    assert resolve_under(root, "a") == (root / "a").resolve()
    assert resolve_under(root, str(root / "b")) == (root / "b").resolve()
    outside = tmp_path.parent / "elsewhere"
    outside.mkdir(exist_ok=True)
    os.symlink(root / "a", root / "link")
    for bad in ["../a", "a/../b", str(outside), "link", "/etc"]:
        with pytest.raises(Forbidden):
            resolve_under(root, bad)
    with pytest.raises(UnknownAdapter):
        resolve_under(root, "missing")


def test_a_missing_serve_extra_is_one_clear_error(monkeypatch):
    import importlib.util

    from petkit.core.errors import MissingExtra
    from petkit.serve.extra import require_serve_extra

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    with pytest.raises(MissingExtra, match=r"uvicorn.*pip install 'petkit\[serve\]'"):
        require_serve_extra()
