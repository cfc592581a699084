"""TrustedCrossEntropy: cross-entropy on the trusted (probe) batch, as a training term."""

from __future__ import annotations

import torch.nn.functional as F

from iegkit._core.context import StepContext
from iegkit._core.part import Contribution, PartBase

__all__ = ["TrustedCrossEntropy"]


class TrustedCrossEntropy(PartBase):
    """loss_weight * mean CE(f(x_p), y_p) on the probe batch: GLC's plain loss on the trusted
    examples (Hendrycks et al. 2018), plain+'s trusted images, and the "trusted only" floor.

    The probe logits are forwarded once per step (shared with any other part that reads them), with
    BatchNorm on the probe batch's statistics and its running statistics left alone.
    """

    needs_probe = True

    def __init__(self, *, loss_weight: float = 1.0, name: str = "trusted_cross_entropy") -> None:
        if loss_weight < 0:
            raise ValueError(f"loss_weight: expected >= 0, got {loss_weight}")
        self.name = name
        self.loss_weight = loss_weight

    def contribute(self, ctx: StepContext) -> Contribution:
        loss = F.cross_entropy(ctx.logits("probe"), ctx.probe_targets)
        return Contribution(losses={"loss": self.loss_weight * loss})
