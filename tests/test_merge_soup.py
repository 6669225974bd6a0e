"""Model soups: uniform means, the greedy rule (≥ by default, > behind a flag), adapter soups in ΔW space."""

from __future__ import annotations

import pytest
import torch

import petkit
from petkit.merge import adapter_soup, greedy_soup, uniform_soup
from petkit.testing import TINY_MODELS, tiny_lora_family


def test_uniform_soup_is_the_mean_and_a_soup_of_copies_is_the_model():
    model = TINY_MODELS["bert"](seed=0)
    sd = model.state_dict()
    soup = uniform_soup([sd, sd, sd])
    for k in sd:
        torch.testing.assert_close(soup[k], sd[k])
    other = TINY_MODELS["bert"](seed=1).state_dict()
    mean = uniform_soup([sd, other])
    key = "bert.encoder.layer.0.attention.self.query.weight"
    torch.testing.assert_close(mean[key], (sd[key] + other[key]) / 2)
    ints = uniform_soup([{"w": torch.ones(2), "ids": torch.arange(3)}, {"w": torch.zeros(2), "ids": torch.arange(3)}])
    assert torch.equal(ints["ids"], torch.arange(3)) and ints["ids"].dtype == torch.long  # equal integer tensors kept
    with pytest.raises(petkit.ConfigError, match="ids is a non-float tensor that differs"):
        uniform_soup([{"ids": torch.arange(3)}, {"ids": torch.arange(1, 4)}])


def _scored(values: dict[str, float]):
    """Ingredients whose 'held-out score' is minus the distance of their single weight to 1."""
    state_dicts = {n: {"w": torch.tensor([v])} for n, v in values.items()}
    return state_dicts, lambda sd: -abs(sd["w"].item() - 1.0)


def test_greedy_adds_an_ingredient_when_the_soup_is_not_worse():
    """Sorted: a (1.5, −0.5), b (0.4, −0.6), c (3.0, −2). a+b → 0.95 (−0.05): kept; a+b+c → 1.63 (−0.63): dropped."""
    state_dicts, evaluate = _scored({"c": 3.0, "b": 0.4, "a": 1.5})
    soup, result = greedy_soup(state_dicts, evaluate)
    assert result.ingredients == ["a", "b"] and [s[2] for s in result.steps] == [True, False]
    assert result.soup_score == pytest.approx(-0.05) and result.soup_score >= max(result.scores.values())
    torch.testing.assert_close(soup["w"], torch.tensor([0.95]))


def test_ties_are_accepted_by_the_paper_and_refused_by_the_official_code():
    state_dicts, evaluate = _scored({"a": 1.0, "b": 1.0})  # the soup scores exactly the best: equal
    assert greedy_soup(state_dicts, evaluate)[1].ingredients == ["a", "b"]
    assert greedy_soup(state_dicts, evaluate, strict=True)[1].ingredients == ["a"]


def _adapters(n=3):
    return tiny_lora_family(n, prefix="r")


def test_adapter_soup_is_at_least_its_best_ingredient_on_held_out_data():
    am, batch = _adapters()

    def evaluate(model):
        with torch.no_grad():
            return -model(**batch).loss.item()

    result = adapter_soup(am, ["r0", "r1", "r2"], evaluate)
    assert result.soup_score >= max(result.scores.values())
    assert result.ingredients[0] == max(result.scores, key=result.scores.get)
    assert "_soup_candidate" not in am.adapters and am.active == ("r0",)  # the active set is restored
    am.set_active("soup")
    assert evaluate(am) == pytest.approx(result.soup_score, abs=1e-5)


def test_uniform_adapter_soup_averages_delta_w_and_heads():
    am, batch = _adapters(2)
    adapter_soup(am, ["r0", "r1"])
    path = "bert.encoder.layer.0.attention.self.query"
    base = am.layer(path).base_layer
    mean = sum(am.layer(path).deltas[n].delta_weight(base) for n in ("r0", "r1")) / 2
    soup = am.layer(path).deltas["soup"]
    torch.testing.assert_close(soup.scale * soup.B @ soup.A, mean, atol=1e-6, rtol=1e-5)
    heads = [am.layer("classifier").deltas[n].module.weight for n in ("r0", "r1", "soup")]
    torch.testing.assert_close(heads[2], (heads[0] + heads[1]) / 2)


def test_a_soup_of_one_is_refused():
    am, _ = _adapters(2)
    with pytest.raises(petkit.ConfigError, match="a soup needs at least two ingredients, got 1"):
        adapter_soup(am, ["r0"])
    with pytest.raises(petkit.ConfigError, match="a soup needs at least two ingredients"):
        uniform_soup([{"w": torch.zeros(1)}])


def test_ingredients_of_different_architectures_are_refused():
    with pytest.raises(petkit.ConfigError, match="ingredient 1 has other tensors than ingredient 0"):
        uniform_soup([TINY_MODELS["bert"](seed=0).state_dict(), TINY_MODELS["gpt2"](seed=0).state_dict()])
    with pytest.raises(petkit.ConfigError, match="w has shapes"):
        uniform_soup([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}])
