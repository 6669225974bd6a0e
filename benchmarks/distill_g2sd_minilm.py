#!/usr/bin/env python
"""G2SD on text: MiniLM (6 × 384, 22.7M parameters) distilled into a 3-layer, 192-wide BERT student
(7.3M parameters, 5.9M of them the WordPiece embedding table), then fine-tuned on SST-2 with few
labels. The same student, four ways, side by side:

- g2sd:     generic stage (feature distillation from the frozen pre-trained MiniLM on unlabelled
            SST-2 train sentences, 15% shared masks) + specific stage (distillation token, hard labels
            of the fine-tuned teacher);
- specific: the specific stage alone, from a random init;
- scratch:  plain cross-entropy on [CLS], from a random init;
- teacher:  MiniLM fully fine-tuned on the same labelled subset (petkit's trainer).

Labelled subsets of 500 and 2000 SST-2 train sentences (seeded stratified, drawn once with seed 0, the
same for every student seed); seeds 0–2 vary the student's init, the data order and dropout. The
unlabelled text is the whole SST-2 train split with its labels dropped (the semi-supervised reading of
"few labels"). The generic stage runs once and every g2sd student starts from it. Each specific run
keeps its best epoch on dev (872 sentences); test (1821) is read once, at the end.

    .venv/bin/python benchmarks/distill_g2sd_minilm.py            # ≈ 45 min of one core (OMP_NUM_THREADS=1)
    .venv/bin/python benchmarks/distill_g2sd_minilm.py --smoke --out /tmp/g2sd   # a few-minute smoke run

On a busy machine the same runs can be shared by several processes (each run is claimed by a
`.running` file): one without --skip-generic, others with `--sizes N --skip-generic` once the
teacher for N is cached; their g2sd runs wait for the generic student.

Writes to benchmarks/results/distill-g2sd/: runs/*.json (one per run; a run already there is skipped),
results.json, g2sd.md, g2sd.png. Student weights are cached under --cache (not committed).
The budget is why the stages are tiny next to the paper's (300 + 200 epochs on ImageNet): 2 generic
epochs over 6.9k sentences, 10 / 4 specific epochs (500 / 2000 labels), no hyper-parameter search (lr 5e-4 fixed).
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
from safetensors.torch import load_file, save_file  # noqa: E402

from petkit.core.model import adapt  # noqa: E402
from petkit.data.task import DatasetNotFound  # noqa: E402
from petkit.distill.g2sd import (  # noqa: E402
    GenericConfig,
    SpecificConfig,
    TextDataset,
    generic_distill,
    specific_distill,
    teacher_predictions,
)
from petkit.distill.bert_student import bert_student, parameter_count, safetensors_bytes  # noqa: E402
from petkit.models.aliases import ModelNotFound  # noqa: E402
from petkit.pipeline import RunSpec, prepare  # noqa: E402
from petkit.train import TrainConfig, evaluate, train  # noqa: E402

SHAPE = {"layers": 3, "width": 192, "heads": 4, "intermediate": 768}
GENERIC = GenericConfig(lr=1e-3, epochs=2, batch_size=32, warmup=0.1)
SPECIFIC_EPOCHS = {500: 10, 2000: 4}
SPECIFIC = {"lr": 5e-4, "batch_size": 32, "warmup": 0.1}
TEACHER_TRAIN = {500: {"lr": 5e-5, "epochs": 5, "batch_size": 16}, 2000: {"lr": 5e-5, "epochs": 2, "batch_size": 16}}
VARIANTS = ("g2sd", "specific", "scratch")
MAX_LENGTH = 64


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def labelled(n: int):
    """MiniLM tokenizer, the fine-tuned-on-n teacher's Prepared (model not trained yet) and splits."""
    spec = RunSpec(model="minilm", data="sst2", method={"name": "full"}, max_length=MAX_LENGTH, max_train=n,
                   train=TEACHER_TRAIN.get(n, TEACHER_TRAIN[500]), seed=0)
    return spec, prepare(spec)


def generic_student(cache: Path, out: Path, smoke: bool) -> dict:
    """The generic stage, once: cached student weights + a run record."""
    record_path, weights = out / "runs" / "generic.json", cache / "generic-student.safetensors"
    if record_path.is_file() and weights.is_file():
        return json.loads(record_path.read_text())
    from petkit.data import load_dataset
    from petkit.models import load_model, load_tokenizer

    tokenizer = load_tokenizer("minilm")
    teacher = load_model("minilm", task="base")
    texts = [ex["text"] for ex in load_dataset("sst2", seed=0).train]
    cfg = GENERIC
    if smoke:
        texts, cfg = texts[:64], GenericConfig(epochs=1, batch_size=32)
    data = TextDataset(tokenizer, texts, MAX_LENGTH)
    student = bert_student(teacher.config, **SHAPE, seed=0)
    log(f"generic stage: {len(data)} unlabelled sentences, {cfg.epochs} epochs")
    result = generic_distill(teacher, student, data, cfg, log=log)
    cache.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(weights))
    record = {"stage": "generic", "sentences": len(data), "config": {**vars(cfg), "betas": list(cfg.betas)},
              "history": result.history, "seconds": round(result.seconds, 1),
              "feature_head_parameters": parameter_count(result.model.feature_head)}
    record_path.parent.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=1))
    return record


def teacher_for(n: int, out: Path, cache: Path, smoke: bool):
    spec, prep = labelled(n)
    path, weights = out / "runs" / f"teacher-n{n}.json", cache / f"teacher-n{n}.safetensors"
    model = adapt(prep.model, spec.method_config())
    if path.is_file() and weights.is_file():
        model.base.load_state_dict(load_file(str(weights)))
        return model.eval(), prep
    cfg = spec.train_config() if not smoke else TrainConfig(lr=5e-5, epochs=1, batch_size=16, max_steps=2)
    log(f"teacher: full fine-tune of MiniLM on {len(prep.train)} labelled sentences")
    started = time.perf_counter()
    train(model, prep.train, cfg, task="classification", progress=False)
    seconds = time.perf_counter() - started
    cache.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.base.state_dict().items()}, str(weights))
    test = evaluate(model, prep.test, "classification", batch_size=64)
    dev = evaluate(model, prep.dev, "classification", batch_size=64)
    record = {"variant": "teacher", "n": n, "seed": 0, "dev": dev["accuracy"], "test": test["accuracy"],
              "seconds": round(seconds, 1), "parameters": parameter_count(model.base),
              "bytes": safetensors_bytes(model.base)}
    path.write_text(json.dumps(record, indent=1))
    return model, prep


def student_run(variant: str, n: int, seed: int, teacher, prep, cache: Path, out: Path, smoke: bool) -> None:
    path = out / "runs" / f"{variant}-n{n}-seed{seed}.json"
    lock = path.with_suffix(".running")  # several processes may share the runs (see --help)
    if path.is_file() or lock.is_file():
        return
    lock.touch()
    try:
        _student_run(variant, n, seed, teacher, prep, cache, path, smoke)
    finally:
        lock.unlink()


def _student_run(variant: str, n: int, seed: int, teacher, prep, cache: Path, path: Path, smoke: bool) -> None:
    student = bert_student(teacher.config, **SHAPE, seed=seed)
    if variant == "g2sd":
        while not (cache / "generic-student.safetensors").is_file():  # another process runs the generic stage
            log(f"waiting for the generic student in {cache} ...")
            time.sleep(60)
        student.load_state_dict(load_file(str(cache / "generic-student.safetensors")))
    epochs = 1 if smoke else SPECIFIC_EPOCHS.get(n, SPECIFIC_EPOCHS[500])
    cfg = SpecificConfig(**SPECIFIC, epochs=epochs, seed=seed)
    dev = prep.dev if not smoke else torch.utils.data.Subset(prep.dev, range(32))

    def select(model) -> float:
        return evaluate(model, dev, "classification", batch_size=64, collate_fn=prep.dev.collate)["accuracy"]

    log(f"{variant} n={n} seed={seed}")
    if variant != "scratch" and not hasattr(prep, "teacher_labels"):  # once per process: one teacher, many students
        prep.teacher_labels = teacher_predictions(teacher, prep.train)
    result = specific_distill(student, prep.train, len(prep.labels), cfg,
                              teacher=None if variant == "scratch" else teacher,
                              teacher_labels=None if variant == "scratch" else prep.teacher_labels,
                              select=select, log=log)
    test = evaluate(result.model, prep.test, "classification", batch_size=64)
    record = {"variant": variant, "n": n, "seed": seed, "dev": max(h["select"] for h in result.history),
              "test": test["accuracy"], "best_epoch": result.best_epoch, "seconds": round(result.seconds, 1),
              "parameters": parameter_count(result.model), "bytes": safetensors_bytes(result.model),
              "history": result.history}
    path.write_text(json.dumps(record, indent=1))


def summarise(out: Path) -> dict:
    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    generic = next((r for r in runs if r.get("stage") == "generic"), None)
    rows = []
    for n in sorted({r["n"] for r in runs if "n" in r}):
        for variant in ("teacher", *VARIANTS):
            group = [r for r in runs if r.get("n") == n and r.get("variant") == variant]
            if not group:
                continue
            tests = [100 * r["test"] for r in group]
            rows.append({"n": n, "variant": variant, "seeds": len(group), "test_mean": statistics.mean(tests),
                         "test_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
                         "dev_mean": statistics.mean(100 * r["dev"] for r in group),
                         "parameters": group[0]["parameters"], "bytes": group[0]["bytes"],
                         "seconds_mean": statistics.mean(r["seconds"] for r in group)})
    summary = {"generic": generic, "rows": rows, "shape": SHAPE}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    return summary


def report(summary: dict, out: Path) -> None:
    generic = summary["generic"]
    names = {"teacher": "teacher (MiniLM, full FT)", "g2sd": "student: generic + specific (G2SD)",
             "specific": "student: specific only (dist. token)", "scratch": "student: scratch (CE)"}
    lines = [f"# G2SD on text: MiniLM → {SHAPE['layers']} × {SHAPE['width']} BERT student, SST-2 with few labels", "",
             f"Student {SHAPE['layers']} layers × {SHAPE['width']} wide, {SHAPE['heads']} heads, FFN "
             f"{SHAPE['intermediate']}. Test accuracy (%), mean ± std over student seeds (teacher: 1 run); "
             "each student keeps its best dev epoch.", ""]
    if generic:
        lines += [f"Generic stage (once, shared): {generic['sentences']} unlabelled sentences, "
                  f"{generic['config']['epochs']} epochs, {generic['seconds']:.0f} s; final loss "
                  f"{generic['history'][-1]['loss']:.4f} (first epoch {generic['history'][0]['loss']:.4f}).", ""]
    lines += ["| labels | model | seeds | test acc | dev acc | params | safetensors | stage time |",
              "|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        lines.append(f"| {r['n']} | {names[r['variant']]} | {r['seeds']} | {r['test_mean']:.1f} ± {r['test_std']:.1f} "
                     f"| {r['dev_mean']:.1f} | {r['parameters'] / 1e6:.2f}M | {r['bytes'] / 1e6:.1f} MB "
                     f"| {r['seconds_mean']:.0f} s |")
    lines += ["", "Stage time: wall-clock of the specific stage (students, per run, with per-epoch dev scoring) or "
              "of the teacher's fine-tune; the g2sd rows add the one generic stage above. Times are only comparable "
              "within one results file: runs share the machine with whatever else is running.", "",
              "![g2sd](g2sd.png)", ""]
    (out / "g2sd.md").write_text("\n".join(lines))
    plot(summary, out / "g2sd.png")


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["n"] for r in summary["rows"]})
    variants = ["teacher", *VARIANTS]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.2
    for j, variant in enumerate(variants):
        rows = [next((r for r in summary["rows"] if r["n"] == n and r["variant"] == variant), None) for n in sizes]
        xs = [i + (j - 1.5) * width for i, r in enumerate(rows) if r]
        ax.bar(xs, [r["test_mean"] for r in rows if r], width, yerr=[r["test_std"] for r in rows if r],
               label=variant, capsize=3)
    ax.set_xticks(range(len(sizes)), [f"{n} labels" for n in sizes])
    ax.set_ylabel("SST-2 test accuracy (%)")
    ax.set_ylim(45, 95)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title(f"G2SD on text (MiniLM → {SHAPE['layers']}×{SHAPE['width']} student)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "distill-g2sd")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "petkit-g2sd-cache")
    parser.add_argument("--generic-only", action="store_true", help="run (and cache) the generic stage, then stop")
    parser.add_argument("--skip-generic", action="store_true",
                        help="leave the generic stage to another process (g2sd runs wait for its cache)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="a minute-long run on a sliver of data")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        try:
            if not args.skip_generic:
                generic_student(args.cache, args.out, args.smoke)
            if not args.generic_only:
                for n in args.sizes:
                    # seed by seed (a cut-short run stays comparable), g2sd last (it may wait for the generic stage)
                    wanted = [(v, s) for s in args.seeds for v in VARIANTS[::-1]
                              if not (args.out / "runs" / f"{v}-n{n}-seed{s}.json").is_file()]
                    if not wanted and (args.out / "runs" / f"teacher-n{n}.json").is_file():
                        continue
                    teacher, prep = teacher_for(n, args.out, args.cache, args.smoke)
                    for variant, seed in wanted:
                        student_run(variant, n, seed, teacher, prep, args.cache, args.out, args.smoke)
        except (DatasetNotFound, ModelNotFound) as exc:
            print(f"skipped: {exc}")
            return
    report(summarise(args.out), args.out)
    print(f"report: {args.out / 'g2sd.md'}")


if __name__ == "__main__":
    main()
