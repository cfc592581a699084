"""Per-epoch collapse signals of the pseudo labels a pipeline used, and the warning rule."""

from __future__ import annotations

from typing import Any

import torch

from iegkit._core import keys
from iegkit.functional.collapse import collapse_threshold, pseudo_label_concentration

__all__ = ["CollapseMonitor"]


class CollapseMonitor:
    """Averages, over an epoch's steps, the top pseudo-label share and the normalised marginal
    entropy of the pseudo labels the parts used (``values[keys.PSEUDO_TARGETS]``, after any
    refinement) and the pseudo labels' accuracy on the probe batch (any ``*/probe_accuracy``
    metric). Pipelines without pseudo labels record nothing.

    ``record(out)`` after each step; ``epoch_summary()`` returns the means and starts a new epoch.
    ``above_threshold(summary)``: the epoch's mean top share is above
    ``threshold`` = ``collapse_threshold(C, factor)`` (``factor`` x the uniform 1/C).
    ``should_warn()``: it has been so for ``patience`` epochs in a row, the warning rule: a single
    unbalanced epoch early in training (a small model at a high lr) recovers, a collapse does not.
    The streak is not checkpointed (it restarts on resume).
    """

    def __init__(self, factor: float = 2.0, patience: int = 2) -> None:
        if not factor > 1.0:
            raise ValueError(f"factor: expected > 1 (a multiple of the uniform share), got {factor}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience: expected an integer >= 1 (epochs), got {patience!r}")
        self.factor = factor
        self.patience = patience
        self.num_classes: int | None = None
        self.epochs_above = 0
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def _add(self, name: str, value: float) -> None:
        self._sums[name] = self._sums.get(name, 0.0) + value
        self._counts[name] = self._counts.get(name, 0) + 1

    def record(self, out: Any) -> None:
        pseudo = getattr(out, "values", {}).get(keys.PSEUDO_TARGETS)
        if pseudo is not None:
            self.num_classes = pseudo.shape[-1]
            top, entropy = pseudo_label_concentration(pseudo)
            self._add("pseudo_top_share", float(top))
            self._add("pseudo_marginal_entropy", float(entropy))
        for name, value in getattr(out, "metrics", {}).items():
            if name.endswith("/probe_accuracy"):
                self._add("pseudo_probe_accuracy", float(torch.as_tensor(value)))

    def epoch_summary(self) -> dict[str, float]:
        summary = {name: total / self._counts[name] for name, total in self._sums.items()}
        self._sums, self._counts = {}, {}
        self.epochs_above = self.epochs_above + 1 if self.above_threshold(summary) else 0
        return summary

    @property
    def threshold(self) -> float | None:
        """``collapse_threshold(C, factor)`` once the pseudo labels' C (>= 2) is known."""
        if self.num_classes is None or self.num_classes < 2:
            return None
        return collapse_threshold(self.num_classes, self.factor)

    def above_threshold(self, summary: dict[str, float]) -> bool:
        top, threshold = summary.get("pseudo_top_share"), self.threshold
        # the share is a float32 ratio of counts: a batch exactly at the threshold is not above it
        return top is not None and threshold is not None and top > threshold + 1e-6

    def should_warn(self) -> bool:
        """The last ``patience`` epoch summaries were all above the threshold."""
        return self.epochs_above >= self.patience
