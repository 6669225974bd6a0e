"""`petkit probe`: what a pre-trained model represents: `moral` scores phrases on an encoder's moral direction
(petkit.analysis.moral); `layers`, `cka` and `revive` read it layer by layer (petkit.cli.probe_layers)."""

from __future__ import annotations

from pathlib import Path

from petkit.cli import probe_layers
from petkit.core.errors import ConfigError


def add_parsers(sub) -> None:
    p = sub.add_parser("probe", help="probe what a model (+ adapter) represents: the moral direction, per-layer "
                                     "linear probes, CKA against the base, revival of the base's abilities")
    probe_sub = p.add_subparsers(dest="probe_command", required=True)
    q = probe_sub.add_parser("moral", help="score phrases on the moral direction (PC1 of 64 verbs in 10 question "
                                           "templates; higher = more acceptable to do)")
    q.add_argument("phrases", nargs="*", help='phrases to score, e.g. "kill time" "kill people"')
    q.add_argument("--model", default="minilm", help="alias or local folder of a sentence encoder (default minilm)")
    q.add_argument("--direction", help="folder of the fitted direction (default runs/moral-<model>); fitted and "
                                       "saved there on first use")
    q.add_argument("--fit", action="store_true", help="rebuild the direction from the verbs even if the folder has one")
    q.add_argument("--layer", type=int, help="hidden state to embed from with --fit (0: embeddings; default: the last)")
    q.add_argument("--sign-rule", choices=["cluster", "labels"], default="cluster",
                   help="with --fit: cluster (the paper's code: the cluster without 'kill' is positive) or labels "
                        "(the known positive verbs score positive)")
    q.add_argument("--raw", action="store_true", help="embed the bare phrases, without the question templates")
    q.set_defaults(func=moral)
    probe_layers.add_parsers(probe_sub)


def moral(args) -> int:
    from petkit.analysis.moral import MoralDirection
    from petkit.analysis.stored import META_NAME
    from petkit.models import load_model, load_tokenizer

    if not args.phrases and not args.fit:
        raise ConfigError('no phrases to score: give some, e.g. petkit probe moral "kill time" "kill people" '
                          "(or --fit alone to rebuild the direction)")
    blank = [p for p in args.phrases if not p.strip()]
    if blank:
        raise ConfigError("a phrase to score is empty: every phrase needs some words")
    model, tokenizer = load_model(args.model, task="base"), load_tokenizer(args.model)
    folder = Path(args.direction or f"runs/moral-{Path(str(args.model)).name}")
    if args.fit or not (folder / META_NAME).is_file():
        direction = MoralDirection.fit(model, tokenizer, layer=args.layer, sign_rule=args.sign_rule)
        direction.save(folder, model)
        print(f"fitted the moral direction on {len(direction.verbs)} verbs (PC1 explains "
              f"{direction.explained_variance[0]:.1%} of their variance); saved to {folder}")
    else:
        direction = MoralDirection.load(folder, model)
        if args.layer is not None and args.layer != direction.layer:
            raise ConfigError(f"--layer {args.layer} differs from the saved direction's layer {direction.layer}: "
                              f"add --fit to rebuild it at that layer")
    if args.phrases:
        scores = direction.score(model, tokenizer, args.phrases, qa_template=not args.raw)
        width = max(len(p) for p in args.phrases)
        for phrase, score in zip(args.phrases, scores.tolist()):
            print(f"{phrase:<{width}}  {score:+.3f}")
    return 0
