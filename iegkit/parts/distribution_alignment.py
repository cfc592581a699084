"""DistributionAlignment: rescale the pseudo labels by target prior / running model marginal (ReMixMatch)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from iegkit._core import keys
from iegkit._core.context import StepContext
from iegkit._core.part import Contribution, PartBase
from iegkit.functional.collapse import pseudo_label_concentration
from iegkit.functional.distribution_alignment import align_distribution, unsharpen, updated_marginal

__all__ = ["DistributionAlignment"]


class DistributionAlignment(PartBase):
    """Refines ``keys.PSEUDO_TARGETS``: g' = sharpen(Normalize(q * p_target / p_model), tau).

    p_model is a running average of the pseudo labeler's prediction average q (momentum 0.99, about
    the last 100 batches; ReMixMatch averages the last 128), updated after each optimizer step (a
    step that fails changes nothing). p_target is uniform (or a given class prior). When the pseudo
    labels drift towards one class, p_model grows there and the rescaling pushes back: the
    safeguard against the collapse of docs/method.md.

    Args:
      num_classes: C; None takes it from the first step's pseudo labels.
      momentum: of the running model marginal (0.99).
      target: None (uniform 1/C) or a (C,) class prior.
      temperature: the pseudo labeler's sharpening tau (0.5), used to recover q from g exactly.
    """

    requires = ()
    refines = (keys.PSEUDO_TARGETS,)

    def __init__(self, num_classes: int | None = None, *, momentum: float = 0.99, target: Tensor | None = None,
                 temperature: float = 0.5, name: str = "distribution_alignment") -> None:
        if num_classes is not None and (int(num_classes) != num_classes or num_classes < 2):
            raise ValueError(f"num_classes: expected None or an integer >= 2, got {num_classes}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum: expected a value in [0, 1), got {momentum}")
        if temperature <= 0:
            raise ValueError(f"temperature: expected > 0, got {temperature}")
        self.name = name
        self.momentum = momentum
        self.temperature = temperature
        self._given_target = None if target is None else torch.as_tensor(target, dtype=torch.float64)
        self.num_classes: int | None = None
        self.target = self.model_marginal = torch.empty(0, dtype=torch.float64)
        self._pending: Tensor | None = None
        if num_classes is not None:
            self._start(int(num_classes))
        elif self._given_target is not None:
            self._start(self._given_target.numel())

    def _start(self, num_classes: int) -> None:
        target = self._given_target
        if target is None:
            target = torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64)
        if target.shape != (num_classes,) or bool((target <= 0).any()):
            raise ValueError(f"target: expected {num_classes} positive class probabilities, got "
                             f"shape {tuple(target.shape)}")
        self.num_classes = num_classes
        self.target = target / target.sum()
        self.model_marginal = torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64)

    def contribute(self, ctx: StepContext) -> Contribution:
        pseudo = ctx.get(keys.PSEUDO_TARGETS)
        if self.num_classes is None:
            self._start(pseudo.shape[-1])
        if pseudo.shape[-1] != self.num_classes:
            raise ValueError(f"num_classes: DistributionAlignment was built for {self.num_classes} "
                             f"classes, the pseudo labels have {pseudo.shape[-1]}")
        probs = unsharpen(pseudo, self.temperature)
        self._pending = probs.detach().mean(0).to(torch.float64).cpu()
        aligned = align_distribution(pseudo, self.model_marginal.to(pseudo.device),
                                     self.target.to(pseudo.device), temperature=self.temperature)
        top_share, entropy = pseudo_label_concentration(aligned)
        return Contribution(
            values={keys.PSEUDO_TARGETS: aligned},
            metrics={"top_share": top_share, "marginal_entropy": entropy,
                     "model_marginal_max": self.model_marginal.max().to(torch.float32)},
        )

    def after_optimizer_step(self, step: int) -> None:
        if self._pending is not None:
            self.model_marginal = updated_marginal(self.model_marginal, self._pending[None],
                                                   self.momentum)
            self._pending = None

    def state_dict(self) -> dict[str, Any]:
        return {"model_marginal": self.model_marginal.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state) != {"model_marginal"}:
            raise ValueError(f"state: expected key 'model_marginal', got {sorted(state)}")
        marginal = torch.as_tensor(state["model_marginal"], dtype=torch.float64)
        if marginal.numel() == 0:  # saved before its first step: nothing learned yet
            if self.num_classes is not None:
                raise ValueError(f"state: model_marginal is empty, expected ({self.num_classes},)")
            return
        if self.num_classes is None:
            self._start(marginal.numel())
        if marginal.shape != (self.num_classes,):
            raise ValueError(f"state: model_marginal has shape {tuple(marginal.shape)}, expected "
                             f"({self.num_classes},)")
        self.model_marginal = marginal.clone()
