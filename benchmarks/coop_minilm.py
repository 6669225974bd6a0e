#!/usr/bin/env python
"""CoOp for a text-text dual encoder: learned context against hand templates and a linear probe.

MiniLM (all-MiniLM-L6-v2, frozen) embeds the input text (mean pooling, unit norm) and the class
prompts; a prompt is "[V1]…[VM] {class name}." with M learnable soft tokens run through the frozen
encoder; logits = 20·cos. Compared on AG News (4 topics) and TREC (6 coarse classes) with K = 1, 4,
16 examples per class, 3 seeds (the seed draws the K-shot sample and the random init):
- zero-shot: each hand template alone, and their ensemble (mean of unit class embeddings);
- linear probe: logistic regression on the frozen input embeddings, C picked on dev;
- CoOp unified, context initialised from the first template's words (M = 4 / 3 tokens);
- CoOp unified, random init N(0, 0.02²), M = 16 (CoOp's default);
- CoOp class-specific context (CSC), initialised from the template words;
- CoCoOp (meta-net 384→24→384, template init, batch 32) alone with ``--cocoop`` (about 1 s a step: slow;
  the committed run: ``--cocoop --datasets ag_news --shots 4 --steps 50``, about 12 minutes).
CoOp: Adam lr 2e-3, full batch, up to ``--steps`` steps; dev accuracy every 25 steps picks the step.

Splits (data seed 0, the same for every few-shot seed): AG News ships only its 7,600-row test split
here, which petkit splits stratified 80/10/10 into train (the few-shot pool) / dev / test; TREC's dev
is a stratified 10% of its train split, its test is the source test set (500). Dev is used for every
choice (CoOp step, probe C), never test.

    .venv/bin/python benchmarks/coop_minilm.py               # about 15 minutes of one core
    .venv/bin/python benchmarks/coop_minilm.py --datasets trec --seeds 0 --shots 1 --steps 25 --out /tmp/coop
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

from petkit.data import load_dataset  # noqa: E402
from petkit.dual import (CoOpClassifier, CoOpConfig, FitConfig, accuracy, ensemble, fit_coop,  # noqa: E402
                         template_class_embeddings, zero_shot_accuracy)
from petkit.models import load_model, load_tokenizer  # noqa: E402
from petkit.models.pooling import embed_sentences  # noqa: E402

TASKS = {
    "ag_news": {"names": ["world", "sports", "business", "science and technology"],
                "templates": ["a news article about {}.", "{}.", "this text is about {}.", "news about {}."]},
    "trec": {"names": ["abbreviation", "description", "entity", "person", "location", "number"],
             "templates": ["a question about {}.", "{}.", "this text is about {}.", "the answer is a {}."]},
}
PROBE_C = (0.01, 0.1, 1.0, 10.0, 100.0)


def variants(init_words: str, cocoop: bool) -> dict[str, CoOpConfig]:
    out = {"coop (template init)": CoOpConfig(ctx_init=init_words),
           "coop (random, M=16)": CoOpConfig(n_ctx=16),
           "coop csc (template init)": CoOpConfig(ctx_init=init_words, csc=True)}
    if cocoop:  # a separate, slower run: CoCoOp only
        return {"cocoop (template init)": CoOpConfig(ctx_init=init_words, cocoop=True)}
    return out


def k_shot(rows: list[dict], k: int, n_labels: int, seed: int) -> list[dict]:
    """k rows per label; nested across k (the 1-shot set is inside the 4-shot set) for one seed."""
    rng = random.Random(f"coop-shots/{seed}")
    by_label = {c: [r for r in rows if r["label"] == c] for c in range(n_labels)}
    order = {c: rng.sample(v, len(v)) for c, v in by_label.items()}
    return [r for c in range(n_labels) for r in order[c][:k]]


def linear_probe(train_x, train_y, dev, test) -> dict:
    from sklearn.linear_model import LogisticRegression

    best = None
    for c in PROBE_C:
        clf = LogisticRegression(C=c, max_iter=2000).fit(train_x.numpy(), train_y.numpy())
        dev_acc = clf.score(dev[0].numpy(), dev[1].numpy())
        if best is None or dev_acc > best[0]:
            best = (dev_acc, c, clf)
    return {"dev": best[0], "test": best[2].score(test[0].numpy(), test[1].numpy()), "C": best[1]}


def run_task(name: str, shots: list[int], seeds: list[int], steps: int, cocoop: bool, encoder, tokenizer) -> dict:
    spec = TASKS[name]
    data = load_dataset(name, seed=0)
    embed = lambda rows: embed_sentences(encoder, tokenizer, [r["text"] for r in rows])  # noqa: E731
    labels = lambda rows: torch.tensor([r["label"] for r in rows])  # noqa: E731
    dev, test = (embed(data.dev), labels(data.dev)), (embed(data.test), labels(data.test))
    templates = template_class_embeddings(encoder, tokenizer, spec["names"], spec["templates"])
    zero = {t: {"dev": zero_shot_accuracy(*dev, g), "test": zero_shot_accuracy(*test, g)}
            for t, g in zip(spec["templates"], templates)}
    zero["ensemble"] = {"dev": zero_shot_accuracy(*dev, ensemble(templates)),
                        "test": zero_shot_accuracy(*test, ensemble(templates))}
    init_words = spec["templates"][0].replace("{}.", "").strip()
    runs = []
    for seed in seeds:
        for k in shots:
            rows = k_shot(data.train, k, len(spec["names"]), seed)
            x, y = embed(rows), labels(rows)
            runs.append({"seed": seed, "shots": k, "method": "linear probe", **linear_probe(x, y, dev, test)})
            for method, config in variants(init_words, cocoop).items():
                torch.manual_seed(seed)
                model = CoOpClassifier(encoder, tokenizer, spec["names"], config)
                started = time.perf_counter()
                fit = fit_coop(model, x, y, FitConfig(steps=steps, eval_every=25, seed=seed,
                                                      batch_size=32 if config.cocoop else None), dev=dev)
                runs.append({"seed": seed, "shots": k, "method": method, "dev": fit.best_dev_accuracy,
                             "test": accuracy(model, *test), "best_step": fit.best_step, "n_ctx": model.n_ctx,
                             "seconds": round(time.perf_counter() - started, 1)})
                print(name, runs[-1], flush=True)
    return {"dataset": name + (" (CoCoOp run)" if cocoop else ""), "class_names": spec["names"], "splits": data.splits_note, "n_train_pool": len(data.train), "n_dev": len(data.dev), "n_test": len(data.test),
            "zero_shot": zero, "init_words": init_words, "steps": steps, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--cocoop", action="store_true", help="also train CoCoOp (slow: ~1 s a step)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "coop-minilm")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    encoder, tokenizer = load_model("minilm", task="base"), load_tokenizer("minilm")
    for name in args.datasets:
        started = time.perf_counter()
        result = run_task(name, args.shots, args.seeds, args.steps, args.cocoop, encoder, tokenizer)
        result["seconds"] = round(time.perf_counter() - started, 1)
        suffix = "-cocoop" if args.cocoop else ""
        (args.out / f"{name}{suffix}.json").write_text(json.dumps(result, indent=1))
    from coop_minilm_report import write_report  # noqa: E402

    write_report(args.out)


if __name__ == "__main__":
    main()
