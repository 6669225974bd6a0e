"""Ladder side-tuning beyond the generic matrix: pruned init, gates, no backprop through the backbone,
generation, Fisher init, bad input."""

from __future__ import annotations

import pytest
import torch

import petkit
from petkit.methods.lst import init_from_fisher
from petkit.models.structure import layer_stacks
from petkit.models.taps import hidden_of
from petkit.testing import TINY_MODELS, saved_for_backward_bytes, tiny_batch, tiny_gpt2, tiny_model


def adapted(family, **kw):
    base = TINY_MODELS[family](seed=0)
    return petkit.adapt(base, petkit.LstConfig(**{"reduction": 4, **kw})), tiny_batch(base, seed=1)


def _top(score, k):
    return torch.sort(torch.topk(score, k).indices).values


def test_bert_side_layers_are_slices_of_the_backbone_chosen_by_l1():
    am, _ = adapted("bert")
    bert, side = am.base.bert, am.model_deltas["default"].side
    keep_d = _top(bert.embeddings.word_embeddings.weight.abs().sum(0), 8)
    layer = bert.encoder.layer[1].attention.self
    product = (layer.query.weight.abs() * layer.key.weight.abs() * layer.value.weight.abs()).view(2, 16, 32)
    keep_h = _top(product.sum(dim=(0, 2)), 4)
    rows = torch.cat([keep_h, keep_h + 16])  # the same head dims in both heads
    torch.testing.assert_close(side.encoder.layer[1].attention.self.query.weight, layer.query.weight[rows][:, keep_d])
    torch.testing.assert_close(side.encoder.layer[1].attention.self.value.bias, layer.value.bias[rows])
    dense = bert.encoder.layer[1].attention.output.dense
    torch.testing.assert_close(side.encoder.layer[1].attention.output.dense.weight, dense.weight[keep_d][:, rows])
    ffn = bert.encoder.layer[1].intermediate.dense
    keep_f = _top(ffn.weight.abs().sum(1), 16)
    torch.testing.assert_close(side.encoder.layer[1].output.dense.weight,
                               bert.encoder.layer[1].output.dense.weight[keep_d][:, keep_f])
    torch.testing.assert_close(side.encoder.layer[1].output.LayerNorm.weight,
                               bert.encoder.layer[1].output.LayerNorm.weight[keep_d])


def test_llama_grouped_query_attention_keeps_its_heads_aligned():
    am, _ = adapted("llama")
    llama, side = am.base.model, am.model_deltas["default"].side
    attn = llama.layers[0].self_attn
    q = attn.q_proj.weight.abs().view(4, 8, 32)
    kv = (attn.k_proj.weight.abs() * attn.v_proj.weight.abs()).view(2, 8, 32).repeat_interleave(2, dim=0)
    keep_h = _top((q * kv).sum(dim=(0, 2)), 2)
    keep_d = _top(llama.embed_tokens.weight.abs().sum(0), 8)
    kv_rows = torch.cat([keep_h, keep_h + 8])
    torch.testing.assert_close(side.layers[0].self_attn.k_proj.weight, attn.k_proj.weight[kv_rows][:, keep_d])
    assert side.layers[0].self_attn.q_proj.weight.shape == (8, 8)
    torch.testing.assert_close(side.norm.weight, llama.norm.weight[keep_d])


@pytest.mark.parametrize("side_layers", [None, (0, 2)], ids=["every-layer", "layers-0-and-2"])
def test_side_network_equals_the_ladder_computed_step_by_step(side_layers):
    """h = Down_0(E(x)); per side layer j on backbone layer i: h = SideLayer_j(μ_j h + (1 − μ_j) Down_j(h_B,i))
    with h_B,i backbone layer i's output; output Up(h) replaces the last hidden state, which the frozen
    pooler and the head read. Gates away from 1/2, so μ and 1 − μ differ."""
    base = TINY_MODELS["bert"](seed=0, layers=3)
    am = petkit.adapt(base, petkit.LstConfig(reduction=4, side_layers=side_layers))
    batch = tiny_batch(base, seed=1)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    delta, bert = am.model_deltas["default"], am.base.bert
    layers = side_layers or (0, 1, 2)
    with torch.no_grad():
        delta.alphas.copy_(torch.tensor([0.05, -0.08, 0.12][:len(layers)]))
        mine, logits = bert(**inputs).last_hidden_state, am(**batch).logits
        with am.disabled():  # the plain backbone, and the side layers without the adapter's ladder hooks
            backbone = bert(**inputs, output_hidden_states=True).hidden_states  # E(x), then each layer's output
            mask = (1.0 - batch["attention_mask"][:, None, None, :].float()) * torch.finfo(torch.float32).min
            h = delta.down0(backbone[0])
            for j, (i, side_layer) in enumerate(zip(layers, delta.side.encoder.layer)):
                mu = torch.sigmoid(delta.alphas[j] / 0.1)
                h = side_layer(mu * h + (1 - mu) * delta.downs[j](backbone[i + 1]), attention_mask=mask)
            expected = delta.up(h)
    torch.testing.assert_close(mine, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, am.base.classifier(bert.pooler(expected)), atol=1e-5, rtol=1e-5)


def test_gates_start_at_one_half_and_learn():
    am, batch = adapted("bert")
    delta = am.model_deltas["default"]
    assert torch.sigmoid(delta.alphas / delta.temperature).tolist() == [0.5, 0.5]
    am.train()
    am(**batch).loss.backward()
    assert delta.alphas.grad is not None and delta.alphas.grad.abs().sum() > 0


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_no_gradient_enters_the_backbone_and_it_keeps_no_activations(family):
    """Tensors saved for backward: with LST, none is a backbone layer's (only the side network's, the
    head's and the logits'), so training keeps fewer bytes than LoRA on the same batch."""
    am, batch = adapted(family)
    am.train()
    lst = saved_for_backward_bytes(am, batch)
    assert all(p.grad is None for n, p in am.base.named_parameters() if not p.requires_grad)
    taps = am.model_deltas["default"].taps
    am(**batch)
    lora = petkit.adapt(TINY_MODELS[family](seed=0), petkit.LoraConfig(r=2, targets="all-linear"))
    lora.train()
    assert lst < saved_for_backward_bytes(lora, batch)
    assert taps.embedding is None and not taps.outputs  # cleared after each forward: nothing held


def test_generate_with_the_side_networks_own_cache_equals_recomputing():
    am, batch = adapted("llama")
    ids = batch["input_ids"][:2, :5]
    out = am.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                      eos_token_id=None, pad_token_id=0)
    expected = ids
    for _ in range(4):
        with torch.no_grad():
            step = am(input_ids=expected).logits[:, -1].argmax(-1)
        expected = torch.cat([expected, step[:, None]], dim=1)
    assert len(set(expected[:, -4:].flatten().tolist())) > 1  # not a degenerate constant sequence
    torch.testing.assert_close(out, expected)


def test_fisher_init_reads_gradients_and_leaves_the_backbone_as_it_was():
    am, batch = adapted("bert", init="random")
    side = am.model_deltas["default"].side
    random_q = side.encoder.layer[0].attention.self.query.weight.clone()
    flags = {n: p.requires_grad for n, p in am.base.named_parameters()}
    init_from_fisher(am, [batch, tiny_batch(am.base, seed=2)])
    assert {n: p.requires_grad for n, p in am.base.named_parameters()} == flags
    assert all(p.grad is None for p in am.base.parameters())
    fisher_q = side.encoder.layer[0].attention.self.query.weight
    assert not torch.equal(fisher_q, random_q)
    backbone_q = am.base.bert.encoder.layer[0].attention.self.query.weight
    assert all(any(torch.isclose(v, backbone_q).any() for v in row) for row in fisher_q)  # values of the backbone
    with pytest.raises(petkit.ConfigError, match="not an LST adapter"):
        am.add(petkit.LoraConfig(r=2, targets=["query"]), "lora")
        init_from_fisher(am, [batch], name="lora")


# -- bad input --------------------------------------------------------------------------------------

def test_width_the_reduction_does_not_divide_names_the_choices():
    with pytest.raises(petkit.ConfigError, match=r"reduction=3 does not divide the model's hidden size 32, head dim "
                                                 r"16, FFN width 64.*use one of \[2, 4, 8, 16\]"):
        adapted("bert", reduction=3)


@pytest.mark.parametrize("family,kw,message", [
    ("gpt2", {}, "l1 init prunes separate q, k, v.*fused qkv.*use init='random'"),
    ("t5", {}, "LST needs one stack of layers to ladder; T5ForConditionalGeneration has 2"),
    ("vit", {}, "ViTForImageClassification is a vision model: use HST"),
])
def test_what_lst_cannot_ladder_is_refused_with_the_fix(family, kw, message):
    with pytest.raises(petkit.TargetError, match=message):
        adapted(family, **kw)


def test_any_one_stack_model_gets_a_side_network_of_its_own_class():
    """GPT-2 (fused qkv, position table, random init), OPT (its LM calls the decoder, not OPTModel):
    the side network is the backbone's class at 1/r width, its first layer reads Down_0(E(x)), and its
    own embedding stage is frozen (never read)."""
    for model in (tiny_gpt2(), tiny_model("opt")):
        batch = tiny_batch(model)
        am = petkit.adapt(model, petkit.LstConfig(reduction=2, init="random"))
        delta = am.model_deltas["default"]
        assert type(delta.side) is type(model.base_model) and delta.side.config.hidden_size * 2 == model.config.hidden_size
        seen = {}
        first = layer_stacks(delta.side)[0][1][0]
        first.register_forward_pre_hook(lambda m, args, kwargs: seen.update(x=hidden_of(args, kwargs)), with_kwargs=True)
        loss = am(**batch).loss
        loss.backward()
        mu = torch.sigmoid(delta.alphas[0] / delta.temperature)
        with torch.no_grad():
            embedding, layer0 = _first_layer(model, batch)
            want = mu * delta.down0(embedding) + (1 - mu) * delta.downs[0](layer0)
        torch.testing.assert_close(seen["x"], want, atol=1e-5, rtol=1e-5)
        kept = {n for n, _ in delta.side.named_buffers() if f"side.{n}" in delta.state_dict()}  # saved, never trained
        assert kept and all(n.split(".")[-2] in ("wte", "wpe", "embed_tokens", "embed_positions") for n in kept), kept
        assert all(p.grad is not None for p in delta.downs.parameters())


def _first_layer(model, batch):
    """What the backbone's layer 0 read (the embedding output E(x)) and wrote, with the adapter off."""
    seen = {}
    layer = layer_stacks(model.base_model)[0][1][0]
    handles = [layer.register_forward_pre_hook(lambda m, a, k: seen.update(x=hidden_of(a, k)), with_kwargs=True),
               layer.register_forward_hook(lambda m, a, o: seen.update(y=o[0] if isinstance(o, tuple) else o))]
    model(**batch)  # LST leaves the backbone's layers as they are
    for handle in handles:
        handle.remove()
    return seen["x"], seen["y"]


def test_side_layers_past_the_model_are_refused():
    with pytest.raises(petkit.ConfigError, match=r"side_layers \[0, 5\] name layers the model lacks: it has 2"):
        adapted("bert", side_layers=[0, 5])


@pytest.mark.parametrize("kw,message", [
    ({"reduction": 0}, "reduction must be a positive integer"),
    ({"side_layers": [1, 0]}, "side_layers must be increasing layer indices"),
    ({"init": "magic"}, "init must be one of l1, random"),
    ({"gate_temperature": 0}, "gate_temperature must be > 0"),
])
def test_bad_configs(kw, message):
    with pytest.raises(petkit.ConfigError, match=message):
        petkit.LstConfig(**kw)
