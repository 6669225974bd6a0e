"""One fine-tuning run from a short spec: model + data + method + trainer, then save and report.

This is what `petkit train`, `petkit eval` and `make demo` run, and what the benchmark harness
repeats over a grid. A spec is plain data, so the same run can be written as flags or as YAML:

    model: minilm
    data: bbc
    method: {name: lora, r: 8, alpha: 16, targets: [query, value]}
    train: {epochs: 2, lr: 5.0e-4, batch_size: 16}
    max_length: 128
    output: runs/bbc-lora
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from petkit.core.config import AdapterConfig
from petkit.core.errors import ConfigError
from petkit.core.load import load
from petkit.core.mapping import check_keys, config_from_mapping, field_names
from petkit.core.model import adapt
from petkit.core.registry import config_from_dict
from petkit.core.storage import WEIGHTS_NAME
from petkit.core.unwrapped import base_parameters

DEFAULT_METHOD = {"name": "lora", "r": 8, "alpha": 16, "targets": ["query", "value"]}


@dataclass
class RunSpec:
    model: str = "minilm"
    data: str = "bbc"
    method: dict = field(default_factory=lambda: dict(DEFAULT_METHOD))
    train: dict = field(default_factory=dict)  # petkit.train.TrainConfig fields
    max_length: int = 128
    max_train: int | None = None
    max_eval: int | None = None
    output: str | None = None
    save_format: str = "petkit"
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict) -> "RunSpec":
        return config_from_mapping(cls, data, where="run")

    def method_config(self) -> AdapterConfig:
        method = dict(self.method)
        if "name" not in method:
            raise ConfigError("the method needs a name, e.g. method: {name: lora, r: 8}")
        method["method"] = method.pop("name")
        return config_from_dict(method)

    def train_config(self):
        from petkit.train import TrainConfig
        settings = {"seed": self.seed, **self.train}
        if self.output and "output_dir" not in settings:
            settings["output_dir"] = str(Path(self.output) / "train")
        settings = check_keys(settings, field_names(TrainConfig), where="train")  # a typo names the closest key
        try:
            return TrainConfig(**settings)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid train settings: {exc}") from None


@dataclass
class Prepared:
    """Everything a run needs, loaded: the data splits as datasets, tokenizer and the base model."""
    spec: RunSpec
    task: str
    labels: list[str]
    tokenizer: object
    model: torch.nn.Module
    train: object
    dev: object
    test: object


def prepare(spec: RunSpec) -> Prepared:
    from petkit.data import ClassificationDataset, lm_blocks, load_dataset, subsample
    from petkit.models import load_model, load_tokenizer

    data = _runnable(load_dataset(spec.data, seed=spec.seed))
    data = subsample(data, spec.max_train, spec.max_eval, seed=spec.seed)
    tokenizer = load_tokenizer(spec.model)
    torch.manual_seed(spec.seed)  # the new classification head is random: make it reproducible
    if data.task == "classification":
        model = load_model(spec.model, task="classification", num_labels=data.num_labels)
        splits = [ClassificationDataset(tokenizer, s, spec.max_length) for s in (data.train, data.dev, data.test)]
    else:
        model = load_model(spec.model, task="causal_lm")
        splits = [lm_blocks(tokenizer, s, spec.max_length) for s in (data.train, data.dev, data.test)]
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return Prepared(spec, data.task, data.labels, tokenizer, model, *splits)


def check(spec: RunSpec) -> None:
    """Fail early, before any process is started, on what prepare() would refuse: the method and trainer
    settings, the data name and the model (a SmolLM2 conversion happens here, once, not in every rank)."""
    from petkit.data import load_dataset
    from petkit.models import resolve

    spec.method_config()
    spec.train_config()
    _runnable(load_dataset(spec.data, seed=spec.seed))
    resolve(spec.model)


def _runnable(data):
    # SFT data has its own datasets (petkit.data.sft_dataset) but no run wiring yet: say so, not KeyError 'text'.
    if data.task == "sft":
        raise ConfigError(f"{data.name} is an SFT (instruction/chat) dataset, which petkit runs do not train yet: "
                          f"use petkit.data.sft_dataset with petkit.train.train(task='causal_lm') (see docs/sft.md)")
    return data


def _headline(metrics: dict) -> dict:
    keep = ("accuracy", "macro_f1", "loss", "perplexity")
    return {k: round(float(v), 4) for k, v in metrics.items() if k in keep}


def run(spec: RunSpec, *, resume: bool = False, progress: bool = True, log=print) -> dict:
    """Train spec.method on spec.data; evaluate before and after; save the adapter. Returns a report."""
    from petkit.train import evaluate, train
    from petkit.train.distributed import world

    config = spec.method_config()
    cfg = spec.train_config()
    prep = prepare(spec)
    log(f"{spec.model} on {spec.data}: {len(prep.train)} train / {len(prep.dev)} dev / {len(prep.test)} test examples")
    before = evaluate(prep.model, prep.test, prep.task, batch_size=cfg.eval_batch_size or cfg.batch_size)
    am = adapt(prep.model, config)
    trainable = sum(p.numel() for p in am.trainable_parameters())
    base_params = sum(p.numel() for p in base_parameters(am.base).values())
    log(f"{config.method}: {trainable:,} trainable parameters ({100 * trainable / base_params:.2f}% of {base_params:,})")
    start = time.perf_counter()
    result = train(am, prep.train, cfg, eval_data=prep.dev, task=prep.task, resume=resume, progress=progress)
    seconds = time.perf_counter() - start
    after = evaluate(am, prep.test, prep.task, batch_size=cfg.eval_batch_size or cfg.batch_size)
    report = {
        "model": spec.model, "data": spec.data, "method": config.method, "trainable_parameters": trainable,
        "base_parameters": base_params, "train_seconds": round(seconds, 1), "steps": result.steps,
        "test_before": _headline(before), "test_after": _headline(after), "dev": _headline(result.eval_metrics),
        "processes": world().size,
    }
    if spec.output and world().main:
        out = Path(spec.output)
        am.save(out / "adapter", format=spec.save_format)
        report["adapter"] = str(out / "adapter")
        report["adapter_bytes"] = (out / "adapter" / WEIGHTS_NAME).stat().st_size
        (out / "spec.json").write_text(json.dumps(dataclasses.asdict(spec), indent=2) + "\n")
        (out / "result.json").write_text(json.dumps(report, indent=2) + "\n")
    report["_adapted"] = am
    report["_prepared"] = prep
    return report


def evaluate_adapter(model: str, data: str, adapter: str | None, split: str = "test", *, max_eval=None,
                     max_length: int = 128, batch_size: int = 32, seed: int = 0, force: bool = False) -> dict:
    """Metrics of a base model (with a saved adapter, if given) on one split of a dataset."""
    from petkit.train import evaluate

    prep = prepare(RunSpec(model=model, data=data, max_eval=max_eval, max_train=1, max_length=max_length, seed=seed))
    if split not in ("dev", "test", "train"):
        raise ConfigError(f"split must be dev, test or train, got {split!r}")
    target = load(prep.model, adapter, force=force) if adapter else prep.model
    return evaluate(target, getattr(prep, split), prep.task, batch_size=batch_size)
