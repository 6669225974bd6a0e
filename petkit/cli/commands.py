"""What each `petkit` sub-command does. Parsing lives in main.py; the work lives in the library."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from petkit.cli.report import print_report
from petkit.core.errors import ConfigError, PetkitError

console = Console()


def _user_errors() -> tuple[type[BaseException], ...]:
    from petkit.data import DatasetNotFound
    from petkit.models import ModelNotFound
    from petkit.train import CheckpointError
    return PetkitError, DatasetNotFound, ModelNotFound, CheckpointError, yaml.YAMLError


USER_ERRORS = _user_errors()


def parse_value(text: str):
    """`8` -> 8, `1e-3` -> 0.001, `true` -> True, `a,b` -> ["a", "b"], anything else stays a string."""
    if "," in text:
        return [parse_value(t) for t in text.split(",") if t]
    for cast in (int, float):  # before YAML, which reads `5e-3` as a string
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None, "null": None}.get(text.lower(), text)


def parse_pairs(pairs: list[str], what: str) -> dict:
    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise ConfigError(f"{what} settings are KEY=VALUE, got {pair!r}")
        out[key.strip().replace("-", "_")] = parse_value(value.strip())
    return out


def read_settings(file: str, what: str) -> dict:
    """A YAML file of settings (a mapping), with one clear error when it is missing or malformed."""
    path = Path(file)
    if not path.is_file():
        raise ConfigError(f"{what} config {path} not found")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of {what} settings")
    return data


def _spec_from_args(args):
    from petkit.pipeline import RunSpec
    data = read_settings(args.config, "run") if args.config else {}
    for key in ("model", "data", "task", "max_length", "max_train", "max_eval", "seed", "output", "truncation",
                "answers"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    if args.packing:
        data["packing"] = True
    files = {split: getattr(args, f"{split}_file") for split in ("train", "dev", "test") if getattr(args, f"{split}_file")}
    if files:
        if args.data is not None:
            raise ConfigError("give --data or your own split files (--train-file ...), not both")
        if "train" not in files:
            raise ConfigError("--dev-file and --test-file need --train-file")
        data["data"] = files
    if args.format:
        data["save_format"] = args.format
    if getattr(args, "quantize", None) is not None:
        data["quantize"] = {**(data.get("quantize") or {}), "bits": args.quantize}
    method = dict(data.get("method") or {})
    if args.method:
        method = {"name": args.method}
    method.update(parse_pairs(args.method_arg, "method"))
    if method:
        data["method"] = method
    data["train"] = {**(data.get("train") or {}), **parse_pairs(args.train_arg, "train")}
    if getattr(args, "regression_arg", None):
        data["regression"] = {**(data.get("regression") or {}), **parse_pairs(args.regression_arg, "regression")}
    return RunSpec.from_dict(data)


def train(args) -> int:
    from petkit.pipeline import run
    from petkit.train import distributed

    if args.nproc != 1:
        return _relaunch_with_torchrun(args)
    spec = _spec_from_args(args)
    ranks = distributed.init_from_env()
    try:
        report = run(spec, resume=args.resume, progress=not args.no_progress,
                     log=console.print if ranks.main else (lambda *a, **k: None))
        if ranks.main:
            print_report(report, console)
    finally:
        distributed.shutdown()
    return 0


def _relaunch_with_torchrun(args) -> int:
    """`petkit train --nproc N ...` = `torchrun --standalone --nproc_per_node N -m petkit train ...`."""
    from petkit.pipeline import check
    from petkit.train.distributed import launched_by_torchrun
    if args.nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {args.nproc}")
    if launched_by_torchrun():
        raise ConfigError("--nproc starts torchrun itself; under torchrun leave it out (torchrun's "
                          "--nproc_per_node sets the number of processes)")
    check(_spec_from_args(args))
    rest, skip = [], False
    for a in args.argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               "-m", "petkit", *rest]
    # One thread per process unless the user chose otherwise (torchrun's own default, said quietly).
    env = {"OMP_NUM_THREADS": "1", **os.environ}
    return subprocess.run(command, env=env).returncode


def evaluate(args) -> int:
    from petkit.pipeline import evaluate_adapter
    metrics = evaluate_adapter(args.model, args.data, args.adapter, args.split, max_eval=args.max_eval,
                               max_length=args.max_length, force=args.force)
    console.print_json(json.dumps({k: round(float(v), 4) for k, v in metrics.items()}))
    return 0


def inspect(args) -> int:
    from petkit.core.files import describe
    info = describe(args.path)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    config = info.pop("config")
    table = Table(title=f"{info['path']} ({info['format']} format)", show_header=False)
    for key, value in info.items():
        if key != "adapters":
            table.add_row(key, f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value))
    console.print(table)
    for name, entry in (info.get("adapters") or {}).items():
        cfg = config["adapters"][name]["config"]
        settings = ", ".join(f"{k}={v}" for k, v in cfg.items() if k not in ("method",) and v not in ((), [], {}, None))
        console.print(f"  [bold]{name}[/bold]: {entry['method']}, {entry['modules']} modules, "
                      f"{entry['parameters']:,} parameters ({settings})")
    return 0


def merge_unload(args) -> int:
    from petkit.core.files import num_labels_of
    from petkit.core.load import load
    from petkit.models import load_model
    num_labels = num_labels_of(args.adapter) if args.task == "classification" else None
    model = load_model(args.model, task=args.task, num_labels=num_labels)
    am = load(model, args.adapter, force=args.force)
    plain = am.merge_and_unload()
    plain.save_pretrained(args.output)
    console.print(f"merged model saved to {args.output}")
    return 0


def merge(args) -> int:
    from petkit.merge.run import MergeSpec, run_merge
    report = run_merge(MergeSpec.from_dict(read_settings(args.config, "merge spec")))
    console.print_json(json.dumps(report))
    return 0


def soup(args) -> int:
    from petkit.merge.run import run_soup
    report = run_soup(args.runs, args.model, args.data, greedy=not args.uniform, strict=args.strict, output=args.output,
                      max_eval=args.max_eval, max_length=args.max_length, force=args.force)
    console.print_json(json.dumps(report))
    return 0


def fed(args) -> int:
    from petkit.fed import FedJob, run_federated
    from petkit.fed.registry import get_system
    from petkit.fed.report import rounds_table, save
    settings = read_settings(args.config, "federated job") if args.config else {}
    settings.update(parse_pairs(args.set, "federated"))
    job = FedJob.from_dict(settings)
    out = Path(args.output)
    if args.write_app:
        from petkit.fed.deploy import recipe, write_app
        write_app(args.write_app, job, out)
        print(recipe(args.write_app, job), end="")  # plain print: rich would eat [superlink.petkit]
        return 0
    report = run_federated(job)
    where = save(report, job, out)
    console.print(rounds_table(report))
    console.print(f"{get_system(job.system).keeps}: {where}; report: {out / 'report.json'}")
    return 0


def continual(args) -> int:
    from petkit.continual import ContinualConfig, run_stream
    from petkit.continual.report import matrix_table, metrics_line, plot_curves, plot_heatmap, seen_average_curve
    settings = read_settings(args.config, "continual") if args.config else {}
    settings.update(parse_pairs(args.set, "continual"))
    if args.stream:
        is_file = args.stream.endswith((".yaml", ".yml")) or Path(args.stream).is_file()
        settings["stream"] = read_settings(args.stream, "stream") if is_file else args.stream
    for key in ("method", "model", "seed"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    settings["options"] = {**settings.get("options", {}), **parse_pairs(args.option, "method")}
    out = Path(args.output)
    cfg = ContinualConfig.from_dict({**settings, "output_dir": str(out)})
    result = run_stream(cfg, resume=args.resume, progress=not args.no_progress)
    (out / "matrix.md").write_text(f"{matrix_table(result)}\n\n{metrics_line(result)}\n")
    plot_heatmap(result, out / "heatmap.png")
    plot_curves({cfg.method: seen_average_curve(result)}, out / "curve.png", f"{cfg.method} on {result.stream}",
                result.stream)
    console.print(matrix_table(result))
    console.print(metrics_line(result))
    console.print(f"result: {out / 'result.json'}; plots: {out / 'heatmap.png'}, {out / 'curve.png'}")
    return 0


def _nm(text: str) -> tuple[int, int]:
    n, sep, m = text.partition(":")
    if not sep or not n.isdigit() or not m.isdigit():
        raise ConfigError(f"an N:M pattern is two integers like 2:4, got {text!r}")
    return int(n), int(m)


def prune_sweep(args) -> int:
    from petkit.prune.report import plot_sweep, sweep_table
    from petkit.prune.sweep import SweepConfig, run_sweep
    settings = read_settings(args.config, "prune sweep") if args.config else {}
    run = dict(settings.get("run", {}))
    run.setdefault("method", {"name": "full"})
    for key in ("model", "data", "max_train", "max_eval"):
        if getattr(args, key) is not None:
            run[key] = getattr(args, key)
    if args.method:
        run["method"] = {"name": args.method}
    run["train"] = {**run.get("train", {}), **parse_pairs(args.train_arg, "train")}
    settings["run"] = run
    if args.kinds:
        settings["kinds"] = [k for k in args.kinds.split(",") if k]
    if args.sparsities:
        settings["sparsities"] = [float(s) for s in args.sparsities.split(",") if s]
    settings["nm"] = settings.get("nm", []) + [list(_nm(t)) for t in args.nm]
    cfg = SweepConfig.from_dict({**settings, "output": args.output})
    result = run_sweep(cfg, progress=not args.no_progress, log=console.print)
    out = Path(args.output)
    table = sweep_table(result)
    (out / "sweep.md").write_text(f"# Sparsity sweep: {run.get('model')} on {run.get('data')}\n\n{table}\n")
    plot_sweep(result, out / "sweep.png", f"{run.get('model')} on {run.get('data')}", cfg.tolerance)
    console.print(table)
    console.print(f"results: {out / 'sweep.json'}, {out / 'sweep.md'}, {out / 'sweep.png'}")
    return 0


def prune_lora(args) -> int:
    from petkit.prune.loraprune import run_loraprune
    run = {"model": args.model, "data": args.data, "max_length": args.max_length, "max_train": args.max_train,
           "max_eval": args.max_eval, "method": {"name": "lora", **parse_pairs(args.method_arg, "method")},
           "train": parse_pairs(args.train_arg, "train")}
    report = run_loraprune(run, ratio=args.ratio, criterion=args.criterion, output=args.output,
                           progress=not args.no_progress, log=console.print)
    console.print_json(json.dumps(report))
    return 0


def prune_apply(args) -> int:
    from petkit.models import load_model
    from petkit.prune import prune, save_pruned
    model = load_model(args.model, task="base")
    dense = sum(p.numel() * p.element_size() for p in model.parameters())
    if args.kind == "nm":
        n, m = _nm(args.nm or "")
        result = prune(model, kind="nm", n=n, m=m)
    else:
        result = prune(model, args.sparsity, kind=args.kind)
    size = save_pruned(model, result, args.output)
    console.print(f"removed {result.removed:,} weights ({result.sparsity:.1%} of the attention and FFN weights); "
                  f"{args.output}: {size / 1e6:.1f} MB against {dense / 1e6:.1f} MB of dense parameters "
                  f"({size / dense:.2f}×)")
    return 0


def methods(args) -> int:
    from petkit.cli.methods_table import COLUMNS, method_rows  # the README's method table: the same rows
    table = Table(title="registered methods")
    for col in COLUMNS:
        table.add_column(col, no_wrap=col == "method")  # names are what users type: never split them
    for row in method_rows():
        table.add_row(*row)
    console.print(table)
    return 0


def demo(args) -> int:
    from petkit.cli.demo import run_demo
    return run_demo(epochs=args.epochs, max_train=args.max_train, output=args.output)
