"""OVOR (petkit.continual.ovor): NPOS outlier synthesis, the VOR head epochs, and runs on the toy stream."""

import math

import pytest
import torch
from continual_cases import tokenizer, toy_model, toy_stream

from petkit.continual import ContinualConfig, run_stream
from petkit.continual.model import collate, encode_split
from petkit.continual.learner import make_learner
from petkit.continual.ovor import OVOR, class_outliers, clamp_to_class, kth_distance, npos_outliers
from petkit.core.errors import ConfigError


def cluster(n=40, d=16, seed=0, spread=0.05):
    """Unit-norm features around one direction, so boundary points and the origin are far apart."""
    g = torch.Generator().manual_seed(seed)
    axis = torch.zeros(d)
    axis[0] = 1.0
    x = axis + spread * torch.randn(n, d, generator=g)
    return x / x.norm(dim=1, keepdim=True)


def synthesis(unit, around="boundary", **kw):
    options = {"select": 50, "k": 50, "sample_from": 100, "per_class": 40, "cov": 0.1, **kw}
    return class_outliers(unit, around=around, generator=torch.Generator().manual_seed(1), **options)


def test_outliers_lie_around_boundary_points_or_the_origin():
    """Catches the released code's bug leaking into the paper mode (candidates `cov·ε` around the
    origin, `boundary` computed but never added) and a flag that does not switch it."""
    unit = cluster()
    d, cov = unit.shape[1], 0.1
    paper = synthesis(unit)
    offsets = paper.candidates.view(len(paper.boundary), -1, d) - paper.boundary[:, None, :]
    assert float(offsets.norm(dim=-1).mean()) == pytest.approx(cov * math.sqrt(d), rel=0.15)
    assert (paper.candidates.mean(0) - paper.boundary.mean(0)).norm() < 0.05
    origin = synthesis(unit, around="origin")
    assert origin.candidates.mean(0).norm() < 0.05
    assert float(origin.candidates.norm(dim=1).mean()) == pytest.approx(cov * math.sqrt(d), rel=0.15)
    assert torch.cdist(origin.candidates, unit).min() > 0.5  # nowhere near the class


def test_boundary_points_are_the_sparsest_features():
    """Catches picking the densest features (topk smallest) as boundary points."""
    dense = cluster(n=30, spread=0.01)
    far = cluster(n=6, seed=3, spread=0.6)  # scattered: large distance to their K-th neighbour
    unit = torch.cat([dense, far])
    s = synthesis(unit, select=6, k=5)
    picked = {tuple(p.tolist()) for p in s.boundary}
    assert picked == {tuple(p.tolist()) for p in far}


def test_kept_outliers_are_the_candidates_farthest_from_the_class():
    """Catches keeping the nearest candidates (topk smallest) or ranking them by the wrong distance."""
    unit = cluster()
    s = synthesis(unit, select=8, k=5, per_class=30)
    k = clamp_to_class(5, len(unit))
    brute = torch.cdist(s.candidates, unit).sort(dim=1).values[:, k - 1]
    torch.testing.assert_close(s.distance, brute)
    kept = torch.zeros(len(s.candidates), dtype=torch.bool)
    kept[s.kept] = True
    assert kept.sum() == 30
    assert brute[kept].min() >= brute[~kept].max()


def test_kth_distance_skips_each_point_itself_and_select_k_are_clamped():
    """Catches a point counted as its own nearest neighbour (every 1-NN distance 0, so boundary
    points would be arbitrary) and select/K not clamped to small classes (kthvalue out of range)."""
    line = torch.tensor([[0.0], [1.0], [3.0]])
    assert kth_distance(line, line, 1, exclude_self=True).tolist() == [1.0, 1.0, 2.0]
    assert kth_distance(line, line, 1).tolist() == [0.0, 0.0, 0.0]
    assert [clamp_to_class(50, n) for n in (1, 2, 7, 100, 1000)] == [1, 1, 3, 50, 50]
    s = synthesis(cluster(n=6), select=50, k=50, per_class=40)
    assert len(s.boundary) == 3 and len(s.kept) == 40
    single = synthesis(cluster(n=1), per_class=5)  # a class of one example is its own boundary point
    assert len(single.boundary) == 1 and len(single.kept) == 5


def test_outliers_reach_the_head_at_the_scale_of_the_class_features():
    """Catches outliers left on the unit-norm scale (or scaled by another class's norm) while the
    head reads raw features: they would sit far inside the classes' shells."""
    unit = cluster(n=20)
    norms = torch.linspace(9.0, 11.0, 20)[:, None]
    features = torch.cat([unit * norms, unit * norms * 0.1])
    labels = torch.tensor([0] * 20 + [1] * 20)
    options = {"select": 5, "k": 5, "sample_from": 20, "per_class": 7, "cov": 0.1}
    out = npos_outliers(features, labels, generator=torch.Generator().manual_seed(1), **options)
    s0 = class_outliers(unit, around="boundary", generator=torch.Generator().manual_seed(1), **options)
    torch.testing.assert_close(out[:7], s0.candidates[s0.kept] * 10.0)
    assert 0.9 < float(out[7:].norm(dim=1).mean()) < 1.4  # class 1's mean norm is 1: its own scale, not class 0's


def small_data(stream, t):
    task = stream.tasks[t]
    data = encode_split(tokenizer(), task, task.train, stream.offsets[t], 64)

    def batches(encoded, shuffle, salt=0, size=None):
        for i in range(0, len(encoded), size or 8):
            yield collate(encoded, range(i, min(i + (size or 8), len(encoded))), 0)
    return data, batches


def test_vor_changes_only_the_current_task_head_rows():
    """Catches VOR training old (or future) classes' rows, e.g. CE over every class seen so far, or a
    prompt that moves during the head-only epochs."""
    stream = toy_stream()
    torch.manual_seed(0)
    model = toy_model(stream)
    learner = OVOR(vor_epochs=3, vor_lr=0.05)
    learner.setup(model, stream)
    prompt = learner.am.model_deltas["prompt"].table.detach().clone()
    head = model.head.weight.detach().clone(), model.head.bias.detach().clone()
    data, batches = small_data(stream, 1)
    learner.end_task(1, data, batches)
    rows = stream.classes_of(1)
    others = [c for c in range(stream.num_classes) if c not in rows]
    assert torch.equal(model.head.weight[others], head[0][others])
    assert torch.equal(model.head.bias[others], head[1][others])
    assert not torch.allclose(model.head.weight[rows.start:rows.stop], head[0][rows.start:rows.stop])
    assert torch.equal(learner.am.model_deltas["prompt"].table, prompt)


def toy_run(scenario="class", output_dir=None, resume=False, method="ovor", **options):
    stream = toy_stream(scenario)
    torch.manual_seed(0)  # the head's init
    model = toy_model(stream)
    cfg = ContinualConfig(method=method, options=options, epochs=2, lr=5e-3, batch_size=8,
                          output_dir=None if output_dir is None else str(output_dir))
    return run_stream(cfg, model=model, tokenizer=tokenizer(), stream=stream, progress=False, resume=resume)


def test_vor_lowers_the_id_energy_on_the_toy_stream():
    """Catches a sign error in the energy or its margin (the ID term would push E_id up) and a report
    that measures after VOR what it measured before."""
    result = toy_run(vor_epochs=10, vor_lr=0.01)
    extra = result.extra
    for key in ("train", "test"):
        before, after = extra[f"energy_id_{key}_before"], extra[f"energy_id_{key}_after"]
        assert len(before) == 3 and all(a < b - 0.05 for a, b in zip(after, before)), (key, before, after)


def test_runs_in_the_task_scenario_and_reports_every_task():
    """Catches a learner that refuses or breaks the task-incremental scenario (scores by task id)."""
    result = toy_run("task", vor_epochs=2)
    assert [len(r) for r in result.matrix] == [1, 2, 3]
    assert all(len(v) == 3 for v in result.extra.values())
    assert result.extra["outliers"] == [80, 80, 80]  # 40 per class, 2 classes per task


def test_vor_epochs_zero_is_plain_oneprompt():
    """Catches VOR work (head training, or randomness drawn from the global RNG) when vor_epochs=0:
    the run must be a sequential prefix adapter's, to the last digit."""
    plain = toy_run(vor_epochs=0, init="normal")
    prefix = toy_run(method="seq-lora", adapter={"method": "prefix", "num_virtual_tokens": 10, "projection": False})
    assert plain.matrix == prefix.matrix
    assert plain.extra["energy_id_train_before"] == plain.extra["energy_id_train_after"]


def test_resumed_run_ends_as_an_uninterrupted_one(tmp_path, monkeypatch):
    """Catches learner state that does not survive a resume (the prompt or head not saved, outlier
    randomness that depends on how many tasks this process has run)."""
    options = {"vor_epochs": 3, "vor_lr": 0.01}
    whole = toy_run(output_dir=tmp_path / "whole", **options)
    begin = OVOR.begin_task

    def crash_at_task_2(self, t):
        if t == 2:
            raise KeyboardInterrupt
        begin(self, t)
    monkeypatch.setattr(OVOR, "begin_task", crash_at_task_2)
    with pytest.raises(KeyboardInterrupt):
        toy_run(output_dir=tmp_path / "cut", **options)
    monkeypatch.setattr(OVOR, "begin_task", begin)
    resumed = toy_run(output_dir=tmp_path / "cut", resume=True, **options)
    assert resumed.matrix == whole.matrix
    assert resumed.extra == whole.extra


def test_uniform_init_is_the_default_and_normal_the_alternative():
    """Catches the init option being ignored (petkit's N(0, 1) left in place for OVOR's U(0, 1))."""
    stream = toy_stream()
    tables = {}
    for init in ("uniform", "normal"):
        learner = OVOR(init=init)
        learner.setup(toy_model(stream), stream)
        tables[init] = learner.am.model_deltas["prompt"].table
    assert tables["uniform"].min() >= 0 and tables["uniform"].max() <= 1
    assert tables["normal"].min() < 0
    assert OVOR().init == "uniform"


@pytest.mark.parametrize("options, words", [
    ({"vor_epochs": -1}, "vor_epochs must be an integer ≥ 0"),
    ({"outliers": "center"}, "outliers must be one of"),
    ({"init": "zeros"}, "init must be one of"),
    ({"cov": 0}, "cov must be a positive number"),
    ({"prompt_length": 0}, "prompt_length must be a positive integer"),
    ({"select": 2.5}, "select must be a positive integer"),
    ({"vor_weight": -0.1}, "vor_weight must be a number ≥ 0"),
    ({"tau_id": float("nan")}, "tau_id must be a finite number"),
    ({"prompt": 10}, "ovor has no option 'prompt'"),
])
def test_options_are_checked(options, words):
    """Catches a bad setting accepted silently (an unknown outliers mode would quietly mean 'origin')."""
    with pytest.raises(ConfigError) as err:
        make_learner("ovor", options)
    assert words in str(err.value)
