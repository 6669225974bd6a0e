"""`petkit`: train, eval, generate, chat, serve, inspect, merge-unload, methods, demo, bench, probe.

Errors in the user's input print as one line (`error: ...`) with exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

# Nothing petkit runs may reach a model hub; set before transformers is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from petkit.cli import bench, commands, compress, generate, probe, serve, timeseries  # noqa: E402
from petkit.cli import edit as edit_cli  # noqa: E402
from petkit.merge.run import merge_help  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petkit", description="Parameter-efficient tuning of pre-trained transformers.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune a model with a method (flags or --config run.yaml)")
    p.add_argument("--config", help="YAML file with the run settings (flags override it)")
    p.add_argument("--model", help="alias (minilm, smollm2) or a local Hugging Face folder")
    p.add_argument("--data", help="dataset name (bbc, sst2, trec, rte, ag_news, sms_spam, tiny_shakespeare, vader) "
                                  "or a file")
    p.add_argument("--task", choices=["classification", "causal_lm", "sft", "regression"],
                   help="what the data must be: checked against the data's own task (default: the data's)")
    p.add_argument("--train-file", help="your own train split (CSV/TSV/JSONL/Parquet; instead of --data)")
    p.add_argument("--dev-file", help="your own dev split (default: 10%% of the train file)")
    p.add_argument("--test-file", help="your own test split (default: 10%% of the train file)")
    p.add_argument("--packing", action="store_true", help="sft: pack short examples into padding-free rows")
    p.add_argument("--truncation", choices=["truncate", "keep_start", "drop", "error"],
                   help="sft: what happens to an example longer than --max-length (default truncate)")
    p.add_argument("--answers", type=int, help="sft: test examples whose generated answers are scored (default 100)")
    p.add_argument("--method", help="method name (see `petkit methods`)")
    p.add_argument("-m", "--method-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="method setting, e.g. -m r=8 -m targets=query,value (repeatable)")
    p.add_argument("-t", "--train-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="trainer setting, e.g. -t lr=1e-3 -t epochs=2 (repeatable)")
    p.add_argument("-r", "--regression-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="regression head setting, e.g. -r loss=huber -r pooling=mean -r head=mlp (repeatable)")
    p.add_argument("--max-length", type=int)
    p.add_argument("--max-train", type=int)
    p.add_argument("--max-eval", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--output", help="folder for the adapter, checkpoints and metrics")
    p.add_argument("--format", choices=["petkit", "peft"], help="adapter file format (default petkit)")
    p.add_argument("--quantize", type=int, metavar="BITS",
                   help="store the frozen base's linear layers at BITS bits (4: NF4, QLoRA-style; 1, 2, 3, 8: int) "
                        "and train the adapter on top; more settings under quantize: in --config")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--nproc", type=int, default=1,
                   help="train in N processes on this machine (launches torchrun; DDP over the adapter)")
    p.set_defaults(func=commands.train)

    p = sub.add_parser("eval", help="evaluate a base model, or a base model with a saved adapter")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--adapter", help="adapter folder (petkit or PEFT format)")
    p.add_argument("--split", default="test", choices=["dev", "test", "train"])
    p.add_argument("--max-eval", type=int)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--force", action="store_true", help="load an adapter saved for a different base")
    p.set_defaults(func=commands.evaluate)

    p = sub.add_parser("generate", help="continue a prompt with a causal LM and an optional adapter (tokens stream out)")
    generate.add_arguments(p, chat=False)
    p.set_defaults(func=generate.generate)

    p = sub.add_parser("chat", help="talk to a causal LM with an optional adapter, through its chat template")
    generate.add_arguments(p, chat=True)
    p.set_defaults(func=generate.chat)

    p = sub.add_parser("serve", help="an OpenAI-compatible server: one base model, many adapters, batched together")
    serve.add_arguments(p)
    p.set_defaults(func=serve.serve)

    p = sub.add_parser("inspect", help="what an adapter folder holds")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=commands.inspect)

    p = sub.add_parser("merge-unload", help="merge an adapter into its base and save a plain Hugging Face model")
    p.add_argument("--model", required=True)
    p.add_argument("--adapter", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--task", default="classification", choices=["classification", "causal_lm", "base"])
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=commands.merge_unload)

    p = sub.add_parser("merge", help="merge saved adapters in ΔW space (linear, TIES, DARE, ...) into one adapter",
                       description=merge_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="merge spec YAML (keys below)")
    p.set_defaults(func=commands.merge)

    p = sub.add_parser("soup", help="a greedy (or uniform) soup of the adapters in a folder of runs, in ΔW space")
    p.add_argument("runs", help="folder whose sub-folders hold adapters (e.g. petkit train --output runs/<name>)")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="the task the runs were trained on: dev is held-out, test reported")
    p.add_argument("--uniform", action="store_true", help="average every run instead of the greedy soup")
    p.add_argument("--strict", action="store_true", help="greedy: add a run only if dev gets strictly better (official code)")
    p.add_argument("--output", default="runs/soup")
    p.add_argument("--max-eval", type=int)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=commands.soup)

    p = sub.add_parser("fed", help="federated tuning on Flower's simulation engine (adapter-only FedAvg/FedProx, DP)")
    p.add_argument("config", nargs="?", help="YAML with FedJob settings (petkit/fed/job.py); flags override it")
    p.add_argument("-s", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting, e.g. -s clients=10 -s rounds=20 -s alpha=0.5 (repeatable)")
    p.add_argument("--output", default="runs/fed", help="folder for the global adapter, report.json, rounds.md, accuracy.png")
    p.add_argument("--write-app", metavar="DIR", help="instead of simulating: write a Flower app for a real deployment "
                   "(SuperLink + SuperNodes) to DIR and print the commands that run it")
    p.set_defaults(func=commands.fed)

    p = sub.add_parser("continual", help="learn a stream of tasks one after another (LAE, OVOR, L2M, MoRA, baselines): "
                                         "accuracy matrix, forgetting, plots")
    p.add_argument("config", nargs="?", help="YAML with the run settings (petkit/continual/run.py ContinualConfig)")
    p.add_argument("--stream", help="a named stream (trec-classes, news-classes, text-tasks, instruct-tasks) or a YAML "
                                    "file with scenario and tasks")
    p.add_argument("--method", help="seq-lora, seq-full, per-task, joint, lae, ovor, l2m, mora")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, e.g. -o pet=prefix -o freeze_epochs=3 (repeatable)")
    p.add_argument("-s", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a run setting, e.g. -s epochs=3 -s lr=1e-3 -s max_train=600 (repeatable)")
    p.add_argument("--model", help="alias (minilm, smollm2) or a local Hugging Face folder")
    p.add_argument("--seed", type=int)
    p.add_argument("--output", default="runs/continual", help="folder for checkpoints, result.json, matrix.md and plots")
    p.add_argument("--resume", action="store_true", help="continue the run in --output after its last finished task")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=commands.continual)

    p = sub.add_parser("prune", help="one-shot pruning of a pre-trained model: a sparsity sweep (essential sparsity) "
                                     "or one pruned model saved sparse")
    prune_sub = p.add_subparsers(dest="prune_command", required=True)
    q = prune_sub.add_parser("sweep", help="prune at each sparsity, fine-tune with the mask fixed, evaluate: the curve, "
                                           "its tolerance point and sharp drop (read on dev)")
    q.add_argument("config", nargs="?", help="YAML with run (a petkit train run), kinds, sparsities, nm, tolerance")
    q.add_argument("--model", help="alias or local folder (the run's model)")
    q.add_argument("--data", help="dataset name or file (the run's data)")
    q.add_argument("--method", help="how to fine-tune after pruning: full (default) or an adapter method, e.g. lora")
    q.add_argument("--kinds", help="comma-separated: global, layer, random, erk (default global,layer,random)")
    q.add_argument("--sparsities", help="comma-separated, with 0 (default 0,0.1,...,0.9)")
    q.add_argument("--nm", action="append", default=[], metavar="N:M", help="an N:M pattern too, e.g. 2:4 (repeatable)")
    q.add_argument("-t", "--train-arg", action="append", default=[], metavar="KEY=VALUE", help="trainer setting (repeatable)")
    q.add_argument("--max-train", type=int)
    q.add_argument("--max-eval", type=int)
    q.add_argument("--output", default="runs/prune-sweep", help="folder for sweep.json, sweep.md and sweep.png")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=commands.prune_sweep)
    q = prune_sub.add_parser("lora", help="LoRAPrune: LoRA training that prunes heads and FFN channels on a cubic "
                                          "schedule, then a smaller model (LoRA merged, units removed)")
    q.add_argument("--model", required=True)
    q.add_argument("--data", required=True, help="language-modelling data (e.g. tiny_shakespeare or a text file)")
    q.add_argument("--ratio", type=float, default=0.5, help="share of heads and FFN channels removed (default 0.5)")
    q.add_argument("--criterion", default="lora", help="lora (the paper's), magnitude or random")
    q.add_argument("-m", "--method-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a LoRA setting, e.g. -m r=8 (the paper's LoRA by default)")
    q.add_argument("-t", "--train-arg", action="append", default=[], metavar="KEY=VALUE", help="trainer setting (repeatable)")
    q.add_argument("--max-length", type=int, default=128)
    q.add_argument("--max-train", type=int)
    q.add_argument("--max-eval", type=int)
    q.add_argument("--output", required=True, help="folder for the smaller model and result.json")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=commands.prune_lora)
    q = prune_sub.add_parser("apply", help="prune a model once and save it sparse (bitmask + kept values)")
    q.add_argument("--model", required=True)
    q.add_argument("--sparsity", type=float, help="share of the attention and FFN weights removed (default 0.5)")
    q.add_argument("--kind", default="global", help="global, layer, random, erk or nm")
    q.add_argument("--nm", metavar="N:M", help="with --kind nm: remove N of every M, e.g. 2:4")
    q.add_argument("--output", required=True, help="folder for the sparse model")
    q.set_defaults(func=commands.prune_apply)

    p = sub.add_parser("assemble", help="Deep Model Assembling: train a deep classifier from scratch in modules (meta "
                                        "model, one incubation job per module, assembling + fine-tuning)")
    assemble_sub = p.add_subparsers(dest="assemble_command", required=True)
    phases = (("meta", "PT: train the meta model (one block per module) end to end"),
              ("incubate", "MT: train one target module inside the meta model (one job per module, in any order)"),
              ("assemble", "FT: put the incubated modules together and fine-tune end to end (no warmup, clip 1)"),
              ("e2e", "the baseline: the target trained end to end, by default at the assembling run's budget"))
    for name, text in phases:
        q = assemble_sub.add_parser(name, help=text)
        q.add_argument("config", nargs="?", help="YAML with the run settings (petkit/assemble/config.py AssembleConfig)")
        q.add_argument("-s", "--set", action="append", default=[], metavar="KEY=VALUE",
                       help="a setting, e.g. -s depth=8 -s num_modules=4 -s width=128 -s data=ag_news (repeatable); "
                            "every phase of a run needs the same settings")
        q.add_argument("--output", default="runs/assemble", help="the run's folder, shared by all its phases")
        if name == "incubate":
            q.add_argument("--module", type=int, required=True, metavar="K", help="the module to incubate, 0..K-1")
        if name == "e2e":
            q.add_argument("--steps", type=int, help="optimizer steps (default: the assembling run's whole budget)")
        q.set_defaults(func=compress.assemble)

    p = sub.add_parser("distill", help="train small students from larger models (G2SD; Compressor's shape search)")
    distill_sub = p.add_subparsers(dest="distill_command", required=True)
    q = distill_sub.add_parser("g2sd", help="G2SD: generic feature distillation on unlabelled text (shared masks), "
                                           "then task distillation with a DeiT distillation token")
    q.add_argument("--teacher", default="minilm", help="alias or local folder of the pre-trained BERT-style teacher")
    q.add_argument("--data", default="sst2", help="the labelled task (dataset name or file)")
    q.add_argument("--unlabelled", help="texts for the generic stage: a dataset name or file whose train texts are used "
                                        "without labels (default: --data)")
    q.add_argument("--max-unlabelled", type=int, help="cap on the generic stage's texts")
    q.add_argument("--teacher-adapter", help="a saved adapter of the teacher fine-tuned on --data; without it the "
                                             "teacher is fully fine-tuned here (-t settings)")
    q.add_argument("--layers", type=int, default=3)
    q.add_argument("--width", type=int, default=192)
    q.add_argument("--heads", type=int, default=4)
    q.add_argument("--intermediate", type=int, help="FFN width (default 4 × width)")
    q.add_argument("--copy-embeddings", action="store_true",
                   help="start the student's embeddings from the teacher's, PCA-projected (off: the paper's scratch init)")
    q.add_argument("--mask-ratio", type=float, default=0.15)
    q.add_argument("--teacher-layer", type=int, help="teacher block whose states are the target (default: the last)")
    q.add_argument("--masked-only", action="store_true", help="score only masked tokens (default: all, as the released code)")
    q.add_argument("--skip-generic", action="store_true", help="specific stage only, from a random init")
    q.add_argument("-g", "--generic-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="generic-stage setting: lr, epochs, batch_size, warmup, weight_decay, seed (repeatable)")
    q.add_argument("-s", "--specific-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="specific-stage setting: lr, epochs, batch_size, distill_weight, ... (repeatable)")
    q.add_argument("-t", "--train-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="teacher fine-tuning setting (repeatable)")
    q.add_argument("--max-train", type=int)
    q.add_argument("--max-eval", type=int)
    q.add_argument("--max-length", type=int, default=64)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--output", default="runs/g2sd", help="folder for the student (safetensors + config) and g2sd.json")
    q.set_defaults(func=compress.distill_g2sd)
    q = distill_sub.add_parser("search", help="Compressor's genetic search for the student shape with the most "
                                              "FLOPs within a size budget, against the best of N random shapes")
    q.add_argument("--budget-mb", type=float, required=True, help="fp32 size budget in MB (e.g. 3)")
    q.add_argument("--tolerance", type=float, default=0.05, help="how far off the budget a shape may be (fraction)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--mutation", choices=["suffix", "single"], default="suffix",
                   help="suffix: the released code's (resample every gene from a random locus on); single: one gene")
    q.add_argument("--generations", type=int, default=100)
    q.add_argument("--population", type=int, default=50)
    q.add_argument("--restarts", type=int, default=10, help="independent GA runs; the fittest result is kept")
    q.add_argument("--vocab", type=int, nargs="+", help="narrow the vocabulary choices (e.g. what your tokenizer "
                                                        "can learn); other genes keep the code's space")
    q.add_argument("--seq-len", type=int, default=514, help="sequence length the cost model prices")
    q.add_argument("--random", type=int, default=1000, help="random shapes within the tolerance to compare with "
                                                            "(0: skip)")
    q.add_argument("--output", help="write the result as JSON here")
    q.set_defaults(func=compress.distill_search)

    edit_cli.add_parsers(sub)
    timeseries.add_parsers(sub)

    p = sub.add_parser("methods", help="every registered method: name, kind, mergeable, spec")
    p.set_defaults(func=commands.methods)

    p = sub.add_parser("demo", help="LoRA on MiniLM over BBC News: accuracy before/after, file size, reload check")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-train", type=int)
    p.add_argument("--output", default="runs/demo")
    p.set_defaults(func=commands.demo)

    p = sub.add_parser("bench", help="methods x tasks x seeds: leaderboard, plots, optional side by side with PEFT")
    bench.add_arguments(p)
    p.set_defaults(func=bench.run)

    probe.add_parsers(sub)
    return parser


def _quiet_transformers() -> None:
    """The CLI reports what matters itself; transformers' load reports and bars are noise here."""
    from transformers.utils import logging
    logging.set_verbosity_error()
    logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # to relaunch the same command under torchrun
    _quiet_transformers()
    try:
        return args.func(args) or 0
    except commands.USER_ERRORS as exc:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank fails alike: say it once
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
