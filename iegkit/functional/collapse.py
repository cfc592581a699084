"""Collapse signals of pseudo labels: how concentrated they are, and how right on trusted data."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["collapse_threshold", "pseudo_label_accuracy", "pseudo_label_concentration"]


def pseudo_label_concentration(pseudo: Tensor) -> tuple[Tensor, Tensor]:
    """(top share, normalised marginal entropy) of a batch of pseudo labels (B, C).

    top share = max_c (1/B) #{i : argmax g_i = c}, in [1/C, 1] (1/C: balanced, 1: one class);
    marginal entropy = H(mean_i g_i) / log C, in [0, 1] (1: uniform marginal, 0: one class).
    Invariant to permuting the batch; both detached.
    """
    if pseudo.dim() != 2 or pseudo.shape[0] == 0:
        raise ValueError(f"pseudo: expected a non-empty (B, C) batch, got {tuple(pseudo.shape)}")
    pseudo = pseudo.detach()
    num_classes = pseudo.shape[-1]
    counts = torch.bincount(pseudo.argmax(-1), minlength=num_classes)
    top_share = counts.max().to(pseudo.dtype) / pseudo.shape[0]
    marginal = pseudo.mean(0)
    entropy = -(marginal * torch.log(marginal.clamp_min(torch.finfo(pseudo.dtype).tiny))).sum()
    normaliser = math.log(num_classes) if num_classes > 1 else 1.0
    return top_share, entropy / normaliser


def pseudo_label_accuracy(pseudo: Tensor, labels: Tensor) -> Tensor:
    """Fraction of rows whose pseudo label's argmax equals the (trusted) label."""
    if pseudo.shape[0] != labels.shape[0]:
        raise ValueError(f"labels: expected {pseudo.shape[0]} labels like pseudo, got "
                         f"{labels.shape[0]}")
    return (pseudo.detach().argmax(-1) == labels).to(torch.float32).mean()


def collapse_threshold(num_classes: int, factor: float = 2.0) -> float:
    """The top pseudo-label share above which the labels count as concentrating:
    ``factor`` x the uniform share 1/C, capped at the midpoint (1 + 1/C) / 2 between balanced and
    one class, so that it stays reachable when factor / C >= 1 (C = 2 with the default factor 2)."""
    if num_classes < 2:
        raise ValueError(f"num_classes: expected >= 2, got {num_classes}")
    if not factor > 1.0:
        raise ValueError(f"factor: expected > 1 (a multiple of the uniform share), got {factor}")
    return min(factor / num_classes, (1.0 + 1.0 / num_classes) / 2.0)
