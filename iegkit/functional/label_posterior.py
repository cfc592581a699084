"""Pseudo labels combined with the noisy given label: the posterior of the true class."""

from __future__ import annotations

import torch
from torch import Tensor

from iegkit.functional.losses import check_targets

__all__ = ["estimate_label_accuracy", "noisy_label_posterior"]


def _check(probs: Tensor, labels: Tensor) -> int:
    if probs.dim() != 2 or probs.shape[0] == 0:
        raise ValueError(f"probs: expected a non-empty (B, C) tensor, got shape {tuple(probs.shape)}")
    num_classes = probs.shape[-1]
    if num_classes < 2:
        raise ValueError(f"probs: expected C >= 2 classes, got {num_classes}")
    check_targets("labels", labels, probs.shape[0], num_classes)
    return num_classes


def _check_accuracy(label_accuracy: float, num_classes: int) -> None:
    if not 1.0 / num_classes <= label_accuracy <= 1.0:
        raise ValueError(f"label_accuracy: expected a value in [1/C, 1] = [{1.0 / num_classes:.4g}, "
                         f"1], got {label_accuracy}")


def noisy_label_posterior(pseudo: Tensor, labels: Tensor, label_accuracy: float, *,
                          temperature: float = 0.5) -> Tensor:
    """g'_ic = sharpen(Normalize_c(q_ic P(y_i | c)), tau) with q = unsharpen(g, tau) and the
    symmetric noise channel P(y | c) = r if c = y else (1 - r) / (C - 1).

    The pseudo label is the prior on the true class, the given label ``y`` the evidence: Bayes'
    rule under uniform label noise of accuracy r (Natarajan et al. 2013's symmetric channel).
    Sharpening commutes with the product, so g' = Normalize(g * P(y | .)^(1/tau)) exactly. r = 1/C
    makes the label carry no evidence (g' = g); r -> 1 returns onehot(y). Rows stay on the simplex,
    and permuting the batch permutes the result.

    Shapes: pseudo (B, C) on the simplex, labels (B,) class indices -> (B, C).
    """
    num_classes = _check(pseudo, labels)
    _check_accuracy(label_accuracy, num_classes)
    if temperature <= 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    tiny = torch.finfo(pseudo.dtype).tiny
    other = (1.0 - label_accuracy) / (num_classes - 1)
    # log P(y | c) / P(y | c != y): 0 off the label, log(r / other) on it (inf when r = 1).
    log_ratio = torch.log(torch.tensor(label_accuracy / other if other > 0 else float("inf"),
                                       dtype=pseudo.dtype, device=pseudo.device))
    onehot = torch.nn.functional.one_hot(labels.long(), num_classes).to(pseudo.dtype)
    if other == 0:
        return onehot
    return torch.softmax(torch.log(pseudo.clamp_min(tiny)) + onehot * log_ratio / temperature,
                         dim=-1)


def estimate_label_accuracy(probs: Tensor, labels: Tensor, *, iterations: int = 50) -> float:
    """r = argmax_r sum_i log(q_i r + (1 - q_i)(1 - r) / (C - 1)), q_i = probs[i, y_i], on [1/C, 1].

    The maximum-likelihood accuracy of the given labels under the symmetric channel of
    ``noisy_label_posterior``, with ``probs`` as the prior on the true class. The log-likelihood
    is concave in r; EM (r <- mean_i posterior_i(y_i)) climbs it monotonically from r = 1/2.
    Values below 1/C (labels that are evidence against their class) are clipped to 1/C: the
    channel never turns a label against itself. Permutation invariant.
    """
    num_classes = _check(probs, labels)
    if int(iterations) != iterations or iterations < 1:
        raise ValueError(f"iterations: expected an integer >= 1, got {iterations}")
    q = probs.detach().to(torch.float64).gather(1, labels.long()[:, None]).squeeze(1).clamp(0.0, 1.0)
    rest = (1.0 - q) / (num_classes - 1)
    accuracy = torch.tensor(0.5, dtype=torch.float64, device=q.device)
    for _ in range(int(iterations)):
        on_label = q * accuracy
        accuracy = (on_label / (on_label + rest * (1.0 - accuracy)).clamp_min(1e-300)).mean()
    return float(accuracy.clamp(1.0 / num_classes, 1.0))
