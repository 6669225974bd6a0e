"""Tiny Time Mixers (petkit.timeseries) on synthetic sine and trend series: shapes, scaling, windows,
the frozen backbone of head probing, channel mixing only at fine-tuning, files, the CLI's errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from petkit.cli.main import main
from petkit.core.errors import ConfigError
from petkit.timeseries import TinyTimeMixer, TTMConfig, count_parameters, with_decoder_mode
from petkit.timeseries.data import Series, few_shot, split_bounds, split_windows, windows
from petkit.timeseries.evaluate import naive_forecaster, score_test_split, ttm_forecaster
from petkit.timeseries.metrics import mase, mase_scale, seasonal_naive
from petkit.timeseries.model import merge_patches, patchify, split_patches, standard_scale
from petkit.timeseries.storage import load_ttm, save_ttm
from petkit.timeseries.train import FitSettings, finetune, pretrain, set_trainable

TINY = TTMConfig(context_length=16, horizon=4, patch_length=4, d_model=8, adaptive_levels=2, num_layers=1,
                 decoder_d_model=8, decoder_layers=1, dropout=0.0, head_dropout=0.0)


def sine(n=160, period=8, trend=0.0, offset=0.0, amplitude=1.0, noise=0.05, seed=0, name="sine", frequency="M"):
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    values = offset + trend * t + amplitude * np.sin(2 * np.pi * t / period) + noise * rng.standard_normal(n)
    return Series(name, values.astype(np.float32), frequency, period)


def test_patches_and_the_adaptive_reshape_are_invertible():
    x = torch.arange(2 * 16 * 3, dtype=torch.float32).reshape(2, 16, 3)
    patches = patchify(x, 4)
    assert patches.shape == (2, 3, 4, 4)
    assert torch.equal(patches[1, 2, 1], x[1, 4:8, 2])  # patch 1 of channel 2 is time steps 4..7
    emb = torch.randn(2, 3, 5, 8)
    split = split_patches(emb, 2)
    assert split.shape == (2, 3, 10, 4)
    assert torch.equal(split[:, :, 1], emb[:, :, 0, 4:])  # sub-patches of one embedding stay consecutive
    assert torch.equal(merge_patches(split, 2), emb)


def test_prefix_adds_one_patch_and_the_released_config_has_its_parameter_count():
    scaled = torch.randn(3, 16, 2)
    with_prefix = TinyTimeMixer(TINY).backbone(scaled, torch.tensor([1, 2, 3]))
    without = TinyTimeMixer(TINY.replace(resolution_prefix=False)).backbone(scaled, None)
    assert with_prefix.shape == (3, 2, 5, 8) and without.shape == (3, 2, 4, 8)
    released = TinyTimeMixer(TTMConfig(context_length=512, horizon=96, patch_length=64, d_model=192,
                                       adaptive_levels=3, decoder_d_model=128, resolution_prefix=False))
    assert count_parameters(released) == 805_280  # the r2 512→96 model card's count (spec §2)
    assert count_parameters(TinyTimeMixer(TTMConfig(resolution_prefix=False))) == 22_844


def test_resolution_token_changes_the_forecast():
    model = TinyTimeMixer(TINY).eval()
    past = torch.randn(1, 16, 1)
    assert not torch.allclose(model(past, torch.tensor([10])), model(past, torch.tensor([11])))


def test_forecast_is_in_the_input_units():
    """Bug caught: the per-window scaling not inverted (the forecast would stay in scaled units)."""
    torch.manual_seed(0)
    model = TinyTimeMixer(TINY).eval()
    past = torch.randn(4, 16, 2)
    with torch.no_grad():
        base, shifted = model(past), model(past * 100 + 50)
    assert torch.allclose(shifted, base * 100 + 50, atol=1e-3)
    scaled, mean, std = standard_scale(past)
    assert torch.allclose(scaled * std + mean, past, atol=1e-6)


def test_training_loss_is_in_unscaled_units_and_falls():
    """A series at offset 1000: a forecaster that stayed in scaled units would be ~1000 off after training."""
    series = sine(n=100, offset=1000.0, amplitude=5.0)
    past, future = split_windows(series, 16, 4, "train")
    model = TinyTimeMixer(TINY)
    settings = FitSettings(epochs=15, lr=1e-2, batch_size=32)
    from petkit.timeseries.train import Windows, fit
    tokens = np.zeros(len(past), np.int64)
    fit(model, Windows(past, future, tokens), None, settings)
    first, best = settings.history[0]["train_loss"], min(h["train_loss"] for h in settings.history)
    assert best < 0.5 * first
    with torch.no_grad():
        forecast = model(torch.from_numpy(past[:8]))
    assert float((forecast - torch.from_numpy(future[:8])).abs().mean()) < 3.0


def test_windows_never_see_their_future():
    """Bug caught: a window whose context includes the first target value (future leak)."""
    values = np.arange(100, dtype=np.float32)[:, None]
    past, future = windows(values, 16, 4, start=70, stop=80)
    assert len(past) == 7
    for p, f in zip(past, future):
        t = int(f[0, 0])
        assert np.array_equal(p[:, 0], np.arange(t - 16, t)) and np.array_equal(f[:, 0], np.arange(t, t + 4))
        assert 70 <= t and t + 4 <= 80  # the whole horizon inside its split
    bounds = split_bounds(100)
    assert bounds == {"train": (0, 70), "val": (70, 80), "test": (80, 100)}
    _, test_future = split_windows(Series("x", values), 16, 4, "test")
    assert test_future.min() >= 80


def test_few_shot_takes_the_first_windows_in_time():
    past, future = windows(np.arange(100, dtype=np.float32)[:, None], 16, 4)
    p, f = few_shot(past, future, 0.05)
    assert len(p) == 5 and np.array_equal(p, past[:5])
    assert np.array_equal(few_shot(past, future, 0.05, "last")[0], past[-5:])
    assert len(few_shot(past, future, 0.001)[0]) == 1


def test_seasonal_naive_and_mase():
    period = np.tile(np.array([1.0, 2.0, 3.0, 4.0], np.float32), 10)[:, None]
    past, future = windows(period, 16, 6)
    assert np.array_equal(seasonal_naive(past, 6, 4), future)  # exact on a periodic series
    assert np.array_equal(seasonal_naive(past, 6, 1), np.repeat(past[:, -1:], 6, axis=1))
    scale = mase_scale(np.arange(20, dtype=np.float32)[:, None], 4)
    assert scale[0] == pytest.approx(4.0)
    assert mase(future + 2.0, future, scale) == pytest.approx(0.5)


def test_head_probing_freezes_the_backbone():
    """Bug caught: head probing that trains the backbone (the released few-shot recipe freezes it)."""
    model = TinyTimeMixer(TINY)
    set_trainable(model, "probe")
    model(torch.randn(2, 16, 1)).sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.decoder.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    tuned = finetune(model, sine(), "probe", 0.5, FitSettings(epochs=3, lr=1e-2))
    for (name, before), after in zip(model.state_dict().items(), tuned.state_dict().values()):
        assert torch.equal(before, after) == name.startswith("backbone."), name
    set_trainable(model, "head")
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"head"}


def test_channel_mixing_only_at_fine_tuning():
    """Bugs caught: channel mixing on at pre-training; mix_channel that does not mix channels."""
    with pytest.raises(ConfigError, match="pre-training is channel-independent"):
        pretrain([sine()], TINY.replace(decoder_mode="mix_channel", num_channels=2), FitSettings(epochs=1))
    assert TTMConfig().decoder_mode == "common_channel"
    pre = pretrain([sine(), sine(period=4, seed=1)], TINY, FitSettings(epochs=1))
    assert not any(".channel_mixer." in name for name in pre.state_dict())
    mixed = with_decoder_mode(pre, "mix_channel", 2).eval()
    for name, value in pre.state_dict().items():
        assert torch.equal(mixed.state_dict()[name], value)
    assert any(".channel_mixer." in name for name in mixed.state_dict())
    past = torch.randn(1, 16, 2)
    other = past.clone()
    other[..., 1] += torch.randn(16)
    with torch.no_grad():
        assert not torch.allclose(mixed(past)[..., 0], mixed(other)[..., 0])  # channel 1 now moves channel 0
        assert torch.allclose(pre.eval()(past)[..., 0], pre(other)[..., 0])  # independent before


def test_save_load_round_trip(tmp_path):
    model = with_decoder_mode(TinyTimeMixer(TINY), "mix_channel", 3).eval()
    save_ttm(model, tmp_path / "m", {"note": "x"})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.safetensors", "ttm_config.json"]
    loaded, meta = load_ttm(tmp_path / "m")
    past = torch.randn(2, 16, 3)
    with torch.no_grad():
        assert torch.equal(loaded(past), model(past))
    assert meta == {"note": "x"} and loaded.cfg == model.cfg


def test_pretrained_zero_shot_beats_scratch_and_is_scored_against_seasonal_naive():
    """The direction the benchmark measures, on synthetic sines: a model pre-trained on other periods
    forecasts an unseen sine better than an untrained one."""
    pool = [sine(n=300, period=p, seed=p, amplitude=a) for p, a in ((4, 1.0), (8, 2.0), (16, 0.5))]
    pre = pretrain(pool, TINY, FitSettings(epochs=8, lr=1e-2))
    target = sine(n=200, period=8, trend=0.01, seed=9)
    zero = score_test_split(target, ttm_forecaster(pre, target), 16, 4)["sine"]["mse"]
    torch.manual_seed(0)
    scratch = score_test_split(target, ttm_forecaster(TinyTimeMixer(TINY), target), 16, 4)["sine"]["mse"]
    naive = score_test_split(target, naive_forecaster(8, 4), 16, 4)["sine"]["mse"]
    assert zero < scratch and naive < scratch


@pytest.mark.parametrize("make, message", [
    (lambda: TTMConfig(context_length=60, patch_length=8), "not divisible by patch_length"),
    (lambda: Series("gappy", np.array([1.0, np.nan, 3.0])), "NaN values"),
    (lambda: score_test_split(sine(n=18), naive_forecaster(8, 4), 16, 4), "no test window"),
])
def test_bad_input_is_one_clear_error(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


@pytest.fixture
def saved_tiny(tmp_path):
    torch.manual_seed(0)
    save_ttm(TinyTimeMixer(TINY).eval(), tmp_path / "ttm")
    return tmp_path / "ttm"


def _csv(path, values):
    path.write_text("t,y\n" + "".join(f"{i},{'' if np.isnan(v) else v}\n" for i, v in enumerate(values)))
    return path


def test_cli_predict_and_finetune(saved_tiny, tmp_path, capsys):
    data = _csv(tmp_path / "s.csv", 10 + np.sin(np.arange(120) / 2))
    out = tmp_path / "f.json"
    assert main(["forecast", "predict", "--model", str(saved_tiny), "--csv", str(data), "--column", "y",
                 "--frequency", "M", "--output", str(out)]) == 0
    forecast = json.loads(out.read_text())["forecast"]
    assert len(forecast) == 4 and all(8 < v < 12 for v in forecast)  # in the series' units
    assert main(["forecast", "finetune", "--model", str(saved_tiny), "--csv", str(data), "--column", "y",
                 "--mode", "probe", "--epochs", "2", "--season", "12", "--output", str(tmp_path / "ft")]) == 0
    assert "seasonal-naive" in capsys.readouterr().out and (tmp_path / "ft" / "model.safetensors").is_file()


@pytest.mark.parametrize("values, message", [
    (np.arange(10, dtype=float), "has 10 points; a forecast needs at least context = 16"),
    (np.r_[np.arange(30, dtype=float), np.nan, np.arange(5, dtype=float)], "NaN values (first at time step 30)"),
])
def test_cli_bad_series_is_one_line_and_exit_2(saved_tiny, tmp_path, capsys, values, message):
    data = _csv(tmp_path / "bad.csv", values)
    assert main(["forecast", "predict", "--model", str(saved_tiny), "--csv", str(data), "--column", "y"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_context_not_divisible_by_patch_is_one_line(capsys):
    # the config is checked before statsmodels' series are read, so this needs no statsmodels
    assert main(["forecast", "pretrain", "--context", "60", "--patch", "8", "--epochs", "1"]) == 2
    assert "not divisible by patch_length" in capsys.readouterr().err
