#!/usr/bin/env python
"""MEND model editing on SmolLM2-135M: a learned editor against one (and five) plain fine-tuning steps.

Synthetic facts about made-up countries and people ("The capital of Rinlobriia is" → " Chicago",
"<name> works as a" → " nurse", ...), each with 3 rephrasings and 3 unrelated prompts. Train, dev and
test edits are about disjoint entities; dev and test use unrelated prompts the editor never saw.
All methods change the same weights: the MLP projections (gate, up, down) of SmolLM2's last 3 blocks.

- MEND: the editor meta-trained on the train edits (L = 0.1 · NLL on rephrasings + 1.0 · KL locality),
  one seed, then each test edit applied alone (one forward/backward on the edit prompt) and undone.
- FT-1: one plain gradient-descent step on the edit prompt's target NLL; its rate chosen on dev edits
  from a grid by the mean of rephrasing success and the share of unchanged top predictions.
- FT-5: five such steps, rate chosen on dev the same way.

Scores on held-out test edits: edit success (every target token is the argmax) on the edit prompt and
on its rephrasings, the target's probability, and locality on unrelated prompts: KL(before ‖ after)
per token and the share of positions whose top prediction is unchanged.

    .venv/bin/python benchmarks/edit_mend_smollm2.py            # about 16 minutes of one core (longer on a busy machine)
    .venv/bin/python benchmarks/edit_mend_smollm2.py --quick --out /tmp/mend   # a smoke run

Writes mend.json, mend.md and mend.png to --out (benchmarks/results/edit-mend).
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

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from petkit.edit import (MendTrainConfig, build_editor, evaluate_edits, gradient_deltas, mend_deltas,
                         synthetic_edits, train_editor)
from petkit.models import load_model, load_tokenizer

FT_RATES = {1: (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0), 5: (3e-3, 1e-2, 3e-2, 1e-1)}
COLUMNS = (("prompt_after", "edit success, prompt"), ("rephrase_after", "edit success, rephrasings"),
           ("prob_after", "p(target), prompt"), ("rephrase_prob_after", "p(target), rephrasings"),
           ("loc_kl", "locality KL"), ("loc_kept", "top-1 unchanged"))


def dev_score(means: dict) -> float:
    """What a rate is chosen by: generalisation and locality, equally weighted."""
    return (means["rephrase_after"] + means["loc_kept"]) / 2


def choose_rate(model, tok, dev, targets, steps: int) -> tuple[float, list[dict]]:
    grid = []
    for lr in FT_RATES[steps]:
        means = evaluate_edits(model, tok, dev, lambda e: gradient_deltas(model, tok, [e], targets, lr, steps))["mean"]
        grid.append({"lr": lr, "score": dev_score(means), **means})
        print(f"  FT-{steps} lr {lr:g}: dev score {grid[-1]['score']:.3f} (rephrase {means['rephrase_after']:.2f}, "
              f"kept {means['loc_kept']:.3f})", flush=True)
    best = max(grid, key=lambda r: r["score"])
    return best["lr"], grid


def table(results: dict) -> list[str]:
    lines = ["| method | " + " | ".join(c for _, c in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for name, res in results.items():
        m = res["mean"]
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k, _ in COLUMNS) + " |")
    return lines


def plot(history: list[dict], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def smooth(values, k=20):
        return [sum(values[max(0, i - k + 1):i + 1]) / len(values[max(0, i - k + 1):i + 1]) for i in range(len(values))]

    steps = [r["step"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, smooth([r["edit"] for r in history]), label="L_edit (NLL on rephrasings)")
    ax.plot(steps, smooth([r["loc"] for r in history]), label="L_loc (KL on unrelated prompts)")
    ax.set_yscale("log")
    ax.set_xlabel("editor step")
    ax.set_title("MEND meta-training on SmolLM2-135M (moving mean of 20)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--dev", type=int, default=8)
    parser.add_argument("--test", type=int, default=30)
    parser.add_argument("--steps", type=int, default=150, help="editor meta-training steps")
    parser.add_argument("--rank", type=int, default=384, help="editor rank (the paper's is min(1920, width))")
    parser.add_argument("--lr", type=float, default=1e-4, help="editor Adam rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(HERE / "results" / "edit-mend"))
    args = parser.parse_args()
    if args.quick:
        args.train, args.dev, args.test, args.steps = 20, 3, 4, 5
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    model = load_model("smollm2", task="causal_lm")
    tok = load_tokenizer("smollm2")
    used: set = set()
    train = synthetic_edits(args.train, seed=args.seed, locality_half=0, used=used)
    dev = synthetic_edits(args.dev, seed=args.seed + 1, locality_half=1, used=used)
    test = synthetic_edits(args.test, seed=args.seed + 2, locality_half=1, used=used)

    editor = build_editor(model, last_blocks=3, rank=args.rank)
    targets = editor.config.targets
    print(f"editing {len(targets)} layers: {', '.join(targets)}", flush=True)

    print("choosing fine-tuning rates on dev", flush=True)
    lr1, grid1 = choose_rate(model, tok, dev, targets, 1)
    lr5, grid5 = choose_rate(model, tok, dev, targets, 5)

    print(f"meta-training MEND for {args.steps} steps", flush=True)
    config = MendTrainConfig(steps=args.steps, lr=args.lr, seed=args.seed)
    t0 = time.perf_counter()
    history = train_editor(model, tok, editor, train, config,
                           log=lambda s, r: s % 20 == 0 and print(f"  step {s}: edit {r['edit']:.3f} loc {r['loc']:.4f} "
                                                                  f"({r['seconds']:.0f} s)", flush=True))
    train_seconds = time.perf_counter() - t0

    print("test edits", flush=True)
    results = {}
    results["MEND"] = evaluate_edits(model, tok, test, lambda e: mend_deltas(model, tok, editor, [e]))
    results[f"FT-1 (lr {lr1:g})"] = evaluate_edits(model, tok, test,
                                                    lambda e: gradient_deltas(model, tok, [e], targets, lr1, 1))
    results[f"FT-5 (lr {lr5:g})"] = evaluate_edits(model, tok, test,
                                                    lambda e: gradient_deltas(model, tok, [e], targets, lr5, 5))
    before = results["MEND"]["mean"]
    record = {
        "settings": {**vars(args), "targets": list(targets), "ft_rates": {f"FT-{k}": v for k, v in FT_RATES.items()}, "train_config": config.to_dict(),
                     "editor_params": sum(p.numel() for p in editor.parameters())},
        "before": {k: before[k] for k in ("prompt_before", "rephrase_before", "prob_before")},
        "dev_grid": {"FT-1": grid1, "FT-5": grid5}, "chosen": {"FT-1": lr1, "FT-5": lr5},
        "edit_lrs": editor.edit_lrs.detach().tolist(), "train_seconds": train_seconds,
        "history": history, "results": results, "seconds": time.perf_counter() - start,
    }
    (out / "mend.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [f"# MEND on SmolLM2-135M: {args.test} held-out edits, each applied alone", "",
             f"Before any edit: target is the argmax on {before['prompt_before']:.3f} of prompts and "
             f"{before['rephrase_before']:.3f} of rephrasings (p = {before['prob_before']:.4f}).", "",
             *table(results), "",
             f"Edited: {', '.join(targets)}. MEND: rank {args.rank}, {args.steps} steps, Adam lr {args.lr:g}, "
             f"{train_seconds / 60:.1f} min; {record['settings']['editor_params']:,} editor parameters.",
             f"FT rates chosen on {args.dev} dev edits: FT-1 {lr1:g} from {', '.join(f'{r:g}' for r in FT_RATES[1])}; "
             f"FT-5 {lr5:g} from {', '.join(f'{r:g}' for r in FT_RATES[5])}.", f"Total {record['seconds'] / 60:.1f} min."]
    (out / "mend.md").write_text("\n".join(lines) + "\n")
    plot(history, out / "mend.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
