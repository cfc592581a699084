"""Pseudo labels from K views (IEG section 2.2.1, MixMatch's label guessing)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["guess_targets", "logit_norm", "sharpen"]


def logit_norm(logits: Tensor, eps: float = 1e-8) -> Tensor:
    """z / sqrt(mean(z^2) + eps) with ONE scalar RMS over the whole (B, C) chunk (official code's
    ``custom_ops.logit_norm``; not in the paper). Bounds the confidence of the softmax."""
    return logits / torch.sqrt(logits.square().mean() + eps)


def sharpen(probs: Tensor, temperature: float = 0.5) -> Tensor:
    """g_c = P_c^(1/tau) / sum_c' P_c'^(1/tau) (IEG section 2.2.1, tau = 0.5). Keeps the argmax."""
    if temperature <= 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    # in log space so that tiny probabilities do not underflow to 0/0
    return torch.softmax(torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny)) / temperature,
                         dim=-1)


def guess_targets(view_logits: Sequence[Tensor], temperature: float = 0.5, *,
                  normalize_logits: bool = True) -> Tensor:
    """g = sharpen((1/K) sum_k softmax(LN(z_k)), tau) over K views of the same batch.

    Args:
      view_logits: K tensors of shape (B, C) (official: K = 2, weak and strong view).
      temperature: tau (0.5).
      normalize_logits: the official per-view logit normalisation (``logit_norm``); False gives the
        paper's plain softmax average.

    Returns:
      (B, C) rows on the simplex. Not detached: callers detach where the official code does.
    """
    if len(view_logits) == 0:
        raise ValueError("view_logits: expected at least one view")
    shape = view_logits[0].shape
    for k, z in enumerate(view_logits):
        if z.shape != shape or z.dim() != 2:
            raise ValueError(f"view_logits[{k}]: expected shape {tuple(shape)} (B, C), got "
                             f"{tuple(z.shape)}")
    probs = torch.stack([
        torch.softmax(logit_norm(z) if normalize_logits else z, dim=-1) for z in view_logits
    ]).mean(dim=0)
    return sharpen(probs, temperature)
