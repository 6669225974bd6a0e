"""The composition algebra at forward time: each rule in one layer by hand, the model-level
identities with LoRA, batch splitting, nesting rules, files."""

from __future__ import annotations

import pytest
import torch

import petkit
from petkit import Average, BatchSplit, Parallel, Stack
from petkit.merge import merge_adapters
from petkit.testing import TINY_MODELS, tiny_batch, tiny_lora_family

def adapters():
    """Two Houlsby adapters (output deltas, which do not commute) and a LoRA, all non-zero."""
    base = TINY_MODELS["bert"](seed=0)
    am = petkit.adapt(base, petkit.BottleneckConfig(variant="pfeiffer", bottleneck=4), "a")
    am.add(petkit.BottleneckConfig(variant="pfeiffer", bottleneck=4), "b")
    torch.manual_seed(0)
    with torch.no_grad():
        for n in ("a", "b"):
            for _, _, d in am.layers(n):
                for p in d.parameters():
                    p.add_(torch.randn_like(p) * 0.3)
    return am, tiny_batch(base, seed=1)


def layer_out(am, active, x):
    am.set_active(active)
    with torch.no_grad():
        return am.layer(_first_adapted(am)).forward(x)


def _first_adapted(am):
    return next(p for p, _, _ in am.layers("a"))


def test_each_rule_in_one_layer_by_hand():
    am, _ = adapters()
    path = _first_adapted(am)
    x = torch.randn(2, 5, am.layer(path).base_layer.in_features)
    with torch.no_grad():
        y0 = am.layer(path).base_layer(x)
        da = am.layer(path).deltas["a"](am.layer(path).base_layer, x, y0)
        db = am.layer(path).deltas["b"](am.layer(path).base_layer, x, y0)
        stacked = am.layer(path).deltas["b"](am.layer(path).base_layer, x, da)
    torch.testing.assert_close(layer_out(am, Stack("a", "b"), x), stacked)
    torch.testing.assert_close(layer_out(am, ["a", "b"], x), stacked)  # a list stacks, as before
    torch.testing.assert_close(layer_out(am, Parallel("a", "b"), x), da + db - y0)
    torch.testing.assert_close(layer_out(am, Average("a", "b", weights=[0.25, 0.75]), x),
                               y0 + 0.25 * (da - y0) + 0.75 * (db - y0))
    assert not torch.allclose(da + db - y0, stacked, atol=1e-4)  # these adapters do not commute


def test_with_lora_parallel_is_stack_and_average_is_the_merged_average():
    """Compared on the encoder's hidden states: each adapter also has its own task head, and heads
    replace their output rather than add to it."""
    am, batch = tiny_lora_family(2, prefix="l")
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    def hidden(active):
        am.set_active(active)
        with torch.no_grad():
            return am.base.bert(**inputs).last_hidden_state

    torch.testing.assert_close(hidden(Parallel("l0", "l1")), hidden(Stack("l0", "l1")), atol=1e-5, rtol=1e-5)
    merge_adapters(am, ["l0", "l1"], weights=[0.3, 0.7], rank="concat", into="m")
    torch.testing.assert_close(hidden(Average("l0", "l1", weights=[0.3, 0.7])), hidden("m"), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(hidden("l0"), hidden("m"), atol=1e-4)


def test_batch_split_routes_samples_like_adapter_names():
    am, batch = tiny_lora_family(2, prefix="l")
    am.set_active(BatchSplit("l0", "l1", sizes=[1, 3]))
    with torch.no_grad():
        split = am(**batch).logits
        routed = am(**batch, adapter_names=["l0", "l1", "l1", "l1"]).logits
    torch.testing.assert_close(split, routed)
    with pytest.raises(petkit.StateError, match=r"BatchSplit sizes \[1, 3\] add up to 4, but the batch has 2"):
        am(**{k: v[:2] for k, v in batch.items()})


def test_nesting_and_saving(tmp_path):
    am, batch = adapters()
    am.add(petkit.LoraConfig(r=2, targets=["query"]), "c")
    with torch.no_grad():
        for _, _, d in am.layers("c"):
            if hasattr(d, "B"):
                d.B.normal_()
    composition = Stack(Parallel("a", "b"), "c")
    am.set_active(composition)
    with torch.no_grad():
        before = am(**batch).logits
    am.save(tmp_path)
    back = petkit.load(TINY_MODELS["bert"](seed=0), tmp_path)
    assert back.state.composition == composition
    with torch.no_grad():
        torch.testing.assert_close(back(**batch).logits, before)


def test_merging_refuses_what_it_cannot_reproduce():
    am, _ = tiny_lora_family(2, prefix="l")
    am.set_active(Average("l0", "l1"))
    with pytest.raises(petkit.StateError, match="Average weighs or splits its adapters.*merge_adapters"):
        am.merge()
    am.set_active(Parallel("l0", "l1"))
    am.merge()  # a sum of weight deltas: merging reproduces it
    am.unmerge()


@pytest.mark.parametrize("make,message", [
    (lambda: Parallel("a"), "Parallel combines at least two adapters, got 1"),
    (lambda: Average("a", "b", weights=[1.0]), "Average needs one finite weight per child"),
    (lambda: BatchSplit("a", "b", sizes=[2, 0]), "BatchSplit needs one positive size per adapter"),
    (lambda: Stack(BatchSplit("a", "b", sizes=[1, 1]), "a"), "BatchSplit splits the whole batch: use it at the top"),
    (lambda: BatchSplit(Stack("a", "b"), "c", sizes=[1, 1]), "give it names, not compositions"),
    (lambda: Stack("a", Parallel("b", "a")), "each adapter appears once in a composition"),
])
def test_bad_compositions(make, message):
    with pytest.raises(petkit.ConfigError, match=message):
        make()


def test_bad_uses_on_a_model():
    am, _ = adapters()
    with pytest.raises(petkit.ConfigError, match="each adapter appears once in a composition; \\['a'\\]"):
        am.set_active(Stack("a", Parallel("a", "b")))
    with pytest.raises(petkit.ConfigError, match="no adapter named 'zzz'"):
        am.set_active(Parallel("a", "zzz"))
    am.add(petkit.PromptTuningConfig(num_virtual_tokens=2), "prompt")
    with pytest.raises(petkit.ConfigError, match="prompt adapter 'prompt' acts on the whole model.*Stack\\(prompt"):
        am.set_active(Parallel("prompt", "a"))
    am.set_active(Stack("prompt", Parallel("a", "b")))  # allowed: whole-model adapters at the top of a Stack
