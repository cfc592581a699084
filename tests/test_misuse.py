"""Misuse that used to give a silent wrong result now raises a clear error and changes nothing."""

from __future__ import annotations

import pytest
import torch
from conftest import make_problem

import iegkit
from iegkit.augment import strong_augment, weak_augment
from iegkit.errors import NonFiniteLossError


def buffers(model):
    return {n: b.clone() for n, b in model.named_buffers()}


def test_nan_inputs_raise_before_any_buffer_moves():
    model, x, y, xp, yp, _ = make_problem("cnn", batch=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pipeline = iegkit.recipes.l2r(model, opt)
    before = buffers(model)
    bad = x.clone()
    bad[3, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="inputs: the batch holds NaN"):
        pipeline(bad, y, xp, yp, step=0)
    bad_probe = xp.clone()
    bad_probe[0] = float("inf")
    with pytest.raises(ValueError, match="probe_inputs: the batch holds NaN or inf"):
        pipeline(x, y, bad_probe, yp, step=0)
    assert all(torch.equal(before[n], b) for n, b in model.named_buffers())


def test_a_failing_step_restores_the_batchnorm_statistics():
    model, x, y, xp, yp, _ = make_problem("cnn", batch=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    class Explodes(iegkit.PartBase):
        name = "explodes"

        def contribute(self, ctx):
            ctx.logits("input")  # the real forward moves the running statistics
            return iegkit.Contribution(losses={"loss": torch.tensor(float("inf"))})

    pipeline = iegkit.compose(iegkit.CrossEntropy(), Explodes(), model=model, optimizer=opt)
    before = buffers(model)
    with pytest.raises(NonFiniteLossError, match="explodes/loss"):
        pipeline(x, y, step=0)
    assert all(torch.equal(before[n], b) for n, b in model.named_buffers())
    out = iegkit.compose(iegkit.CrossEntropy(), model=model, optimizer=opt)(x, y, step=0)
    assert not all(torch.equal(before[n], b) for n, b in model.named_buffers()) and out.loss > 0


@pytest.mark.parametrize("make", [lambda: weak_augment(), lambda: strong_augment(policy=None)])
def test_augmentations_refuse_images_outside_their_value_range(make):
    augment = make()
    normalised = (torch.rand(4, 3, 8, 8) - 0.5) / 0.25  # mean/std-normalised: about [-2, 2]
    with pytest.raises(ValueError, match="value_range"):
        augment(normalised)
    assert augment(torch.rand(4, 3, 8, 8)).shape == (4, 3, 8, 8)
    declared = weak_augment(value_range=(-2.5, 2.5))
    assert declared(normalised.clamp(-2.5, 2.5)).shape == normalised.shape
