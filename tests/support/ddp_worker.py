"""One training run of a tiny model, alone or as one rank under torchrun (used by test_distributed.py).

    python tests/support/ddp_worker.py OUT --family bert|llama|sft [--parallel ddp|fsdp] [--kill-at STEP] [--resume]
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/support/ddp_worker.py OUT ...

Rank 0 writes OUT/final.safetensors (the trained adapter and head) and OUT/result.json. With
--kill-at, rank 1 kills itself (SIGKILL) right after the checkpoint of that step.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import petkit  # noqa: E402
from petkit.data.batches import pad_batch  # noqa: E402
from petkit.testing import tiny_bert, tiny_llama  # noqa: E402
from petkit.train import TrainConfig, evaluate, train  # noqa: E402
from petkit.train.distributed import init_from_env, shutdown, world  # noqa: E402


class Examples(torch.utils.data.Dataset):
    """Random token sequences of uneven lengths (so shards hold different numbers of tokens)."""

    def __init__(self, n: int, lm: bool, seed: int, answer_only: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.rows = []
        for _ in range(n):
            ids = torch.randint(5, 50, (int(torch.randint(3, 12, (1,), generator=g)),), generator=g).tolist()
            label = ids if lm else int(torch.randint(0, 3, (1,), generator=g))
            if answer_only:  # SFT: the loss on the last two tokens only (the trainer then scores labelled positions alone)
                label = [-100] * (len(ids) - 2) + ids[-2:]
            self.rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": label})

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    def collate(self, rows):
        return pad_batch(rows, 0)


def frozen_share(model) -> float:
    """The fraction of the frozen weights' elements this process holds (1/N when sharded)."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in frozen)
    return local / sum(p.numel() for p in frozen)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--family", default="bert")
    parser.add_argument("--kill-at", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--parallel", default="ddp")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ranks = init_from_env()
    lm = args.family in ("llama", "sft")  # sft: a Llama trained on answer tokens only
    model = (tiny_llama if lm else tiny_bert)(dropout=0.0)
    torch.manual_seed(0)
    am = petkit.adapt(model, petkit.LoraConfig(r=2, targets="all-linear"))
    task = "causal_lm" if lm else "classification"
    cfg = TrainConfig(lr=5e-3, max_steps=6, batch_size=5, grad_accum=2, checkpoint_every=2,
                      eval_every_epoch=False, output_dir=str(args.out / "train"), parallel=args.parallel)

    def maybe_die(info):
        if info.step == args.kill_at and ranks.rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)

    sft = args.family == "sft"
    result = train(am, Examples(23, lm, seed=1, answer_only=sft), cfg, eval_data=Examples(9, lm, seed=2, answer_only=sft),
                   task=task, resume=args.resume, progress=False, on_step=maybe_die)
    metrics = evaluate(am, Examples(9, lm, seed=3, answer_only=sft), task, batch_size=2)
    if world().main:
        save_file({n: p.detach().contiguous() for n, p in am.named_parameters() if p.requires_grad},
                  args.out / "final.safetensors")
        (args.out / "result.json").write_text(json.dumps(
            {"world": ranks.size, "steps": result.steps, "frozen_share": frozen_share(am), "train_loss": result.train_loss,
             "eval": result.eval_metrics, "test": metrics, "resumed_from": str(result.resumed_from)}))
    shutdown()


if __name__ == "__main__":
    main()
