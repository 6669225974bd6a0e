"""`petkit generate` and `petkit chat`: a causal LM with any adapter, tokens streamed to the terminal."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser, chat: bool) -> None:
    p.add_argument("--model", required=True, help="alias (smollm2) or a local Hugging Face folder of a causal LM")
    p.add_argument("--adapter", help="adapter folder (petkit or PEFT format) to put on the model")
    p.add_argument("--force", action="store_true", help="load an adapter saved for a different base")
    if not chat:
        p.add_argument("--prompt", help="the prompt (default: read from standard input)")
        p.add_argument("--raw", action="store_true", help="continue the prompt as plain text, without the chat template")
    p.add_argument("--system", help="a system message (chat template only)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) decodes greedily; above 0 samples")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)


def _sampling(args):
    from petkit.generation import Sampling
    return Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)


def generate(args) -> int:
    from petkit.generation import generate_text, load_generator, prompt_ids

    sampling = _sampling(args)
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    model, tokenizer = load_generator(args.model, args.adapter, force=args.force)
    ids = prompt_ids(tokenizer, prompt, chat=False if args.raw else None, system=args.system)
    generate_text(model, tokenizer, ids, sampling, out=sys.stdout)
    return 0


def chat(args) -> int:
    """One line per message from standard input; /reset forgets the conversation, /exit (or end of input) ends it."""
    from petkit.generation import Chat, load_generator

    sampling = _sampling(args)
    model, tokenizer = load_generator(args.model, args.adapter, force=args.force)
    conversation = Chat(model, tokenizer, sampling, system=args.system)
    interactive = sys.stdin.isatty()
    if interactive:
        print("chat: /reset forgets the conversation, /exit ends it", file=sys.stderr)
    while True:
        if interactive:
            print("you> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            return 0
        if line.strip() == "/reset":
            conversation.reset()
            continue
        if line.strip():
            conversation.reply(line.rstrip("\n"), out=sys.stdout)
