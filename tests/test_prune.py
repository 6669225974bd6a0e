"""petkit.prune: one-shot magnitude pruning (essential sparsity) and its controls."""

from __future__ import annotations

import pytest
import torch

import petkit
from petkit.core.errors import ConfigError, TargetError
from petkit.core.layer import weight_oi
from petkit.methods.lora import LoraConfig
from petkit.prune import prunable_modules, prune
from petkit.prune.masks import erk_densities
from petkit.testing import tiny_batch, tiny_bert, tiny_gpt2, tiny_llama


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9])
def test_global_magnitude_removes_exactly_the_smallest_weights_across_layers(sparsity):
    """Catches a per-layer threshold passed off as global, an off-by-one count, or ties that remove more
    than asked."""
    model = tiny_bert()
    before = {p: weight_oi(m).detach().clone() for p, m in prunable_modules(model).items()}
    result = prune(model, sparsity)
    total = sum(w.numel() for w in before.values())
    assert result.removed == round(sparsity * total)
    removed = torch.cat([before[p][~weight_oi_mask(model, p, m)].abs() for p, m in result.masks.items()])
    kept = torch.cat([before[p][weight_oi_mask(model, p, m)].abs() for p, m in result.masks.items()])
    if len(removed):
        assert removed.max() <= kept.min()
    per_layer = set(round(v, 3) for v in result.per_layer.values())
    assert sparsity == 0 or len(per_layer) > 1  # one threshold: layers end at different sparsities


def weight_oi_mask(model, path, stored_mask):
    module = dict(model.named_modules())[path]
    return stored_mask.t() if type(module).__name__ == "Conv1D" else stored_mask


def test_everything_but_the_targeted_weights_is_untouched():
    """Embeddings, norms, biases, the pooler and the task head keep every value."""
    model = tiny_bert()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    result = prune(model, 0.8)
    weights = {f"{p}.weight" for p in result.masks}
    for key, value in model.state_dict().items():
        if key not in weights:
            assert torch.equal(value, original[key]), key
    assert not any("embeddings" in p or "classifier" in p or "pooler" in p for p in result.masks)


def test_layer_uniform_random_and_erk_controls():
    model = tiny_bert()
    layer = prune(model, 0.4, kind="layer")
    for p, mask in layer.masks.items():
        assert int((~mask).sum()) == round(0.4 * mask.numel()), p
    a, b, c = (prune(tiny_bert(), 0.5, kind="random", seed=s) for s in (1, 1, 2))
    assert all(torch.equal(a.masks[p], b.masks[p]) for p in a.masks) and a.removed == c.removed
    assert any(not torch.equal(a.masks[p], c.masks[p]) for p in a.masks)
    erk = prune(tiny_bert(), 0.7, kind="erk")
    assert erk.sparsity == pytest.approx(0.7, abs=1e-3)


def test_erk_densities_follow_the_kernel_and_cap_at_one():
    """Catches densities proportional to the size instead of (n_in + n_out)/(n_in·n_out)."""
    shapes = {"small": (4, 4), "wide": (8, 64), "big": (64, 64)}
    d = erk_densities(shapes, 0.2)
    sizes = {n: a * b for n, (a, b) in shapes.items()}
    assert sum(d[n] * sizes[n] for n in d) == pytest.approx(0.2 * sum(sizes.values()))
    assert d["small"] == 1.0  # its kernel share would pass 1
    assert d["wide"] / d["big"] == pytest.approx(((8 + 64) / (8 * 64)) / ((64 + 64) / (64 * 64)))


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2])
def test_n_m_leaves_n_zeros_in_every_group_of_m_inputs(build):
    """Along the input dimension, for Linear (out, in) and GPT-2's Conv1D (in, out) alike, and the N
    smallest of each group. Catches groups taken along the outputs."""
    model = build()
    before = {p: weight_oi(m).detach().clone() for p, m in prunable_modules(model).items()}
    result = prune(model, kind="nm", n=2, m=4)
    for p in result.masks:
        w = weight_oi(dict(model.named_modules())[p])
        groups = before[p].abs().reshape(w.shape[0], -1, 4)
        dropped = ~weight_oi_mask(model, p, result.masks[p]).reshape(groups.shape)
        largest_dropped = groups.masked_fill(~dropped, -1).amax(-1)
        smallest_kept = groups.masked_fill(dropped, float("inf")).amin(-1)
        assert torch.all(largest_dropped <= smallest_kept), p
        zeros = (w == 0).reshape(w.shape[0], -1, 4).sum(-1)
        assert torch.all(zeros >= 2), p  # exactly 2 pruned; a weight that was already 0 could add one
        mask = weight_oi_mask(model, p, result.masks[p])
        assert torch.all((~mask).reshape(w.shape[0], -1, 4).sum(-1) == 2)
    assert result.sparsity == 0.5


def test_pruned_weights_stay_zero_while_training_full_or_lora():
    """The gradient mask keeps AdamW (with weight decay) from moving a pruned weight; LoRA on top
    leaves the base sparse. Catches a hook on the wrong layout or one that is never registered."""
    for lora in (False, True):
        model = tiny_gpt2() if lora else tiny_bert()
        result = prune(model, 0.6)
        trained = model
        if lora:
            trained = petkit.adapt(model, LoraConfig(targets=["attn.qkv"]))
        params = [p for p in trained.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
        for step in range(3):
            out = trained(**tiny_batch(model, seed=step))
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        modules = dict(model.named_modules())
        for p, mask in result.masks.items():
            module = modules[p]
            weight = module.base_layer.weight if hasattr(module, "base_layer") else module.weight
            assert torch.all(weight[~mask] == 0), p
        result.release()
        assert not result.handles


def test_bad_input_is_refused_and_leaves_the_model_unchanged():
    model = tiny_llama()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    for kwargs, message in [({"sparsity": 1.0}, "sparsity must be a number in \\[0, 1\\)"),
                            ({"sparsity": -0.1}, "sparsity must be"),
                            ({"kind": "nm", "n": 4, "m": 4}, "0 < N < M"),
                            ({"kind": "nm", "n": 2, "m": 5}, "not divisible by 5"),
                            ({"kind": "nm", "sparsity": 0.5, "n": 2, "m": 4}, "give n and m, not sparsity"),
                            ({"kind": "magnitude"}, "kind must be one of"),
                            ({"sparsity": 0.5, "n": 2}, "n and m are for kind='nm'")]:
        with pytest.raises(ConfigError, match=message):
            prune(model, **kwargs)
    with pytest.raises(TargetError):
        prune(model, 0.5, targets=["nonexistent_module"])
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    prune(model, 0.5)
    with pytest.raises(ConfigError, match="pruned already"):
        prune(model, 0.5)


# -- saved sparse ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("build", [tiny_bert, tiny_gpt2, tiny_llama])
def test_a_pruned_model_saves_sparse_and_loads_back_exactly(tmp_path, build):
    """Bitmask + kept values for pruned weights (Conv1D's stored layout and tied heads included).
    Catches a bit order that differs between pack and unpack, or values written in another order."""
    from petkit.prune.storage import load_pruned, pack_bits, save_pruned, unpack_bits
    mask = torch.rand(37) > 0.5
    assert torch.equal(unpack_bits(pack_bits(mask), 37), mask)
    model = build()
    result = prune(model, 0.75)
    size = save_pruned(model, result, tmp_path / "p")
    loaded = load_pruned(tmp_path / "p")
    assert type(loaded) is type(model)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # the data part of the file (past safetensors' JSON header): bits of every pruned weight, kept values,
    # and every other tensor once (a tied head is its embedding)
    header = int.from_bytes((tmp_path / "p" / "model.safetensors").read_bytes()[:8], "little")
    masks = result.masks.values()
    pruned = sum(-(-m.numel() // 8) + 4 * int(m.sum()) for m in masks)
    from petkit.models.rebuild import unique_tensors
    others, _ = unique_tensors({n: t for n, t in model.state_dict().items() if n.removesuffix(".weight") not in result.masks})
    rest = sum(t.numel() * t.element_size() for t in others.values())
    assert size - 8 - header == pruned + rest
    dense = sum(4 * m.numel() for m in masks)
    assert pruned / dense == pytest.approx((1 + 32 * 0.25) / 32, rel=0.01)


def test_a_sparse_file_refuses_what_would_load_wrong(tmp_path):
    from petkit.core.errors import AdapterFileError
    from petkit.prune.storage import WEIGHTS, load_pruned, save_pruned
    model = tiny_bert()
    result = prune(model, 0.5)
    result.release()
    with torch.no_grad():
        weight_oi(dict(model.named_modules())[next(iter(result.masks))]).add_(1.0)  # fills the zeros in
    with pytest.raises(AdapterFileError, match="non-zero weights where it was pruned"):
        save_pruned(model, result, tmp_path / "a")
    model = tiny_bert()
    save_pruned(model, prune(model, 0.5), tmp_path / "b")
    with pytest.raises(AdapterFileError, match="does not fit this model"):
        load_pruned(tmp_path / "b", tiny_llama())
    data = (tmp_path / "b" / WEIGHTS).read_bytes()
    (tmp_path / "b" / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterFileError, match="corrupt or truncated"):
        load_pruned(tmp_path / "b")
