"""LRWarmup: the pure factor against torch's LinearLR, the part on top of a user's scheduler
against one torch scheduler that holds both, the look-ahead's lr, give-back, errors, recipes."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import make_problem
from hypothesis import given, settings
from hypothesis import strategies as st

import iegkit
from iegkit import keys
from iegkit.functional.schedule import linear_warmup


# -- the pure function ------------------------------------------------------------------------------

@settings(deadline=None, max_examples=60)
@given(st.integers(0, 400), st.integers(1, 100))
def test_linear_warmup_bounds_and_monotonicity(step, warmup_steps):
    factor = linear_warmup(step, warmup_steps)
    assert 0.0 < factor <= 1.0
    assert linear_warmup(step + 1, warmup_steps) >= factor
    assert (factor == 1.0) == (step >= warmup_steps - 1)


@pytest.mark.parametrize("warmup_steps", [2, 3, 10])
def test_linear_warmup_matches_torch_linear_lr(warmup_steps):
    """torch.optim.lr_scheduler.LinearLR(start_factor=1/W, total_iters=W-1) is the same ramp."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    reference = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / warmup_steps,
                                                  end_factor=1.0, total_iters=warmup_steps - 1)
    for step in range(2 * warmup_steps + 2):
        assert linear_warmup(step, warmup_steps) == pytest.approx(optimizer.param_groups[0]["lr"],
                                                                  rel=1e-12)
        optimizer.step()
        reference.step()


def test_linear_warmup_off_and_errors():
    assert linear_warmup(0, 0) == 1.0 and linear_warmup(7, 0) == 1.0
    with pytest.raises(ValueError, match=r"^step: expected an integer >= 0, got -1$"):
        linear_warmup(-1, 3)
    with pytest.raises(ValueError, match=r"^warmup_steps: expected an integer >= 0, got -1$"):
        linear_warmup(0, -1)
    with pytest.raises(TypeError, match=r"^warmup_steps: expected an integer, got float$"):
        linear_warmup(0, 2.5)


# -- the part ---------------------------------------------------------------------------------------

def cosine(total):
    return lambda s: 0.5 * (1 + math.cos(math.pi * s / total))


def record_step_lrs(optimizer):
    """The lr of every group as optimizer.step() runs (a pre-hook registered after the pipeline's)."""
    seen = []
    optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: seen.append([float(g["lr"]) for g in opt.param_groups]))
    return seen


def test_warmup_on_a_user_scheduler_matches_one_torch_scheduler():
    """The part on top of the user's LambdaLR trains exactly as one LambdaLR whose factor is the
    product; outside optimizer.step() the groups hold the user's own lr."""
    warmup, total = 4, 9
    model, x, y, _, _, _ = make_problem("mlp", batch=8)
    reference_model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine(total))
    pipeline = iegkit.compose(iegkit.CrossEntropy(), iegkit.LRWarmup(warmup), model=model,
                              optimizer=optimizer)
    seen = record_step_lrs(optimizer)
    reference_optimizer = torch.optim.SGD(reference_model.parameters(), lr=0.1, momentum=0.9,
                                          weight_decay=5e-4)
    reference_scheduler = torch.optim.lr_scheduler.LambdaLR(
        reference_optimizer, lambda s: cosine(total)(s) * linear_warmup(s, warmup))
    for step in range(total):
        out = pipeline(x, y, step=step)
        assert float(out.values[keys.LR_SCALE]) == linear_warmup(step, warmup)
        assert float(out.metrics["lr_warmup/factor"]) == linear_warmup(step, warmup)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * cosine(total)(step), rel=1e-12)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        assert seen[-1] == [pytest.approx(0.1 * cosine(total)(step) * linear_warmup(step, warmup),
                                          rel=1e-12)]
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * cosine(total)(step), rel=1e-12)
        scheduler.step()
        reference_optimizer.zero_grad()
        torch.nn.functional.cross_entropy(reference_model(x), y).backward()
        reference_optimizer.step()
        reference_scheduler.step()
    for p, r in zip(model.parameters(), reference_model.parameters(), strict=True):
        torch.testing.assert_close(p, r, rtol=1e-12, atol=1e-14)
    pipeline.close()


def _probe_loss(lr, warmup=None, step=1):
    model, x, y, xp, yp, _ = make_problem("mlp", batch=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    # omega0 = 1/B > 0, so that theta' moves with the lr
    parts = [iegkit.MetaReweighter("1/B"), *([iegkit.LRWarmup(warmup)] if warmup else [])]
    pipeline = iegkit.compose(*parts, model=model, optimizer=optimizer)
    out = pipeline(x, y, xp, yp, step=step)
    names = [p.name for p in pipeline.parts]
    pipeline.close()
    return float(out.metrics["meta_reweighter/probe_loss"]), names, optimizer.param_groups[0]["lr"]


def test_the_look_ahead_steps_at_the_warmed_up_lr():
    """L_p(theta') of the look-ahead with LRWarmup(4) at step 1 (factor 1/2) and lr 0.4 is that of
    no warm-up at lr 0.2 (and not at 0.4); the user's lr is left as it was."""
    warmed, names, lr_after = _probe_loss(0.4, warmup=4)
    assert names.index("lr_warmup") < names.index("meta_reweighter")
    assert lr_after == 0.4
    assert warmed == _probe_loss(0.2)[0]
    assert warmed != _probe_loss(0.4)[0]


@pytest.mark.parametrize("scheduler", ["step", "exponential", "cosine", "lambda"])
def test_a_skipped_optimizer_step_leaves_the_users_schedule_alone(scheduler):
    """GradScaler skips optimizer.step() on overflow; the user's scheduler still steps."""
    model, x, y, _, _, _ = make_problem("mlp", batch=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    twin = torch.optim.SGD(copy.deepcopy(model).parameters(), lr=0.1)
    make = {"step": lambda o: torch.optim.lr_scheduler.StepLR(o, 2, 0.1),
            "exponential": lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.5),
            "cosine": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 8),
            "lambda": lambda o: torch.optim.lr_scheduler.LambdaLR(o, cosine(8))}[scheduler]
    user, reference = make(optimizer), make(twin)
    pipeline = iegkit.compose(iegkit.CrossEntropy(), iegkit.LRWarmup(4), model=model,
                              optimizer=optimizer)
    for step in range(6):
        out = pipeline(x, y, step=step)
        if step != 1:  # step 1's optimizer.step() is skipped
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
        user.step()
        twin.step()  # no gradients: only keeps torch's order check quiet
        reference.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(twin.param_groups[0]["lr"],
                                                                rel=1e-12)
    pipeline.close()


def test_a_step_that_raises_changes_no_lr():
    model, x, y, _, _, _ = make_problem("mlp", batch=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pipeline = iegkit.compose(iegkit.CrossEntropy(), iegkit.LRWarmup(4), model=model,
                              optimizer=optimizer)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(iegkit.errors.NonFiniteLossError):
        pipeline(x, y, step=0)
    assert optimizer.param_groups[0]["lr"] == 0.1
    pipeline.close()


def test_every_param_group_and_a_tensor_lr_are_scaled_for_the_step_and_given_back():
    model, x, y, _, _, _ = make_problem("mlp", batch=8)
    reference_model = copy.deepcopy(model)
    params = list(model.parameters())
    lr = torch.tensor(0.01, dtype=torch.float64)
    optimizer = torch.optim.Adam([{"params": params[:1], "lr": 0.03}, {"params": params[1:]}],
                                 lr=lr)
    pipeline = iegkit.compose(iegkit.CrossEntropy(), iegkit.LRWarmup(4), model=model,
                              optimizer=optimizer)
    seen = record_step_lrs(optimizer)
    out = pipeline(x, y, step=1)  # factor 1/2
    out.loss.backward()
    optimizer.step()
    assert seen == [[pytest.approx(0.015), pytest.approx(0.005)]]
    assert optimizer.param_groups[0]["lr"] == 0.03
    assert optimizer.param_groups[1]["lr"] is lr and float(lr) == 0.01
    reference_params = list(reference_model.parameters())
    reference = torch.optim.Adam([{"params": reference_params[:1], "lr": 0.015},
                                  {"params": reference_params[1:]}], lr=0.005)
    torch.nn.functional.cross_entropy(reference_model(x), y).backward()
    reference.step()
    for p, r in zip(params, reference_params, strict=True):
        torch.testing.assert_close(p, r, rtol=1e-12, atol=1e-14)
    pipeline.close()


def test_beside_sgdr_the_step_runs_at_sgdr_times_the_factor():
    model, x, y, xp, yp, _ = make_problem("mlp", batch=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = iegkit.SGDRSchedule(optimizer, 3)
    pipeline = iegkit.compose(iegkit.MetaReweighter(), schedule, iegkit.LRWarmup(4), model=model,
                              optimizer=optimizer)
    seen = record_step_lrs(optimizer)
    for step in range(5):
        out = pipeline(x, y, xp, yp, step=step)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        assert seen[-1] == [pytest.approx(schedule.lrs_at(step)[0] * linear_warmup(step, 4))]
        assert optimizer.param_groups[0]["lr"] == pytest.approx(schedule.lrs_at(step)[0])
    assert "before optimizer.step() (hook): lr_warmup" in pipeline.describe()
    pipeline.close()
    pipeline(x, y, xp, yp, step=0)  # closed: the hooks are gone, the lr stays the user's
    optimizer.step()
    assert seen[-1] == [pytest.approx(schedule.lrs_at(0)[0])]


def test_errors_and_state():
    with pytest.raises(ValueError, match=r"^warmup_steps: expected an integer >= 1, got 0$"):
        iegkit.LRWarmup(0)
    with pytest.raises(TypeError, match=r"^warmup_steps: expected an integer, got bool$"):
        iegkit.LRWarmup(True)
    part = iegkit.LRWarmup(7)
    assert part.state_dict() == {"warmup_steps": 7}
    twin = iegkit.LRWarmup(3)
    twin.load_state_dict(part.state_dict())
    assert twin.warmup_steps == 7
    with pytest.raises(ValueError, match=r"^state: LRWarmup expects the key 'warmup_steps', "
                                         r"got \['steps'\]$"):
        twin.load_state_dict({"steps": 3})
    with pytest.raises(ValueError, match=r"^warmup_steps: expected an integer >= 1, got 0$"):
        twin.load_state_dict({"warmup_steps": 0})
    twin.load_state_dict({"warmup_steps": 1})  # a one-step warm-up (no scaling) is a valid state
    assert twin.warmup_steps == 1


# -- the recipes ------------------------------------------------------------------------------------

def _parts(pipeline, kind):
    return [p for p in pipeline.parts if isinstance(p, kind)]


def test_robust_eg_warms_up_over_five_percent_of_the_run_by_default():
    model, _, _, _, _, _ = make_problem("cnn")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pipeline = iegkit.recipes.robust_eg(model, optimizer, total_steps=1560,
                                        strong_augment=lambda x, generator=None: x)
    assert [p.warmup_steps for p in _parts(pipeline, iegkit.LRWarmup)] == [78]
    pipeline.close()
    off = iegkit.recipes.robust_eg(model, optimizer, total_steps=1560, warmup_fraction=0.0,
                                   strong_augment=lambda x, generator=None: x)
    assert not _parts(off, iegkit.LRWarmup)
    off.close()
    sgdr = iegkit.recipes.robust_eg(model, optimizer, total_steps=1560, first_cycle_steps=78,
                                    strong_augment=lambda x, generator=None: x)
    assert [p.warmup_steps for p in _parts(sgdr, iegkit.LRWarmup)] == [78]
    assert [p.warmup_steps for p in _parts(sgdr, iegkit.SGDRSchedule)] == [0]
    sgdr.close()
    with pytest.raises(ValueError, match="warmup_fraction"):
        iegkit.recipes.robust_eg(model, optimizer, total_steps=10, warmup_fraction=1.5)


def test_robust_ieg_has_no_warmup_unless_asked():
    model, _, _, _, _, _ = make_problem("cnn")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    strong = lambda x, generator=None: x  # noqa: E731
    default = iegkit.recipes.robust_ieg(model, optimizer, total_steps=200, strong_augment=strong)
    assert not _parts(default, iegkit.LRWarmup)
    default.close()
    asked = iegkit.recipes.robust_ieg(model, optimizer, total_steps=200, strong_augment=strong,
                                      warmup_fraction=0.1)
    assert [p.warmup_steps for p in _parts(asked, iegkit.LRWarmup)] == [20]
    asked.close()


# -- mutation testing (docs/mutation.md): the factor's precision from a one-step warm-up up, an
# unbound part's hooks, and an lr left alone once the warm-up is over.

@pytest.mark.parametrize("warmup_steps", [1, 3, 7])
def test_the_factor_is_provided_exactly_in_float64(warmup_steps):
    """LR_SCALE is (step + 1) / W in float64 (1/3 is not a float32): the look-ahead's lr is the
    real step's; W = 1 is a valid warm-up whose factor is 1 from step 0."""
    part = iegkit.LRWarmup(warmup_steps)
    for step in range(warmup_steps + 2):
        value = part.contribute(SimpleNamespace(step=step)).values[keys.LR_SCALE]
        assert value.dtype == torch.float64
        assert value.item() == min(1.0, (step + 1) / warmup_steps)


def test_the_step_hooks_of_an_unbound_part_do_nothing():
    part = iegkit.LRWarmup(4)
    part.before_optimizer_step(0)  # factor 1/4, but no optimizer to scale
    part.after_optimizer_step(0)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    part.bind(torch.nn.Linear(1, 1), optimizer)
    part.after_optimizer_step(0)  # nothing was taken while unbound: nothing to give back
    assert optimizer.param_groups[0]["lr"] == 0.1


def test_after_the_warm_up_the_part_writes_no_lr():
    """From step W - 1 on (factor 1) the hooks leave the lr alone: one that the user sets after an
    optimizer.step() that raised (so no post-hook ran) is the next step's lr."""
    model, x, y, _, _, _ = make_problem("mlp", batch=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pipeline = iegkit.compose(iegkit.CrossEntropy(), iegkit.LRWarmup(2), model=model,
                              optimizer=optimizer)
    seen = record_step_lrs(optimizer)

    def closure():
        raise RuntimeError("closure failed")

    pipeline(x, y, step=1).loss.backward()
    with pytest.raises(RuntimeError, match="closure failed"):
        optimizer.step(closure)
    optimizer.param_groups[0]["lr"] = 0.05  # e.g. the user's scheduler.step()
    pipeline(x, y, step=2).loss.backward()
    optimizer.step()
    assert seen == [[0.1], [0.05]] and optimizer.param_groups[0]["lr"] == 0.05
    pipeline.close()
