"""KLConsistency: k * KL(weak || strong), gradient through the strong view only (IEG eq. 7)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from iegkit._core.context import StepContext
from iegkit._core.part import Contribution, Plan
from iegkit.functional.consistency import kl_consistency
from iegkit.parts.probe_mixup import _check_rampup, rampup

__all__ = ["KLConsistency"]


class KLConsistency:
    """k * (1/B) sum_i KL(softmax(sg(z_w,i)) || softmax(z_s,i)) on the training batch (k = 20 for
    CIFAR, 8 for WebVision). Needs the strong view of ConsistencyPseudoLabeler. ``rampup_steps``:
    None (official) or a linear ramp of k from 0, as ProbeMixUp's."""

    requires = ("view:strong",)
    provides: tuple[str, ...] = ()

    def __init__(self, weight: float = 20.0, *, rampup_steps: int | None = None,
                 name: str = "kl_consistency") -> None:
        if weight < 0:
            raise ValueError(f"weight: expected >= 0, got {weight}")
        self.name = name
        self.weight = weight
        self.rampup_steps = _check_rampup(rampup_steps)

    def setup(self, plan: Plan) -> None:
        pass

    def contribute(self, ctx: StepContext) -> Contribution:
        kl = kl_consistency(ctx.logits("input"), ctx.logits("strong"))
        weight = self.weight * rampup(ctx.step, self.rampup_steps)
        return Contribution(losses={"loss": weight * kl}, metrics={"kl": kl.detach()})

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"state: KLConsistency has no state, got keys {sorted(state)}")
