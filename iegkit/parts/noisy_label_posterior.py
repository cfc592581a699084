"""NoisyLabelPosterior: let the given label vote on the pseudo label, by its estimated accuracy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from iegkit._core import keys
from iegkit._core.context import StepContext
from iegkit._core.part import Contribution, PartBase
from iegkit.functional.collapse import pseudo_label_concentration
from iegkit.functional.distribution_alignment import unsharpen
from iegkit.functional.label_posterior import estimate_label_accuracy, noisy_label_posterior

__all__ = ["NoisyLabelPosterior"]


class NoisyLabelPosterior(PartBase):
    """Refines ``keys.PSEUDO_TARGETS`` into the posterior of the true class given the pseudo label
    (prior) and the noisy given label (evidence): ``noisy_label_posterior(g, y, r, tau)``.

    The pseudo labels of IEG ignore the given label, so where the labels are better than the
    model's guesses (40% noise on a small model: about 64% vs 55% right on CIFAR-10 cpu10k) the
    unlabeled term trains on the worse of the two. Under symmetric noise Bayes' rule weighs the two
    by their reliability: a label of accuracy r multiplies its class's odds by r (C - 1) / (1 - r),
    16x at r = 0.64 and 3.5x at r = 0.28 for C = 10. r is not given by the user: it is the
    maximum-likelihood accuracy of the batch's labels under the pseudo labeler's (unsharpened)
    predictions (``estimate_label_accuracy``), smoothed over steps with ``momentum`` and updated
    after each optimizer step (a step that fails changes nothing); the first step's estimate sets
    it. Place it after ``DistributionAlignment`` so that the prior is the aligned one.

    The teacher that makes the pseudo labels is also trained on these labels, so the estimate is
    biased upward once it fits them; that bias moves the targets toward the given labels, that is,
    toward plain training. The estimate is per process under DDP.

    Args:
      temperature: the pseudo labeler's sharpening tau (0.5), to recover its predictions exactly.
      momentum: of the running label-accuracy estimate (0.99, about the last 100 batches).
    """

    requires = ()
    refines = (keys.PSEUDO_TARGETS,)

    def __init__(self, *, temperature: float = 0.5, momentum: float = 0.99,
                 name: str = "noisy_label_posterior") -> None:
        if temperature <= 0:
            raise ValueError(f"temperature: expected > 0, got {temperature}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum: expected a value in [0, 1), got {momentum}")
        self.name = name
        self.temperature = temperature
        self.momentum = momentum
        self.label_accuracy: float | None = None
        self._pending: float | None = None

    def contribute(self, ctx: StepContext) -> Contribution:
        pseudo = ctx.get(keys.PSEUDO_TARGETS)
        batch_estimate = estimate_label_accuracy(unsharpen(pseudo, self.temperature), ctx.targets)
        self._pending = batch_estimate
        accuracy = batch_estimate if self.label_accuracy is None else self.label_accuracy
        posterior = noisy_label_posterior(pseudo, ctx.targets, accuracy,
                                          temperature=self.temperature)
        top_share, entropy = pseudo_label_concentration(posterior)
        return Contribution(
            values={keys.PSEUDO_TARGETS: posterior},
            metrics={"label_accuracy": torch.tensor(accuracy, dtype=torch.float32),
                     "batch_label_accuracy": torch.tensor(batch_estimate, dtype=torch.float32),
                     "top_share": top_share, "marginal_entropy": entropy},
        )

    def after_optimizer_step(self, step: int) -> None:
        if self._pending is not None:
            self.label_accuracy = (self._pending if self.label_accuracy is None else
                                   self.momentum * self.label_accuracy
                                   + (1.0 - self.momentum) * self._pending)
            self._pending = None

    def state_dict(self) -> dict[str, Any]:
        return {"label_accuracy": self.label_accuracy}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state) != {"label_accuracy"}:
            raise ValueError(f"state: expected key 'label_accuracy', got {sorted(state)}")
        value = state["label_accuracy"]
        if value is not None and not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"state: label_accuracy must be None or in [0, 1], got {value}")
        self.label_accuracy = None if value is None else float(value)
