#!/usr/bin/env python
"""The T-MAC LUT kernel (petkit.kernels.lut, native C++) against dequantise-then-matmul and fp32, CPU.

Shapes: SmolLM2-135M's linear layers (M x K): 576x576 (q, o), 192x576 (k, v), 1536x576 (gate, up),
576x1536 (down), plus 2048x2048 for comparison with shared/notes/low-bit.md (49152x576, the LM head,
with --lm-head). Batches N = 1 (GEMV, decode) and N = 8, 32 (small GEMM). Weights: random codes,
group_size 64, per-group scales, no zero points. Variants, all fed the same x:
  lut_b{1..4}  lut_matmul(x, w, backend="native"), the public entry point (Python overhead included)
  dequant      from the same codes (kept unpacked as uint8, one byte per weight, the cheapest form for
               plain PyTorch) each call: W = (codes - 2^(b-1)) * scales, then F.linear. Its cost does
               not depend on b; it is measured with the 4-bit codes.
  petkit_dequant  petkit's own dequantise-then-matmul: a PackedLinear (int4, the same codes, packed)
               whose forward dequantises with the native kernel (petkit.kernels.dequant) into a reused
               buffer, then multiplies: the strongest dequantising baseline petkit has.
  fp32         F.linear with the dense float32 weight
Timing: torch.set_num_threads(1), then 2; per case, `rounds` rounds, each runs every variant once (the
order rotates) for `inner` back-to-back calls, and a variant's time is the median over rounds of
(round time / inner). Ratios are medians of per-round ratios, which cancel most drift from other load.
Process CPU time is recorded too; with 1 thread it is the time the call really ran, which other load
on the machine distorts less than the wall clock (it still pays for shared caches and memory).

    python benchmarks/lut_gemm.py            # full run, results in benchmarks/results/
    python benchmarks/lut_gemm.py --quick    # smoke run (tiny shapes, few rounds)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing
sys.path.insert(0, str(HERE))  # timing.py, also when a test loads this file by path

from petkit.kernels.lut import lut_matmul, native, pack_lut  # noqa: E402
from petkit.quant import PackedLinear, QuantFormat, formats  # noqa: E402
from timing import time_interleaved  # noqa: E402  (benchmarks/timing.py, beside this script)

SHAPES = [(576, 576, "q,o"), (192, 576, "k,v"), (1536, 576, "gate,up"), (576, 1536, "down"),
          (2048, 2048, "notes")]
LM_HEAD = (49152, 576, "lm_head")
QUICK_SHAPES = [(64, 128, "tiny"), (96, 256, "small")]
BATCHES, QUICK_BATCHES = (1, 8, 32), (1, 4)
BITS = (1, 2, 3, 4)
GROUP = 64


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def make_case(M, K, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, K, generator=g)
    scales = torch.rand(M, K // GROUP, generator=g) * 0.02 + 0.01
    fns, codes4 = {}, None
    for b in BITS:
        codes = torch.randint(0, 2 ** b, (M, K), generator=g)
        w = pack_lut(codes, scales, None, b, GROUP)
        fns[f"lut_b{b}"] = lambda w=w: lut_matmul(x, w, backend="native")
        codes4 = codes.to(torch.uint8)
    scales_u = scales.unsqueeze(-1)

    def dequant():
        W = codes4.view(M, K // GROUP, GROUP).to(torch.float32).sub_(8.0).mul_(scales_u)
        return F.linear(x, W.view(M, K))

    dense = (codes4.float() - 8.0) * scales.repeat_interleave(GROUP, 1)
    fns["dequant"] = dequant
    layer = PackedLinear(K, M, QuantFormat("int", 4, GROUP), bias=False)
    layer.codes.copy_(formats.pack(codes4, 4))
    layer.scales.copy_(scales.half())
    layer.zeros.copy_(-8.0 * scales.half())  # exact in fp16: w = s·q − 8s = s·(q − 8)
    layer.eval()

    def petkit_dequant():
        with torch.no_grad():
            return layer(x)

    fns["petkit_dequant"] = petkit_dequant
    fns["fp32"] = lambda: F.linear(x, dense)
    return fns


def time_case(fns, rounds, budget_s=0.002):
    times = time_interleaved(fns, rounds, {"wall": time.perf_counter, "cpu": time.process_time}, budget_s)
    return times["wall"], times["cpu"]


def ratio(times, a, b):
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def machine_info():
    from petkit.bench import machine

    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "cpu": machine.cpu(),
            "versions": machine.versions(), "loadavg_start": os.getloadavg()}


def run(shapes, batches, threads_list, rounds):
    t0 = time.perf_counter()
    native.load()
    build_s = time.perf_counter() - t0
    rows, cases = [], []
    for threads in threads_list:
        torch.set_num_threads(threads)
        for M, K, role in shapes:
            for N in batches:
                times, cpu = time_case(make_case(M, K, N), rounds)
                case = {"M": M, "K": K, "role": role, "N": N, "threads": threads,
                        "ms": {n: statistics.median(v) for n, v in times.items()},
                        "cpu_ms": {n: statistics.median(v) for n, v in cpu.items()},
                        "lut_over_dequant": {b: ratio(times, f"lut_b{b}", "dequant") for b in BITS},
                        "lut_over_petkit_dequant": {b: ratio(times, f"lut_b{b}", "petkit_dequant") for b in BITS},
                        "lut_over_fp32": {b: ratio(times, f"lut_b{b}", "fp32") for b in BITS}}
                cases.append(case)
                for n, ms in case["ms"].items():
                    rows.append({"M": M, "K": K, "role": role, "N": N, "threads": threads, "variant": n, "ms": ms})
                log(f"threads={threads} {M}x{K} N={N}: " + " ".join(f"{n} {ms:.4f}" for n, ms in case["ms"].items()))
    return {"load_seconds": build_s, "rows": rows, "cases": cases}


def render_md(res) -> str:
    m = res["machine"]
    lines = [
        "# T-MAC LUT kernel vs dequantise+matmul vs fp32 (CPU)", "",
        f"- date: {m['date']}; CPU: {m['cpu']}; {m['versions']}",
        f"- load average (1/5/15 min) at start: {', '.join(f'{x:.2f}' for x in m['loadavg_start'])}; at end: "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_end'])} (the start value shows what else was running)",
        f"- kernel load (build or cache hit) in this run: {res['load_seconds']:.1f} s; isa: {res['isa']}",
        f"- group_size {GROUP}, act_group_size 64, no zero points; {res['rounds']} interleaved rounds per case; "
        "times are medians in ms; ratios are medians of per-round ratios (< 1: the LUT kernel is faster)", "",
    ]
    for threads in sorted({c["threads"] for c in res["cases"]}):
        lines += [f"## {threads} thread{'s' if threads > 1 else ''}", "",
                  "| M x K (role) | N | fp32 | dequant | petkit dequant | LUT b1 | LUT b2 | LUT b3 | LUT b4 | b2 / dequant | "
                  "b2 / petkit dequant | b2 / fp32 | b4 / petkit dequant | b4 / fp32 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in (c for c in res["cases"] if c["threads"] == threads):
            ms = c["ms"]
            lines.append(
                f"| {c['M']}x{c['K']} ({c['role']}) | {c['N']} | {ms['fp32']:.4f} | {ms['dequant']:.4f} | "
                f"{ms['petkit_dequant']:.4f} | " + " | ".join(f"{ms[f'lut_b{b}']:.4f}" for b in BITS)
                + f" | {c['lut_over_dequant'][2]:.3f} | {c['lut_over_petkit_dequant'][2]:.3f} | {c['lut_over_fp32'][2]:.3f}"
                + f" | {c['lut_over_petkit_dequant'][4]:.3f} | {c['lut_over_fp32'][4]:.3f} |")
        lines.append("")
    lines += ["## 1 thread, process CPU time (ms; less sensitive to other load than the wall clock)", "",
              "| M x K (role) | N | fp32 | dequant | petkit dequant | LUT b1 | LUT b2 | LUT b3 | LUT b4 |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in (c for c in res["cases"] if c["threads"] == 1):
        ms = c["cpu_ms"]
        lines.append(f"| {c['M']}x{c['K']} ({c['role']}) | {c['N']} | {ms['fp32']:.4f} | {ms['dequant']:.4f} | "
                     f"{ms['petkit_dequant']:.4f} | "
                     + " | ".join(f"{ms[f'lut_b{b}']:.4f}" for b in BITS) + " |")
    lines.append("")
    return "\n".join(lines)


def plot(res, path):
    """GEMV (N = 1) time against bits, one panel per shape, 1 thread: wall clock and CPU time."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gemv = [c for c in res["cases"] if c["N"] == 1 and c["threads"] == 1]
    cols = min(3, len(gemv))
    rows = -(-len(gemv) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, c in zip(axes.flat, gemv):
        ax.plot(BITS, [c["ms"][f"lut_b{b}"] for b in BITS], "o-", color="C0", label="LUT kernel (wall)")
        ax.plot(BITS, [c["cpu_ms"][f"lut_b{b}"] for b in BITS], "o:", color="C0", label="LUT kernel (CPU time)")
        ax.axhline(c["ms"]["dequant"], color="C1", label="dequantise (PyTorch) + F.linear")
        ax.axhline(c["ms"]["petkit_dequant"], color="C3", label="petkit PackedLinear (native dequantise)")
        ax.axhline(c["ms"]["fp32"], color="C2", label="fp32 F.linear")
        ax.set_title(f"{c['M']}x{c['K']} ({c['role']}), N=1, 1 thread", fontsize=9)
        ax.set_xlabel("weight bits")
        ax.set_xticks(BITS)
        ax.set_yscale("log")
        ax.set_ylabel("ms per call (log)")
    for ax in list(axes.flat)[len(gemv):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(res, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    (out / "lut_gemm.json").write_text(json.dumps(res, indent=1))
    (out / "lut_gemm.md").write_text(render_md(res))
    plot(res, out / "lut_gemm.png")
    log(f"wrote {out}/lut_gemm.{{json,md,png}}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny shapes, few rounds")
    ap.add_argument("--lm-head", action="store_true", help="also time the 49152x576 LM head")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--report-only", action="store_true", help="re-render .md and .png from the .json in --out")
    args = ap.parse_args(argv)
    if args.report_only:
        res = json.loads((Path(args.out) / "lut_gemm.json").read_text())
        for c in res["cases"]:  # JSON turned the bit keys into strings
            for key in ("lut_over_dequant", "lut_over_petkit_dequant", "lut_over_fp32"):
                c[key] = {int(b): v for b, v in c[key].items()}
        return write_reports(res, Path(args.out))
    shapes = QUICK_SHAPES if args.quick else SHAPES + ([LM_HEAD] if args.lm_head else [])
    batches = QUICK_BATCHES if args.quick else BATCHES
    rounds = args.rounds or (3 if args.quick else 41)
    machine = machine_info()
    before = torch.get_num_threads()
    try:
        res = run(shapes, batches, (1, 2), rounds)
    finally:
        torch.set_num_threads(before)
    machine["loadavg_end"] = os.getloadavg()
    res.update(machine=machine, rounds=rounds, quick=args.quick,
               isa="avx2" if native.load().best_isa() >= 1 else "scalar")
    write_reports(res, Path(args.out))


if __name__ == "__main__":
    main()
