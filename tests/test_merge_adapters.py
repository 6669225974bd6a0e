"""Merging adapters in ΔW space against a dense reference computed by hand, and the factor-averaging
error of Hugging Face PEFT's add_weighted_adapter that petkit does not make."""

from __future__ import annotations

import copy

import pytest
import torch

import petkit
from petkit.merge import merge_adapters, merge_tensors
from petkit.testing import TINY_MODELS, tiny_batch

Q, V = "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.attention.self.value"


def two_loras():
    base = TINY_MODELS["bert"](seed=0)
    am = petkit.adapt(base, petkit.LoraConfig(r=2, alpha=4, targets=[Q, V], train_head=False), "a")
    am.add(petkit.LoraConfig(r=3, alpha=3, targets=[Q], train_head=False), "b")
    torch.manual_seed(0)
    with torch.no_grad():
        for name in ("a", "b"):
            for _, _, delta in am.layers(name):
                delta.A.normal_()
                delta.B.normal_(0, 0.3)
    return am, tiny_batch(base, seed=1)


def by_hand(am, name, path):
    """s·B·A from the factors, not from delta_weight."""
    delta = am.layer(path).deltas[name]
    return delta.scale * delta.B @ delta.A


def dense_reference(am, weights):
    """A fresh base with W += Σ w_i ΔW_i written into its weights."""
    reference = TINY_MODELS["bert"](seed=0)
    modules = dict(reference.named_modules())
    with torch.no_grad():
        for name, w in weights.items():
            for path in (Q, V):
                if name in am.layer(path).deltas:
                    modules[path].weight += w * by_hand(am, name, path)
    return reference


def outputs(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("rank", ["concat", 5])
def test_linear_merge_equals_the_dense_reference(rank):
    am, batch = two_loras()
    report = merge_adapters(am, ["a", "b"], weights=[0.7, -0.3], rank=rank)
    assert report.ranks == ({Q: 5, V: 2} if rank == "concat" else {Q: 5, V: 5}) and report.max_error < 1e-5
    am.set_active("merged")
    torch.testing.assert_close(outputs(am, batch), outputs(dense_reference(am, {"a": 0.7, "b": -0.3}), batch),
                               atol=1e-5, rtol=1e-5)


def test_ties_on_adapters_is_ties_on_each_modules_delta():
    am, _ = two_loras()
    report = merge_adapters(am, ["a", "b"], method="ties", density=0.3, weights=[1.0, 0.5], rank=32)
    merged = am.layer(Q).deltas["merged"]
    expected = merge_tensors([by_hand(am, "a", Q), by_hand(am, "b", Q)], [1.0, 0.5], "ties", 0.3)
    assert report.errors[Q] < 1e-5  # trimming makes ΔW full rank: exact only at full rank (32)
    torch.testing.assert_close(merged.scale * merged.B @ merged.A, expected, atol=1e-5, rtol=1e-5)
    only_a = merge_tensors([by_hand(am, "a", V), torch.zeros(32, 32)], [1.0, 0.5], "ties", 0.3)
    torch.testing.assert_close(am.layer(V).deltas["merged"].B @ am.layer(V).deltas["merged"].A, only_a,
                               atol=1e-5, rtol=1e-5)


def test_a_low_rank_target_reports_its_approximation_error():
    am, _ = two_loras()
    report = merge_adapters(am, ["a", "b"], rank=1)
    assert report.ranks[Q] == 1 and 0.05 < report.errors[Q] < 1
    dense = by_hand(am, "a", Q) + by_hand(am, "b", Q)
    merged = am.layer(Q).deltas["merged"]
    actual = (torch.linalg.norm(dense - merged.B @ merged.A) / torch.linalg.norm(dense)).item()
    assert report.errors[Q] == pytest.approx(actual, rel=1e-4)


def test_other_weight_deltas_merge_through_svd():
    base = TINY_MODELS["bert"](seed=0)
    am = petkit.adapt(base, petkit.SVFitConfig(r=4, targets=[Q], train_head=False), "svfit")
    am.add(petkit.LoraConfig(r=2, targets=[Q], train_head=False), "lora")
    with torch.no_grad():
        am.layer(Q).deltas["svfit"].sigma.mul_(1.5)  # a non-zero singular-value change
        am.layer(Q).deltas["lora"].B.normal_()
    merge_adapters(am, ["svfit", "lora"], rank=32)
    expected = sum(am.layer(Q).deltas[n].delta_weight(am.layer(Q).base_layer) for n in ("svfit", "lora"))
    merged = am.layer(Q).deltas["merged"]
    torch.testing.assert_close(merged.B @ merged.A, expected, atol=1e-4, rtol=1e-4)


def test_peft_averages_factors_and_gets_a_different_delta_petkit_does_not():
    """PEFT's add_weighted_adapter(combination_type="linear") merges the A's and the B's separately, so
    its ΔW is (Σ √w_i s_i B_i)(Σ √w_i s_i A_i), not Σ w_i s_i B_i A_i."""
    peft = pytest.importorskip("peft")
    base = TINY_MODELS["bert"](seed=0)
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query"])
    pm = peft.get_peft_model(copy.deepcopy(base), config, adapter_name="a")
    pm.add_adapter("b", config)
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.normal_()
    pm.add_weighted_adapter(["a", "b"], [0.5, 0.5], "m", combination_type="linear")
    layer = pm.base_model.model.bert.encoder.layer[0].attention.self.query
    delta = {n: layer.get_delta_weight(n) for n in ("a", "b", "m")}
    true = 0.5 * delta["a"] + 0.5 * delta["b"]
    peft_error = (torch.linalg.norm(delta["m"] - true) / torch.linalg.norm(true)).item()
    assert peft_error > 0.3

    am = petkit.adapt(base, petkit.LoraConfig(r=2, alpha=4, targets=["query"], train_head=False), "a")
    am.add(petkit.LoraConfig(r=2, alpha=4, targets=["query"], train_head=False), "b")
    with torch.no_grad():
        for name in ("a", "b"):
            for path, _, d in am.layers(name):
                peft_layer = dict(pm.named_modules())[f"base_model.model.{path}"]
                d.A.copy_(peft_layer.lora_A[name].weight)
                d.B.copy_(peft_layer.lora_B[name].weight)
    merge_adapters(am, ["a", "b"], weights=[0.5, 0.5], rank="concat")
    mine = am.layer(Q).deltas["merged"]
    torch.testing.assert_close(mine.scale * mine.B @ mine.A, true, atol=1e-5, rtol=1e-5)


# -- bad input --------------------------------------------------------------------------------------

def test_adapters_without_a_weight_delta_are_refused():
    base = TINY_MODELS["bert"](seed=0)
    am = petkit.adapt(base, petkit.BottleneckConfig(variant="pfeiffer", bottleneck=4), "adapter")
    am.add(petkit.LoraConfig(r=2, targets=["query"]), "lora")
    with pytest.raises(petkit.ConfigError, match="bottleneck adapter 'adapter' changes .* not a weight delta"):
        merge_adapters(am, ["adapter", "lora"])
    am.add(petkit.PromptTuningConfig(num_virtual_tokens=2), "prompt")
    with pytest.raises(petkit.ConfigError, match="prompt adapter 'prompt' has no per-module weight change"):
        merge_adapters(am, ["prompt", "lora"])
    assert am.adapters == ["adapter", "lora", "prompt"]  # nothing added


@pytest.mark.parametrize("kw,message", [
    ({"names": ["a", "a"]}, "each adapter can be merged once"),
    ({"names": ["a", "zzz"]}, "no adapter named 'zzz'"),
    ({"into": "a"}, "an adapter named 'a' already exists"),
    ({"method": "ties", "density": 0.5, "rank": "concat"}, "rank='concat' is exact for linear merges only"),
    ({"rank": 0}, "rank must be a positive integer, .concat. or .exact."),
    ({"weights": [1.0, 2.0, 3.0]}, "3 weights for 2 inputs"),
    ({"method": "dare_ties", "density": 0}, r"dare_ties needs a density in \(0, 1\]"),
])
def test_bad_merges(kw, message):
    am, _ = two_loras()
    kw = {"names": ["a", "b"], **kw}
    with pytest.raises(petkit.ConfigError, match=message):
        merge_adapters(am, kw.pop("names"), **kw)
    assert am.adapters == ["a", "b"]


def test_adapters_of_task_models_with_other_heads_merge_across_models():
    """Multi-task merging: one body, a 2-way and a 3-way head; the bodies' ΔW merge, each task keeps its head."""
    from petkit.merge import add_delta_adapter, check_same_base, merge_deltas, weight_deltas
    two = petkit.adapt(TINY_MODELS["bert"](num_labels=2, seed=0), petkit.LoraConfig(r=2, targets=["query"]))
    three = petkit.adapt(TINY_MODELS["bert"](num_labels=3, seed=0), petkit.LoraConfig(r=2, targets=["query"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for am in (two, three):
            for _, _, d in am.layers("default"):
                if hasattr(d, "B"):
                    d.B.normal_()
    check_same_base([(three, "default")], two)
    merged = merge_deltas([weight_deltas(two, "default"), weight_deltas(three, "default")], "ties", density=1.0)
    add_delta_adapter(two, merged, rank=32, into="multi")
    expected = merge_tensors([by_hand(two, "default", Q), by_hand(three, "default", Q)], method="ties", density=1.0)
    layer = two.layer(Q).deltas["multi"]
    torch.testing.assert_close(layer.B @ layer.A, expected, atol=1e-5, rtol=1e-5)
    other = petkit.adapt(TINY_MODELS["bert"](num_labels=2, seed=1), petkit.LoraConfig(r=2, targets=["query"]))
    with pytest.raises(petkit.ConfigError, match="adapter 'default' was trained on a different base: .*query has other"):
        check_same_base([(other, "default")], two)
