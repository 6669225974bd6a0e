#!/usr/bin/env python
"""CLP-Transfer: SmolLM2-135M (byte-level BPE) moved to MiniLM's WordPiece vocabulary, with
MiniLM as the helper model (the only offline model that uses the target tokenizer).

Initialisations of the new embedding rows (the output head is tied to them in SmolLM2):
- random: every row N(mean, std) of SmolLM2's rows;
- mean: every row the mean of SmolLM2's rows;
- overlap: tokens whose string SmolLM2 also has take its row, the rest random;
- clp: overlap copied, the rest a similarity-weighted mean of the overlap rows (negative similarities
  clipped, petkit's default); clp-keep: the released code's raw normalisation.
Perplexity of Tiny Shakespeare's test text in the new tokenization at step 0 and after continued
training of the whole model on its train text (same steps, data and seed for every init).

    .venv/bin/python benchmarks/clp_smollm2.py                 # about 40 minutes on 2 cores
    .venv/bin/python benchmarks/clp_smollm2.py --steps 2 --out /tmp/clp   # a smoke run
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

from petkit.data import lm_blocks, load_dataset  # noqa: E402
from petkit.models import load_model, load_tokenizer  # noqa: E402
from petkit.train import TrainConfig, evaluate, train  # noqa: E402
from petkit.transfer import clp_rows  # noqa: E402

INITS = ("random", "mean", "overlap", "clp", "clp-keep")


def new_rows(init: str, source: torch.Tensor, source_tok, helper: torch.Tensor, target_tok) -> tuple[torch.Tensor, dict]:
    sv, tv = source_tok.get_vocab(), target_tok.get_vocab()
    if init in ("clp", "clp-keep", "overlap"):
        rows, report = clp_rows(source, sv, helper, tv, negative="keep" if init == "clp-keep" else "clip",
                                combine=init != "overlap")
        return rows, vars(report)
    size = max(tv.values()) + 1
    if init == "mean":
        return source.float().mean(0).expand(size, -1).clone(), {}
    generator = torch.Generator().manual_seed(42)
    return source.float().mean(0) + source.float().std(0) * torch.randn(size, source.shape[1], generator=generator), {}


def run(init: str, steps: int, max_eval: int) -> dict:
    source_tok, target_tok = load_tokenizer("smollm2"), load_tokenizer("minilm")
    model = load_model("smollm2", task="causal_lm")
    helper = load_model("minilm", task="base").get_input_embeddings().weight.detach()
    rows, report = new_rows(init, model.get_input_embeddings().weight.detach(), source_tok, helper, target_tok)
    model.resize_token_embeddings(rows.shape[0])
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(rows)
    model.config.pad_token_id = target_tok.pad_token_id
    data = load_dataset("tiny_shakespeare")
    train_blocks = lm_blocks(target_tok, data.train, 128)
    test_blocks = lm_blocks(target_tok, data.test[:max_eval], 128)
    step0 = evaluate(model, test_blocks, "causal_lm", batch_size=8)["perplexity"]
    started = time.perf_counter()
    train(model, train_blocks, TrainConfig(lr=1e-4, max_steps=steps, batch_size=4, seed=0), task="causal_lm",
          progress=False)
    after = evaluate(model, test_blocks, "causal_lm", batch_size=8)["perplexity"]
    return {"init": init, **report, "perplexity_step0": step0, "perplexity_after": after, "steps": steps,
            "seconds": round(time.perf_counter() - started, 1)}


def perplexity(value: float) -> str:
    return f"{value:,.1f}" if value < 1e7 else f"{value:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--max-eval", type=int, default=40, help="test chunks (speeches) to score")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "clp-smollm2")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "clp.json"
    record = json.loads(path.read_text()) if path.is_file() else {}
    for init in INITS:
        if init not in record:
            record[init] = run(init, args.steps, args.max_eval)
            path.write_text(json.dumps(record, indent=1))
            print(record[init], flush=True)
    lines = ["# CLP-Transfer: SmolLM2-135M to MiniLM's vocabulary (helper: MiniLM)", "",
             f"Tiny Shakespeare test perplexity in the new tokenization; {args.steps} steps of 4 × 128 tokens of "
             "continued training of the whole model, lr 1e-4.", "",
             "| init | copied rows | combined rows | random rows | perplexity, step 0 | after training |",
             "|---|---|---|---|---|---|"]
    for r in record.values():
        lines.append(f"| {r['init']} | {r.get('overlap', '–')} | {r.get('combined', '–')} | {r.get('fallback', '–')} | "
                     f"{perplexity(r['perplexity_step0'])} | {perplexity(r['perplexity_after'])} |")
    (args.out / "clp.md").write_text("\n".join(lines) + "\n")
    print(f"report: {args.out / 'clp.md'}")


if __name__ == "__main__":
    main()
