"""`petkit serve`: one base model, many adapters, behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

import argparse
import os

from petkit.core.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="alias (smollm2, minilm) or a local Hugging Face folder")
    p.add_argument("--task", choices=("generate", "classify"), default="generate",
                   help="generate: a causal LM (completions, chat); classify: a sequence classifier (/v1/classify)")
    p.add_argument("--served-name", help="the name requests use for the base model (default: --model)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                   help="an adapter folder (petkit or PEFT format) served as NAME; repeatable; loaded at start")
    p.add_argument("--adapter-dir", help="every adapter folder inside it is servable by its folder name (loaded on "
                                         "first use); runtime loading reads only from here")
    p.add_argument("--allow-adapter-loading", action="store_true",
                   help="enable POST /v1/load_lora_adapter and /v1/unload_lora_adapter (needs --adapter-dir)")
    p.add_argument("--api-key", default=os.environ.get("PETKIT_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on every route but /health (default: $PETKIT_API_KEY)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=32, help="sequences decoded together")
    p.add_argument("--max-waiting", type=int, default=256, help="queued requests beyond the batch; more get 429")
    p.add_argument("--max-resident", type=int, default=64, help="adapters kept on the model (least recently used "
                                                                 "ones beyond are evicted and reloaded on demand)")
    p.add_argument("--max-adapter-mb", type=float, help="memory budget of resident adapters, in MiB")
    p.add_argument("--max-model-len", type=int, help="prompt + completion tokens (default: the model's, at most 4096)")
    p.add_argument("--max-tokens", type=int, default=1024, help="largest max_tokens a request may ask for")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get 413")
    p.add_argument("--max-inputs", type=int, default=64, help="prompts per completion request, texts per classify")
    p.add_argument("--prefill-tokens", type=int, default=4096,
                   help="prompt tokens admitted into one prefill forward (bounds the pause it adds to running decodes)")
    p.add_argument("--num-labels", type=int, help="classify: head size (default: read from the first adapter)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def serve(args) -> int:
    from petkit.serve.config import ServeConfig
    from petkit.serve.run import serve as run

    adapters = {}
    for pair in args.adapter:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--adapter takes NAME=PATH, got {pair!r}")
        if name in adapters:
            raise ConfigError(f"--adapter {name!r} is given twice")
        adapters[name] = path
    config = ServeConfig(
        model=args.model, task=args.task, served_name=args.served_name, adapters=adapters, adapter_dir=args.adapter_dir,
        allow_adapter_loading=args.allow_adapter_loading, api_key=args.api_key, host=args.host, port=args.port,
        max_batch=args.max_batch, max_waiting=args.max_waiting, max_resident=args.max_resident,
        max_adapter_mb=args.max_adapter_mb, max_model_len=args.max_model_len, max_tokens=args.max_tokens,
        max_body_bytes=args.max_body_bytes, max_inputs=args.max_inputs, prefill_tokens=args.prefill_tokens,
        num_labels=args.num_labels, threads=args.threads)
    run(config, log_level=args.log_level)
    return 0
