"""The trusted-set gate on the unlabeled weights: open only as far as the pseudo labels beat chance."""

from __future__ import annotations

import math

__all__ = ["smoothed_accuracy", "trusted_gate"]


def trusted_gate(accuracy: float, num_classes: int, margin: float = 0.1) -> float:
    """gate = clip((a - 1/C) / margin, 0, 1): closed while the pseudo labels' accuracy ``a`` on a
    held-out trusted fold is at chance, fully open ``margin`` above it.

    On a class-balanced fold a collapsed labeler (one class for every image) scores exactly 1/C, so
    the one signal closes the gate both for pseudo labels that are not yet better than chance and
    for pseudo labels that concentrate on a class (the two failures of docs/method.md, "Robust IEG").
    """
    if num_classes < 2:
        raise ValueError(f"num_classes: expected >= 2, got {num_classes}")
    if not 0.0 <= accuracy <= 1.0 or math.isnan(accuracy):
        raise ValueError(f"accuracy: expected a value in [0, 1], got {accuracy}")
    if not 0.0 < margin <= 1.0 - 1.0 / num_classes:
        raise ValueError(f"margin: expected a value in (0, 1 - 1/num_classes], got {margin}")
    return min(1.0, max(0.0, (accuracy - 1.0 / num_classes) / margin))


def smoothed_accuracy(previous: float | None, measured: float, momentum: float) -> float:
    """a <- momentum a + (1 - momentum) acc, where the first measurement (``previous`` None) sets a.

    Averages the gate's accuracy over strong-view draws; the result lies between ``previous`` and
    ``measured``.
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum: expected a value in [0, 1), got {momentum}")
    if previous is None:
        return measured
    return momentum * previous + (1.0 - momentum) * measured
