"""SGDRSchedule paths the schedule tests leave out (found by mutation testing, docs/mutation.md):
the part with a tensor lr, every setting reaching the schedule, resuming (last_epoch) including
mid-warmup, a param group added after the scheduler was built, and the restart list's defaults."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from iegkit.functional.schedule import sgdr, sgdr_restarts
from iegkit.parts.sgdr_schedule import SGDRSchedule


def _optimizer(lr=0.1):
    model = torch.nn.Linear(3, 2)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def test_the_part_sets_a_tensor_lr_in_place_and_remembers_copies():
    lr = torch.tensor(0.1)
    optimizer = _optimizer(lr)
    scheduler = SGDRSchedule(optimizer, 10, t_mul=2.0, warmup_steps=2)
    remembered = []
    for step in (0, 3, 17):
        scheduler.contribute(SimpleNamespace(step=step, optimizer=optimizer))
        expected = sgdr(step, peak_lr=0.1, first_cycle_steps=10, t_mul=2.0, warmup_steps=2)
        assert optimizer.param_groups[0]["lr"] is lr
        assert float(lr) == pytest.approx(expected, rel=1e-6)
        remembered.append(scheduler.get_last_lr())
    # each step's get_last_lr() is a copy, not the live tensor the next step overwrites
    assert float(remembered[0][0]) == pytest.approx(0.0, abs=1e-12)
    assert float(remembered[1][0]) == pytest.approx(
        sgdr(3, peak_lr=0.1, first_cycle_steps=10, t_mul=2.0, warmup_steps=2), rel=1e-6)


def test_every_setting_reaches_the_schedule():
    optimizer = _optimizer()
    settings = dict(first_cycle_steps=7, t_mul=2.0, m_mul=0.5, min_lr=0.01, warmup_steps=3,
                    warmup_start_lr=0.02)
    scheduler = SGDRSchedule(optimizer, **settings)
    for step in range(80):
        assert scheduler.lrs_at(step) == [sgdr(step, peak_lr=0.1, **settings)]


def test_settings_errors_name_the_argument():
    optimizer = _optimizer()
    for name in ("m_mul", "min_lr", "warmup_start_lr"):
        with pytest.raises(TypeError, match=f"^{name}:"):
            SGDRSchedule(optimizer, 10, **{name: "0.1"})
    for name in ("warmup_steps", "last_epoch"):
        with pytest.raises(TypeError, match=f"^{name}:"):
            SGDRSchedule(optimizer, 10, **{name: 1.5})
    with pytest.raises(ValueError, match="^last_epoch:"):
        SGDRSchedule(optimizer, 10, last_epoch=-2)


def test_resuming_mid_warmup_from_last_epoch():
    """A run with a warmup from 0 and a floor min_lr resumed at step 1: the group's current lr
    (0.005) is below min_lr, but the peak of a resumed group is its initial_lr (torch's rule)."""
    settings = dict(first_cycle_steps=10, min_lr=0.01, warmup_steps=10, warmup_start_lr=0.0)
    optimizer = _optimizer()
    scheduler = SGDRSchedule(optimizer, **settings)
    optimizer.step()  # (no gradients: changes nothing; torch wants it before scheduler.step())
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02)
    optimizer.param_groups[0]["lr"] = 0.005  # e.g. restored from a checkpoint taken mid-warmup
    resumed = SGDRSchedule(optimizer, **settings, last_epoch=2)
    assert resumed.base_lrs == [0.1]
    assert resumed.last_epoch == 3  # LRScheduler's resume takes one step
    assert optimizer.param_groups[0]["lr"] == pytest.approx(
        sgdr(3, peak_lr=0.1, **settings), rel=1e-12)


def test_a_param_group_added_after_building_is_an_error_not_silently_skipped():
    optimizer = _optimizer()
    scheduler = SGDRSchedule(optimizer, 10)
    optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.5})
    with pytest.raises(ValueError):
        scheduler.contribute(SimpleNamespace(step=1, optimizer=optimizer))


def test_restart_list_defaults_are_t_mul_one_and_a_half_and_ten_restarts():
    assert sgdr_restarts(500) == sgdr_restarts(500, 1.5, 10)
    assert len(sgdr_restarts(500)) == 10
    assert sgdr_restarts(500)[:3] == [500.0, 1250.0, 2375.0]


def _expected_lr(t, *, peak_lr, first_cycle_steps, t_mul, m_mul):
    """SGDR eq. 5 with cycle i = the number of restarts S_1, S_2, ... at or before t."""
    import math
    restarts = sgdr_restarts(first_cycle_steps, t_mul, 200)
    i = sum(1 for s in restarts if s <= t)
    start = 0.0 if i == 0 else restarts[i - 1]
    length = first_cycle_steps * t_mul**i
    return peak_lr * m_mul**i * 0.5 * (1.0 + math.cos(math.pi * (t - start) / length))


@pytest.mark.parametrize("first,t_mul", [(1, 1.1), (3, 1.25), (7, 1.5), (500, 1.5), (10, 2.0)])
def test_steps_a_hair_before_and_at_each_restart(first, t_mul):
    """Just below a restart the closed-form cycle estimate can round up by one; the step still
    belongs to the ending cycle (lr near 0), and at the restart to the new one (lr = its peak)."""
    import math
    settings = dict(peak_lr=0.1, first_cycle_steps=first, t_mul=t_mul, m_mul=0.5)
    for s in sgdr_restarts(first, t_mul, 12):
        for t in (math.nextafter(s, 0.0), s):
            assert sgdr(t, **settings) == pytest.approx(_expected_lr(t, **settings), rel=1e-9,
                                                        abs=1e-12), t


def _expected_far(t, first, t_mul):
    import math
    restarts = sgdr_restarts(first, t_mul, 800)
    i = sum(1 for s in restarts if s <= t)
    start, length = restarts[i - 1], first * t_mul**i
    return 0.1 * 0.9**i * 0.5 * (1.0 + math.cos(math.pi * ((t - start) / length)))


def test_a_clock_beyond_float_range_of_the_estimate():
    """t / first * (t_mul - 1) overflows to inf for t near the float maximum: the cycle is then
    found from logarithms of the factors (here 2 < t_mul < 3)."""
    t, first, t_mul = 1.22e308, 1, 2.5
    assert t / first * (t_mul - 1) == float("inf")
    assert sgdr(t, peak_lr=0.1, first_cycle_steps=first, t_mul=t_mul) == pytest.approx(
        _expected_far(t, first, t_mul), rel=1e-9, abs=1e-300)


def test_a_clock_near_the_float_maximum():
    """pi * T_cur overflows to inf for T_cur above ~5.7e307 (and math.cos(inf) raises 'math domain
    error'): the phase is computed as pi * (T_cur / T_i), a fraction in [0, 1)."""
    t, first, t_mul = 1.5e308, 1, 2.5
    assert sgdr(t, peak_lr=0.1, first_cycle_steps=first, t_mul=t_mul) == pytest.approx(
        _expected_far(t, first, t_mul), rel=1e-9, abs=1e-300)
