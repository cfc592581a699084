"""ConfidenceMask: keep only confident pseudo labels in the unlabeled terms (FixMatch)."""

from __future__ import annotations

import torch

from iegkit._core import keys
from iegkit._core.context import StepContext
from iegkit._core.part import Contribution, PartBase
from iegkit.functional.confidence_mask import confidence_mask

__all__ = ["ConfidenceMask"]


class ConfidenceMask(PartBase):
    """Provides ``keys.UNLABELED_MASK``; ProbeMixUp's unlabeled term and KLConsistency read it.

    Masked examples add zero loss over a fixed 1/B denominator, so an empty mask gives a zero
    unlabeled loss, not 0/0 (the failure of google-research/fixmatch issue 79). The threshold
    applies to the pseudo labels as provided (after sharpening and any refinement), not to a raw
    softmax as in FixMatch; 0.95 is FixMatch's value.
    """

    requires = (keys.PSEUDO_TARGETS,)
    provides = (keys.UNLABELED_MASK,)

    def __init__(self, threshold: float = 0.95, *, name: str = "confidence_mask") -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold: expected a value in [0, 1], got {threshold}")
        self.name = name
        self.threshold = threshold

    def contribute(self, ctx: StepContext) -> Contribution:
        mask = confidence_mask(ctx.get(keys.PSEUDO_TARGETS), self.threshold)
        return Contribution(values={keys.UNLABELED_MASK: mask},
                            metrics={"kept_fraction": mask.mean().to(torch.float32)})
