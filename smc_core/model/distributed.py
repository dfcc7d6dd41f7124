"""Data-parallel training with PyTorch's own launcher: the same loop on N processes.

``torchrun --nproc-per-node N`` (or ``smc train --nproc N``) starts N copies of one training
script; ``process_group()`` joins them (gloo on CPU, NCCL on GPUs) and the training loop in
``smc_core.model.train`` then splits every global batch across the ranks and lets
DistributedDataParallel average the gradients. Each rank reads the same data and draws the
same permutation (same seed), so no sampler or data exchange is needed.

Why the result matches one process: each rank's loss is its part of the global batch's
class-weighted sum, divided by the weight of the whole global batch and multiplied by N;
DDP's gradient average then yields exactly the gradient of the single-process loss (the
weighted mean over the global batch), up to the order in which floats are summed. The one
exception is dropout: each rank draws its own masks, so with ``lora_dropout > 0`` the runs
are statistically equivalent, not numerically.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """The rank that writes files and reports: rank 0."""
        return self.rank == 0


def current_world() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


@contextlib.contextmanager
def process_group():
    """Join the process group torchrun describes (WORLD_SIZE, RANK, MASTER_ADDR/PORT); a single
    process (no WORLD_SIZE, or 1) trains alone. The group is left when the block ends."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or current_world().distributed:
        yield current_world()
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield current_world()
    finally:
        dist.destroy_process_group()


def shard(batch: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's contiguous part of a global batch (parts differ in size by at most one)."""
    return batch.tensor_split(world.size)[world.rank] if world.distributed else batch


def gather_rows(local: torch.Tensor, total: int, world: World) -> torch.Tensor:
    """Every rank's ``shard`` of ``total`` rows put back together in order, on every rank."""
    if not world.distributed:
        return local
    sizes = [len(part) for part in torch.arange(total).tensor_split(world.size)]
    padded = local.new_zeros((max(sizes), *local.shape[1:]), device=_collective_device())
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)]).to(local.device)


def summed(value: float, world: World) -> float:
    """``value`` added over all ranks (a float64 all-reduce); itself on one process."""
    if not world.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return float(tensor.item())


def _collective_device() -> str:
    """NCCL exchanges GPU tensors only; gloo CPU tensors."""
    return "cuda" if dist.get_backend() == "nccl" else "cpu"
