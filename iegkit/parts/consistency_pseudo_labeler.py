"""ConsistencyPseudoLabeler: pseudo labels from the weak and strong views (IEG section 2.2.1)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from iegkit._core.context import StepContext
from iegkit._core.part import Contribution, Plan
from iegkit.functional.pseudo_label import guess_targets

__all__ = ["ConsistencyPseudoLabeler"]

Augment = Callable[..., Tensor]


class ConsistencyPseudoLabeler:
    """g = sharpen(mean_k softmax(LN(z_k)), tau) over the weak view (the training batch as given)
    and a strong view ``strong_augment(inputs, generator=...)``; g is detached (the official code
    detaches it everywhere except in its look-ahead).

    Provides ``targets:pseudo`` (B, C) and ``view:strong`` (the strong inputs, forwarded once per
    step and shared with KLConsistency and ProbeMixUp).

    Args:
      strong_augment: any callable ``(images, generator=None) -> images`` (``iegkit.augment`` has the
        paper's AutoAugment + flip + crop + cutout); non-image users pass their own view.
      temperature: tau = 0.5.
      normalize_logits: the official per-view RMS logit normalisation; False is the paper's plain
        softmax average.
    """

    requires: tuple[str, ...] = ()
    provides = ("targets:pseudo", "view:strong")

    def __init__(self, strong_augment: Augment, *, temperature: float = 0.5,
                 normalize_logits: bool = True, name: str = "pseudo_labeler") -> None:
        if not callable(strong_augment):
            raise TypeError("strong_augment: expected a callable (images, generator=None) -> images")
        if temperature <= 0:
            raise ValueError(f"temperature: expected > 0, got {temperature}")
        self.name = name
        self.strong_augment = strong_augment
        self.temperature = temperature
        self.normalize_logits = normalize_logits

    def setup(self, plan: Plan) -> None:
        plan.add_view("strong", self._strong_view, owner=self.name)
        plan.pseudo_label_fn = self.pseudo_labels

    def pseudo_labels(self, weak_logits: Tensor, strong_logits: Tensor) -> Tensor:
        """g from the two views' logits, with graph (the part itself provides it detached)."""
        return guess_targets([weak_logits, strong_logits], self.temperature,
                             normalize_logits=self.normalize_logits)

    def _strong_view(self, ctx: StepContext) -> Tensor:
        with torch.no_grad():
            strong = self.strong_augment(ctx.inputs, generator=ctx.generator(self.name))
        if strong.shape != ctx.inputs.shape:
            raise ValueError(f"strong_augment: returned shape {tuple(strong.shape)}, expected the "
                             f"input shape {tuple(ctx.inputs.shape)}")
        return strong

    def contribute(self, ctx: StepContext) -> Contribution:
        weak, strong = ctx.logits("input"), ctx.logits("strong")
        pseudo = self.pseudo_labels(weak.detach(), strong.detach())
        return Contribution(
            values={"targets:pseudo": pseudo, "view:strong": ctx.view("strong")},
            metrics={"agreement": (pseudo.argmax(-1) == ctx.targets).float().mean()},
        )

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"state: ConsistencyPseudoLabeler has no state, got {sorted(state)}")
