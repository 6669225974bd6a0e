"""`petkit serve` as a user runs it (a separate process started from the CLI), under mixed traffic with hot
loads and unloads: no request fails but the intended 4xx, memory stays flat, and shutting down leaves
no process behind. 20 s in `make test`; the 2-minute soak with --run-slow."""

from __future__ import annotations

import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

import petkit
from petkit.testing import tiny_chat_tokenizer, tiny_llama

KEY = "soak-key-1234"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            children = (task / "children").read_text().split() if (task / "children").exists() else []
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def model_and_adapters(tmp_path):
    model_dir, adapters = tmp_path / "model", tmp_path / "adapters"
    tiny_llama().save_pretrained(model_dir)
    tiny_chat_tokenizer().save_pretrained(model_dir)
    for i in range(6):
        am = petkit.adapt(tiny_llama(), petkit.LoraConfig(r=4, targets="all-linear"), f"s{i}")
        am.save((adapters / "spare" if i >= 4 else adapters) / f"s{i}")
    return model_dir, adapters


def test_mixed_traffic_with_hot_loads_and_unloads(model_and_adapters, request):
    seconds = 120 if request.config.getoption("--run-slow") else 20
    model_dir, adapters = model_and_adapters
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "petkit", "serve", "--model", str(model_dir), "--adapter-dir", str(adapters),
           "--allow-adapter-loading", "--port", str(port), "--max-resident", "3", "--max-batch", "8",
           "--max-tokens", "24", "--threads", "1", "--log-level", "warning"]
    server = subprocess.Popen(cmd, env={**os.environ, "PETKIT_API_KEY": KEY}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    headers = {"Authorization": f"Bearer {KEY}"}
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        children = descendants(server.pid)

        outcomes, lock, stop = [], threading.Lock(), threading.Event()
        served = ["s0", "s1", "s2", "s3", str(model_dir)]  # the base's served name is --model

        def record(kind, status, intended=False):
            with lock:
                outcomes.append((kind, status, intended))

        def traffic(seed):
            rng = random.Random(seed)
            with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
                while not stop.is_set():
                    model = rng.choice(served)
                    roll = rng.random()
                    if roll < 0.1:
                        r = client.post("/v1/completions", json={"model": "missing", "prompt": "x", "max_tokens": 2})
                        record("unknown", r.status_code, intended=r.status_code == 404)
                    elif roll < 0.5:
                        body = {"model": model, "prompt": "hello " * rng.randint(1, 6), "max_tokens": rng.randint(1, 24)}
                        record("completion", client.post("/v1/completions", json=body).status_code)
                    elif roll < 0.8:
                        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 12,
                                "stream": True, "stream_options": {"include_usage": True}}
                        with client.stream("POST", "/v1/chat/completions", json=body) as r:
                            lines = [line for line in r.iter_lines() if line]
                        ok = r.status_code == 200 and lines[-1] == "data: [DONE]"
                        record("stream", r.status_code if ok else -1)
                    else:
                        body = {"model": model, "prompt": "bye", "max_tokens": 20, "stream": True}
                        with client.stream("POST", "/v1/completions", json=body) as r:
                            next(r.iter_lines(), None)  # hang up after the first line
                        record("hangup", r.status_code)

        def loader():
            rng = random.Random(99)
            with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
                while not stop.is_set():
                    name = f"hot{rng.randint(0, 2)}"
                    r = client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": f"spare/s{rng.choice([4, 5])}"})
                    # 400: the name is still loaded (or still finishing requests) from an earlier round
                    record("load", r.status_code, intended=r.status_code == 400)
                    if r.status_code == 200:
                        body = {"model": name, "prompt": "hot", "max_tokens": 8}
                        record("hot", client.post("/v1/completions", json=body).status_code)
                    r = client.post("/v1/unload_lora_adapter", json={"lora_name": f"hot{rng.randint(0, 2)}"})
                    record("unload", r.status_code, intended=r.status_code == 404)
                    time.sleep(0.05)

        threads = [threading.Thread(target=traffic, args=(i,)) for i in range(6)] + [threading.Thread(target=loader)]
        for t in threads:
            t.start()
        memory, started = [], time.monotonic()
        while time.monotonic() - started < seconds:
            time.sleep(seconds / 40)
            memory.append(rss_mb(server.pid))
        stop.set()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads)

        failed = [o for o in outcomes if o[1] != 200 and not o[2]]
        assert not failed, failed[:10]
        kinds = {o[0] for o in outcomes}
        assert {"completion", "stream", "hangup", "load", "unload", "unknown"} <= kinds, kinds
        assert sum(o[0] == "hot" for o in outcomes) >= 3
        # Steady memory: the last quarter of the run is not above the second quarter (after warm-up) by more
        # than 10% + 30 MB (allocator noise); a leaked KV cache or adapter per request grows without bound.
        quarter = len(memory) // 4
        early, late = statistics.median(memory[quarter:2 * quarter]), statistics.median(memory[-quarter:])
        assert late <= early * 1.10 + 30, (early, late, memory)
        deadline = time.monotonic() + 10  # hung-up sequences leave at the engine's next step
        while "petkit_running_sequences 0.0" not in httpx.get(url + "/metrics", headers=headers).text:
            assert time.monotonic() < deadline, "sequences are still running after all clients finished"
            time.sleep(0.1)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    log = server.stdout.read()
    # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly, hence -15 rather than 0
    assert code in (0, -signal.SIGTERM) and "engine stopped" in log, (code, log)
    for pid in children:  # every process the server started is gone with it
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
