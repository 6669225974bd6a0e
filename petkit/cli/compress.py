"""`petkit assemble` and `petkit distill`: commands that build a model from other models."""

from __future__ import annotations

import json

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
