"""CrossEntropy: the plain supervised term on the (noisy) training labels."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F

from iegkit._core.context import StepContext
from iegkit._core.part import Contribution, Plan

__all__ = ["CrossEntropy"]


class CrossEntropy:
    """mean_i CE(onehot(y_i), f(x_i)) on the training batch: the "plain" baseline."""

    requires: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()

    def __init__(self, *, loss_weight: float = 1.0, name: str = "cross_entropy") -> None:
        self.name = name
        self.loss_weight = loss_weight

    def setup(self, plan: Plan) -> None:
        pass

    def contribute(self, ctx: StepContext) -> Contribution:
        loss = F.cross_entropy(ctx.logits("input"), ctx.targets)
        return Contribution(losses={"loss": self.loss_weight * loss})

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"state: CrossEntropy has no state, got keys {sorted(state)}")
