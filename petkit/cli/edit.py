"""`petkit edit`: meta-train a MEND editor for a causal LM, and apply fact edits with it."""

from __future__ import annotations

import json
from pathlib import Path

from petkit.cli.commands import console


def add_parsers(sub) -> None:
    p = sub.add_parser("edit", help="MEND model editing: meta-train an editor, then apply fact edits in one step")
    edit_sub = p.add_subparsers(dest="edit_command", required=True)

    q = edit_sub.add_parser("train", help="meta-train a MEND editor on edits (a JSONL file or generated facts) and "
                                          "save it (editor.safetensors + editor_config.json)")
    q.add_argument("--model", required=True, help="alias (smollm2) or a local causal-LM folder")
    q.add_argument("--edits", help="JSONL of edits: prompt, target, rephrasings, locality (default: generated facts)")
    q.add_argument("--generate", type=int, default=300, help="without --edits: how many synthetic edits (default 300)")
    q.add_argument("--layers", help="comma-separated linear layers to edit (default: MLP layers of the last blocks)")
    q.add_argument("--last-blocks", type=int, default=3, help="without --layers: how many last blocks (default 3)")
    q.add_argument("--rank", type=int, default=1920, help="editor rank, capped at the layer width (default 1920)")
    q.add_argument("--edit-lr", type=float, default=1e-4, help="initial edit rate α per layer (default 1e-4)")
    q.add_argument("--no-normalize", action="store_true", help="feed u and δ to the editor unnormalised")
    q.add_argument("--sign", choices=["paper", "code"], default="paper",
                   help="paper: W − α∇̃W; code: the released code's W + α∇̃W")
    q.add_argument("--steps", type=int, default=300)
    q.add_argument("--lr", type=float, default=1e-4, help="editor Adam rate (default 1e-4)")
    q.add_argument("--lr-lr", type=float, default=1e-4, help="Adam rate of the edit rates α (default 1e-4)")
    q.add_argument("--c-edit", type=float, default=0.1, help="weight of the rephrasing NLL (default 0.1)")
    q.add_argument("--c-loc", type=float, default=1.0, help="weight of the locality KL (default 1.0)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--output", required=True, help="folder for the editor and train_log.json")
    q.set_defaults(func=train)

    q = edit_sub.add_parser("apply", help="apply edits with a saved editor: target probabilities before and after, "
                                          "optionally save the edited model")
    q.add_argument("--model", required=True, help="the model the editor was trained for")
    q.add_argument("--editor", required=True, help="folder written by `petkit edit train`")
    q.add_argument("--prompt", help="the edit prompt, e.g. 'The capital of Veloria is'")
    q.add_argument("--target", help="its new continuation, e.g. ' Paris' (mind the leading space)")
    q.add_argument("--rephrase", action="append", default=[], help="a rephrasing to check (repeatable)")
    q.add_argument("--edits", help="JSONL of edits instead of --prompt/--target (applied together, as one batch)")
    q.add_argument("--output", help="save the edited model (safetensors) and tokenizer to this folder")
    q.set_defaults(func=apply)


def _model(name):
    from petkit.models import load_model, load_tokenizer
    return load_model(name, task="causal_lm"), load_tokenizer(name)


def train(args) -> int:
    from petkit.edit import MendTrainConfig, build_editor, read_edits, save_editor, synthetic_edits, train_editor

    model, tokenizer = _model(args.model)
    edits = read_edits(args.edits) if args.edits else synthetic_edits(args.generate, seed=args.seed)
    layers = [s.strip() for s in args.layers.split(",") if s.strip()] if args.layers else None
    editor = build_editor(model, layers, last_blocks=args.last_blocks, rank=args.rank, edit_lr=args.edit_lr,
                          normalize=not args.no_normalize, sign=args.sign)
    config = MendTrainConfig(steps=args.steps, lr=args.lr, lr_lr=args.lr_lr, c_edit=args.c_edit, c_loc=args.c_loc,
                             seed=args.seed)
    console.print(f"meta-training MEND on {len(edits)} edits, editing {', '.join(editor.config.targets)}")
    every = max(1, config.steps // 10)
    history = train_editor(model, tokenizer, editor, edits, config,
                           log=lambda s, r: s % every == 0 and console.print(
                               f"step {s}: L_edit {r['edit']:.4f}  L_loc {r['loc']:.4f}"))
    out = save_editor(args.output, editor, {"model": str(args.model), "train": config.to_dict()})
    (Path(out) / "train_log.json").write_text(json.dumps(history) + "\n", encoding="utf-8")
    console.print(f"editor saved to {out}")
    return 0


def _edits(args):
    from petkit.core.errors import ConfigError
    from petkit.edit import Edit, read_edits

    if args.edits and (args.prompt or args.target):
        raise ConfigError("give either --edits or --prompt with --target, not both")
    if args.edits:
        return read_edits(args.edits)
    if not (args.prompt and args.target):
        raise ConfigError("an edit needs --prompt and --target (or --edits FILE.jsonl)")
    return [Edit(args.prompt, args.target, tuple(args.rephrase))]


def apply(args) -> int:
    from petkit.edit import edited, load_editor, mend_deltas, score_edit

    edits = _edits(args)
    model, tokenizer = _model(args.model)
    editor, _ = load_editor(args.editor, model)  # in eval mode: running statistics are only read
    deltas = {k: v.detach() for k, v in mend_deltas(model, tokenizer, editor, edits).items()}  # one batched edit
    for edit in edits:
        record = score_edit(model, tokenizer, edit, deltas)
        line = (f"{edit.prompt!r} → {edit.target!r}: p {record['prob_before']:.4f} → {record['prob_after']:.4f}, "
                f"argmax {'yes' if record['prompt_after'] else 'no'}")
        if edit.rephrasings:
            line += f"; rephrasings: argmax on {record['rephrase_after']:.0%}"
        if edit.locality:
            line += f"; unrelated top-1 kept {record['loc_kept']:.0%}"
        console.print(line, markup=False, highlight=False)
    if args.output:
        with edited(model, deltas):
            model.save_pretrained(args.output, safe_serialization=True)
        tokenizer.save_pretrained(args.output)
        console.print(f"edited model saved to {args.output}")
    return 0
