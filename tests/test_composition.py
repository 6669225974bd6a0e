"""The composition algebra at forward time: each rule in one layer by hand, the model-level
identities with LoRA, batch splitting, nesting rules, files."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import petkit
from petkit import Average, BatchSplit, Parallel, Stack, Sum, WeightedSum
from petkit.core.composition import from_dict
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
    torch.testing.assert_close(layer_out(am, Sum("a", "b"), x), da + db - y0)
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

    torch.testing.assert_close(hidden(Sum("l0", "l1")), hidden(Stack("l0", "l1")), atol=1e-5, rtol=1e-5)
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
    composition = Stack(Sum("a", "b"), "c")
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
    am.set_active(Sum("l0", "l1"))
    am.merge()  # a sum of weight deltas: merging reproduces it
    am.unmerge()


@pytest.mark.parametrize("make,message", [
    (lambda: Sum("a"), "Sum combines at least two adapters, got 1"),
    (lambda: Average("a", "b", weights=[1.0]), "Average needs one finite weight per child"),
    (lambda: BatchSplit("a", "b", sizes=[2, 0]), "BatchSplit needs one positive size per adapter"),
    (lambda: Stack(BatchSplit("a", "b", sizes=[1, 1]), "a"), "BatchSplit splits the whole batch: use it at the top"),
    (lambda: BatchSplit(Stack("a", "b"), "c", sizes=[1, 1]), "give it names, not compositions"),
    (lambda: Stack("a", Sum("b", "a")), "each adapter appears once in a composition"),
])
def test_bad_compositions(make, message):
    with pytest.raises(petkit.ConfigError, match=message):
        make()


def test_bad_uses_on_a_model():
    am, _ = adapters()
    with pytest.raises(petkit.ConfigError, match="each adapter appears once in a composition; \\['a'\\]"):
        am.set_active(Stack("a", Sum("a", "b")))
    with pytest.raises(petkit.ConfigError, match="no adapter named 'zzz'"):
        am.set_active(Sum("a", "zzz"))
    am.add(petkit.PromptTuningConfig(num_virtual_tokens=2), "prompt")
    with pytest.raises(petkit.ConfigError, match="prompt adapter 'prompt' acts on the whole model.*Stack\\(prompt"):
        am.set_active(Sum("prompt", "a"))
    am.set_active(Stack("prompt", Sum("a", "b")))  # allowed: whole-model adapters at the top of a Stack


# -- the renamed blocks -------------------------------------------------------------------------------

def test_sum_and_weighted_sum_compute_what_parallel_and_average_did():
    am, _ = adapters()
    x = torch.randn(2, 5, am.layer(_first_adapted(am)).base_layer.in_features)
    with pytest.warns(FutureWarning):
        ones, mean = Average("a", "b", weights=[1.0, 1.0]), Average("a", "b")
    torch.testing.assert_close(layer_out(am, Sum("a", "b"), x), layer_out(am, ones, x))
    weighted = layer_out(am, WeightedSum("a", "b", weights=[0.25, 0.75]), x)
    with pytest.warns(FutureWarning):
        torch.testing.assert_close(weighted, layer_out(am, Average("a", "b", weights=[0.25, 0.75]), x))
    torch.testing.assert_close(layer_out(am, WeightedSum("a", "b", weights=[0.5, 0.5]), x), layer_out(am, mean, x))
    assert not torch.allclose(weighted, layer_out(am, Sum("a", "b"), x), atol=1e-4)


def test_the_old_names_warn_and_name_the_new_ones():
    with pytest.warns(FutureWarning, match="petkit.Average is now called WeightedSum"):
        old = Average("a", "b")
    assert old == WeightedSum("a", "b", weights=[0.5, 0.5]) and isinstance(old, WeightedSum)
    assert old.to_dict() == {"weighted_sum": ["a", "b"], "weights": [0.5, 0.5]}
    with pytest.warns(FutureWarning, match="It used to add the adapters' changes up .* now petkit.Sum"):
        Parallel("a", "b")
    with pytest.raises(petkit.ConfigError, match="WeightedSum needs one finite weight per child"):
        WeightedSum("a", "b", weights=[1.0])


@pytest.mark.parametrize("old,new", [
    ({"parallel": ["a", "b"]}, Sum("a", "b")),
    ({"average": ["a", "b"], "weights": [0.3, 0.7]}, WeightedSum("a", "b", weights=[0.3, 0.7])),
    ({"stack": [{"parallel": ["a", "b"]}, "c"]}, Stack(Sum("a", "b"), "c")),
])
def test_compositions_saved_under_the_old_names_load_as_before(old, new):
    with pytest.warns(FutureWarning, match="uses the old name .* for what is now"):
        assert from_dict(old) == new


def test_a_file_saved_with_the_old_name_loads_as_the_sum(tmp_path):
    am, batch = adapters()
    am.set_active(Sum("a", "b"))
    with torch.no_grad():
        before = am(**batch).logits
    am.save(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["composition"] == {"sum": ["a", "b"]}
    config["composition"] = {"parallel": ["a", "b"]}  # as petkit wrote it before the rename
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.warns(FutureWarning, match="old name 'parallel' for what is now 'sum'"):
        back = petkit.load(TINY_MODELS["bert"](seed=0), tmp_path)
    assert back.state.composition == Sum("a", "b")
    with torch.no_grad():
        torch.testing.assert_close(back(**batch).logits, before)


# -- Parallel: AdapterHub's, one copy of the batch per adapter ------------------------------------------

def parallel(*names):
    with pytest.warns(FutureWarning, match="petkit.Parallel now means"):
        return Parallel(*names)


KINDS = {"lora": petkit.LoraConfig(r=2, targets=["all-linear"]),
         "bottleneck": petkit.BottleneckConfig(variant="pfeiffer", bottleneck=4)}


def two_adapters(family, kind, dropout=None):
    """A tiny model with two non-zero adapters 'a' and 'b' of one kind (on BERT each with its own head)."""
    base = TINY_MODELS[family](seed=0, dropout=dropout)
    am = petkit.adapt(base, KINDS[kind], "a")
    am.add(KINDS[kind], "b")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in ("a", "b"):
            for delta in am.deltas(name):
                for p in delta.parameters():
                    p.add_(torch.randn(p.shape, generator=generator) * 0.3)
    return am, tiny_batch(base, seed=1)


CASES = [("bert", "lora"), ("bert", "bottleneck"), ("llama", "lora"), ("llama", "bottleneck")]


@pytest.mark.parametrize("family,kind", CASES)
def test_parallel_gives_each_adapter_its_own_output(family, kind):
    am, batch = two_adapters(family, kind)
    block = parallel("a", "b")
    am.set_active(block)
    with torch.no_grad():
        out = am(**batch)
    alone = {}
    for name in ("a", "b"):
        am.set_active(name)
        with torch.no_grad():
            alone[name] = am(**batch)
    assert out.logits.shape[0] == 2 * batch["input_ids"].shape[0]
    for name, logits in zip(("a", "b"), block.split(out.logits)):
        torch.testing.assert_close(logits, alone[name].logits, atol=1e-5, rtol=1e-5)
    # the loss is the mean over the copies: here every copy has as many labelled positions
    torch.testing.assert_close(out.loss, (alone["a"].loss + alone["b"].loss) / 2, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(alone["a"].logits, alone["b"].logits, atol=1e-3)


@pytest.mark.parametrize("family,kind", CASES)
def test_parallel_gradients_reach_each_adapter_from_its_own_copy_only(family, kind):
    am, batch = two_adapters(family, kind, dropout=0.0)
    am.train()
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    def grads(name):
        return {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
                for delta in am.deltas(name) for k, p in delta.named_parameters()}

    def backward(active, pick):
        am.zero_grad(set_to_none=True)
        am.set_active(active)
        pick(am(**inputs).logits).square().mean().backward()
        return grads("a"), grads("b")

    block = parallel("a", "b")
    for i, name in enumerate(("a", "b")):
        other = "b" if name == "a" else "a"
        via_parallel = dict(zip(("a", "b"), backward(block, lambda logits: block.split(logits)[i])))
        alone = dict(zip(("a", "b"), backward(name, lambda logits: logits)))
        assert any(g.abs().sum() > 0 for g in via_parallel[name].values())
        for k, g in via_parallel[name].items():
            torch.testing.assert_close(g, alone[name][k], atol=1e-5, rtol=1e-4)
        assert all(g.abs().sum() == 0 for g in via_parallel[other].values()), f"{other} got gradient from {name}'s copy"


def test_parallel_generates_one_continuation_per_adapter():
    am, batch = two_adapters("llama", "lora")
    ids = batch["input_ids"][:2, :5]
    block = parallel("a", "b")
    am.set_active(block)
    both = am.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    for name, tokens in zip(("a", "b"), block.split(both)):
        am.set_active(name)
        alone = am.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
        torch.testing.assert_close(tokens, alone)


def test_parallel_is_saved_and_loaded(tmp_path):
    am, batch = two_adapters("bert", "lora")
    am.set_active(parallel("a", "b"))
    with torch.no_grad():
        before = am(**batch).logits
    am.save(tmp_path)
    fresh = TINY_MODELS["bert"](seed=0)
    with warnings.catch_warnings():  # no note about the old meaning: a file names the new block
        warnings.simplefilter("error", FutureWarning)
        back = petkit.load(fresh, tmp_path)
    assert back.state.composition.to_dict() == {"parallel_batch": ["a", "b"]}
    with torch.no_grad():
        torch.testing.assert_close(back(**batch).logits, before)


def test_parallel_refusals():
    with pytest.raises(petkit.ConfigError, match=r"Parallel copies the whole batch, once per adapter: use it at the "
                                                 r"top, not inside Stack; to add .* use Sum"):
        Stack(parallel("a", "b"), "c")
    with pytest.raises(petkit.ConfigError, match="Parallel routes samples to adapters by name; give it names"):
        parallel(Stack("a", "b"), "c")
    am, batch = two_adapters("bert", "lora")
    am.add(petkit.PromptTuningConfig(num_virtual_tokens=2), "prompt")
    with pytest.raises(petkit.ConfigError, match="Parallel sends samples to adapters layer by layer, and prompt "
                                                 "adapter 'prompt' changes the whole model"):
        am.set_active(parallel("a", "prompt"))
    block = parallel("a", "b")
    am.set_active(block)
    with pytest.raises(petkit.StateError, match="Parallel weighs or splits its adapters"):
        am.merge()
    with pytest.raises(petkit.StateError, match="call the AdaptedModel, not the model inside it"):
        am.base(**batch)
    with pytest.raises(petkit.StateError, match="labels has 3 rows where the batch has 4"):
        am(**{**batch, "labels": batch["labels"][:3]})
    with pytest.raises(petkit.StateError, match=r"splits outputs of n·batch rows, got shape \(3, 2\)"):
        block.split(torch.zeros(3, 2))
