"""Many processes under torchrun: DDP setup, rank-0-only side effects, metric all-reduce, rank 0's
values broadcast.

`torchrun --nproc_per_node=N train-alexnet ...` sets RANK/WORLD_SIZE/LOCAL_RANK; without them a
run is a single process and everything here is a no-op. CUDA runs use NCCL, CPU runs gloo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device_type: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        # Metrics are all-reduced as small CPU tensors, so CUDA runs need gloo for CPU as well.
        dist.init_process_group("cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def all_sum(values: list[float], ctx: Dist) -> list[float]:
    """Element-wise sum over processes (loss sums, correct counts, image counts)."""
    if not ctx.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_from_main(tensor: torch.Tensor, ctx: Dist) -> None:
    """Overwrite `tensor` in place on every process with rank 0's values."""
    if ctx.enabled:
        dist.broadcast(tensor, 0)


def barrier(ctx: Dist) -> None:
    if ctx.enabled:
        dist.barrier()


def teardown(ctx: Dist) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
