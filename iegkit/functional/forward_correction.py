"""Forward loss correction (Patrini et al., CVPR 2017) and GLC's transition estimate from trusted
data (Hendrycks et al., NeurIPS 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["check_transition", "estimate_transition", "forward_corrected_cross_entropy",
           "noise_rate_from_transition", "updated_transition"]


def check_transition(transition: Tensor, num_classes: int | None = None) -> Tensor:
    """Raise a ValueError naming ``transition`` unless it is a (C, C) row-stochastic matrix."""
    if not isinstance(transition, Tensor):
        raise TypeError(f"transition: expected a (C, C) tensor, got {type(transition).__name__}")
    if transition.dim() != 2 or transition.shape[0] != transition.shape[1]:
        raise ValueError(f"transition: expected a square (C, C) matrix, got {tuple(transition.shape)}")
    if num_classes is not None and transition.shape[0] != num_classes:
        raise ValueError(f"transition: expected ({num_classes}, {num_classes}) for {num_classes} "
                         f"classes, got {tuple(transition.shape)}")
    if not bool(torch.isfinite(transition).all()) or bool((transition < 0).any()):
        raise ValueError("transition: entries must be finite and non-negative")
    rows = transition.sum(-1)
    if not torch.allclose(rows, torch.ones_like(rows), atol=1e-4):
        raise ValueError(f"transition: rows must sum to 1 (T[i, j] = P(noisy j | true i)), got row "
                         f"sums in [{float(rows.min()):.4f}, {float(rows.max()):.4f}]")
    return transition


def forward_corrected_cross_entropy(logits: Tensor, targets: Tensor, transition: Tensor) -> Tensor:
    """-log (p(x)^T T)_y~ per example (Patrini et al. 2017, section 3.1, "forward correction").

    T[i, j] = P(y~ = j | y = i); p = softmax(logits) models the clean posterior, p^T T the noisy
    one. T = I gives cross-entropy. Computed in log space (logsumexp over log p_i + log T_ij), so an
    exact zero in T or p stays finite where the noisy label is reachable.
    """
    log_p = F.log_softmax(logits, dim=-1)  # (B, C)
    log_t = torch.log(transition.to(log_p.dtype))[:, targets].T  # (B, C): log T[i, y~_b]
    return -torch.logsumexp(log_p + log_t, dim=-1)


def estimate_transition(probs: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """GLC's C_hat[i, :] = mean of p(y~ | x) over the trusted examples of true class i
    (Hendrycks et al. 2018, section 3), from a classifier trained on the noisy labels.

    probs (N, C): that classifier's softmax on the trusted inputs; labels (N,): their true labels.
    A class without trusted examples gets the identity row (no correction for it).
    """
    if probs.dim() != 2 or probs.shape[-1] != num_classes:
        raise ValueError(f"probs: expected shape (N, {num_classes}), got {tuple(probs.shape)}")
    if labels.shape != probs.shape[:1]:
        raise ValueError(f"labels: expected shape ({probs.shape[0]},), got {tuple(labels.shape)}")
    onehot = F.one_hot(labels.long(), num_classes).to(probs.dtype)  # (N, C)
    counts = onehot.sum(0)
    sums = onehot.T @ probs.detach()
    eye = torch.eye(num_classes, dtype=probs.dtype, device=probs.device)
    return torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], eye)


def noise_rate_from_transition(transition: Tensor, prior: Tensor | None = None) -> Tensor:
    """The share of wrong labels the matrix implies: 1 - sum_i prior_i T[i, i] (uniform prior by
    default), in [0, 1]; the tau of small-loss selection, estimated from the trusted set."""
    diag = torch.diagonal(transition)
    if prior is None:
        return (1.0 - diag.mean()).clamp(0.0, 1.0)
    return (1.0 - (prior.to(diag.dtype) * diag).sum()).clamp(0.0, 1.0)


def updated_transition(running: Tensor, seen: Tensor, probs: Tensor, labels: Tensor,
                       momentum: float) -> tuple[Tensor, Tensor]:
    """One step of the online variant's running C_hat (our extension of GLC, not in its paper):
    each row i present in the trusted batch moves to m C_hat[i] + (1 - m) mean_{y_p = i} p(x_p);
    a row seen for the first time takes the batch mean; absent rows stay. Returns (C_hat, seen).
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum: expected a value in [0, 1), got {momentum}")
    num_classes = running.shape[0]
    batch = estimate_transition(probs.to(running.dtype), labels, num_classes)
    present = torch.bincount(labels.long(), minlength=num_classes) > 0
    blended = torch.where(seen[:, None], momentum * running + (1.0 - momentum) * batch, batch)
    return torch.where(present[:, None], blended, running), seen | present
