#!/usr/bin/env python
"""Peak training memory of SaRA (sparse values, gathered backward) vs LoRA vs full fine-tuning, MiniLM, CPU.

Model: `petkit.models.load_model("minilm", task="classification", num_labels=2)` (all-MiniLM-L6-v2
with a fresh 2-way head), fp32, in train() mode. Every variant trains the same batch (random token
ids, `--batch` x `--seq`, fixed seed) for `--steps` steps of torch.optim.AdamW(lr=1e-4,
weight_decay=0) over whatever is trainable; the task head trains in every variant.

| variant | what trains |
|---|---|
| `full` | every parameter (petkit.FullConfig) |
| `lora` | LoRA r=8, alpha=16 on attn.q, attn.v (the bench's default LoRA) |
| `sara` | SaRA defaults: the entries with |w| < 2e-3 of every linear layer, as sparse values with the gathered backward, the nuclear-norm term on (one random layer's SVD per step in expectation) |
| `sara_dense_mask` | the same entries trained the way SaRA's `--disable_ub` path does: the whole linear weights require grad and a hook masks their dense gradients (dense grads and Adam state) |

Memory, as `petkit/bench` measures it (see petkit/bench/memory.py): every variant runs in a fresh
Python subprocess (memory freed by an earlier run would otherwise be reused without raising RSS).
The child loads the model, attaches the variant, runs one no-grad forward (pages in the weights),
then resets VmHWM (`/proc/self/clear_refs`) and trains. `peak_mb` is VmHWM after training;
`train_mb` is that minus the RSS at the reset: what training adds (gradients, optimizer state,
activations). Ratios are reported on both. The child also counts, exactly, the floats held by
`.grad` tensors and by the optimizer state after training, and checks that no frozen base weight
got a gradient (the mechanism behind the saving, free of RSS noise).

    .venv/bin/python benchmarks/sparse_memory.py                  # full run: 32 x 128 tokens, 3 steps
    .venv/bin/python benchmarks/sparse_memory.py --quick --out /tmp/sm   # smoke run (tiny batch)

Writes `sparse_memory.json` and `sparse_memory.md` to `--out` (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import petkit
from petkit.bench.memory import PeakMemory

VARIANTS = ("full", "lora", "sara", "sara_dense_mask")
MARK = "SPARSE_MEMORY_RESULT "
RATIOS = (("SaRA / LoRA", "sara", "lora"), ("SaRA / full FT", "sara", "full"), ("LoRA / full FT", "lora", "full"),
          ("SaRA / SaRA dense-mask", "sara", "sara_dense_mask"))


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# -- one variant, in its own process ---------------------------------------------------------------

def attach(variant: str, model):
    """The model to train and its trainable parameters."""
    from petkit.methods.sara import SaraConfig

    if variant == "full":
        am = petkit.adapt(model, petkit.FullConfig())
    elif variant == "lora":
        am = petkit.adapt(model, petkit.LoraConfig(r=8, alpha=16, targets=["attn.q", "attn.v"]))
    elif variant == "sara":
        am = petkit.adapt(model, SaraConfig())
    elif variant == "sara_dense_mask":
        am, threshold = model, SaraConfig().threshold
        for p in model.parameters():
            p.requires_grad_(False)
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name != "classifier":
                mask = module.weight.detach().abs() < threshold
                module.weight.requires_grad_(True)
                module.weight.register_hook(lambda g, m=mask: g * m)
        model.classifier.requires_grad_(True)
    else:
        raise KeyError(variant)
    return am, [p for p in am.parameters() if p.requires_grad]


def child(variant: str, batch: int, seq: int, steps: int) -> dict:
    from petkit.models import load_model

    torch.manual_seed(0)
    model = load_model("minilm", task="classification", num_labels=2)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, model.config.vocab_size, (batch, seq), generator=g)
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(2, (batch,), generator=g)}
    linears = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "classifier"]
    am, params = attach(variant, model)
    with torch.no_grad():
        am(**data)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    am.train()
    gc.collect()
    memory = PeakMemory()
    for _ in range(steps):
        loss = am(**data).loss
        loss.backward()
        opt.step()
        grads = sum(p.grad.numel() for p in params if p.grad is not None)  # before zero_grad frees them
        weight_grads = sum(m.weight.grad is not None for m in linears)
        opt.zero_grad()
    peak_mb, train_mb = memory.read()
    state = sum(t.numel() for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0)
    return {"variant": variant, "peak_mb": peak_mb, "train_mb": train_mb, "reset": memory.reset,
            "trainable_params": sum(p.numel() for p in params), "grad_floats": grads, "optimizer_state_floats": state,
            "base_weights_with_grad": weight_grads, "loss": round(float(loss), 6), "threads": torch.get_num_threads()}


def run_child(variant: str, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--batch", str(args.batch),
           "--seq", str(args.seq), "--steps", str(args.steps)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), check=False)
    for line in reversed(res.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    raise RuntimeError(f"variant {variant} failed:\n{res.stderr[-3000:]}")


# -- the report ------------------------------------------------------------------------------------

def ratios(results: dict) -> list[dict]:
    out = []
    for label, a, b in RATIOS:
        ra, rb = results[a], results[b]
        out.append({"label": label, "numerator": a, "denominator": b,
                    "peak": round(ra["peak_mb"] / rb["peak_mb"], 4),
                    "train": round(ra["train_mb"] / rb["train_mb"], 4) if rb["train_mb"] else None,
                    "optimizer_state": round(ra["optimizer_state_floats"] / rb["optimizer_state_floats"], 4)})
    return out


def render_md(res: dict) -> str:
    s = res["settings"]
    how = (f"Generated {res['machine']['date']} by `benchmarks/sparse_memory.py`; torch {res['machine']['torch']}, "
           f"{s['threads']} threads; batch {s['batch']} x {s['seq']} tokens, {s['steps']} AdamW steps per variant, "
           "each variant in a fresh subprocess (VmHWM reset before training).")
    lines = ["# Peak training memory: SaRA vs LoRA vs full fine-tuning (MiniLM, CPU)", "", how, ""]
    if s["quick"]:
        lines += ["**--quick smoke run: tiny settings, the numbers below mean nothing.**", ""]
    header = "| variant | trainable | grad floats | optimizer-state floats | base weights with grad | peak RSS MB | added MB |"
    lines += [header, "|---|---|---|---|---|---|---|"]
    for v, r in res["variants"].items():
        lines.append(f"| {v} | {r['trainable_params']:,} | {r['grad_floats']:,} | {r['optimizer_state_floats']:,} | "
                     f"{r['base_weights_with_grad']} | {r['peak_mb']} | {r['train_mb']} |")
    lines += ["", "| ratio | peak RSS | added by training | optimizer state |", "|---|---|---|---|"]
    for r in res["ratios"]:
        train = "n/a" if r["train"] is None else f"{r['train']:.3f}"
        lines.append(f"| {r['label']} | {r['peak']:.3f} | {train} | {r['optimizer_state']:.3f} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 4 x 16 tokens, 1 step")
    ap.add_argument("--batch", type=int, default=None, help="examples per batch (default 32)")
    ap.add_argument("--seq", type=int, default=None, help="tokens per example (default 128)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per variant (default 3)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--only", default=None, help="comma-separated variants (development)")
    ap.add_argument("--out", default=str(HERE / "results"), help="directory for sparse_memory.json / .md")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.batch = args.batch or (4 if args.quick else 32)
    args.seq = args.seq or (16 if args.quick else 128)
    args.steps = args.steps or (1 if args.quick else 3)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        from transformers.utils import logging
        logging.set_verbosity_error()
        logging.disable_progress_bar()
        print(MARK + json.dumps(child(args.child, args.batch, args.seq, args.steps)), flush=True)
        return

    variants = args.only.split(",") if args.only else list(VARIANTS)
    results = {}
    for v in variants:
        results[v] = run_child(v, args)
        r = results[v]
        log(f"  {v:16s} peak {r['peak_mb']:8.1f} MB  added {r['train_mb']:7.1f} MB  trainable {r['trainable_params']:>10,}"
            f"  optimizer state {r['optimizer_state_floats']:>10,} floats")
    res = {
        "machine": {"date": datetime.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
                    "python": platform.python_version(), "cpus": os.cpu_count(), "loadavg": os.getloadavg()},
        "settings": {"batch": args.batch, "seq": args.seq, "steps": args.steps, "quick": args.quick,
                     "threads": results[variants[0]]["threads"], "model": "minilm"},
        "variants": results,
        "ratios": ratios(results) if set(VARIANTS) <= set(results) else [],
    }
    for r in res["ratios"]:
        log(f"  {r['label']:24s} peak {r['peak']:.3f}  added {r['train']}  optimizer state {r['optimizer_state']:.3f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sparse_memory.json").write_text(json.dumps(res, indent=2))
    (out / "sparse_memory.md").write_text(render_md(res))
    log(f"wrote {out / 'sparse_memory.json'} and {out / 'sparse_memory.md'}")


if __name__ == "__main__":
    main()
