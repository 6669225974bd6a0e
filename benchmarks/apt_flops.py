#!/usr/bin/env python
"""Extra forward FLOPs of APT vs deep prompts of the same length m, counted (not timed).

Counted with torch.utils.flop_counter.FlopCounterMode (matmuls and convolutions; element-wise ops
are not counted) with eager attention, so that attention's matmuls are counted too on one forward in no_grad, for the base model and the adapted one;
"extra" is the difference. FLOPs depend on shapes only, so the vision case uses a randomly
initialised ViT-B/16 (the shape of APT's and VPT's backbones; no weights are downloaded):

| model | input | deep prompts | APT |
|---|---|---|---|
| ViT-B/16 (random init), 224² image | 196 patches + [CLS] | VPT-deep: m tokens through every layer | m prompts per layer |
| MiniLM (all-MiniLM-L6-v2) | `--seq` tokens | P-tuning v2: m key/value prefixes per layer | m prompts per layer |

    .venv/bin/python benchmarks/apt_flops.py              # m = 50 (APT's default), 128 text tokens
    .venv/bin/python benchmarks/apt_flops.py --out /tmp/f

Writes `apt_flops.json` and `apt_flops.md` to `--out` (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import petkit


def flops(model, batch) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**batch)
    return counter.get_total_flops()


def compare(name: str, base, batch, m: int) -> dict:
    base.set_attn_implementation("eager")  # attention as matmuls, which the counter sees (CPU sdpa kernels it does not)
    plain = flops(base, batch)
    row = {"model": name, "m": m, "base_gflops": plain / 1e9}
    for label, config in (("deep_prompt", petkit.DeepPromptConfig(num_virtual_tokens=m)),
                          ("apt", petkit.AptConfig(num_virtual_tokens=m))):
        am = petkit.adapt(base, config)
        row[f"{label}_extra_gflops"] = (flops(am, batch) - plain) / 1e9
        am.delete("default")
    row["apt_over_deep"] = row["apt_extra_gflops"] / row["deep_prompt_extra_gflops"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=50)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    torch.manual_seed(0)
    from transformers import ViTConfig, ViTForImageClassification
    vit = ViTForImageClassification(ViTConfig(num_labels=10)).eval()  # ViT-B/16 shape, 224², random weights
    rows = [compare("ViT-B/16 (random init), 224²", vit, {"pixel_values": torch.randn(1, 3, 224, 224)}, args.m)]
    from petkit.models import load_model
    minilm = load_model("minilm", task="classification", num_labels=2).eval()
    ids = torch.randint(1000, 2000, (1, args.seq))
    rows.append(compare(f"MiniLM, {args.seq} tokens", minilm, {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                        args.m))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "apt_flops.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| model | m | base GFLOPs | deep prompts: extra GFLOPs | APT: extra GFLOPs | APT / deep |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['m']} | {r['base_gflops']:.2f} | {r['deep_prompt_extra_gflops']:.3f} | "
              f"{r['apt_extra_gflops']:.3f} | {r['apt_over_deep']:.2f} |" for r in rows]
    (args.out / "apt_flops.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
