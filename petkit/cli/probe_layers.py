"""`petkit probe layers|cka|revive`: per-layer probes and CKA of a model with an optional adapter
(is the adaptation a "wrapper" on top of what the base already encodes? see docs/wrapper-analysis.md)."""

from __future__ import annotations

import json

from rich.table import Table

from petkit.cli.commands import console
from petkit.core.errors import ConfigError


def add_parsers(probe_sub) -> None:
    """The per-layer commands, added to the `petkit probe` group."""
    q = probe_sub.add_parser("layers", help="a logistic-regression probe per layer (fitted on train, scored on test), "
                                            "of the base and, with --adapter, of the adapted model")
    _common(q, adapter_required=False)
    q.set_defaults(func=probe)
    q = probe_sub.add_parser("cka", help="linear CKA per layer between the base model and the base + adapter")
    _common(q, adapter_required=True)
    q.set_defaults(func=compare)
    q = probe_sub.add_parser("revive", help="probe the base, the adapted model, and the adapted model with its largest "
                                            "weight changes (top |ΔW|) put back to the base")
    _common(q, adapter_required=True)
    q.add_argument("--fraction", type=float, default=0.01, help="share of the ΔW entries put back (default 0.01)")
    q.set_defaults(func=revive)


def _common(q, adapter_required: bool) -> None:
    q.add_argument("--model", required=True, help="alias (minilm, smollm2) or a local Hugging Face folder")
    q.add_argument("--data", required=True, help="a labelled dataset name or file (what the probes read)")
    q.add_argument("--adapter", required=adapter_required, help="adapter folder (petkit or PEFT format)")
    q.add_argument("--layers", help="comma-separated layer numbers, 0 = embeddings (default: all)")
    q.add_argument("--max-train", type=int, default=1000, help="examples the probes are fitted on (default 1000)")
    q.add_argument("--max-eval", type=int, default=500, help="examples they are scored on (default 500)")
    q.add_argument("--max-length", type=int, default=64)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--force", action="store_true", help="load an adapter saved for a different base")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _layers(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--layers must be comma-separated integers, e.g. 0,3,6; got {text!r}") from None


def _prepare(args):
    """(tokenised train split, tokenised test split, the base model, the adapted model or None)."""
    from petkit.core.files import num_labels_of
    from petkit.core.load import load
    from petkit.data import ClassificationDataset, load_dataset
    from petkit.models import load_model, load_tokenizer

    data = load_dataset(args.data, args.seed, max_train=args.max_train, max_eval=args.max_eval)
    if data.task != "classification":
        raise ConfigError(f"probes need a labelled (classification) dataset; {args.data!r} is {data.task}")
    tok = load_tokenizer(args.model)
    train, test = (ClassificationDataset(tok, split, args.max_length) for split in (data.train, data.test))
    if not args.adapter:
        return train, test, load_model(args.model, task="base"), None
    num_labels = num_labels_of(args.adapter)
    build = (lambda: load_model(args.model, num_labels=num_labels)) if num_labels else \
        (lambda: load_model(args.model, task="causal_lm"))
    return train, test, build(), load(build(), args.adapter, force=args.force)


def _labels(dataset) -> list[int]:
    return [f["labels"] for f in dataset.features]


def _probe(model, train, test, layers) -> dict[int, float]:
    from petkit.analysis.wrapper import layer_features, probe_layers
    return probe_layers(layer_features(model, train, layers), _labels(train),
                        layer_features(model, test, layers), _labels(test))


def _show(title: str, columns: dict[str, dict[int, float]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(columns, indent=1))
        return
    table = Table(title=title)
    table.add_column("layer")
    for name in columns:
        table.add_column(name, justify="right")
    for i in next(iter(columns.values())):
        table.add_row(str(i), *(f"{col[i]:.3f}" for col in columns.values()))
    console.print(table)


def probe(args) -> int:
    train, test, base, adapted = _prepare(args)
    layers = _layers(args.layers)
    columns = {"base": _probe(base, train, test, layers)}
    if adapted is not None:
        columns["adapted"] = _probe(adapted, train, test, layers)
    _show(f"probe accuracy on {args.data} (test), per layer", columns, args.json)
    return 0


def compare(args) -> int:
    from petkit.analysis.similarity import cka_per_layer
    from petkit.analysis.wrapper import layer_features
    _, test, base, adapted = _prepare(args)
    layers = _layers(args.layers)
    cka = cka_per_layer(layer_features(base, test, layers), layer_features(adapted, test, layers))
    _show(f"linear CKA, base vs adapted, on {args.data} (test)", {"CKA": cka}, args.json)
    return 0


def revive(args) -> int:
    from petkit.analysis.wrapper import prune_delta
    train, test, base, adapted = _prepare(args)
    layers = _layers(args.layers)
    columns = {"base": _probe(base, train, test, layers), "adapted": _probe(adapted, train, test, layers)}
    plain = adapted.merge_and_unload() if adapted.method_of("default").mergeable else adapted.base
    # The bare encoder/decoder only (HF's base_model): a task head is not part of what the probes read.
    encoder = plain.base_model
    encoder.load_state_dict(prune_delta(base.base_model.state_dict(), encoder.state_dict(), args.fraction))
    columns[f"top {args.fraction:.1%} ΔW pruned"] = _probe(plain, train, test, layers)
    _show(f"probe accuracy on {args.data} (test), per layer", columns, args.json)
    return 0
