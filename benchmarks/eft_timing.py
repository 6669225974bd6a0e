"""What EFT decoding costs in time, beside what it costs in large-model passes (used by eft_smollm2.py).

Greedy decoding of the same prompts by: the large base alone, the small fine-tune alone, cached EFT
(three models, one token each per step: the baseline), and speculative EFT at several block sizes k.
One process, one torch thread; a short warm-up, then rounds in which every variant decodes every prompt
once, the order rotating from round to round. Each variant's wall clock (time.perf_counter) and CPU
time (time.process_time: robust to other load on a shared machine) are summed over the prompts; a
ratio is the median over rounds of variant / cached EFT *from the same round*.

Besides time: large-model passes per token, the share of drafted tokens accepted, every model's
forward calls and tokens read per generated token (counted by hooks in one untimed run; the prompt's
tokens left out), and whether the speculative output equals cached EFT's token for token. And what a
block costs: the large model's CPU time for one cached forward over m tokens, against m = 1.
"""

from __future__ import annotations

import os
import statistics
import time

import torch
from torch import nn

from petkit.compose import EFT
from petkit.models.calls import cache_argument, find_cache

BASELINE = "EFT cached"


@torch.no_grad()
def greedy_alone(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """One model's cached greedy decoding: the same incremental reading as cached EFT, one model."""
    argument, cache, new = cache_argument(model.forward), None, ids
    for _ in range(new_tokens):
        out = model(input_ids=new, use_cache=True, **{argument: cache})
        cache, new = find_cache(out), out.logits[:, -1:].argmax(-1)
        ids = torch.cat([ids, new], dim=1)
    return ids


def variants(eft: EFT, blocks) -> dict:
    """name -> fn(ids, new_tokens) returning (ids, SpeculativeStats or None)."""
    out = {"large base alone": lambda ids, n: (greedy_alone(eft.large, ids, n), None),
           "small fine-tuned alone": lambda ids, n: (greedy_alone(eft.small_ft, ids, n), None),
           BASELINE: lambda ids, n: (eft.generate(ids, n), None)}
    for k in blocks:
        out[f"EFT speculative k={k}"] = lambda ids, n, k=k: eft.speculative_generate(ids, n, k=k)
    return out


class ForwardCounter:
    """Forward calls of each model and the tokens they read, by a pre-hook (removed by close())."""

    def __init__(self, models: dict):
        self.calls, self.tokens = dict.fromkeys(models, 0), dict.fromkeys(models, 0)
        self.handles = [m.register_forward_pre_hook(lambda _, args, kwargs, name=name: self._count(name, kwargs),
                                                    with_kwargs=True) for name, m in models.items()]

    def _count(self, name, kwargs):
        self.calls[name] += 1
        self.tokens[name] += kwargs["input_ids"].shape[1]

    def close(self):
        for handle in self.handles:
            handle.remove()


def decoding_costs(eft: EFT, runs: dict, prompts: list, new_tokens: int) -> dict:
    """One untimed run of every variant: passes, acceptance, forwards per token, equality with cached EFT."""
    models = {"large base": eft.large, "small base": eft.small_base, "small fine-tuned": eft.small_ft}
    reference = [eft.generate(ids, new_tokens) for ids in prompts]
    costs = {}
    for name, run in runs.items():
        counter = ForwardCounter(models)
        outputs, drafted, accepted, prompt_tokens = [], 0, 0, dict.fromkeys(models, 0)
        for ids in prompts:
            calls = dict(counter.calls)
            out, stats = run(ids, new_tokens)
            outputs.append(out)
            drafted, accepted = drafted + (stats.drafted if stats else 0), accepted + (stats.accepted if stats else 0)
            for m in models:  # every model that ran read the prompt once
                prompt_tokens[m] += ids.shape[1] * (counter.calls[m] > calls[m])
        counter.close()
        tokens = len(prompts) * new_tokens
        costs[name] = {"forwards_per_token": {m: c / tokens for m, c in counter.calls.items()},
                       "tokens_read_per_token": {m: (c - prompt_tokens[m]) / tokens for m, c in counter.tokens.items()},
                       "large_passes_per_token": counter.calls["large base"] / tokens,
                       "acceptance": accepted / drafted if drafted else None,
                       "equals_cached_eft": all(torch.equal(a, b) for a, b in zip(outputs, reference))}
    return costs


def time_rounds(runs: dict, prompts: list, new_tokens: int, rounds: int) -> dict:
    """name -> {"wall_s": [...], "cpu_s": [...]}, one entry a round; a warm-up of a few tokens first."""
    names = list(runs)
    for name in names:
        runs[name](prompts[0], 4)
    times = {name: {"wall_s": [], "cpu_s": []} for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            wall, cpu = time.perf_counter(), time.process_time()
            for ids in prompts:
                runs[name](ids, new_tokens)
            times[name]["wall_s"].append(time.perf_counter() - wall)
            times[name]["cpu_s"].append(time.process_time() - cpu)
        print(f"  timing round {r + 1}/{rounds}", flush=True)
    return times


@torch.no_grad()
def block_cost(model: nn.Module, ids: torch.Tensor, sizes, repeats: int = 5) -> dict:
    """CPU time of one cached forward over m new tokens (after the prompt) / the same for m = 1,
    median over repeats (sizes interleaved within each repeat)."""
    argument, times = cache_argument(model.forward), {m: [] for m in sizes}
    block = ids[:, -1:].repeat(1, max(sizes))
    for _ in range(repeats):
        for m in sizes:
            cache = find_cache(model(input_ids=ids, use_cache=True))
            start = time.process_time()
            model(input_ids=block[:, :m], use_cache=True, **{argument: cache})
            times[m].append(time.process_time() - start)
    one = statistics.median(times[1])
    return {str(m): statistics.median(t) / one for m, t in times.items()}


def paired(numerator: list, denominator: list) -> dict:
    ratios = [a / b for a, b in zip(numerator, denominator)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def timing(eft: EFT, prompts: list, new_tokens: int, rounds: int, blocks=(1, 2, 4, 8)) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = variants(eft, blocks)
        costs = decoding_costs(eft, runs, prompts, new_tokens)
        load_start = os.getloadavg()
        times = time_rounds(runs, prompts, new_tokens, rounds)
        blocks_cost = block_cost(eft.large, prompts[0], sorted({1, *(k + 1 for k in blocks)}))
    finally:
        torch.set_num_threads(threads)
    tokens = len(prompts) * new_tokens
    rows = {}
    for name, t in times.items():
        rows[name] = {**costs[name], **t,
                      "tokens_per_s": tokens / statistics.median(t["wall_s"]),
                      "tokens_per_cpu_s": tokens / statistics.median(t["cpu_s"]),
                      "wall_vs_cached_eft": paired(t["wall_s"], times[BASELINE]["wall_s"]),
                      "cpu_vs_cached_eft": paired(t["cpu_s"], times[BASELINE]["cpu_s"])}
    return {"threads": 1, "rounds": rounds, "prompts": len(prompts), "new_tokens": new_tokens,
            "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "variants": rows,
            "large_forward_cost_by_tokens": blocks_cost}


def timing_lines(t: dict) -> list[str]:
    """The timing section of eft.md."""
    v = t["variants"]
    lines = [f"## Decoding time: cached EFT, speculative EFT, single models (greedy, {t['prompts']} prompts × "
             f"{t['new_tokens']} tokens, 1 torch thread)", "",
             f"{t['rounds']} interleaved rounds in one process (order rotating); ratios are medians over rounds of "
             f"variant / cached EFT from the same round, [min, max] over rounds; tokens/s from the median round. "
             f"Load average (1 min) {t['loadavg_start'][0]:.1f} at the start, {t['loadavg_end'][0]:.1f} at the end "
             "on 2 cores shared with other work: the CPU-time columns are the ones to read. Forwards and tokens "
             "read are per generated token (large, small base, small fine-tuned; the prompt left out).", "",
             "| decoding | tokens/s (wall) | tokens/CPU-s | large passes / token | acceptance | forwards / token | "
             "tokens read / token | wall / cached EFT | CPU time / cached EFT | == cached EFT |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in v.items():
        acceptance = "" if row["acceptance"] is None else f"{row['acceptance']:.2f}"
        calls, read = (", ".join(f"{x:.2f}" for x in row[key].values())
                       for key in ("forwards_per_token", "tokens_read_per_token"))
        wall, cpu = row["wall_vs_cached_eft"], row["cpu_vs_cached_eft"]
        same = "" if name.endswith("alone") else str(row["equals_cached_eft"])
        lines.append(f"| {name} | {row['tokens_per_s']:.1f} | {row['tokens_per_cpu_s']:.1f} | "
                     f"{row['large_passes_per_token']:.2f} | {acceptance} | {calls} | {read} | "
                     f"{wall['median']:.2f} [{wall['min']:.2f}, {wall['max']:.2f}] | "
                     f"{cpu['median']:.2f} [{cpu['min']:.2f}, {cpu['max']:.2f}] | {same} |")
    small, large = (statistics.median(v[f"{m} alone"]["cpu_s"]) for m in ("small fine-tuned", "large base"))
    best = min((n for n in v if "speculative" in n), key=lambda n: v[n]["cpu_vs_cached_eft"]["median"])
    cost = ", ".join(f"{m} tokens {c:.2f}" for m, c in t["large_forward_cost_by_tokens"].items())
    lines += ["", f"One small-model decoding step costs {small / large:.2f} of a large-model step here (CPU time of "
              "the single-model rows; the 6-of-30-layer small model keeps the large model's 49k-token embedding "
              "and output head). One cached large-model forward over m new tokens, in CPU time relative to "
              f"m = 1 (median of 5): {cost}. Fastest speculative setting: {best}, "
              f"{v[best]['cpu_vs_cached_eft']['median']:.2f}× the CPU time of cached EFT "
              f"({v[best]['wall_vs_cached_eft']['median']:.2f}× wall)."]
    return lines
