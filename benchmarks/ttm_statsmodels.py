#!/usr/bin/env python
"""Tiny Time Mixers on statsmodels' real series: zero-shot and few-shot against training from scratch
and seasonal-naive.

A mini-TTM (context 64, horizon 12, patches of 8, d 32, two adaptive levels, resolution prefix;
25k parameters) is pre-trained on a pool of statsmodels series (co2, elnino, sunspots, nile,
interest_inflation, Victoria's electricity; plus downsampled copies) and scored on two held-out
datasets it never saw: macrodata (12 quarterly columns) and elec_equip (monthly), split 70/10/20 in
time. Rows: naive (last value) and seasonal-naive; zero-shot; head probing (backbone frozen, decoder + head trained, the
released few-shot recipe) and full fine-tuning on the first 5% / 10% of each target's training windows;
the same net trained from scratch on those windows; head probing with the decoder's channel mixer
switched on (macrodata only). The fine-tuning learning rate is chosen per run from {3e-4, 1e-3, 3e-3, 1e-2}
by the validation loss (never the test split). MSE in units of the training split's standard deviation,
MASE against the in-sample seasonal-naive error; 3 seeds (pre-training and fine-tuning).

    .venv/bin/python benchmarks/ttm_statsmodels.py            # about 18 minutes on one core
    .venv/bin/python benchmarks/ttm_statsmodels.py --seeds 1 --pretrain-epochs 1 --out /tmp/ttm   # smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from petkit.timeseries import TinyTimeMixer, TTMConfig, count_parameters  # noqa: E402
from petkit.timeseries.evaluate import naive_forecaster, score_test_split, ttm_forecaster  # noqa: E402
from petkit.timeseries.pool import held_out_series, pool_series  # noqa: E402
from petkit.timeseries.train import FitSettings, finetune, pretrain  # noqa: E402

LR_GRID = (3e-4, 1e-3, 3e-3, 1e-2)
FRACTIONS = (0.05, 0.10)
METHODS = ["naive", "seasonal-naive", "zero-shot", "probe 5%", "probe 10%", "full 5%", "full 10%", "scratch 5%", "scratch 10%",
           "probe+mix 10%"]


def tuned(model, series, mode, fraction, seed, epochs, mix=False):
    """Fine-tune at each learning rate of the grid; keep the run with the lowest validation loss."""
    best = None
    for lr in LR_GRID:
        settings = FitSettings(epochs=epochs, lr=lr, seed=seed)
        tuned_model = finetune(model, series, mode, fraction, settings, mix_channels=mix)
        val = min(h["val_loss"] for h in settings.history)
        if best is None or val < best[0]:
            best = (val, lr, tuned_model)
    return best[2], best[1]


def run_seed(seed: int, cfg: TTMConfig, args) -> dict:
    t0 = time.time()
    settings = FitSettings(epochs=args.pretrain_epochs, lr=args.pretrain_lr, seed=seed)
    model = pretrain(pool_series(), cfg, settings)
    print(f"seed {seed}: pre-trained in {time.time() - t0:.0f}s, best val {min(h['val_loss'] for h in settings.history):.4f}",
          flush=True)
    scores, lrs, forecasts = {}, {}, {}
    for series in held_out_series():
        h, L = cfg.horizon, cfg.context_length
        runs = {"naive": naive_forecaster(1, h), "seasonal-naive": naive_forecaster(series.season, h), "zero-shot": ttm_forecaster(model, series)}
        for fraction in FRACTIONS:
            tag = f"{round(fraction * 100)}%"
            for mode, name in (("probe", "probe"), ("full", "full")):
                m, lr = tuned(model, series, mode, fraction, seed, args.epochs)
                runs[f"{name} {tag}"], lrs[f"{series.name} {name} {tag}"] = ttm_forecaster(m, series), lr
            torch.manual_seed(seed)
            m, lr = tuned(TinyTimeMixer(cfg), series, "full", fraction, seed, args.epochs)
            runs[f"scratch {tag}"], lrs[f"{series.name} scratch {tag}"] = ttm_forecaster(m, series), lr
        if series.values.shape[1] > 1:
            m, lr = tuned(model, series, "probe", 0.10, seed, args.epochs, mix=True)
            runs["probe+mix 10%"], lrs[f"{series.name} probe+mix 10%"] = ttm_forecaster(m, series), lr
        for name, forecaster in runs.items():
            for channel, s in score_test_split(series, forecaster, L, h).items():
                scores.setdefault(name, {})[channel] = s
        if series.name == "elec_equip":
            from petkit.timeseries.data import split_windows, standardised
            past, future = split_windows(standardised(series), L, h, "test")
            forecasts = {"past": past[-1, :, 0].tolist(), "future": future[-1, :, 0].tolist(),
                         **{name: runs[name](past[-1:])[0, :, 0].tolist()
                            for name in ("seasonal-naive", "zero-shot", "probe 5%", "scratch 5%")}}
    print(f"seed {seed}: done in {time.time() - t0:.0f}s", flush=True)
    return {"seed": seed, "scores": scores, "lrs": lrs, "forecast": forecasts,
            "pretrain_history": settings.history, "seconds": time.time() - t0}


def summarise(results: list[dict]) -> dict:
    """Per method and channel: the mean over seeds; per method: the mean over channels, per seed."""
    channels = list(results[0]["scores"]["zero-shot"])
    table = {}
    for method in METHODS:
        if method not in results[0]["scores"]:
            continue
        per_seed = [r["scores"][method] for r in results]
        names = [c for c in channels if c in per_seed[0]]
        table[method] = {
            "channels": {c: {k: float(np.mean([s[c][k] for s in per_seed])) for k in ("mse", "mase")} for c in names},
            "mean_per_seed": {k: [float(np.mean([s[c][k] for c in names])) for s in per_seed] for k in ("mse", "mase")},
            "n_channels": len(names)}
    return table


def markdown(table: dict, results: list[dict], cfg: TTMConfig, params: int) -> str:
    channels = list(table["zero-shot"]["channels"])
    lines = [f"# TTM on statsmodels series: zero-/few-shot vs scratch vs seasonal-naive\n",
             f"Mini-TTM {params:,} parameters (context {cfg.context_length}, horizon {cfg.horizon}, patch "
             f"{cfg.patch_length}, d {cfg.d_model}, {cfg.adaptive_levels} adaptive levels, resolution prefix), "
             f"{len(results)} seeds; test split (last 20% in time) of held-out series never in pre-training. "
             "MSE in units of the training split's std; MASE against in-sample seasonal-naive. "
             "Fine-tuning learning rates chosen on the validation split.\n",
             "## Mean over the 13 held-out series (12 macrodata columns + elec_equip)\n",
             "| method | MSE (mean ± std over seeds) | MASE | beats seasonal-naive (MSE, of 13) |", "|---|---|---|---|"]
    naive = table["seasonal-naive"]["channels"]
    for method, row in table.items():
        mse, mase = row["mean_per_seed"]["mse"], row["mean_per_seed"]["mase"]
        wins = sum(row["channels"][c]["mse"] < naive[c]["mse"] for c in row["channels"])
        note = " (macrodata only)" if row["n_channels"] != len(channels) else ""
        lines.append(f"| {method}{note} | {np.mean(mse):.3f} ± {np.std(mse):.3f} | {np.mean(mase):.3f} ± "
                     f"{np.std(mase):.3f} | {wins}/{row['n_channels']} |")
    for metric in ("mse", "mase"):
        methods = [m for m in table if table[m]["n_channels"] == len(channels)]
        lines += ["", f"## {metric.upper()} per held-out series (mean over seeds)\n",
                  "| series | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
        for c in channels:
            vals = [table[m]["channels"][c][metric] for m in methods]
            best = min(vals)
            lines.append(f"| {c} | " + " | ".join(f"**{v:.3f}**" if v == best else f"{v:.3f}" for v in vals) + " |")
        means = [np.mean([table[m]["channels"][c][metric] for c in channels]) for m in methods]
        lines.append("| **mean** | " + " | ".join(f"{v:.3f}" for v in means) + " |")
    lrs = {}
    for r in results:
        for k, v in r["lrs"].items():
            lrs.setdefault(k, []).append(v)
    lines += ["", "Chosen fine-tuning learning rates (per seed): " +
              "; ".join(f"{k}: {', '.join(f'{v:g}' for v in vs)}" for k, vs in lrs.items()) + ".",
              "", f"Wall time: {sum(r['seconds'] for r in results) / 60:.1f} minutes on one core."]
    return "\n".join(lines) + "\n"


def plot(forecast: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    past, future = forecast["past"], forecast["future"]
    t_past, t_future = np.arange(-len(past), 0), np.arange(len(future))
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(t_past, past, color="black", label="context")
    ax.plot(t_future, future, color="black", linestyle="--", label="truth")
    for name in ("seasonal-naive", "zero-shot", "probe 5%", "scratch 5%"):
        ax.plot(t_future, forecast[name], label=name)
    ax.set_xlabel("months from the forecast origin")
    ax.set_ylabel("elec_equip (standardised)")
    ax.set_title("Last test window of elec_equip, seed 0")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--pretrain-lr", type=float, default=3e-3)
    parser.add_argument("--epochs", type=int, default=40, help="fine-tuning epochs (early stopping, patience 10)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "ttm"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = TTMConfig()
    results = [run_seed(seed, cfg, args) for seed in range(args.seeds)]
    table = summarise(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params = count_parameters(TinyTimeMixer(cfg))
    (out / "ttm.json").write_text(json.dumps({"config": cfg.to_dict(), "parameters": params, "args": vars(args),
                                              "lr_grid": LR_GRID, "summary": table, "runs": results}, indent=1))
    (out / "ttm.md").write_text(markdown(table, results, cfg, params))
    plot(results[0]["forecast"], out / "forecast.png")
    print((out / "ttm.md").read_text())


if __name__ == "__main__":
    main()
