"""Noise-robust per-example losses of the baselines: GCE (Zhang & Sabuncu 2018) and SCE (Wang et al.
2019). Each maps logits (B, C) and given labels (B,) to per-example losses (B,)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["generalized_cross_entropy", "symmetric_cross_entropy"]


def generalized_cross_entropy(logits: Tensor, targets: Tensor, q: float = 0.7) -> Tensor:
    """L_q(f(x), y) = (1 - p_y(x)^q) / q (Zhang & Sabuncu, NeurIPS 2018, section 3.1,
    the L_q loss).

    q -> 0 is cross-entropy, q = 1 is MAE (up to a factor); the paper's experiments use q = 0.7.
    p_y^q is computed as exp(q log p_y), so a vanishing p_y gives a finite loss 1/q and gradient.
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"q: expected a value in (0, 1], got {q}")
    log_p = F.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    return (1.0 - torch.exp(q * log_p)) / q


def symmetric_cross_entropy(logits: Tensor, targets: Tensor, alpha: float = 0.1, beta: float = 1.0,
                            log_zero: float = -4.0) -> Tensor:
    """l_SL = alpha l_CE + beta l_RCE (Wang et al., ICCV 2019, section 3.2), per example.

    The reverse cross-entropy l_RCE = -sum_k p_k(x) log q_k with q the one-hot label and
    log 0 clipped to ``log_zero`` = A (the paper's A = -4): l_RCE = -A (1 - p_y(x)). CIFAR-10 in
    the paper: alpha = 0.1, beta = 1.0.
    """
    if alpha < 0 or beta < 0:
        raise ValueError(f"alpha, beta: expected >= 0, got {alpha}, {beta}")
    if log_zero >= 0:
        raise ValueError(f"log_zero: expected a negative clip A for log 0, got {log_zero}")
    log_p = F.log_softmax(logits, dim=-1)
    ce = -log_p.gather(-1, targets[:, None]).squeeze(-1)
    p_y = torch.exp(-ce)
    rce = -log_zero * (1.0 - p_y)
    return alpha * ce + beta * rce
