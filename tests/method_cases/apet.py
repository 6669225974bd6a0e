"""APET matrix cases: a LoRA-sized budget at random elements, and whole tensors (budget = all of them)."""

from method_cases._shapes import io_features, method_layers
from petkit.core.targeting import resolve_targets
from petkit.core.unwrapped import named_base_modules
from petkit.methods.apet import ApetConfig

REFERENCE = {"method": "lora", "r": 2, "targets": ["attn.qkv"]}


def _tensor_total(model, targets):
    modules = dict(named_base_modules(model))
    return sum(p.numel() for n in resolve_targets(model, targets) for p in modules[n].parameters(recurse=False))


def apet_count(am, name):
    cfg = am.adapter_config(name)
    if cfg.level == "tensor":  # the cases give a budget that every targeted tensor fits in
        assert cfg.budget >= _tensor_total(am.base, cfg.targets)
        return sum(io_features(b)[0] * io_features(b)[1] + (b.bias.numel() if b.bias is not None else 0)
                   for _, b, _ in method_layers(am, name))
    if cfg.budget:
        return cfg.budget
    assert cfg.reference["method"] == "lora"
    modules = dict(named_base_modules(am.base))
    return sum(cfg.reference["r"] * sum(io_features(modules[p])) for p in resolve_targets(am.base, cfg.reference["targets"]))


def _all_of(fam, targets):
    from petkit.testing import TINY_MODELS
    return _tensor_total(TINY_MODELS[fam](seed=0), targets)


CASES = {
    "apet": lambda fam: ApetConfig(reference=REFERENCE, seed=1),
    "apet-tensor": lambda fam: ApetConfig(level="tensor", targets=["mlp.in"], budget=_all_of(fam, ["mlp.in"])),
}
FORMULAS = {"apet": apet_count}
