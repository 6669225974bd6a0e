#!/usr/bin/env python
"""Load test of `petkit serve` (issue 18): throughput and latency as the number of distinct adapters in
the traffic grows, against the base model alone and against a naive Hugging Face PEFT server.

A bounded closed loop on loopback: C concurrent clients (asyncio + httpx) each send requests back to
back until R requests are done. Request i names `model` = adapter i mod k of the k adapters of the mix
(round robin; the base name for the base-only mix), so a batch of C requests holds min(C, k) distinct
adapters. The servers run as separate processes (client and server do not share a GIL):

- petkit: `petkit serve --adapter-dir DIR --max-resident 64`: continuous batching over the
  mixed-adapter forward (requests for different adapters share a batch);
- naive: `benchmarks/naive_peft_server.py`: one PEFT `PeftModel` holding every adapter, one request at a
  time, `set_adapter(name)` (adapters disabled for the base) then `generate` / a forward.

Cells: model x concurrency (1, 8, 32) x mix (base only, 1, 8, 64 adapters).
- generation: SmolLM2-135M-Instruct, one AG News title + description of 32-64 tokens per request,
  max_tokens=32, temperature 0, ignore_eos (so every request decodes exactly 32 tokens);
- classification: all-MiniLM-L6-v2 with a 2-class head, one SST-2 sentence of 20-60 words per request.
Adapters: LoRA r=16 on every linear layer (the classifiers' heads saved along, PEFT's modules_to_save),
A and B random (B non-zero, so adapters really differ), PEFT format, loadable by both servers.

Both servers start before a model's cells and stay up; every adapter (and the base) gets one request
before any timing, so no first-load time is in the numbers. For each concurrency the mixes run one after
the other and the naive server's cell runs right after petkit's, so every ratio compares numbers taken
minutes apart at most. Measured per cell: completion tokens / s (generation), requests / s, p50 / p99
latency (client side, request sent to response read), wall time from the first request to the last answer.

    .venv/bin/python benchmarks/serve_load.py                  # full run, ~25 min on 2 cores
    .venv/bin/python benchmarks/serve_load.py --quick --out /tmp/sl   # tiny random models, seconds
    .venv/bin/python benchmarks/serve_load.py --report-only    # re-render serve_load.md / .png from the JSON

Needs the serve and test extras (fastapi, uvicorn, prometheus_client, httpx, peft, matplotlib) and
../shared/data (PETKIT_DATA_DIR) for the real prompts. Writes serve_load.json, serve_load.md and
serve_load.png to --out (benchmarks/results/serve-load).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

KINDS = ("generate", "classify")
CONCURRENCY = (1, 8, 32)
MIXES = (0, 1, 8, 64)  # distinct adapters in the traffic; 0 = the base only
BASE = "base"          # the served name of the base model on both servers
TARGET_LOSS = 0.15     # at most 15% throughput lost at 64 adapters against the base alone
TARGET_NAIVE = 3.0     # at least 3x the naive PEFT server's throughput
# Requests per cell (R), by kind, server and concurrency: sized so the full run takes ~25 minutes.
REQUESTS = {
    ("generate", "petkit"): {1: 12, 8: 48, 32: 96},
    ("generate", "naive"): {1: 8, 8: 24, 32: 48},
    ("classify", "petkit"): {1: 150, 8: 400, 32: 800},
    ("classify", "naive"): {1: 150, 8: 300, 32: 400},
}
NAIVE_CELLS = {"generate": {8: (8, 64), 32: (8, 64)},                   # concurrency -> mixes
               "classify": {c: MIXES for c in CONCURRENCY}}
# --quick: tiny random models, fewer cells of the same kinds (seconds, for the test)
QUICK_CONCURRENCY, QUICK_MIXES, QUICK_REQUESTS = (1, 4), (0, 1, 4), {1: 3, 4: 8}
QUICK_NAIVE_CELLS = {"generate": {4: (1, 4)}, "classify": {4: (0, 1, 4)}}


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


# -- models, adapters, inputs ----------------------------------------------------------------------

def build_models(kind: str, work: Path, n_adapters: int, quick: bool, targets: str = "all-linear") -> str:
    """Save n_adapters PEFT-format LoRA adapters to work/adapters/a00.. and return the model to serve
    (an alias, or with --quick a tiny random model saved to work/model)."""
    import torch

    import petkit
    from petkit.models import load_model

    adapters = work / "adapters"
    stamp = work / "built.json"  # the same adapters every time: a --work folder keeps them for the next run
    settings = {"quick": quick, "n_adapters": n_adapters, "targets": targets, "version": 1}
    if stamp.is_file() and json.loads(stamp.read_text()).get("settings") == settings:
        return json.loads(stamp.read_text())["model"]
    if quick:
        from petkit.testing import tiny_bert, tiny_chat_tokenizer, tiny_llama, tiny_tokenizer
        base = tiny_llama() if kind == "generate" else tiny_bert(num_labels=2)
        tokenizer = tiny_chat_tokenizer() if kind == "generate" else tiny_tokenizer()
        model_id = str(work / "model")
        base.save_pretrained(model_id)
        tokenizer.save_pretrained(model_id)
    else:
        model_id = "smollm2" if kind == "generate" else "minilm"
        torch.manual_seed(0)
        base = load_model(model_id, task="causal_lm") if kind == "generate" else \
            load_model(model_id, task="classification", num_labels=2)
    # named "default" so that the PEFT files sit at the folder's top level
    am = petkit.adapt(base, petkit.LoraConfig(r=16, targets=targets if targets == "all-linear" else targets.split(",")),
                      "default")
    params = dict(am.adapter_parameters("default"))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for i in range(n_adapters):
            for key, p in params.items():
                if key.endswith(".B"):
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.01)
                elif key.endswith(".A"):
                    p.copy_(torch.randn(p.shape, generator=generator) / p.shape[-1] ** 0.5)
                else:  # the classification head (trained along by petkit, modules_to_save for PEFT)
                    p.add_(torch.randn(p.shape, generator=generator) * 0.01)
            am.save(adapters / adapter_name(i), format="peft")
    stamp.write_text(json.dumps({"settings": settings, "model": model_id}))
    return model_id


def adapter_name(i: int) -> str:
    return f"a{i:02d}"


_SPACES = re.compile(r"[ \\]+")  # AG News writes line breaks as backslashes


def inputs(kind: str, quick: bool, count: int = 256) -> tuple[list[str], str]:
    """Request texts and where they come from: AG News titles + descriptions of 32-64 SmolLM2 tokens
    (generation prompts) or SST-2 test sentences of 20-60 words (classification)."""
    data = Path(os.environ.get("PETKIT_DATA_DIR", ROOT.parent / "shared" / "data"))
    if kind == "generate":
        path = data / "ag_news" / "test.csv"
        if not path.is_file():
            raise SystemExit(f"generation prompts come from {path}, which is absent (set PETKIT_DATA_DIR)")
        with path.open(newline="", encoding="utf-8") as f:
            rows = [f"{title.strip()}. {_SPACES.sub(' ', text).strip()}" for _, title, text in csv.reader(f)]
        if quick:  # the tiny model's 64 positions: a character tokenizer, so a short prompt
            return [r[:24] for r in rows[:count]], f"{path.name} (first 24 characters)"
        from petkit.models import load_tokenizer
        tokenizer = load_tokenizer("smollm2")
        picked = [r for r in rows if 32 <= len(tokenizer(r)["input_ids"]) <= 64][:count]
        return picked, "AG News test titles + descriptions of 32-64 tokens"
    path = data / "sst2" / "stsa.binary.test"
    if not path.is_file():
        raise SystemExit(f"classification texts come from {path}, which is absent (set PETKIT_DATA_DIR)")
    sentences = [line.split(" ", 1)[1].strip() for line in path.read_text(encoding="utf-8").splitlines() if " " in line]
    if quick:
        return [s[:48] for s in sentences[:count]], f"{path.name} (first 48 characters)"
    picked = [s for s in sentences if 20 <= len(s.split()) <= 60][:count]
    return picked, "SST-2 test sentences of 20-60 words"


# -- servers --------------------------------------------------------------------------------------

def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server in its own process, up (its /health answers) inside the with-block, killed after it."""

    def __init__(self, system: str, kind: str, model: str, adapter_dir: Path, threads: int, log_path: Path):
        self.system, self.port = system, free_port()
        common = ["--model", model, "--task", kind, "--adapter-dir", str(adapter_dir), "--served-name", BASE,
                  "--port", str(self.port), "--threads", str(threads)]
        if system == "petkit":
            self.command = [sys.executable, "-m", "petkit", "serve", *common, "--max-resident", "64",
                            "--max-batch", "32", "--log-level", "warning"]
        else:
            self.command = [sys.executable, str(HERE / "naive_peft_server.py"), *common]
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "Server":
        """Start the process; `wait_healthy` waits until it answers (servers can start side by side)."""
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        self.log_file = self.log_path.open("w")
        self.process = subprocess.Popen(self.command, stdout=self.log_file, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        return self

    def wait_healthy(self, timeout: float = 600) -> None:
        import httpx
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the {self.system} server exited ({self.process.returncode}):\n"
                                   + self.log_path.read_text()[-3000:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"the {self.system} server did not answer /health within {timeout:.0f} s")

    def __exit__(self, *exc) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)  # its own session: the server and nothing else
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        self.log_file.close()
        if process is not None and process.poll() is None:
            raise RuntimeError(f"the {self.system} server (pid {process.pid}) is still running")

    def metrics(self) -> str:
        import httpx
        return httpx.get(self.url + "/metrics", timeout=10).text if self.system == "petkit" else ""


# -- the load generator ---------------------------------------------------------------------------

def payload(kind: str, model: str, text: str, max_tokens: int) -> tuple[str, dict]:
    if kind == "generate":
        return "/v1/completions", {"model": model, "prompt": text, "max_tokens": max_tokens, "temperature": 0,
                                   "ignore_eos": True}
    return "/v1/classify", {"model": model, "input": text}


async def closed_loop(url: str, kind: str, names: list[str], texts: list[str], concurrency: int, requests: int,
                      max_tokens: int, timeout: float = 900) -> dict:
    """C clients send requests back to back until `requests` are done; request i names names[i % k]."""
    import httpx

    latencies: list[float] = [0.0] * requests
    completion = [0] * requests
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        async def worker() -> None:
            for i in counter:
                route, body = payload(kind, names[i % len(names)], texts[i % len(texts)], max_tokens)
                sent = time.perf_counter()
                response = await client.post(route, json=body)
                latencies[i] = time.perf_counter() - sent
                if response.status_code != 200:
                    raise RuntimeError(f"{route} {body['model']}: HTTP {response.status_code}: {response.text[:500]}")
                answer = response.json()
                if kind == "generate":
                    completion[i] = answer["usage"]["completion_tokens"]
                    if completion[i] != max_tokens:
                        raise RuntimeError(f"asked for {max_tokens} tokens with ignore_eos, got {completion[i]}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"requests": requests, "wall_s": wall, "requests_per_s": requests / wall,
            "tokens_per_s": sum(completion) / wall if kind == "generate" else None,
            "completion_tokens": sum(completion), "p50_s": percentile(ordered, 50), "p99_s": percentile(ordered, 99),
            "mean_s": statistics.fmean(ordered)}


def percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def mix_names(mix: int) -> list[str]:
    return [BASE] if mix == 0 else [adapter_name(i) for i in range(mix)]


def warm_up(server: Server, kind: str, texts: list[str], n_adapters: int, max_tokens: int,
            concurrency: tuple[int, ...]) -> float:
    """One request for the base and each adapter (loads every adapter), then for petkit one batch of
    each width (the naive server runs one request at a time whatever the concurrency)."""
    started = time.perf_counter()
    names = mix_names(0) + mix_names(n_adapters)
    asyncio.run(closed_loop(server.url, kind, names, texts, 8, len(names), min(max_tokens, 4)))
    for c in concurrency if server.system == "petkit" else ():  # the batch shapes of each concurrency
        asyncio.run(closed_loop(server.url, kind, [BASE], texts, c, c, max_tokens))
    return time.perf_counter() - started


def cpu_ticks(pids: list[int]) -> tuple[int, int]:
    """(ticks the whole machine was busy, ticks of these processes and this one) since boot, from /proc:
    their difference over a cell is the CPU other work took meanwhile."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    mine = 0
    for pid in [*pids, "self"]:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
            stat = f.read().rsplit(")", 1)[1].split()
            mine += int(stat[11]) + int(stat[12])  # utime, stime
    return busy, mine


def prometheus_value(text: str, name: str) -> float | None:
    """The value of an unlabelled sample in Prometheus text (None if absent)."""
    match = re.search(rf"^{re.escape(name)} ([0-9.eE+-]+)$", text, re.M)
    return float(match.group(1)) if match else None


def batch_histogram(text: str, kind: str) -> dict:
    """Decode-step / classify forward batch sizes from /metrics: count and mean rows per forward."""
    count = re.search(rf'^petkit_batch_size_count{{kind="{kind}"}} ([0-9.eE+-]+)$', text, re.M)
    total = re.search(rf'^petkit_batch_size_sum{{kind="{kind}"}} ([0-9.eE+-]+)$', text, re.M)
    if not count or not total:
        return {"forwards": 0, "rows": 0.0}
    return {"forwards": float(count.group(1)), "rows": float(total.group(1))}


def run_kind(kind: str, args, work: Path) -> dict:
    """Every cell of one model: both servers up, warm, then concurrency x mix (petkit, then naive)."""
    concurrency, mixes = cells_of(args)
    n_adapters = max(mixes)
    texts, source = inputs(kind, args.quick)
    started = time.perf_counter()
    model = build_models(kind, work / kind, n_adapters, args.quick, args.targets)
    built = time.perf_counter() - started
    max_tokens = 8 if args.quick else args.max_tokens
    naive_cells = {} if args.no_naive else (QUICK_NAIVE_CELLS if args.quick else NAIVE_CELLS)[kind]
    out = {"kind": kind, "model": "tiny random" if args.quick else model, "inputs": source, "texts": len(texts),
           "max_tokens": max_tokens if kind == "generate" else None, "adapters_built_s": built, "cells": []}
    with contextlib.ExitStack() as stack:
        systems = ("petkit", "naive") if naive_cells else ("petkit",)
        servers = {s: stack.enter_context(Server(s, kind, model, work / kind / "adapters", args.threads,
                                                 work / f"{kind}-{s}.log")) for s in systems}
        for server in servers.values():
            server.wait_healthy()
        out["warmup_s"] = {s: warm_up(server, kind, texts, n_adapters, max_tokens, concurrency)
                           for s, server in servers.items()}
        metrics = servers["petkit"].metrics()
        out["petkit_adapters_resident_before"] = prometheus_value(metrics, "petkit_adapters_resident")
        # (a server that does not count loads, as a012497's, shows 0 after loading every adapter: not recorded)
        loads_before = prometheus_value(metrics, "petkit_adapter_loads_total") or None
        for c in concurrency:
            for mix in mixes:
                for system, server in servers.items():
                    if system == "naive" and mix not in naive_cells.get(c, ()):
                        continue
                    requests = requests_of(kind, system, c, args)
                    before = server.metrics()
                    ticks = cpu_ticks([s.process.pid for s in servers.values()])
                    cell = closed_loop(server.url, kind, mix_names(mix), texts, c, requests, max_tokens)
                    result = asyncio.run(cell)
                    busy, mine = (b - a for a, b in zip(ticks, cpu_ticks([s.process.pid for s in servers.values()])))
                    hz = os.sysconf("SC_CLK_TCK")
                    result.update(system=system, concurrency=c, mix=mix, loadavg=os.getloadavg()[0],
                                  cpu_ours=mine / hz / result["wall_s"],
                                  cpu_others=max(0, busy - mine) / hz / result["wall_s"])
                    if system == "petkit":
                        result["batch"] = _batch_delta(before, server.metrics(), kind)
                    out["cells"].append(result)
                    log(f"{kind:8} {system:6} C={c:<2} mix={mix:<2} R={requests:<4} {result['wall_s']:6.1f} s "
                        f"{result['requests_per_s']:7.2f} req/s "
                        + (f"{result['tokens_per_s']:7.1f} tok/s " if kind == "generate" else "")
                        + f"p50 {result['p50_s']:.3f} p99 {result['p99_s']:.3f} load {result['loadavg']:.2f} "
                        f"cores ours {result['cpu_ours']:.2f} others {result['cpu_others']:.2f}")
        metrics = servers["petkit"].metrics()
        out["petkit_adapters_resident"] = prometheus_value(metrics, "petkit_adapters_resident")
        loads_after = prometheus_value(metrics, "petkit_adapter_loads_total")
        out["petkit_adapter_loads_during_cells"] = (None if loads_before is None or loads_after is None
                                                    else loads_after - loads_before)
    return out


def cells_of(args) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The concurrencies and mixes of this run."""
    return (QUICK_CONCURRENCY, QUICK_MIXES) if args.quick else (CONCURRENCY, MIXES)


def requests_of(kind: str, system: str, c: int, args) -> int:
    """R of a cell: the table's (times --scale), at least C."""
    return QUICK_REQUESTS[c] if args.quick else max(c, round(REQUESTS[(kind, system)][c] * args.scale))


def _batch_delta(before: str, after: str, kind: str) -> dict:
    """Mean rows per forward during a cell: decode steps (generation) or classification forwards."""
    step = "decode" if kind == "generate" else "classify"
    a, b = batch_histogram(before, step), batch_histogram(after, step)
    forwards = b["forwards"] - a["forwards"]
    prefill = {k: batch_histogram(after, "prefill")[k] - batch_histogram(before, "prefill")[k]
               for k in ("forwards", "rows")} if kind == "generate" else None
    return {"forwards": forwards, "mean_rows": (b["rows"] - a["rows"]) / forwards if forwards else None,
            "prefills": prefill["forwards"] if prefill else None,
            "mean_prefill_rows": prefill["rows"] / prefill["forwards"] if prefill and prefill["forwards"] else None}


# -- where a decode step's time goes -------------------------------------------------------------

def profile_steps(model_id: str, adapter_dir: Path, threads: int, mixes: tuple[int, ...], batches=(1, 8, 32),
                  prompt: int = 48, steps: int = 5) -> dict:
    """In-process, no HTTP: the median time of one cached decode step of the served model at each batch
    size, with the batch's rows routed round robin over each mix's adapters (as the load test's requests
    are), and torch's profile of the widest batch with the most adapters (the operators that dominate)."""
    import torch
    from torch.profiler import profile
    from transformers import DynamicCache

    from petkit.core.load import load
    from petkit.core.model import AdaptedModel
    from petkit.models import load_model
    from petkit.models.calls import cache_argument

    torch.set_num_threads(threads)
    model = AdaptedModel(load_model(model_id, task="causal_lm")).eval()
    for i in range(max(mixes)):
        load(model, adapter_dir / adapter_name(i), as_name=adapter_name(i))
    cache_kw = cache_argument(model.base.forward)  # `cache` in newer transformers, else past_key_values

    def step_times(rows: int, names: list, count: int) -> list[float]:
        vocab = model.base.config.vocab_size
        ids = torch.randint(min(100, vocab // 2), min(1000, vocab), (rows, prompt), generator=torch.Generator().manual_seed(0))
        mask = torch.ones_like(ids)
        cache, times = DynamicCache(), []
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1, adapter_names=names,
                  **{cache_kw: cache})
            for _ in range(count + 1):  # the first step is not timed
                mask = torch.cat([mask, mask.new_ones(rows, 1)], 1)
                started = time.perf_counter()
                model(input_ids=ids[:, :1], attention_mask=mask, position_ids=mask.sum(1, keepdim=True) - 1,
                      use_cache=True, logits_to_keep=1, adapter_names=names, **{cache_kw: cache})
                times.append(time.perf_counter() - started)
        return times[1:]

    def names_of(mix: int, rows: int) -> list:
        return [None] * rows if mix == 0 else [adapter_name(i % mix) for i in range(rows)]

    table = {}
    for rows in batches:
        for mix in mixes:
            table[f"{rows} {mix}"] = statistics.median(step_times(rows, names_of(mix, rows), steps)) * 1000
            log(f"decode step, {rows} rows, mix {mix}: {table[f'{rows} {mix}']:.1f} ms")
    with profile() as prof:
        step_times(max(batches), names_of(max(mixes), max(batches)), 2)
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    top = [{"op": e.key, "share": e.self_cpu_time_total / total, "calls": e.count} for e in ops[:8]]
    return {"threads": threads, "prompt_tokens": prompt, "step_ms": table, "batches": list(batches),
            "profiled": f"{max(batches)} rows, mix {max(mixes)}", "top_ops": top, "loadavg": os.getloadavg()[0]}


# -- summary, report, plot ------------------------------------------------------------------------

def throughput(cell: dict) -> float:
    return cell["tokens_per_s"] if cell["tokens_per_s"] is not None else cell["requests_per_s"]


def summarise(result: dict) -> None:
    """Ratios (within one run): each mix against the base alone at the same concurrency (per server), and
    petkit against the naive server in the same cell; the targets, met or not."""
    targets, concurrency, mixes = [], result["settings"]["concurrency"], result["settings"]["mixes"]
    top = max(mixes)
    for part in result["kinds"]:
        cells = {(c["system"], c["concurrency"], c["mix"]): c for c in part["cells"]}
        for (system, c, mix), cell in cells.items():
            base = cells.get((system, c, 0))
            cell["vs_base"] = throughput(cell) / throughput(base) if base else None
            naive = cells.get(("naive", c, mix))
            cell["vs_naive"] = throughput(cell) / throughput(naive) if system == "petkit" and naive else None
        unit = "tokens/s" if part["kind"] == "generate" else "requests/s"
        for c in concurrency:
            cell = cells.get(("petkit", c, top))
            if cell and cell["vs_base"] is not None:
                loss = 1 - cell["vs_base"]
                targets.append({"kind": part["kind"], "what": f"throughput loss at {top} adapters vs base, C={c} ({unit})",
                                "measured": loss, "target": f"<= {TARGET_LOSS:.0%}", "met": loss <= TARGET_LOSS})
        for c in concurrency:
            for mix in mixes:
                cell = cells.get(("petkit", c, mix))
                if mix and cell and cell["vs_naive"] is not None:
                    targets.append({"kind": part["kind"], "what": f"petkit / naive PEFT, {mix} adapters, C={c} ({unit})",
                                    "measured": cell["vs_naive"], "target": f">= {TARGET_NAIVE:g}x",
                                    "met": cell["vs_naive"] >= TARGET_NAIVE})
    result["targets"] = targets


def render(result: dict, out: Path) -> None:
    m = result["machine"]
    loads = [c["loadavg"] for part in result["kinds"] for c in part["cells"]]
    lines = ["# `petkit serve` under load: adapters in the traffic, against the base alone and naive PEFT", "",
             f"- date {m['date']}; {m['cpu']}; {m['versions']}",
             f"- adapters: LoRA r=16 on {result['settings'].get('targets', 'all-linear')}; server threads "
             f"{result['settings']['threads']}; client and each server in its own process on the same machine (the "
             "client's CPU competes with the servers')",
             f"- load average (1 min) at start {m['loadavg_start'][0]:.2f}, at end {m['loadavg_end'][0]:.2f}, after "
             f"each cell {min(loads):.2f}-{max(loads):.2f}; wall time {result['wall_s'] / 60:.1f} min"
             + ("; **quick mode: tiny random models, numbers mean nothing**" if result["settings"]["quick"] else ""),
             ""]
    for part in result["kinds"]:
        gen = part["kind"] == "generate"
        title = (f"Generation: {part['model']}, {part['inputs']}, max_tokens={part['max_tokens']}, ignore_eos, greedy"
                 if gen else f"Classification: {part['model']}, {part['inputs']}, one text per request")
        lines += [f"## {title}", "",
                  f"Adapters built and saved in {part['adapters_built_s']:.0f} s; warm-up (every adapter once): "
                  + ", ".join(f"{s} {t:.0f} s" for s, t in part["warmup_s"].items())
                  + "; petkit adapters resident before / after the timed cells: "
                  f"{_fmt(part.get('petkit_adapters_resident_before'), '{:.0f}')} / "
                  f"{_fmt(part.get('petkit_adapters_resident'), '{:.0f}')} (--max-resident 64: none evicted), "
                  "adapter loads during timed cells: "
                  f"{_fmt(part.get('petkit_adapter_loads_during_cells'), '{:.0f}') or 'not counted by this server'}.",
                  "",
                  "| server | C | adapters | R | wall s | " + ("tokens/s | " if gen else "") +
                  "requests/s | p50 s | p99 s | / base | petkit / naive | rows per " + ("decode step" if gen else "forward")
                  + " | load | cores: ours / others |",
                  "|---|---|---|---|---|" + ("---|" if gen else "") + "---|---|---|---|---|---|---|---|"]
        for cell in sorted(part["cells"], key=lambda c: (c["system"] != "petkit", c["concurrency"], c["mix"])):
            batch = cell.get("batch") or {}
            lines.append(
                f"| {cell['system']} | {cell['concurrency']} | {cell['mix'] or 'base'} | {cell['requests']} | "
                f"{cell['wall_s']:.1f} | " + (f"{cell['tokens_per_s']:.1f} | " if gen else "")
                + f"{cell['requests_per_s']:.2f} | {cell['p50_s']:.3f} | {cell['p99_s']:.3f} | "
                f"{_fmt(cell.get('vs_base'), '{:.2f}')} | {_fmt(cell.get('vs_naive'), '{:.2f}x')} | "
                f"{_fmt(batch.get('mean_rows'), '{:.1f}')} | {cell['loadavg']:.2f} | "
                f"{_fmt(cell.get('cpu_ours'), '{:.2f}')} / {_fmt(cell.get('cpu_others'), '{:.2f}')} |")
        lines.append("")
    lines += ["## Targets", "", "| model | what | measured | target | met |", "|---|---|---|---|---|"]
    for t in result["targets"]:
        value = f"{t['measured']:.1%}" if "loss" in t["what"] else f"{t['measured']:.2f}x"
        lines.append(f"| {t['kind']} | {t['what']} | {value} | {t['target']} | {'yes' if t['met'] else '**no**'} |")
    lines += ["", "![throughput against adapters](serve_load.png)", "", "## Method", "",
              "R = requests per cell, C = concurrent clients (closed loop: each sends its next request when the "
              "previous one is answered). Request i names adapter i mod k of the mix's k adapters (the base for "
              "'base'). Throughput = completion tokens (generation) or requests (classification) / wall time from "
              "the first request sent to the last answer read; latency is per request, client side. '/ base' divides "
              "a cell's throughput by the base-only cell of the same server and concurrency; 'petkit / naive' divides "
              "petkit's by the naive server's in the same cell, measured right after it. p99 of R requests is close "
              "to the maximum when R is small. Rows per decode step: the mean batch of petkit's decode forwards "
              "during the cell, from /metrics. Load: the 1-minute load average after the cell (it counts the benchmark's "
              "own processes too). Cores: CPU time over the cell's wall time, of the benchmark's processes (client and "
              "servers) and of everything else on the machine (/proc/stat less ours): 'others' shows how much other "
              "work shared the 2 cores.", "", f"R per cell: {json.dumps(result['settings']['requests'])}.", ""]
    prof = result.get("step_profile")
    if prof:
        mixes = result["settings"]["mixes"]
        lines += ["## One decode step, in-process (no HTTP)", "",
                  f"The generation model with the same adapters, {prof['threads']} threads, a {prof['prompt_tokens']}-token "
                  "cached prefix, rows routed round robin over the mix's adapters as in the load test; median of a "
                  f"few steps, load average {prof['loadavg']:.2f}.", "",
                  "| rows | " + " | ".join("base" if m == 0 else f"{m} adapter{'s' if m > 1 else ''}" for m in mixes) + " | most adapters / base |",
                  "|---|" + "---|" * (len(mixes) + 1)]
        for rows in prof["batches"]:
            times = [prof["step_ms"][f"{rows} {m}"] for m in mixes]
            lines.append(f"| {rows} | " + " | ".join(f"{t:.1f} ms" for t in times) + f" | {times[-1] / times[0]:.2f} |")
        lines += ["", f"Where the time of a step with {prof['profiled']} goes (torch profiler, self CPU time): "
                  + ", ".join(f"{o['op']} {o['share']:.0%}" for o in prof["top_ops"]) + ".", ""]
    notes = result.get("notes")
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    (out / "serve_load.md").write_text("\n".join(lines))
    plot(result, out / "serve_load.png")


def _fmt(value, fmt: str) -> str:
    return "" if value is None else fmt.format(value)


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(result["kinds"]), figsize=(5.5 * len(result["kinds"]), 4), squeeze=False)
    concurrency, mixes = result["settings"]["concurrency"], result["settings"]["mixes"]
    colours = dict(zip(concurrency, ("tab:blue", "tab:orange", "tab:green")))
    for ax, part in zip(axes[0], result["kinds"]):
        gen = part["kind"] == "generate"
        for system, style in (("petkit", "-"), ("naive", "--")):
            for c in concurrency:
                cells = sorted((x for x in part["cells"] if x["system"] == system and x["concurrency"] == c),
                               key=lambda x: x["mix"])
                if cells:
                    ax.plot([mixes.index(x["mix"]) for x in cells], [throughput(x) for x in cells], style,
                            marker="o", color=colours[c], label=f"{'petkit' if system == 'petkit' else 'naive PEFT'} C={c}")
        ax.set_xticks(range(len(mixes)), ["base", *map(str, mixes[1:])])
        ax.set_xlabel("distinct adapters in the traffic")
        ax.set_ylabel("completion tokens / s" if gen else "requests / s")
        ax.set_title(f"{'generation' if gen else 'classification'}: {part['model']}")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> dict:
    import torch

    from petkit.bench.machine import cpu, versions
    import httpx
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "cpu": cpu(),
            "versions": f"{versions()}, httpx {httpx.__version__}", "torch_threads_default": torch.get_num_threads(),
            "loadavg_start": os.getloadavg()}


def save(result: dict, out: Path, started: float) -> None:
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["wall_s"] = time.perf_counter() - started
    summarise(result)
    (out / "serve_load.json").write_text(json.dumps(result, indent=1))
    render(result, out)


def _terminated(signum, _frame):
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "serve-load")
    parser.add_argument("--kinds", default=",".join(KINDS), help="generate,classify (or one of them)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each server")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every cell's R (at least C)")
    parser.add_argument("--targets", default="all-linear",
                        help="the adapters' LoRA targets: all-linear, or module names such as q_proj,v_proj (PEFT's "
                             "default for Llama)")
    parser.add_argument("--no-naive", action="store_true", help="petkit cells only")
    parser.add_argument("--work", type=Path, help="folder for models, adapters and server logs (default: a temp dir)")
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="skip timing and profiling single decode steps in-process after the generation cells")
    parser.add_argument("--quick", action="store_true", help="tiny random models, few requests: checks the script runs")
    parser.add_argument("--report-only", action="store_true", help="re-render the .md and .png from the .json")
    args = parser.parse_args(argv)
    if threading.current_thread() is threading.main_thread():  # SIGTERM unwinds, so the servers are stopped
        signal.signal(signal.SIGTERM, _terminated)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        render(json.loads((args.out / "serve_load.json").read_text()), args.out)
        return None
    kinds = [k for k in args.kinds.split(",") if k]
    if not set(kinds) <= set(KINDS):
        raise SystemExit(f"--kinds takes {','.join(KINDS)}")
    started = time.perf_counter()
    concurrency, mixes = cells_of(args)
    result = {"machine": machine(), "kinds": [],
              "settings": {"quick": args.quick, "threads": args.threads, "max_tokens": args.max_tokens,
                           "targets": args.targets,
                           "scale": args.scale, "concurrency": concurrency, "mixes": mixes,
                           "requests": {f"{k} {s}": {c: requests_of(k, s, c, args) for c in concurrency}
                                        for k in kinds for s in ("petkit", "naive")}}}
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        work = args.work or Path(tmp)
        for kind in kinds:
            result["kinds"].append(run_kind(kind, args, work))
            save(result, args.out, started)  # what is measured so far, should a later part fail
        if "generate" in kinds and args.profile:
            model_id = json.loads((work / "generate" / "built.json").read_text())["model"]
            result["step_profile"] = profile_steps(model_id, work / "generate" / "adapters", args.threads, mixes,
                                                   batches=(1, 4) if args.quick else (1, 8, 32),
                                                   prompt=16 if args.quick else 48)
    save(result, args.out, started)
    log(f"wrote {args.out / 'serve_load.md'} ({result['wall_s'] / 60:.1f} min)")
    return result


if __name__ == "__main__":
    main()
