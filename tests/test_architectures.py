"""Every architecture, not twelve: roles, defaults, the generic method checks and the PEFT round trip
(both directions) on tiny random models of 32 transformers architectures.

Which families must work comes from PEFT's own default-target tables (peft/utils/constants.py):
petkit's roles and LoRA defaults are checked against them, and against roles derived from structure.
"""

from __future__ import annotations

import copy
import functools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import petkit  # noqa: E402
from method_cases._matrix import check_method, outputs  # noqa: E402
from petkit.core.role_structure import derive_parts  # noqa: E402
from petkit.core.role_tables import FAMILIES, LORA_DEFAULT_EXCEPTIONS  # noqa: E402
from petkit.core.roles import roles_of  # noqa: E402
from petkit.core.targeting import resolve_targets, task_head_names  # noqa: E402
from petkit.testing import ARCHITECTURE_TASKS, tiny_batch, tiny_model  # noqa: E402

peft = pytest.importorskip("peft")
from peft.utils import constants as peft_tables  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

VARIANTS = ARCHITECTURE_TASKS  # every architecture once; below, decoders with a classification head too
CLASSIFYING_DECODERS = [(a, "classification") for a in ("gpt2", "gpt_neox", "bloom", "falcon", "mpt", "phi3", "llama", "opt")]
ALL_VARIANTS = VARIANTS + CLASSIFYING_DECODERS
# PEFT-table model types with no class in transformers (remote code) or whose class is multimodal: no tiny model here
NOT_BUILT = {"blip-2", "llama4", "gemma4", "gemma3_text", "mt5", "chatglm", "btlm", "RefinedWeb", "RefinedWebModel",
             "layoutlm", "deberta", "nemotron_h", "rwkv", "rwkv7"}

METHODS = {
    "lora-all-linear": lambda: petkit.LoraConfig(r=2, alpha=4, targets="all-linear"),
    "lora-default": lambda: petkit.LoraConfig(r=2, alpha=4),
    "dora": lambda: petkit.DoraConfig(r=2, alpha=4, targets=["attn.qkv", "attn.out"]),
    "ia3-default": lambda: petkit.IA3Config(),
}
PEFT_TASKS = {"classification": "SEQ_CLS", "image-classification": None, "causal-lm": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}


@functools.lru_cache(maxsize=None)
def _cached(arch: str, task: str):
    return tiny_model(arch, task)


def build(arch: str, task: str):
    return copy.deepcopy(_cached(arch, task))


def ids(variants):
    return [f"{a}-{t}" for a, t in variants]


def _peft_model_types() -> set[str]:
    return (set(peft_tables.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING)
            | set(peft_tables.TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING)
            | set(peft_tables.TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING))


# -- which families: PEFT's tables --------------------------------------------------------------------

def test_every_family_of_peft_tables_has_roles_or_is_derived():
    # A PEFT family without a petkit role table must be one whose roles come from structure.
    missing = _peft_model_types() - set(FAMILIES)
    assert missing <= {"blip-2", "llama4", "gemma4", "btlm", "rwkv7"}, missing
    assert set(LORA_DEFAULT_EXCEPTIONS) <= set(peft_tables.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING)


def test_the_matrix_covers_twenty_architectures_with_fused_qkv_and_linear_heads():
    archs = {a for a, _ in ALL_VARIANTS}
    assert len(archs) >= 20
    assert {"phi3", "gpt_neox", "falcon", "bloom", "roberta", "distilbert", "electra", "bart"} <= archs
    assert _peft_model_types() - NOT_BUILT <= archs


# -- roles ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,task", VARIANTS, ids=ids(VARIANTS))
def test_roles_from_the_table_match_roles_derived_from_structure(arch, task):
    model = build(arch, task)
    roles = roles_of(model)
    assert roles.source == ("table" if arch in FAMILIES else "structure")
    assert {"attn.qkv", "attn.kv", "attn.out", "mlp.in"} <= set(roles.roles()) or arch == "mixtral"
    derived = derive_parts(model)
    for part, paths in roles.parts.items():
        if part not in ("norm", "gate", "up", "in"):  # a gated MLP's names may not say which is the gate
            assert set(paths) == set(derived[part]), (part, sorted(paths), sorted(derived[part]))


@pytest.mark.parametrize("arch,task", VARIANTS, ids=ids(VARIANTS))
def test_default_targets_resolve_and_summary_says_where_roles_came_from(arch, task):
    model = build(arch, task)
    am = petkit.adapt(model, petkit.IA3Config())
    am.add(petkit.LoraConfig(r=2), "lora")
    kv = resolve_targets(model, ["attn.kv"])
    assert kv and all(p in am.state.modules["default"] for p in kv)
    how = "from the table" if arch in FAMILIES else "derived from structure"
    assert f"roles of {model.config.model_type}: {how}" in am.summary(print_it=False)


@pytest.mark.parametrize("arch,task", VARIANTS, ids=ids(VARIANTS))
def test_lora_defaults_are_pefts(arch, task):
    # PEFT's choice for the model type; for types its table lacks, the same rule (q and v, or fused qkv).
    model = build(arch, task)
    am = petkit.adapt(model, petkit.LoraConfig(r=2), copy=True)
    ours = {p for p in am.state.modules["default"] if p not in task_head_names(model)}
    if model.config.model_type not in peft_tables.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        with pytest.raises(ValueError, match="target_modules"):
            peft.get_peft_model(model, peft.LoraConfig(r=2, task_type=PEFT_TASKS[task]))
        fused = bool(roles_of(model).parts.get("qkv"))
        assert ours == set(resolve_targets(model, ["attn.qkv"] if fused else ["attn.q", "attn.v"]))
        return
    try:
        pm = peft.get_peft_model(model, peft.LoraConfig(r=2, task_type=PEFT_TASKS[task]))
    except peft.utils.error.NoMatchingPeftModuleError:  # PEFT 0.21 on Mixtral: its table's entry, matched as PEFT does
        keys = peft_tables.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model.config.model_type]
        assert ours == {n for n, _ in model.named_modules() if any(n == k or n.endswith("." + k) for k in keys)}
        return
    theirs = {n.removeprefix("base_model.model.") for n, m in pm.named_modules() if hasattr(m, "lora_A")}
    assert ours == theirs


# -- the generic method checks ------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch,task", VARIANTS, ids=ids(VARIANTS))
def test_generic_checks(arch, task, method, tmp_path):
    model = build(arch, task)
    lr = 0.1 if method.startswith("ia3") else 1e-2  # a tiny random LM's logits barely move with its scales
    check_method(METHODS[method](), lambda: build(arch, task), tiny_batch(model, seed=1), tmp_path, lr=lr)


# -- the task head: trained whole, never targeted -----------------------------------------------------

HEADS = {"roberta": ["classifier"], "electra": ["classifier"], "distilbert": ["pre_classifier", "classifier"],
         "deberta-v2": ["pooler", "classifier"], "bart": ["classification_head"], "llama": ["score"]}


@pytest.mark.parametrize("arch", HEADS)
def test_all_linear_trains_the_head_whole_and_leaves_it_out_of_targets(arch):
    model = build(arch, "classification")
    assert task_head_names(model) == HEADS[arch]
    am = petkit.adapt(model, petkit.LoraConfig(r=2, targets="all-linear"))
    heads = [p for p, _, d in am.layers("default") if type(d).__name__ == "HeadDelta"]
    assert heads == HEADS[arch]
    assert not [p for p in am.state.modules["default"] if any(p.startswith(h + ".") for h in heads)]


def test_a_base_model_under_another_name_is_not_part_of_the_head():
    # CLIP's image classifier keeps its base model as vision_model, not as its base_model_prefix "clip"
    from transformers import CLIPConfig, CLIPForImageClassification

    tower = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    model = CLIPForImageClassification(CLIPConfig(vision_config={**tower, "image_size": 16, "patch_size": 4},
                                                  text_config=tower))
    assert task_head_names(model) == ["classifier"]


def test_a_target_inside_the_head_is_an_error_unless_the_head_is_left_alone():
    model = build("roberta", "classification")
    with pytest.raises(petkit.TargetError, match=r"only modules of the task head \(classifier.out_proj\).*train_head=False"):
        petkit.adapt(model, petkit.LoraConfig(r=2, targets=["out_proj"]))
    assert not any(hasattr(m, "deltas") for m in model.modules())
    am = petkit.adapt(model, petkit.LoraConfig(r=2, targets=["value", "re:.*(out_proj|query)"]))  # the head's left out
    assert am.state.modules["default"][-1] == "classifier" and "classifier.out_proj" not in am.state.modules["default"]
    am = petkit.adapt(build("roberta", "classification"), petkit.LoraConfig(r=2, targets=["out_proj"], train_head=False))
    assert am.state.modules["default"] == ["classifier.out_proj"]


# -- the PEFT round trip, both directions -------------------------------------------------------------

ROUND_TRIP = ("lora-all-linear", "dora", "ia3-default")


def _perturb(params, seed: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * 0.2)


def _peft_config(am: petkit.AdaptedModel, task: str):
    """The PEFT config of the same adapter: petkit's targets and head, by full module name."""
    cfg = am.adapter_config()
    layers = [(p, d) for p, _, d in am.layers("default") if type(d).__name__ != "HeadDelta"]
    heads = [p for p, _, d in am.layers("default") if type(d).__name__ == "HeadDelta"]
    common = dict(target_modules=[p for p, _ in layers], modules_to_save=heads or None, task_type=PEFT_TASKS[task])
    if isinstance(cfg, petkit.IA3Config):
        return peft.IA3Config(feedforward_modules=[p for p, d in layers if d.feedforward], **common)
    return peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, use_dora=isinstance(cfg, petkit.DoraConfig), **common)


def _assert_changed_and_equal(got, want, base):
    assert (want - base).abs().max() > 1e-4, "the adapter does not change the model"  # 10x the tolerance below
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ROUND_TRIP)
@pytest.mark.parametrize("arch,task", ALL_VARIANTS, ids=ids(ALL_VARIANTS))
def test_petkit_to_peft(arch, task, method, tmp_path):
    batch = tiny_batch(build(arch, task), seed=1)
    am = petkit.adapt(build(arch, task), METHODS[method]())
    _perturb(am.trainable_parameters())
    want = outputs(am, batch)
    am.save(tmp_path, format="peft")
    pm = peft.PeftModel.from_pretrained(build(arch, task), tmp_path).eval()
    _assert_changed_and_equal(outputs(pm, batch), want, outputs(build(arch, task), batch))


def _peft_to_petkit(arch: str, task: str, config, tmp_path) -> petkit.AdaptedModel:
    """A PEFT adapter (trained-like weights) saved by PEFT and loaded by petkit: same outputs."""
    batch = tiny_batch(build(arch, task), seed=1)
    pm = peft.get_peft_model(build(arch, task), config).eval()
    _perturb(p for p in pm.parameters() if p.requires_grad)
    want = outputs(pm, batch)
    pm.save_pretrained(tmp_path)
    am = petkit.load(build(arch, task), tmp_path)
    _assert_changed_and_equal(outputs(am, batch), want, outputs(build(arch, task), batch))
    return am


@pytest.mark.parametrize("method", ROUND_TRIP)
@pytest.mark.parametrize("arch,task", ALL_VARIANTS, ids=ids(ALL_VARIANTS))
def test_peft_to_petkit(arch, task, method, tmp_path):
    reference = petkit.adapt(build(arch, task), METHODS[method]())
    _peft_to_petkit(arch, task, _peft_config(reference, task), tmp_path)


def test_a_peft_file_with_part_of_the_head_restores_that_part(tmp_path):
    # PEFT's SEQ_CLS saves DeBERTa's classifier but not its (freshly initialised) pooler: petkit
    # restores the same and leaves the pooler as the base has it.
    config = peft.LoraConfig(r=2, target_modules=["query_proj", "value_proj"], task_type="SEQ_CLS")
    assert _peft_to_petkit("deberta-v2", "classification", config, tmp_path).adapter_config().train_head == ("classifier",)


def test_peft_saves_distilberts_pre_classifier_by_string_suffix(tmp_path):
    # PEFT's SEQ_CLS lists "classifier" in modules_to_save and matches it as a plain suffix, so it also
    # trains and saves pre_classifier: petkit must restore that as part of the head, not refuse it.
    config = peft.LoraConfig(r=2, target_modules=["q_lin", "v_lin"], task_type="SEQ_CLS")
    assert _peft_to_petkit("distilbert", "classification", config, tmp_path).adapter_config().train_head is True


# -- roles from structure where names do not tell ------------------------------------------------------

class _Linears(torch.nn.Module):
    def __init__(self, linears):
        super().__init__()
        for name, (i, o) in linears.items():
            setattr(self, name, torch.nn.Linear(i, o))


class _Block(torch.nn.Module):
    def __init__(self, attention, mlp):
        super().__init__()
        self.attention = _Linears(attention)  # attention by its name alone
        self.mlp = _Linears(mlp)
        self.norm = torch.nn.LayerNorm(8)


def _toy(attention, mlp):
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList(_Block(attention, mlp) for _ in range(2))
    return model


def test_structure_tells_q_k_v_out_by_position_and_fused_qkv_by_shape():
    toy = _toy({"a": (8, 8), "b": (8, 4), "c": (8, 4), "d": (8, 8)}, {"x": (8, 24), "y": (24, 8), "router": (8, 3)})
    parts = derive_parts(toy)
    assert [parts[p] for p in ("q", "k", "v", "out")] == [[f"blocks.{i}.attention.{n}" for i in (0, 1)] for n in "abcd"]
    assert parts["up"] == ["blocks.0.mlp.x", "blocks.1.mlp.x"] and parts["down"] == ["blocks.0.mlp.y", "blocks.1.mlp.y"]
    assert roles_of(toy).source == "structure" and roles_of(toy).roles()  # the router is no role
    assert "blocks.0.mlp.router" not in {p for r in roles_of(toy).roles() for p in roles_of(toy).paths(r)}
    # codegen's order: the output projection first, then the one layer that widens the stream (fused q, k, v)
    fused = derive_parts(_toy({"o": (8, 8), "w": (8, 24)}, {"x": (8, 48), "y": (24, 8)}))
    assert fused["qkv"][0] == "blocks.0.attention.w" and fused["out"][0] == "blocks.0.attention.o"
    assert fused["gate_up"][0] == "blocks.0.mlp.x"  # 2 x the down projection's input: fused gate and up
    with pytest.raises(petkit.TargetError, match=r"fuses these projections.*'attn.qkv' instead of 'attn.q'"):
        petkit.adapt(_toy({"o": (8, 8), "w": (8, 24)}, {"x": (8, 24), "y": (24, 8)}), petkit.LoraConfig(targets="attn.q"))


def test_a_model_without_attention_has_no_roles():
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    assert roles_of(mlp).describe() == "roles of the model: none found (target module names or regexes)"
    with pytest.raises(petkit.TargetError, match="has no role 'attn.q'; its roles are none"):
        petkit.adapt(mlp, petkit.LoraConfig(targets="attn.q"))
    with pytest.raises(petkit.TargetError, match="no targets given.*found no attention projections"):
        petkit.adapt(mlp, petkit.LoraConfig())


def test_norm_role_is_the_norms_over_the_residual_stream():
    model = build("qwen3", "causal-lm")  # its per-head q_norm and k_norm normalise head_dim, not the stream
    norms = roles_of(model).paths("norm")
    assert sorted(norms) == ["model.layers.0.input_layernorm", "model.layers.0.post_attention_layernorm",
                             "model.layers.1.input_layernorm", "model.layers.1.post_attention_layernorm", "model.norm"]
