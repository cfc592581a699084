"""NoisyLabelPosterior: let the given label vote on the pseudo label, by its estimated accuracy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from iegkit._core import keys
from iegkit._core.context import StepContext
from iegkit._core.part import Contribution, PartBase
from iegkit.functional.collapse import pseudo_label_concentration
from iegkit.functional.distribution_alignment import unsharpen
from iegkit.functional.forward_correction import check_transition
from iegkit.functional.label_posterior import (
    accuracy_unchecked,
    posterior_unchecked,
    transition_label_posterior,
)

__all__ = ["NoisyLabelPosterior"]


class NoisyLabelPosterior(PartBase):
    """Refines ``keys.PSEUDO_TARGETS`` into the posterior of the true class given the pseudo label
    (prior) and the noisy given label (evidence): ``noisy_label_posterior(g, y, r, tau)``.

    The pseudo labels of IEG ignore the given label, so where the labels are better than the
    model's guesses (40% noise on a small model: about 64% vs 55% right on CIFAR-10 cpu10k) the
    unlabeled term trains on the worse of the two. Under symmetric noise Bayes' rule weighs the two
    by their reliability: a label of accuracy r multiplies its class's prior odds by
    r (C - 1) / (1 - r) (16x at r = 0.64 and 3.5x at r = 0.28 for C = 10; squared on the labels
    sharpened with tau = 0.5). Unless ``label_accuracy`` gives it, r is not an option: it is a
    running average (``momentum``, attribute ``label_accuracy``) of the maximum-likelihood
    accuracy of each batch's labels under the predictions the refined labels come from
    (unsharpened, after any alignment; ``estimate_label_accuracy``), updated after each
    optimizer step (a step that fails changes nothing). Like DistributionAlignment's marginal it
    starts neutral, at r = 1/C, where the label is no evidence (the first step's pseudo labels
    pass unchanged), so one batch of an untrained teacher cannot set it. Place the part after
    ``DistributionAlignment``.

    The teacher that makes the pseudo labels is also trained on these labels, so the estimate rises
    once it fits them (on CIFAR-10 cpu10k at 40% noise it reached 0.9 by mid-run, against 0.64
    right); that moves the targets toward the given labels, that is, toward plain training. The
    estimate is per process under DDP.

    Args:
      temperature: the pseudo labeler's sharpening tau (0.5), to recover its predictions exactly.
      momentum: of the running label-accuracy estimate (0.99, about the last 100 batches).
      label_accuracy: a known accuracy r of the given labels, the fraction that is correct, in
        [1/C, 1] (under uniform noise of rate rho over all C classes, 1 - rho + rho / C), used from
        the first step instead of the running estimate (attribute ``known_label_accuracy``; the
        batch estimate is still reported). None (default): estimated, as above.
      transition: None, or a (C, C) class-conditional channel T[c, j] = P(given j | true c), e.g.
        GLC's C_hat from the trusted set (``recipes.glc_transition``): the posterior is then
        ``transition_label_posterior(g, y, T)`` instead of the symmetric channel's, for
        class-dependent (asymmetric, human) noise. Fixed; not with ``label_accuracy``.
    """

    requires = ()
    refines = (keys.PSEUDO_TARGETS,)

    def __init__(self, *, temperature: float = 0.5, momentum: float = 0.99,
                 label_accuracy: float | None = None, transition: Tensor | None = None,
                 name: str = "noisy_label_posterior") -> None:
        if not temperature > 0:
            raise ValueError(f"temperature: expected > 0, got {temperature}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum: expected a value in [0, 1), got {momentum}")
        if label_accuracy is not None and not 0.0 < label_accuracy <= 1.0:
            raise ValueError(f"label_accuracy: expected None or a value in [1/C, 1], "
                             f"got {label_accuracy}")
        if transition is not None:
            if label_accuracy is not None:
                raise ValueError("transition: a class-conditional channel replaces label_accuracy; "
                                 "pass one of the two")
            transition = check_transition(torch.as_tensor(transition, dtype=torch.float64))
        self.transition = None if transition is None else transition.clone()
        self.name = name
        self.temperature = temperature
        self.momentum = momentum
        self.known_label_accuracy = label_accuracy
        #: the running estimate of r; None until the first optimizer step (then r = 1/C is used)
        self.label_accuracy: float | None = None
        self._pending: tuple[float, int] | None = None

    def _current(self, num_classes: int) -> float:
        if self.known_label_accuracy is not None:
            if self.known_label_accuracy < 1.0 / num_classes:
                raise ValueError(f"label_accuracy: expected a value in [1/C, 1] = "
                                 f"[{1.0 / num_classes:.4g}, 1] for C = {num_classes} classes, "
                                 f"got {self.known_label_accuracy}")
            return self.known_label_accuracy
        if self.label_accuracy is None:
            return 1.0 / num_classes
        return min(1.0, max(1.0 / num_classes, self.label_accuracy))

    def contribute(self, ctx: StepContext) -> Contribution:
        pseudo = ctx.get(keys.PSEUDO_TARGETS)
        num_classes = pseudo.shape[-1]
        batch_estimate = accuracy_unchecked(unsharpen(pseudo, self.temperature), ctx.targets)
        self._pending = (batch_estimate, num_classes)
        if self.transition is not None:
            check_transition(self.transition, num_classes)
            accuracy = float(torch.diagonal(self.transition).mean())
            posterior = transition_label_posterior(pseudo, ctx.targets,
                                                   self.transition.to(pseudo.device),
                                                   temperature=self.temperature)
        else:
            accuracy = self._current(num_classes)
            posterior = posterior_unchecked(pseudo, ctx.targets, accuracy, self.temperature)
        top_share, entropy = pseudo_label_concentration(posterior)
        return Contribution(
            values={keys.PSEUDO_TARGETS: posterior},
            metrics={"label_accuracy": torch.tensor(accuracy, dtype=torch.float32),
                     "batch_label_accuracy": torch.tensor(batch_estimate, dtype=torch.float32),
                     "top_share": top_share, "marginal_entropy": entropy},
        )

    def after_optimizer_step(self, step: int) -> None:
        if self._pending is not None and self.known_label_accuracy is None:
            estimate, num_classes = self._pending
            self.label_accuracy = (self.momentum * self._current(num_classes)
                                   + (1.0 - self.momentum) * estimate)
        self._pending = None

    def state_dict(self) -> dict[str, Any]:
        return {"label_accuracy": self.label_accuracy,
                "known_label_accuracy": self.known_label_accuracy}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not {"label_accuracy"} <= set(state) <= {"label_accuracy", "known_label_accuracy"}:
            raise ValueError(f"state: expected key 'label_accuracy' (and 'known_label_accuracy'), "
                             f"got {sorted(state)}")
        known = state.get("known_label_accuracy")  # absent in states saved before the option
        if known != self.known_label_accuracy:
            raise ValueError(f"state: saved with label_accuracy={known}, but this part has "
                             f"label_accuracy={self.known_label_accuracy}: resume with the same "
                             f"setting")
        value = state["label_accuracy"]
        if value is not None and not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"state: label_accuracy must be None or in [0, 1], got {value}")
        self.label_accuracy = None if value is None else float(value)
