"""Every method adapts, runs forward and backward on a float64, bfloat16 or float16 base, its trainable
parameters in the base's dtype (they were built in float32 and the matmuls failed on mixed dtypes)."""

from __future__ import annotations

import pytest
import torch

import petkit
from petkit.core.errors import TargetError
from petkit.core.registry import all_methods
from petkit.testing import tiny_batch, tiny_bert, tiny_llama


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_every_method_trains_on_a_base_of_another_dtype(dtype):
    ran, failed = [], []
    for method in all_methods():
        for family, build in (("llama", tiny_llama), ("bert", tiny_bert)):
            try:
                am = petkit.adapt(build().to(dtype), method.config())
            except TargetError:  # refused for this architecture whatever the dtype (the matrix tests pin why)
                continue
            try:
                am.train()
                am(**tiny_batch(am.base)).loss.backward()
                dtypes = {p.dtype for p in am.trainable_parameters()}
                assert dtypes == {dtype}, f"trainable parameters in {dtypes}"
                assert all(p.grad is not None for p in am.trainable_parameters() if p.requires_grad)
                ran.append(method.name)
            except Exception as exc:  # collect all, so one run names every method that fails
                failed.append(f"{method.name} on {family}: {type(exc).__name__}: {str(exc)[:120]}")
    assert not failed, "\n".join(failed)
    assert len(set(ran)) >= len(all_methods()) - 2  # HST (ViT only) and at most one more refused on both


def test_an_adapter_on_a_float64_base_computes_what_it_computes_in_float32():
    batch = tiny_batch(tiny_bert())
    am32 = petkit.adapt(tiny_bert(), petkit.LoraConfig(r=2))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in am32.trainable_parameters():
            p.normal_(0, 0.3)
    am64 = petkit.adapt(tiny_bert().to(torch.float64), petkit.LoraConfig(r=2))
    am64.load_state_dict(am32.state_dict())
    out64 = am64(**batch).logits
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), am32(**batch).logits, rtol=1e-5, atol=1e-6)
