"""virtual_step against torch.optim itself (torchopt's pattern): theta' equals optimizer.step()."""

from __future__ import annotations


import inspect

import pytest
import torch
from conftest import make_problem, stepped_copy, take_real_step

from iegkit.errors import UnsupportedOptimizerError
from iegkit.functional import trainable_parameters, virtual_step

OPTIMIZERS = [
    (torch.optim.SGD, dict(lr=0.1)),
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.5, maximize=True)),
    (torch.optim.Adam, dict(lr=1e-2)),
    (torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-2, betas=(0.8, 0.99))),
    (torch.optim.AdamW, dict(lr=1e-2, weight_decay=1e-1)),
]


@pytest.mark.parametrize("cls,kwargs", OPTIMIZERS, ids=lambda v: str(v))
def test_matches_optimizer_step(cls, kwargs):
    model, x, y, *_ = make_problem("mlp")
    optimizer = cls(model.parameters(), **kwargs)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in model.parameters()]
        entries = trainable_parameters(model, optimizer)
        params = [p for _, p, _ in entries]
        step = virtual_step(optimizer, params, grads, [g for _, _, g in entries])
        for new, ref in zip(step.params, stepped_copy(model, optimizer, grads)):
            torch.testing.assert_close(new, ref, rtol=1e-13, atol=1e-15)
        take_real_step(model, optimizer, x, y)


@pytest.mark.parametrize("cls,kwargs", OPTIMIZERS, ids=lambda v: str(v))
def test_scale_is_the_jacobian_diagonal(cls, kwargs):
    """D = d theta'/d g, checked by central finite differences in float64."""
    model, x, y, *_ = make_problem("mlp")
    optimizer = cls(model.parameters(), **kwargs)
    take_real_step(model, optimizer, x, y)
    entries = trainable_parameters(model, optimizer)
    params = [p for _, p, _ in entries]
    groups = [g for _, _, g in entries]
    grads = [torch.randn_like(p) for p in params]
    step = virtual_step(optimizer, params, grads, groups)
    h = 1e-6
    plus = virtual_step(optimizer, params, [g + h for g in grads], groups)
    minus = virtual_step(optimizer, params, [g - h for g in grads], groups)
    for d, a, b in zip(step.scale, plus.params, minus.params):
        torch.testing.assert_close(d.expand_as(a), (a - b) / (2 * h), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("optimizer_factory", [
    lambda ps: torch.optim.RMSprop(ps, lr=0.1),
    lambda ps: torch.optim.Adam(ps, lr=0.1, amsgrad=True),
    lambda ps: torch.optim.Adagrad(ps, lr=0.1),
])
def test_unsupported_optimizer_is_a_clear_error(optimizer_factory):
    model, *_ = make_problem("mlp")
    optimizer = optimizer_factory(model.parameters())
    entries = trainable_parameters(model, optimizer)
    with pytest.raises(UnsupportedOptimizerError, match="optimizer"):
        virtual_step(optimizer, [p for _, p, _ in entries], [torch.zeros_like(p) for _, p, _ in entries],
                     [g for _, _, g in entries])


def test_optimizer_of_another_model_is_rejected():
    model, *_ = make_problem("mlp")
    other, *_ = make_problem("cnn")
    with pytest.raises(ValueError, match="optimizer"):
        trainable_parameters(model, torch.optim.SGD(other.parameters(), lr=0.1))


# --- The optimizer settings the tests above leave out ---------------------------------------------
# Found by mutation testing (docs/mutation.md): Adam/AdamW with maximize=True, weight decay of
# exactly 1, and the first step of momentum SGD. theta' must equal optimizer.step() on a copy, and D
# = d theta'/d g must equal central finite differences, in float64.


def _params(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True),
            torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)]


class _Model(torch.nn.Module):
    def __init__(self, params):
        super().__init__()
        self.w = torch.nn.Parameter(params[0].detach().clone())
        self.b = torch.nn.Parameter(params[1].detach().clone())


def _check(cls, kwargs, steps_before: int, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed + 100)
    model = _Model(_params(seed))
    optimizer = cls(model.parameters(), **kwargs)
    for _ in range(steps_before):  # real steps, so the optimizer has state
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        optimizer.step()
    entries = trainable_parameters(model, optimizer)
    params = [p for _, p, _ in entries]
    groups = [g for _, _, g in entries]
    grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
    step = virtual_step(optimizer, params, grads, groups)

    for new, ref in zip(step.params, stepped_copy(model, optimizer, grads)):
        torch.testing.assert_close(new, ref, rtol=1e-12, atol=1e-14)

    h = 1e-6
    plus = virtual_step(optimizer, params, [g + h for g in grads], groups)
    minus = virtual_step(optimizer, params, [g - h for g in grads], groups)
    for d, a, b in zip(step.scale, plus.params, minus.params):
        torch.testing.assert_close(d.expand_as(a), (a - b) / (2 * h), rtol=1e-5, atol=1e-8)


ADAM_SETTINGS = [
    (torch.optim.Adam, dict(lr=1e-2, maximize=True)),
    (torch.optim.Adam, dict(lr=1e-2, maximize=True, weight_decay=0.1)),
    (torch.optim.Adam, dict(lr=1e-2, weight_decay=1.0)),
    (torch.optim.AdamW, dict(lr=1e-2, weight_decay=1.0)),
    (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1, maximize=True)),
]
if "decoupled_weight_decay" in inspect.signature(torch.optim.Adam).parameters:  # torch >= 2.6
    ADAM_SETTINGS.append((torch.optim.Adam, dict(lr=1e-2, weight_decay=0.1,
                                                 decoupled_weight_decay=True)))


@pytest.mark.parametrize("cls,kwargs", ADAM_SETTINGS, ids=str)
@pytest.mark.parametrize("steps_before", [0, 2])
def test_adam_maximize_and_unit_weight_decay_match_the_optimizer(cls, kwargs, steps_before):
    _check(cls, kwargs, steps_before)


SGD_SETTINGS = [
    dict(lr=0.1, weight_decay=1.0),
    dict(lr=0.1, momentum=0.9, weight_decay=1.0),
    dict(lr=0.1, momentum=0.9, dampening=0.3),
    dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True),
    dict(lr=0.1, momentum=1.0),
    dict(lr=0.1, momentum=0.5, dampening=1.0),
]


@pytest.mark.parametrize("kwargs", SGD_SETTINGS, ids=str)
@pytest.mark.parametrize("steps_before", [0, 1, 2])
def test_sgd_first_and_later_steps_match_the_optimizer(kwargs, steps_before):
    _check(torch.optim.SGD, kwargs, steps_before)


def test_a_frozen_parameter_does_not_hide_the_rest_of_its_group():
    model = _Model(_params())
    model.w.requires_grad_(False)  # first in the group, frozen
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert [name for name, _, _ in trainable_parameters(model, optimizer)] == ["b"]
    model.w.requires_grad_(True)
    model.b.requires_grad_(False)
    assert [name for name, _, _ in trainable_parameters(model, optimizer)] == ["w"]
    model.w.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        trainable_parameters(model, optimizer)
