#!/usr/bin/env python
"""A frozen low-bit linear layer, forward and forward + input gradient: petkit's PackedLinear (native
dequantisation, and the PyTorch dequantisation forced) against bitsandbytes' Linear4bit and fp32, CPU.

Shapes (out x in): SmolLM2-135M's linear layers 576x576 (q, o), 192x576 (k, v), 1536x576 (gate, up),
576x1536 (down), and 2048x2048 (shared/notes/low-bit.md). Batches: N = 1 (x of shape (1, in), decode)
and N = 256 (x of shape (2, 128, in): a training micro-batch of 2 x 128 tokens). No bias (SmolLM2 has
none). Variants, all fed the same x (which requires grad, as in training):
  fp32          nn.Linear with a frozen weight (the baseline: input gradient only, no weight gradient)
  pk_nf4        petkit PackedLinear, NF4, group 64, native dequantisation (petkit.kernels.dequant)
  pk_nf4_torch  the same layer with the PyTorch dequantisation (dequant.set_native(False))
  pk_int4       petkit PackedLinear, int 4-bit, group 32 (fp16 scale and zero), native dequantisation
  bnb_nf4       bitsandbytes Linear4bit, NF4, blocksize 64, no double quantisation, fp32 compute, in
                .train() mode: its training path (dequantise, then F.linear; dequantise again in backward)
  bnb_nf4_eval  (forward only) another Linear4bit instance in .eval() under torch.no_grad(): its fused
                inference path, which on an AVX512-BF16 CPU repacks the weight in place on the first
                call and computes in bfloat16 (notes/low-bit.md §1.4); not a training path
Also timed: dequantising the 2048x2048 weight alone (4.2M weights) by each library, and checked: the
dequantised NF4 weights of petkit and bitsandbytes for the same float weight (bit for bit).

Timing: one process; 1 thread (torch.set_num_threads(1); bitsandbytes' OpenMP regions share torch's
libgomp, so they get 1 thread too), timed by time.thread_time (CPU time of the calling thread: robust
to other load on the machine), then 2 threads, timed by the wall clock. Per case, `rounds` rounds, each
runs every variant once (the order rotates) for `inner` back-to-back calls (enough for ~5 ms); a
variant's time is the median over rounds, its ratio the median of per-round ratios to fp32.

    python benchmarks/lowbit_layer.py            # full run (~5 min on 2 cores), results in benchmarks/results/
    python benchmarks/lowbit_layer.py --quick --out /tmp/lb   # smoke run, seconds
    python benchmarks/lowbit_layer.py --report-only --note "..."   # re-render the .md from the .json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing
sys.path.insert(0, str(HERE))  # timing.py, also when a test loads this file by path

from petkit.bench.machine import cpu_model  # noqa: E402
from petkit.kernels import dequant  # noqa: E402
from petkit.quant import PackedLinear, QuantFormat  # noqa: E402
from timing import time_interleaved  # noqa: E402  (benchmarks/timing.py, beside this script)

SHAPES = [(576, 576, "q,o"), (192, 576, "k,v"), (1536, 576, "gate,up"), (576, 1536, "down"), (2048, 2048, "notes")]
QUICK_SHAPES = [(64, 128, "tiny"), (192, 256, "small")]
BATCHES = {1: (1,), 256: (2, 128)}  # N -> leading dims of x
VARIANTS = ["fp32", "pk_nf4", "pk_nf4_torch", "pk_int4", "bnb_nf4", "bnb_nf4_eval"]
TRAIN_VARIANTS = VARIANTS[:-1]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def bnb_linear(lin: nn.Linear, train: bool):
    import bitsandbytes as bnb

    m = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=False, compute_dtype=torch.float32,
                          compress_statistics=False, quant_type="nf4")
    m.weight = bnb.nn.Params4bit(lin.weight.detach().clone(), requires_grad=False, quant_type="nf4", blocksize=64,
                                 compress_statistics=False, module=m)
    m = m.to("cpu")  # quantises
    assert m.weight.quant_state.blocksize == 64 and not m.weight.quant_state.nested
    return m.train(train)


class Native:
    """Run a call with petkit's native dequantisation switched on or off."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        self.old = dequant.set_native(self.on)

    def __exit__(self, *exc):
        dequant.set_native(self.old)


def make_layers(out_f, in_f, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out_f, in_f, generator=g) * 0.02)
    lin.weight.requires_grad_(False)
    nf4 = PackedLinear.from_linear(lin, QuantFormat("nf4", 4, 64))
    int4 = PackedLinear.from_linear(lin, QuantFormat("int", 4, 32))
    layers = {"fp32": lin, "pk_nf4": nf4, "pk_nf4_torch": nf4, "pk_int4": int4}
    try:
        layers["bnb_nf4"] = bnb_linear(lin, train=True)
        layers["bnb_nf4_eval"] = bnb_linear(lin, train=False)
    except ImportError:
        log("bitsandbytes is not installed (pip install -e '.[bnb]'): its variants are skipped")
    return layers


def make_fns(layers, lead, seed=1):
    g = torch.Generator().manual_seed(seed)
    in_f = layers["fp32"].in_features
    x = torch.randn(*lead, in_f, generator=g).requires_grad_(True)
    grad = torch.randn(*lead, layers["fp32"].out_features, generator=g)
    fwd, fwdbwd = {}, {}
    for name, layer in layers.items():
        native = Native(name != "pk_nf4_torch")
        if name == "bnb_nf4_eval":
            def f(layer=layer):
                with torch.no_grad():
                    layer(x.detach())
            fwd[name] = f
            continue

        def f(layer=layer, native=native):
            with native:
                layer(x)

        def fb(layer=layer, native=native):
            with native:
                layer(x).backward(grad)
            x.grad = None

        fwd[name], fwdbwd[name] = f, fb
    return fwd, fwdbwd


def time_case(fns, rounds, clock, budget_s=0.005):
    return time_interleaved(fns, rounds, {"clock": clock}, budget_s)["clock"]


def ratios(times, base="fp32"):
    return {n: statistics.median(a / b for a, b in zip(v, times[base])) for n, v in times.items()}


def bit_compat(shapes):
    """petkit's NF4 (group 64) against bitsandbytes' (blocksize 64) for the same float weight."""
    try:
        import bitsandbytes.functional as bnbf
    except ImportError:
        return None
    out = []
    for M, K, role in shapes:
        layers = make_layers(M, K, seed=7)
        b = layers["bnb_nf4"]
        w_bnb = bnbf.dequantize_4bit(b.weight.data, b.weight.quant_state).float()
        w_pk = layers["pk_nf4"].dequantize()
        x = torch.randn(2, 128, K, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            y_pk, y_bnb = layers["pk_nf4"](x), b(x)
        out.append({"M": M, "K": K, "role": role,
                    "absmax_equal": bool(torch.equal(layers["pk_nf4"].scales.reshape(-1), b.weight.quant_state.absmax)),
                    "weights_bitwise_equal": bool(torch.equal(w_pk.view(torch.int32), w_bnb.view(torch.int32))),
                    "weight_max_abs_diff": float((w_pk - w_bnb).abs().max()),
                    "output_max_abs_diff_train_path": float((y_pk - y_bnb).abs().max())})
    return out


def dequant_only(rounds, clock, M=2048, K=2048):
    layers = make_layers(M, K)
    nf4, int4 = layers["pk_nf4"], layers["pk_int4"]
    fns = {}
    with Native(True):
        nf4.dequantize(), int4.dequantize()  # build the kernel outside the timings

    def on(f):
        def g():
            with Native(True):
                f()
        return g

    def off(f):
        def g():
            with Native(False):
                f()
        return g

    fns["pk_nf4"], fns["pk_nf4_torch"] = on(nf4.dequantize), off(nf4.dequantize)
    fns["pk_int4"], fns["pk_int4_torch"] = on(int4.dequantize), off(int4.dequantize)
    fns["pk_nf4_bf16"] = on(lambda: nf4.dequantize(torch.bfloat16))
    if "bnb_nf4" in layers:
        import bitsandbytes.functional as bnbf

        b = layers["bnb_nf4"]
        fns["bnb_nf4"] = lambda: bnbf.dequantize_4bit(b.weight.data, b.weight.quant_state)
    times = time_case(fns, rounds, clock)
    return {n: statistics.median(v) for n, v in times.items()}


def machine_info():
    cpu = cpu_model()
    try:
        import bitsandbytes
        bnb_version = bitsandbytes.__version__
    except ImportError:
        bnb_version = None
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "cpu": cpu,
            "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "bitsandbytes": bnb_version, "native_dequant": dequant.available(),
            "loadavg_start": os.getloadavg()}


def run(shapes, rounds, threads_list):
    cases, dq = [], {}
    for threads in threads_list:
        torch.set_num_threads(threads)
        clock = time.thread_time if threads == 1 else time.perf_counter
        clock_name = "thread CPU time" if threads == 1 else "wall clock"
        dq[threads] = dequant_only(rounds, clock)
        log(f"threads={threads} dequantise 2048x2048: " + " ".join(f"{n} {ms:.3f}" for n, ms in dq[threads].items()))
        for M, K, role in shapes:
            layers = make_layers(M, K)
            for N, lead in BATCHES.items():
                fwd, fwdbwd = make_fns(layers, lead)
                for mode, fns in (("fwd", fwd), ("fwd+bwd", fwdbwd)):
                    times = time_case(fns, rounds, clock)
                    case = {"M": M, "K": K, "role": role, "N": N, "threads": threads, "clock": clock_name,
                            "mode": mode, "ms": {n: statistics.median(v) for n, v in times.items()},
                            "ratio_to_fp32": ratios(times)}
                    cases.append(case)
                    log(f"threads={threads} {M}x{K} N={N} {mode}: " +
                        " ".join(f"{n} {ms:.3f} ({case['ratio_to_fp32'][n]:.2f})" for n, ms in case["ms"].items()))
    return {"cases": cases, "dequant_2048x2048_ms": dq}


def render_md(res) -> str:
    m = res["machine"]
    lines = [
        "# A frozen low-bit linear layer: petkit PackedLinear vs bitsandbytes Linear4bit vs fp32",
        "",
        f"- {m['date']}, {m['cpu']}, {m['cores']} cores; python {m['python']}, torch {m['torch']}, "
        f"bitsandbytes {m['bitsandbytes']}; petkit native dequantisation built: {m['native_dequant']}",
        f"- load average (1/5/15 min) at start: {', '.join(f'{x:.2f}' for x in m['loadavg_start'])}; at end: "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_end'])} (what else was running on the 2 cores)",
        f"- {res['rounds']} rounds per case, variants interleaved; medians; ratio = median of per-round "
        "ratios to the frozen fp32 nn.Linear. 1 thread: thread CPU time; 2 threads: wall clock.",
        "- x requires grad (a training forward); `bnb_nf4` is bitsandbytes' training path (.train()); "
        "`bnb_nf4_eval` is its eval/no-grad fused bf16 path (forward only; it repacks the weight in place, "
        "so it is a separate instance and not a training path).",
        "- N = 1: x (1, in); N = 256: x (2, 128, in). Shapes are out x in.",
        *([f"- **Note:** {res['note']}"] if res.get("note") else []),
        "",
        "## Dequantising 2048x2048 (4.2M weights) alone, ms",
        "",
        "| threads | " + " | ".join(res["dequant_2048x2048_ms"][next(iter(res["dequant_2048x2048_ms"]))]) + " |",
        "|---|" + "---|" * len(res["dequant_2048x2048_ms"][next(iter(res["dequant_2048x2048_ms"]))]),
    ]
    for threads, d in res["dequant_2048x2048_ms"].items():
        lines.append(f"| {threads} | " + " | ".join(f"{v:.3f}" for v in d.values()) + " |")
    lines.append("")
    lines.append("`pk_*_torch`: petkit's PyTorch path (unpack, then index/addcmul); `pk_nf4_bf16`: native, bfloat16 output; "
                 "`bnb_nf4`: bitsandbytes.functional.dequantize_4bit (its C++ CPU kernel).")
    for threads in sorted({c["threads"] for c in res["cases"]}):
        for mode in ("fwd", "fwd+bwd"):
            sel = [c for c in res["cases"] if c["threads"] == threads and c["mode"] == mode]
            if not sel:
                continue
            names = list(sel[0]["ms"])
            unit = "CPU ms" if threads == 1 else "wall ms"
            lines += ["", f"## {mode}, {threads} thread{'s' if threads > 1 else ''}: {unit} (ratio to fp32)", "",
                      "| shape | N | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
            for c in sel:
                lines.append(f"| {c['M']}x{c['K']} ({c['role']}) | {c['N']} | " +
                             " | ".join(f"{c['ms'][n]:.3f} ({c['ratio_to_fp32'][n]:.2f})" for n in names) + " |")
    if res.get("bit_compat"):
        lines += ["", "## NF4: petkit (group 64) against bitsandbytes (blocksize 64), same float weight", "",
                  "| shape | absmax equal | dequantised weights bit-identical | max abs diff | output max abs diff |",
                  "|---|---|---|---|---|"]
        for b in res["bit_compat"]:
            lines.append(f"| {b['M']}x{b['K']} | {b['absmax_equal']} | {b['weights_bitwise_equal']} | "
                         f"{b['weight_max_abs_diff']:.3g} | {b['output_max_abs_diff_train_path']:.3g} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes, 3 rounds: a smoke run")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--note", help="a remark on the run (e.g. other load), stored and shown in the report")
    ap.add_argument("--report-only", action="store_true", help="re-render lowbit_layer.md from lowbit_layer.json")
    args = ap.parse_args(argv)
    if args.report_only:
        res = json.loads((args.out / "lowbit_layer.json").read_text(encoding="utf-8"))
        if args.note:
            res["note"] = args.note
            (args.out / "lowbit_layer.json").write_text(json.dumps(res, indent=1), encoding="utf-8")
        (args.out / "lowbit_layer.md").write_text(render_md(res), encoding="utf-8")
        return
    warnings.filterwarnings("ignore", message=".*kernels-community.*")
    shapes = QUICK_SHAPES if args.quick else SHAPES
    rounds = 3 if args.quick else args.rounds
    machine = machine_info()
    res = run(shapes, rounds, [int(t) for t in args.threads.split(",")])
    res["bit_compat"] = bit_compat(shapes)
    machine["loadavg_end"] = os.getloadavg()
    res.update(machine=machine, rounds=rounds, quick=args.quick, note=args.note)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lowbit_layer.json").write_text(json.dumps(res, indent=1), encoding="utf-8")
    (args.out / "lowbit_layer.md").write_text(render_md(res), encoding="utf-8")
    log(f"wrote {args.out / 'lowbit_layer.json'} and lowbit_layer.md")


if __name__ == "__main__":
    main()
