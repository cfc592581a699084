"""Reading and writing the learning rate of an optimizer's param groups (float or tensor lr)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor


def as_float(value: float | Tensor) -> float:
    return float(value.item()) if isinstance(value, Tensor) else float(value)


def set_group_lr(group: dict[str, Any], lr: float) -> None:
    if isinstance(group["lr"], Tensor):
        group["lr"].fill_(lr)  # a tensor lr (capturable / compiled optimizers) keeps its identity
    else:
        group["lr"] = lr


def scale_lrs(optimizer: torch.optim.Optimizer, factor: float) -> list[float]:
    """Multiply every group's lr by ``factor``; returns the lrs to give back (``restore_lrs``)."""
    saved = [as_float(group["lr"]) for group in optimizer.param_groups]
    for group, lr in zip(optimizer.param_groups, saved, strict=True):
        set_group_lr(group, lr * factor)
    return saved


def restore_lrs(optimizer: torch.optim.Optimizer, saved: list[float]) -> None:
    for group, lr in zip(optimizer.param_groups, saved, strict=True):
        set_group_lr(group, lr)


@contextmanager
def scaled_lrs(optimizer: torch.optim.Optimizer, factor: float) -> Iterator[None]:
    """Every group's lr times ``factor`` inside the block, given back on exit (also on error)."""
    if factor == 1.0:
        yield
        return
    saved = scale_lrs(optimizer, factor)
    try:
        yield
    finally:
        restore_lrs(optimizer, saved)
