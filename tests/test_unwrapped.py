"""The base model seen through petkit's wrappers (core/unwrapped.py): the names and tensors a model
had before it was adapted, whatever adapters sit on it."""

from __future__ import annotations

import petkit
from petkit.core.head import HeadDelta
from petkit.core.unwrapped import base_parameters, named_base_modules
from petkit.testing import tiny_bert, tiny_gpt2


def test_base_parameters_are_the_unadapted_models():
    model = tiny_bert()
    before = dict(model.named_parameters())
    am = petkit.adapt(model, petkit.LoraConfig(r=2, targets=["query", "value"]))  # wraps the head too
    am.add(petkit.IA3Config(targets=["key"]), "other")
    after = base_parameters(am.base)
    assert list(after) == list(before)
    assert all(after[n] is p for n, p in before.items())


def test_named_base_modules_see_through_wrappers():
    model = tiny_gpt2()
    before = [(n, m) for n, m in model.named_modules()]
    am = petkit.adapt(model, petkit.LoraConfig(r=2, targets=["c_attn"]))
    after = list(named_base_modules(am.base))
    assert [n for n, _ in after] == [n for n, _ in before]
    assert all(a is b for (_, a), (_, b) in zip(after, before))


def test_the_task_head_is_the_engines():
    am = petkit.adapt(tiny_bert(), petkit.ProbeConfig())
    assert am.state.modules["default"] and all(isinstance(d, HeadDelta) for d in am.deltas("default"))
