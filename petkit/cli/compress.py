"""`petkit assemble` and `petkit distill`: commands that build a model from other models."""

from __future__ import annotations

import json
from pathlib import Path

from petkit.cli.commands import console, parse_pairs, read_settings


def assemble(args) -> int:
    from petkit.assemble import AssembleConfig, run_assemble, run_e2e, run_incubate, run_meta
    settings = read_settings(args.config, "assemble") if args.config else {}
    settings.update(parse_pairs(args.set, "assemble"))
    cfg = AssembleConfig.from_dict({**settings, "output": args.output})
    phase = args.assemble_command
    if phase == "meta":
        record = run_meta(cfg)
    elif phase == "incubate":
        record = run_incubate(cfg, args.module)
    elif phase == "assemble":
        record = run_assemble(cfg)
    else:
        record = run_e2e(cfg, args.steps)
    console.print_json(json.dumps({k: v for k, v in record.items() if k != "curve"}))
    return 0


def distill_search(args) -> int:
    from petkit.distill.search import random_shapes, search_shape, search_space

    space = search_space(vocab_size=args.vocab) if args.vocab else search_space()
    found = search_shape(args.budget_mb, space=space, population_size=args.population, generations=args.generations,
                         mutation=args.mutation, restarts=args.restarts, seed=args.seed, seq_len=args.seq_len,
                         tolerance=args.tolerance)
    record = {"budget_mb": args.budget_mb, "shape": found.shape.genes(), "size_mb": found.size_mb,
              "gflops": found.gflops, "fitness": found.fitness, "params": found.shape.params()}
    console.print(f"found: {found.shape.genes()}  {found.size_mb:.3f} MB ({found.size_error:.1%} off)  "
                  f"{found.gflops:.3f} GFLOPs at {args.seq_len} tokens")
    if args.random:
        randoms = random_shapes(args.random, args.budget_mb, args.tolerance, space=space, seed=args.seed,
                                seq_len=args.seq_len)
        best = max(randoms, key=lambda s: s.gflops())
        record["random"] = {"n": args.random, "best_shape": best.genes(), "best_size_mb": best.size_mb(),
                            "best_gflops": best.gflops()}
        console.print(f"best of {args.random} random shapes within {args.tolerance:.0%}: {best.genes()}  "
                      f"{best.size_mb():.3f} MB  {best.gflops():.3f} GFLOPs")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(record, indent=1) + "\n")
        console.print(f"wrote {args.output}")
    return 0


def distill_g2sd(args) -> int:
    from safetensors.torch import save_file

    from petkit.core.errors import ConfigError
    from petkit.core.load import load
    from petkit.core.model import adapt
    from petkit.data import load_dataset
    from petkit.distill.bert_student import bert_student, copy_projected_embeddings, parameter_count
    from petkit.distill.g2sd import GenericConfig, SpecificConfig, TextDataset, generic_distill, specific_distill
    from petkit.models import load_model
    from petkit.pipeline import RunSpec, prepare
    from petkit.train import evaluate, train

    generic_cfg = GenericConfig.from_dict({"seed": args.seed, "mask_ratio": args.mask_ratio,
                                           "teacher_layer": args.teacher_layer, "supervise_all": not args.masked_only,
                                           **parse_pairs(args.generic_arg, "generic")})
    specific_cfg = SpecificConfig.from_dict({"seed": args.seed, **parse_pairs(args.specific_arg, "specific")})
    spec = RunSpec(model=args.teacher, data=args.data, method={"name": "full"}, max_length=args.max_length,
                   max_train=args.max_train, max_eval=args.max_eval, seed=args.seed,
                   train=parse_pairs(args.train_arg, "train"))
    prep = prepare(spec)
    if prep.task != "classification":
        raise ConfigError(f"g2sd's specific stage trains a classifier; {args.data} holds {prep.kind} data")
    student = bert_student(prep.model.config, layers=args.layers, width=args.width, heads=args.heads,
                           intermediate=args.intermediate, seed=args.seed)
    report = {"student_parameters": parameter_count(student)}
    if not args.skip_generic:
        base = load_model(args.teacher, task="base")
        if args.copy_embeddings:
            copy_projected_embeddings(student, base)
        texts = [ex["text"] for ex in load_dataset(args.unlabelled or args.data, seed=args.seed).train]
        texts = texts[: args.max_unlabelled] if args.max_unlabelled else texts
        console.print(f"generic stage: {len(texts)} texts, {generic_cfg.epochs} epoch(s)")
        result = generic_distill(base, student, TextDataset(prep.tokenizer, texts, args.max_length), generic_cfg,
                                 log=console.print)
        report["generic"] = {"history": result.history, "seconds": round(result.seconds, 1)}
        del base
    if args.teacher_adapter:
        teacher = load(prep.model, args.teacher_adapter)
    else:
        console.print(f"teacher: fine-tuning {args.teacher} on {len(prep.train)} examples")
        teacher = adapt(prep.model, spec.method_config())
        train(teacher, prep.train, spec.train_config(), task="classification", progress=False)
    report["teacher_dev"] = evaluate(teacher, prep.dev, "classification")["accuracy"]
    console.print(f"specific stage: {len(prep.train)} labelled examples, {specific_cfg.epochs} epoch(s)")
    result = specific_distill(student, prep.train, len(prep.labels), specific_cfg, teacher=teacher,
                              select=lambda model: evaluate(model, prep.dev, "classification")["accuracy"],
                              log=console.print)
    report.update(specific={"history": result.history, "best_epoch": result.best_epoch,
                            "seconds": round(result.seconds, 1)},
                  test=evaluate(result.model, prep.test, "classification"))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, str(out / "model.safetensors"))
    result.model.config.to_json_file(str(out / "config.json"))
    (out / "labels.json").write_text(json.dumps(prep.labels))
    (out / "g2sd.json").write_text(json.dumps(report, indent=1))
    console.print(f"student: test accuracy {report['test']['accuracy']:.4f} (teacher dev {report['teacher_dev']:.4f}); "
                  f"{out / 'model.safetensors'}")
    return 0
