"""Low-bit bases on disk and across tools: fingerprints of quantised copies, adapters moved between a
float base and its quantised copy, save_quantized/load_quantized, and Hugging Face PEFT interop.

Each test's docstring names the bug it is there to catch.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402

import petkit  # noqa: E402
from petkit.core.fingerprint import fingerprint, mismatch  # noqa: E402
from petkit.quant import load_quantized, quantized_layers, save_quantized  # noqa: E402
from quant_cases import (  # noqa: E402
    G,
    MAKERS,
    assert_same_state,
    dequantized_copy,
    logits,
    noisy,
    rel,
    state,
)
from petkit.testing import tiny_batch  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TARGETS = {"llama": ["q_proj", "v_proj", "down_proj"], "bert": ["query", "value", "output.dense"],
           "gpt2": ["c_attn", "mlp.c_proj", "c_fc"]}


def quantized(family, seed=0, bits=4, scheme=None):
    return petkit.quantize(MAKERS[family](seed=seed), bits=bits, group_size=G, scheme=scheme)


def lora(model, family):
    am = petkit.adapt(model, petkit.LoraConfig(r=4, alpha=8, targets=TARGETS[family]))
    noisy(am)
    return am


# -- 6a. fingerprints and adapters across float / quantised bases ------------------------------------

@pytest.mark.parametrize("family", MAKERS)
@pytest.mark.parametrize("bits,scheme", [(8, "int"), (4, "nf4"), (2, "int")])
def test_quantised_copy_keeps_the_fingerprint(family, bits, scheme):
    """Bug: a quantised copy fingerprinted as another architecture (codes' shapes hashed, Conv1D's
    (in, out) layout read as (out, in)), samples taken at other positions, or no rounding tolerance
    (then only an exact float base would match)."""
    f = fingerprint(MAKERS[family]())
    q = fingerprint(quantized(family, bits=bits, scheme=scheme))
    assert q["arch"] == f["arch"] and q["num_parameters"] == f["num_parameters"]
    assert mismatch(f, q) is None and mismatch(q, f) is None
    a, b = torch.tensor(f["sample"]), torch.tensor(q["sample"])
    tol = torch.tensor(q["tolerance"])
    assert bool(((a - b).abs() <= tol + 1e-6).all()), "a sample moved by more than its rounding bound"
    if bits == 8:  # at 8 bits the samples are the same weights read back, to ~1/255 of a group's range
        assert float((a - b).abs().max()) < 2e-3
    assert "tolerance" not in f  # float bases' fingerprints read as before


@pytest.mark.parametrize("family", MAKERS)
def test_fingerprint_tolerance_is_needed(family):
    """Bug: a mismatch check that ignores the low-bit base's tolerance (a quantised copy then
    matches only by luck); checked at 2 bits, where rounding moves weights by far more than the
    float comparison's own slack."""
    f, q = fingerprint(MAKERS[family]()), fingerprint(quantized(family, bits=2, scheme="int"))
    assert mismatch(f, q) is None
    assert mismatch(f, {k: v for k, v in q.items() if k != "tolerance"}) is not None


@pytest.mark.parametrize("family", MAKERS)
def test_adapters_move_between_float_and_quantised_bases(family, tmp_path):
    """Bug: BaseModelMismatch raised for a quantised copy of the adapter's base (either direction),
    or the adapter loaded onto the wrong layers (outputs not those of the adapter)."""
    batch = tiny_batch(MAKERS[family]())
    am = lora(MAKERS[family](), family)
    want = logits(am, batch)
    am.save(tmp_path / "float")
    loaded = petkit.load(quantized(family), tmp_path / "float")
    assert quantized_layers(loaded)
    assert rel(logits(loaded, batch), want) < 0.25

    aq = lora(quantized(family), family)
    want = logits(aq, batch)
    aq.save(tmp_path / "quant")
    back = petkit.load(quantized(family), tmp_path / "quant")
    assert torch.equal(logits(back, batch), want)  # same quantised base: exactly the same model
    onto_float = petkit.load(MAKERS[family](), tmp_path / "quant")
    assert rel(logits(onto_float, batch), want) < 0.25


@pytest.mark.parametrize("family", MAKERS)
@pytest.mark.parametrize("bits,scheme", [(4, "nf4"), (2, "int")])
def test_adapter_is_refused_on_a_different_base(family, bits, scheme, tmp_path):
    """Bug: a tolerance so loose (or samples so few) that any checkpoint of the architecture passes
    as the adapter's base, float or quantised, in either direction."""
    am = lora(MAKERS[family](), family)
    am.save(tmp_path / "float")
    other_q = quantized(family, seed=1, bits=bits, scheme=scheme)
    before = state(other_q)
    with pytest.raises(petkit.BaseModelMismatch):
        petkit.load(other_q, tmp_path / "float")
    assert_same_state(other_q, before)

    aq = lora(quantized(family, bits=bits, scheme=scheme), family)
    aq.save(tmp_path / "quant")
    with pytest.raises(petkit.BaseModelMismatch):
        petkit.load(MAKERS[family](seed=1), tmp_path / "quant")


# -- 6b. save_quantized / load_quantized -------------------------------------------------------------

@pytest.mark.parametrize("family,bits,scheme", [("llama", 4, "nf4"), ("bert", 3, "int"), ("gpt2", 2, "int")])
def test_save_and_load_quantized_are_bit_identical(family, bits, scheme, tmp_path):
    """Bug: a save or load that loses codes, statistics, biases, a format field (bits, scheme,
    group size) or the untouched float weights; or a rebuild from config.json that differs from the
    model passed in."""
    q = quantized(family, bits=bits, scheme=scheme)
    batch = tiny_batch(q)
    want = logits(q, batch)
    save_quantized(q, tmp_path)
    rebuilt = load_quantized(tmp_path)
    assert not rebuilt.training  # as from_pretrained returns a model: dropout off
    rebuilt.set_attn_implementation("eager")  # config.json does not record it (nor does save_pretrained's)
    into = MAKERS[family](seed=7)  # another float checkpoint: every weight must come from the file
    assert load_quantized(tmp_path, into) is into
    for model in (rebuilt, into):
        assert torch.equal(logits(model, batch), want)
        assert {p: m.format for p, m in quantized_layers(model).items()} == \
               {p: m.format for p, m in quantized_layers(q).items()}
        mine = model.state_dict()
        assert all(torch.equal(mine[k], v) for k, v in q.state_dict().items())
    assert fingerprint(rebuilt) == fingerprint(q) == fingerprint(into)


def test_tied_embeddings_are_stored_once_and_stay_tied(tmp_path):
    """Bug: Llama's tied lm_head / embed_tokens written twice (or not at all), or loaded as two
    separate tensors (the tie broken: training the embedding would no longer move the head)."""
    q = quantized("llama")
    save_quantized(q, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys
    spec = json.loads((tmp_path / "quantization.json").read_text())
    assert spec["tied"] == {"lm_head.weight": "model.embed_tokens.weight"}
    for model in (load_quantized(tmp_path), load_quantized(tmp_path, MAKERS["llama"]())):
        assert model.lm_head.weight is model.model.embed_tokens.weight
        assert torch.equal(model.lm_head.weight, q.lm_head.weight)


def test_save_an_adapted_quantised_model_saves_the_base_only(tmp_path):
    """Bug: adapter tensors or wrapper names (base_layer) written into the base model file."""
    aq = lora(quantized("bert"), "bert")
    batch = tiny_batch(aq)
    with aq.disabled():
        want = logits(aq, batch)
    save_quantized(aq, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert not [k for k in keys if "lora" in k or "base_layer" in k or "deltas" in k]
    assert torch.equal(logits(load_quantized(tmp_path, MAKERS["bert"]()), batch), want)


def test_save_refuses_a_float_model(tmp_path):
    """Bug: a float model written as a 'quantised' one (then loaded as a float model with no low-bit layer)."""
    with pytest.raises(petkit.AdapterFileError, match="no quantised layers"):
        save_quantized(MAKERS["bert"](), tmp_path)


def _hidden48_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=100, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=True, attn_implementation="eager")
    return LlamaForCausalLM(cfg).eval()


def _corrupt_json(folder):
    (folder / "quantization.json").write_text('{"format": "petkit-quantized", "version": 1, "layers": {')


def _bad_bits(folder):
    spec = json.loads((folder / "quantization.json").read_text())
    for entry in spec["layers"].values():
        entry["bits"] = 4.0
    (folder / "quantization.json").write_text(json.dumps(spec))


def _wrong_group(folder):  # a format that parses but does not fit the stored codes/statistics
    spec = json.loads((folder / "quantization.json").read_text())
    next(iter(spec["layers"].values()))["group_size"] = 8
    (folder / "quantization.json").write_text(json.dumps(spec))


def _truncate(folder):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])


def _not_ours(folder):
    spec = json.loads((folder / "quantization.json").read_text())
    spec["format"] = "something-else"
    (folder / "quantization.json").write_text(json.dumps(spec))


@pytest.mark.parametrize("breakage,target", [
    (_corrupt_json, "llama"), (_bad_bits, "llama"), (_wrong_group, "llama"), (_truncate, "llama"),
    (_not_ours, "llama"), (None, "hidden48"), (None, "bert"),
])
def test_load_quantized_errors_leave_the_model_unchanged(breakage, target, tmp_path):
    """Bug: a corrupt description, a truncated weights file, a file of another architecture or
    another hidden size failing with a raw exception (JSONDecodeError, RuntimeError from
    load_state_dict, TypeError) or — worse — after some layers of the passed model were replaced."""
    save_quantized(quantized("llama"), tmp_path)
    if breakage:
        breakage(tmp_path)
    model = _hidden48_llama() if target == "hidden48" else MAKERS[target]()
    before = state(model)
    with pytest.raises(petkit.AdapterFileError):
        load_quantized(tmp_path, model)
    assert_same_state(model, before)
    assert not quantized_layers(model)


def test_load_quantized_without_config_json_needs_the_model(tmp_path):
    """Bug: a missing config.json surfacing as an OSError from transformers instead of saying to pass
    the float model."""
    q = quantized("llama")
    save_quantized(q, tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(petkit.AdapterFileError, match="config.json"):
        load_quantized(tmp_path)
    batch = tiny_batch(q)
    assert torch.equal(logits(load_quantized(tmp_path, MAKERS["llama"]()), batch), logits(q, batch))


# -- 7. PEFT interop ---------------------------------------------------------------------------------

PEFT_TASK = {"llama": "CAUSAL_LM", "bert": "SEQ_CLS", "gpt2": "CAUSAL_LM"}


@pytest.mark.parametrize("family", MAKERS)
def test_lora_on_a_quantised_base_loads_in_peft(family, tmp_path):
    """Bug: a PEFT export of an adapter on low-bit layers with wrong keys (base_layer / module paths),
    a wrong fan_in_fan_out for GPT-2's Conv1D, or scaling lost; PEFT on the float model holding the
    dequantised weights must reproduce petkit's outputs."""
    peft = pytest.importorskip("peft")
    q = quantized(family)
    ref = dequantized_copy(MAKERS[family], q)
    aq = lora(q, family)
    batch = tiny_batch(aq)
    batch.pop("labels")
    want = logits(aq, batch)
    with aq.disabled():
        assert rel(logits(aq, batch), want) > 1e-3
    aq.save(tmp_path, format="peft")
    pm = peft.PeftModel.from_pretrained(ref, tmp_path).eval()
    torch.testing.assert_close(logits(pm, batch), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", MAKERS)
def test_peft_lora_loads_onto_a_quantised_base(family, tmp_path):
    """Bug: a PEFT file that does not load onto low-bit layers (targets not matched, since they are
    no nn.Linear / Conv1D any more, or Conv1D's fan_in_fan_out applied to a PackedLinear's (out, in)
    weight)."""
    peft = pytest.importorskip("peft")
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[family], task_type=PEFT_TASK[family])
    pm = peft.get_peft_model(MAKERS[family](), cfg).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    pm.save_pretrained(tmp_path)
    q = quantized(family)
    ref = peft.PeftModel.from_pretrained(dequantized_copy(MAKERS[family], q), tmp_path).eval()
    am = petkit.load(q, tmp_path)
    batch = tiny_batch(am)
    batch.pop("labels")
    want = logits(ref, batch)
    torch.testing.assert_close(logits(am, batch), want, rtol=1e-4, atol=1e-5)
    with am.disabled():
        assert rel(logits(am, batch), want) > 1e-3
