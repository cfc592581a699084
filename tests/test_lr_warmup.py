"""LRWarmup: the pure factor against torch's LinearLR, the part on top of a user's scheduler
against one torch scheduler that holds both, the look-ahead's lr, give-back, errors, recipes."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import make_problem
from hypothesis import given, settings
from hypothesis import strategies as st

import iegkit
from iegkit import Contribution, PartBase, keys
from iegkit.errors import DuplicateProviderError
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
    with pytest.raises(ValueError, match="step"):
        linear_warmup(-1, 3)
    with pytest.raises(ValueError, match="warmup_steps"):
        linear_warmup(0, -1)
    with pytest.raises(TypeError, match="warmup_steps"):
        linear_warmup(0, 2.5)


# -- the part ---------------------------------------------------------------------------------------

def cosine(total):
    return lambda s: 0.5 * (1 + math.cos(math.pi * s / total))


def test_warmup_on_a_user_scheduler_matches_one_torch_scheduler():
    """The part on top of the user's LambdaLR trains exactly as one LambdaLR whose factor is the
    product; after every step the user's scheduler sees its own lr."""
    warmup, total = 4, 9
    model, x, y, _, _, _ = make_problem("mlp", batch=8)
    reference_model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine(total))
    pipeline = iegkit.compose(iegkit.CrossEntropy(), iegkit.LRWarmup(warmup), model=model,
                              optimizer=optimizer)
    reference_optimizer = torch.optim.SGD(reference_model.parameters(), lr=0.1, momentum=0.9,
                                          weight_decay=5e-4)
    reference_scheduler = torch.optim.lr_scheduler.LambdaLR(
        reference_optimizer, lambda s: cosine(total)(s) * linear_warmup(s, warmup))
    for step in range(total):
        out = pipeline(x, y, step=step)
        assert float(out.values[keys.LR]) == pytest.approx(
            0.1 * cosine(total)(step) * linear_warmup(step, warmup), rel=1e-6)  # a float32 value
        assert float(out.metrics["lr_warmup/factor"]) == linear_warmup(step, warmup)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * cosine(total)(step), rel=1e-12)
        scheduler.step()
        reference_optimizer.zero_grad()
        torch.nn.functional.cross_entropy(reference_model(x), y).backward()
        reference_optimizer.step()
        reference_scheduler.step()
    for p, r in zip(model.parameters(), reference_model.parameters(), strict=True):
        torch.testing.assert_close(p, r, rtol=1e-12, atol=1e-14)
    pipeline.close()


class LrSpy(PartBase):
    """Records the lr the optimizer holds when it runs (after the lr's provider)."""

    name = "lr_spy"
    optional_requires = (keys.LR,)

    def __init__(self):
        self.seen = []

    def contribute(self, ctx):
        self.seen.append(float(ctx.optimizer.param_groups[0]["lr"]))
        return Contribution()


def test_meta_parts_and_readers_run_after_it_at_the_scaled_lr():
    model, x, y, xp, yp, _ = make_problem("mlp", batch=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    spy = LrSpy()
    pipeline = iegkit.compose(spy, iegkit.MetaReweighter(), iegkit.LRWarmup(4), model=model,
                              optimizer=optimizer)
    names = [p.name for p in pipeline.parts]
    assert names.index("lr_warmup") < names.index("meta_reweighter")
    assert names.index("lr_warmup") < names.index("lr_spy")
    pipeline(x, y, xp, yp, step=1)
    assert spy.seen == [pytest.approx(0.2 * 2 / 4)]
    pipeline.close()


def test_a_step_without_optimizer_step_is_given_back_at_the_next_step():
    model, x, y, _, _, _ = make_problem("mlp", batch=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    spy = LrSpy()
    pipeline = iegkit.compose(iegkit.CrossEntropy(), spy, iegkit.LRWarmup(5), model=model,
                              optimizer=optimizer)
    pipeline(x, y, step=0)  # no optimizer.step(): the scaled lr stays until the next step
    pipeline(x, y, step=1)
    assert spy.seen == [pytest.approx(0.1 / 5), pytest.approx(0.1 * 2 / 5)]  # not compounded
    optimizer.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    pipeline(x, y, step=9)  # after the warm-up: the lr is left alone
    assert spy.seen[-1] == pytest.approx(0.1)
    pipeline.close()


def test_every_param_group_is_scaled_and_given_back():
    model, x, y, _, _, _ = make_problem("mlp", batch=8)
    params = list(model.parameters())
    optimizer = torch.optim.SGD([{"params": params[:1], "lr": 0.3}, {"params": params[1:]}], lr=0.1)
    pipeline = iegkit.compose(iegkit.CrossEntropy(), iegkit.LRWarmup(2), model=model,
                              optimizer=optimizer)
    out = pipeline(x, y, step=0)
    assert [g["lr"] for g in optimizer.param_groups] == [pytest.approx(0.15), pytest.approx(0.05)]
    out.loss.backward()
    optimizer.step()
    assert [g["lr"] for g in optimizer.param_groups] == [0.3, 0.1]
    pipeline.close()


def test_errors_and_state():
    with pytest.raises(ValueError, match="warmup_steps"):
        iegkit.LRWarmup(0)
    with pytest.raises(TypeError, match="warmup_steps"):
        iegkit.LRWarmup(True)
    model, _, _, _, _, _ = make_problem("mlp")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(DuplicateProviderError, match="lr"):
        iegkit.compose(iegkit.CrossEntropy(), iegkit.LRWarmup(3),
                       iegkit.SGDRSchedule(optimizer, 10), model=model, optimizer=optimizer)
    part = iegkit.LRWarmup(7)
    assert part.state_dict() == {"warmup_steps": 7}
    twin = iegkit.LRWarmup(3)
    twin.load_state_dict(part.state_dict())
    assert twin.warmup_steps == 7
    with pytest.raises(ValueError, match="warmup_steps"):
        twin.load_state_dict({"steps": 3})


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
    assert not _parts(sgdr, iegkit.LRWarmup)
    assert [p.warmup_steps for p in _parts(sgdr, iegkit.SGDRSchedule)] == [78]
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
