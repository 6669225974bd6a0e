#!/usr/bin/env python
"""Is fine-tuning a "wrapper" on MiniLM? Per-layer linear probes of a base capability (TREC question
type) in the pre-trained model, after adapting it to AG News (LoRA, full fine-tuning at a medium and
a large learning rate), after pruning the largest weight changes back to the base, and during a short
reverse fine-tuning on TREC; plus linear CKA per layer between the base and each adapted model.

    .venv/bin/python benchmarks/wrapper_minilm.py                 # seed 0, ~25 minutes on the shared 2-core machine
    .venv/bin/python benchmarks/wrapper_minilm.py --seeds 0 1 2   # more seeds (resumes: finished seeds are kept)

Writes benchmarks/results/wrapper-minilm/: wrapper.json, wrapper.md, wrapper.png.
Nothing is selected on test: the probe's C is fixed at 1 and every pruning fraction is reported.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402
from transformers import AutoModel  # noqa: E402

import petkit  # noqa: E402
from petkit.analysis.similarity import cka_per_layer  # noqa: E402
from petkit.analysis.wrapper import layer_features, probe_layers, prune_delta, steps_to_recover  # noqa: E402
from petkit.data import load_dataset  # noqa: E402
from petkit.data.batches import ClassificationDataset  # noqa: E402
from petkit.models import load_model, load_tokenizer  # noqa: E402
from petkit.train import TrainConfig, evaluate, seed_everything, train  # noqa: E402

MAX_LENGTH = 48
# Sizes fit a 2-core machine shared with other jobs: ~25 minutes per seed there.
PROBE_TRAIN, PROBE_TEST, ADAPT_TRAIN = 600, 300, 800
# The paper's small/medium/large fine-tuning rates, in spirit: LoRA and full FT at usual rates, and full
# FT at a rate ~20x higher, where the paper finds the capability can really be lost.
ADAPTATIONS = {
    "lora r=8": (lambda: petkit.LoraConfig(r=8, alpha=16), 1e-3),
    "full lr=5e-5": (lambda: petkit.FullConfig(), 5e-5),
    "full lr=1e-3": (lambda: petkit.FullConfig(), 1e-3),
}
PRUNE_FRACTIONS = [0.01, 0.05]
REFT_STEPS, REFT_EVERY, REFT_LR = 40, 10, 1e-4


def encoder_state(model) -> dict[str, torch.Tensor]:
    """The encoder's weights (no task head, LoRA merged in) under BertModel's own names."""
    if isinstance(model, petkit.AdaptedModel):
        model = copy.deepcopy(model).merge_and_unload() if model.method_of("default").mergeable else model.base
    return {k.removeprefix("bert."): v.detach().clone() for k, v in model.state_dict().items() if k.startswith("bert.")}


def encoder_with(state: dict[str, torch.Tensor]):
    model = load_model("minilm", task="base")
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    return model


def probe(encoder, trec_train, trec_test) -> tuple[dict, dict]:
    train_f, test_f = layer_features(encoder, trec_train), layer_features(encoder, trec_test)
    labels = [f["labels"] for f in trec_train.features], [f["labels"] for f in trec_test.features]
    return probe_layers(train_f, labels[0], test_f, labels[1]), test_f


def adapt(name: str, seed: int, ag, tok) -> tuple[petkit.AdaptedModel, float]:
    config, lr = ADAPTATIONS[name]
    seed_everything(seed)
    model = petkit.adapt(load_model("minilm", num_labels=len(ag.labels)), config())
    train_set = ClassificationDataset(tok, ag.train, MAX_LENGTH)
    train(model, train_set, TrainConfig(lr=lr, epochs=1, batch_size=16, warmup=0.1, seed=seed),
          task="classification", progress=False)
    dev = evaluate(model, ClassificationDataset(tok, ag.dev, MAX_LENGTH))["accuracy"]
    return model, dev


def reverse_finetune(state, seed: int, trec, tok) -> list[tuple[int, float]]:
    """Full fine-tuning of the encoder ``state`` + a fresh head on TREC; test accuracy every few steps."""
    seed_everything(seed)
    model = load_model("minilm", num_labels=len(trec.labels))
    model.bert.load_state_dict(state, strict=False)
    train_set, test_set = ClassificationDataset(tok, trec.train, MAX_LENGTH), ClassificationDataset(tok, trec.test, MAX_LENGTH)
    curve = [(0, evaluate(model, test_set)["accuracy"])]

    def score(info) -> None:
        if info.step % REFT_EVERY == 0:
            curve.append((info.step, evaluate(model, test_set)["accuracy"]))

    train(model, train_set, TrainConfig(lr=REFT_LR, max_steps=REFT_STEPS, batch_size=16, schedule="constant", seed=seed),
          task="classification", progress=False, on_step=score)
    return curve


def run_seed(seed: int, tok, trec, ag) -> dict:
    trec_train = ClassificationDataset(tok, trec.train, MAX_LENGTH)
    trec_test = ClassificationDataset(tok, trec.test, MAX_LENGTH)
    base_state = encoder_state(load_model("minilm", num_labels=2))
    record = {"seed": seed, "models": {}}
    base_probe, base_feats = probe(encoder_with(base_state), trec_train, trec_test)
    record["models"]["base"] = {"probe": base_probe, "reft": reverse_finetune(base_state, seed, trec, tok)}
    torch.manual_seed(seed)
    control = AutoModel.from_config(load_model("minilm", task="base").config)  # never had the capability
    control_state = {k: v.detach().clone() for k, v in control.state_dict().items()}
    record["models"]["random init"] = {"probe": probe(control, trec_train, trec_test)[0],
                                       "reft": reverse_finetune(control_state, seed, trec, tok)}
    for name in ADAPTATIONS:
        model, dev = adapt(name, seed, ag, tok)
        state = encoder_state(model)
        probed, feats = probe(encoder_with(state), trec_train, trec_test)
        entry = {"ag_news_dev": dev, "probe": probed, "cka": cka_per_layer(base_feats, feats), "pruned": {},
                 "reft": reverse_finetune(state, seed, trec, tok)}
        for fraction in PRUNE_FRACTIONS:
            entry["pruned"][str(fraction)] = probe(encoder_with(prune_delta(base_state, state, fraction)),
                                                   trec_train, trec_test)[0]
        record["models"][name] = entry
        print(f"seed {seed} {name}: AG dev {dev:.3f}, last-layer TREC probe {probed[max(probed)]:.3f}", flush=True)
    return record


def mean_of(records: list[dict], *path) -> dict:
    """Per-layer (or per-step) mean over seeds of the dict at ``path``."""
    values = []
    for r in records:
        v = r
        for p in path:
            v = v[p]
        values.append({str(k): x for k, x in (v.items() if isinstance(v, dict) else v)})
    return {k: statistics.mean(v[k] for v in values) for k in values[0]}


def report(records: list[dict], out: Path) -> str:
    names = list(records[0]["models"])
    layers = sorted(int(k) for k in records[0]["models"]["base"]["probe"])
    last = str(layers[-1])
    base_last = mean_of(records, "models", "base", "probe")[last]
    lines = [f"# Wrapper analysis on MiniLM (base capability: TREC question type; adaptation: AG News), "
             f"mean of {len(records)} seeds", "",
             "## TREC probe accuracy per layer (test), base vs adapted vs pruned back", "",
             "| model | AG News dev | " + " | ".join(f"L{i}" for i in layers) + " |",
             "|---|---|" + "---|" * len(layers)]

    def row(label, probe, ag=""):
        return f"| {label} | {ag} | " + " | ".join(f"{probe[str(i)]:.3f}" for i in layers) + " |"

    for name in names:
        probe = mean_of(records, "models", name, "probe")
        ag = records[0]["models"][name].get("ag_news_dev")
        ag = f"{statistics.mean(r['models'][name]['ag_news_dev'] for r in records):.3f}" if ag is not None else ""
        lines.append(row(name, probe, ag))
        for fraction in records[0]["models"][name].get("pruned", {}):
            lines.append(row(f"{name}, top {float(fraction):.1%} ΔW pruned", mean_of(records, "models", name, "pruned", fraction)))
    lines += ["", "## Linear CKA per layer, base vs adapted (TREC test sentences)", "",
              "| model | " + " | ".join(f"L{i}" for i in layers) + " |", "|---|" + "---|" * len(layers)]
    for name in names:
        if "cka" in records[0]["models"][name]:
            cka = mean_of(records, "models", name, "cka")
            lines.append(f"| {name} | " + " | ".join(f"{cka[str(i)]:.3f}" for i in layers) + " |")
    steps = [s for s, _ in records[0]["models"]["base"]["reft"]]
    lines += ["", f"## Reverse fine-tuning on TREC (full FT, fresh head, lr {REFT_LR}, batch 16): test accuracy by step", "",
              "| model | " + " | ".join(str(s) for s in steps) + f" | steps to 90% of base's L{last} probe ({base_last:.3f}) |",
              "|---|" + "---|" * (len(steps) + 1)]
    for name in names:
        curve = mean_of(records, "models", name, "reft")
        reach = [steps_to_recover(r["models"][name]["reft"], base_last) for r in records]
        lines.append(f"| {name} | " + " | ".join(f"{curve[str(s)]:.3f}" for s in steps) + " | "
                     + ", ".join("never" if s is None else str(s) for s in reach) + " |")
    plot(records, names, layers, out / "wrapper.png")
    lines += ["", "![probes and CKA](wrapper.png)", ""]
    return "\n".join(lines)


def plot(records, names, layers, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        probe = mean_of(records, "models", name, "probe")
        line, = left.plot(layers, [probe[str(i)] for i in layers], marker="o", label=name)
        if "pruned" in records[0]["models"][name]:
            pruned = mean_of(records, "models", name, "pruned", "0.01")
            left.plot(layers, [pruned[str(i)] for i in layers], ls="--", color=line.get_color(), label=f"{name}, 1% ΔW pruned")
            cka = mean_of(records, "models", name, "cka")
            right.plot(layers, [cka[str(i)] for i in layers], marker="o", color=line.get_color(), label=name)
    left.set(xlabel="layer (0 = embeddings)", ylabel="TREC probe accuracy (test)", title="base capability per layer")
    right.set(xlabel="layer (0 = embeddings)", ylabel="linear CKA with the base", title="representation similarity")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "wrapper-minilm")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    tok = load_tokenizer("minilm")
    trec = load_dataset("trec", max_train=PROBE_TRAIN, max_eval=PROBE_TEST)
    ag = load_dataset("ag_news", max_train=ADAPT_TRAIN, max_eval=PROBE_TEST)
    path = args.out / "wrapper.json"
    records = json.loads(path.read_text()) if path.exists() else []
    for seed in args.seeds:
        if any(r["seed"] == seed for r in records):
            continue
        records.append(json.loads(json.dumps(run_seed(seed, tok, trec, ag))))  # str keys, as when read back
        path.write_text(json.dumps(records, indent=1))
    (args.out / "wrapper.md").write_text(report(records, args.out) + "\n")
    print(f"report: {args.out / 'wrapper.md'}")


if __name__ == "__main__":
    main()
