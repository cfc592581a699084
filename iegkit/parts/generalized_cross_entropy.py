"""GeneralizedCrossEntropy: the L_q loss on the given labels (Zhang & Sabuncu 2018), a baseline."""

from __future__ import annotations

from iegkit._core.context import StepContext
from iegkit._core.part import Contribution, PartBase
from iegkit.functional.robust_losses import generalized_cross_entropy

__all__ = ["GeneralizedCrossEntropy"]


class GeneralizedCrossEntropy(PartBase):
    """mean_i (1 - p_{y_i}(x_i)^q) / q on the training batch; q = 0.7 as in the paper's experiments.

    The truncated variant of the paper (pruning examples with p_y <= k) is not included.
    """

    def __init__(self, q: float = 0.7, *, loss_weight: float = 1.0,
                 name: str = "generalized_cross_entropy") -> None:
        if not 0.0 < q <= 1.0:
            raise ValueError(f"q: expected a value in (0, 1], got {q}")
        self.name = name
        self.q = q
        self.loss_weight = loss_weight

    def contribute(self, ctx: StepContext) -> Contribution:
        loss = generalized_cross_entropy(ctx.logits("input"), ctx.targets, self.q).mean()
        return Contribution(losses={"loss": self.loss_weight * loss})
