"""LRWarmup: a linear learning-rate warm-up on top of the user's own schedule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from iegkit._core import keys
from iegkit._core.context import StepContext
from iegkit._core.part import Contribution, PartBase
from iegkit.functional.schedule import _check_int, linear_warmup
from iegkit.parts.sgdr_schedule import _as_float, _set_group_lr

__all__ = ["LRWarmup"]


class LRWarmup(PartBase):
    """Gradual warm-up (Goyal et al. 2017, sec. 2.2): for ``step < warmup_steps`` every param
    group's lr is multiplied by ``iegkit.functional.schedule.linear_warmup(step, warmup_steps)``
    = (step + 1) / warmup_steps for this step, then given back.

    The user keeps their optimizer and their scheduler: ``contribute`` scales whatever lr the
    groups hold (the user's schedule at this step), the look-ahead of the meta parts and the
    user's ``optimizer.step()`` run at the scaled lr (``provides = ("lr",)`` orders the meta parts
    after it), and ``after_optimizer_step`` writes the user's lr back, so a scheduler that reads
    the groups' lr (a chainable one) never sees the factor. A step whose ``optimizer.step()`` never
    runs (a skipped or failed step) is given back at the next step's ``contribute``.

    Why the robust recipes use it: with the noisy labels unused (``robust_eg``) the first epoch
    learns from the trusted images alone, and at the full lr of 0.1 from a random start one class
    took 0.31-0.39 of the validation predictions after epoch 1 on CIFAR-10 (cpu10k); with a warm-up
    over the first 5% of the run, 0.21 (docs/results.md). The official code has none
    (``warmup_epochs = 0``). Not for a pipeline that also has ``SGDRSchedule``: give that its own
    ``warmup_steps`` (both provide ``lr``).

    Args:
      warmup_steps: length of the warm-up, >= 1.
      name: the part's name.
    """

    provides: tuple[str, ...] = (keys.LR,)

    def __init__(self, warmup_steps: int, *, name: str = "lr_warmup") -> None:
        self.warmup_steps = _check_int("warmup_steps", warmup_steps, 1)
        self.name = name
        self.optimizer: torch.optim.Optimizer | None = None
        self._given_back: list[float | Tensor] | None = None  # the user's lrs while scaled

    def bind(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self._give_back()
        self.optimizer = optimizer

    def contribute(self, ctx: StepContext) -> Contribution:
        if ctx.optimizer is not self.optimizer:
            raise ValueError(f"optimizer: part '{self.name}' is bound to another optimizer than "
                             "the pipeline's; bind the pipeline")
        self._give_back()
        factor = linear_warmup(ctx.step, self.warmup_steps)
        groups = ctx.optimizer.param_groups
        if factor < 1.0:
            self._given_back = [group["lr"].clone() if isinstance(group["lr"], Tensor)
                                else group["lr"] for group in groups]
            for group, lr in zip(groups, self._given_back, strict=True):
                _set_group_lr(group, _as_float(lr) * factor)
        return Contribution(values={keys.LR: torch.tensor(_as_float(groups[0]["lr"]))},
                            metrics={"factor": torch.tensor(factor)})

    def after_optimizer_step(self, step: int) -> None:
        self._give_back()

    def _give_back(self) -> None:
        if self._given_back is None or self.optimizer is None:
            return
        for group, lr in zip(self.optimizer.param_groups, self._given_back, strict=True):
            _set_group_lr(group, _as_float(lr))
        self._given_back = None

    def state_dict(self) -> dict[str, Any]:
        return {"warmup_steps": self.warmup_steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state) != {"warmup_steps"}:
            raise ValueError(f"state: {type(self).__name__} expects the key 'warmup_steps', got "
                             f"{sorted(state)}")
        self.warmup_steps = _check_int("warmup_steps", state["warmup_steps"], 1)
