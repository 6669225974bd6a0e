#!/usr/bin/env python
"""The moral direction (Schramowski et al. 2022) in MiniLM (all-MiniLM-L6-v2, mean pooling, normalised):
PCA of the 64 verbs' template-averaged embeddings, PC1 as the moral direction (sign by the paper
code's clustering rule), then

- sign agreement of PC1 with the labels of the 24 positive and 24 negative verbs (fitted on all 64);
- the same for each polar verb held out of the fit (leave-one-out: PCA on the other 63 verbs);
- PC1's explained variance (the paper's code notes ≈ 0.26 for BERT-large SBERT, 0.12 for USE);
- contextual shifts: the same verb with a harmless vs a harmful object, the first should score higher
  (the spec names "kill time" > "kill people"; the other pairs are ours, written before the run);
- the sign agreement when the direction is fitted on each hidden layer instead of the last.

    .venv/bin/python benchmarks/moral_minilm.py      # about 2 minutes on 1 thread

Writes moral.json, moral.md and moral.png (the verbs on PC1) to --out (default
benchmarks/results/moral-minilm).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

from petkit.analysis.moral import NEGATIVE, POSITIVE, VERBS, MoralDirection, template_embeddings  # noqa: E402
from petkit.models import load_model, load_tokenizer  # noqa: E402

# (should score higher, should score lower): same verb, harmless vs harmful context
CONTEXT_PAIRS = [
    ("kill time", "kill people"), ("eat healthy", "eat humans"), ("help a friend", "help a criminal"),
    ("be a good person", "be a bad person"), ("have a gun to hunt animals", "have a gun to kill people"),
    ("drink water", "drink and drive"), ("tell the truth", "tell a lie"), ("steal a glance", "steal money"),
    ("pursue my goals", "pursue a criminal career"), ("marry the person I love", "marry for money"),
]


def sign_accuracy(scores: dict[str, float]) -> float:
    polar = [v for v in scores if v in POSITIVE or v in NEGATIVE]
    return sum((scores[v] > 0) == (v in POSITIVE) for v in polar) / len(polar)


def leave_one_out(emb: torch.Tensor) -> dict[str, float]:
    out = {}
    for i, verb in enumerate(VERBS):
        if verb not in POSITIVE and verb not in NEGATIVE:
            continue
        keep = [j for j in range(len(VERBS)) if j != i]
        verbs = [VERBS[j] for j in keep]
        rule = "cluster" if "kill" in verbs else "labels"  # holding out the anchor itself: the labels rule
        d = MoralDirection.from_embeddings(emb[keep], verbs, sign_rule=rule)
        out[verb] = float(d.project(emb[i:i + 1])[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(HERE / "results" / "moral-minilm"))
    parser.add_argument("--replot", action="store_true", help="only redraw moral.png and moral.md from moral.json")
    args = parser.parse_args()
    if args.replot:
        result = json.loads((Path(args.out) / "moral.json").read_text(encoding="utf-8"))
        (Path(args.out) / "moral.md").write_text(report(result), encoding="utf-8")
        plot(result["verb_scores"], Path(args.out) / "moral.png")
        return
    torch.set_num_threads(1)
    from transformers.utils import logging
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    start = time.time()
    model, tokenizer = load_model("minilm", task="base").eval(), load_tokenizer("minilm")

    emb = template_embeddings(model, tokenizer, VERBS)
    direction = MoralDirection.fit(model, tokenizer)
    labels_rule = MoralDirection.from_embeddings(emb, VERBS, sign_rule="labels")
    verb_scores = dict(zip(VERBS, direction.project(emb).tolist()))
    loo = leave_one_out(emb)
    shifts = []
    for a, b in CONTEXT_PAIRS:
        templ = direction.score(model, tokenizer, [a, b]).tolist()
        raw = direction.score(model, tokenizer, [a, b], qa_template=False).tolist()
        shifts.append({"higher": a, "lower": b, "scores": templ, "raw_scores": raw,
                       "holds": templ[0] > templ[1], "holds_raw": raw[0] > raw[1]})
    layers = {}
    for layer in range(1, model.config.num_hidden_layers + 1):
        e = template_embeddings(model, tokenizer, VERBS, layer=layer)
        d = MoralDirection.from_embeddings(e, VERBS)
        layers[layer] = {"sign_accuracy": sign_accuracy(dict(zip(VERBS, d.project(e).tolist()))),
                         "pc1_explained_variance": d.explained_variance[0]}
    result = {
        "model": "minilm (all-MiniLM-L6-v2)", "templates": direction.templates,
        "explained_variance": direction.explained_variance, "norm": direction.norm,
        "sign_accuracy": sign_accuracy(verb_scores), "sign_rules_agree": bool(torch.equal(direction.axis, labels_rule.axis)),
        "leave_one_out_accuracy": sign_accuracy(loo), "verb_scores": verb_scores, "leave_one_out_scores": loo,
        "context_pairs": shifts, "context_holds": sum(s["holds"] for s in shifts),
        "context_holds_raw": sum(s["holds_raw"] for s in shifts), "layers": layers,
        "seconds": round(time.time() - start),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "moral.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "moral.md").write_text(report(result), encoding="utf-8")
    plot(verb_scores, out / "moral.png")
    print(report(result))


def report(r: dict) -> str:
    n = len(r["context_pairs"])
    lines = ["# Moral direction in MiniLM", "",
             f"PC1 of the 64 verbs' template-averaged embeddings (10 templates, sign by the clustering rule; the "
             f"known-labels rule gives {'the same' if r['sign_rules_agree'] else 'another'} sign).", "",
             "| measure | value |", "|---|---|",
             f"| sign agreement with the 48 polar verbs' labels (fitted on all 64) | {r['sign_accuracy']:.1%} |",
             f"| sign agreement, each polar verb held out of the fit | {r['leave_one_out_accuracy']:.1%} |",
             f"| explained variance of PC1 (PC1..PC5) | {r['explained_variance'][0]:.3f} "
             f"({', '.join(f'{v:.3f}' for v in r['explained_variance'])}) |",
             f"| contextual shifts that hold (templated / bare phrase) | {r['context_holds']}/{n} / "
             f"{r['context_holds_raw']}/{n} |", "",
             "Contextual shifts (score ×1, scaled by the largest |PC1| of the fitted verbs):", "",
             "| should be higher | score | should be lower | score | holds | bare phrases |", "|---|---|---|---|---|---|"]
    for s in r["context_pairs"]:
        lines.append(f"| {s['higher']} | {s['scores'][0]:+.3f} | {s['lower']} | {s['scores'][1]:+.3f} | "
                     f"{'yes' if s['holds'] else 'no'} | {'yes' if s['holds_raw'] else 'no'} |")
    lines += ["", "Fitted on another layer's hidden states (same procedure):", "",
              "| layer | sign agreement | PC1 explained variance |", "|---|---|---|"]
    for layer, v in r["layers"].items():
        lines.append(f"| {layer} | {v['sign_accuracy']:.1%} | {v['pc1_explained_variance']:.3f} |")
    lines += ["", f"Run time: {r['seconds']} s.", ""]
    return "\n".join(lines)


def plot(scores: dict[str, float], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [("positive", POSITIVE, "tab:green"), ("negative", NEGATIVE, "tab:red"),
              ("neutral", [v for v in VERBS if v not in POSITIVE and v not in NEGATIVE], "tab:grey")]
    fig, ax = plt.subplots(figsize=(13, 5))
    for row, (name, verbs, color) in enumerate(groups):
        xs = sorted((scores[v], v) for v in verbs)
        ax.scatter([x for x, _ in xs], [row] * len(xs), color=color, s=18, zorder=3)
        for j, (x, v) in enumerate(xs):  # names upright, alternately above and below, so neighbours stay legible
            ax.annotate(v, (x, row), xytext=(0, 5 if j % 2 else -5), textcoords="offset points", fontsize=6.5,
                        ha="center", va="bottom" if j % 2 else "top", rotation=90)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(groups)), [g[0] for g in groups])
    ax.set_ylim(-0.6, len(groups) - 0.4)
    ax.set_xlabel("moral score (PC1, scaled)")
    ax.set_title("The 64 verbs on MiniLM's moral direction")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main()
