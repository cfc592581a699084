"""ForwardCorrection: the forward-corrected loss with a transition matrix estimated from the
trusted set: GLC's second stage (Hendrycks et al. 2018), or our online variant."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from iegkit._core.context import StepContext
from iegkit._core.part import Contribution, PartBase
from iegkit.functional.forward_correction import (
    check_transition,
    forward_corrected_cross_entropy,
    noise_rate_from_transition,
    updated_transition,
)

__all__ = ["ForwardCorrection"]


class ForwardCorrection(PartBase):
    """mean_i -log (p(x_i)^T C_hat)_{y~_i} on the training batch (Patrini et al. 2017).

    Args:
      transition: a (C, C) row-stochastic C_hat, fixed (GLC's second stage: estimate it with
        ``iegkit.recipes.glc_transition`` from a first model trained on the noisy labels), or
        ``"online"`` (our extension, not in GLC's paper): for the first ``estimate_steps`` steps the
        loss is plain cross-entropy while C_hat is a running average (``momentum``) of the model's
        softmax on the trusted batch, row by true class, updated after each optimizer step; from
        then on the corrected loss with C_hat frozen (once the loss is corrected, the model's
        softmax estimates the clean posterior, so it can no longer estimate C_hat).
      estimate_steps: the online variant's estimation phase, in steps.
      momentum: of the online running average (0.99: about the last 100 trusted batches).
    """

    def __init__(self, transition: Tensor | str, *, estimate_steps: int | None = None,
                 momentum: float = 0.99, loss_weight: float = 1.0,
                 name: str = "forward_correction") -> None:
        self.online = isinstance(transition, str)
        if self.online:
            if transition != "online":
                raise ValueError(f"transition: expected a (C, C) tensor or 'online', got "
                                 f"{transition!r}")
            if estimate_steps is None or int(estimate_steps) != estimate_steps or estimate_steps < 1:
                raise ValueError(f"estimate_steps: the online variant needs an integer >= 1, got "
                                 f"{estimate_steps!r}")
            if not 0.0 <= momentum < 1.0:
                raise ValueError(f"momentum: expected a value in [0, 1), got {momentum}")
            self.transition: Tensor | None = None
        else:
            if estimate_steps is not None:
                raise ValueError("estimate_steps: only for transition='online'")
            self.transition = check_transition(torch.as_tensor(transition)).detach().clone()
        self.name = name
        self.needs_probe = self.online
        self.estimate_steps = estimate_steps
        self.momentum = momentum
        self.loss_weight = loss_weight
        self._seen: Tensor | None = None
        self._pending: tuple[Tensor, Tensor] | None = None

    def _estimating(self, step: int) -> bool:
        return self.online and step < self.estimate_steps

    def contribute(self, ctx: StepContext) -> Contribution:
        logits = ctx.logits("input")
        num_classes = logits.shape[-1]
        if self.transition is None:  # online, first step: identity until the first update
            self.transition = torch.eye(num_classes, dtype=torch.float64)
            self._seen = torch.zeros(num_classes, dtype=torch.bool)
        check_transition(self.transition, num_classes)
        if self._estimating(ctx.step):
            probs = torch.softmax(ctx.logits("probe").detach().to(torch.float64), -1).cpu()
            self._pending = (probs, ctx.probe_targets.detach().cpu())
            loss = F.cross_entropy(logits, ctx.targets)
        else:
            transition = self.transition.to(device=logits.device, dtype=logits.dtype)
            loss = forward_corrected_cross_entropy(logits, ctx.targets, transition).mean()
        return Contribution(
            losses={"loss": self.loss_weight * loss},
            metrics={"noise_rate": noise_rate_from_transition(self.transition).to(torch.float32),
                     "corrected": torch.tensor(float(not self._estimating(ctx.step)))},
        )

    def after_optimizer_step(self, step: int) -> None:
        if self._pending is not None:
            self.transition, self._seen = updated_transition(self.transition, self._seen,
                                                             *self._pending, self.momentum)
            self._pending = None

    def state_dict(self) -> dict[str, Any]:
        if not self.online:
            return {}
        return {"transition": None if self.transition is None else self.transition.clone(),
                "seen": None if self._seen is None else self._seen.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not self.online:
            super().load_state_dict(state)
            return
        if set(state) != {"transition", "seen"}:
            raise ValueError(f"state: expected keys ['seen', 'transition'], got {sorted(state)}")
        if state["transition"] is None:
            self.transition = self._seen = None
            return
        transition = check_transition(torch.as_tensor(state["transition"], dtype=torch.float64))
        seen = torch.as_tensor(state["seen"], dtype=torch.bool)
        if seen.shape != transition.shape[:1]:
            raise ValueError(f"state: seen has shape {tuple(seen.shape)}, expected "
                             f"({transition.shape[0]},)")
        self.transition, self._seen = transition.clone(), seen.clone()
