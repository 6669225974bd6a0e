#!/usr/bin/env python
"""PT-OOD on MiniLM: is kNN in the frozen pre-trained feature space a better OOD detector than the
logit-based scores of a linear probe or of a LoRA-fine-tuned model, on "far" and on "familiar" OOD?

Pairs (ID test rows vs OOD rows, all from the local data):
- sst2 → trec, sst2 → ag_news: far OOD (other task, other style), ID = SST-2's source test split;
- ag_news 2 → 2: familiar OOD, ID = AG News topics World + Sports, OOD = the held-out topics
  Business + Sci/Tech (same source, same style; the content is news the encoder knows well).

Scores (higher = ID; petkit.analysis.ood / ood_scores):
- knn (frozen): −distance to the k-th nearest neighbour (k = 10, fixed a priori, not tuned) among the
  L2-normalised frozen MiniLM sentence embeddings (mean pooling) of the ID training texts; a k sweep
  is reported separately as sensitivity;
- probe msp / max_logit / energy / mahalanobis: a linear softmax probe on the same frozen embeddings
  (L2 penalty chosen on ID dev accuracy from a grid); Mahalanobis on the probe's input features;
- lora msp / max_logit / energy / mahalanobis: MiniLM fine-tuned with LoRA (r=8, alpha=16, attn.q/attn.v,
  head trained, 150 steps of 16 × 64 tokens, lr 2e-3: the rate merging_minilm.py chose on SST-2 dev
  for the same LoRA setup, not re-tuned here; --lrs tries a grid on seed 0's ID dev accuracy);
  Mahalanobis on the features the classifier reads (the pooler output).
AUROC (sklearn roc_auc_score) and FPR at 95% TPR (sklearn roc_curve), ID = positive. Seeds (default
0 1 2; the committed results are seed 0 alone, the 3-seed run did not fit the deadline): the seed draws the 1000 ID training texts (bank, probe, LoRA), the LoRA init and data order; the test
rows are fixed (500 ID, 500 OOD for the far pairs; 250 + 250 of the 380 + 380 for AG News 2 → 2; dev:
500 SST-2 rows, all 380 AG News 2-topic rows).

    .venv/bin/python benchmarks/ood_minilm.py --seeds 0             # the committed run: ~17 min on a shared core
    .venv/bin/python benchmarks/ood_minilm.py                       # 3 seeds, about 50 minutes
    .venv/bin/python benchmarks/ood_minilm.py --quick --out /tmp/ood   # a smoke run (1 minute)

Writes ood.json, ood.md and ood.png to --out (default benchmarks/results/ood-minilm).
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
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import petkit  # noqa: E402
from ood_minilm_report import render  # noqa: E402
from petkit.analysis.embed import classifier_outputs, sentence_embeddings  # noqa: E402
from petkit.analysis.ood import OODBank, logit_scores  # noqa: E402
from petkit.analysis.ood_scores import Mahalanobis, detection_metrics  # noqa: E402
from petkit.data import ClassificationDataset, load_dataset  # noqa: E402
from petkit.models import load_model, load_tokenizer  # noqa: E402
from petkit.train import TrainConfig, train  # noqa: E402

K = 10
K_SWEEP = (1, 5, 10, 50, 200)
PROBE_L2 = (1e-5, 1e-4, 1e-3, 1e-2)
AG_ID, AG_OOD = (0, 1), (2, 3)  # World, Sports | Business, Sci/Tech


def sample(rows: list, n: int | None, seed: int) -> list:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows if n is None else rows[:n]


def settings(args) -> dict:
    """ID task → its labels, train/dev rows and test rows, and the OOD rows of each pair."""
    sst2, trec, ag = (load_dataset(n, seed=0) for n in ("sst2", "trec", "ag_news"))
    n_eval = args.max_eval
    ag_id = lambda rows: [{"text": r["text"], "label": AG_ID.index(r["label"])} for r in rows if r["label"] in AG_ID]  # noqa: E731
    ag_ood = [r for r in ag.test if r["label"] in AG_OOD]
    return {
        "sst2": {"labels": sst2.labels, "train": sst2.train, "dev": sample(sst2.dev, n_eval, 0),
                 "test": sample(sst2.test, n_eval, 0),
                 "ood": {"trec": sample(trec.test, n_eval, 0), "ag_news": sample(ag.test, n_eval, 0)}},
        "ag_news_2": {"labels": [ag.labels[i] for i in AG_ID], "train": ag_id(ag.train), "dev": ag_id(ag.dev),
                      "test": sample(ag_id(ag.test), n_eval and n_eval // 2, 0),
                      "ood": {"ag_news_heldout": sample(ag_ood, n_eval and n_eval // 2, 0)}},
    }


def texts(rows):
    return [r["text"] for r in rows]


def labels(rows):
    return torch.tensor([r["label"] for r in rows])


def fit_probe(x, y, x_dev, y_dev, classes: int, seed: int) -> tuple[torch.nn.Linear, float, dict]:
    """A softmax linear probe, full-batch L-BFGS, L2 penalty chosen on dev accuracy."""
    by_l2 = {}
    for l2 in PROBE_L2:
        torch.manual_seed(seed)
        probe = torch.nn.Linear(x.shape[1], classes)
        opt = torch.optim.LBFGS(probe.parameters(), max_iter=300, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(probe(x), y) + l2 * probe.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            by_l2[l2] = (float((probe(x_dev).argmax(-1) == y_dev).float().mean()), probe)
    best = max(PROBE_L2, key=lambda l2: by_l2[l2][0])
    return by_l2[best][1], best, {f"{k:g}": v[0] for k, v in by_l2.items()}


def lora_model(setting, lr: float, seed: int, tokenizer, args):
    torch.manual_seed(seed)
    model = load_model("minilm", task="classification", num_labels=len(setting["labels"]))
    am = petkit.adapt(model, petkit.LoraConfig(r=8, alpha=16, targets=["attn.q", "attn.v"]))
    cfg = TrainConfig(lr=lr, max_steps=args.steps, batch_size=16, seed=seed, eval_every_epoch=False)
    train(am, ClassificationDataset(tokenizer, setting["train_rows"], 64), cfg, progress=False)
    return am


def accuracy(logits, y) -> float:
    return float((logits.argmax(-1) == y).float().mean())


def run_seed(name: str, setting: dict, seed: int, encoder, tokenizer, args, lr_choice: dict) -> dict:
    setting = {**setting, "train_rows": sample(setting["train"], args.max_train, seed)}
    y_train, y_dev, y_test = labels(setting["train_rows"]), labels(setting["dev"]), labels(setting["test"])
    test_sets = {"id": setting["test"], **setting["ood"]}
    frozen = lambda rows: sentence_embeddings(encoder, tokenizer, texts(rows), normalize=True)  # noqa: E731
    bank = OODBank.build(encoder, tokenizer, texts(setting["train_rows"]), k=K)
    f_train, f_dev = bank.features, frozen(setting["dev"])
    f_test = {k: frozen(rows) for k, rows in test_sets.items()}

    scores: dict[str, dict[str, torch.Tensor]] = {k: {} for k in test_sets}
    for k, f in f_test.items():
        scores[k]["knn (frozen)"] = bank.score_features(f)
        for kk in K_SWEEP:
            scores[k][f"knn k={kk}"] = bank.score_features(f, k=min(kk, len(bank.features)))

    probe, l2, probe_dev = fit_probe(f_train, y_train, f_dev, y_dev, len(setting["labels"]), seed)
    maha = Mahalanobis(f_train, y_train)
    with torch.no_grad():
        for k, f in f_test.items():
            scores[k].update({f"probe {s}": v for s, v in logit_scores(probe(f)).items()})
            scores[k]["probe mahalanobis"] = maha.score(f)
        probe_test_acc = accuracy(probe(f_test["id"]), y_test)

    lrs = args.lrs if seed == args.seeds[0] and name not in lr_choice else (lr_choice[name],)
    runs = {}
    for lr in lrs:
        am = lora_model(setting, lr, seed, tokenizer, args)
        dev_logits, _ = classifier_outputs(am, tokenizer, texts(setting["dev"]), max_length=64)
        runs[lr] = (accuracy(dev_logits, y_dev), am)
    lora_dev = {f"{lr:g}": acc for lr, (acc, _) in runs.items()}
    lr_choice.setdefault(name, max(runs, key=lambda lr: runs[lr][0]))
    am = runs[lr_choice[name]][1]
    _, g_train = classifier_outputs(am, tokenizer, texts(setting["train_rows"]), max_length=64)
    lora_maha = Mahalanobis(g_train, y_train)
    lora_test_acc = None
    for k, rows in test_sets.items():
        logits, g = classifier_outputs(am, tokenizer, texts(rows), max_length=64)
        scores[k].update({f"lora {s}": v for s, v in logit_scores(logits).items()})
        scores[k]["lora mahalanobis"] = lora_maha.score(g)
        if k == "id":
            lora_test_acc = accuracy(logits, y_test)

    pairs = {f"{name} → {ood}": {s: detection_metrics(scores["id"][s], scores[ood][s]) for s in scores["id"]}
             for ood in setting["ood"]}
    return {"pairs": pairs, "probe": {"l2": l2, "dev_accuracy": probe_dev, "test_accuracy": probe_test_acc},
            "lora": {"lr": lr_choice[name], "dev_accuracy": lora_dev, "test_accuracy": lora_test_acc},
            "sizes": {"train": len(setting["train_rows"]), **{k: len(v) for k, v in test_sets.items()}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--max-train", type=int, default=1000)
    parser.add_argument("--lrs", type=float, nargs="+", default=[2e-3],
                        help="LoRA learning rates tried on seed 0, chosen by ID dev accuracy (default: 2e-3 alone, "
                             "the rate merging_minilm.py chose on SST-2 dev for the same LoRA setup)")
    parser.add_argument("--max-eval", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="1 seed, 5 steps, 100 train / 60 eval texts")
    parser.add_argument("--out", default=str(HERE / "results" / "ood-minilm"))
    parser.add_argument("--replot", action="store_true", help="only redraw ood.md and ood.png from ood.json")
    args = parser.parse_args()
    if args.replot:
        render(json.loads((Path(args.out) / "ood.json").read_text(encoding="utf-8")), Path(args.out))
        return
    if args.quick:
        args.seeds, args.steps, args.max_train, args.max_eval = [0], 5, 100, 60
    torch.set_num_threads(1)
    from transformers.utils import logging
    logging.set_verbosity_error()
    logging.disable_progress_bar()

    tokenizer = load_tokenizer("minilm")
    encoder = load_model("minilm", task="base").eval()
    lr_choice: dict[str, float] = {}
    result = {"settings": {"k": K, "k_sweep": K_SWEEP, "probe_l2_grid": PROBE_L2, "lora_lr_grid": args.lrs,
                           "steps": args.steps, "max_train": args.max_train, "max_eval": args.max_eval,
                           "seeds": args.seeds}, "runs": {}}
    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = settings(args)
    for seed in args.seeds:  # seed-major, and written after every seed: a cut-short run still covers every pair
        for name, setting in tasks.items():
            result["runs"].setdefault(name, {})[str(seed)] = run_seed(name, setting, seed, encoder, tokenizer, args,
                                                                      lr_choice)
            print(f"{name} seed {seed} done at {time.time() - start:.0f} s", flush=True)
        result["seconds"] = round(time.time() - start)
        result["settings"]["seeds_done"] = args.seeds[:args.seeds.index(seed) + 1]
        (out / "ood.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        render(result, out)
    print((out / "ood.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
