#!/usr/bin/env python
"""Emulated fine-tuning with real weights (issue 6): up-scale a small fine-tune onto SmolLM2-135M.

The three models of EFT, all sharing SmolLM2's tokenizer:
- large base: SmolLM2-135M (30 layers);
- small base: SmolLM2 with only the layers in --keep (6 of 30 by default), distilled from the large
  model on general English (BBC News articles; KL to the large model's next-token distribution, the
  shared embedding and tied head frozen);
- small fine-tuned: the small base with LoRA (r = 16, every linear layer) trained on Tiny Shakespeare,
  merged into a plain model.
For reference, the large model fine-tuned the same way (the target EFT emulates without training it).

Scored on held-out text in nats per token (perplexity = e^nats): Tiny Shakespeare (the fine-tuning
domain) and BBC News (general text), for each model alone and for EFT at β = 0.5, 1, 1.5. Then decoding:
greedy samples, and speculative EFT sampling (draft k = 4 tokens with the small fine-tune) with its
acceptance rate and large-model passes per token; speculative greedy must equal plain greedy. Last,
decoding time (eft_timing.py): cached EFT against speculative EFT at several k and the large model
alone, wall clock and CPU time on one thread, beside large-model passes per token.

    .venv/bin/python benchmarks/eft_smollm2.py                # about 75 minutes on 2 cores
    .venv/bin/python benchmarks/eft_smollm2.py --models-cache /tmp/eft-models   # keep the trained models
    .venv/bin/python benchmarks/eft_smollm2.py --quick --out /tmp/eft   # a smoke run

Writes eft.json, eft.md and eft.png to --out (benchmarks/results/eft-smollm2). With --models-cache the
three trained models (and their training losses and times) are saved there and reused by the next run
with the same training settings, which then takes minutes instead of an hour.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import petkit
from petkit.compose import EFT
from petkit.data import load_dataset
from petkit.data.batches import lm_blocks
from petkit.models import load_model, load_tokenizer
from petkit.models.structure import truncated
from petkit.train import TrainConfig, train

from eft_timing import timing, timing_lines  # noqa: E402  (beside this script)

BETAS = (0.5, 1.0, 1.5)
PROMPTS = ("ROMEO:\nWhat light", "KING HENRY:\nMy lords,", "First Citizen:\nWe are", "LADY MACBETH:\nCome,")


class Distiller(nn.Module):
    """The student's loss is KL(teacher ‖ student) per token (temperature 1), averaged over the
    block's tokens; the teacher is frozen and read without gradients."""

    def __init__(self, student: nn.Module, teacher: nn.Module):
        super().__init__()
        self.student, self.teacher = student, teacher
        teacher.requires_grad_(False)

    def forward(self, input_ids, attention_mask=None, labels=None):
        with torch.no_grad():
            target = torch.log_softmax(self.teacher(input_ids=input_ids, attention_mask=attention_mask).logits, -1)
        guess = torch.log_softmax(self.student(input_ids=input_ids, attention_mask=attention_mask).logits, -1)
        kl = (target.exp() * (target - guess)).sum(-1)
        mask = attention_mask.float() if attention_mask is not None else torch.ones_like(kl)
        return SimpleNamespace(loss=(kl * mask).sum() / mask.sum())


def blocks(tok, chunks: list[dict], length: int, n: int | None = None):
    data = lm_blocks(tok, chunks, length, drop_last=True)
    if n is not None:
        data.blocks = data.blocks[:n]
    return data


def distil_small_base(large: nn.Module, tok, general, args) -> nn.Module:
    small = truncated(large, args.keep)
    small.requires_grad_(True)
    small.get_input_embeddings().weight.requires_grad_(False)  # shared with the large model; tied head
    data = blocks(tok, general.train, args.length)
    cfg = TrainConfig(lr=args.distil_lr, max_steps=args.distil_steps, batch_size=args.batch, warmup=0.05,
                      schedule="cosine", eval_every_epoch=False)
    result = train(Distiller(small, large), data, cfg, task="causal_lm", progress=args.progress)
    small.eval().requires_grad_(False)
    return small, result.train_loss


def lora_finetune(model: nn.Module, tok, domain, args, steps: int) -> tuple[nn.Module, float]:
    am = petkit.adapt(model, petkit.LoraConfig(r=16, alpha=32, targets="all-linear"), copy=True)
    data = blocks(tok, domain.train, args.length)
    cfg = TrainConfig(lr=args.ft_lr, max_steps=steps, batch_size=args.batch, warmup=0.05, eval_every_epoch=False)
    result = train(am, data, cfg, task="causal_lm", progress=args.progress)
    return am.merge_and_unload().eval(), result.train_loss


def log_prob_fn(model: nn.Module):
    return lambda ids: torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)


@torch.no_grad()
def nats_per_token(log_probs, data, batch: int = 8) -> float:
    total, count = 0.0, 0
    for i in range(0, len(data.blocks), batch):
        ids = torch.tensor(data.blocks[i:i + batch])
        lp = log_probs(ids)[:, :-1]
        total -= lp.gather(-1, ids[:, 1:, None]).sum().item()
        count += ids[:, 1:].numel()
    return total / count


def decoding(models: dict, eft: EFT, tok, args) -> dict:
    out = {"greedy": {}, "speculative": []}
    for prompt in PROMPTS[: args.prompts]:
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        samples = {}
        for name, model in models.items():
            gen = model.generate(ids, max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            samples[name] = tok.decode(gen[0, ids.shape[1]:])
        greedy = eft.generate(ids, args.new_tokens)
        samples["EFT β=1"] = tok.decode(greedy[0, ids.shape[1]:])
        spec_greedy, _ = eft.speculative_generate(ids, args.new_tokens, k=4)
        _, stats = eft.speculative_generate(ids, args.new_tokens, k=4, do_sample=True, top_p=0.9,
                                            generator=torch.Generator().manual_seed(0))
        out["speculative"].append({
            "prompt": prompt, "greedy_equal": bool(torch.equal(spec_greedy, greedy)),
            "acceptance": stats.accepted / max(1, stats.drafted), "large_passes_per_token": stats.passes_per_token,
            "tokens": stats.tokens})
        out["greedy"][prompt] = samples
    return out


TRAINING = ("keep", "distil_steps", "ft_steps", "distil_lr", "ft_lr", "batch", "length")  # what the models depend on
TRAINED = ("small base", "small fine-tuned", "large fine-tuned")


def trained_models(large: nn.Module, tok, general, domain, args) -> tuple[dict, dict, dict]:
    """The three trained models, their training losses and times: read from --models-cache when it
    holds models trained with these settings, else trained here (and saved there)."""
    settings, cache = {k: getattr(args, k) for k in TRAINING}, args.models_cache
    record = cache / "training.json" if cache else None
    saved = json.loads(record.read_text()) if record is not None and record.exists() else None
    if saved is not None and saved["settings"] == settings:
        models = {name: (truncated(large, args.keep) if name.startswith("small") else copy.deepcopy(large))
                  for name in TRAINED}
        for name, model in models.items():
            model.load_state_dict(torch.load(cache / f"{name.replace(' ', '_')}.pt"))
            model.eval().requires_grad_(False)
        return models, saved["train_loss"], {**saved["timings"], "models_from_cache": True}
    timings = {}
    start = time.perf_counter()
    small_base, distil_loss = distil_small_base(large, tok, general, args)
    timings["distil_s"] = time.perf_counter() - start
    start = time.perf_counter()
    small_ft, small_ft_loss = lora_finetune(small_base, tok, domain, args, args.ft_steps)
    timings["small_ft_s"] = time.perf_counter() - start
    start = time.perf_counter()
    large_ft, large_ft_loss = lora_finetune(large, tok, domain, args, args.ft_steps)
    timings["large_ft_s"] = time.perf_counter() - start
    models = dict(zip(TRAINED, (small_base, small_ft, large_ft)))
    losses = {"distil_kl": distil_loss, "small_ft": small_ft_loss, "large_ft": large_ft_loss}
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
        for name, model in models.items():
            torch.save(model.state_dict(), cache / f"{name.replace(' ', '_')}.pt")
        record.write_text(json.dumps({"settings": settings, "train_loss": losses, "timings": timings}))
    return models, losses, timings


def run(args) -> dict:
    torch.manual_seed(0)
    tok = load_tokenizer("smollm2")
    large = load_model("smollm2", "causal_lm").eval().requires_grad_(False)
    general, domain = load_dataset("bbc"), load_dataset("tiny_shakespeare")
    trained, losses, timings = trained_models(large, tok, general, domain, args)
    small_base, small_ft = trained["small base"], trained["small fine-tuned"]
    models = {"large base": large, **trained}
    scorers = {name: log_prob_fn(m) for name, m in models.items()}
    for beta in BETAS:
        scorers[f"EFT β={beta:g}"] = EFT(large, small_base, small_ft, beta=beta).log_probs
    test_sets = {"tiny_shakespeare": blocks(tok, domain.test, args.length, args.eval_blocks),
                 "bbc": blocks(tok, general.test, args.length, args.eval_blocks)}
    scores = {name: {data: nats_per_token(fn, ds) for data, ds in test_sets.items()} for name, fn in scorers.items()}
    eft = EFT(large, small_base, small_ft)
    decode = decoding({k: models[k] for k in ("large base", "small fine-tuned", "large fine-tuned")}, eft, tok, args)
    prompts = [tok(p, return_tensors="pt", add_special_tokens=False)["input_ids"] for p in PROMPTS[: args.prompts]]
    decode["timing"] = timing(eft, prompts, args.new_tokens, args.timing_rounds)
    return {"settings": {k: v for k, v in vars(args).items() if k not in ("out", "report_only", "models_cache")},
            "params": {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()},
            "train_loss": losses,
            "eval_tokens": {d: len(ds.blocks) * (args.length - 1) for d, ds in test_sets.items()},
            "nats_per_token": scores, "decoding": decode, "timings": timings, "torch": torch.__version__}


def render(results: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores, s = results["nats_per_token"], results["settings"]
    gain = {d: closed_gap(scores, d) for d in ("tiny_shakespeare", "bbc")}
    lines = [f"## EFT on SmolLM2-135M (small pair: layers {s['keep']} of 30, distilled {s['distil_steps']} steps; "
             f"LoRA fine-tunes {s['ft_steps']} steps on Tiny Shakespeare)", "",
             "Held-out perplexity (nats per token in brackets); "
             f"{results['eval_tokens']['tiny_shakespeare']} / {results['eval_tokens']['bbc']} scored tokens.", "",
             "| model | parameters | Tiny Shakespeare | BBC News |", "|---|---|---|---|"]
    for name, row in scores.items():
        params = results["params"].get(name)
        lines.append(f"| {name} | {f'{params / 1e6:.1f}M' if params else '3 models'} | "
                     f"{math.exp(row['tiny_shakespeare']):.1f} ({row['tiny_shakespeare']:.3f}) | "
                     f"{math.exp(row['bbc']):.1f} ({row['bbc']:.3f}) |")
    lines += ["", "Share of the large fine-tune's change from the large base (in nats per token) that EFT β=1 "
              f"reproduces without training the large model: Tiny Shakespeare {100 * gain['tiny_shakespeare']:.0f}%, "
              f"BBC News {100 * gain['bbc']:.0f}%.", "",
              "## Speculative EFT sampling (draft k = 4 with the small fine-tune, top-p 0.9)", "",
              "| prompt | acceptance | large passes / token | greedy speculative == greedy |", "|---|---|---|---|"]
    for row in results["decoding"]["speculative"]:
        lines.append(f"| {row['prompt']!r} | {row['acceptance']:.2f} | {row['large_passes_per_token']:.2f} | "
                     f"{row['greedy_equal']} |")
    if "timing" in results["decoding"]:
        lines += ["", *timing_lines(results["decoding"]["timing"])]
    lines += ["", "## Greedy continuations", ""]
    for prompt, samples in results["decoding"]["greedy"].items():
        lines.append(f"**{prompt!r}**\n")
        lines += [f"- {name}: {text!r}" for name, text in samples.items()]
        lines.append("")
    (out / "eft.md").write_text("\n".join(lines))

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    names = list(scores)
    colours = ["0.35", "0.65", "C1", "C2"] + ["C0"] * len(BETAS)
    for ax, data, title in zip(axes, ("tiny_shakespeare", "bbc"), ("Tiny Shakespeare (fine-tuning domain)", "BBC News (general)")):
        values = [math.exp(scores[n][data]) for n in names]
        ax.barh(range(len(names)), values, color=colours[: len(names)])
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.1f}", va="center", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("held-out perplexity (lower is better)")
        ax.set_xlim(0, max(values) * 1.18)
    axes[0].set_yticks(range(len(names)), names)
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(out / "eft.png", dpi=120)
    plt.close(fig)


def closed_gap(scores: dict, data: str) -> float:
    base, tuned, eft = (scores[k][data] for k in ("large base", "large fine-tuned", "EFT β=1"))
    return (base - eft) / (base - tuned) if base != tuned else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps of everything: checks the script runs")
    parser.add_argument("--keep", default="0,6,12,18,24,29", help="the large model's layers the small pair keeps")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "eft-smollm2")
    parser.add_argument("--report-only", action="store_true", help="re-render eft.md and eft.png from eft.json")
    parser.add_argument("--models-cache", type=Path, default=None,
                        help="save the trained models here, and reuse them when trained with the same settings")
    args = parser.parse_args()
    if args.report_only:
        render(json.loads((args.out / "eft.json").read_text()), args.out)
        return
    args.keep = [int(i) for i in args.keep.split(",")]
    quick = args.quick
    args.distil_steps, args.ft_steps = (3, 3) if quick else (300, 150)
    args.distil_lr, args.ft_lr, args.batch, args.length = 5e-4, 1e-3, 8, 128
    args.eval_blocks, args.prompts, args.new_tokens = (2, 1, 8) if quick else (48, 4, 40)
    args.timing_rounds = 2 if quick else 5
    args.progress = not quick
    torch.set_num_threads(1 if quick else 2)
    results = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eft.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    render(results, args.out)
    print((args.out / "eft.md").read_text())


if __name__ == "__main__":
    main()
