#!/usr/bin/env python
"""VLA4CD's joint text + continuous output, small: SmolLM2-135M with LoRA answers in words and in values.

Each VADER lexicon item (``load_dataset("vader")``) becomes a prompt "Word: <item>\\nSentiment:" whose
text answer is " positive" / " negative" / " neutral" (valence above 0.5, below -0.5, else) and whose
values are the raters' mean valence and rating std, read by a linear head at the last real token (the
end of the answer, where VLA4CD reads its action). Three variants at the same budget (LoRA r = 8,
α = 16 on q_proj and v_proj, plus the head; lr 1e-3; 2 epochs of batch 16 over 600 training items):
- joint: regression_weight = 1, lm_weight = 1 (VLA4CD's weights);
- value only: lm_weight = 0 (spec variant (d): the action loss alone);
- text only: regression_weight = 0 (the head is never trained: its value error shows what that costs).
Test (300 items): value MSE / R² in original units, and the text answer's token loss and exact-answer
accuracy (every answer token the argmax, teacher-forced; no generation). The paper's direction: the
joint model keeps the text close to text-only while the value-only model loses it, and it predicts
values as well as value-only.

    .venv/bin/python benchmarks/regression_smollm2_joint.py            # 3 seeds, ~4 min a run: ~36 min of one core
    .venv/bin/python benchmarks/regression_smollm2_joint.py --seeds 0 --max-train 64 --out /tmp/j  # smoke

Writes benchmarks/results/regression/joint_smollm2.json and joint_smollm2.md.
"""

from __future__ import annotations

import argparse
import json
import os
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

import petkit  # noqa: E402
from petkit.data import JointRegressionDataset, load_dataset  # noqa: E402
from petkit.models import load_model, load_tokenizer  # noqa: E402
from petkit.models.regression import RegressionConfig  # noqa: E402
from petkit.train import TrainConfig, evaluate, train  # noqa: E402

VARIANTS = {"joint": (1.0, 1.0), "value only": (1.0, 0.0), "text only": (0.0, 1.0)}  # (regression, lm) weights


def answer(valence: float) -> str:
    return " positive" if valence > 0.5 else " negative" if valence < -0.5 else " neutral"


def joint_records(rows: list[dict]) -> list[dict]:
    return [{"text": f"Word: {r['text']}\nSentiment:", "answer": answer(r["target"][0]), "target": r["target"]}
            for r in rows]


def text_scores(model, data: JointRegressionDataset, batch_size: int = 32) -> dict:
    """Mean answer-token loss, and the share of answers whose every token is the argmax (teacher-forced)."""
    loss_sum, tokens, exact, n = 0.0, 0, 0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(data), batch_size):
            batch = data.collate([data[j] for j in range(i, min(i + batch_size, len(data)))])
            logits = model(**batch).lm_logits[:, :-1]
            targets = batch["lm_labels"][:, 1:]
            scored = targets != -100
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100,
                                                    reduction="none")
            loss_sum += float(nll[scored].sum())
            tokens += int(scored.sum())
            right = (logits.argmax(-1) == targets) | ~scored
            exact += int(right.all(-1).sum())
            n += len(targets)
    return {"answer_loss": loss_sum / tokens, "answer_accuracy": exact / n}


def one_run(variant: str, seed: int, args, tokenizer, data) -> dict:
    path = args.out / "joint_runs" / f"{variant.replace(' ', '_')}-seed{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    value_weight, text_weight = VARIANTS[variant]
    torch.manual_seed(seed)
    config = RegressionConfig(outputs=2, names=tuple(data.labels), lm_weight=text_weight,
                              regression_weight=value_weight)
    model = load_model("smollm2", task="regression", regression=config).standardise(data.train)
    am = petkit.adapt(model, petkit.LoraConfig(r=8, alpha=16, targets=["q_proj", "v_proj"]))
    train_set = JointRegressionDataset(tokenizer, joint_records(data.train), max_length=48, outputs=2)
    test_set = JointRegressionDataset(tokenizer, joint_records(data.test), max_length=48, outputs=2)
    start = time.perf_counter()
    train(am, train_set, TrainConfig(lr=1e-3, epochs=2, batch_size=16, seed=seed, eval_every_epoch=False),
          task="regression", progress=False)
    seconds = time.perf_counter() - start
    values = evaluate(am, test_set, "regression", batch_size=32)
    result = {"variant": variant, "seed": seed, "value_mse": values["mse"], "value_r2": values["r2"],
              "value_spearman": values["spearman"], **text_scores(am, test_set), "train_seconds": round(seconds, 1)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "regression")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-train", type=int, default=600)
    parser.add_argument("--max-test", type=int, default=300)
    args = parser.parse_args()
    data = load_dataset("vader", max_train=args.max_train, max_eval=args.max_test)
    tokenizer = load_tokenizer("smollm2")
    runs = {v: [one_run(v, s, args, tokenizer, data) for s in args.seeds] for v in VARIANTS}
    keys = ("value_mse", "value_r2", "answer_loss", "answer_accuracy")
    summary = {v: {k: [statistics.fmean(r[k] for r in rs), statistics.stdev(r[k] for r in rs) if len(rs) > 1 else 0.0]
                   for k in keys} | {"seeds": args.seeds} for v, rs in runs.items()}
    (args.out / "joint_smollm2.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["# Joint text + values on SmolLM2-135M (VLA4CD, small)", "",
             f"{len(data.train)} training / {len(data.test)} test VADER items; LoRA r=8 on q,v + linear head; "
             f"mean ± sd over seeds {', '.join(map(str, args.seeds))}.", "",
             "| variant | value MSE | value R² | answer token loss | exact answers |", "|---|---:|---:|---:|---:|"]
    for v, s in summary.items():
        lines.append(f"| {v} | {s['value_mse'][0]:.3f} ± {s['value_mse'][1]:.3f} | {s['value_r2'][0]:.3f} ± "
                     f"{s['value_r2'][1]:.3f} | {s['answer_loss'][0]:.3f} ± {s['answer_loss'][1]:.3f} | "
                     f"{s['answer_accuracy'][0]:.3f} ± {s['answer_accuracy'][1]:.3f} |")
    (args.out / "joint_smollm2.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
