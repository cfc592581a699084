"""CrossEntropy: the plain supervised term on the (noisy) training labels."""

from __future__ import annotations

import torch.nn.functional as F

from iegkit._core.context import StepContext
from iegkit._core.part import Contribution, PartBase

__all__ = ["CrossEntropy"]


class CrossEntropy(PartBase):
    """mean_i CE(onehot(y_i), f(x_i)) on the training batch: the "plain" baseline."""

    def __init__(self, *, loss_weight: float = 1.0, name: str = "cross_entropy") -> None:
        self.name = name
        self.loss_weight = loss_weight

    def contribute(self, ctx: StepContext) -> Contribution:
        loss = F.cross_entropy(ctx.logits("input"), ctx.targets)
        return Contribution(losses={"loss": self.loss_weight * loss})
