"""Example weights from the meta-gradient (L2R, Ren et al. 2018 eq. 10; IEG section 2.1)."""

from __future__ import annotations

import torch
from torch import Tensor

from iegkit.functional.distributed import all_reduce_sum

__all__ = ["normalize_meta_weights", "weighted_loss"]

#: The official IEG/L2R code divides by sum + 1e-5 (docs/method.md, spec §1.6).
OFFICIAL_NORMALIZER_EPS = 1e-5


def normalize_meta_weights(weight_grad: Tensor, eps: float = OFFICIAL_NORMALIZER_EPS, *,
                           process_group: object | None = None) -> Tensor:
    """omega*_i = max(-dL_p/d omega_i, 0) / (sum_j max(-dL_p/d omega_j, 0) + eps).

    When every clipped value is 0 the result is all zeros (no fallback, as in the official code), so
    that step's weighted loss contributes nothing. With ``eps > 0`` the weights sum to slightly less
    than 1; ``eps=0`` gives an exact sum of 1 (or all zeros).

    Shape: (B,) -> (B,), non-negative, detached. With a ``process_group`` the sum runs over every
    process's batch (one scalar all-reduce): the weights of one process on the concatenated batch.
    """
    clipped = torch.clamp(-weight_grad.detach(), min=0.0)
    total = all_reduce_sum(clipped.sum(), process_group)
    if eps == 0.0:
        return torch.where(total > 0, clipped / torch.where(total > 0, total, 1.0), clipped)
    return clipped / (total + eps)


def weighted_loss(weights: Tensor, losses: Tensor, scale: float = 1) -> Tensor:
    """L_omega = sum_i omega_i l_i (L2R eq. 4; IEG eq. 2), times ``scale`` (the world size under
    DDP, whose gradient average then gives one process's step on the concatenated batch).

    Shape: weights (B,), losses (B,) -> scalar; the gradient flows through both as given (the meta
    weights are detached by ``normalize_meta_weights``).
    """
    if weights.shape != losses.shape:
        raise ValueError(f"weights: expected shape {tuple(losses.shape)} like the per-example "
                         f"losses, got {tuple(weights.shape)}")
    return (weights * losses).sum() * scale
