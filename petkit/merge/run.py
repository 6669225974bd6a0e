"""`petkit merge merge.yaml` (saved adapters of one base merged into one adapter file) and
`petkit soup RUNS --model M --data D` (a greedy or uniform soup of a folder of runs).

    model: minilm                 # alias or local folder of the base all inputs were trained on
    task: classification          # classification (the head size is read from the first input), causal_lm, base
    inputs:                       # adapter folders (petkit or PEFT format), optionally weighted
      - {path: runs/a/adapter, weight: 0.5}
      - runs/b/adapter            # weight 1
    method: ties                  # one of ops.METHODS (`petkit merge --help` lists them)
    density: 0.5                  # fraction kept (all but linear)
    rank: 16                      # LoRA rank of the result (SVD; error reported), concat or exact
    heads: none                   # or average (inputs of one task)
    output: runs/merged           # folder written (adapter_config.json + adapter_model.safetensors)
    format: petkit                # or peft

Also: sign_method (total | frequency), normalize (count | weights), seed (DARE), force (load inputs
saved for another base).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from petkit.core.errors import ConfigError
from petkit.core.mapping import check_keys, field_names

FORMATS = ("petkit", "peft")


@dataclass
class MergeSpec:
    model: str
    inputs: list = field(default_factory=list)
    method: str = "linear"
    density: float | None = None
    rank: int | str = "exact"
    heads: str = "none"
    task: str = "classification"
    sign_method: str = "total"
    normalize: str = "count"
    seed: int = 0
    output: str = "runs/merged"
    format: str = "petkit"
    force: bool = False

    @classmethod
    def from_dict(cls, data) -> MergeSpec:
        if not isinstance(data, dict):
            raise ConfigError(f"a merge spec is a mapping, got {type(data).__name__}")
        data = check_keys(data, field_names(cls), where="merge")  # first: `modle` names `model`
        if "model" not in data:
            raise ConfigError("a merge spec needs model: the base model the inputs were trained on")
        return cls(**data)

    def paths_and_weights(self) -> tuple[list[str], list[float]]:
        if not isinstance(self.inputs, list) or len(self.inputs) < 2:
            raise ConfigError(f"inputs must list at least two adapter folders, got {self.inputs!r}")
        paths, weights = [], []
        for item in self.inputs:
            if isinstance(item, str):
                item = {"path": item}
            if not isinstance(item, dict) or not isinstance(item.get("path"), str) or set(item) - {"path", "weight"}:
                raise ConfigError(f"each input is a folder path or {{path: ..., weight: ...}}, got {item!r}")
            paths.append(item["path"])
            weights.append(item.get("weight", 1.0))
        return paths, weights


def merge_help() -> str:
    """`petkit merge --help`'s text: the merge methods and choices as the code defines them, and every
    YAML key of MergeSpec with its default."""
    from petkit.merge.adapters import HEADS
    from petkit.merge.ops import METHODS, NORMALIZE, SIGN_METHODS

    choices = {"method": METHODS, "sign_method": SIGN_METHODS, "normalize": NORMALIZE, "heads": HEADS,
               "format": FORMATS}
    lines = ["Merge saved adapters of one base in ΔW space into one adapter, as a merge spec YAML says.", "",
             f"methods: {', '.join(METHODS)}", "", "YAML keys:"]
    required = {"model": "the base all inputs were trained on (alias or local folder)",
                "inputs": "at least two adapter folders, each a path or {path, weight}"}
    for f in fields(MergeSpec):
        about = f"required: {required[f.name]}" if f.name in required else f"default {f.default}"
        lines.append(f"  {f.name}: {about}" + (f"; one of {', '.join(choices[f.name])}" if f.name in choices else ""))
    return "\n".join(lines + ["", "density: the fraction of entries kept (every method but linear); rank: an integer "
                               "(SVD), concat or exact; seed: DARE's random drops; force: load inputs saved for "
                               "another base."])


def run_merge(spec: MergeSpec) -> dict:
    """Load the inputs onto the base, merge them, save the result; returns a report."""
    from petkit.core.files import num_labels_of
    from petkit.core.load import load
    from petkit.merge.adapters import merge_adapters
    from petkit.models import load_model

    if spec.format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {spec.format!r}")
    paths, weights = spec.paths_and_weights()
    num_labels = None
    if spec.task == "classification":
        num_labels = num_labels_of(paths[0])
    model = load_model(spec.model, task=spec.task, num_labels=num_labels)
    names = [f"input{i}" for i in range(len(paths))]
    am = None
    for path, name in zip(paths, names):
        am = load(am if am is not None else model, path, as_name=name, force=spec.force)
    report = merge_adapters(am, names, spec.method, weights, spec.density, rank=spec.rank, into="default",
                            heads=spec.heads, sign_method=spec.sign_method, normalize=spec.normalize, seed=spec.seed)
    am.save(Path(spec.output), format=spec.format, names=["default"])
    return {"output": spec.output, "method": spec.method, "inputs": dict(zip(paths, weights)),
            "modules": len(report.ranks), "max_rank": max(report.ranks.values()),
            "max_relative_error": round(report.max_error, 6),
            "mean_relative_error": round(sum(report.errors.values()) / max(1, len(report.errors)), 6)}


def find_adapters(folder: str | Path) -> dict[str, Path]:
    """{name: adapter folder} for every run under folder: a sub-folder holding an adapter (its own
    adapter_config.json, or an `adapter/` one as `petkit train --output` writes), named after it."""
    from petkit.core.storage import CONFIG_NAME

    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"runs folder {root} does not exist")
    found = {}
    for run in sorted(p for p in root.iterdir() if p.is_dir()):
        adapter = run if (run / CONFIG_NAME).is_file() else run / "adapter"
        if (adapter / CONFIG_NAME).is_file():
            found[re.sub(r"[^A-Za-z0-9_\-]", "_", run.name)] = adapter
    if len(found) < 2:
        raise ConfigError(f"a soup needs at least two runs with an adapter under {root}; found {len(found)}")
    return found


def run_soup(runs: str, model: str, data: str, *, greedy: bool = True, strict: bool = False,
             output: str = "runs/soup", max_eval: int | None = None, max_length: int = 128, force: bool = False,
             batch_size: int = 32) -> dict:
    """Soup the adapters of a folder of runs: held-out = the data's dev split, reported on test too."""
    from petkit.core.load import load
    from petkit.merge.soup import adapter_soup
    from petkit.pipeline import RunSpec, prepare
    from petkit.train import evaluate

    adapters = find_adapters(runs)
    prep = prepare(RunSpec(model=model, data=data, max_eval=max_eval, max_train=1, max_length=max_length))
    am = prep.model
    for name, path in adapters.items():
        am = load(am, path, as_name=name, force=force)
    metric = "accuracy" if prep.task == "classification" else "loss"

    def score(target, split) -> float:
        value = evaluate(target, getattr(prep, split), prep.task, batch_size=batch_size)[metric]
        return value if metric == "accuracy" else -value  # higher is better

    result = adapter_soup(am, list(adapters), (lambda m: score(m, "dev")) if greedy else None, strict=strict)
    test = {}
    for name in [*adapters, "soup"]:
        am.set_active(name)
        test[name] = score(am, "test")
    am.save(Path(output), names=["soup"])
    return {"output": output, "metric": metric if metric == "accuracy" else "-loss", "greedy": greedy,
            "ingredients": result.ingredients, "dev": {k: round(v, 4) for k, v in result.scores.items()},
            "soup_dev": None if result.soup_score is None else round(result.soup_score, 4),
            "test": {k: round(v, 4) for k, v in test.items()}}
