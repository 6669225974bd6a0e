"""The phases of Deep Model Assembling as separate jobs over one output folder, and the end-to-end
baseline:

    cfg = AssembleConfig(data="ag_news", depth=8, num_modules=4, output="runs/asm")
    run_meta(cfg)                        # PT: trains the meta model     -> runs/asm/meta/
    for k in range(4): run_incubate(cfg, k)   # MT: one job per module  -> runs/asm/modules/module<k>/
    run_assemble(cfg)                    # FT: assemble + fine-tune       -> runs/asm/assembled/
    run_e2e(cfg)                         # E2E at the same total budget   -> runs/asm/e2e/

Each writes `<phase>.json` next to its weights: steps, cost in target steps, wall-clock seconds, and for the
end models the dev curve and the test accuracy of the step selected on dev (the best dev accuracy).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from petkit.core.errors import ConfigError

from .config import AssembleConfig, meta_model, target_model
from .incubate import budget, incubation_model, step_cost
from .modules import module_state
from .storage import load_module, save_module


@dataclass
class Prepared:
    train: object
    dev: object
    test: object
    num_labels: int
    vocab_size: int


def prepare(cfg: AssembleConfig) -> Prepared:
    """The data, tokenised with the named model's tokenizer (its vocabulary only)."""
    from transformers import AutoTokenizer

    from petkit.data.batches import ClassificationDataset
    from petkit.data.load import load_dataset
    from petkit.models.aliases import ALIASES, minilm_dir

    data = load_dataset(cfg.data, cfg.data_seed, max_train=cfg.max_train, max_eval=cfg.max_eval)
    if data.task != "classification":
        raise ConfigError(f"model assembling here trains a classifier; {cfg.data!r} is a {data.task} dataset")
    folder = minilm_dir() if cfg.tokenizer == "minilm" else cfg.tokenizer
    if cfg.tokenizer in ALIASES and cfg.tokenizer != "minilm":
        raise ConfigError(f"tokenizer {cfg.tokenizer!r}: use 'minilm' or a folder holding a tokenizer")
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    sets = [ClassificationDataset(tok, split, cfg.max_length) for split in (data.train, data.dev, data.test)]
    return Prepared(*sets, num_labels=len(data.labels), vocab_size=len(tok))


@dataclass
class Phase:
    steps: int
    seconds: float                  # training only (dev evaluations excluded)
    curve: list = field(default_factory=list)   # [step, dev accuracy]
    best_step: int | None = None
    best_dev: float | None = None
    best_state: dict | None = None


def train_phase(model: nn.Module, data: Prepared, tc, eval_every: int = 0, select: bool = False) -> Phase:
    """Train the model's trainable parameters with petkit's trainer; score dev every `eval_every` steps and
    at the end; with `select`, keep the weights of the best dev step (ties: the earlier step)."""
    from petkit.train import evaluate, train

    phase = Phase(steps=tc.max_steps, seconds=0.0)
    eval_seconds = [0.0]

    def score(step: int) -> None:
        start = time.perf_counter()
        acc = evaluate(model, data.dev, batch_size=64)["accuracy"]
        phase.curve.append([step, acc])
        if select and (phase.best_dev is None or acc > phase.best_dev):
            phase.best_step, phase.best_dev = step, acc
            phase.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        eval_seconds[0] += time.perf_counter() - start

    def on_step(info) -> None:
        if eval_every and info.step % eval_every == 0 and info.step < tc.max_steps:
            score(info.step)

    start = time.perf_counter()
    train(model, data.train, tc, progress=False, on_step=on_step)
    phase.seconds = time.perf_counter() - start - eval_seconds[0]
    score(tc.max_steps)
    return phase


def _folder(cfg: AssembleConfig, *parts: str) -> Path:
    return Path(cfg.output).joinpath(*parts)


def _write(path: Path, record: dict) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return record


# The settings that fix the data, the models and the budget already spent: every later phase must use
# the values the meta phase used (module k's init and the meta model it is incubated in depend on them).
SHARED = ("data", "tokenizer", "model_type", "depth", "num_modules", "width", "heads", "ffn", "model_options",
          "max_length", "max_train", "max_eval", "data_seed", "seed", "meta_steps", "incubation_steps")
RUN_FILE = "assemble.json"


def check_same_run(cfg: AssembleConfig) -> None:
    """Refuse a phase whose settings differ from the ones the run's meta phase recorded."""
    path = _folder(cfg, RUN_FILE)
    if not path.is_file():
        raise ConfigError(f"{cfg.output} holds no assembling run ({RUN_FILE} is missing): run the meta phase first "
                          f"(petkit assemble meta)")
    saved = json.loads(path.read_text())
    changed = [f"{k} (was {saved.get(k)!r}, now {getattr(cfg, k)!r})" for k in SHARED if saved.get(k) != getattr(cfg, k)]
    if changed:
        raise ConfigError(f"these settings differ from the ones {cfg.output}'s meta phase used: {', '.join(changed)}; "
                          f"run every phase with the same settings, or start a new output folder")


def run_meta(cfg: AssembleConfig, data: Prepared | None = None) -> dict:
    """PT: train the meta model (K blocks) end to end; saves it to <output>/meta and the run's settings to
    <output>/assemble.json (the later phases check theirs against them)."""
    data = data or prepare(cfg)
    _write(_folder(cfg, RUN_FILE), cfg.to_dict())
    model = meta_model(cfg, data.num_labels, data.vocab_size)
    phase = train_phase(model, data, cfg.train_config(cfg.meta_steps))
    model.save_pretrained(_folder(cfg, "meta"))
    cost = cfg.meta_steps * step_cost([1] * cfg.num_modules, 0, cfg.depth)
    return _write(_folder(cfg, "meta", "meta.json"), {"phase": "meta", "steps": phase.steps, "cost": cost,
                                                      "seconds": phase.seconds, "dev": phase.curve[-1][1]})


def load_meta(cfg: AssembleConfig) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    check_same_run(cfg)
    folder = _folder(cfg, "meta")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"no meta model in {folder}: run the meta phase first (petkit assemble meta)")
    return AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True)


def run_incubate(cfg: AssembleConfig, k: int, data: Prepared | None = None) -> dict:
    """MT for module k alone: train target module k inside the meta model; saves it to <output>/modules/module<k>."""
    data = data or prepare(cfg)
    meta = load_meta(cfg)
    target = target_model(cfg, data.num_labels, data.vocab_size)
    model, split = incubation_model(meta, target, k, cfg.num_modules)
    phase = train_phase(model, data, cfg.train_config(cfg.incubation_steps))
    folder = _folder(cfg, "modules", f"module{k}")
    save_module(folder, module_state(model, split, k), k, cfg.num_modules, target)
    cost = cfg.incubation_steps * step_cost(split.depths, k, cfg.depth)
    return _write(folder / "incubate.json", {"phase": "incubate", "module": k, "steps": phase.steps, "cost": cost,
                                             "seconds": phase.seconds, "dev": phase.curve[-1][1]})


def assembled_model(cfg: AssembleConfig, data: Prepared) -> nn.Module:
    """The target with every incubated module put in place (all K must be there)."""
    target = target_model(cfg, data.num_labels, data.vocab_size)
    folders = [_folder(cfg, "modules", f"module{k}") for k in range(cfg.num_modules)]
    missing = [k for k, f in enumerate(folders) if not f.is_dir()]
    if missing:
        raise ConfigError(f"modules {missing} have not been incubated yet: run petkit assemble incubate --module "
                          f"{missing[0]} (one job per module) before assembling")
    for k, folder in enumerate(folders):
        load_module(folder, target, k)
    return target


def run_assemble(cfg: AssembleConfig, data: Prepared | None = None) -> dict:
    """FT: assemble the K incubated modules and fine-tune end to end (no warmup, clip 1); saves <output>/assembled."""
    check_same_run(cfg)
    data = data or prepare(cfg)
    model = assembled_model(cfg, data)
    spent = budget(cfg.num_modules, cfg.depth, cfg.meta_steps, cfg.incubation_steps, 0)["total"]
    return _finish(cfg, data, model, "assembled", cfg.train_config(cfg.finetune_steps, cfg.finetune_warmup), spent)


def run_e2e(cfg: AssembleConfig, steps: int | None = None, name: str = "e2e", data: Prepared | None = None) -> dict:
    """The baseline: the target trained end to end from scratch; by default for as many steps as the
    whole assembling run costs (meta + every incubation + fine-tuning, in target steps)."""
    data = data or prepare(cfg)
    if steps is None:
        steps = round(budget(cfg.num_modules, cfg.depth, cfg.meta_steps, cfg.incubation_steps,
                             cfg.finetune_steps)["total"])
    model = target_model(cfg, data.num_labels, data.vocab_size)
    return _finish(cfg, data, model, name, cfg.train_config(steps), 0.0)


def _finish(cfg, data, model, name: str, tc, spent: float) -> dict:
    """Train an end model, select its step on dev, score that step on test, save it."""
    from petkit.train import evaluate

    phase = train_phase(model, data, tc, eval_every=cfg.eval_every, select=True)
    final_test = evaluate(model, data.test, batch_size=64)["accuracy"]
    model.load_state_dict(phase.best_state)
    test = evaluate(model, data.test, batch_size=64)["accuracy"]
    model.save_pretrained(_folder(cfg, name))
    record = {"phase": name, "steps": phase.steps, "cost": float(phase.steps), "budget_before": spent,
              "seconds": phase.seconds, "curve": phase.curve, "best_step": phase.best_step, "dev": phase.best_dev,
              "test": test, "final_dev": phase.curve[-1][1], "final_test": final_test}
    return _write(_folder(cfg, name, f"{name}.json"), record)


__all__ = ["Prepared", "prepare", "run_assemble", "run_e2e", "run_incubate", "run_meta", "train_phase"]
