"""SGDR (cosine annealing with warm restarts): the pure function, the LRScheduler and the part."""

from __future__ import annotations

import io
import math
import warnings
from types import SimpleNamespace

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from iegkit._core.compose import compose
from iegkit._core.part import Contribution, Part, Plan
from iegkit.functional import schedule
from iegkit.functional.schedule import sgdr, sgdr_restarts
from iegkit.parts.cross_entropy import CrossEntropy
from iegkit.parts.sgdr_schedule import SGDRSchedule

IEG = dict(peak_lr=0.1, first_cycle_steps=500, t_mul=1.5, m_mul=0.9)  # the official IEG setting


# -- independent references ------------------------------------------------------------------------

def loop_reference(step, *, peak_lr, first_cycle_steps, t_mul=1.5, m_mul=0.9, min_lr=0.0,
                   warmup_steps=0, warmup_start_lr=0.0):
    """SGDR eq. 5 with the cycle found by accumulating cycle lengths (no logarithms)."""
    if step < warmup_steps:
        return warmup_start_lr + (peak_lr - warmup_start_lr) * step / warmup_steps
    t = step - warmup_steps
    start, length, i = 0.0, float(first_cycle_steps), 0
    while t >= start + length:
        start += length
        length *= t_mul
        i += 1
    peak_i = max(peak_lr * m_mul**i, min_lr)
    return min_lr + 0.5 * (peak_i - min_lr) * (1 + math.cos(math.pi * (t - start) / length))


def reference_boundaries(first_cycle_steps, t_mul, upto):
    out, start, length = [], 0.0, float(first_cycle_steps)
    while start <= upto:
        start += length
        length *= t_mul
        out.append(start)
    return out


def tf_cosine_decay_restarts(step, learning_rate, first_decay_steps, t_mul=2.0, m_mul=1.0,
                             alpha=0.0):
    """tf.compat.v1.train.cosine_decay_restarts, transcribed (float64)."""
    completed = step / first_decay_steps
    if t_mul == 1.0:
        i = math.floor(completed)
        completed -= i
    else:
        i = math.floor(math.log(1.0 - completed * (1.0 - t_mul)) / math.log(t_mul))
        sum_r = (1.0 - t_mul**i) / (1.0 - t_mul)
        completed = (completed - sum_r) / t_mul**i
    cosine_decayed = 0.5 * m_mul**i * (1.0 + math.cos(math.pi * completed))
    return learning_rate * ((1 - alpha) * cosine_decayed + alpha)


# -- the pure function ------------------------------------------------------------------------------

IEG_RESTARTS = [500.0, 1250.0, 2375.0, 4062.5, 6593.75, 10390.625, 16085.9375, 24628.90625,
                37443.359375, 56665.0390625, 85497.55859375, 128746.337890625, 193619.5068359375]


def _ieg_steps():
    near = {s + d for r in IEG_RESTARTS for s in (math.floor(r), math.ceil(r)) for d in (-1, 0, 1)}
    return sorted(near | set(range(0, 200_001, 17)))


def test_restart_steps_of_the_ieg_schedule():
    assert sgdr_restarts(500, 1.5, 13) == IEG_RESTARTS
    # the rounded cycle ends quoted from the official code's notes (docs, section 6.3)
    quoted = [500, 1250, 2375, 4063, 6594, 10391, 16086, 24629, 37443, 56665, 85498, 128746,
              193620]
    assert all(abs(a - b) <= 0.5 for a, b in zip(IEG_RESTARTS, quoted, strict=True))
    assert sgdr_restarts(100, 1.0, 3) == [100.0, 200.0, 300.0]
    assert sgdr_restarts(10, 2, 4) == [10.0, 30.0, 70.0, 150.0]
    assert sgdr_restarts(500, 1.5, 0) == []


def test_matches_the_loop_reference_and_tf_on_the_ieg_schedule():
    for step in _ieg_steps():
        ours = sgdr(step, **IEG)
        assert ours == pytest.approx(loop_reference(step, **IEG), rel=1e-12, abs=1e-15)
        assert ours == pytest.approx(tf_cosine_decay_restarts(step, 0.1, 500, 1.5, 0.9, 0.0),
                                     rel=1e-12, abs=1e-15)


def test_restarts_jump_to_a_peak_that_decays_by_m_mul():
    assert sgdr(0, **IEG) == 0.1
    assert sgdr(250, **IEG) == pytest.approx(0.05, rel=1e-12)
    for i, restart in enumerate(IEG_RESTARTS, start=1):
        first_new = math.ceil(restart)  # the clock is real-valued: TF never rounds a boundary
        before, after = sgdr(first_new - 1, **IEG), sgdr(first_new, **IEG)
        peak_i = 0.1 * 0.9**i
        assert before < 1e-5 * peak_i / 0.9  # the very end of cycle i-1: almost 0
        if restart == first_new:
            assert after == pytest.approx(peak_i, rel=1e-12)  # exactly at the restart: the peak
        else:
            t_cur = first_new - restart  # e.g. step 4063 is 0.5 steps into cycle 4
            t_i = 500 * 1.5**i
            expected = 0.5 * peak_i * (1 + math.cos(math.pi * t_cur / t_i))
            assert after == pytest.approx(expected, rel=1e-12)
            assert 0.999 * peak_i < after < peak_i
        # the middle of cycle i is half its peak
        t_i = 500 * 1.5**i
        assert sgdr(restart + t_i / 2, **IEG) == pytest.approx(peak_i / 2, rel=1e-9)
    # a real-valued step sits on the same continuous clock
    assert sgdr(4062.5, **IEG) == pytest.approx(0.1 * 0.9**4, rel=1e-12)


def test_min_lr_is_an_absolute_floor():
    kw = dict(IEG, min_lr=0.01)
    assert sgdr(0, **kw) == 0.1
    assert sgdr(250, **kw) == pytest.approx(0.01 + 0.5 * (0.1 - 0.01), rel=1e-12)
    assert sgdr(500, **kw) == pytest.approx(0.09, rel=1e-12)  # peak_1 = 0.1 * 0.9, not a mix
    assert sgdr(499.999999, **kw) == pytest.approx(0.01, rel=1e-9)
    # once peak_lr * m_mul**i drops below min_lr the peak is clamped: the lr stays at min_lr
    kw = dict(peak_lr=0.1, first_cycle_steps=10, t_mul=1.0, m_mul=0.5, min_lr=0.02)
    assert sgdr(30, **kw) == 0.02 and sgdr(35, **kw) == 0.02  # 0.1 * 0.5**3 < 0.02


def test_tf_alpha_relation():
    # TF's alpha is a fraction of the initial lr and TF decays only the cosine part; with m_mul = 1
    # (or alpha = 0) min_lr = alpha * peak_lr gives the same schedule.
    for step in range(0, 3000, 7):
        assert sgdr(step, peak_lr=0.1, first_cycle_steps=300, t_mul=1.5, m_mul=1.0,
                    min_lr=0.1 * 0.2) == pytest.approx(
            tf_cosine_decay_restarts(step, 0.1, 300, 1.5, 1.0, 0.2), rel=1e-12)
    for step in range(0, 3000, 7):
        assert sgdr(step, peak_lr=0.1, first_cycle_steps=300, t_mul=1.0, m_mul=0.9) == (
            pytest.approx(tf_cosine_decay_restarts(step, 0.1, 300, 1.0, 0.9, 0.0), rel=1e-12))
    # with alpha > 0 and m_mul < 1 they differ, as documented: TF's cycle-1 peak is
    # alpha*lr + (1 - alpha)*lr*m_mul, ours is lr*m_mul.
    assert tf_cosine_decay_restarts(300, 0.1, 300, 1.5, 0.9, 0.2) == pytest.approx(0.02 + 0.08 * 0.9)
    assert sgdr(300, peak_lr=0.1, first_cycle_steps=300, m_mul=0.9, min_lr=0.02) == (
        pytest.approx(0.09))


@pytest.mark.parametrize("t_mult", [1, 2, 3])
def test_matches_torch_cosine_annealing_warm_restarts(t_mult):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.3)
    torch_sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=7, T_mult=t_mult, eta_min=0.01)
    for step in range(400):
        ours = sgdr(step, peak_lr=0.3, first_cycle_steps=7, t_mul=t_mult, m_mul=1.0, min_lr=0.01)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(ours, rel=1e-12, abs=1e-15)
        optimizer.step()
        torch_sched.step()


def test_warmup_then_the_sgdr_clock_starts():
    kw = dict(IEG, warmup_steps=100, warmup_start_lr=0.001)
    assert sgdr(0, **kw) == 0.001
    assert sgdr(50, **kw) == pytest.approx(0.001 + 0.5 * 0.099, rel=1e-12)
    assert sgdr(100, **kw) == 0.1  # the SGDR clock starts at the end of the warmup
    for step in (101, 350, 600, 1349, 1350, 4162, 4163):
        assert sgdr(step, **kw) == sgdr(step - 100, **IEG)


# dyadic t_mul (k/8) keeps every cycle boundary exact, so the loop reference agrees bit for bit
# about which cycle a step is in; for other values a step can sit within rounding of a boundary.
dyadic_t_mul = st.integers(8, 24).map(lambda k: k / 8)
any_t_mul = st.one_of(dyadic_t_mul, st.floats(1.0, 4.0))
fraction = st.floats(0.0, 1.0)


@settings(max_examples=200, deadline=None)
@given(step=st.integers(0, 10**6), first=st.integers(1, 2000), t_mul=any_t_mul,
       m_mul=st.floats(0.05, 1.0), peak=st.floats(0.0, 10.0), min_frac=fraction,
       warmup=st.integers(0, 1000), start_frac=fraction)
def test_property_matches_the_loop_reference(step, first, t_mul, m_mul, peak, min_frac, warmup,
                                             start_frac):
    kw = dict(peak_lr=peak, first_cycle_steps=first, t_mul=t_mul, m_mul=m_mul,
              min_lr=peak * min_frac, warmup_steps=warmup, warmup_start_lr=peak * start_frac)
    t = step - warmup
    if t >= 0:
        boundaries = reference_boundaries(first, t_mul, t)
        assume(all(abs(t - b) > 1e-9 * max(1.0, b) for b in boundaries))
    assert sgdr(step, **kw) == pytest.approx(loop_reference(step, **kw), rel=1e-9, abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(step=st.one_of(st.integers(0, 10**7), st.floats(0.0, 1e7)), first=st.integers(1, 5000),
       t_mul=any_t_mul, m_mul=st.floats(0.01, 1.0), peak=st.floats(0.0, 10.0), min_frac=fraction,
       warmup=st.integers(0, 1000), start_frac=fraction)
def test_property_lr_stays_within_min_and_peak(step, first, t_mul, m_mul, peak, min_frac, warmup,
                                               start_frac):
    min_lr, start = peak * min_frac, peak * start_frac
    lr = sgdr(step, peak_lr=peak, first_cycle_steps=first, t_mul=t_mul, m_mul=m_mul,
              min_lr=min_lr, warmup_steps=warmup, warmup_start_lr=start)
    tol = 1e-12 * max(peak, 1e-300)
    low = start if step < warmup else min_lr
    assert low - tol <= lr <= peak + tol


@settings(max_examples=300, deadline=None)
@given(first=st.integers(1, 3000), t_mul=dyadic_t_mul, m_mul=st.floats(0.01, 1.0),
       peak=st.floats(1e-6, 10.0), min_frac=fraction, cycle=st.integers(0, 8), a=fraction,
       b=fraction)
def test_property_lr_is_non_increasing_within_a_cycle(first, t_mul, m_mul, peak, min_frac, cycle,
                                                      a, b):
    kw = dict(peak_lr=peak, first_cycle_steps=first, t_mul=t_mul, m_mul=m_mul,
              min_lr=peak * min_frac)
    starts = [0.0, *sgdr_restarts(first, t_mul, cycle + 1)]
    start, end = starts[cycle], starts[cycle + 1]
    s1, s2 = sorted((start + a * (end - start), start + b * (end - start)))
    assume(s2 < end)
    assert sgdr(s2, **kw) <= sgdr(s1, **kw) + 1e-12 * peak
    # and the next cycle opens at its (m_mul-decayed) peak
    assert sgdr(end, **kw) == pytest.approx(max(peak * m_mul ** (cycle + 1), peak * min_frac),
                                            rel=1e-9)


@settings(max_examples=200, deadline=None)
@given(warmup=st.integers(1, 5000), peak=st.floats(0.0, 10.0), start_frac=fraction, a=fraction,
       b=fraction)
def test_property_warmup_is_monotone(warmup, peak, start_frac, a, b):
    kw = dict(peak_lr=peak, first_cycle_steps=100, warmup_steps=warmup,
              warmup_start_lr=peak * start_frac)
    s1, s2 = sorted((a * warmup, b * warmup))
    assert sgdr(s1, **kw) <= sgdr(s2, **kw) + 1e-12 * peak
    assert sgdr(0, **kw) == peak * start_frac
    assert sgdr(warmup, **kw) == peak


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        (dict(step=-1), ValueError, "step"),
        (dict(step=float("nan")), ValueError, "step"),
        (dict(step="3"), TypeError, "step"),
        (dict(peak_lr=-0.1), ValueError, "peak_lr"),
        (dict(first_cycle_steps=0), ValueError, "first_cycle_steps"),
        (dict(first_cycle_steps=2.5), TypeError, "first_cycle_steps"),
        (dict(t_mul=0.9), ValueError, "t_mul"),
        (dict(t_mul=float("inf")), ValueError, "t_mul"),
        (dict(m_mul=0.0), ValueError, "m_mul"),
        (dict(m_mul=1.1), ValueError, "m_mul"),
        (dict(min_lr=0.2), ValueError, "min_lr"),
        (dict(min_lr=-0.01), ValueError, "min_lr"),
        (dict(warmup_steps=-1), ValueError, "warmup_steps"),
        (dict(warmup_start_lr=0.5), ValueError, "warmup_start_lr"),
        (dict(warmup_start_lr=-0.5), ValueError, "warmup_start_lr"),
    ],
)
def test_errors_name_the_argument(kwargs, error, name):
    args = dict(IEG, step=10)
    args.update(kwargs)
    step = args.pop("step")
    with pytest.raises(error, match=rf"^{name}:"):
        sgdr(step, **args)


def test_restarts_errors_name_the_argument():
    with pytest.raises(ValueError, match="^first_cycle_steps:"):
        sgdr_restarts(0, 1.5, 3)
    with pytest.raises(ValueError, match="^t_mul:"):
        sgdr_restarts(500, 0.5, 3)
    with pytest.raises(ValueError, match="^n:"):
        sgdr_restarts(500, 1.5, -1)


def test_extreme_values_do_not_overflow():
    assert sgdr(10**9, peak_lr=0.1, first_cycle_steps=1, t_mul=1e300) == pytest.approx(0.09)
    assert 0.0 <= sgdr(1e300, peak_lr=0.1, first_cycle_steps=1, t_mul=4.0) <= 0.1


# -- the LRScheduler --------------------------------------------------------------------------------

def _two_groups(optimizer_cls=torch.optim.SGD, **kw):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    optimizer = optimizer_cls([{"params": model[0].parameters(), "lr": 0.1},
                               {"params": model[1].parameters(), "lr": 0.02}], **kw)
    return model, optimizer


def _train_step(model, optimizer):
    optimizer.zero_grad()
    model(torch.ones(2, 3)).square().mean().backward()
    optimizer.step()


SCHED = dict(first_cycle_steps=20, t_mul=1.5, m_mul=0.9, min_lr=0.001)


@pytest.mark.parametrize("optimizer_cls", [torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW])
@pytest.mark.parametrize("warmup", [0, 5])
def test_scheduler_steps_follow_the_pure_function(optimizer_cls, warmup):
    model, optimizer = _two_groups(optimizer_cls)
    scheduler = SGDRSchedule(optimizer, warmup_steps=warmup, warmup_start_lr=0.0005, **SCHED)
    assert scheduler.last_epoch == 0
    assert scheduler.base_lrs == [0.1, 0.02]
    for step in range(300):
        expected = [sgdr(step, peak_lr=peak, warmup_steps=warmup, warmup_start_lr=0.0005, **SCHED)
                    for peak in (0.1, 0.02)]
        assert [g["lr"] for g in optimizer.param_groups] == expected
        assert scheduler.get_last_lr() == expected
        if step == 0:
            assert expected[0] == (0.0005 if warmup else 0.1)
        _train_step(model, optimizer)
        scheduler.step()
        assert scheduler.last_epoch == step + 1


def test_scheduler_ieg_defaults_and_closed_form_step():
    _, optimizer = _two_groups()
    scheduler = SGDRSchedule(optimizer, 500)
    assert (scheduler.t_mul, scheduler.m_mul, scheduler.min_lr) == (1.5, 0.9, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # step(epoch) is deprecated in torch, but closed form here
        scheduler.step(1250)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.9**2)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.02 * 0.9**2)
    assert scheduler.lrs_at(0) == [0.1, 0.02]


def test_scheduler_tensor_lr_keeps_its_tensor():
    model = torch.nn.Linear(3, 2)
    lr = torch.tensor(0.01)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = SGDRSchedule(optimizer, 10, warmup_steps=4)
    for step in range(1, 30):
        _train_step(model, optimizer)
        scheduler.step()
        assert optimizer.param_groups[0]["lr"] is lr
        assert float(lr) == pytest.approx(sgdr(step, peak_lr=0.01, first_cycle_steps=10,
                                               warmup_steps=4), rel=1e-6)


def test_scheduler_state_dict_round_trip():
    model, optimizer = _two_groups(torch.optim.SGD, momentum=0.9)
    scheduler = SGDRSchedule(optimizer, warmup_steps=3, warmup_start_lr=0.0005, **SCHED)
    for _ in range(37):
        _train_step(model, optimizer)
        scheduler.step()
    state = scheduler.state_dict()
    assert "optimizer" not in state
    buffer = io.BytesIO()
    torch.save({"scheduler": state, "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)  # weights_only: the state is plain numbers, strings and lists

    reference = []
    for _ in range(60):
        _train_step(model, optimizer)
        scheduler.step()
        reference.append([g["lr"] for g in optimizer.param_groups])

    model2, optimizer2 = _two_groups(torch.optim.SGD, momentum=0.9)
    scheduler2 = SGDRSchedule(optimizer2, first_cycle_steps=7)  # config comes from the state
    optimizer2.load_state_dict(saved["optimizer"])
    scheduler2.load_state_dict(saved["scheduler"])
    assert scheduler2.optimizer is optimizer2
    assert scheduler2.first_cycle_steps == 20 and scheduler2.last_epoch == 37
    resumed = []
    for _ in range(60):
        _train_step(model2, optimizer2)
        scheduler2.step()
        resumed.append([g["lr"] for g in optimizer2.param_groups])
    assert resumed == reference


def test_scheduler_errors():
    _, optimizer = _two_groups()
    with pytest.raises(ValueError, match=r"^min_lr:.*param_groups\[1\]"):
        SGDRSchedule(optimizer, 100, min_lr=0.05)  # above group 1's peak 0.02
    with pytest.raises(ValueError, match="^warmup_start_lr:"):
        SGDRSchedule(optimizer, 100, warmup_steps=10, warmup_start_lr=0.05)
    with pytest.raises(ValueError, match="^first_cycle_steps:"):
        SGDRSchedule(optimizer, 0)
    with pytest.raises(ValueError, match="^t_mul:"):
        SGDRSchedule(optimizer, 10, t_mul=0.5)
    with pytest.raises(ValueError, match="^m_mul:"):
        SGDRSchedule(optimizer, 10, m_mul=0.0)
    with pytest.raises(TypeError, match="^optimizer:"):
        SGDRSchedule(torch.nn.Linear(2, 2), 10)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.02]  # failed builds change nothing


# -- the part ---------------------------------------------------------------------------------------

def test_is_a_part():
    _, optimizer = _two_groups()
    scheduler = SGDRSchedule(optimizer, 500)
    assert isinstance(scheduler, Part)
    assert scheduler.name == "sgdr_schedule"
    assert SGDRSchedule(optimizer, 500, name="lr").name == "lr"
    assert scheduler.requires == () and scheduler.provides == ("lr",)
    assert scheduler.setup(Plan()) is None


def test_contribute_sets_the_lr_of_ctx_step():
    model, optimizer = _two_groups()
    scheduler = SGDRSchedule(optimizer, 500, min_lr=0.001)
    for step in (1250, 0, 4063, 4062, 77):  # any order: the step is explicit
        contribution = scheduler.contribute(SimpleNamespace(step=step, optimizer=optimizer))
        expected = [sgdr(step, peak_lr=p, first_cycle_steps=500, min_lr=0.001) for p in (0.1, 0.02)]
        assert isinstance(contribution, Contribution)
        assert set(contribution.values) == {"lr"}
        assert float(contribution.values["lr"]) == pytest.approx(expected[0], rel=1e-6)
        assert [g["lr"] for g in optimizer.param_groups] == expected
        assert scheduler.last_epoch == step and scheduler.get_last_lr() == expected
    # last_epoch is consistent: a torch-style step() afterwards continues from ctx.step
    _train_step(model, optimizer)
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == sgdr(78, peak_lr=0.1, first_cycle_steps=500,
                                                   min_lr=0.001)


def test_contribute_rejects_another_optimizer():
    _, optimizer = _two_groups()
    _, other = _two_groups()
    scheduler = SGDRSchedule(optimizer, 500)
    with pytest.raises(ValueError, match="^optimizer:"):
        scheduler.contribute(SimpleNamespace(step=3, optimizer=other))
    with pytest.raises(ValueError, match="^step:"):
        scheduler.contribute(SimpleNamespace(step=-3, optimizer=optimizer))


def test_in_a_composed_pipeline_the_lr_is_set_before_the_step():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pipeline = compose(CrossEntropy(), SGDRSchedule(optimizer, 5, warmup_steps=2),
                       model=model, optimizer=optimizer)
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    for step in range(12):
        out = pipeline(x, y, step=step)
        expected = sgdr(step, peak_lr=0.1, first_cycle_steps=5, warmup_steps=2)
        assert optimizer.param_groups[0]["lr"] == expected
        assert float(out.values["lr"]) == pytest.approx(expected, rel=1e-6)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    state = pipeline.state_dict()
    assert state["parts"]["sgdr_schedule"]["last_epoch"] == 11
    optimizer2 = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pipeline2 = compose(CrossEntropy(), SGDRSchedule(optimizer2, 5, warmup_steps=2),
                        model=model, optimizer=optimizer2)
    pipeline2.load_state_dict(state)
    assert pipeline2.parts[1].last_epoch == 11 and pipeline2.parts[1].optimizer is optimizer2


# -- timm, when installed ---------------------------------------------------------------------------

@pytest.mark.parametrize(("warmup", "min_lr"), [(0, 0.0), (0, 0.004), (30, 0.002)])
def test_matches_timm_cosine_lr_scheduler(warmup, min_lr):
    timm_scheduler = pytest.importorskip("timm.scheduler")
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    timm_sched = timm_scheduler.CosineLRScheduler(
        optimizer, t_initial=50, lr_min=min_lr, cycle_mul=1.5, cycle_decay=0.9, cycle_limit=10**6,
        warmup_t=warmup, warmup_lr_init=0.001, warmup_prefix=True, t_in_epochs=False)
    restarts = {warmup + r for r in sgdr_restarts(50, 1.5, 20)}
    for step in range(3000):
        timm_sched.step_update(step)
        if step in restarts:
            continue  # timm takes the cycle from a bare logarithm: an exact restart may round down
        ours = sgdr(step, peak_lr=0.1, first_cycle_steps=50, t_mul=1.5, m_mul=0.9, min_lr=min_lr,
                    warmup_steps=warmup, warmup_start_lr=0.001)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(ours, rel=1e-9, abs=1e-15)


# --- Paths the tests above leave out --------------------------------------------------------------
# Found by mutation testing (docs/mutation.md): the part with a tensor lr, every setting reaching
# the schedule, resuming (last_epoch) including mid-warmup, a param group added after the scheduler
# was built, the restart list's defaults, clocks at a restart and near the float maximum, and the
# peak of a group whose initial_lr an earlier scheduler set (SequentialLR).


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


def test_after_a_sequential_warm_up_the_peak_is_the_initial_lr():
    """SequentialLR's first scheduler (LinearLR) leaves lr at 0.001 and sets initial_lr 0.1, which
    torch takes as SGDR's peak (setdefault): the settings are checked against 0.1, not 0.001."""
    optimizer = _optimizer()
    warm_up = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=5)
    scheduler = SGDRSchedule(optimizer, 10, min_lr=0.01)
    assert scheduler.base_lrs == [0.1]
    sequential = torch.optim.lr_scheduler.SequentialLR(optimizer, [warm_up, scheduler], [5])
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # (no gradients: changes nothing; torch wants it before step())
        sequential.step()
    assert lrs[5:] == pytest.approx(
        [sgdr(t, peak_lr=0.1, first_cycle_steps=10, min_lr=0.01) for t in range(7)], rel=1e-12)
    # and an initial_lr below min_lr is refused, naming the group, whatever the lr
    optimizer.param_groups[0]["initial_lr"] = 0.005
    with pytest.raises(ValueError, match=r"^min_lr: expected <= peak_lr \(0\.005\), got 0\.01 "
                                         r"\(peak_lr is the initial lr of param_groups\[0\]\)$"):
        SGDRSchedule(optimizer, 10, min_lr=0.01)


# --- mutation testing (docs/mutation.md): the cycle search costs the same at any step ------------


@pytest.mark.parametrize("t,first,t_mul", [
    (1e6, 500, 1.5), (4062.5, 500, 1.5), (123456.7, 3, 1.1), (2e5, 10, 2.0),
    (1e6, 1, 1 + 2**-10),  # some 7000 cycles in
    (1.797e308, 1, 2.001),  # t / first * (t_mul - 1) overflows: the estimate from logarithms
])
def test_the_cycle_is_found_from_the_closed_form_estimate_not_by_walking(monkeypatch, t, first,
                                                                         t_mul):
    """The estimate floor(log(1 + t/first (t_mul - 1)) / log(t_mul)) is off by at most one cycle
    (rounding), so the search reads at most 4 cycle starts at any step: one to check the
    estimate's start, one correction, one to check the next start, and the cycle's start."""
    calls = []
    cycle_start = schedule._cycle_start
    monkeypatch.setattr(schedule, "_cycle_start", lambda *a: calls.append(a) or cycle_start(*a))
    assert 0.0 <= sgdr(t, peak_lr=0.1, first_cycle_steps=first, t_mul=t_mul) <= 0.1
    assert 3 <= len(calls) <= 4


# -- mutation testing (docs/mutation.md): SGDR's cycle search near the float maximum -----------------
# The section above bounds the search at 4 cycle starts; these clocks take the overflow
# branch of the estimate (t / first * (t_mul - 1) is inf) with first > 1 and t_mul - 1 != 1, and
# one of them (first 2, t_mul 5) has an estimate one cycle too high that the search corrects.


def _cycle_of(t, first, t_mul):
    """The cycle i with S_i <= t < S_{i+1}, by bisection on S_i = first (t_mul^i - 1) / (t_mul - 1)."""
    def start(i):
        try:
            return first * (t_mul**i - 1.0) / (t_mul - 1.0)
        except OverflowError:
            return math.inf

    low, high = 0, 1
    while start(high) <= t:
        high *= 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if start(middle) <= t else (low, middle)
    return low, start(low)


@pytest.mark.parametrize("t,first,t_mul", [(1e308, 1, 3.0), (1e308, 2, 5.0), (1.5e308, 1, 4.0)])
def test_near_the_float_maximum_the_cycle_search_is_exact_and_short(monkeypatch, t, first, t_mul):
    assert math.isinf(t / first * (t_mul - 1.0))
    calls = []
    cycle_start = schedule._cycle_start
    monkeypatch.setattr(schedule, "_cycle_start", lambda *a: calls.append(a) or cycle_start(*a))
    lr = sgdr(t, peak_lr=0.1, first_cycle_steps=first, t_mul=t_mul)  # m_mul 0.9, min_lr 0
    assert 3 <= len(calls) <= 4
    i, start = _cycle_of(t, first, t_mul)
    assert lr == 0.1 * 0.9**i * (0.5 * (1.0 + math.cos(math.pi * ((t - start)
                                                                  / (first * t_mul**i)))))
