#!/usr/bin/env python
"""Instruction tuning side by side (issue 17): petkit's SFT against TRL's SFTTrainer + PEFT.

SmolLM2-135M-Instruct learns to write the TREC question type of a question (`trec-instruct`: four
phrasings of the instruction; the answer is one word such as "location"). Both sides get the same
records, model, LoRA (r = 16, alpha = 32, every linear layer of the blocks, no dropout), seed, learning
rate, linear schedule with the same warm-up, batch, steps, gradient clipping and maximum length, with
the prompt rendered through the model's chat template and the loss on the answer only (TRL: the
conversational prompt-completion format, its default completion-only loss). Each run is a fresh
process with the same torch threads. Both trained models are then scored by the same code: the answer
tokens' loss on the test split and greedy answers (exact match after normalisation, ROUGE-L).

Measured per run: training tokens per second (non-padding input tokens / training wall time), the
peak resident memory training adds (VmHWM reset once the model, adapter and data are ready, as
petkit/bench/memory.py does), the loss of every step, and the test scores.

    .venv/bin/python benchmarks/sft_smollm2.py                   # 3 seeds x 2 libraries, ~25 min on 2 cores
    .venv/bin/python benchmarks/sft_smollm2.py --quick --out /tmp/sft   # a smoke run (tiny budget)
    .venv/bin/python benchmarks/sft_smollm2.py --report-only     # re-render sft.md and sft.png from sft.json

Needs trl and peft (the test extra) and ../shared/data (PETKIT_DATA_DIR). Writes sft.json, sft.md and
sft.png to --out (benchmarks/results/sft-smollm2).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

LIBRARIES = ("petkit", "trl")
MARK = "SFT_BENCH_RESULT "


def child(library: str, seed: int, args) -> dict:
    import torch

    from petkit.data import load_dataset, reference_answer, sft_dataset
    from petkit.models import load_model, load_tokenizer
    from petkit.train import evaluate
    from petkit.train.generative import generate_answers, generative_scores

    torch.set_num_threads(args.threads)
    data = load_dataset(args.data, seed=0, max_train=args.train, max_eval=args.test)
    tok = load_tokenizer("smollm2")
    model = load_model("smollm2", task="causal_lm")
    if library == "base":  # the model before tuning, scored the same way
        trained, seconds, tokens, losses, memory = model, None, None, [], (None, None)
    elif library == "petkit":
        trained, seconds, tokens, losses, memory = _petkit(model, tok, data, seed, args)
    else:
        trained, seconds, tokens, losses, memory = _trl(model, tok, data, seed, args)
    peak_mb, train_mb = memory
    test = sft_dataset(tok, data.test, args.max_length)
    scores = evaluate(trained, test, "causal_lm", batch_size=8)
    records = list(data.test)[: args.answers]
    answers = generate_answers(trained, tok, records, max_new_tokens=8)
    return {"library": library, "seed": seed, "train_seconds": seconds and round(seconds, 2), "tokens": tokens,
            "tokens_per_s": tokens / seconds if seconds else None, "train_mb": train_mb, "peak_mb": peak_mb, "losses": losses,
            "test_loss": scores["loss"], **generative_scores(answers, [reference_answer(r) for r in records]),
            "samples": [{"prompt": r["prompt"], "answer": a, "reference": reference_answer(r)}
                        for r, a in zip(records[:5], answers)],
            "threads": torch.get_num_threads(), "load_avg": os.getloadavg()[0]}


def _petkit(model, tok, data, seed, args):
    import torch

    import petkit
    from petkit.bench.memory import PeakMemory
    from petkit.data import sft_dataset
    from petkit.train import TrainConfig, train

    torch.manual_seed(seed)
    am = petkit.adapt(model, petkit.LoraConfig(r=16, alpha=32, dropout=0.0, targets="all-linear"))
    train_set = sft_dataset(tok, data.train, args.max_length)
    counted = [0]
    collate = train_set.collate

    def counting(rows):  # the tokens the steps read (padding left out), as TRL's num_input_tokens_seen
        batch = collate(rows)
        counted[0] += int(batch["attention_mask"].sum())
        return batch

    losses = []
    cfg = TrainConfig(lr=args.lr, max_steps=args.steps, batch_size=args.batch, warmup=args.warmup, seed=seed,
                      eval_every_epoch=False, max_grad_norm=1.0)
    memory = PeakMemory()
    start = time.perf_counter()
    train(am, train_set, cfg, task="causal_lm", progress=False, collate_fn=counting,
          on_step=lambda info: losses.append(info.loss))
    seconds = time.perf_counter() - start
    return am.eval(), seconds, counted[0], losses, memory.read()


def _trl(model, tok, data, seed, args):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from petkit.bench.memory import PeakMemory

    rows = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "completion": [{"role": "assistant", "content": r["completion"]}]} for r in data.train]
    with tempfile.TemporaryDirectory() as tmp:
        config = SFTConfig(
            output_dir=tmp, max_steps=args.steps, per_device_train_batch_size=args.batch, learning_rate=args.lr,
            lr_scheduler_type="linear", warmup_steps=args.warmup, weight_decay=0.0, max_grad_norm=1.0,
            optim="adamw_torch", seed=seed, data_seed=seed, logging_steps=1, save_strategy="no", report_to="none",
            use_cpu=True, bf16=False, gradient_checkpointing=False, max_length=args.max_length, packing=False,
            completion_only_loss=True, dataloader_num_workers=0, include_num_input_tokens_seen="non_padding",
            eval_strategy="no", disable_tqdm=True)
        peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             peft_config=peft)
        memory = PeakMemory()
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
        return trainer.model.eval(), seconds, int(trainer.state.num_input_tokens_seen), losses, memory.read()


def run_all(args) -> list[dict]:
    """The base model once (scored, not trained), then every seed of both libraries, each in a fresh process."""
    runs = []
    for seed, library in [(0, "base"), *((seed, lib) for seed in range(args.seeds) for lib in LIBRARIES)]:
        runs.append(run_child(library, seed))
        r = runs[-1]
        speed = f"{r['tokens_per_s']:.0f} tok/s, +{r['train_mb']} MB, " if r["tokens_per_s"] else ""
        print(f"{library} seed {seed}: {speed}test loss {r['test_loss']:.3f}, exact match {r['exact_match']:.3f}",
              flush=True)
    return runs


def run_child(library: str, seed: int) -> dict:
    command = [sys.executable, __file__, "--child", library, str(seed), *sys.argv[1:]]
    done = subprocess.run(command, capture_output=True, text=True)
    line = next((l for l in done.stdout.splitlines() if l.startswith(MARK)), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"{library} seed {seed} failed:\n{done.stderr[-4000:]}")
    return json.loads(line[len(MARK):])


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summary(runs: list[dict]) -> dict:
    out = {}
    for library in LIBRARIES:
        mine = [r for r in runs if r["library"] == library]  # (the base model's run has its own line)
        out[library] = {k: _mean_std([r[k] for r in mine])
                        for k in ("tokens_per_s", "train_mb", "test_loss", "exact_match", "rouge_l", "train_seconds")}
    p, t = out["petkit"], out["trl"]
    out["ratios"] = {"tokens_per_s": p["tokens_per_s"][0] / t["tokens_per_s"][0],
                     "train_mb": p["train_mb"][0] / t["train_mb"][0]}
    return out


def render(result: dict, out: Path) -> None:
    s, settings = result["summary"], result["settings"]
    rows = [("test answer loss", "test_loss", "{:.3f}"), ("exact match of the answer", "exact_match", "{:.1%}"),
            ("ROUGE-L", "rouge_l", "{:.3f}"), ("training tokens / s", "tokens_per_s", "{:.0f}"),
            ("training memory added, MB", "train_mb", "{:.0f}"), ("training wall time, s", "train_seconds", "{:.1f}")]
    lines = ["# Instruction tuning: petkit against TRL SFTTrainer + PEFT", "",
             f"SmolLM2-135M-Instruct on `{settings['data']}` ({settings['train']} train examples, the first "
             f"{settings['answers']} of {settings['test']} test examples answered), LoRA r=16 on every linear "
             f"layer, {settings['steps']} steps of {settings['batch']}, lr {settings['lr']:g} (linear, "
             f"{settings['warmup']} warm-up steps), {settings['seeds']} seeds, {settings['threads']} torch threads, "
             "each run a fresh process. Mean ± standard deviation over seeds.", "",
             "| | petkit | TRL + PEFT | petkit / TRL |", "|---|---|---|---|"]
    for label, key, fmt in rows:
        cells = [f"{fmt.format(s[lib][key][0])} ± {fmt.format(s[lib][key][1])}" for lib in LIBRARIES]
        ratio = s["ratios"].get(key)
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {'' if ratio is None else f'{ratio:.2f}×'} |")
    base = next((r for r in result["runs"] if r["library"] == "base"), None)
    if base is not None:
        lines += ["", f"Before tuning, scored the same way: test answer loss {base['test_loss']:.3f}, exact match "
                      f"{base['exact_match']:.1%}, ROUGE-L {base['rouge_l']:.3f}."]
    lines += ["", "![training loss per step](sft.png)", "", "## Samples (seed 0)", ""]
    for library in LIBRARIES:
        run = next(r for r in result["runs"] if r["library"] == library and r["seed"] == 0)
        lines += [f"**{library}**", ""] + [f"- {x['prompt']!r} → {x['answer']!r} (reference {x['reference']!r})"
                                             for x in run["samples"]] + [""]
    lines += ["## Protocol", "", "Both trained models are scored by petkit's `evaluate` (answer-token loss) and "
              "`generate_answers` (greedy, 8 new tokens, the training prompt). Tokens per second count the "
              "non-padding input tokens of the training batches (TRL: `num_input_tokens_seen`). Memory: VmHWM "
              "after training minus the resident set when training started. The prompt is the chat template's "
              "user turn (SmolLM2's default system message included) on both sides; TRL also scores the newline "
              "the template writes after the end-of-turn token, petkit does not. Load average during runs "
              f"{min(r['load_avg'] for r in result['runs']):.1f}–{max(r['load_avg'] for r in result['runs']):.1f}.",
              f"Versions: {result['versions']}.", ""]
    (out / "sft.md").write_text("\n".join(lines))
    _plot(result, out / "sft.png")


def _plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for library, colour in zip(LIBRARIES, ("tab:blue", "tab:orange")):
        curves = [r["losses"] for r in result["runs"] if r["library"] == library]
        steps = min(len(c) for c in curves)
        mean = [statistics.fmean(c[i] for c in curves) for i in range(steps)]
        ax.plot(range(1, steps + 1), mean, label=f"{library} (mean of {len(curves)} seeds)", color=colour)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (answer tokens)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="trec-instruct")
    parser.add_argument("--train", type=int, default=800)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--answers", type=int, default=200)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=6)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "sft-smollm2")
    parser.add_argument("--quick", action="store_true", help="a few steps and examples: checks the script runs")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("LIBRARY", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.train, args.test, args.answers, args.steps, args.seeds, args.warmup = 16, 8, 4, 3, 1, 1
    if args.child:
        print(MARK + json.dumps(child(args.child[0], int(args.child[1]), args)), flush=True)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        render(json.loads((args.out / "sft.json").read_text()), args.out)
        return
    from petkit.bench.machine import cpu, versions
    runs = run_all(args)
    settings = {k: getattr(args, k) for k in ("data", "train", "test", "answers", "steps", "batch", "warmup", "lr",
                                              "max_length", "seeds", "threads")}
    import trl
    result = {"settings": settings, "runs": runs, "summary": summary(runs), "machine": cpu(),
              "versions": f"{versions()}, trl {trl.__version__}"}
    (args.out / "sft.json").write_text(json.dumps(result, indent=1))
    render(result, args.out)
    print(f"wrote {args.out / 'sft.md'}")


if __name__ == "__main__":
    main()
