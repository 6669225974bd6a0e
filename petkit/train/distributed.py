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

import hashlib
import os
from collections.abc import Callable
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


def prepare_model(model: nn.Module, named_params: list[tuple[str, nn.Parameter]], w: World,
                  parallel: str = "ddp") -> tuple[nn.Module, Callable[[], None]]:
    """Make a model ready to train on every rank: returns (the module to call, what to run after each
    step's backward passes).

    Every rank must hold the same frozen base (checked) and starts from rank 0's trainable values.
    ``ddp``: PyTorch DistributedDataParallel, which averages the trainable parameters' gradients
    during backward. ``fsdp``: FSDP2 ``fully_shard`` on every transformer layer and the whole model
    shards the frozen weights (each rank keeps 1/N, gathering a layer's weights only while it runs);
    the trainable parameters are left out of the sharding (replicated, small) and their gradients
    averaged after backward. The model is modified in place and stays sharded after training.
    """
    if w.size == 1:
        return model, _nothing
    fingerprints = w.gather(_frozen_fingerprint(model))
    if len(set(fingerprints)) > 1:
        odd = [r for r, f in enumerate(fingerprints) if f != fingerprints[0]]
        raise ConfigError(f"ranks {odd} hold other frozen weights than rank 0: every process must load the same "
                          "base model (same files, same dtype) before training")
    with torch.no_grad():
        for _, p in named_params:
            dist.broadcast(p.data, src=0)
    if parallel == "fsdp":
        return _shard_frozen(model, {p for _, p in named_params}), lambda: _average_gradients(named_params, w)
    from torch.nn.parallel import DistributedDataParallel
    # init_sync=False: DDP's own start-up broadcast would send every frozen weight too.
    return DistributedDataParallel(model, init_sync=False, forward_sync_buffers=False), _nothing


def _shard_frozen(model: nn.Module, trainable: set) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    from petkit.models.structure import layer_stacks
    for _, stack in layer_stacks(model):
        for layer in stack:
            fully_shard(layer, ignored_params=trainable)
    # The root too gives its weights back after each forward (FSDP's default keeps them, expecting
    # the backward to need them at once): the point here is the smallest resident base.
    fully_shard(model, ignored_params=trainable, reshard_after_forward=True)
    return model


def _average_gradients(named_params, w: World) -> None:
    for _, p in named_params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= w.size


def _nothing() -> None:
    return None


def _frozen_fingerprint(model: nn.Module) -> str:
    """Identity of the frozen weights: names, shapes and the sum of every tensor, hashed."""
    rows = [(name, tuple(p.shape), round(float(p.detach().double().sum()), 6))
            for name, p in model.named_parameters() if not p.requires_grad]
    return hashlib.sha256(repr(rows).encode()).hexdigest()
