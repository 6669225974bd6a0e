"""The moral direction (petkit.analysis.moral) and `petkit probe moral`, on synthetic embeddings and a
tiny random BERT; one slow test on MiniLM's real weights."""

from __future__ import annotations

import pytest
import torch

from petkit.analysis.embed import sentence_embeddings
from petkit.analysis.moral import NEGATIVE, NEUTRAL, POSITIVE, VERBS, MoralDirection, template_embeddings
from petkit.cli.main import main
from petkit.core.errors import AdapterFileError, BaseModelMismatch, ConfigError
from petkit.testing import tiny_bert, tiny_tokenizer


def synthetic(flip: bool, seed: int = 0) -> torch.Tensor:
    """Positive verbs around +v, negative around −v, neutral near 0, in 16-d; `flip` mirrors everything."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(16, generator=g)
    side = torch.tensor([1.0 if w in POSITIVE else -1.0 if w in NEGATIVE else 0.0 for w in VERBS])
    emb = side[:, None] * v + 0.2 * torch.randn(len(VERBS), 16, generator=g)
    return -emb if flip else emb


@pytest.mark.parametrize("flip", [False, True])
def test_sign_rule_makes_kill_negative_whatever_the_pca_sign(flip):
    # catches: PC1 used with the sign SVD happens to give it (one of the mirrored cases scores kill > 0)
    for rule in ("cluster", "labels"):
        d = MoralDirection.from_embeddings(synthetic(flip), VERBS, sign_rule=rule)
        scores = dict(zip(VERBS, d.project(synthetic(flip)).tolist()))
        assert scores["kill"] < 0 < scores["smile"]
        assert all(scores[w] > 0 for w in POSITIVE) and all(scores[w] < 0 for w in NEGATIVE)
        assert max(abs(s) for s in scores.values()) == pytest.approx(1.0)  # scaled by the largest |PC1|
        assert d.explained_variance[0] > 0.5


def test_fit_checks_its_input():
    emb = synthetic(False)
    without_kill = [i for i, w in enumerate(VERBS) if w != "kill"]
    with pytest.raises(ConfigError, match="needs 'kill'"):
        MoralDirection.from_embeddings(emb[without_kill], [VERBS[i] for i in without_kill])
    with pytest.raises(ConfigError, match="sign_rule"):
        MoralDirection.from_embeddings(emb, VERBS, sign_rule="vote")
    neutral = [i for i, w in enumerate(VERBS) if w in NEUTRAL]
    with pytest.raises(ConfigError, match="known positive and negative"):
        MoralDirection.from_embeddings(emb[neutral], list(NEUTRAL), sign_rule="labels")


@pytest.fixture(scope="module")
def tiny():
    return tiny_bert(num_labels=2), tiny_tokenizer()


def test_template_embeddings_average_the_filled_templates(tiny):
    # catches: templates not filled in, or one template standing for all of them
    model, tok = tiny
    templates = ("should i {}?", "may i {}?")
    got = template_embeddings(model, tok, ["smile", "kill"], templates=templates)
    want = sentence_embeddings(model, tok, ["should i kill?", "may i kill?"], normalize=True).mean(0)
    assert torch.allclose(got[1], want, atol=1e-5)
    with pytest.raises(ConfigError, match="'{}'"):
        template_embeddings(model, tok, ["smile"], templates=("no slot",))


def test_direction_round_trip_scores_and_bad_input(tiny, tmp_path):
    model, tok = tiny
    d = MoralDirection.fit(model, tok)
    scores = d.score(model, tok, ["kill time", "kill people"])
    d.save(tmp_path / "moral", model)
    again = MoralDirection.load(tmp_path / "moral", model)
    assert torch.allclose(again.score(model, tok, ["kill time", "kill people"]), scores)
    assert again.verbs == list(VERBS) and again.explained_variance == d.explained_variance
    other = tiny_bert(num_labels=2, seed=1)
    with pytest.raises(BaseModelMismatch, match="moral_direction"):
        MoralDirection.load(tmp_path / "moral", other)
    with pytest.raises(BaseModelMismatch, match="fitted with another model"):
        d.score(other, tok, ["kill time"])
    with pytest.raises(AdapterFileError, match="holds no moral_direction"):
        MoralDirection.load(tmp_path / "nothing", model)
    with pytest.raises(ConfigError, match="empty"):
        d.score(model, tok, [])
    with pytest.raises(ConfigError, match=r"layer\(s\) \[5\] do not exist"):
        MoralDirection.fit(model, tok, layer=5)


def test_cli_probe_moral(tiny, tmp_path, capsys):
    model, tok = tiny
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    direction = tmp_path / "direction"
    argv = ["probe", "moral", "--model", str(folder), "--direction", str(direction)]
    assert main(argv + ["--fit", "kill time", "kill people"]) == 0
    out = capsys.readouterr().out
    assert "fitted the moral direction on 64 verbs" in out and "kill people" in out
    assert main(argv + ["kill time"]) == 0  # loads the saved direction
    out = capsys.readouterr().out
    assert "fitted" not in out and out.strip().startswith("kill time")
    for extra, message in [([], "no phrases to score"), (["--fit", "--layer", "9", "x"], "layer(s) [9] do not exist"),
                           ([" "], "empty")]:
        assert main(argv + extra) == 2
        assert message in capsys.readouterr().err
    other = tmp_path / "other"
    tiny_bert(num_labels=2, seed=1).save_pretrained(other)
    tok.save_pretrained(other)
    assert main(["probe", "moral", "--model", str(other), "--direction", str(direction), "x"]) == 2
    assert "does not fit this model" in capsys.readouterr().err


@pytest.mark.slow
def test_minilm_direction_orders_the_polar_verbs_and_contexts():
    from petkit.models import load_model, load_tokenizer

    model, tok = load_model("minilm", task="base"), load_tokenizer("minilm")
    d = MoralDirection.fit(model, tok)
    scores = dict(zip(VERBS, d.project(template_embeddings(model, tok, VERBS)).tolist()))
    polar = [w for w in VERBS if w in POSITIVE or w in NEGATIVE]
    assert sum((scores[w] > 0) == (w in POSITIVE) for w in polar) / len(polar) > 0.9
    time, people = d.score(model, tok, ["kill time", "kill people"]).tolist()
    assert time > people
