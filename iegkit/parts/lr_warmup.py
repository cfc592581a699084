"""LRWarmup: a linear learning-rate warm-up on top of the user's own schedule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from iegkit._core import keys
from iegkit._core.context import StepContext
from iegkit._core.lr import restore_lrs, scale_lrs
from iegkit._core.part import Contribution, PartBase
from iegkit.functional.schedule import check_int, linear_warmup

__all__ = ["LRWarmup"]


class LRWarmup(PartBase):
    """Gradual warm-up (Goyal et al. 2017, sec. 2.2): for ``step < warmup_steps`` the step runs
    at every param group's lr times ``iegkit.functional.schedule.linear_warmup(step,
    warmup_steps)`` = (step + 1) / warmup_steps.

    The user keeps their optimizer and their scheduler, and the groups' lr stays theirs: the
    factor is applied only inside this step's look-ahead (``provides = ("lr_scale",)``, which the
    meta parts read; a fixed ``lookahead_lr`` is not scaled) and inside ``optimizer.step()`` (scaled
    in the pipeline's step pre-hook, given back in its post-hook). A skipped ``optimizer.step()``
    (an overflow under ``GradScaler``, a batch skipped after ``NonFiniteLossError``) or a step that
    raises leaves the lr untouched, and a scheduler, chainable or closed form, never sees the
    factor. It works beside a schedule part (``SGDRSchedule``) as beside a torch scheduler.

    Why ``robust_eg`` uses it by default: with the noisy labels unused the first epoch learns from
    the trusted images alone, and at the full lr of 0.1 from a random start one class
    took 0.31 (teacher: 0.39) of the validation predictions after epoch 1 on CIFAR-10 (cpu10k);
    with a warm-up over the first 5% of the run, 0.21 (teacher: 0.14) (docs/results.md). The
    official code has none (``warmup_epochs = 0``).

    Args:
      warmup_steps: length of the warm-up, >= 1.
      name: the part's name.
    """

    provides: tuple[str, ...] = (keys.LR_SCALE,)
    # its step pre-hook scales optimizer.step() by its own factor: a refined value would move the
    # look-ahead's lr away from the real step's
    not_refinable: tuple[str, ...] = (keys.LR_SCALE,)

    def __init__(self, warmup_steps: int, *, name: str = "lr_warmup") -> None:
        self.warmup_steps = check_int("warmup_steps", warmup_steps, 1)
        self.name = name
        self.optimizer: torch.optim.Optimizer | None = None
        self._given_back: list[float] | None = None  # the user's lrs while optimizer.step() runs

    def bind(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self._give_back()
        self.optimizer = optimizer

    def contribute(self, ctx: StepContext) -> Contribution:
        factor = linear_warmup(ctx.step, self.warmup_steps)
        value = torch.tensor(factor, dtype=torch.float64)  # float64: the same lr as the real step
        return Contribution(values={keys.LR_SCALE: value}, metrics={"factor": value})

    def before_optimizer_step(self, step: int) -> None:
        self._give_back()  # an earlier optimizer.step() that raised before the post-hook
        factor = linear_warmup(step, self.warmup_steps)
        if factor < 1.0 and self.optimizer is not None:
            self._given_back = scale_lrs(self.optimizer, factor)

    def after_optimizer_step(self, step: int) -> None:
        self._give_back()

    def _give_back(self) -> None:
        if self._given_back is not None and self.optimizer is not None:
            restore_lrs(self.optimizer, self._given_back)
        self._given_back = None

    def state_dict(self) -> dict[str, Any]:
        return {"warmup_steps": self.warmup_steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state) != {"warmup_steps"}:
            raise ValueError(f"state: {type(self).__name__} expects the key 'warmup_steps', got "
                             f"{sorted(state)}")
        self.warmup_steps = check_int("warmup_steps", state["warmup_steps"], 1)
