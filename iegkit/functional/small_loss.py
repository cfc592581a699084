"""Small-loss selection (Co-teaching, Han et al. 2018; MentorNet's predefined curriculum, Jiang et
al. 2018) on one network."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["forget_rate", "small_loss_mask"]


def forget_rate(epoch: float, noise_rate: float, rampup_epochs: float = 10.0) -> float:
    """r(T) = tau min(T / T_k, 1): the share of each batch to drop (Co-teaching, Han et al. 2018,
    Algorithm 1: R(T) = 1 - min(T tau / T_k, tau) is the share kept; T_k = 10 epochs)."""
    if not 0.0 <= noise_rate <= 1.0:
        raise ValueError(f"noise_rate: expected a value in [0, 1], got {noise_rate}")
    if rampup_epochs < 0:
        raise ValueError(f"rampup_epochs: expected >= 0, got {rampup_epochs}")
    ramp = 1.0 if rampup_epochs == 0 else min(max(epoch, 0.0) / rampup_epochs, 1.0)
    return noise_rate * ramp


def small_loss_mask(losses: Tensor, drop_rate: float) -> Tensor:
    """1 for the ceil((1 - r) B) examples with the smallest loss, 0 for the rest (B,) (ties broken
    by position, so the mask is deterministic). At least one example is kept."""
    if not 0.0 <= drop_rate <= 1.0:
        raise ValueError(f"drop_rate: expected a value in [0, 1], got {drop_rate}")
    b = losses.shape[0]
    keep = max(1, math.ceil(round((1.0 - drop_rate) * b, 9))) if b else 0
    order = torch.sort(losses.detach(), stable=True).indices
    mask = torch.zeros(b, dtype=losses.dtype, device=losses.device)
    mask[order[:keep]] = 1.0
    return mask
