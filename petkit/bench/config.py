"""`BenchConfig`: what to benchmark (model, tasks, methods, seeds) and how (budget, data sizes).

Its defaults are the quick default preset. The *setup* (everything that makes two runs comparable:
model, budget, data sizes, measurement settings) is hashed; a results file only ever holds runs of
one setup. Tasks, methods, seeds and learning rates are not part of it, so a later bench can add
methods, tasks or seeds to the same file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from petkit.bench.defaults import FULL_PRESET, method_defaults
from petkit.core.errors import ConfigError
from petkit.core.mapping import config_from_mapping, field_names, int_at_least

# The step time is the median of the steps after the first WARMUP_STEPS (allocations, first-touch
# caches); fewer than MIN_STEPS steps leave too few to take a median of.
WARMUP_STEPS = 2
MIN_STEPS = WARMUP_STEPS + 3
AGAINST = ("peft",)
ORDER_BY = ("borda", "kemeny", "mean")
# Places after the point the leaderboard prints a task score with: accuracy in % (92.8), perplexity
# as is (5.13). Borda and Kemeny compare scores at this precision unless `rank_decimals` says otherwise.
PRINTED_DECIMALS = {"accuracy": 1, "perplexity": 2}
SETUP_FIELDS = ("model", "steps", "batch_size", "max_length", "max_train", "max_eval", "warmup", "schedule",
                "eval_batch_size", "threads", "isolate", "infer_batch", "infer_reps")


@dataclass(frozen=True)
class BenchConfig:
    model: str = "minilm"
    tasks: tuple[str, ...] = ("bbc",)
    methods: tuple[str, ...] = ("lora", "ia3", "bitfit", "full", "probe")
    seeds: int = 2
    steps: int = 40                   # the budget: optimizer steps per run
    batch_size: int = 8
    max_length: int = 64
    max_train: int | None = 320
    max_eval: int | None = 100        # each of dev and test
    warmup: float = 0.1
    schedule: str = "linear"
    eval_batch_size: int = 32
    settings: dict = field(default_factory=dict)  # {method: {field: value}} over the defaults table
    lrs: dict = field(default_factory=dict)       # {method: [lr, ...]} replacing the table's grid
    # extend: while the rate chosen on dev is the grid's smallest or largest, try one more rate past that
    # edge, at most this many per side (0: search the grid as given; see summary.lr_search)
    extend: int = 2
    # variants: a registered method benched under another name with other settings, so one bench can
    # hold two configs of a method (e.g. {"lora-r16": {"method": "lora", "r": 16}}); listed in methods
    # by that name, which settings and lrs may use too
    variants: dict = field(default_factory=dict)
    # baseline: memory and step time are also shown as ratios to this method (None: full fine-tuning,
    # when the bench has it)
    baseline: str | None = None
    against: str | None = None        # "peft": also run the shared methods through Hugging Face PEFT
    order_by: str = "borda"           # which aggregation orders the leaderboard
    # rank_decimals: {metric: places} at which Borda and Kemeny compare task scores, in the units the
    # table prints (accuracy in %): scores equal there are a tie, so float noise in a mean over seeds
    # cannot decide a pair. A metric left out is compared as printed (PRINTED_DECIMALS); None: exactly.
    # Not part of the setup: it only changes the report.
    rank_decimals: dict = field(default_factory=dict)
    output: str = "runs/bench"
    # threads=1: on a machine shared with other work, extra intra-op threads spin against the other
    # processes and step times swing by 10x (measured on 2 shared cores); one thread per run keeps the
    # timings, and so the ratios, steady. None (torch's default) or a count for wall-clock speed instead.
    threads: int | None = 1
    isolate: bool = True              # each run in a fresh process (honest peak memory); False: in-process
    infer_batch: int = 16             # examples per timed forward pass
    infer_reps: int = 3               # timed rounds of (frozen base, adapted) forwards
    # jobs: runs at once (each a fresh process). Not part of the setup: accuracy does not depend on it,
    # but concurrent runs slow each other, so every record notes it and step times of a bench run with
    # jobs > 1 are comparable only among runs made the same way.
    jobs: int = 1

    def __post_init__(self):
        for name in ("tasks", "methods"):
            value = getattr(self, name)
            object.__setattr__(self, name, tuple(value.split(",") if isinstance(value, str) else value))
        _validate(self)

    # -- what one run uses ------------------------------------------------------------------------
    @property
    def ratio_to(self) -> str:
        return self.baseline or "full"

    def registered(self, method: str) -> str:
        """The registered method behind a bench method name (itself, unless it names a variant)."""
        return self.variants[method]["method"] if method in self.variants else method

    def method_settings(self, method: str) -> dict:
        variant = {k: v for k, v in self.variants.get(method, {}).items() if k != "method"}
        return _plain({**method_defaults(self.registered(method)).settings, **variant,
                       **self.settings.get(method, {})})

    def lr_grid(self, method: str) -> tuple[float, ...]:
        return tuple(float(x) for x in self.lrs.get(method, method_defaults(self.registered(method)).lrs))

    def family(self, method: str) -> str:
        from petkit.core.registry import get_method
        base = self.registered(method)
        return method_defaults(base).family or f"{get_method(base).kind} delta"

    def rank_places(self, metric: str) -> int | None:
        """Places (in the printed units) at which the ranking compares scores of ``metric``."""
        return self.rank_decimals.get(metric, PRINTED_DECIMALS[metric])

    def setup(self) -> dict:
        return {k: getattr(self, k) for k in SETUP_FIELDS}

    def setup_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.setup(), sort_keys=True).encode()).hexdigest()[:16]

    # -- building one ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict) -> BenchConfig:
        """From YAML/flags: `budget: steps=300` (or {steps: 300}), `preset: full`, `methods: all`,
        comma-separated or list tasks and methods. Later keys win over the preset."""
        if not isinstance(data, dict):
            raise ConfigError(f"a bench config must be a mapping, got {type(data).__name__}")
        data = dict(data)
        preset = data.pop("preset", None)
        if preset not in (None, "default", "full"):
            raise ConfigError(f"preset must be 'default' or 'full', got {preset!r}")
        if "budget" in data:
            data.update(parse_budget(data.pop("budget")))
        data = {**(FULL_PRESET if preset == "full" else {}), **data}
        if data.get("methods") == "all":
            from petkit.core.registry import all_methods
            data["methods"] = [m.name for m in all_methods()]
        if data.get("tasks") == "local":
            data["tasks"] = local_tasks()
        # budget and preset are read above; they stay in the keys a misspelling is matched against
        return config_from_mapping(cls, data, where="bench", keys=(*field_names(cls), "budget", "preset"))

    def replace(self, **changes) -> BenchConfig:
        return dataclasses.replace(self, **changes)


def parse_budget(budget) -> dict:
    """`steps=300` or {steps: 300} -> {"steps": 300}. Steps are the only budget unit (see MIN_STEPS)."""
    if isinstance(budget, str):
        key, eq, value = budget.partition("=")
        if not eq or key.strip() != "steps":
            raise ConfigError(f"budget is steps=N (optimizer steps per run), got {budget!r}")
        try:
            return {"steps": int(value)}
        except ValueError:
            raise ConfigError(f"budget steps must be an integer, got {value!r}") from None
    if isinstance(budget, dict) and set(budget) == {"steps"}:
        return {"steps": budget["steps"]}
    raise ConfigError(f"budget is steps=N (optimizer steps per run), got {budget!r}")


def local_tasks() -> list[str]:
    """Named classification datasets whose files are on this machine."""
    from petkit.data import DatasetNotFound, known_datasets, load_dataset
    found = []
    for name in known_datasets():
        try:
            if load_dataset(name).task == "classification":
                found.append(name)
        except DatasetNotFound:
            pass
    return found


def _plain(value):
    """JSON round trip: tuples become lists, so settings compare equal to those read from results.jsonl."""
    return json.loads(json.dumps(value))


def _validate_variants(variants, registered: list[str]) -> None:
    if not isinstance(variants, dict):
        raise ConfigError(f"variants must map new method names to {{method: <registered name>, <field>: <value>}}, "
                          f"got {type(variants).__name__}")
    for name, spec in variants.items():
        if name in registered:
            raise ConfigError(f"variant {name!r} would hide the registered method of that name; choose another name")
        if not isinstance(spec, dict) or spec.get("method") not in registered:
            raise ConfigError(f"variant {name!r} must name a registered method as `method` (one of "
                              f"{', '.join(registered)}), got {spec!r}")


def _validate_rank_decimals(places) -> None:
    if not isinstance(places, dict) or not set(places) <= set(PRINTED_DECIMALS):
        raise ConfigError(f"rank_decimals maps metrics ({', '.join(PRINTED_DECIMALS)}) to places after the point, "
                          f"got {places!r}")
    for metric, value in places.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ConfigError(f"rank_decimals for {metric} must be a whole number >= 0 or null (exact), got {value!r}")


def _validate(cfg: BenchConfig) -> None:
    from petkit.core.registry import all_methods, config_from_dict
    from petkit.data import known_datasets

    if not cfg.methods or not cfg.tasks:
        raise ConfigError("a bench needs at least one method and one task")
    registered = [m.name for m in all_methods()]
    _validate_variants(cfg.variants, registered)
    known = registered + list(cfg.variants)
    unknown = [m for m in cfg.methods if m not in known]
    if unknown:
        raise ConfigError(f"unknown method{'s' * (len(unknown) > 1)} {', '.join(unknown)}; "
                          f"known methods: {', '.join(known)}")
    unknown = [t for t in cfg.tasks if t not in known_datasets() and not Path(t).is_file()]
    if unknown:
        raise ConfigError(f"unknown task{'s' * (len(unknown) > 1)} {', '.join(unknown)}; known tasks: "
                          f"{', '.join(known_datasets())}, or a path to a .csv/.tsv/.jsonl file (.txt: language modelling)")
    for name, table in (("settings", cfg.settings), ("lrs", cfg.lrs)):
        if not isinstance(table, dict):
            raise ConfigError(f"{name} must map method names to values, got {type(table).__name__}")
        stray = sorted(set(table) - set(known))
        if stray:
            raise ConfigError(f"{name} names unknown methods {stray}; known methods: {', '.join(known)}")
    for method, values in cfg.settings.items():
        if not isinstance(values, dict):
            raise ConfigError(f"settings of {method} must map config fields to values, got {values!r}")
    if len(set(cfg.methods)) != len(cfg.methods) or len(set(cfg.tasks)) != len(cfg.tasks):
        raise ConfigError("methods and tasks must not repeat")
    int_at_least("seeds", cfg.seeds)
    int_at_least("extend", cfg.extend, 0)
    int_at_least("steps", cfg.steps, MIN_STEPS,
                 f": the budget is too small to evaluate. The step time is the median of the steps after the "
                 f"first {WARMUP_STEPS} (warm-up), so a run needs at least {MIN_STEPS} steps; "
                 f"use --budget steps={MIN_STEPS} or more")
    for name in ("batch_size", "max_length", "eval_batch_size", "infer_batch", "infer_reps", "jobs"):
        int_at_least(name, getattr(cfg, name))
    for name in ("max_train", "max_eval", "threads"):
        if getattr(cfg, name) is not None:
            int_at_least(name, getattr(cfg, name))
    if cfg.jobs > 1 and not cfg.isolate:
        raise ConfigError("jobs > 1 runs each run in its own process; it cannot be combined with --in-process")
    if cfg.against not in (None, *AGAINST):
        raise ConfigError(f"against must be one of {', '.join(AGAINST)}, got {cfg.against!r}")
    if cfg.against == "peft":
        from petkit.interop.peft import exportable
        if not set(cfg.methods) & set(exportable()):
            raise ConfigError(f"--against peft compares the methods both libraries have ({', '.join(exportable())}); "
                              f"none of them is in this bench")
    if cfg.order_by not in ORDER_BY:
        raise ConfigError(f"order_by must be one of {', '.join(ORDER_BY)}, got {cfg.order_by!r}")
    _validate_rank_decimals(cfg.rank_decimals)
    if cfg.baseline is not None and cfg.baseline not in cfg.methods:
        raise ConfigError(f"baseline {cfg.baseline!r} (the method memory and step time are divided by) is not "
                          f"among the bench methods {list(cfg.methods)}; add it or choose one of them")
    for method in cfg.methods:  # every method config and grid must be valid before the first run
        config_from_dict({"method": cfg.registered(method), **cfg.method_settings(method)})
        try:
            grid = cfg.lr_grid(method)
        except (TypeError, ValueError):
            raise ConfigError(f"the learning rates of {method} must be numbers, got {cfg.lrs.get(method)!r}") from None
        if not grid or any(not 0 < lr < 1 for lr in grid):
            raise ConfigError(f"the learning-rate grid of {method} must be a non-empty list in (0, 1), "
                              f"got {list(grid)}")
    # TrainConfig checks warmup and schedule the same way a run will
    from petkit.train import TrainConfig
    TrainConfig(warmup=cfg.warmup, schedule=cfg.schedule, max_steps=cfg.steps, batch_size=cfg.batch_size)
