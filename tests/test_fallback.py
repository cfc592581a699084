"""Layers without a forward-mode formula: automatic, warned, exact double-backward fallback."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from conftest import Square, make_problem
from reference import reference_meta_gradients
from torch import nn

import iegkit
from iegkit.functional import meta_gradients


def model_with_custom_layer():
    model, x, y, xp, yp, q = make_problem("mlp")
    model.net = nn.Sequential(model.net[0], model.net[1], Square(), model.net[3])
    return model, x, y, xp, yp, q


@pytest.mark.parametrize("weight_init,label_init", [(0.0, None), (0.125, 0.9)])
def test_fallback_is_exact_and_warns_once_naming_the_layer(weight_init, label_init):
    model, x, y, xp, yp, q = model_with_custom_layer()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.warns(RuntimeWarning, match=r"layer 'net\.2' \(Square\)"):
        got = meta_gradients(model, opt, x, y, xp, yp, weight_init=weight_init,
                             label_init=label_init, pseudo_targets=q)
    assert got.used_fallback
    want_w, want_l = reference_meta_gradients(model, opt, x, y, xp, yp, weight_init=weight_init,
                                              label_init=label_init, pseudo_targets=q)
    torch.testing.assert_close(got.weight, want_w, rtol=1e-12, atol=1e-15)
    if label_init is not None:
        torch.testing.assert_close(got.label, want_l, rtol=1e-12, atol=1e-15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call does not warn again
        meta_gradients(model, opt, x, y, xp, yp, weight_init=weight_init, label_init=label_init,
                       pseudo_targets=q)


def test_pipeline_falls_back_and_keeps_batchnorm_statistics_right():
    model, x, y, xp, yp, q = model_with_custom_layer()
    shadow = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(RuntimeWarning, match="double backward"):
        out = iegkit.recipes.l2r(model, opt)(x, y, xp, yp, step=0)
    assert out.forward_counts == {"input": 1}
    shadow(x)
    for a, b in zip(model.buffers(), shadow.buffers()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-15)
    out.loss.backward()
