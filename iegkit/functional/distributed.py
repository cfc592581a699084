"""Collectives of the look-ahead under torch.distributed (DDP's gradient hooks do not fire in the
torch.func / autograd.grad passes, so the look-ahead reduces its own gradients)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_reduce_mean", "all_reduce_sum", "world_size"]


def world_size(group: object | None) -> int:
    """The number of processes of ``group`` (1 without torch.distributed or a group)."""
    if group is None or not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size(group)


def all_reduce_mean(tensors: Sequence[Tensor], group: object | None) -> list[Tensor]:
    """The mean over processes of each tensor, in ONE bucketed all-reduce (flattened, then split)."""
    n = world_size(group)
    if n == 1 or not tensors:
        return list(tensors)
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat /= n
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()].view_as(t))
        start += t.numel()
    return out


def all_reduce_sum(value: Tensor, group: object | None) -> Tensor:
    """The sum over processes of a (small) tensor, e.g. the weights' normaliser."""
    if world_size(group) == 1:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM, group=group)
    return value
