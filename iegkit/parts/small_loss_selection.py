"""SmallLossSelection: cross-entropy on the small-loss share of each batch (Co-teaching's rule on
one network, MentorNet's predefined curriculum)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from iegkit._core.context import StepContext
from iegkit._core.part import Contribution, PartBase
from iegkit.functional.small_loss import forget_rate, small_loss_mask

__all__ = ["SmallLossSelection"]


class SmallLossSelection(PartBase):
    """sum_i m_i CE_i / sum_i m_i, m keeping the 1 - r(t) share of the batch with the smallest
    cross-entropy; r(t) = noise_rate * min(epoch / rampup_epochs, 1) (Han et al. 2018, T_k = 10).

    Args:
      noise_rate: tau, the share of wrong labels; estimate it from the trusted set with
        ``functional.noise_rate_from_transition(recipes.glc_transition(...))``.
      steps_per_epoch: to count epochs from the pipeline's step.
      rampup_epochs: T_k (10 in Co-teaching).
    """

    def __init__(self, noise_rate: float, steps_per_epoch: int, *, rampup_epochs: float = 10.0,
                 loss_weight: float = 1.0, name: str = "small_loss_selection") -> None:
        forget_rate(0.0, noise_rate, rampup_epochs)  # validates both
        if int(steps_per_epoch) != steps_per_epoch or steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch: expected an integer >= 1, got {steps_per_epoch!r}")
        self.name = name
        self.noise_rate = float(noise_rate)
        self.steps_per_epoch = int(steps_per_epoch)
        self.rampup_epochs = rampup_epochs
        self.loss_weight = loss_weight

    def contribute(self, ctx: StepContext) -> Contribution:
        losses = F.cross_entropy(ctx.logits("input"), ctx.targets, reduction="none")
        rate = forget_rate(ctx.step / self.steps_per_epoch, self.noise_rate, self.rampup_epochs)
        mask = small_loss_mask(losses, rate)
        loss = (mask * losses).sum() / mask.sum()
        return Contribution(losses={"loss": self.loss_weight * loss},
                            metrics={"drop_rate": torch.tensor(rate)})
