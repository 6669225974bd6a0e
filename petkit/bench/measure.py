"""One bench run, measured: train a method on a task at one seed and learning rate, score it, time it.

A job is plain JSON (so it can be sent to a fresh process, see child.py):
{"library": "petkit"|"peft", "method", "task", "seed", "lr", "settings": {...}, "setup": {...}}, plus
"registered" (the registered method) when "method" names a bench variant.

What is measured, and how:
- dev and test metrics: `petkit.train.evaluate` after training (dev picks the learning rate):
  loss, accuracy and macro-F1 on a classification task; loss and perplexity on a causal-LM one.
- trainable parameters: those with requires_grad while training (adapter + task head).
- adapter bytes: the saved `adapter_model.safetensors` (petkit format; PEFT's own for PEFT runs).
- training memory: peak resident set (VmHWM) during training, reset just before it starts, minus
  the resident set at that moment (imports, tokenised data, the model with its adapter attached and
  one forward pass done, so lazily loaded weights are resident): what training adds (optimizer
  state, gradients, activations). The absolute peak is kept too. See memory.py for why RSS and why
  a fresh process.
- step time: median wall time of the optimizer steps after the first WARMUP_STEPS.
- inference: `infer_reps` rounds of no-grad forwards over `infer_batch` test examples, each round
  timing the frozen base (a fresh copy without any wrapper) and the adapted model in alternating
  order; the ratio is the median over rounds of adapted / base *in the same round*, which cancels
  most drift from other load on the machine. Then the same for the merged model (when the method
  can merge), with the largest logit change from merging as a correctness check.
"""

from __future__ import annotations

import gc
import itertools
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from petkit.bench.config import WARMUP_STEPS
from petkit.bench.machine import cpu, versions
from petkit.bench.memory import PeakMemory
from petkit.core.errors import ConfigError, StateError
from petkit.core.model import adapt
from petkit.core.storage import WEIGHTS_NAME
from petkit.pipeline import RunSpec, prepare


def run_spec(job: dict) -> RunSpec:
    setup = job["setup"]
    train = {"lr": job["lr"], "max_steps": setup["steps"], "batch_size": setup["batch_size"],
             "eval_batch_size": setup["eval_batch_size"], "warmup": setup["warmup"], "schedule": setup["schedule"],
             "eval_every_epoch": False}  # dev is scored once, at the end: no evaluation inside the timed steps
    method = {"name": job.get("registered", job["method"]), **job["settings"]}
    return RunSpec(model=setup["model"], data=job["task"], method=method,
                   train=train, max_length=setup["max_length"], max_train=setup["max_train"],
                   max_eval=setup["max_eval"], seed=job["seed"])


def measure_run(job: dict) -> dict:
    from petkit.train import evaluate, train

    setup = job["setup"]
    if setup["threads"]:
        torch.set_num_threads(setup["threads"])
    load_before = os.getloadavg()[0]
    spec = run_spec(job)
    prep = prepare(spec)
    if prep.task not in ("classification", "causal_lm"):
        raise ConfigError(f"the bench scores classification and causal-LM tasks; {job['task']} is {prep.task}")
    base_params = sum(p.numel() for p in prep.model.parameters())

    # --- training, with its memory and step times
    model = _attach(job["library"], prep.model, spec)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    with torch.no_grad():  # page in the lazily loaded (mmap) weights and one-time kernel state first:
        model(**prep.train.collate([prep.train[0]]))  # neither is memory that training adds
    gc.collect()
    memory = PeakMemory()
    stamps: list[float] = []
    started = time.perf_counter()
    train(model, prep.train, spec.train_config(), task=prep.task, progress=False,
          on_step=lambda _: stamps.append(time.perf_counter()))
    train_s = time.perf_counter() - started
    peak_mb, train_mb = memory.read()
    # stamps[k] ends step k+1, so the difference k ends step k+2: skip steps 1..WARMUP_STEPS
    steps = [b - a for a, b in itertools.pairwise(stamps)][WARMUP_STEPS - 1:]

    # --- scores (outside the memory window: evaluation batches are bigger), size on disk, inference
    dev, test = (evaluate(model, split, prep.task, batch_size=setup["eval_batch_size"])
                 for split in (prep.dev, prep.test))
    return {
        "dev": _scores(dev), "test": _scores(test),
        "trainable_params": trainable, "base_params": base_params,
        "adapter_bytes": _saved_bytes(model, job["library"]),
        "train_mb": train_mb, "peak_rss_mb": peak_mb,
        "memory_method": f"VmHWM {'reset before training' if memory.reset else 'whole process'}, "
                         f"{'fresh process' if setup['isolate'] else 'in-process'}",
        "step_s": statistics.median(steps), "train_s": round(train_s, 3),
        "inference": _time_inference(model, job["library"], prep, setup),
        "machine": cpu(), "versions": versions(),
        "threads": torch.get_num_threads(), "load_avg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def _attach(library: str, model, spec: RunSpec):
    if library == "peft":
        from petkit.bench.peft_side import peft_model
        with warnings.catch_warnings():  # PEFT calls a transformers API that warns of its own deprecation
            warnings.simplefilter("ignore", FutureWarning)
            return peft_model(model, spec.method_config())
    return adapt(model, spec.method_config())


def _scores(metrics: dict) -> dict:
    return {k: round(float(metrics[k]), 6) for k in ("accuracy", "macro_f1", "loss", "perplexity") if k in metrics}


def _saved_bytes(model, library: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        if library == "peft":
            model.save_pretrained(tmp)
        else:
            model.save(tmp)
        return (Path(tmp) / WEIGHTS_NAME).stat().st_size


# -- inference timing ------------------------------------------------------------------------------

def _time_inference(model, library: str, prep, setup: dict) -> dict:
    from petkit.models import load_model

    if prep.task == "classification":
        base = load_model(setup["model"], task="classification", num_labels=len(prep.labels))
    else:
        base = load_model(setup["model"], task=prep.task)
    examples = [prep.test[i] for i in range(min(setup["infer_batch"], len(prep.test)))]
    batch = {k: v for k, v in prep.test.collate(examples).items() if k != "labels"}
    model.eval()
    out = {"batch": list(batch["input_ids"].shape)}
    with torch.no_grad():
        unmerged_logits = model(**batch).logits
        out.update(_paired("unmerged", base, model, batch, setup["infer_reps"]))
        if _merge(model, library):
            out.update(_paired("merged", base, model, batch, setup["infer_reps"]))
            out["merge_max_abs_diff"] = float((model(**batch).logits - unmerged_logits).abs().max())
    return out


def _merge(model, library: str) -> bool:
    if library == "peft":
        if model.peft_config["default"].is_prompt_learning:  # prompts are not weights: nothing to merge
            return False
        model.merge_adapter()
        return True
    try:
        model.merge()  # a no-op for full fine-tuning, whose weights are the model's own
        return True
    except StateError:  # a method that cannot merge: no merged column
        return False


def _paired(name: str, base, model, batch: dict, reps: int) -> dict:
    def timed(m) -> float:
        t0 = time.perf_counter()
        m(**batch)
        return time.perf_counter() - t0

    timed(base)  # warm-up
    timed(model)
    base_s, model_s = [], []
    for r in range(reps):
        turns = [(base_s, base), (model_s, model)]
        for times, m in turns if r % 2 == 0 else turns[::-1]:  # alternate who goes first (warmer caches)
            times.append(timed(m))
    ratios = [m / b for m, b in zip(model_s, base_s)]
    return {f"{name}_ms": round(1000 * statistics.median(model_s), 3),
            f"{name}_base_ms": round(1000 * statistics.median(base_s), 3),
            f"{name}_ratio": round(statistics.median(ratios), 4)}
