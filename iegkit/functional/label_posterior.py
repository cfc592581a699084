"""Pseudo labels combined with the noisy given label: the posterior of the true class."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from iegkit.functional.losses import check_targets

__all__ = ["estimate_label_accuracy", "label_error_probability", "noisy_label_posterior",
           "transition_label_posterior"]

#: Halvings of [1/C, 1] in the maximum-likelihood solve: below float64 resolution.
_BISECTIONS = 60


def _check(name: str, probs: Tensor, labels: Tensor) -> int:
    if not isinstance(probs, Tensor) or probs.dim() != 2 or probs.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty (B, C) tensor, got shape "
                         f"{tuple(getattr(probs, 'shape', ()))}")
    num_classes = probs.shape[-1]
    if num_classes < 2:
        raise ValueError(f"{name}: expected C >= 2 classes, got {num_classes}")
    check_targets("labels", labels, probs.shape[0], num_classes)
    return num_classes


def posterior_unchecked(pseudo: Tensor, labels: Tensor, label_accuracy: float,
                        temperature: float) -> Tensor:
    """``noisy_label_posterior`` without argument checks (no device syncs): for parts whose
    inputs the pipeline has already validated."""
    num_classes = pseudo.shape[-1]
    onehot = torch.nn.functional.one_hot(labels.long(), num_classes).to(pseudo.dtype)
    other = (1.0 - label_accuracy) / (num_classes - 1)
    if other <= 0.0:
        return onehot
    # log P(y | c) - log P(y | c' != y): 0 off the label, log(r / other) on it
    boost = math.log(label_accuracy / other) / temperature
    tiny = torch.finfo(pseudo.dtype).tiny
    return torch.softmax(torch.log(pseudo.clamp_min(tiny)) + boost * onehot, dim=-1)


def noisy_label_posterior(pseudo: Tensor, labels: Tensor, label_accuracy: float, *,
                          temperature: float = 0.5) -> Tensor:
    """g'_ic = sharpen(Normalize_c(q_ic P(y_i | c)), tau) with q = unsharpen(g, tau) and the
    symmetric noise channel P(y | c) = r if c = y else (1 - r) / (C - 1).

    The pseudo label is the prior on the true class, the given label ``y`` the evidence: Bayes'
    rule under uniform label noise of accuracy r (Natarajan et al. 2013's symmetric channel).
    Sharpening commutes with the product, so g' = Normalize(g * P(y | .)^(1/tau)) exactly: the
    label's class gains a factor (r (C - 1) / (1 - r))^(1/tau) on g. r = 1/C makes the label carry
    no evidence (g' = g); r = 1 returns onehot(y). Rows stay on the simplex, and permuting the
    batch permutes the result.

    Shapes: pseudo (B, C) on the simplex, labels (B,) class indices -> (B, C), dtype of pseudo.
    """
    num_classes = _check("pseudo", pseudo, labels)
    if not 1.0 / num_classes <= label_accuracy <= 1.0:
        raise ValueError(f"label_accuracy: expected a value in [1/C, 1] = [{1.0 / num_classes:.4g}, "
                         f"1], got {label_accuracy}")
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    return posterior_unchecked(pseudo, labels, float(label_accuracy), temperature)


def accuracy_unchecked(probs: Tensor, labels: Tensor) -> float:
    """``estimate_label_accuracy`` without argument checks (one device-to-host copy)."""
    num_classes = probs.shape[-1]
    q = (probs.detach().gather(1, labels.long()[:, None]).squeeze(1)
         .to(device="cpu", dtype=torch.float64).clamp(0.0, 1.0))
    rest = (1.0 - q) / (num_classes - 1)
    slope = q - rest

    def score(r: float) -> float:  # d/dr of the log-likelihood: decreasing in r
        return float((slope / (rest + r * slope).clamp_min(1e-300)).sum())

    low, high = 1.0 / num_classes, 1.0
    if score(low) <= 0.0:  # flat (every q_i = 1/C) or falling from the start
        return low
    if score(high) >= 0.0:
        return high
    for _ in range(_BISECTIONS):
        middle = 0.5 * (low + high)
        if score(middle) > 0.0:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def estimate_label_accuracy(probs: Tensor, labels: Tensor) -> float:
    """r = argmax_{r in [1/C, 1]} sum_i log(q_i r + (1 - q_i)(1 - r) / (C - 1)), q_i = probs[i, y_i].

    The maximum-likelihood accuracy of the given labels under the symmetric channel of
    ``noisy_label_posterior``, with ``probs`` as the prior on the true class. The log-likelihood
    is concave in r, so its score is decreasing and bisection finds the maximum to float64
    resolution. The range stops at 1/C (a label is never evidence against its class). Where every
    q_i is 1/C the likelihood is flat and the answer is 1/C. Permutation invariant.
    """
    _check("probs", probs, labels)
    return accuracy_unchecked(probs, labels)


def transition_label_posterior(pseudo: Tensor, labels: Tensor, transition: Tensor, *,
                               temperature: float = 0.5) -> Tensor:
    """g'_ic = Normalize_c(g_ic T[c, y_i]^(1/tau)): the posterior of the true class under a
    class-conditional noise channel T[c, j] = P(given j | true c) (e.g. GLC's C_hat estimated from
    the trusted set, ``functional.estimate_transition``), where ``noisy_label_posterior`` assumes
    the symmetric channel (asymmetric and human noise break it). As there, sharpening commutes with
    the product: g' = sharpen(Normalize(q T[:, y]), tau) for q = unsharpen(g, tau). The symmetric
    channel of accuracy r gives ``noisy_label_posterior``; T = uniform rows leave g unchanged.

    A class c with T[c, y_i] = 0 gets probability 0; if every class does (an impossible label under
    T), the row keeps g. Shapes: pseudo (B, C), labels (B,), transition (C, C) -> (B, C).
    """
    num_classes = _check("pseudo", pseudo, labels)
    if transition.shape != (num_classes, num_classes):
        raise ValueError(f"transition: expected ({num_classes}, {num_classes}), got "
                         f"{tuple(transition.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    likelihood = transition.to(pseudo.dtype)[:, labels.long()].T  # (B, C): T[c, y_i]
    weighted = pseudo * likelihood.clamp_min(0.0) ** (1.0 / temperature)
    total = weighted.sum(-1, keepdim=True)
    return torch.where(total > 0, weighted / torch.where(total > 0, total, 1.0), pseudo)


def label_error_probability(probs: Tensor, labels: Tensor, *, transition: Tensor | None = None,
                            label_accuracy: float | None = None) -> Tensor:
    """P(true class != y_i | x_i, y_i) = 1 - g'_i[y_i], g' the posterior of the true class at
    temperature 1 (Bayes' rule, no sharpening: a calibrated probability, not a training target).

    ``probs`` (N, C): a model's estimate of the true class (e.g. the EMA teacher's softmax);
    exactly one channel: ``transition`` T[c, j] = P(given j | true c) (GLC's C_hat from the
    trusted set: ``transition_label_posterior``), or ``label_accuracy`` r, the symmetric channel
    (``noisy_label_posterior``; r from ``estimate_label_accuracy`` needs no trusted set).
    Returns (N,) in [0, 1], dtype of probs. Under T = identity (no noise) every label is right
    (0); permuting the rows permutes the result.
    """
    if (transition is None) == (label_accuracy is None):
        raise ValueError("transition, label_accuracy: expected exactly one of them, got "
                         + ("both" if transition is not None else "neither"))
    if transition is not None:
        posterior = transition_label_posterior(probs, labels, transition, temperature=1.0)
    else:
        posterior = noisy_label_posterior(probs, labels, float(label_accuracy), temperature=1.0)
    kept = posterior.gather(1, labels.long()[:, None]).squeeze(1)
    return (1.0 - kept).clamp(0.0, 1.0)
