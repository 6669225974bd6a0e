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
