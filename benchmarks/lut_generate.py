"""Greedy generation speed and quality of SmolLM2-135M with low-bit weights through the T-MAC kernel.

One process, the same threads for all, variants interleaved round by round:
  fp32                 the float checkpoint (the GGUF's Q4_1 weights dequantised once by transformers)
  int4-g32 dequant     petkit.quantize(bits=4, scheme="int", group_size=32, embeddings=True): every
                       linear layer and the tied embedding/head at 4 bits, run by dequantising
  int4-g32 LUT         the same weights through the T-MAC kernel (petkit.quant.use_lut)
  int2-g32 LUT         2-bit weights through the kernel
  llama.cpp Q4_1       the GGUF file itself in llama.cpp (llama-cpp-python), when it is installed
Speed: decode tokens/s = (new tokens − 1) / (time to generate them − time to generate one), so the
prompt's prefill is left out; EOS is suppressed so every run decodes the same number of tokens.
Quality beside it: perplexity on the first test blocks of Tiny Shakespeare (petkit variants), the
share of the first 32 greedy tokens equal to fp32's, and each variant's text for one prompt.

    python benchmarks/lut_generate.py            # writes benchmarks/results/lut_generate.{json,md,png}
    python benchmarks/lut_generate.py --quick
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
PROMPTS = ["The capital of France is", "Once upon a time, in a small village,", "def fibonacci(n):"]


def petkit_variants(model):
    import petkit
    from petkit.quant import use_lut

    out = {"fp32": model}
    for bits, lut in ((4, False), (4, True), (2, True)):
        m = petkit.quantize(copy.deepcopy(model), bits=bits, scheme="int", group_size=32, embeddings=True)
        if lut:
            use_lut(m)
        out[f"int{bits}-g32 {'LUT' if lut else 'dequant'}"] = m
    return out


def hf_generate(model, tokenizer, eos):
    def run(prompt, n):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 suppress_tokens=[eos], pad_token_id=eos)
        return out[0, ids.shape[1]:].tolist()
    return run


def llama_cpp_generate(threads):
    """A greedy llama.cpp runner on the same GGUF file, or (None, why not)."""
    try:
        import llama_cpp
    except ImportError as exc:
        return None, f"llama-cpp-python is not installed ({exc})"
    from petkit.models.aliases import smollm2_gguf

    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def no_extra_buffers():  # ggml's AMX buffer type crashed with SIGILL here (notes/low-bit.md §8)
        params = defaults()
        params.use_extra_bufts = False
        return params

    llama_cpp.llama_cpp.llama_model_default_params = no_extra_buffers
    try:
        llm = llama_cpp.Llama(model_path=str(smollm2_gguf()), n_ctx=512, n_threads=threads, verbose=False)
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = defaults
    eos = llm.token_eos()

    def run(prompt, n):
        llm.reset()
        out = llm.create_completion(prompt, max_tokens=n, temperature=0.0, logit_bias={eos: -1e9})
        return llm.tokenize(out["choices"][0]["text"].encode(), add_bos=False, special=True)
    return run, None


def decode_rate(run, prompt, n) -> tuple[float, float]:
    start = time.perf_counter()
    run(prompt, 1)
    one = time.perf_counter() - start
    start = time.perf_counter()
    run(prompt, n)
    many = time.perf_counter() - start
    return (n - 1) / max(many - one, 1e-9), many


def perplexity(model, blocks, count) -> float:
    nll = tokens = 0.0
    with torch.no_grad():
        for i in range(min(count, len(blocks))):
            batch = blocks.collate([blocks[i]])
            logits = model(input_ids=batch["input_ids"]).logits[0, :-1]
            target = batch["input_ids"][0, 1:]
            nll += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
            tokens += len(target)
    return math.exp(nll / tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--eval-blocks", type=int, default=32)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.rounds, args.eval_blocks = 8, 1, 2
    torch.set_num_threads(args.threads)

    from petkit.data import lm_blocks, load_dataset
    from petkit.models import load_model, load_tokenizer

    tokenizer = load_tokenizer("smollm2")
    eos = tokenizer.eos_token_id
    models = petkit_variants(load_model("smollm2", task="causal_lm").eval())
    runners = {name: hf_generate(m, tokenizer, eos) for name, m in models.items()}
    llama, why_not = llama_cpp_generate(args.threads)
    if llama is not None:
        runners["llama.cpp Q4_1"] = llama
    for run in runners.values():  # warm-up: kernel build/load, first-call costs
        run(PROMPTS[0], 2)
    rates = {name: [] for name in runners}
    for r in range(args.rounds):
        names = list(runners)[r % len(runners):] + list(runners)[:r % len(runners)]
        for name in names:
            for prompt in PROMPTS:
                rates[name].append(decode_rate(runners[name], prompt, args.tokens)[0])
    blocks = lm_blocks(tokenizer, load_dataset("tiny_shakespeare").test, 128, drop_last=True)
    reference = runners["fp32"](PROMPTS[0], 32)
    rows = []
    for name, run in runners.items():
        tokens = run(PROMPTS[0], 32)
        rows.append({"variant": name, "decode_tok_s": statistics.median(rates[name]),
                     "agreement_with_fp32": sum(a == b for a, b in zip(tokens, reference)) / len(reference),
                     "ppl": perplexity(models[name], blocks, args.eval_blocks) if name in models else None,
                     "text": tokenizer.decode(tokens, skip_special_tokens=True)})
        print(rows[-1], flush=True)
    write(rows, args, why_not)


def write(rows, args, why_not) -> None:
    fp32 = next(r for r in rows if r["variant"] == "fp32")
    lines = [f"# SmolLM2-135M greedy decoding with low-bit weights ({args.threads} threads)", "",
             f"{args.tokens} new tokens per prompt, {len(PROMPTS)} prompts × {args.rounds} rounds, median decode rate "
             f"(prefill left out). Perplexity: first {args.eval_blocks} Tiny Shakespeare test blocks of 128 tokens.", ""]
    if why_not:
        lines += [f"llama.cpp: not measured: {why_not}.", ""]
    lines += ["| variant | decode tok/s | × fp32 | ppl | first 32 tokens = fp32 | text (first prompt) |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        ppl = f"{r['ppl']:.2f}" if r["ppl"] is not None else "—"
        text = " ".join(r["text"].split())[:80].replace("|", "\\|")
        lines.append(f"| {r['variant']} | {r['decode_tok_s']:.1f} | {r['decode_tok_s'] / fp32['decode_tok_s']:.2f} | "
                     f"{ppl} | {r['agreement_with_fp32']:.0%} | {text} |")
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "lut_generate.md").write_text("\n".join(lines) + "\n")
    (args.output / "lut_generate.json").write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                                                "llama_cpp": why_not or "measured", "rows": rows},
                                                               indent=2) + "\n")
    plot(rows, args.output / "lut_generate.png")
    print("\n".join(lines))


def plot(rows, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = [r["variant"] for r in rows]
    ax.barh(names, [r["decode_tok_s"] for r in rows], color="#4c72b0")
    ax.set_xlabel("greedy decode tokens/s (higher is better)")
    ax.invert_yaxis()
    for i, r in enumerate(rows):
        label = f"{r['decode_tok_s']:.0f}" + (f"  ppl {r['ppl']:.1f}" if r["ppl"] is not None else "")
        ax.text(r["decode_tok_s"], i, " " + label, va="center", fontsize=8)
    ax.set_title("SmolLM2-135M: low-bit weights through the T-MAC kernel")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
