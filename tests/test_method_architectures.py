"""Every registered method on every architecture of petkit.testing.ARCHITECTURES (each with its usual
task): it passes a compact set of checks, or petkit.adapt refuses it with a message that says what is
unsupported and what to do. REFUSED below is the exact list of refusals, so a new crash fails here,
and so does a refusal that goes away (update the table).

Compact checks (the generic matrix, test_engine_matrix.py, goes deeper on five families): adapt, a
forward of the base's output shape, one training step in which a gradient reaches the method's own
parameters (not only the task head it may train) and the outputs move while the base stays as it
was, and save -> load onto a fresh base giving the same outputs.

Counts (29 cases x 32 architectures, these checks): before this matrix's fixes 674 passed, 239 were
refused and 15 crashed (shape errors inside DeBERTa's and ALBERT's forwards, a loss with no graph
when prefixes never reached BLOOM's, MPT's or GPT-Neo's attention, no gradient reaching them in
DeBERTa, BART's classifier refusing inputs_embeds, ELECTRA's LST side network); now 782 pass, 146
are refused (the table) and none crash.
"""

from __future__ import annotations

import copy
import functools
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import petkit  # noqa: E402
from petkit.core.head import HeadDelta  # noqa: E402
from petkit.testing import (  # noqa: E402
    ARCHITECTURE_TASKS,
    DECODER_ARCHITECTURES,
    ENCODER_ARCHITECTURES,
    tiny_batch,
    tiny_model,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

CASES = {  # one small config per method (defaults where the method has them), two where variants differ
    "apet": lambda: petkit.ApetConfig(seed=1),
    "apt": lambda: petkit.AptConfig(num_virtual_tokens=2, key_rank=2),
    "bitfit": lambda: petkit.BitFitConfig(),
    "adapter-houlsby": lambda: petkit.BottleneckConfig(bottleneck=4),
    "adapter-parallel": lambda: petkit.BottleneckConfig(variant="parallel", bottleneck=4),
    "deep_prompt": lambda: petkit.DeepPromptConfig(num_virtual_tokens=2),
    "dora": lambda: petkit.DoraConfig(r=2),
    "dsee": lambda: petkit.DseeConfig(r=2, nnz=4),
    "dvpt": lambda: petkit.DvptConfig(bottleneck=4, num_queries=2, heads=2),
    "full": lambda: petkit.FullConfig(),
    "hst": lambda: petkit.HstConfig(dims=[8, 16], heads=[2, 2]),
    "ia3": lambda: petkit.IA3Config(),
    "idpt": lambda: petkit.IdptConfig(num_virtual_tokens=2, generator_hidden=8, neighbors=3, head_hidden=8),
    "layernorm": lambda: petkit.LayerNormConfig(),
    "lora": lambda: petkit.LoraConfig(r=2),
    "lowbit-adapter": lambda: petkit.LowbitAdapterConfig(bits=1, r=2),
    "lowbit-lora": lambda: petkit.LowbitLoraConfig(bits=1, r=2),
    "lst": lambda: petkit.LstConfig(reduction=2),
    "lst-random": lambda: petkit.LstConfig(reduction=2, init="random"),
    "miss": lambda: petkit.MissConfig(r=2),
    "mora": lambda: petkit.MoraConfig(r=2),
    "prefix": lambda: petkit.PrefixTuningConfig(num_virtual_tokens=2),
    "probe": lambda: petkit.ProbeConfig(),
    "prompt": lambda: petkit.PromptTuningConfig(num_virtual_tokens=2),
    "sara": lambda: petkit.SaraConfig(rank_min_dim=0),
    "sherl": lambda: petkit.SherlConfig(),
    "svfit": lambda: petkit.SVFitConfig(r=2),
    "telly": lambda: petkit.TellyConfig(k=1),
    "vlpet": lambda: petkit.VLPetConfig(bottleneck=4, heads=2, gate_bottleneck=4),
}

CAUSAL = DECODER_ARCHITECTURES
TEXT_ONE_STACK = ENCODER_ARCHITECTURES + DECODER_ARCHITECTURES
NO_BIAS = ("llama", "mistral", "qwen3", "gemma", "gemma2", "olmo2", "mixtral", "phi3", "mpt", "t5")
FUSED_QKV = ("gpt2", "gpt_bigcode", "codegen", "gpt_neox", "bloom", "falcon", "mpt", "phi3")
OWN_ATTENTION = ("deberta-v2", "gpt_neo", "bloom", "mpt")  # no transformers attention interface to hook
TWO_STACKS = ("t5", "bart")
ONE_STACK = "needs one stack of (encoder|transformer)? ?layers"
SHARED = "shares its layers .*: use LoRA, IA3, prompt or prefix tuning"
CAUSAL_READ = "reads the whole sequence at once, which in a causal model .* use it on encoders"

# (case, architectures) -> what the refusal must say. Why, in short:
REFUSED = {
    # BitFit trains existing biases by default; these models have none
    ("bitfit", NO_BIAS): r"none of the default targets \['all-bias'\] is in .*name the modules to adapt",
    # Mixtral's experts are no Linear roles: nothing plays mlp.out / mlp.in
    ("adapter-houlsby", ("mixtral",)): r"has no role 'mlp.out'.*target one of those, or modules by name",
    ("adapter-parallel", ("mixtral",)): r"has no role 'mlp.out'.*target one of those, or modules by name",
    ("vlpet", ("mixtral",)): r"has no role 'mlp.out'.*target one of those, or modules by name",
    ("lowbit-adapter", ("mixtral",)): r"none of the default targets \['mlp.out'\] is in MixtralForCausalLM",
    # prefix keys/values enter through transformers' attention interface, which these models bypass
    ("prefix", OWN_ATTENTION): r"attention interface, which \w+ does not use.*use prompt tuning, LoRA or IA3",
    ("deep_prompt", OWN_ATTENTION): r"attention interface, which \w+ does not use.*use prompt tuning, LoRA or IA3",
    # dynamic prompts read the whole sequence: encoders only, one stack, layers of their own
    ("dvpt", CAUSAL): CAUSAL_READ,
    ("dvpt", TWO_STACKS): ONE_STACK,
    ("idpt", CAUSAL): CAUSAL_READ,
    ("idpt", TWO_STACKS): ONE_STACK,
    ("idpt", ("albert",)): SHARED,
    ("sherl", TWO_STACKS): ONE_STACK,
    ("sherl", ("albert",)): SHARED,
    # HST is ViT's side network
    ("hst", TEXT_ONE_STACK + TWO_STACKS): "HST is a side network for ViT-style image classifiers.*use LST or SHERL",
    # LST ladders one stack of text layers; its l1 init slices separate q, k, v and a Linear FFN
    ("lst", TWO_STACKS): "LST needs one stack of layers to ladder.*use it on encoders or decoder-only models",
    ("lst-random", TWO_STACKS): "LST needs one stack of layers to ladder.*use it on encoders or decoder-only models",
    ("lst", ("albert",)): SHARED,
    ("lst-random", ("albert",)): SHARED,
    ("lst", ("vit",)): "is a vision model: use HST",
    ("lst-random", ("vit",)): "is a vision model: use HST",
    ("lst", FUSED_QKV + ("mixtral",)): r"l1 init prunes separate q, k, v and Linear FFN projections.*use init='random'",
    # a probe needs a task head; causal LMs and T5 have none
    ("probe", CAUSAL + ("t5",)): "train_head=True, but the model has no task head",
    # BART's classifier finds its EOS tokens in input_ids and takes no inputs_embeds
    ("prompt", ("bart",)): "feeds the model inputs_embeds, which BartForSequenceClassification does not take",
}


def expected_refusal(case: str, arch: str) -> str | None:
    found = [message for (c, archs), message in REFUSED.items() if c == case and arch in archs]
    assert len(found) <= 1, (case, arch)
    return found[0] if found else None


@functools.lru_cache(maxsize=None)
def _cached(arch: str, task: str):
    return tiny_model(arch, task)


def _outputs(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def test_every_registered_method_has_a_case():
    assert {m.name for m in petkit.all_methods()} <= {make().method for make in CASES.values()}


def test_every_refusal_names_a_case_and_architectures_of_the_matrix():
    archs = {a for a, _ in ARCHITECTURE_TASKS}
    for case, names in REFUSED:
        assert case in CASES and set(names) <= archs, (case, names)


GRID = [(case, arch, task) for case in CASES for arch, task in ARCHITECTURE_TASKS]


@pytest.mark.parametrize("case,arch,task", GRID, ids=[f"{c}-{a}" for c, a, _ in GRID])
def test_method_on_architecture(case, arch, task, tmp_path):
    def build():
        return copy.deepcopy(_cached(arch, task))

    base, batch = build(), tiny_batch(_cached(arch, task), seed=1)
    y_base = _outputs(base, batch)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    refusal = expected_refusal(case, arch)
    if refusal is not None:
        with pytest.raises(petkit.PetkitError) as caught:
            petkit.adapt(base, CASES[case]())
        assert re.search(refusal, str(caught.value)), str(caught.value)
        return

    am = petkit.adapt(base, CASES[case]())
    y0 = _outputs(am, batch)
    assert y0.shape == y_base.shape and torch.isfinite(y0).all()

    # one step: a gradient reaches the method's own parameters (a probe's are the head), the base stays
    am.train()
    params = am.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=1e-2)
    am.hook_optimizer(opt)
    torch.manual_seed(0)
    loss = am(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    head = {id(p) for d in am.deltas("default") if isinstance(d, HeadDelta) for p in d.parameters()}
    own = [p for p in params if id(p) not in head] or params
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in own), "no gradient reaches the method"
    opt.step()
    am.eval()
    y1 = _outputs(am, batch)
    assert not torch.equal(y1, y0)
    trained = {id(p) for p in params}
    for name, p in am.base.named_parameters():
        if id(p) not in trained and ".deltas." not in name:
            assert torch.equal(p, before[name.replace(".base_layer.", ".")]), name

    am.save(tmp_path / "a")
    torch.testing.assert_close(_outputs(petkit.load(build(), tmp_path / "a"), batch), y1, atol=1e-6, rtol=1e-6)
