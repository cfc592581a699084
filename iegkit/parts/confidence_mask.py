"""ConfidenceMask: keep only confident pseudo labels in the unlabeled terms (FixMatch)."""

from __future__ import annotations

import torch
from torch import Tensor

from iegkit._core import keys
from iegkit._core.context import StepContext
from iegkit._core.part import Contribution, PartBase

__all__ = ["ConfidenceMask", "confidence_mask"]


def confidence_mask(pseudo: Tensor, threshold: float) -> Tensor:
    """m_i = 1[max_c g_ic >= threshold] (FixMatch, Sohn et al. 2020, eq. 4), as a float (B,)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold: expected a value in [0, 1], got {threshold}")
    return (pseudo.detach().max(dim=-1).values >= threshold).to(pseudo.dtype)


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
