"""One fine-tuning run from a short spec: model + data + method + trainer, then save and report.

This is what `petkit train`, `petkit eval` and `make demo` run, and what the benchmark harness
repeats over a grid. A spec is plain data, so the same run can be written as flags or as YAML:

    model: minilm
    data: bbc
    method: {name: lora, r: 8, alpha: 16, targets: [query, value]}
    train: {epochs: 2, lr: 5.0e-4, batch_size: 16}
    max_length: 128
    output: runs/bbc-lora

A regression run (``data: vader`` or records with a ``target``) adds ``regression: {loss: huber,
pooling: mean, head: mlp}`` (petkit.models.regression.RegressionConfig's settings; the outputs and their
names come from the data).
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
from petkit.core.storage import LABELS_NAME, WEIGHTS_NAME
from petkit.core.unwrapped import base_parameters

DEFAULT_METHOD = {"name": "lora", "r": 8, "alpha": 16, "targets": ["query", "value"]}


TASKS = ("classification", "causal_lm", "sft", "regression")
REGRESSION_SETTINGS = ("loss", "huber_delta", "pooling", "head", "dropout")


@dataclass
class RunSpec:
    model: str = "minilm"
    data: str | dict = "bbc"  # a dataset name, a data file, or your own split files {train, dev, test}
    task: str | None = None   # None: the data's (classification, causal_lm, sft or regression); given, it is checked
    method: dict = field(default_factory=lambda: dict(DEFAULT_METHOD))
    train: dict = field(default_factory=dict)  # petkit.train.TrainConfig fields
    max_length: int = 128
    max_train: int | None = None
    max_eval: int | None = None
    output: str | None = None
    save_format: str = "petkit"
    seed: int = 0
    # SFT (instruction/chat data, docs/sft.md): packing of short examples into padding-free rows of
    # max_length, the policy for longer examples, and how many test examples get their generated answer
    # scored (exact match, ROUGE-L) within answer_tokens tokens
    packing: bool = False
    truncation: str = "truncate"
    answers: int = 100
    answer_tokens: int = 32
    # A low-bit frozen base (QLoRA-style): petkit.quantize's settings, e.g. {bits: 4} or
    # {bits: 4, scheme: nf4, group_size: 64, embeddings: true}; None keeps the base in float.
    quantize: dict | None = None
    # Regression data: the head and loss (RegressionConfig settings: loss, huber_delta, pooling, head, dropout)
    regression: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task is not None and self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if not isinstance(self.answers, int) or self.answers < 0:
            raise ConfigError(f"answers must be an integer >= 0, got {self.answers!r}")
        if self.quantize is not None:
            if not isinstance(self.quantize, dict) or "bits" not in self.quantize:
                raise ConfigError(f"quantize must be a mapping with bits, e.g. {{bits: 4}}, got {self.quantize!r}")
            check_keys(self.quantize, ("bits", "scheme", "group_size", "embeddings", "targets", "exclude"),
                       where="quantize")
        if not isinstance(self.regression, dict):
            raise ConfigError(f"regression must be a mapping of head settings, e.g. {{loss: huber}}, got {self.regression!r}")
        check_keys(self.regression, REGRESSION_SETTINGS, where="regression")

    def regression_config(self, outputs: int, names=()):
        from petkit.models.regression import RegressionConfig
        return RegressionConfig(outputs=outputs, names=tuple(names), **self.regression)

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
    task: str            # what the trainer and evaluate score: classification, regression or causal_lm (SFT is causal_lm)
    labels: list[str]
    tokenizer: object
    model: torch.nn.Module
    train: object
    dev: object
    test: object
    kind: str = ""                                   # the data's task: classification, causal_lm, sft or regression
    test_records: list = field(default_factory=list, repr=False)  # sft: the test records, to generate answers for


def prepare(spec: RunSpec) -> Prepared:
    from petkit.data import ClassificationDataset, RegressionDataset, lm_blocks, load_dataset, sft_dataset, subsample
    from petkit.models import load_model, load_tokenizer

    data = _checked_task(spec, load_dataset(spec.data, seed=spec.seed))
    data = subsample(data, spec.max_train, spec.max_eval, seed=spec.seed)
    tokenizer = load_tokenizer(spec.model)
    torch.manual_seed(spec.seed)  # the new classification head is random: make it reproducible
    if data.task == "classification":
        model = load_model(spec.model, task="classification", num_labels=data.num_labels)
        splits = [ClassificationDataset(tokenizer, s, spec.max_length) for s in (data.train, data.dev, data.test)]
    elif data.task == "regression":  # the head predicts targets standardised by the train split's mean/std
        head = spec.regression_config(data.num_labels, data.labels)
        model = load_model(spec.model, task="regression", regression=head).standardise(data.train)
        splits = [RegressionDataset(tokenizer, s, spec.max_length, data.num_labels)
                  for s in (data.train, data.dev, data.test)]
    elif data.task == "sft":
        model = load_model(spec.model, task="causal_lm")
        splits = [sft_dataset(tokenizer, s, spec.max_length, spec.truncation, packing=spec.packing and s is data.train)
                  for s in (data.train, data.dev, data.test)]
    else:
        model = load_model(spec.model, task="causal_lm")
        splits = [lm_blocks(tokenizer, s, spec.max_length) for s in (data.train, data.dev, data.test)]
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if spec.quantize:
        from petkit.quant import quantize

        quantize(model, **spec.quantize)  # before the adapter: the base is stored low-bit, the adapter trains
    task = data.task if data.task in ("classification", "regression") else "causal_lm"
    return Prepared(spec, task, data.labels, tokenizer, model, *splits, kind=data.task,
                    test_records=list(data.test) if data.task == "sft" else [])


def check(spec: RunSpec) -> None:
    """Fail early, before any process is started, on what prepare() would refuse: the method and trainer
    settings, the data name and the model (a SmolLM2 conversion happens here, once, not in every rank)."""
    from petkit.data import load_dataset
    from petkit.models import resolve

    spec.method_config()
    spec.train_config()
    _checked_task(spec, load_dataset(spec.data, seed=spec.seed))
    resolve(spec.model)


def _checked_task(spec: RunSpec, data):
    if spec.task is not None and spec.task != data.task:
        hint = (f" (instruction-formatted sets: {', '.join(_instruct_names())})" if spec.task == "sft" else "")
        raise ConfigError(f"task {spec.task!r} was asked for, but {data.name} holds {data.task} data{hint}")
    if data.task != "sft" and (spec.packing or spec.truncation != "truncate"):
        raise ConfigError(f"packing and truncation apply to SFT data; {data.name} holds {data.task} data")
    if data.task != "regression" and spec.regression:
        raise ConfigError(f"regression settings apply to regression data; {data.name} holds {data.task} data")
    return data


def _instruct_names() -> list[str]:
    from petkit.data.instruct import READERS
    return sorted(READERS)


def _answers(model, prep: Prepared) -> dict:
    """Exact match and ROUGE-L of greedy answers to the first spec.answers test records."""
    from petkit.data import reference_answer
    from petkit.train.generative import generate_answers, generative_scores

    records = prep.test_records[: prep.spec.answers]
    if not records:
        return {}
    answers = generate_answers(model, prep.tokenizer, records, max_new_tokens=prep.spec.answer_tokens)
    return generative_scores(answers, [reference_answer(r) for r in records])


def _headline(metrics: dict) -> dict:
    keep = ("accuracy", "macro_f1", "loss", "perplexity", "exact_match", "rouge_l", "mse", "mae", "r2", "pearson",
            "spearman")
    return {k: round(float(v), 4) for k, v in metrics.items() if k in keep}


def run(spec: RunSpec, *, resume: bool = False, progress: bool = True, log=print) -> dict:
    """Train spec.method on spec.data; evaluate before and after; save the adapter. Returns a report."""
    from petkit.train import evaluate, train
    from petkit.train.distributed import world

    config = spec.method_config()
    cfg = spec.train_config()
    prep = prepare(spec)
    log(f"{spec.model} on {spec.data}: {len(prep.train)} train / {len(prep.dev)} dev / {len(prep.test)} test "
        f"{'rows' if spec.packing else 'examples'}")
    if prep.kind == "sft":
        log(f"train: {prep.train.stats.summary()}")
    before = evaluate(prep.model, prep.test, prep.task, batch_size=cfg.eval_batch_size or cfg.batch_size)
    before |= _answers(prep.model, prep) if prep.kind == "sft" and world().main else {}
    am = adapt(prep.model, config)
    trainable = sum(p.numel() for p in am.trainable_parameters())
    base_params = sum(p.numel() for p in base_parameters(am.base).values())
    log(f"{config.method}: {trainable:,} trainable parameters ({100 * trainable / base_params:.2f}% of {base_params:,})")
    start = time.perf_counter()
    result = train(am, prep.train, cfg, eval_data=prep.dev, task=prep.task, resume=resume, progress=progress)
    seconds = time.perf_counter() - start
    after = evaluate(am, prep.test, prep.task, batch_size=cfg.eval_batch_size or cfg.batch_size)
    after |= _answers(am, prep) if prep.kind == "sft" and world().main else {}
    report = {
        "model": spec.model, "data": spec.data, "method": config.method, "trainable_parameters": trainable,
        "base_parameters": base_params, "train_seconds": round(seconds, 1), "steps": result.steps,
        "test_before": _headline(before), "test_after": _headline(after), "dev": _headline(result.eval_metrics),
        "processes": world().size,
    }
    if spec.output and world().main:
        out = Path(spec.output)
        am.save(out / "adapter", format=spec.save_format)
        if prep.task == "classification" and prep.labels:  # so `petkit serve` answers with class names
            (out / "adapter" / LABELS_NAME).write_text(json.dumps({"labels": prep.labels}) + "\n")
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
    from petkit.models.regression import saved_config
    from petkit.train import evaluate

    saved = saved_config(adapter) if adapter else None  # a regression adapter: its head and pooling
    regression = {k: v for k, v in saved.to_dict().items() if k in REGRESSION_SETTINGS} if saved else {}
    prep = prepare(RunSpec(model=model, data=data, max_eval=max_eval, max_train=1, max_length=max_length, seed=seed,
                           regression=regression))
    if split not in ("dev", "test", "train"):
        raise ConfigError(f"split must be dev, test or train, got {split!r}")
    target = load(prep.model, adapter, force=force) if adapter else prep.model
    return evaluate(target, getattr(prep, split), prep.task, batch_size=batch_size)
