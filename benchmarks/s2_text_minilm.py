#!/usr/bin/env python
"""S² for text: BBC News articles seen by frozen MiniLM at several "scales" (1, 2 and 4 windows of
128 tokens, the length all-MiniLM-L6-v2 was trained on), window embeddings averaged per scale and
concatenated (petkit.models.s2_text), against plain truncation to the first window, at equal backbone.

A linear probe (logistic regression, C picked on dev from 0.01…100) on each feature set, for the full
train split and for 4 articles per topic, over 3 seeds (the seed draws the stratified 80/10/10 split
and the 4-shot sample). Feature sets:
- truncation: the first window (scale 1 alone; 1 forward per article);
- S² [1, 2] and S² [1, 2, 4]: the scales concatenated (up to 2 / 4 forwards);
- mean of 4 windows: scale 4 alone, the same text as S² [1, 2, 4] without the multi-scale concat.

    .venv/bin/python benchmarks/s2_text_minilm.py             # about 6 minutes of one core
    .venv/bin/python benchmarks/s2_text_minilm.py --limit 200 --out /tmp/s2   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
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
from petkit.models import load_model, load_tokenizer  # noqa: E402
from petkit.models.s2_text import s2_text_features, window_embeddings  # noqa: E402

WINDOW, MAX_CHUNKS = 128, 4
FEATURES = {"truncation (first window)": [1], "S² [1, 2]": [1, 2], "S² [1, 2, 4]": [1, 2, 4],
            "mean of 4 windows": [4]}
PROBE_C = (0.01, 0.1, 1.0, 10.0, 100.0)
SETTINGS = {"full train": None, "4 per topic": 4}


def probe(x, y, split: dict) -> dict:
    from sklearn.linear_model import LogisticRegression

    best = None
    for c in PROBE_C:
        clf = LogisticRegression(C=c, max_iter=3000).fit(x[split["train"]], y[split["train"]])
        dev = clf.score(x[split["dev"]], y[split["dev"]])
        if best is None or dev > best[0]:
            best = (dev, c, clf)
    return {"dev": best[0], "test": best[2].score(x[split["test"]], y[split["test"]]), "C": best[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--limit", type=int, default=None, help="embed only the first N articles (smoke runs)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "s2-text")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    encoder, tokenizer = load_model("minilm", task="base"), load_tokenizer("minilm")
    base = load_dataset("bbc", seed=0)
    texts = sorted({r["text"] for r in base.train + base.dev + base.test})[:args.limit]
    index = {t: i for i, t in enumerate(texts)}
    started = time.perf_counter()
    windows, present = window_embeddings(encoder, tokenizer, texts, window=WINDOW, max_chunks=MAX_CHUNKS)
    embed_seconds = time.perf_counter() - started
    lengths = [len(tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"]) for t in texts]
    feats = {name: s2_text_features(windows, present, scales).numpy() for name, scales in FEATURES.items()}
    runs = []
    for seed in args.seeds:
        data = load_dataset("bbc", seed=seed)
        label_of = {r["text"]: r["label"] for r in data.train + data.dev + data.test}
        y = torch.tensor([label_of[t] for t in texts]).numpy()
        split = {part: [index[r["text"]] for r in getattr(data, part) if r["text"] in index]
                 for part in ("train", "dev", "test")}
        for setting, k in SETTINGS.items():
            chosen = dict(split)
            if k is not None:
                rng = random.Random(f"s2-text/{seed}")
                chosen["train"] = [i for c in range(len(data.labels))
                                   for i in rng.sample([i for i in split["train"] if y[i] == c], k)]
            for name, x in feats.items():
                runs.append({"seed": seed, "setting": setting, "features": name, "dim": x.shape[1],
                             **probe(x, y, chosen)})
                print(runs[-1], flush=True)
    result = {"articles": len(texts), "labels": base.labels, "window": WINDOW, "max_chunks": MAX_CHUNKS,
              "tokens_per_article": {"mean": statistics.mean(lengths), "median": statistics.median(lengths)},
              "share_longer_than": {f"{n} windows": sum(n_ > n * (WINDOW - 2) for n_ in lengths) / len(lengths)
                                    for n in (1, 2, 4)},
              "forwards_per_article": {name: sum(present[:, :max(s)].sum(1).tolist()) / len(texts)
                                       for name, s in FEATURES.items()},
              "embed_seconds": round(embed_seconds, 1), "runs": runs}
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    write_markdown(result, args.out / "results.md")


def write_markdown(result: dict, path: Path) -> None:
    lines = ["# S² for text: MiniLM on BBC News at 1, 2 and 4 windows of 128 tokens", "",
             f"{result['articles']} articles, 5 topics; tokens per article: mean "
             f"{result['tokens_per_article']['mean']:.0f}, median {result['tokens_per_article']['median']:.0f}; "
             "longer than 1 / 2 / 4 windows: "
             + " / ".join(f"{100 * v:.0f}%" for v in result["share_longer_than"].values())
             + f". Window embeddings took {result['embed_seconds']} s. Linear probe test accuracy (%), mean ± sd "
             "over seeds (split and sample); written by `benchmarks/s2_text_minilm.py`.", "",
             "| features | dim | forwards / article | " + " | ".join(SETTINGS) + " |",
             "|---|---:|---:|" + "---:|" * len(SETTINGS)]
    for name in FEATURES:
        cells = []
        for setting in SETTINGS:
            acc = [r["test"] for r in result["runs"] if r["features"] == name and r["setting"] == setting]
            sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
            cells.append(f"{100 * statistics.mean(acc):.1f} ± {100 * sd:.1f}")
        dim = next(r["dim"] for r in result["runs"] if r["features"] == name)
        lines.append(f"| {name} | {dim} | {result['forwards_per_article'][name]:.2f} | " + " | ".join(cells) + " |")
    cs = sorted({r["C"] for r in result["runs"]})
    lines += ["", f"C values picked on dev (grid 0.01…100): {cs}."]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
