"""Label issues from the label posterior: the training labels a trained model says are more likely
wrong than right, given how noisy the labels are.

The flag is Bayes' decision P(true class != given | x, given) > 1/2, with the posterior of
``functional.label_error_probability``: the model's estimate of the true class (robust IEG's EMA
teacher, whose pseudo labels the method trains on) times the noise channel. The channel is where
the trusted set enters: GLC's C_hat (``recipes.glc_transition`` of a model trained on the noisy
labels, evaluated on the trusted images), which cleanlab's confident learning cannot use. Without
it, the symmetric channel of accuracy r is fitted to the model's own probabilities
(``estimate_label_accuracy``). A threshold of 1/2 on a calibrated probability needs no tuning;
where the true labels are known, ``diagnostics.detection_metrics`` scores the flags.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from iegkit.functional.label_posterior import (
    estimate_label_accuracy,
    label_error_probability,
    noisy_label_posterior,
    transition_label_posterior,
)

__all__ = ["LabelIssueFlags", "find_label_issues", "predicted_probabilities"]


@dataclass(frozen=True)
class LabelIssueFlags:
    """Per training example: ``flagged`` (bool), ``error_probability`` P(label wrong),
    ``suggested`` (the posterior's argmax); ``channel`` names the noise channel used and
    ``label_accuracy`` is r for the symmetric one (None under a transition)."""

    flagged: Tensor
    error_probability: Tensor
    suggested: Tensor
    channel: str
    label_accuracy: float | None


def find_label_issues(probs: Tensor, given_labels: Tensor, *, transition: Tensor | None = None,
                      label_accuracy: float | None = None, threshold: float = 0.5
                      ) -> LabelIssueFlags:
    """Flag the labels whose posterior probability of being wrong exceeds ``threshold``.

    Args:
      probs: (N, C) a trained model's softmax on the training inputs (``predicted_probabilities``
        under ``iegkit.evaluation_weights``: the weights the method deploys).
      given_labels: (N,) the noisy labels, any integer dtype.
      transition: (C, C) T[c, j] = P(given j | true c) from the trusted set (GLC's C_hat).
      label_accuracy: r of the symmetric channel; None with no transition estimates it from
        ``probs`` (the maximum-likelihood r of ``estimate_label_accuracy``).
      threshold: in (0, 1); 1/2 is Bayes' decision for equal costs of both errors.
    """
    if not isinstance(probs, Tensor) or probs.dim() != 2:
        raise ValueError(f"probs: expected an (N, C) tensor, got "
                         f"{type(probs).__name__} of shape {tuple(getattr(probs, 'shape', ()))}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold: expected a value in (0, 1), got {threshold}")
    if transition is not None and label_accuracy is not None:
        raise ValueError("transition, label_accuracy: expected at most one of them, got both")
    labels = torch.as_tensor(given_labels).to(probs.device)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"given_labels: expected integer class indices, got {labels.dtype}")
    labels = labels.long()
    probs = probs.detach()
    if transition is not None:
        transition = torch.as_tensor(transition).to(probs)
        error = label_error_probability(probs, labels, transition=transition)
        posterior = transition_label_posterior(probs, labels, transition, temperature=1.0)
        channel, accuracy = "transition", None
    else:
        accuracy = (estimate_label_accuracy(probs, labels) if label_accuracy is None
                    else float(label_accuracy))
        error = label_error_probability(probs, labels, label_accuracy=accuracy)
        posterior = noisy_label_posterior(probs, labels, accuracy, temperature=1.0)
        channel = "symmetric"
    return LabelIssueFlags(flagged=error > threshold, error_probability=error,
                           suggested=posterior.argmax(-1), channel=channel,
                           label_accuracy=accuracy)


@torch.no_grad()
def predicted_probabilities(model: torch.nn.Module, inputs: Tensor, *,
                            batch_size: int = 512) -> Tensor:
    """softmax(model(inputs)) in eval mode, in batches, float64 on the CPU; the model's mode is
    restored afterwards (evaluation_weights swaps the weights, not the mode)."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device  # inputs may be a Dataset read from disk
        return torch.cat([torch.softmax(model(inputs[i:i + batch_size].to(device)).double(),
                                        -1).cpu() for i in range(0, inputs.shape[0], batch_size)])
    finally:
        model.train(was_training)
