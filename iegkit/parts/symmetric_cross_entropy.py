"""SymmetricCrossEntropy: alpha CE + beta reverse CE on the given labels (Wang et al. 2019)."""

from __future__ import annotations

from iegkit._core.context import StepContext
from iegkit._core.part import Contribution, PartBase
from iegkit.functional.robust_losses import symmetric_cross_entropy

__all__ = ["SymmetricCrossEntropy"]


class SymmetricCrossEntropy(PartBase):
    """mean_i alpha CE_i + beta RCE_i with log 0 clipped to ``log_zero`` (A = -4); the paper's
    CIFAR-10 setting alpha = 0.1, beta = 1.0 by default (CIFAR-100: 6.0, 0.1)."""

    def __init__(self, alpha: float = 0.1, beta: float = 1.0, *, log_zero: float = -4.0,
                 loss_weight: float = 1.0, name: str = "symmetric_cross_entropy") -> None:
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha, beta: expected >= 0, got {alpha}, {beta}")
        if log_zero >= 0:
            raise ValueError(f"log_zero: expected a negative clip A for log 0, got {log_zero}")
        self.name = name
        self.alpha, self.beta, self.log_zero = alpha, beta, log_zero
        self.loss_weight = loss_weight

    def contribute(self, ctx: StepContext) -> Contribution:
        loss = symmetric_cross_entropy(ctx.logits("input"), ctx.targets, self.alpha, self.beta,
                                       self.log_zero).mean()
        return Contribution(losses={"loss": self.loss_weight * loss})
