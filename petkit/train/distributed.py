"""Data parallelism across processes with torch.distributed, as launched by ``torchrun``.

Every process (rank) holds the whole frozen base and the same adapter. Each global micro-batch of
the trainer's seeded order is cut into one contiguous shard per rank; PyTorch's
DistributedDataParallel averages the trainable parameters' gradients across ranks during backward
(frozen weights have no gradients, so nothing else travels). Each rank scales its loss by its share
of the micro-batch's loss terms (examples, or scored tokens for language models), so a step equals
the single-process step on the same global batch, uneven shards included.

The backend is gloo on CPU and nccl on GPUs. Outside torchrun (or with one process) every function
here is a no-op and ``world()`` is a world of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from petkit.core.errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that logs, shows progress and writes files."""
        return self.rank == 0

    def shard(self, indices: list[int]) -> list[int]:
        """This rank's contiguous part of a global micro-batch (sizes differ by at most one)."""
        base, extra = divmod(len(indices), self.size)
        start = self.rank * base + min(self.rank, extra)
        return indices[start : start + base + (self.rank < extra)]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of a list of numbers over all ranks (float64)."""
        if self.size == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, obj) -> list:
        """Every rank's obj, in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def world() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env() -> World:
    """Join the process group torchrun describes in the environment (no-op when not launched by it)."""
    if launched_by_torchrun() and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return world()


def shutdown() -> None:
    """Leave the process group cleanly. The barrier first matters: destroying the group while another
    rank is still in a collective aborts the process at exit (seen with gloo on CPU)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def prepare_model(model: nn.Module, named_params: list[tuple[str, nn.Parameter]], w: World) -> nn.Module:
    """Check that every rank loaded the same base, start every rank from rank 0's trainable values,
    and wrap the model in DistributedDataParallel (which reduces gradients of trainable parameters only)."""
    if w.size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    fingerprints = w.gather(_frozen_fingerprint(model))
    if len(set(fingerprints)) > 1:
        odd = [r for r, f in enumerate(fingerprints) if f != fingerprints[0]]
        raise ConfigError(f"ranks {odd} hold other frozen weights than rank 0: every process must load the same "
                          "base model (same files, same dtype) before training")
    with torch.no_grad():
        for _, p in named_params:
            dist.broadcast(p.data, src=0)
    # init_sync=False: DDP's own start-up broadcast would send every frozen weight too.
    return DistributedDataParallel(model, init_sync=False, forward_sync_buffers=False)


def _frozen_fingerprint(model: nn.Module) -> tuple:
    """Cheap identity of the frozen weights: names, shapes and a sum per tensor."""
    rows = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            rows.append((name, tuple(p.shape), round(float(p.detach().double().sum()), 6)))
    return tuple(rows)
