#!/usr/bin/env python
"""The naive way to serve many adapters, as the baseline of `serve_load.py`: one Hugging Face PEFT
`PeftModel` holding every adapter, serving one request at a time with `set_adapter(name)` (or the
adapters disabled for the base) and then `generate` / a forward.

The request and response shapes are the subset of `petkit serve`'s that the load test uses:

    POST /v1/completions  {"model", "prompt", "max_tokens", "temperature": 0, "ignore_eos"}
        -> {"choices": [{"text", "finish_reason"}], "usage": {...}}     (greedy; ignore_eos -> min_new_tokens)
    POST /v1/classify     {"model", "input": str | [str]}  -> {"data": [{"label", "probs"}], "usage": {...}}
    GET  /health

    python benchmarks/naive_peft_server.py --model smollm2 --task generate --adapter-dir DIR --port 8001

Every sub-folder of --adapter-dir holding an adapter_config.json is loaded at start under its folder
name (the classification adapters' heads come back through PEFT's modules_to_save). A lock lets one
request at a time touch the model: that is what "swapping one PEFT adapter at a time" means for a mix
of adapters. The model runs in a worker thread so the event loop keeps accepting connections.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing


def adapter_folders(adapter_dir: Path) -> list[Path]:
    return sorted(p for p in adapter_dir.iterdir() if (p / "adapter_config.json").is_file())


def load(model_name: str, task: str, adapter_dir: Path, num_labels: int | None):
    """The PeftModel with every adapter of adapter_dir loaded (the first one active), and the tokenizer."""
    from peft import PeftModel

    from petkit.core.files import num_labels_of
    from petkit.models import load_model, load_tokenizer

    folders = adapter_folders(adapter_dir)
    if not folders:
        raise SystemExit(f"no adapter folders in {adapter_dir}")
    tokenizer = load_tokenizer(model_name)
    if task == "classify":
        base = load_model(model_name, task="classification", num_labels=num_labels or num_labels_of(folders[0]))
    else:
        base = load_model(model_name, task="causal_lm")
    model = PeftModel.from_pretrained(base, str(folders[0]), adapter_name=folders[0].name, is_trainable=False)
    for folder in folders[1:]:
        model.load_adapter(str(folder), adapter_name=folder.name, is_trainable=False)
    return model.eval(), tokenizer, [f.name for f in folders]


def create_app(model, tokenizer, names: list[str], task: str, base_name: str):
    import torch
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI(title="naive PEFT server")
    lock = threading.Lock()
    known = set(names)

    def select(name: str):
        """The context to run under: the base with adapters disabled, or set_adapter(name)."""
        if name == base_name:
            return model.disable_adapter()
        model.set_adapter(name)
        return _Nothing()

    def complete(body: dict) -> dict:
        ids = tokenizer(body["prompt"], return_tensors="pt")
        max_tokens = int(body.get("max_tokens", 16))
        with lock, torch.no_grad(), select(body["model"]):
            out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False,
                                 min_new_tokens=max_tokens if body.get("ignore_eos") else 0,
                                 pad_token_id=tokenizer.pad_token_id)
        new = out[0, ids["input_ids"].shape[1]:]
        prompt_tokens = ids["input_ids"].shape[1]
        return {"object": "text_completion", "model": body["model"],
                "choices": [{"index": 0, "text": tokenizer.decode(new, skip_special_tokens=True),
                             "finish_reason": "length" if len(new) >= max_tokens else "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(new),
                          "total_tokens": prompt_tokens + len(new)}}

    def classify(body: dict) -> dict:
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        with lock, torch.no_grad(), select(body["model"]):
            probs = torch.softmax(model(**batch).logits.float(), -1).tolist()
        tokens = int(batch["attention_mask"].sum())
        return {"object": "list", "model": body["model"],
                "data": [{"index": i, "label": str(max(range(len(p)), key=p.__getitem__)), "probs": p}
                         for i, p in enumerate(probs)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}}

    async def run(fn, body: dict, wanted: str):
        if task != wanted:
            return JSONResponse({"error": {"message": f"this server runs a {task} model"}}, status_code=400)
        if body.get("model") != base_name and body.get("model") not in known:
            return JSONResponse({"error": {"message": f"unknown model {body.get('model')!r}"}}, status_code=404)
        return await asyncio.to_thread(fn, body)

    @app.post("/v1/completions")
    async def completions(body: dict):
        return await run(complete, body, "generate")

    @app.post("/v1/classify")
    async def classify_route(body: dict):
        return await run(classify, body, "classify")

    @app.get("/health")
    async def health():
        return {"status": "ok", "adapters": len(names)}

    return app


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="alias (smollm2, minilm) or a local Hugging Face folder")
    parser.add_argument("--task", choices=("generate", "classify"), default="generate")
    parser.add_argument("--adapter-dir", type=Path, required=True)
    parser.add_argument("--served-name", help="the `model` name of the base (default: --model)")
    parser.add_argument("--num-labels", type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()

    import torch
    import uvicorn

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, tokenizer, names = load(args.model, args.task, args.adapter_dir, args.num_labels)
    print(f"naive PEFT server: {len(names)} adapters loaded in {time.perf_counter() - started:.1f} s",
          file=sys.stderr, flush=True)
    app = create_app(model, tokenizer, names, args.task, args.served_name or args.model)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
