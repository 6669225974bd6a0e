#!/usr/bin/env python
"""Prompting vs fine-tuning across "languages": English against cipher-English on SST-2 (SmolLM2-135M-Instruct).

The small-scale analogue of Toukmaji (2024), few-shot cross-lingual transfer for prompting LLMs in
low-resource languages. No labelled non-English text ships offline, so the "low-resource language" is
cipher-English (petkit.data.cipher): a seeded letter derangement applied to every word, a word-level
bijection that keeps meaning and syntax but breaks tokenisation and lexical knowledge.

Settings, all scored by log-likelihood ranking of the label words (sum of the label tokens' log-probs):
- prompt: k in {0, 4} fixed demonstrations (2 per class) in context. In cipher the WHOLE prompt is
  ciphered: template, demonstrations, query and the label words (the task in the target language).
- translate: the ciphered text is decoded back to English exactly (p = 0) or with word error p = 0.1
  (a tenth of the words left in cipher), then prompted in English (English template and label words).
- fine-tune (k = 0): LoRA (r = 8, all linear layers), prompt tuning (10 soft tokens) and full fine-tuning,
  the same step budget in each language, with the LM loss on the label word (petkit.adapt +
  petkit.train.train on prompt/completion records).

Test: the first --test SST-2 test sentences of at most --max-words words (the same subset in every cell;
short sentences keep the run inside the one-core budget on a shared machine). One seed.

    .venv/bin/python benchmarks/crosslingual_smollm2.py                 # the committed run: ~17 min of one thread
    .venv/bin/python benchmarks/crosslingual_smollm2.py --quick --out /tmp/xl   # smoke run
    .venv/bin/python benchmarks/crosslingual_smollm2.py --report-only   # re-render crosslingual.md

Writes crosslingual.json (after every cell, so a cut run keeps what it measured) and crosslingual.md to
--out (benchmarks/results/crosslingual).
"""

from __future__ import annotations

import argparse
import warnings
import copy
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=".*past_key_values.*")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import torch  # noqa: E402

import petkit  # noqa: E402
from petkit.data import load_dataset, sft_dataset  # noqa: E402
from petkit.data.cipher import Cipher, cipher_dataset  # noqa: E402
from petkit.models import load_model, load_tokenizer  # noqa: E402
from petkit.train import TrainConfig, train  # noqa: E402

TEMPLATE = "Review: {text}\nSentiment:"
LABEL_WORDS = ["negative", "positive"]
PROMPT_CELLS = [("English", "prompt", 0), ("English", "prompt", 4), ("cipher", "prompt", 0), ("cipher", "prompt", 4),
                ("translate p=0.1", "prompt", 0), ("translate p=0.1", "prompt", 4)]
METHODS = {  # learning rates fixed beforehand (common values for each method), not tuned on test
    "LoRA": (lambda: petkit.LoraConfig(r=8, alpha=16, dropout=0.0, targets="all-linear"), 1e-3),
    "prompt tuning": (lambda: petkit.PromptTuningConfig(num_virtual_tokens=10), 3e-2),
    "full fine-tuning": (None, 5e-5),
}


def short(records: list[dict], max_words: int) -> list[dict]:
    return [r for r in records if len(r["text"].split()) <= max_words]


class Language:
    """How one "language" writes a labelled example: a text transform, the template and the label words."""

    def __init__(self, name: str, cipher: Cipher, p: float = 0.0):
        self.name, self.cipher, self.p = name, cipher, p

    def text(self, text: str, i: int) -> str:
        if self.name == "cipher":
            return self.cipher.encode(text)
        if self.name.startswith("translate"):  # the input arrives ciphered and is translated back
            return self.cipher.noisy_decode(self.cipher.encode(text), self.p, seed=i)
        return text

    def frame(self, s: str) -> str:  # template and label words: in cipher only for the cipher language
        return self.cipher.encode(s) if self.name == "cipher" else s

    def prompt(self, text: str, i: int) -> str:
        return self.frame(TEMPLATE.format(text="\0")).replace("\0", self.text(text, i))

    def labels(self) -> list[str]:
        return [self.frame(" " + w) for w in LABEL_WORDS]


def encode(tok, s: str) -> list[int]:
    return tok(s, add_special_tokens=False).input_ids


@torch.no_grad()
def accuracy(model, tok, lang: Language, test: list[dict], demos: list[dict]) -> float:
    """Label-word log-likelihood ranking; the k demonstrations are read once into a KV cache."""
    model.eval()
    labels = [encode(tok, s) for s in lang.labels()]
    rows = 1 if all(len(lab) == 1 for lab in labels) else len(labels)  # single-token labels: one row reads all
    cache, prefix = None, 0
    if demos:
        text = "\n\n".join(lang.prompt(d["text"], 10_000 + j) + lang.labels()[d["label"]] for j, d in enumerate(demos))
        ids = torch.tensor([encode(tok, text + "\n\n")] * rows)
        cache, prefix = model(input_ids=ids, use_cache=True).past_key_values, ids.shape[1]
    correct = 0
    for i, r in enumerate(test):
        prompt = encode(tok, lang.prompt(r["text"], i))
        seqs = [prompt + lab[:-1] for lab in labels[:rows]]
        width = max(map(len, seqs))
        x = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
        keep = width - len(prompt) + 1  # logits from the last prompt position on
        out = model(input_ids=x, past_key_values=cache, use_cache=cache is not None, logits_to_keep=keep)
        logp = out.logits.float().log_softmax(-1)
        scores = []
        for j, lab in enumerate(labels):
            row = logp[j if rows > 1 else 0]
            scores.append(sum(row[t, tok_id].item() for t, tok_id in enumerate(lab)))
        correct += int(max(range(len(scores)), key=scores.__getitem__) == r["label"])
        if cache is not None:
            cache.crop(prefix - cache.get_seq_length())  # drop this example's tokens
    return correct / len(test)


def fine_tune(base, tok, method: str, lang: Language, train_rows: list[dict], args):
    make, lr = METHODS[method]
    torch.manual_seed(args.seed)
    if make is None:
        model = copy.deepcopy(base).train().requires_grad_(True)
    else:
        model = petkit.adapt(base, make(), copy=True)
    labels = lang.labels()
    records = [{"prompt": lang.prompt(r["text"], 20_000 + i), "completion": labels[r["label"]]}
               for i, r in enumerate(train_rows)]
    data = sft_dataset(tok, records, max_length=128, chat_template=False)
    cfg = TrainConfig(lr=lr, max_steps=args.steps, batch_size=args.batch, warmup=0.1, seed=args.seed,
                      eval_every_epoch=False)
    result = train(model, data, cfg, task="causal_lm", progress=False)
    return model.eval(), result.train_loss


def save(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "crosslingual.json").write_text(json.dumps(result, indent=1) + "\n")


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    data = load_dataset("sst2", seed=0)
    test = short(data.test, args.max_words)[: args.test]
    pool = short(data.train, args.max_words)
    rng = random.Random(args.seed)
    rng.shuffle(pool)
    demos = [r for c in (0, 1) for r in [x for x in pool if x["label"] == c][:2]]
    rng.shuffle(demos)
    train_rows = [r for r in pool if r not in demos][: args.steps * args.batch]
    tok, base = load_tokenizer("smollm2"), load_model("smollm2", task="causal_lm").eval()
    cipher = Cipher(args.cipher_seed)
    langs = {"English": Language("English", cipher), "cipher": Language("cipher", cipher),
             "translate p=0.1": Language("translate p=0.1", cipher, 0.1)}
    assert all(Language("translate p=0", cipher).prompt(r["text"], i) == langs["English"].prompt(r["text"], i)
               for i, r in enumerate(test)), "exact translation must give back the English prompts"
    result = {"model": "SmolLM2-135M-Instruct", "data": "sst2", "test": len(test), "max_words": args.max_words,
              "demos": len(demos), "steps": args.steps, "batch": args.batch, "seed": args.seed,
              "cipher_seed": args.cipher_seed, "threads": args.threads, "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "cells": []}
    for lang_name, setting, k in PROMPT_CELLS:
        start = time.time()
        acc = accuracy(base, tok, langs[lang_name], test, demos[:k])
        result["cells"].append({"language": lang_name, "setting": f"prompt k={k}", "accuracy": acc,
                                "seconds": round(time.time() - start, 1)})
        print(result["cells"][-1], flush=True)
        save(result, args.out)
    for method in args.methods:
        for lang_name in ("English", "cipher"):
            start = time.time()
            model, loss = fine_tune(base, tok, method, langs[lang_name], train_rows, args)
            acc = accuracy(model, tok, langs[lang_name], test, [])
            result["cells"].append({"language": lang_name, "setting": method, "accuracy": acc,
                                    "train_loss": loss, "seconds": round(time.time() - start, 1)})
            print(result["cells"][-1], flush=True)
            del model
            save(result, args.out)
    return result


def render(result: dict, out: Path) -> None:
    cells = {(c["language"], c["setting"]): c["accuracy"] for c in result["cells"]}
    settings = list(dict.fromkeys(c["setting"] for c in result["cells"]))
    rows = ["English", "translate p=0", "translate p=0.1", "cipher"]
    cells.update({("translate p=0", s): v for (lang, s), v in list(cells.items()) if lang == "English"
                  and s.startswith("prompt k=")})
    lines = [f"{result['model']}, SST-2, {result['test']} test sentences of at most {result['max_words']} words "
             f"(chance 0.5), seed {result['seed']}, cipher seed {result['cipher_seed']}; fine-tuning: "
             f"{result['steps']} steps x batch {result['batch']}, k = 0; {result['date']}, torch {result['torch']}.",
             "translate p=0 decodes the cipher exactly, so its prompts are the English ones (asserted), "
             "and its numbers are the English row's.", "",
             "| language | " + " | ".join(settings) + " |", "|---" * (len(settings) + 1) + "|"]
    for lang in rows:
        if any((lang, s) in cells for s in settings):
            lines.append(f"| {lang} | " + " | ".join(f"{cells[(lang, s)]:.3f}" if (lang, s) in cells else "–"
                                                      for s in settings) + " |")
    seconds = sum(c["seconds"] for c in result["cells"])
    lines += ["", f"Total measured time {seconds / 60:.1f} min (one thread on a shared, loaded 2-core machine)."]
    (out / "crosslingual.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "crosslingual")
    ap.add_argument("--test", type=int, default=60)
    ap.add_argument("--max-words", type=int, default=10)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cipher-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--quick", action="store_true", help="smoke run: 8 test sentences, 2 steps")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.test, args.steps, args.batch = 8, 2, 2
    if not args.report_only:
        run(args)
    render(json.loads((args.out / "crosslingual.json").read_text()), args.out)
    print((args.out / "crosslingual.md").read_text())


if __name__ == "__main__":
    main()
