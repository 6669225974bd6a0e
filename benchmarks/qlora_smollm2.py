"""LoRA on a low-bit frozen base against LoRA on the fp32 base: SmolLM2-135M, Tiny Shakespeare.

Each base runs in a fresh process (memory freed by one run would hide the next one's growth):
  fp32         the float checkpoint (the GGUF's Q4_1 weights dequantised once by transformers)
  nf4-g64      that checkpoint quantised again by petkit.quantize (NF4, groups of 64: QLoRA's format),
               linear layers only (the tied 49k×576 embedding and output head stay fp32: 113 MB)
  nf4-g64+embeddings   the same with embeddings=True: the table and the head tied to it packed too
  q4_1-gguf    the GGUF file's own blocks, read by petkit.quant.load_gguf (never fp32): Q4_1 linear
               layers and the Q8_0 embedding/head. The same function as fp32, so its perplexity must
               match and only memory and time may differ
Every run trains the same LoRA (all linear layers, same seed, data order and steps), with activation
checkpointing as in the QLoRA recipe (--no-checkpointing for the run without), then reports:
  memory     peak resident memory while training, less the process's memory before the model was
             loaded (the weights the training holds plus what training adds; /proc VmHWM). So that
             resident memory follows live tensors, every child runs with MALLOC_MMAP_THRESHOLD_=65536
             (glibc returns freed large blocks at once instead of growing its heap), the loaded
             parameters are copied out of the checkpoint's file mapping (whose pages would otherwise
             count once read), and what loading left behind is freed (gc, malloc_trim) before the count
  step       median wall-clock seconds per optimiser step after warm-up
  ppl        perplexity on the test split's first blocks before and after fine-tuning (nothing is
             chosen on it: one fixed recipe for every base)

    python benchmarks/qlora_smollm2.py                 # writes benchmarks/results/qlora_smollm2.{json,md}
    python benchmarks/qlora_smollm2.py --quick         # a smoke run (few steps, tiny eval)
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BASES = ("fp32", "nf4-g64", "nf4-g64+embeddings", "q4_1-gguf")
RESULTS = Path(__file__).parent / "results"


def child(args) -> dict:
    import torch

    import petkit
    from petkit.bench.memory import PeakMemory, _status_mb
    from petkit.data import lm_blocks, load_dataset
    from petkit.models import load_model, load_tokenizer
    from petkit.quant.gguf import load_gguf

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer("smollm2")
    data = load_dataset("tiny_shakespeare")
    train = lm_blocks(tokenizer, data.train, args.length, drop_last=True)
    test = lm_blocks(tokenizer, data.test, args.length, drop_last=True)
    before_load = _status_mb("VmRSS")
    if args.base == "q4_1-gguf":
        model = load_gguf()
    else:
        model = load_model("smollm2", task="causal_lm")
        for p in model.parameters():
            p.data = p.data.clone()  # out of the safetensors file mapping
        if args.base.startswith("nf4-g64"):
            petkit.quantize(model, bits=4, group_size=64, scheme="nf4", embeddings=args.base.endswith("embeddings"))
    model.config.use_cache = False
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    loaded = _status_mb("VmRSS")
    ppl_before = perplexity(model, test, args)
    torch.manual_seed(0)
    am = petkit.adapt(model, petkit.LoraConfig(r=16, alpha=32, dropout=0.05, targets="all-linear"))
    if args.checkpointing:
        am.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    am.train()
    params = [p for p in am.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    times, losses = [], []
    peak = PeakMemory()
    for step in range(args.steps):
        rows = [train[int(i)] for i in order[step * args.batch:(step + 1) * args.batch]]
        batch = train.collate(rows)
        start = time.perf_counter()
        loss = am(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        losses.append(float(loss))
    peak_mb, _ = peak.read()
    am.eval()
    return {"base": args.base, "checkpointing": args.checkpointing, "rss_before_load_mb": before_load,
            "weights_mb": round(loaded - before_load, 1), "train_memory_mb": round(peak_mb - before_load, 1),
            "step_s": statistics.median(times[3:] or times), "first_loss": losses[0], "last_loss": losses[-1],
            "ppl_before": ppl_before, "ppl_after": perplexity(am, test, args),
            "packed_mb": round(sum({id(m.codes): m.nbytes() for m in petkit.quant.quantized_layers(model).values()}
                                   .values()) / 2**20, 1)}


def perplexity(model, blocks, args) -> float:
    import torch

    if not args.eval_blocks:
        return float("nan")
    nll = count = 0.0
    with torch.no_grad():
        for i in range(0, min(len(blocks), args.eval_blocks), args.batch):
            batch = blocks.collate([blocks[j] for j in range(i, min(i + args.batch, args.eval_blocks, len(blocks)))])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            labels = batch["labels"][:, 1:]
            keep = labels != -100
            nll += float(torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum"))
            count += int(keep.sum())
    return math.exp(nll / count)


def report(rows: list[dict], args) -> str:
    base = next(r for r in rows if r["base"] == "fp32")
    lines = [f"# LoRA on low-bit SmolLM2-135M bases vs the fp32 base ({'with' if args.checkpointing else 'without'} "
             "activation checkpointing)", "",
             f"LoRA r=16 α=32 dropout 0.05 on all linear layers, AdamW lr {args.lr}, {args.steps} steps of "
             f"{args.batch}×{args.length} tokens of Tiny Shakespeare, {args.threads} threads; perplexity on the first "
             f"{args.eval_blocks} test blocks. Memory: peak RSS while training less RSS before loading the model.", "",
             "| base | packed weights MB | weights resident MB | training memory MB | × fp32 | step s | × fp32 | "
             "ppl before | ppl after | × fp32 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['base']} | {r['packed_mb']} | {r['weights_mb']} | {r['train_memory_mb']} | "
                     f"{r['train_memory_mb'] / base['train_memory_mb']:.2f} | {r['step_s']:.2f} | "
                     f"{r['step_s'] / base['step_s']:.2f} | {r['ppl_before']:.2f} | {r['ppl_after']:.2f} | "
                     f"{r['ppl_after'] / base['ppl_after']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", choices=BASES, help=argparse.SUPPRESS)  # set in the child processes
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-blocks", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 4 steps, 4 eval blocks")
    parser.add_argument("--memory-sweep", action="store_true",
                        help="memory (and step time) only, at batch 1, 2 and 4: 6 steps per run, no perplexity")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.eval_blocks = 4, 4
    if args.base:
        print(json.dumps(child(args)))
        return
    if args.memory_sweep:
        return memory_sweep(args)
    rows = [run_child(base, args) for base in BASES]
    name = "qlora_smollm2" + ("" if args.checkpointing else "_no_checkpointing")
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"{name}.json").write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                                          "rows": rows}, indent=2) + "\n")
    (args.output / f"{name}.md").write_text(report(rows, args))
    print(report(rows, args))


def run_child(base: str, args, *extra: str) -> dict:
    flags = [a for a in sys.argv[1:] if a not in ("--quick", "--memory-sweep")]
    cmd = [sys.executable, __file__, "--base", base, *flags, "--steps", str(args.steps),
           "--eval-blocks", str(args.eval_blocks), *extra]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(f"{base} failed:\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(row, flush=True)
    return row


def memory_sweep(args) -> None:
    """Training memory against the batch: the weights shrink, the activations (most of all the
    49k-vocabulary logits and their gradient) do not, so the ratio depends on how much is in flight."""
    args.steps, args.eval_blocks = 6, 0  # step time: the median of steps 4-6
    rows = [{**run_child(base, args, "--batch", str(batch)), "batch": batch} for batch in (1, 2, 4) for base in BASES]
    lines = ["# Training memory of LoRA on SmolLM2-135M: low-bit bases vs the fp32 base, by batch size", "",
             f"{args.length}-token rows, 6 steps each, activation checkpointing {'on' if args.checkpointing else 'off'}; "
             "memory as in qlora_smollm2.md (peak RSS while training less RSS before loading); step time: median "
             "of steps 4-6.", "",
             "| batch | base | weights resident MB | training memory MB | × fp32 | step s | × fp32 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        fp32 = next(x for x in rows if x["batch"] == r["batch"] and x["base"] == "fp32")
        lines.append(f"| {r['batch']} | {r['base']} | {r['weights_mb']} | {r['train_memory_mb']} | "
                     f"{r['train_memory_mb'] / fp32['train_memory_mb']:.2f} | {r['step_s']:.2f} | "
                     f"{r['step_s'] / fp32['step_s']:.2f} |")
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "qlora_smollm2_memory.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.output / "qlora_smollm2_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
