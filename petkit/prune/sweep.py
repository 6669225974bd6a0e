"""`run_sweep`: essential sparsity's experiment. For each pruning kind and sparsity: a fresh copy of the
pre-trained model, one-shot pruned, fine-tuned with the mask fixed (fully or with an adapter),
evaluated on dev and test; then the curve's tolerance point and sharp drop, read on dev.

    cfg = SweepConfig(run={"model": "minilm", "data": "sst2", "method": {"name": "full"},
                           "train": {"lr": 5e-5, "epochs": 1}}, kinds=["global", "random"])
    result = run_sweep(cfg)

Points are written to `<output>/sweep.json` as they finish, and a sweep run again skips them.
The dense model (sparsity 0) is trained once and shared by every kind.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from petkit.core.errors import ConfigError
from petkit.core.mapping import config_from_mapping

from .curve import sharp_drop, within_tolerance
from .masks import KINDS, check_sparsity

DEFAULT_SPARSITIES = [round(0.1 * i, 1) for i in range(10)]


@dataclass(frozen=True)
class SweepConfig:
    """run: a `petkit train` run (petkit.pipeline.RunSpec fields: model, data, method, train, max_length,
    max_train, max_eval, seed); kinds: pruning kinds over `sparsities`; nm: [[n, m], ...] patterns;
    metric: what the curve reads (accuracy); tolerance: the drop allowed for `within_tolerance`."""

    run: dict = field(default_factory=dict)
    kinds: list = field(default_factory=lambda: ["global", "layer", "random"])
    sparsities: list = field(default_factory=lambda: list(DEFAULT_SPARSITIES))
    nm: list = field(default_factory=list)
    metric: str = "accuracy"
    tolerance: float = 0.01
    output: str | None = None

    def __post_init__(self):
        unknown = [k for k in self.kinds if k not in KINDS or k == "nm"]
        if unknown:
            raise ConfigError(f"kinds are {[k for k in KINDS if k != 'nm']} (N:M patterns go in nm), got {unknown}")
        for s in self.sparsities:
            check_sparsity(s)
        if 0.0 not in [float(s) for s in self.sparsities]:
            raise ConfigError("sparsities must include 0 (the dense model every curve is read against)")
        for pattern in self.nm:
            if not (isinstance(pattern, (list, tuple)) and len(pattern) == 2):
                raise ConfigError(f"nm patterns are [n, m] pairs, got {pattern!r}")

    @classmethod
    def from_dict(cls, data) -> "SweepConfig":
        return config_from_mapping(cls, data, where="prune sweep")


def _points_wanted(cfg: SweepConfig) -> list[tuple[str, float, tuple | None]]:
    wanted = [("dense", 0.0, None)]
    wanted += [(kind, float(s), None) for kind in cfg.kinds for s in cfg.sparsities if float(s) > 0]
    wanted += [("nm", n / m, (n, m)) for n, m in cfg.nm]
    return wanted


def _key(kind: str, sparsity: float, nm) -> str:
    return f"nm:{nm[0]}:{nm[1]}" if nm else f"{kind}:{sparsity:.4f}"


def run_point(run: dict, kind: str, sparsity: float, nm, metric: str, progress: bool = False) -> dict:
    """Prune a fresh model, fine-tune it with the masks fixed, and evaluate: one point of the curve."""
    from petkit.core.model import adapt
    from petkit.pipeline import RunSpec, prepare
    from petkit.train import evaluate, train

    from .prune import prune

    spec = RunSpec.from_dict({**run, "output": None})
    prep = prepare(spec)
    if prep.task != "classification":
        raise ConfigError(f"a sparsity sweep reads {metric} of a classifier; {spec.data} is {prep.kind} data")
    removed = 0
    if kind != "dense":
        pruned = (prune(prep.model, kind="nm", n=nm[0], m=nm[1], seed=spec.seed) if nm
                  else prune(prep.model, sparsity, kind=kind, seed=spec.seed))
        removed = pruned.removed
    cfg = spec.train_config()
    model = adapt(prep.model, spec.method_config())
    started = time.perf_counter()
    train(model, prep.train, cfg, task="classification", progress=progress)
    seconds = time.perf_counter() - started
    size = cfg.eval_batch_size or cfg.batch_size
    dev = evaluate(model, prep.dev, "classification", batch_size=size)
    test = evaluate(model, prep.test, "classification", batch_size=size)
    if metric not in dev:
        raise ConfigError(f"metric {metric!r} is not one of the evaluation's {sorted(dev)}")
    return {"kind": kind, "sparsity": sparsity, "nm": list(nm) if nm else None, "removed": removed,
            "dev": float(dev[metric]), "test": float(test[metric]), "train_seconds": round(seconds, 1)}


def run_sweep(cfg: SweepConfig, *, progress: bool = True, log=print) -> dict:
    out = Path(cfg.output) if cfg.output else None
    path = out / "sweep.json" if out else None
    done = json.loads(path.read_text())["points"] if path and path.is_file() else []
    have = {_key(p["kind"], p["sparsity"], p["nm"]) for p in done}
    for kind, sparsity, nm in _points_wanted(cfg):
        if _key(kind, sparsity, nm) in have:
            continue
        log(f"{kind} {f'{nm[0]}:{nm[1]}' if nm else f'{sparsity:.0%}'} ...")
        point = run_point(cfg.run, kind, sparsity, nm, cfg.metric, progress)
        log(f"  dev {point['dev']:.4f}  test {point['test']:.4f}")
        done.append(point)
        if path:
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"config": asdict(cfg), "points": done}, indent=1))
    return summarise(done, cfg)


def summarise(points: list[dict], cfg: SweepConfig) -> dict:
    """Per kind: the dev curve's tolerance point and sharp drop, with test at those sparsities."""
    dense = next(p for p in points if p["kind"] == "dense")
    summary = {}
    for kind in cfg.kinds:
        curve = {0.0: dense} | {p["sparsity"]: p for p in points if p["kind"] == kind}
        dev = {s: p["dev"] for s, p in curve.items()}
        ok, knee = within_tolerance(dev, cfg.tolerance), sharp_drop(dev)
        summary[kind] = {"within_tolerance": ok, "test_there": curve[ok]["test"], "sharp_drop": knee,
                         "test_at_sharp_drop": curve[knee]["test"] if knee is not None else None}
    return {"points": points, "summary": summary}
