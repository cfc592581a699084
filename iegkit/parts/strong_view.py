"""StrongView: the strong augmentation of the training batch as a shared view, without pseudo
labels (for baselines that train on it with the given labels)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from iegkit._core import keys
from iegkit._core.context import StepContext
from iegkit._core.part import Contribution, PartBase, Plan

__all__ = ["StrongView"]


class StrongView(PartBase):
    """Provides ``keys.STRONG_VIEW``: ``strong_augment(inputs, generator=...)``, made once per step
    (or passed precomputed with ``pipeline(..., views={"strong": ...})``), e.g. for ``ProbeMixUp(
    targets="given")``. ConsistencyPseudoLabeler provides the same view; use one of the two."""

    provides = (keys.STRONG_VIEW,)
    # the 'strong' view is forwarded from the plan (KLConsistency reads its logits): a refined
    # tensor would reach ProbeMixUp only
    not_refinable = (keys.STRONG_VIEW,)

    def __init__(self, strong_augment: Callable[..., Tensor], *, name: str = "strong_view") -> None:
        if not callable(strong_augment):
            raise TypeError("strong_augment: expected a callable (images, generator=None) -> images")
        self.name = name
        self.strong_augment = strong_augment

    def setup(self, plan: Plan) -> None:
        plan.add_view(keys.STRONG_VIEW_NAME, self._strong_view, owner=self.name)

    def _strong_view(self, ctx: StepContext) -> Tensor:
        with torch.no_grad():
            strong = self.strong_augment(ctx.inputs, generator=ctx.generator(self.name))
        if strong.shape != ctx.inputs.shape:
            raise ValueError(f"strong_augment: returned shape {tuple(strong.shape)}, expected the "
                             f"input shape {tuple(ctx.inputs.shape)}")
        return strong

    def contribute(self, ctx: StepContext) -> Contribution:
        return Contribution(values={keys.STRONG_VIEW: ctx.view(keys.STRONG_VIEW_NAME)})
