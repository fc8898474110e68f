"""Data-parallel helpers: every one is the identity in a single process.

Under torch.distributed each rank holds whole prompt groups; loss terms are divided by global normalisers
and gradients are summed over ranks, so an update equals the single-process update on the combined batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_sum(t: Tensor) -> Tensor:
    """Sum over ranks (identity in a single process)."""
    if rank_world()[1] > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


def all_reduce_grads(optimizer: torch.optim.Optimizer) -> None:
    """Sum gradients over ranks: every loss term is already divided by the global normaliser."""
    if rank_world()[1] == 1:
        return
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.requires_grad:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
