"""The exact JVP meta-gradient against the slow double-backward reference, in float64."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from conftest import make_problem, take_real_step
from reference import reference_meta_gradients

from iegkit.functional import meta_gradients

SGD_CONFIGS = [
    dict(momentum=0.0),
    dict(momentum=0.9),
    dict(momentum=0.9, nesterov=True),
    dict(momentum=0.9, dampening=0.3),
    dict(momentum=0.9, weight_decay=5e-3),
    dict(momentum=0.9, nesterov=True, weight_decay=5e-3),
    dict(momentum=0.5, weight_decay=1e-2, maximize=True),
]


def relative_error(a, b):
    scale = b.norm()
    if scale == 0:
        return float(a.norm())
    return float((a - b).norm() / scale)


def check(model, optimizer, x, y, xp, yp, q, weight_init, label_init, tol):
    got = meta_gradients(model, optimizer, x, y, xp, yp, weight_init=weight_init,
                         label_init=label_init, pseudo_targets=q)
    want_w, want_l = reference_meta_gradients(model, optimizer, x, y, xp, yp,
                                              weight_init=weight_init, label_init=label_init,
                                              pseudo_targets=q)
    assert not got.used_fallback
    assert got.weight.shape == (x.shape[0],)
    assert want_w.norm() > 0
    assert relative_error(got.weight, want_w) < tol
    if label_init is None:
        assert got.label is None
    else:
        assert relative_error(got.label, want_l) < tol
        if float(torch.as_tensor(weight_init).abs().max()) > 0:
            assert want_l.norm() > 0


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("config", SGD_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("relabel", [False, True])
def test_sgd_matches_double_backward(kind, config, relabel):
    model, x, y, xp, yp, q = make_problem(kind)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, **config)
    label_init = 0.9 if relabel else None
    for step in range(2):  # first step (no momentum buffer yet), then a later one
        for weight_init in (0.0, 1.0 / x.shape[0]):
            check(model, optimizer, x, y, xp, yp, q, weight_init, label_init, 1e-12)
        take_real_step(model, optimizer, x, y)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
def test_adam_matches_double_backward(kind, cls):
    model, x, y, xp, yp, q = make_problem(kind)
    optimizer = cls(model.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(2):
        for weight_init, label_init in itertools.product((0.0, 1.0 / x.shape[0]), (None, 0.9)):
            # Adam's first step maps g to about sign(g): its derivative is ill-conditioned, so the
            # two exact computations agree to ~1e-12 rather than ~1e-15.
            check(model, optimizer, x, y, xp, yp, q, weight_init, label_init, 1e-10)
        take_real_step(model, optimizer, x, y)


def test_parameter_groups_and_frozen_parameters():
    model, x, y, xp, yp, q = make_problem("mlp")
    first, bn, _, last = model.net
    bn.weight.requires_grad_(False)
    optimizer = torch.optim.SGD(
        [{"params": first.parameters(), "lr": 0.05, "momentum": 0.9},
         {"params": last.parameters(), "lr": 0.2, "weight_decay": 1e-2, "nesterov": True,
          "momentum": 0.5}],
        lr=0.1,
    )
    # bn.bias is not held by the optimizer and bn.weight is frozen: both keep their value.
    for _ in range(2):
        check(model, optimizer, x, y, xp, yp, q, 1.0 / x.shape[0], 0.9, 1e-12)
        take_real_step(model, optimizer, x, y)


def test_per_example_weight_init_and_lr_override():
    model, x, y, xp, yp, q = make_problem("cnn")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    take_real_step(model, optimizer, x, y)
    omega0 = torch.linspace(0.0, 0.2, x.shape[0], dtype=x.dtype)
    got = meta_gradients(model, optimizer, x, y, xp, yp, weight_init=omega0, lr=0.3)
    for group in optimizer.param_groups:
        group["lr"] = 0.3
    want, _ = reference_meta_gradients(model, optimizer, x, y, xp, yp, weight_init=omega0)
    assert relative_error(got.weight, want) < 1e-12


@pytest.mark.parametrize("weight_init", [0.0, 0.125])
def test_leaves_model_and_optimizer_untouched(weight_init):
    model, x, y, xp, yp, q = make_problem("cnn")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    take_real_step(model, optimizer, x, y)
    model.eval()  # the meta passes use batch statistics, then restore the user's mode
    before = copy.deepcopy(model.state_dict())
    grads_before = [p.grad.clone() for p in model.parameters()]
    opt_before = copy.deepcopy(optimizer.state_dict())
    meta_gradients(model, optimizer, x, y, xp, yp, weight_init=weight_init, label_init=0.9,
                   pseudo_targets=q)
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    after = optimizer.state_dict()
    for idx, state in opt_before["state"].items():
        for key, value in state.items():
            assert torch.equal(after["state"][idx][key], value)
    for p, g in zip(model.parameters(), grads_before):
        assert torch.equal(p.grad, g)  # .grad is the user's; the meta step never accumulates into it


def test_float32_agrees_with_float64():
    model64, x, y, xp, yp, q = make_problem("cnn")
    model32 = copy.deepcopy(model64).float()
    opt64 = torch.optim.SGD(model64.parameters(), lr=0.1, momentum=0.9)
    opt32 = torch.optim.SGD(model32.parameters(), lr=0.1, momentum=0.9)
    w64 = meta_gradients(model64, opt64, x, y, xp, yp).weight
    w32 = meta_gradients(model32, opt32, x.float(), y, xp.float(), yp).weight
    assert relative_error(w32.double(), w64) < 1e-4
