"""Shrinking a meta-learned decision toward the point where its meta-gradient was taken."""

from __future__ import annotations

from torch import Tensor

__all__ = ["shrink_toward_init", "unshrink"]


def shrink_toward_init(value: Tensor, init: Tensor | float, shrinkage: float) -> Tensor:
    """(1 - beta) value + beta init: the meta decision (omega* of eq. 2, lambda* of eq. 4) pulled
    toward its initial point (omega0 = 1/B, lambda0 = 0.9; paper footnote 1).

    With a small trusted set the probe loss is soon fitted and the meta-gradient that picks omega*
    and lambda* becomes mostly noise; shrinking a noisy estimate toward a fixed prior is the usual
    remedy (James-Stein). beta = 0 is the paper's rule, beta = 1 ignores the meta-gradient. Convex
    in value and init, so bounds carry over: weights that sum to 1 still sum to 1 when the
    initial point's do, and a lambda in [0, 1] stays in [0, 1]. Shape and dtype of ``value``.
    """
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage: expected a value in [0, 1], got {shrinkage}")
    if shrinkage == 0.0:
        return value
    return (1.0 - shrinkage) * value + shrinkage * init


def unshrink(shrunk: Tensor, init: Tensor | float, shrinkage: float) -> Tensor:
    """The inverse of ``shrink_toward_init`` for beta < 1: (shrunk - beta init) / (1 - beta), the
    meta decision before shrinkage (a recorded omega* or lambda* read back on its own scale, so
    that "below half the uniform weight" means what it says). Affine, so averages over visits
    unshrink too."""
    if not 0.0 <= shrinkage < 1.0:
        raise ValueError(f"shrinkage: expected a value in [0, 1) (1 keeps nothing to recover), "
                         f"got {shrinkage}")
    if shrinkage == 0.0:
        return shrunk
    return (shrunk - shrinkage * init) / (1.0 - shrinkage)
