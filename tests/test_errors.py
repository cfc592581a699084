"""Bad input gets a clear error naming the argument."""

from __future__ import annotations

import pytest
import torch
from conftest import make_problem

import iegkit
from iegkit.errors import NonFiniteLossError, UnsupportedOptimizerError
from iegkit.functional import meta_gradients


@pytest.fixture
def setup():
    model, x, y, xp, yp, q = make_problem("cnn")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, optimizer, x, y, xp, yp, q


def test_label_out_of_range(setup):
    model, opt, x, y, xp, yp, q = setup
    y = y.clone()
    y[0] = 7
    with pytest.raises(ValueError, match=r"targets: labels must lie in \[0, 3\)"):
        meta_gradients(model, opt, x, y, xp, yp)
    with pytest.raises(ValueError, match="targets"):
        iegkit.recipes.l2r(model, opt)(x, y, xp, yp, step=0)


def test_negative_probe_label(setup):
    model, opt, x, y, xp, yp, q = setup
    yp = yp.clone()
    yp[0] = -1
    with pytest.raises(ValueError, match="probe_targets"):
        meta_gradients(model, opt, x, y, xp, yp)


def test_batch_target_length_mismatch(setup):
    model, opt, x, y, xp, yp, q = setup
    with pytest.raises(ValueError, match=r"targets: expected shape \(8,\)"):
        meta_gradients(model, opt, x, y[:5], xp, yp)
    with pytest.raises(ValueError, match="probe_targets"):
        meta_gradients(model, opt, x, y, xp, yp[:2])


def test_float_targets_rejected(setup):
    model, opt, x, y, xp, yp, q = setup
    with pytest.raises(TypeError, match="targets: expected integer class indices"):
        meta_gradients(model, opt, x, y.double(), xp, yp)


def test_empty_probe_batch(setup):
    model, opt, x, y, xp, yp, q = setup
    with pytest.raises(ValueError, match="probe_inputs: empty probe batch"):
        meta_gradients(model, opt, x, y, xp[:0], yp[:0])
    with pytest.raises(ValueError, match="probe_inputs"):
        iegkit.recipes.l2r(model, opt)(x, y, xp[:0], yp[:0], step=0)


def test_probe_without_probe_batch(setup):
    model, opt, x, y, xp, yp, q = setup
    with pytest.raises(ValueError, match="probe_inputs"):
        iegkit.recipes.l2r(model, opt)(x, y, step=0)


def test_probe_inputs_of_wrong_shape(setup):
    model, opt, x, y, xp, yp, q = setup
    with pytest.raises(ValueError, match=r"probe_inputs: expected examples of shape \(1, 8, 8\)"):
        meta_gradients(model, opt, x, y, xp[:, :, :4], yp)


def test_non_finite_loss(setup):
    model, opt, x, y, xp, yp, q = setup
    xp = xp.clone()
    xp[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="probe loss"):
        meta_gradients(model, opt, x, y, xp, yp)
    x = x.clone()
    x[0, 0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteLossError):
        meta_gradients(model, opt, x, y, xp.nan_to_num(), yp, weight_init=0.125)


def test_unsupported_optimizer(setup):
    model, opt, x, y, xp, yp, q = setup
    with pytest.raises(UnsupportedOptimizerError, match="RMSprop"):
        meta_gradients(model, torch.optim.RMSprop(model.parameters()), x, y, xp, yp)


def test_weight_init_shape_and_missing_pseudo_targets(setup):
    model, opt, x, y, xp, yp, q = setup
    with pytest.raises(ValueError, match="weight_init"):
        meta_gradients(model, opt, x, y, xp, yp, weight_init=torch.ones(3))
    with pytest.raises(ValueError, match="pseudo_targets: required"):
        meta_gradients(model, opt, x, y, xp, yp, label_init=0.9)
    with pytest.raises(ValueError, match="pseudo_targets: expected shape"):
        meta_gradients(model, opt, x, y, xp, yp, weight_init=0.1, label_init=0.9,
                       pseudo_targets=q[:, :2])


def test_bind_type_errors(setup):
    model, opt, *_ = setup
    with pytest.raises(TypeError, match="optimizer"):
        iegkit.compose(iegkit.MetaReweighter()).bind(model, "sgd")
    with pytest.raises(TypeError, match="model"):
        iegkit.compose(iegkit.MetaReweighter()).bind(opt, opt)
