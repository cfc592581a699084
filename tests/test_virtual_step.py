"""virtual_step against torch.optim itself (torchopt's pattern): theta' equals optimizer.step()."""

from __future__ import annotations


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
