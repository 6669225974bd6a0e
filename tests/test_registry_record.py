"""A method's registry record holds everything other layers need to know about it (DESIGN.md, Layout):
its config and public name, its Hugging Face PEFT format, its bench defaults. So a new method,
PEFT-exportable or not, is one file, and what `petkit methods` lists is what the code does."""

from __future__ import annotations

import ast
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import petkit
from petkit.bench.defaults import GENERIC_LRS, method_defaults
from petkit.cli.methods_table import COLUMNS, method_rows
from petkit.core import registry
from petkit.core.config import AdapterConfig
from petkit.core.layer import Delta
from petkit.core.registry import Method, get_method, register
from petkit.interop.peft import exportable, reader
from petkit.interop.peft_tuner import TunerFormat, literal
from petkit.testing import TINY_MODELS, tiny_batch, tiny_bert

ROOT = Path(petkit.__file__).parent


# -- a PEFT-exportable method defined here, in one place, with no other module edited ------------

@dataclass(frozen=True)
class ShiftConfig(AdapterConfig):
    """A learned vector added to each targeted layer's output."""


class ShiftDelta(Delta):
    mergeable = False

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(base.out_features))

    def forward(self, base, x, y):
        return y + self.shift


SHIFT_PEFT = TunerFormat(
    "TOY_SHIFT", leaves=("toy_shift",),
    export_layer=lambda delta, layer, path: {"toy_shift": delta.shift.detach()},
    export_config=lambda config, layers, common: {**common, "peft_type": "TOY_SHIFT"},
    import_config=lambda config, adapter, train_head, file: ShiftConfig(targets=[literal(p) for p in adapter],
                                                                          train_head=train_head),
    import_layer=lambda delta, theirs: {"shift": theirs["toy_shift"]} if "toy_shift" in theirs else {},
)


@pytest.fixture
def shift_method(monkeypatch):
    """The method registered for one test only (the registry as it was comes back afterwards)."""
    monkeypatch.setattr(registry._METHODS, "records", dict(registry._METHODS.records))
    return register(Method(name="toy_shift", config=ShiftConfig, kind="output",
                           build=lambda base, config, path, model, init=True: ShiftDelta(base),
                           layer_types=(nn.Linear,), mergeable=False, spec="a test", summary="output shift",
                           peft=SHIFT_PEFT))


def test_a_peft_exportable_method_is_one_file(shift_method, tmp_path):
    am = petkit.adapt(tiny_bert(), ShiftConfig(targets=["query", "value"], train_head=True))
    with torch.no_grad():
        for p in am.adapter_parameters("default").values():
            p.normal_()
    batch = tiny_batch(am.base)
    am.eval()
    expected = am(**batch).logits
    am.save(tmp_path, format="peft")
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "TOY_SHIFT" and len(saved["target_modules"]) == 4
    loaded = petkit.load(tiny_bert(), tmp_path)
    loaded.eval()
    assert type(loaded.adapter_config()) is ShiftConfig
    torch.testing.assert_close(loaded(**batch).logits, expected)
    # ... and every layer that lists methods knows it, from the same record
    assert "toy_shift" in exportable()
    assert ("toy_shift", "output", "TOY_SHIFT", "no", "output shift", "a test") in method_rows()
    assert method_defaults("toy_shift").lrs == GENERIC_LRS


# -- the record is the one source ------------------------------------------------------------------

def _written_peft_type(method: Method, tmp_path: Path) -> str | None:
    """The peft_type a save of `method` writes, on the first tiny family where PEFT's format holds it."""
    for family, build in TINY_MODELS.items():
        try:
            petkit.adapt(build(), method.config()).save(tmp_path / family, format="peft")
        except petkit.PetkitError:
            continue  # this family has no PEFT form for the method (e.g. prefixes on an encoder)
        return json.loads((tmp_path / family / "adapter_config.json").read_text())["peft_type"]
    return None


@pytest.mark.parametrize("name", exportable())
def test_the_listed_peft_type_is_the_one_written(name, tmp_path):
    method = get_method(name)
    written = _written_peft_type(method, tmp_path)
    assert written is not None, f"{name} has a PEFT format but no tiny family saves it in PEFT's format"
    assert written == method.peft_type, f"`petkit methods` lists {name} as {method.peft_type}, its files say {written}"
    assert method_rows()[[m.name for m in petkit.all_methods()].index(name)][COLUMNS.index("PEFT type")] == written


def test_every_peft_type_has_one_reader():
    types = {m.peft_type for m in petkit.all_methods() if m.peft is not None}
    readers = {t: reader(t) for t in types}
    assert readers["PREFIX_TUNING"] is get_method("prefix").peft  # deep prompts are read back as prefixes
    assert readers["LORA"] is get_method("lora").peft is get_method("dora").peft  # DoRA is LORA with use_dora


def test_bench_defaults_are_the_records():
    for m in petkit.all_methods():
        assert method_defaults(m.name) == (m.bench or registry.MethodDefaults(lrs=GENERIC_LRS)), m.name
    assert method_defaults("not-a-method").lrs == GENERIC_LRS  # bench variants resolve to a method first


def test_every_registered_config_is_public_under_its_name():
    for m in petkit.all_methods():
        assert getattr(petkit, m.config.__name__) is m.config and m.config.__name__ in petkit.__all__


# -- no other module names a method's config or imports a method module ----------------------------

# (module, name) -> why that module names another method's config or module on purpose
ALLOWED = {
    ("methods/deep_prompt.py", "PrefixTuningConfig"): "P-tuning v2's deep prompts on text are prefixes without the MLP",
    ("merge/adapters.py", "LoraConfig"): "a merge re-factorised by SVD is written as a LoRA adapter (ΔW space)",
    ("merge/adapters.py", "petkit.methods.lora"): "the same: it builds LoRA factors",
    ("testing.py", "LoraConfig"): "tiny_lora_family: LoRA adapters as test fixtures",
    ("testing.py", "petkit.methods.lora"): "the same",
    ("fed/systems/sfprompt.py", "TellyConfig"): "SFPrompt's client trains the tail layers, which is Telly's selection",
    ("fed/systems/sfprompt.py", "petkit.methods.telly"): "the same",
}


def _named(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.alias):
            names.add(node.name.split(".")[-1])
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("petkit.methods."):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("petkit.methods."))
    return names


def test_only_a_methods_own_file_names_its_config():
    owner = {m.config.__name__: Path(inspect.getsourcefile(m.config)).resolve() for m in petkit.all_methods()}
    found = set()
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "__init__.py":  # the public API spells out every config (checked against the registry above)
            continue
        for name in _named(ast.parse(path.read_text(encoding="utf-8"))):
            foreign_config = name in owner and owner[name] != path.resolve()
            method_module = name.startswith("petkit.methods.") and not rel.startswith("methods/")
            if foreign_config or method_module:
                found.add((rel, name))
    unexpected = sorted(found - set(ALLOWED))
    assert not unexpected, ("a method's facts belong in its registry record, read through the registry; these "
                            f"modules name a method directly (add the fact to the record instead): {unexpected}")
    assert not set(ALLOWED) - found, f"stale exceptions: {sorted(set(ALLOWED) - found)}"
