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

    ``start_step``: the term is off (no loss, no probe forward) before this step. The online
    forward correction needs it: a model trained on the trusted images predicts their clean labels,
    so the C_hat it estimates from them collapses to the identity.
    """

    needs_probe = True

    def __init__(self, *, loss_weight: float = 1.0, start_step: int = 0,
                 name: str = "trusted_cross_entropy") -> None:
        if loss_weight < 0:
            raise ValueError(f"loss_weight: expected >= 0, got {loss_weight}")
        if isinstance(start_step, bool) or int(start_step) != start_step or start_step < 0:
            raise ValueError(f"start_step: expected an integer >= 0, got {start_step!r}")
        self.name = name
        self.loss_weight = loss_weight
        self.start_step = int(start_step)

    def contribute(self, ctx: StepContext) -> Contribution:
        if ctx.step < self.start_step:
            return Contribution()
        loss = F.cross_entropy(ctx.logits("probe"), ctx.probe_targets)
        return Contribution(losses={"loss": self.loss_weight * loss})
