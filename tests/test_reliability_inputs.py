"""What users pass in (labels of any integer dtype, the step, the grad mode, ProbeSampler's
arguments): accepted exactly as int64 labels would be, or refused naming the argument before
anything moves."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from conftest import assert_same, flip, make_problem

import iegkit
from iegkit.data import ProbeSampler

RECIPES = ["plain", "l2r", "ieg", "robust_ieg"]


def build(recipe, model, optimizer):
    if recipe == "plain":
        return iegkit.compose(iegkit.CrossEntropy(), model=model, optimizer=optimizer)
    if recipe == "l2r":
        return iegkit.recipes.l2r(model, optimizer)
    if recipe == "ieg":
        return iegkit.recipes.ieg(model, optimizer, strong_augment=flip)
    return iegkit.recipes.robust_ieg(model, optimizer, strong_augment=flip, total_steps=10)


def warmed_up(recipe):
    """A pipeline one step in (momentum buffers, running marginals and EMA teachers exist), and the
    batch of its next step."""
    model, x, y, xp, yp, _ = make_problem("cnn", batch=12)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pipeline = build(recipe, model, optimizer)
    out = pipeline(x, y, xp, yp, step=0)
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    return model, optimizer, pipeline, (x, y, xp, yp)


def everything(model, optimizer, pipeline):
    return copy.deepcopy({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "pipeline": pipeline.state_dict(), "grads": [p.grad for p in
                                                                       model.parameters()]})


def refuses_and_changes_nothing(recipe, error, match, **overrides):
    model, optimizer, pipeline, (x, y, xp, yp) = warmed_up(recipe)
    arguments = {"inputs": x, "targets": y, "probe_inputs": xp, "probe_targets": yp, "step": 1,
                 **overrides}
    before = everything(model, optimizer, pipeline)
    with pytest.raises(error, match=match):
        pipeline(**arguments)
    assert_same(before, everything(model, optimizer, pipeline))


@pytest.mark.parametrize("recipe", ["plain", "ieg"])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8, torch.int8])
def test_integer_labels_of_any_dtype_give_the_int64_step_exactly(recipe, dtype):
    steps = []
    for labels_dtype in (torch.int64, dtype):
        model, x, y, xp, yp, _ = make_problem("cnn", batch=12)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        pipeline = build(recipe, model, optimizer)
        out = pipeline(x, y.to(labels_dtype), xp, yp.to(labels_dtype), step=0)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        steps.append((out.loss.detach(), out.values, model.state_dict()))
    assert_same(steps[0], steps[1])


def test_labels_from_numpy_int32_are_accepted():
    model, x, y, xp, yp, _ = make_problem("cnn", batch=12)
    pipeline = iegkit.recipes.l2r(model, torch.optim.SGD(model.parameters(), lr=0.1))
    labels = torch.from_numpy(y.numpy().astype(np.int32))
    assert torch.isfinite(pipeline(x, labels, xp, yp, step=0).loss)


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("argument", ["targets", "probe_targets"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool])
def test_float_and_bool_labels_are_refused_naming_the_argument(recipe, argument, dtype):
    _, _, y, _, yp, _ = make_problem("cnn", batch=12)
    labels = {"targets": y, "probe_targets": yp}[argument]
    refuses_and_changes_nothing(recipe, TypeError,
                                f"^{argument}: expected integer class indices, got dtype {dtype}",
                                **{argument: labels.to(dtype)})


@pytest.mark.parametrize("recipe", ["l2r", "ieg", "robust_ieg"])
@pytest.mark.parametrize("argument", ["targets", "probe_targets"])
@pytest.mark.parametrize("bad", [-1, 3])
def test_out_of_range_labels_are_refused_naming_the_argument(recipe, argument, bad):
    _, _, y, _, yp, _ = make_problem("cnn", batch=12)  # 3 classes
    labels = {"targets": y, "probe_targets": yp}[argument].clone()
    labels[1] = bad
    refuses_and_changes_nothing(recipe, ValueError, rf"^{argument}: labels must lie in \[0, 3\)",
                                **{argument: labels})


@pytest.mark.parametrize("recipe", RECIPES)
def test_labels_that_do_not_match_the_batch_are_refused_before_any_forward(recipe):
    _, _, y, _, _, _ = make_problem("cnn", batch=12)
    refuses_and_changes_nothing(recipe, ValueError, r"^targets: expected shape \(12,\)",
                                targets=y[:5])


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("step, error", [(-1, ValueError), (True, TypeError), (1.0, TypeError),
                                         ("1", TypeError), (None, TypeError)])
def test_the_step_must_be_an_int_at_least_0(recipe, step, error):
    refuses_and_changes_nothing(recipe, error, "^step: expected an int >= 0", step=step)


def test_numpy_and_tensor_integer_steps_are_accepted_as_ints():
    model, optimizer, pipeline, batch = warmed_up("ieg")
    pipeline(*batch, step=np.int64(1))
    assert pipeline.last_step == 1 and type(pipeline.last_step) is int
    pipeline(*batch, step=torch.tensor(2))
    assert pipeline.last_step == 2 and type(pipeline.last_step) is int


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_a_step_without_grad_is_refused_before_any_forward(recipe, mode):
    model, optimizer, pipeline, batch = warmed_up(recipe)
    forwards = []
    model.register_forward_hook(lambda *_: forwards.append(1))
    before = everything(model, optimizer, pipeline)
    with mode(), pytest.raises(RuntimeError, match=r"gradients disabled .*call the pipeline with "
                                                   r"grad enabled"):
        pipeline(*batch, step=1)
    assert not forwards
    assert_same(before, everything(model, optimizer, pipeline))


def trusted(n=10):
    return torch.randn(n, 1, 8, 8), torch.arange(n) % 3


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, True, "4", None])
def test_probe_sampler_refuses_a_batch_size_that_is_not_a_positive_int(batch_size):
    with pytest.raises(ValueError, match=rf"^batch_size: expected a positive int, got "
                                         rf"{re.escape(repr(batch_size))}"):
        ProbeSampler(*trusted(), batch_size)


def test_probe_sampler_accepts_a_numpy_batch_size_and_clamps_to_the_set():
    assert ProbeSampler(*trusted(), np.int64(4)).batch_size == 4
    inputs, labels = next(ProbeSampler(*trusted(), 50))
    assert inputs.shape[0] == labels.shape[0] == 10


IMAGES = torch.zeros(10, 1, 8, 8)


@pytest.mark.parametrize("inputs, labels, error, match", [
    (IMAGES[:0], torch.zeros(0, dtype=torch.int64), ValueError, "^inputs: the trusted set is"),
    (IMAGES, torch.zeros(9, dtype=torch.int64), ValueError, r"^labels: expected shape \(10,\)"),
    (IMAGES, torch.zeros(10, 3, dtype=torch.int64), ValueError, r"^labels: expected shape \(10,\)"),
    (IMAGES, torch.zeros(10), TypeError, "^labels: expected integer class indices"),
    (IMAGES, torch.zeros(10, dtype=torch.bool), TypeError, "^labels: expected integer class"),
    (IMAGES, [0] * 10, TypeError, "^labels: expected a tensor"),
    (IMAGES.numpy(), torch.zeros(10, dtype=torch.int64), TypeError, "^inputs: expected a tensor"),
])
def test_probe_sampler_refuses_a_trusted_set_it_cannot_sample(inputs, labels, error, match):
    with pytest.raises(error, match=match):
        ProbeSampler(inputs, labels, 4)


def test_probe_sampler_keeps_integer_labels_and_pipelines_accept_them():
    images, labels = trusted(12)
    sampler = ProbeSampler(images, labels.to(torch.uint8), 6)
    batch_labels = next(sampler)[1]
    assert batch_labels.dtype == torch.uint8 and batch_labels.shape == (6,)
