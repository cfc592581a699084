"""Schedules as pure functions of the step: SGDR, and the linear ramp-up of loss weights.

SGDR: cosine annealing with warm restarts, as a pure function of the step.

Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017, eq. (5)::

    eta_t = eta_min^i + 1/2 (eta_max^i - eta_min^i) (1 + cos(pi T_cur / T_i))

where ``T_cur`` counts the steps since the last restart and ``T_i`` is the length of the current
cycle. The official IEG code uses TensorFlow's ``tf.train.cosine_decay_restarts`` with initial lr
0.1, ``t_mul=1.5``, ``m_mul=0.9`` and ``alpha=0``, and a first cycle of about one epoch (500 steps
in the first release); ``sgdr(step, peak_lr=0.1, first_cycle_steps=500)`` reproduces it.
"""

from __future__ import annotations

import math
import operator
from numbers import Real

__all__ = ["check_cycle_args", "check_int", "check_rampup", "check_real", "linear_rampup",
           "linear_warmup", "sgdr", "sgdr_restarts"]


def check_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    return value


def check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected an integer, got bool")
    try:
        value = operator.index(value)  # int, numpy integers; rejects 1.5 and "3"
    except TypeError:
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}") from None
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return value


def check_cycle_args(first_cycle_steps: object, t_mul: object) -> tuple[int, float]:
    first = check_int("first_cycle_steps", first_cycle_steps, 1)
    t_mul = check_real("t_mul", t_mul)
    if t_mul < 1.0:
        raise ValueError(f"t_mul: expected >= 1 (cycles never shrink), got {t_mul}")
    return first, t_mul


def _cycle_start(i: int, first: int, t_mul: float) -> float:
    """Step at which cycle ``i`` starts: first * (1 + t_mul + ... + t_mul**(i-1))."""
    if t_mul == 1.0:
        return float(first * i)
    try:
        return first * (t_mul**i - 1.0) / (t_mul - 1.0)
    except OverflowError:  # a start beyond any float step
        return math.inf


def _locate(t: float, first: int, t_mul: float) -> tuple[int, float, float]:
    """(cycle index i, T_cur, T_i) of the SGDR clock time ``t >= 0``.

    The estimate is TF's closed form ``i = floor(log(1 + t/first (t_mul - 1)) / log(t_mul))``;
    it is then corrected against the cycle starts, so that ``t`` equal to a start (500, 1250,
    2375, 4062.5, ... for first=500, t_mul=1.5) always falls in the new cycle regardless of how
    the logarithms round.
    """
    if t_mul == 1.0:
        i = math.floor(t / first)
    else:
        x = t / first * (t_mul - 1.0)
        log_x1 = math.log1p(x) if math.isfinite(x) else math.log(t / first) + math.log(t_mul - 1.0)
        i = max(math.floor(log_x1 / math.log(t_mul)), 0)
        while i > 0 and _cycle_start(i, first, t_mul) > t:
            i -= 1
        while _cycle_start(i + 1, first, t_mul) <= t:
            i += 1
    start = _cycle_start(i, first, t_mul)
    return i, t - start, first * t_mul**i


def sgdr(
    step: int | float,
    *,
    peak_lr: float,
    first_cycle_steps: int,
    t_mul: float = 1.5,
    m_mul: float = 0.9,
    min_lr: float = 0.0,
    warmup_steps: int = 0,
    warmup_start_lr: float = 0.0,
) -> float:
    """The learning rate at ``step`` of SGDR (cosine annealing with warm restarts).

    Cycle ``i = 0, 1, ...`` lasts ``T_i = first_cycle_steps * t_mul**i`` steps (real-valued) and
    starts at ``S_i = first_cycle_steps * (t_mul**i - 1) / (t_mul - 1)``; its peak is
    ``peak_i = max(peak_lr * m_mul**i, min_lr)``. Within it (SGDR eq. 5, ``T_cur = t - S_i``)::

        lr = min_lr + (peak_i - min_lr) * 0.5 * (1 + cos(pi * T_cur / T_i))

    Boundaries follow TF's ``cosine_decay_restarts``: the clock is real-valued and never rounded,
    so a step ``t >= S_i`` belongs to cycle ``i`` and a non-integer start such as 4062.5 (first
    500, ``t_mul`` 1.5) means step 4062 is the last of cycle 3 and step 4063 opens cycle 4 half a
    step in (lr just under ``peak_4``). The lr approaches ``min_lr`` at the end of each cycle, but
    no integer step runs exactly at it (the step at ``S_{i+1}`` already has the next peak).

    ``min_lr`` is an absolute floor (like timm's ``lr_min`` and torch's ``eta_min``), the same for
    every cycle. TF's ``alpha`` is instead a fraction of the initial lr and TF decays only the
    cosine part: ``lr_TF = peak_lr * (alpha + (1 - alpha) * m_mul**i * cos_part)``. With
    ``min_lr = alpha * peak_lr`` the two agree exactly when ``alpha = 0`` (the official IEG
    setting) or ``m_mul = 1``; otherwise TF's cycle peaks are ``min_lr + (peak_lr - min_lr) *
    m_mul**i`` where here they are ``peak_lr * m_mul**i`` (as in timm's ``cycle_decay``). Once
    ``peak_lr * m_mul**i`` falls below ``min_lr`` the peak is clamped to ``min_lr`` (the lr stays
    at ``min_lr``), so the lr never leaves ``[min_lr, peak_lr]`` after the warmup.

    Warmup: for ``step < warmup_steps`` the lr rises linearly from ``warmup_start_lr`` (at step 0)
    towards ``peak_lr`` (reached at ``step = warmup_steps``); the SGDR clock then starts, i.e. the
    schedule above is evaluated at ``t = step - warmup_steps`` (timm's ``warmup_prefix=True``).

    Args:
      step: the global step (0-based), an int or a real number >= 0.
      peak_lr: the lr at the start of the first cycle (TF's ``learning_rate``), >= 0.
      first_cycle_steps: length of the first cycle in steps (TF's ``first_decay_steps``), >= 1.
      t_mul: cycle length multiplier, >= 1 (may be non-integer: the IEG code uses 1.5).
      m_mul: cycle peak multiplier, in (0, 1].
      min_lr: absolute lr floor, 0 <= min_lr <= peak_lr.
      warmup_steps: number of linear warmup steps before the first cycle, >= 0.
      warmup_start_lr: the lr at step 0 when ``warmup_steps > 0``, 0 <= warmup_start_lr <= peak_lr.
    """
    step = check_real("step", step)
    if step < 0:
        raise ValueError(f"step: expected >= 0, got {step}")
    peak_lr = check_real("peak_lr", peak_lr)
    if peak_lr < 0:
        raise ValueError(f"peak_lr: expected >= 0, got {peak_lr}")
    first, t_mul = check_cycle_args(first_cycle_steps, t_mul)
    m_mul = check_real("m_mul", m_mul)
    if not 0.0 < m_mul <= 1.0:
        raise ValueError(f"m_mul: expected a value in (0, 1], got {m_mul}")
    min_lr = check_real("min_lr", min_lr)
    if min_lr < 0:
        raise ValueError(f"min_lr: expected >= 0, got {min_lr}")
    if min_lr > peak_lr:
        raise ValueError(f"min_lr: expected <= peak_lr ({peak_lr}), got {min_lr}")
    warmup_steps = check_int("warmup_steps", warmup_steps, 0)
    warmup_start_lr = check_real("warmup_start_lr", warmup_start_lr)
    if not 0.0 <= warmup_start_lr <= peak_lr:
        raise ValueError(
            f"warmup_start_lr: expected a value in [0, peak_lr ({peak_lr})], got {warmup_start_lr}"
        )

    if step < warmup_steps:
        return warmup_start_lr + (peak_lr - warmup_start_lr) * (step / warmup_steps)
    i, t_cur, t_i = _locate(step - warmup_steps, first, t_mul)
    peak_i = max(peak_lr * m_mul**i, min_lr)
    # the fraction first: pi * t_cur overflows to inf (and cos(inf) raises) for t_cur near 1.8e308
    return min_lr + (peak_i - min_lr) * (0.5 * (1.0 + math.cos(math.pi * (t_cur / t_i))))


def sgdr_restarts(first_cycle_steps: int, t_mul: float = 1.5, n: int = 10) -> list[float]:
    """The first ``n`` restart steps ``S_1, ..., S_n`` of the SGDR clock (cycle 0 starts at 0).

    ``S_i = first_cycle_steps * (t_mul**i - 1) / (t_mul - 1)`` (``first_cycle_steps * i`` for
    ``t_mul = 1``): for 500 and 1.5 these are 500, 1250, 2375, 4062.5, 6593.75, ... They are real
    numbers; the first step that runs at the new cycle's lr is ``ceil(S_i)``. With a warmup, add
    ``warmup_steps`` to each.
    """
    first, t_mul = check_cycle_args(first_cycle_steps, t_mul)
    n = check_int("n", n, 0)
    return [_cycle_start(i, first, t_mul) for i in range(1, n + 1)]


def linear_rampup(step: int, rampup_steps: int | None) -> float:
    """min(1, step / rampup_steps): MixMatch's linear ramp-up factor (1 when rampup_steps is None)."""
    if rampup_steps is None:
        return 1.0
    return min(1.0, max(0, step) / rampup_steps)


def linear_warmup(step: int, warmup_steps: int) -> float:
    """min(1, (step + 1) / warmup_steps): the gradual warm-up's lr factor at ``step`` (0-based).

    Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017, sec. 2.2
    ("gradual warmup"): the lr rises linearly from peak / warmup_steps at step 0 to the peak at
    step warmup_steps - 1 and stays there; 1 at every step when ``warmup_steps`` is 0.
    """
    step = check_int("step", step, 0)
    warmup_steps = check_int("warmup_steps", warmup_steps, 0)
    if warmup_steps == 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


def check_rampup(rampup_steps: int | None) -> int | None:
    """``rampup_steps`` validated: None or an integer >= 1."""
    if rampup_steps is not None and (int(rampup_steps) != rampup_steps or rampup_steps < 1):
        raise ValueError(f"rampup_steps: expected None or an integer >= 1, got {rampup_steps}")
    return rampup_steps
