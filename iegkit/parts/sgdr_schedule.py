"""SGDRSchedule: the official IEG learning-rate schedule, as a torch LRScheduler and as a part."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim.lr_scheduler import LRScheduler

from iegkit._core import keys
from iegkit._core.context import StepContext
from iegkit._core.lr import as_float as _as_float
from iegkit._core.lr import set_group_lr as _set_group_lr
from iegkit._core.part import Contribution, PartBase
from iegkit.functional.schedule import check_cycle_args, check_int, check_real, sgdr

__all__ = ["SGDRSchedule"]


class SGDRSchedule(LRScheduler, PartBase):
    """Cosine annealing with warm restarts (SGDR), per iteration: ``iegkit.functional.sgdr``.

    The peak of each param group is its initial lr (``base_lrs``); ``min_lr`` and
    ``warmup_start_lr`` are absolute and shared by all groups. Defaults follow the official IEG
    code (``tf.train.cosine_decay_restarts``, ``t_mul=1.5``, ``m_mul=0.9``, ``alpha=0``, no warmup;
    first cycle about one epoch, e.g. 500 iterations).

    Two ways to drive it; use one, not both:

    * As a torch scheduler: ``scheduler.step()`` after each ``optimizer.step()``. After
      construction ``last_epoch == 0`` and the groups hold the lr of step 0 (the peak, or
      ``warmup_start_lr`` with a warmup); after the k-th ``step()`` they hold the lr of step k.
      ``get_lr()`` is closed form in ``last_epoch`` (no recursion), so ``step(epoch)`` and
      resuming are exact.
    * As an iegkit part (``provides = ("lr",)``): ``contribute(ctx)`` sets every group's lr to
      the schedule at ``ctx.step`` before that step's forward (timm-style: the step is passed
      explicitly), sets ``last_epoch = ctx.step`` and provides ``lr`` (group 0's lr, a 0-d
      tensor). Unlike other parts it writes to the optimizer's ``param_groups[i]["lr"]``: that
      is its whole purpose; it never touches parameters, gradients or optimizer state.

    ``state_dict()`` is the LRScheduler default (every attribute but the optimizer), so a
    scheduler rebuilt on a fresh optimizer and given ``load_state_dict`` continues identically.

    Args:
      optimizer: any torch optimizer; each group's ``lr`` at construction is its peak (its
        ``initial_lr`` where one is set, by a resume or an earlier torch scheduler: torch's rule).
      first_cycle_steps: length of the first cycle in iterations, >= 1.
      t_mul: cycle length multiplier, >= 1. m_mul: cycle peak multiplier, in (0, 1].
      min_lr: absolute lr floor (not TF's fractional ``alpha``; see ``sgdr``), <= every peak.
      warmup_steps, warmup_start_lr: linear warmup before the first cycle.
      last_epoch: the LRScheduler resume index (-1 for a fresh start).
      name: the part's name.
    """

    provides: tuple[str, ...] = (keys.LR,)
    # contribute sets the lr on the optimizer: a refined value would not be the lr stepped with
    not_refinable: tuple[str, ...] = (keys.LR,)

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        first_cycle_steps: int,
        t_mul: float = 1.5,
        m_mul: float = 0.9,
        min_lr: float = 0.0,
        warmup_steps: int = 0,
        warmup_start_lr: float = 0.0,
        last_epoch: int = -1,
        *,
        name: str = "sgdr_schedule",
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        first_cycle_steps, t_mul = check_cycle_args(first_cycle_steps, t_mul)
        self.name = name
        self.first_cycle_steps = first_cycle_steps
        self.t_mul = t_mul
        self.m_mul = check_real("m_mul", m_mul)
        self.min_lr = check_real("min_lr", min_lr)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, 0)
        self.warmup_start_lr = check_real("warmup_start_lr", warmup_start_lr)
        last_epoch = check_int("last_epoch", last_epoch, -1)
        # Validate every argument against every group's peak before LRScheduler touches the groups.
        # The peak is torch's base_lr: a group's initial_lr where one is set (a resume, or an
        # earlier scheduler on this optimizer, e.g. SequentialLR's warm-up: setdefault), else lr.
        for i, group in enumerate(optimizer.param_groups):
            peak = group["initial_lr"] if "initial_lr" in group else group["lr"]
            self._lr_at(0, _as_float(peak), f"param_groups[{i}]")
        super().__init__(optimizer, last_epoch)

    # -- the schedule -----------------------------------------------------------------------------

    def _lr_at(self, step: int | float, peak_lr: float, where: str = "") -> float:
        try:
            return sgdr(
                step, peak_lr=peak_lr, first_cycle_steps=self.first_cycle_steps, t_mul=self.t_mul,
                m_mul=self.m_mul, min_lr=self.min_lr, warmup_steps=self.warmup_steps,
                warmup_start_lr=self.warmup_start_lr,
            )
        except ValueError as error:
            if where:
                raise ValueError(f"{error} (peak_lr is the initial lr of {where})") from None
            raise

    def lrs_at(self, step: int | float) -> list[float]:
        """The lr of every param group at ``step`` (pure: changes nothing)."""
        return [self._lr_at(step, _as_float(base)) for base in self.base_lrs]

    def get_lr(self) -> list[float]:
        """Closed form at ``last_epoch``: ``sgdr(last_epoch, peak_lr=base_lr, ...)`` per group."""
        return self.lrs_at(self.last_epoch)

    def _get_closed_form_lr(self) -> list[float]:
        return self.lrs_at(self.last_epoch)

    # -- the part ---------------------------------------------------------------------------------

    def contribute(self, ctx: StepContext) -> Contribution:
        """Set every group's lr to the schedule at ``ctx.step`` (before this step's forward)."""
        step = check_int("step", ctx.step, 0)
        if ctx.optimizer is not self.optimizer:
            raise ValueError(
                f"optimizer: part '{self.name}' was built on a different optimizer than the "
                "pipeline's; build SGDRSchedule(pipeline_optimizer, ...)"
            )
        lrs = self.lrs_at(step)
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            _set_group_lr(group, lr)
        self.last_epoch = step
        self._last_lr = [
            group["lr"].clone() if isinstance(group["lr"], Tensor) else group["lr"]
            for group in self.optimizer.param_groups
        ]
        return Contribution(values={keys.LR: torch.tensor(lrs[0])})

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(dict(state))
