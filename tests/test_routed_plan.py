"""Mixed-adapter batches through LoRA's batched plan (`LoraDelta.routed_plan`) and the plan each layer
keeps between forwards of one routing (`AdaptedLayer._routed_plan`): every routed output equals the
samples run one by one with their own adapter, on encoder batches and on one-token decode steps with
a KV cache, with rows that have no adapter and adapters of different ranks; the kept plan never
serves weights that changed since it was built; gradients under autograd are each adapter's own."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import petkit
from petkit.core.layer import AdaptedLayer
from petkit.methods.lora import LoraDelta
from petkit.models.calls import cache_argument, find_cache
from petkit.testing import tiny_batch, tiny_bert, tiny_llama

NAMES = ["a", "b", None, "c", "a", "c"]  # interleaved, a row without an adapter, ranks 4 / 2 / 8


def _adapted(make):
    am = petkit.adapt(make(), petkit.LoraConfig(r=4, alpha=8, targets="all-linear"), name="a")
    am.add(petkit.LoraConfig(r=2, alpha=4, targets=["attn.q", "attn.v"]), name="b")
    am.add(petkit.LoraConfig(r=8, alpha=4, targets="all-linear", rslora=True), name="c")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in am.named_parameters():
            if n.endswith((".A", ".B")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return am.eval()


def _alone(am, name, run):
    """run() with only `name` active (None: the base alone)."""
    if name is None:
        with am.disabled():
            return run()
    am.set_active(name)
    return run()


def _kept(am) -> int:
    return sum(bool(m._kept_plans) for m in am.modules() if isinstance(m, AdaptedLayer))


def _check_encoder(am, batch, names=NAMES):
    with torch.no_grad():
        mixed = am(**batch, adapter_names=names).logits
        for i, n in enumerate(names):
            one = {k: v[i:i + 1] for k, v in batch.items()}
            alone = _alone(am, n, lambda: am(**one).logits)
            torch.testing.assert_close(mixed[i:i + 1], alone, atol=1e-5, rtol=1e-4)
    return mixed


def test_encoder_batch_equals_each_sample_alone_and_keeps_its_plan():
    am = _adapted(tiny_bert)
    batch = tiny_batch(am, batch_size=len(NAMES), seq_len=8)
    first = _check_encoder(am, batch)
    lora = [m for m in am.modules() if isinstance(m, AdaptedLayer) and isinstance(m.deltas["a"], LoraDelta)]
    assert _kept(am) == len(lora) > 0  # the classifier head (a HeadDelta) takes the per-group path
    torch.testing.assert_close(_check_encoder(am, batch), first, atol=0, rtol=0)  # from the kept plans


def test_decode_steps_with_kv_cache_equal_each_row_alone():
    am = _adapted(tiny_llama)
    B, prompt, steps = len(NAMES), 5, 4
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, am.config.vocab_size, (B, prompt + steps), generator=g)

    arg = cache_argument(am.base.forward)

    def decode(model, rows, **kw):
        """Prefill the prompt, then feed one token per row per step; the logits of every step."""
        with torch.no_grad():
            out = model(input_ids=ids[rows, :prompt], use_cache=True, **kw)
            logits = [out.logits[:, -1]]
            for t in range(prompt, prompt + steps):
                out = model(input_ids=ids[rows, t:t + 1], use_cache=True, **{arg: find_cache(out)}, **kw)
                logits.append(out.logits[:, -1])
        return torch.stack(logits, 1)

    mixed = decode(am, slice(None), adapter_names=NAMES)
    assert _kept(am) > 0
    for i, n in enumerate(NAMES):
        alone = _alone(am, n, lambda: decode(am, slice(i, i + 1)))
        torch.testing.assert_close(mixed[i:i + 1], alone, atol=1e-5, rtol=1e-4)


def test_kept_plan_sees_in_place_updates_and_new_weights():
    am = _adapted(tiny_bert)
    batch = tiny_batch(am, batch_size=len(NAMES), seq_len=8)
    before = _check_encoder(am, batch)
    # One adapter's B on one layer, changed in place between two routed forwards (an optimizer step does the same).
    B = am.layer("bert.encoder.layer.0.attention.self.query").deltas["c"].B
    with torch.no_grad():
        B.add_(1)
    after = _check_encoder(am, batch)
    assert not torch.allclose(after[3], before[3])
    torch.testing.assert_close(after[:3], before[:3], atol=1e-6, rtol=0)  # rows without "c" unchanged

    # A dtype round trip rounds the weights without bumping their versions.
    am.to(torch.bfloat16).to(torch.float32)
    _check_encoder(am, batch)
    # A new adapter under an old name; a load.
    am.delete("b")
    am.add(petkit.LoraConfig(r=2, targets=["attn.q"]), name="b")
    with torch.no_grad():
        for n, p in am.adapter_parameters("b").items():
            if n.endswith(".B"):
                p.normal_()
    _check_encoder(am, batch)
    state = {k: v + 0.5 if k.endswith(".A") else v for k, v in am.state_dict().items()}
    am.load_state_dict(state, assign=True)
    _check_encoder(am, batch)


def test_copies_and_pickles_leave_kept_plans_behind():
    am = _adapted(tiny_bert)
    batch = tiny_batch(am, batch_size=len(NAMES), seq_len=8)
    names = ["b", None, "b", None, "b", "b"]  # layers without "b" keep the base layer itself as their plan
    _check_encoder(am, batch, names)
    pickle.dumps(am)  # a kept plan (a closure) is not part of the model's state
    twin = copy.deepcopy(am)
    with torch.no_grad():
        for layer in twin.modules():
            if isinstance(layer, AdaptedLayer):
                layer.base_layer.weight.mul_(2)  # the twin's base weights, which no kept plan guards
    _check_encoder(twin, batch, names)


@pytest.mark.parametrize("names", [NAMES, ["c", "c", "a", "a", "b", "b"]])
@pytest.mark.parametrize("seq_len", [8, 1])  # one token per sample takes the grouped layout
def test_gradients_are_each_adapters_own(names, seq_len):
    am = _adapted(tiny_bert)
    for n in "abc":
        am.set_trainable(n)
    batch = tiny_batch(am, batch_size=len(names), seq_len=seq_len)
    proj = torch.randn(len(names), am.config.num_labels)
    with torch.no_grad():
        am(**batch, adapter_names=names)  # leaves kept plans behind: a forward with autograd must not use them
    am.zero_grad(set_to_none=True)
    (am(**batch, adapter_names=names).logits * proj).sum().backward()
    got = {n: p.grad.clone() for n, p in am.named_parameters() if p.grad is not None}
    am.zero_grad(set_to_none=True)
    for i, n in enumerate(names):
        if n is not None:
            one = {k: v[i:i + 1] for k, v in batch.items()}
            am.set_active(n)
            (am(**one).logits * proj[i:i + 1]).sum().backward()
    want = {n: p.grad for n, p in am.named_parameters() if p.grad is not None}
    assert set(got) == set(want) and any(k.endswith(".c.A") for k in want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-4)


def test_two_alternating_routings_both_keep_their_plans():
    """A server alternates the newcomers' prefill and the running batch's decode step: neither may evict the
    other's plan (each rebuild copies every routed adapter's factors), while a third routing evicts the oldest."""
    am = _adapted(tiny_bert)
    batch = tiny_batch(am, batch_size=len(NAMES), seq_len=8)
    layer = next(m for m in am.modules() if isinstance(m, AdaptedLayer) and "a" in m.deltas)
    routings = [NAMES, ["c", "c", "a", "a", "b", "b"], ["b"] * len(NAMES)]
    with torch.no_grad():
        am(**batch, adapter_names=routings[0])
        am(**batch, adapter_names=routings[1])
        plans = dict(layer._kept_plans)
        assert len(plans) == 2
        am(**batch, adapter_names=routings[0])  # served from its kept plan
        assert {k: v[2] for k, v in layer._kept_plans.items()} == {k: v[2] for k, v in plans.items()}
        am(**batch, adapter_names=routings[2])
        assert len(layer._kept_plans) == 2 and tuple(routings[1]) not in [k[0] for k in layer._kept_plans]
    _check_encoder(am, batch, routings[2])
