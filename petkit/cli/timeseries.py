"""`petkit forecast pretrain|finetune|predict`: Tiny Time Mixers (petkit.timeseries)."""

from __future__ import annotations

import json
from pathlib import Path

from petkit.cli.commands import console


def add_parsers(sub) -> None:
    p = sub.add_parser("forecast", help="Tiny Time Mixers: pre-train a small forecaster on many series, fine-tune "
                                        "it zero-/few-shot, forecast a CSV column")
    forecast_sub = p.add_subparsers(dest="forecast_command", required=True)

    q = forecast_sub.add_parser("pretrain", help="pre-train a mini-TTM on statsmodels' bundled series "
                                                 "(needs petkit[timeseries])")
    q.add_argument("--context", type=int, default=64, help="context length (a multiple of --patch)")
    q.add_argument("--horizon", type=int, default=12)
    q.add_argument("--patch", type=int, default=8, help="patch length")
    q.add_argument("--d-model", type=int, default=32)
    q.add_argument("--levels", type=int, default=2, help="adaptive patching levels")
    q.add_argument("--no-prefix", action="store_true", help="no resolution prefix token")
    q.add_argument("--epochs", type=int, default=15)
    q.add_argument("--lr", type=float, default=3e-3)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--output", default="runs/ttm", help="folder for model.safetensors + ttm_config.json")
    q.set_defaults(func=pretrain)

    q = forecast_sub.add_parser("finetune", help="fine-tune a saved TTM on one CSV column (train/val/test 70/10/20 "
                                                 "in time) and score it against seasonal-naive on the test split")
    _series_arguments(q)
    q.add_argument("--mode", choices=["zero", "probe", "head", "full"], default="probe",
                   help="zero: no training; probe: decoder + head (backbone frozen, the paper's few-shot); "
                        "head: the head alone; full: everything")
    q.add_argument("--fraction", type=float, default=0.1, help="share of the training windows used, first in time")
    q.add_argument("--mix-channels", action="store_true", help="switch the decoder's channel mixer on")
    q.add_argument("--epochs", type=int, default=40)
    q.add_argument("--lr", type=float, default=1e-3)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--output", help="folder for the fine-tuned model (default: not saved)")
    q.set_defaults(func=finetune)

    q = forecast_sub.add_parser("predict", help="forecast the next horizon steps after the end of a CSV column")
    _series_arguments(q)
    q.add_argument("--output", help="write the forecast here as JSON (default: print it)")
    q.set_defaults(func=predict)


def _series_arguments(q) -> None:
    q.add_argument("--model", required=True, help="folder of a saved TTM (petkit forecast pretrain --output)")
    q.add_argument("--csv", required=True, help="a CSV file with a header row")
    q.add_argument("--column", required=True, help="the numeric column to forecast")
    q.add_argument("--frequency", default="oov", help="resolution token: min, h, d, W, M, Q, Y, ... (default oov)")
    q.add_argument("--season", type=int, default=1, help="season length for seasonal-naive and MASE")


def _series(args):
    from petkit.timeseries.data import read_csv_series
    from petkit.timeseries.storage import load_ttm
    model, _ = load_ttm(args.model)
    return model, read_csv_series(args.csv, args.column, args.frequency, args.season)


def pretrain(args) -> int:
    from petkit.timeseries import TTMConfig, count_parameters
    from petkit.timeseries.pool import pool_series
    from petkit.timeseries.storage import save_ttm
    from petkit.timeseries.train import FitSettings, pretrain as run_pretrain
    cfg = TTMConfig(context_length=args.context, horizon=args.horizon, patch_length=args.patch, d_model=args.d_model,
                    adaptive_levels=args.levels, resolution_prefix=not args.no_prefix)
    pool = pool_series()
    settings = FitSettings(epochs=args.epochs, lr=args.lr, seed=args.seed)
    model = run_pretrain(pool, cfg, settings)
    best = min(h["val_loss"] for h in settings.history)
    save_ttm(model, args.output, {"pool": [s.name for s in pool], "best_val_loss": best})
    console.print(f"pre-trained a {count_parameters(model):,}-parameter TTM on {len(pool)} series; "
                  f"validation MSE {best:.4f}; saved to {args.output}")
    return 0


def finetune(args) -> int:
    from petkit.timeseries.data import check_length
    from petkit.timeseries.evaluate import naive_forecaster, score_test_split, ttm_forecaster
    from petkit.timeseries.storage import save_ttm
    from petkit.timeseries.train import FitSettings, finetune as run_finetune
    model, series = _series(args)
    cfg = model.cfg
    check_length(series, cfg.context_length, cfg.horizon)
    if args.mode != "zero" or args.mix_channels:
        model = run_finetune(model, series, args.mode, args.fraction,
                             FitSettings(epochs=args.epochs, lr=args.lr, seed=args.seed), args.mix_channels)
    scores = {"ttm": score_test_split(series, ttm_forecaster(model, series), cfg.context_length, cfg.horizon),
              "seasonal-naive": score_test_split(series, naive_forecaster(args.season, cfg.horizon),
                                                 cfg.context_length, cfg.horizon)}
    for name, per_channel in scores.items():
        for channel, s in per_channel.items():
            console.print(f"{name:>15} {channel}: test MSE {s['mse']:.4f}  MASE {s['mase']:.4f}")
    if args.output:
        save_ttm(model, args.output, {"finetuned_on": series.name, "mode": args.mode, "fraction": args.fraction})
        console.print(f"saved to {args.output}")
    return 0


def predict(args) -> int:
    from petkit.timeseries.data import check_length
    from petkit.timeseries.predict import forecast_next
    model, series = _series(args)
    check_length(series, model.cfg.context_length, 0)
    values = forecast_next(model, series)
    rows = values[:, 0] if values.shape[1] == 1 else values
    record = {"series": series.name, "horizon": len(values), "forecast": rows.astype(float).round(6).tolist()}
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(record, indent=1) + "\n")
        console.print(f"wrote {args.output}")
    else:
        console.print_json(json.dumps(record))
    return 0
