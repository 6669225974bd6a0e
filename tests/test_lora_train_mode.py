"""LoRA, DoRA and PiSSA in training mode (dropout on) against the real `peft` package: the outputs and
the gradients of every trainable tensor, on each route petkit's linear forward can take.

Routes: "single" (one adapter: LoRA and PiSSA run the fused kernel, DoRA its own forward), "stacked"
(a plain LoRA adapter active after it: the unfused `_low_rank` / DoRA forward in the layer's loop)
and "mixed" (a mixed-adapter batch with a base-only row: dropout turns the batched kernel off, so each
group takes the per-group `routed` fallback).

Identical dropout masks without patching anything: both sides draw each adapter's mask as one
`bernoulli_` over a tensor of that layer input's shape (PEFT's nn.Dropout and petkit's unfused routes
through F.dropout, petkit's kernel through `_dropout_mask`), layer by layer in the same order, from
the same seed. The tiny models have no other dropout that draws (Llama's p=0 attention dropout draws
nothing; GPT-2's dropout modules are set to p=0 before adapting). `assert_dropout_matters` shows the
masks are not trivially all ones.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

peft = pytest.importorskip("peft")

import petkit  # noqa: E402
from test_interop_peft import FAMILIES, assert_close, perturb  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

GRAD_RTOL = 1e-4  # outputs: assert_close, 1e-5 absolute
IDS = torch.randint(0, 60, (3, 7), generator=torch.Generator().manual_seed(1))
PROJ = torch.randn(3, 7, 60, generator=torch.Generator().manual_seed(2))  # loss = <logits, PROJ>
PEFT_LEAF = {"A": "lora_A", "B": "lora_B", "magnitude": "lora_magnitude_vector"}
METHODS = {
    "lora": dict(),
    "dora": dict(use_dora=True),
    "pissa": dict(init_lora_weights="pissa"),
}


def without_dropout(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


def build(family: str) -> nn.Module:
    return without_dropout(FAMILIES[family].build())


def peft_and_petkit(family: str, method: str, route: str, folder):
    """A PEFT model with trained-like weights, and petkit's copy loaded from its file, both in train mode."""
    fam = FAMILIES[family]
    pm = peft.get_peft_model(build(family), peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5,
                                                            target_modules=fam.linear, task_type=fam.task,
                                                            **METHODS[method]))
    if route == "stacked":
        pm.add_adapter("second", peft.LoraConfig(r=2, lora_alpha=4, lora_dropout=0.3, target_modules=fam.linear,
                                                 task_type=fam.task))
        pm.base_model.set_adapter(["default", "second"])
    perturb(p for p in pm.parameters() if p.requires_grad)
    pm.save_pretrained(folder)
    am = petkit.load(build(family), folder, trainable=True)
    if route == "stacked":
        petkit.load(am, folder / "second", name="second", trainable=True)
        am.set_active(["default", "second"])
    return pm.train(), am.train()


def run(model, ids, proj, seed: int = 7, **kwargs):
    """Logits and the gradients of <logits, proj> with respect to every trainable tensor."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(input_ids=ids, **kwargs).logits
    (out * proj).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def peft_name(petkit_name: str) -> str:
    # base.<path>.deltas.<adapter>.<A|B|magnitude>  ->  base_model.model.<path>.<lora_A|...>.<adapter>.weight
    path, adapter_and_leaf = petkit_name.removeprefix("base.").split(".deltas.")
    adapter, leaf = adapter_and_leaf.split(".")
    return f"base_model.model.{path}.{PEFT_LEAF[leaf]}.{adapter}.weight"


def assert_same_gradients(petkit_grads: dict, peft_grads: dict) -> None:
    assert {peft_name(n) for n in petkit_grads} == set(peft_grads)
    for n, g in petkit_grads.items():
        want = peft_grads[peft_name(n)]
        err = ((g - want).abs().max() / want.abs().max()).item()
        assert err < GRAD_RTOL, f"gradient of {n} differs by {err:.3g} (relative)"


def assert_dropout_matters(am, ids, train_logits) -> None:
    am.eval()
    with torch.no_grad():
        eval_logits = am(input_ids=ids).logits
    am.train()
    assert (train_logits - eval_logits).abs().max() > 1e-3, "dropout does not change the output"


@pytest.mark.parametrize("route", ["single", "stacked"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_training_matches_peft(family, method, route, tmp_path):
    pm, am = peft_and_petkit(family, method, route, tmp_path)
    want, peft_grads = run(pm, IDS, PROJ)
    got, petkit_grads = run(am, IDS, PROJ)
    assert_close(got, want)
    assert_same_gradients(petkit_grads, peft_grads)
    assert_dropout_matters(am, IDS, got)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_training_mixed_batch_matches_peft(family, method, tmp_path):
    # Rows 0-1 run the adapter and row 2 the base alone. The base row draws no mask, so petkit's masks
    # are PEFT's for the first two rows run by themselves (PEFT refuses adapter_names with DoRA). The
    # base row is the original model (PEFT's own base under PiSSA is the residual W − s·B0A0).
    pm, am = peft_and_petkit(family, method, "single", tmp_path)
    want, peft_grads = run(pm, IDS[:2], PROJ[:2])
    with torch.no_grad():
        want_base = build(family)(input_ids=IDS[2:]).logits
    got, petkit_grads = run(am, IDS, PROJ, adapter_names=["default", "default", None])
    assert_close(got[:2], want)
    assert_close(got[2:], want_base)
    assert_same_gradients(petkit_grads, peft_grads)
    assert_dropout_matters(am, IDS[:2], got[:2])


def test_pissa_dropout_leaves_the_residual_base_whole_on_every_path():
    # Issue 15: with dropout, the unfused path applied PiSSA's −s·B0A0 to the dropped input, so at
    # init its output was exactly the base's while the fused kernel's (like PEFT's) was not.
    torch.manual_seed(0)
    am = petkit.adapt(nn.Sequential(nn.Linear(16, 16)),
                      petkit.LoraConfig(r=4, alpha=4, init="pissa", dropout=0.5, targets=["0"])).train()
    base, delta = am.base[0].base_layer, am.base[0].deltas["default"]
    x = torch.randn(3, 16)
    torch.manual_seed(1)
    mask = F.dropout(torch.ones_like(x), 0.5, True)
    # PEFT: W_res x + b + s·BA·drop(x), with the residual base weight W_res = W − s·B0A0
    s = delta.scale
    residual = base.weight - s * delta.B0 @ delta.A0
    want = F.linear(x, residual, base.bias) + s * F.linear(F.linear(x * mask, delta.A), delta.B)
    with torch.no_grad():
        torch.manual_seed(1)
        fused = delta.fused_forward(base, x)
        torch.manual_seed(1)
        unfused = delta(base, x, base(x))
        assert (want - base(x)).abs().max() > 0.1
    assert_close(fused, want)
    assert_close(unfused, want)
