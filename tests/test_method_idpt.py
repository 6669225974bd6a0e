"""IDPT beyond the generic matrix: the kNN graph, EdgeConv and the DGCNN generator against step-by-step
computations (with padding), the head's input layout, and files written before the paper's generator."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F

import petkit
from petkit.methods.edgeconv import DgcnnGenerator, EdgeConv, knn_graph
from petkit.testing import TINY_MODELS, tiny_batch


def adapted(family, config, **model):
    base = TINY_MODELS[family](seed=0, **model)
    return petkit.adapt(base, config), tiny_batch(base, seed=1)


def tokens_with_padding():
    """3 samples of 6 tokens; the second has 4 real ones, the third 2 (fewer than k = 3)."""
    torch.manual_seed(0)
    valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2, [True] * 2 + [False] * 4])
    return torch.randn(3, 6, 5), valid


# -- step by step, one token and one edge at a time ------------------------------------------------

def neighbours_by_hand(x, valid, k):
    """{(b, i): the k real tokens nearest to token i of sample b (itself included), or all of them}."""
    out = {}
    for b in range(len(x)):
        real = [j for j in range(x.shape[1]) if valid[b, j]]
        for i in real:
            distance = [((x[b, i] - x[b, j]) ** 2).sum().sqrt().item() for j in real]
            out[b, i] = {real[r] for r in sorted(range(len(real)), key=distance.__getitem__)[:k]}
    return out


def batch_norm_by_hand(rows, norm):
    """Training-mode batch norm of a list of vectors: biased variance over exactly these rows."""
    stacked = torch.stack(rows)
    mean, var = stacked.mean(0), stacked.var(0, unbiased=False)
    return [(r - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias for r in rows]


def edgeconv_by_hand(layer, x, valid, k):
    graph = neighbours_by_hand(x, valid, k)
    keys = [(b, i, j) for (b, i), js in graph.items() for j in sorted(js)]
    edges = [layer.edge.weight @ torch.cat([x[b, i], x[b, j] - x[b, i]]) for b, i, j in keys]
    edges = dict(zip(keys, batch_norm_by_hand(edges, layer.norm)))
    out = torch.zeros(*x.shape[:2], layer.edge.out_features)
    for b, i in graph:
        out[b, i] = torch.stack([F.leaky_relu(edges[b, i, j], 0.2) for j in graph[b, i]]).amax(0)
    return out


def generator_by_hand(gen, x, valid):
    levels = []
    for layer in gen.edges:
        x = edgeconv_by_hand(layer, x, valid, gen.k)
        levels.append(x)
    fused = torch.cat(levels, -1)
    keys = [(b, i) for b in range(len(x)) for i in range(x.shape[1]) if valid[b, i]]
    rows = dict(zip(keys, batch_norm_by_hand([gen.fuse.weight @ fused[b, i] for b, i in keys], gen.norm)))
    return torch.stack([torch.stack([F.leaky_relu(rows[b, i], 0.2) for i in range(x.shape[1]) if valid[b, i]]).amax(0)
                        for b in range(len(x))]).view(len(x), gen.m, -1)


def test_knn_graph_equals_a_distance_by_distance_search_and_leaves_padding_out():
    x, valid = tokens_with_padding()
    index, real = knn_graph(x, valid, k=3)
    expected = neighbours_by_hand(x, valid, 3)
    for b in range(3):
        for i in range(6):
            found = {j for j, r in zip(index[b, i].tolist(), real[b, i].tolist()) if r}
            assert found == expected.get((b, i), set()), (b, i)
    assert real[2, 0].sum() == 2 and not real[1, 4:].any()  # 2 real tokens: both, no padding; padding: no edge


def test_edgeconv_equals_an_edge_by_edge_computation_with_masked_batch_statistics():
    x, valid = tokens_with_padding()
    torch.manual_seed(1)
    layer = EdgeConv(5, 4).train()
    with torch.no_grad():
        layer.norm.weight.uniform_(0.5, 1.5)
        layer.norm.bias.normal_()
        mine = layer(x, valid, 3)
    torch.testing.assert_close(mine, edgeconv_by_hand(layer, x, valid, 3), atol=1e-5, rtol=1e-5)
    assert (mine[~valid] == 0).all()


def test_dgcnn_generator_equals_three_edgeconvs_a_fuse_and_a_max_pool_by_hand():
    x, valid = tokens_with_padding()
    torch.manual_seed(2)
    gen = DgcnnGenerator(5, hidden=4, prompts=2, neighbors=3).train()
    with torch.no_grad():
        for norm in [layer.norm for layer in gen.edges] + [gen.norm]:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_()
        mine = gen(x, valid)
        assert mine.shape == (3, 2, 5)
        torch.testing.assert_close(mine, generator_by_hand(gen, x, valid), atol=1e-5, rtol=1e-5)


def test_edgeconv_generator_reads_the_tokens_after_position_0_and_adds_the_positions():
    am, _ = adapted("bert", petkit.IdptConfig(num_virtual_tokens=2, neighbors=3))
    delta = am.model_deltas["default"]
    tokens = torch.randn(2, 5, 32)
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    with torch.no_grad():
        mine = delta.generate_prompts(tokens, padding)
        expected = delta.generator(tokens[:, 1:], ~padding[:, 1:]) + delta.position
        torch.testing.assert_close(mine, expected)
        changed = tokens.clone()
        changed[:, 0] += 10.0  # position 0 is not a node of the graph
        torch.testing.assert_close(delta.generate_prompts(changed, padding), mine)
    assert not torch.allclose(mine[0], mine[1])  # instance-aware


# -- the head ----------------------------------------------------------------------------------

def test_idpt_on_vit_equals_a_hand_written_layer_loop_and_the_papers_head_layout():
    """[CLS ; prompt ; max over the patch tokens] of the final (LayerNormed) features, into the MLP."""
    am, batch = adapted("vit", petkit.IdptConfig(num_virtual_tokens=1, neighbors=4, head_hidden=8))
    am.eval()
    delta, vit = am.model_deltas["default"], am.base.vit
    with torch.no_grad():
        mine = am(**batch)
        with am.disabled():
            hidden = vit.layers[0](vit.embeddings(batch["pixel_values"]))
            prompts = delta.generate_prompts(hidden, None)
            final = vit.layernorm(vit.layers[1](torch.cat([hidden[:, :1], prompts, hidden[:, 1:]], dim=1)))
        features = torch.cat([final[:, 0], final[:, 1], final[:, 2:].amax(dim=1)], dim=-1)
        torch.testing.assert_close(mine.logits, delta.head(features))
        torch.testing.assert_close(mine.loss, F.cross_entropy(mine.logits, batch["labels"]))
        am.base.classifier.weight.add_(1.0)  # the ViT's own head is not read
        torch.testing.assert_close(am(**batch).logits, mine.logits)
    assert am.adapter_config().train_head is False and not any(p.requires_grad for p in am.base.classifier.parameters())


def test_head_input_leaves_padding_and_the_prompts_out_of_the_token_pool():
    am, _ = adapted("bert", petkit.IdptConfig(num_virtual_tokens=2))
    delta = am.model_deltas["default"]
    final = torch.randn(2, 1 + 2 + 4, 32)  # [CLS, p1, p2, t1 … t4]
    padding = torch.tensor([[False] * 5, [False, False, False, True, True]])
    final[1, 5:] = 100.0  # padded tokens, larger than any real one
    final[:, 1:3] = 50.0   # prompts, also larger
    layout = delta.head_input(final, padding)
    for b, real in ((0, 4), (1, 2)):
        expected = torch.cat([final[b, 0], final[b, 1], final[b, 2], final[b, 3:3 + real].amax(0)])
        torch.testing.assert_close(layout[b], expected)


@pytest.mark.parametrize("labels,loss", [
    (1, lambda logits, y: F.mse_loss(logits.view(-1), y)),
    (3, lambda logits, y: F.binary_cross_entropy_with_logits(logits, y)),
], ids=["regression", "multi-label"])
def test_the_loss_follows_the_models_rule_from_the_heads_logits(labels, loss):
    base = TINY_MODELS["bert"](seed=0, num_labels=labels)
    am, batch = petkit.adapt(base, petkit.IdptConfig(neighbors=3)), tiny_batch(base, seed=1)
    am.eval()
    y = torch.rand(4) if labels == 1 else torch.randint(0, 2, (4, labels)).float()
    with torch.no_grad():
        out = am(**{**batch, "labels": y})
        torch.testing.assert_close(out.loss, loss(out.logits, y))


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("config", [
    petkit.IdptConfig(num_virtual_tokens=2, neighbors=3, head_dropout=0.0),
    petkit.IdptConfig(num_virtual_tokens=2, late_layers=2, neighbors=3, head_dropout=0.0),
    petkit.IdptConfig(num_virtual_tokens=2, late_layers=2, generator="mlp", head="model"),
], ids=["edgeconv", "edgeconv-two-late", "mlp-own-head-two-late"])
def test_padding_changes_no_logit(config, train):
    """Padded ids, in eval mode and in training mode (batch norms on batch statistics): the prompts
    see no padding in any late layer, and padding is in no statistic and no pool. The last layer's
    real rows are compared too: the tiny model's pooler and classifier shrink a difference below
    the tolerance of the logits."""
    am, batch = adapted("bert", config, dropout=0.0)
    am.train(train)
    assert batch["attention_mask"][:3].all() and batch["attention_mask"][3].tolist() == [1] * 6 + [0] * 2
    last = []
    am.base.bert.encoder.layer[-1].register_forward_hook(lambda m, a, out: last.append(out[0] if isinstance(out, tuple)
                                                                                       else out))
    with torch.no_grad():
        before = am(**batch).logits
        ids = batch["input_ids"].clone()
        ids[batch["attention_mask"] == 0] = 7
        torch.testing.assert_close(am(**{**batch, "input_ids": ids}).logits, before)
    real = torch.ones(last[0].shape[:2], dtype=torch.bool)
    real[3, -2:] = False  # the padding is the last two rows of the last sample, prompts or not
    torch.testing.assert_close(last[1][real], last[0][real])


# -- petkit's first stand-in, and files written before the paper's generator ---------------------

def test_mlp_prompts_follow_the_formula():
    am, _ = adapted("bert", petkit.IdptConfig(num_virtual_tokens=2, generator_hidden=8, generator="mlp"))
    delta = am.model_deltas["default"]
    tokens = torch.randn(2, 4, 32)
    padding = torch.tensor([[False] * 4, [False, False, True, True]])
    with torch.no_grad():
        mine = delta.generate_prompts(tokens, padding)
        for b, keep in ((0, 4), (1, 2)):
            pooled = F.gelu(delta.read(delta.norm(tokens[b, :keep]))).amax(0)
            torch.testing.assert_close(mine[b], delta.emit(pooled).view(2, 32) + delta.position)


def test_a_file_from_before_the_generator_field_loads_as_the_stand_in(tmp_path):
    am, batch = adapted("bert", petkit.IdptConfig(generator="mlp", head="model", generator_hidden=8))
    with torch.no_grad():
        for p in am.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.1)
        expected = am(**batch).logits
    am.save(tmp_path)
    path = tmp_path / "adapter_config.json"
    saved = json.loads(path.read_text())
    old_fields = ("method", "targets", "exclude", "train_head", "num_virtual_tokens", "late_layers", "generator_hidden")
    entry = saved["adapters"]["default"]
    entry["config"] = {k: entry["config"][k] for k in old_fields}  # what the first IDPT wrote
    path.write_text(json.dumps(saved))
    loaded = petkit.load(TINY_MODELS["bert"](seed=0), tmp_path)
    assert (loaded.adapter_config().generator, loaded.adapter_config().head) == ("mlp", "model")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, expected)


def test_settings_written_by_hand_get_the_papers_defaults():
    from petkit.core.registry import config_from_dict
    config = config_from_dict({"method": "idpt", "num_virtual_tokens": 1})
    assert (config.generator, config.head, config.neighbors, config.train_head) == ("edgeconv", "idpt", 20, False)


# -- bad input --------------------------------------------------------------------------------------

def test_the_papers_head_needs_a_classifier():
    from transformers import BertConfig, BertModel
    base = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64))
    with pytest.raises(petkit.TargetError, match="IDPT's head .* BertModel is not one: use head='model'"):
        petkit.adapt(base, petkit.IdptConfig())
    petkit.adapt(base, petkit.IdptConfig(head="model"))


@pytest.mark.parametrize("kw,message", [
    ({"generator": "dgcnn"}, "generator must be one of edgeconv, mlp"),
    ({"head": "mine"}, "head must be one of idpt, model"),
    ({"neighbors": 0}, "neighbors must be a positive integer"),
    ({"head_hidden": 0}, "head_hidden must be a positive integer"),
    ({"head_dropout": 1.0}, r"head_dropout must be in \[0, 1\)"),
    ({"train_head": True}, "train_head=True trains the model's own head, which head='idpt' does not read"),
])
def test_bad_configs(kw, message):
    with pytest.raises(petkit.ConfigError, match=message):
        petkit.IdptConfig(**kw)


def test_deberta_padding_does_not_change_a_samples_logits():
    """DeBERTa passes each layer a mask it multiplies by (0 = hidden) and relative positions built for
    the input's length: IDPT widens both by the prompts, as copies of position 0's."""
    from petkit.testing import tiny_model

    model = tiny_model("deberta-v2", "classification")
    am = petkit.adapt(model, petkit.IdptConfig(num_virtual_tokens=2, neighbors=3, head_hidden=8)).eval()
    batch = tiny_batch(model, seed=1)  # its last row is padded at the end
    real = int(batch["attention_mask"][-1].sum())
    alone = {"input_ids": batch["input_ids"][-1:, :real], "attention_mask": batch["attention_mask"][-1:, :real]}
    with torch.no_grad():
        torch.testing.assert_close(am(**batch).logits[-1:], am(**alone).logits, atol=1e-5, rtol=1e-5)
