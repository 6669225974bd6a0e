#!/usr/bin/env python
"""What a mixed-adapter batch costs per decode step: SmolLM2-135M, continuous-batching shape, CPU.

Every decode step is one forward over B rows of one token each, with a KV cache, under torch.no_grad —
what a server's step looks like while no sequence joins or leaves (the routing row -> adapter stays
the same from step to step). N LoRA adapters r=16, alpha=32, dropout 0 on all 210 linears (q, k, v,
o, gate, up, down of 30 layers), B factors filled with small random values (as in lora_overhead.py).
The B prompts are random token ids of --prompt tokens, prefilled once per variant; a timed call is
--steps decode steps, after which the cache is cropped back to the prompt.

Variants: the base model alone; petkit with one adapter active (unmerged, no routing) and with one
adapter routed to every row; 8 and 64 resident adapters assigned round-robin over the rows
(adapter_names; with 64 and B=32 every row has its own adapter), each on a model of its own so that
the plans its layers keep last from call to call; the same with Hugging Face PEFT's mixed batch
(adapter_names=); and the worst case for petkit's kept plans, 64 adapters with the routing shifted by
one row at every step (every step rebuilds them). Timing as in lora_overhead.py: one process, a warm-up round, then
rounds that run every variant once in rotating order; a ratio is the median over rounds of
variant / base from the same round.

    python benchmarks/mixed_decode.py              # full run (~ 5 minutes on 2 cores)
    python benchmarks/mixed_decode.py --quick      # smoke run
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing
sys.path.insert(0, str(HERE))

from lora_overhead import (_random_b, copy_petkit_to_peft, log, machine_info, machine_lines, paired_ratio,  # noqa: E402
                           time_variants, write_results)

import petkit  # noqa: E402
from petkit.models import load_model  # noqa: E402
from petkit.models.calls import cache_argument, find_cache  # noqa: E402

R, ALPHA = 16, 32
LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def petkit_model(base, n):
    cfg = petkit.LoraConfig(r=R, alpha=ALPHA, targets="all-linear")
    am = petkit.adapt(base, cfg, name="a0")
    for i in range(1, n):
        am.add(cfg, name=f"a{i}")
    assert len(am.state.modules["a0"]) == 210, len(am.state.modules["a0"])
    _random_b(am.named_parameters(), seed=1)
    return am.eval()


def peft_model(base, n):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=LINEARS)
    pm = get_peft_model(base, cfg, adapter_name="a0")
    for i in range(1, n):
        pm.add_adapter(f"a{i}", cfg)
    pm.set_adapter("a0")
    return pm.eval()


class Decoder:
    """A model's KV cache after prefilling the prompts; __call__ runs `steps` one-token steps, then crops back."""

    def __init__(self, model, prompts, steps, **kw):
        self.model, self.kw, self.steps = model, kw, steps
        self.argument = cache_argument((model.base if isinstance(model, petkit.AdaptedModel) else model).forward)
        g = torch.Generator().manual_seed(3)
        self.tokens = torch.randint(100, 40000, (prompts.shape[0], steps), generator=g)
        with torch.no_grad():
            self.cache = find_cache(model(input_ids=prompts, use_cache=True, **kw))
        self.length = prompts.shape[1]

    def __call__(self, rotate=False):
        with torch.no_grad():
            for t in range(self.steps):
                kw = self.kw
                if rotate:  # a new routing at every step (the worst case: every step rebuilds the plans)
                    names = kw["adapter_names"]
                    kw = {**kw, "adapter_names": names[t + 1:] + names[:t + 1]}
                out = self.model(input_ids=self.tokens[:, t:t + 1], use_cache=True, **{self.argument: self.cache}, **kw)
        self.cache.crop(-self.steps)  # back to the prompt
        return out.logits[:, -1]


def build(args):
    base = load_model("smollm2", "causal_lm").eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(100, 40000, (args.batch, args.prompt), generator=g)
    names = [f"a{i}" for i in range(args.adapters)]

    def rows(n):
        return [names[i % n] for i in range(args.batch)]

    pk = petkit_model(copy.deepcopy(base), args.adapters)
    pm = peft_model(copy.deepcopy(base), args.adapters)
    copy_petkit_to_peft(pk, pm, names)
    # Each routed variant has a petkit model of its own, so its layers' kept plans last from call to
    # call, as they do while a server's routing stays the same.
    pk_n = {args.adapters: pk}
    for n in (1, 8):
        pk_n[n] = petkit_model(copy.deepcopy(base), n)
        pk_n[n].load_state_dict({k: v for k, v in pk.state_dict().items() if ".deltas.a" in k
                                 and int(k.split(".deltas.a")[1].split(".")[0]) < n}, strict=False)

    d = {"base": Decoder(base, prompts, args.steps),
         "petkit 1 adapter (active, unmerged)": Decoder(pk_n[1], prompts, args.steps),
         "petkit 1 adapter (routed)": Decoder(pk_n[1], prompts, args.steps, adapter_names=rows(1))}
    for n in (8, args.adapters):
        d[f"petkit {n} adapters (routed)"] = Decoder(pk_n[n], prompts, args.steps, adapter_names=rows(n))
        d[f"PEFT {n} adapters (adapter_names)"] = Decoder(pm, prompts, args.steps, adapter_names=rows(n))
    shifted = Decoder(pk, prompts, args.steps, adapter_names=rows(args.adapters))
    d[f"petkit {args.adapters} adapters, a new routing every step"] = lambda: shifted(rotate=True)

    # The variants compute what they claim: routed rows = the same rows run with their adapter alone,
    # and petkit = PEFT on the same weights.
    first = {k: dec() for k, dec in d.items()}
    checks = {}
    with torch.no_grad():
        i = args.batch - 1
        key = f"petkit {args.adapters} adapters (routed)"
        pk.set_active(rows(args.adapters)[i])
        alone = Decoder(pk, prompts[i:i + 1], args.steps)
        alone.tokens = d[key].tokens[i:i + 1]
        checks["petkit routed row vs that row alone, maxabs logits"] = (first[key][i] - alone()[0]).abs().max().item()
        pk.set_active("a0")
    for n in (8, args.adapters):
        checks[f"petkit vs PEFT, {n} adapters, maxabs logits"] = (
            first[f"petkit {n} adapters (routed)"] - first[f"PEFT {n} adapters (adapter_names)"]).abs().max().item()
    checks["petkit 1 active vs 1 routed, maxabs logits"] = (
        first["petkit 1 adapter (active, unmerged)"] - first["petkit 1 adapter (routed)"]).abs().max().item()
    checks["petkit routed vs base, maxabs logits"] = (first[key] - first["base"]).abs().max().item()
    return d, checks


def render_md(res) -> str:
    m, s = res["machine"], res["settings"]
    lines = [
        "# Mixed-adapter decode steps: petkit vs Hugging Face PEFT (SmolLM2-135M, CPU)", "",
        *machine_lines(m),
        f"- {s['batch']} rows, prompts of {s['prompt']} random tokens prefilled; a timed call = {s['steps']} decode "
        f"steps of one token per row (KV cache, torch.no_grad), then the cache is cropped back",
        f"- LoRA r={R}, alpha={ALPHA} on all 210 linears; {s['adapters']} adapters resident in the routed models; "
        "rows get adapters round-robin",
        f"- timing: {s['warmup']} warm-up round(s) + {s['reps']} rounds, every variant once per round in rotating "
        f"order, wall clock, {m['torch_threads']} torch thread(s); total wall time {res['wall_seconds']:.0f} s",
        *(["- **--quick smoke run: the numbers below mean nothing**"] if s["quick"] else []),
        "", "## Time per decode step, as a ratio to the base model alone", "",
        "| variant | median ratio | [min, max] | median ms / step |", "|---|---|---|---|",
    ]
    for r in res["ratios"]:
        lines.append(f"| {r['variant']} | {r['median']:.3f} | [{r['min']:.2f}, {r['max']:.2f}] | {r['ms_per_step']:.1f} |")
    lines += ["", "## Correctness checks", ""] + [f"- {k}: {v:.2e}" for k, v in res["checks"].items()]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--adapters", type=int, default=64)
    ap.add_argument("--steps", type=int, default=None, help="decode steps per timed call (default 8; 2 with --quick)")
    ap.add_argument("--reps", type=int, default=None, help="timed rounds (default 7; 2 with --quick)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice; 1 is "
                    "far steadier when other processes share the cores)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    args.steps = args.steps or (2 if args.quick else 8)
    args.reps = args.reps or (2 if args.quick else 7)
    if args.quick:
        args.batch, args.prompt, args.adapters = 8, 8, 8

    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    torch.manual_seed(0)
    machine = machine_info()
    log("building models ...")
    variants, checks = build(args)
    for k, v in checks.items():
        log(f"  check {k}: {v:.2e}")
    times = time_variants(variants, args.reps, args.warmup)
    ratios = []
    for name in variants:
        med, lo, hi = paired_ratio(times, name, "base")
        ratios.append({"variant": name, "median": med, "min": lo, "max": hi,
                       "ms_per_step": statistics.median(times[name]) * 1000 / args.steps})
        log(f"  {name:40s} {med:6.3f}  [{lo:.2f}, {hi:.2f}]  {ratios[-1]['ms_per_step']:.1f} ms/step")
    machine["loadavg_end"] = os.getloadavg()
    res = {"machine": machine, "settings": {**vars(args), "r": R, "alpha": ALPHA},
           "times_ms": {n: [t * 1000 for t in ts] for n, ts in times.items()},
           "ratios": ratios, "checks": checks, "wall_seconds": time.perf_counter() - t_start}
    write_results(Path(args.out), "mixed_decode", res, render_md)


if __name__ == "__main__":
    main()
