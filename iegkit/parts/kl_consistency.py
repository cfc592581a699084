"""KLConsistency: k * KL(weak || strong), gradient through the strong view only (IEG eq. 7)."""

from __future__ import annotations

from iegkit._core import keys
from iegkit._core.context import StepContext
from iegkit._core.part import Contribution, PartBase
from iegkit.functional.consistency import kl_consistency
from iegkit.functional.schedule import check_rampup, linear_rampup

__all__ = ["KLConsistency"]


class KLConsistency(PartBase):
    """k * (1/B) sum_i m_i KL(softmax(sg(z_w,i)) || softmax(z_s,i)) on the training batch (k = 20 for
    CIFAR, 8 for WebVision; m_i = 1 unless a part provides ``keys.UNLABELED_MASK``). Needs the strong
    view of ConsistencyPseudoLabeler. ``rampup_steps``: None (official) or a linear ramp of k from 0,
    as ProbeMixUp's. k is also multiplied by ``keys.UNLABELED_GATE`` when a part (TrustedGate)
    provides it."""

    requires = (keys.STRONG_VIEW,)
    optional_requires = (keys.UNLABELED_MASK, keys.UNLABELED_GATE)

    def __init__(self, weight: float = 20.0, *, rampup_steps: int | None = None,
                 name: str = "kl_consistency") -> None:
        if weight < 0:
            raise ValueError(f"weight: expected >= 0, got {weight}")
        self.name = name
        self.weight = weight
        self.rampup_steps = check_rampup(rampup_steps)

    def contribute(self, ctx: StepContext) -> Contribution:
        kl = kl_consistency(ctx.logits("input"), ctx.logits(keys.STRONG_VIEW_NAME),
                            mask=ctx.get(keys.UNLABELED_MASK, None))
        weight = (self.weight * linear_rampup(ctx.step, self.rampup_steps)
                  * float(ctx.get(keys.UNLABELED_GATE, 1.0)))
        return Contribution(losses={"loss": weight * kl}, metrics={"kl": kl.detach()})
