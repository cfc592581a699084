"""The pure functions' contracts at their edges (found by mutation testing, docs/mutation.md):
documented defaults, both ends of every stated range, errors that name the argument (a ValueError,
not an IndexError/TypeError from inside), the dtype of the result, one class, and draws that come
from the given generator."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import make_problem

from iegkit.functional import meta_gradients, mix_targets
from iegkit.functional.meta import probe_tangent
from iegkit.functional.collapse import pseudo_label_accuracy, pseudo_label_concentration
from iegkit.functional.consistency import kl_consistency
from iegkit.functional.distribution_alignment import align_distribution, unsharpen
from iegkit.functional.mixup import mix_coefficients, mixup_batch, resample
from iegkit.functional.pseudo_label import guess_targets, sharpen
from iegkit.functional.schedule import check_rampup, linear_rampup


def randn(seed, *shape, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- pseudo labels --------------------------------------------------------------------------------

def test_sharpen_and_guess_defaults_are_tau_one_half():
    p = torch.softmax(randn(0, 5, 4), -1)
    torch.testing.assert_close(sharpen(p), p.square() / p.square().sum(-1, keepdim=True))
    views = [randn(1, 5, 4), randn(2, 5, 4)]
    torch.testing.assert_close(guess_targets(views), guess_targets(views, 0.5))


def test_guess_targets_uses_its_temperature():
    zw, zs = randn(3, 5, 4), randn(4, 5, 4)
    p = (torch.softmax(zw, -1) + torch.softmax(zs, -1)) / 2
    want = p**4 / (p**4).sum(-1, keepdim=True)
    torch.testing.assert_close(guess_targets([zw, zs], 0.25, normalize_logits=False), want)


def test_temperature_must_be_positive():
    p = torch.softmax(randn(5, 3, 4), -1)
    for temperature in (0.0, -0.5):
        with pytest.raises(ValueError, match="temperature"):
            sharpen(p, temperature)


def test_views_of_another_shape_are_named():
    with pytest.raises(ValueError, match="view_logits"):
        guess_targets([])
    for other in (randn(1, 4, 4), randn(1, 5, 3), randn(1, 5, 4, 1)):
        with pytest.raises(ValueError, match=r"view_logits\[1\]"):
            guess_targets([randn(0, 5, 4), other])


# --- collapse signals -----------------------------------------------------------------------------

def test_concentration_with_one_and_two_classes():
    top, entropy = pseudo_label_concentration(torch.ones(4, 1, dtype=torch.float64))
    assert float(top) == 1.0 and float(entropy) == 0.0
    two = torch.tensor([[0.9, 0.1], [0.1, 0.9]], dtype=torch.float64)
    top, entropy = pseudo_label_concentration(two)
    assert float(top) == 0.5 and float(entropy) == pytest.approx(1.0)  # H(1/2, 1/2) / log 2


def test_concentration_refuses_anything_but_a_non_empty_batch():
    for bad in (torch.ones(3), torch.ones(2, 3, 4), torch.ones(0, 3)):
        with pytest.raises(ValueError, match="pseudo"):
            pseudo_label_concentration(bad)


def test_accuracy_compares_each_rows_argmax():
    pseudo = torch.tensor([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]])
    assert float(pseudo_label_accuracy(pseudo, torch.tensor([1, 0, 0, 1]))) == 0.5
    assert float(pseudo_label_accuracy(pseudo, torch.tensor([1, 1, 1, 1]))) == 0.25
    with pytest.raises(ValueError, match="labels"):
        pseudo_label_accuracy(pseudo, torch.tensor([1, 0, 2]))


# --- KL consistency -------------------------------------------------------------------------------

def test_kl_names_mismatched_shapes_and_warns_nothing():
    weak, strong = randn(0, 4, 3), randn(1, 4, 3)
    with pytest.raises(ValueError, match="strong_logits"):
        kl_consistency(weak, randn(1, 4, 2))
    with pytest.raises(ValueError, match="mask"):
        kl_consistency(weak, strong, torch.ones(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. no implicit-dim softmax deprecation warning
        kl_consistency(weak, strong)
        kl_consistency(weak, strong, torch.tensor([1.0, 0.0, 1.0, 1.0]))


# --- MixUp ----------------------------------------------------------------------------------------

def test_mixup_keeps_the_dtypes_of_inputs_and_targets():
    x = randn(0, 4, 3, dtype=torch.float32)
    y = torch.softmax(randn(1, 4, 2), -1)  # float64
    mx, my = mixup_batch(x, y, torch.full((4,), 0.75, dtype=torch.float64), torch.arange(4).flip(0))
    assert mx.dtype == torch.float32 and my.dtype == torch.float64
    mx, my = mixup_batch(x, y.float(), torch.full((4,), 0.75, dtype=torch.float64),
                         torch.arange(4).flip(0))
    assert my.dtype == torch.float32


def test_mixup_names_each_mismatched_shape():
    x, y = randn(0, 4, 3), torch.softmax(randn(1, 4, 2), -1)
    m, perm = torch.full((4,), 0.75, dtype=torch.float64), torch.arange(4)
    for args in ((x, y[:3], m, perm), (x, y, m[:3], perm), (x, y, m, perm[:3])):
        with pytest.raises(ValueError, match="mixup_batch"):
            mixup_batch(*args)


def test_resample_from_one_example_and_refuses_none():
    assert resample(5, 1, torch.Generator().manual_seed(0)).tolist() == [0] * 5
    with pytest.raises(ValueError, match="population"):
        resample(5, 0)


def test_coefficient_dtype_alpha_and_generator_free_draws():
    for kind in ("official", "beta", "beta_max"):
        assert mix_coefficients(8, torch.Generator().manual_seed(0), kind=kind,
                                dtype=torch.float32).dtype == torch.float32
        assert mix_coefficients(8, torch.Generator().manual_seed(0), kind=kind,
                                dtype=torch.float64).dtype == torch.float64
    for alpha in (0.0, -1.0):
        with pytest.raises(ValueError, match="alpha"):
            mix_coefficients(4, torch.Generator(), kind="beta", alpha=alpha)
    with pytest.raises(ValueError, match="kind"):
        mix_coefficients(4, torch.Generator(), kind="uniform")
    # without a generator: reproducible from the global seed, and a fresh stream on every call
    torch.manual_seed(0)
    draws = [mix_coefficients(3, None, kind="beta", dtype=torch.float64) for _ in range(200)]
    torch.manual_seed(0)
    assert torch.equal(mix_coefficients(3, None, kind="beta", dtype=torch.float64), draws[0])
    assert len({tuple(d.tolist()) for d in draws}) == 200


# --- distribution alignment -----------------------------------------------------------------------

def test_alignment_defaults_and_result_dtype():
    g = torch.softmax(randn(0, 6, 3), -1)
    model = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    target = torch.full((3,), 1 / 3, dtype=torch.float64)
    torch.testing.assert_close(align_distribution(g, model, target),
                               align_distribution(g, model, target, temperature=0.5))
    torch.testing.assert_close(unsharpen(g), unsharpen(g, 0.5))
    q = g.sqrt() / g.sqrt().sum(-1, keepdim=True)
    torch.testing.assert_close(unsharpen(g), q)
    aligned = align_distribution(g.float(), model, target)
    assert aligned.dtype == torch.float32


# --- ramp-up --------------------------------------------------------------------------------------

def test_rampup_of_one_step_and_its_ceiling():
    assert check_rampup(1) == 1
    assert linear_rampup(0, 1) == 0.0 and linear_rampup(1, 1) == 1.0
    assert linear_rampup(40, 4) == 1.0  # never above 1
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match="rampup_steps"):
            check_rampup(bad)


# --- meta-gradients: pseudo labels are constants --------------------------------------------------

def test_pseudo_targets_with_a_graph_are_treated_as_constants():
    model, x, y, xp, yp, _ = make_problem("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    q = torch.softmax(model(x) * 0.5, -1)  # carries the model's graph
    with_graph = meta_gradients(model, opt, x, y, xp, yp, weight_init=0.125, label_init=0.9,
                                pseudo_targets=q)
    constant = meta_gradients(model, opt, x, y, xp, yp, weight_init=0.125, label_init=0.9,
                              pseudo_targets=q.detach())
    torch.testing.assert_close(with_graph.weight, constant.weight, rtol=0, atol=0)
    torch.testing.assert_close(with_graph.label, constant.label, rtol=0, atol=0)
    assert math.isfinite(float(with_graph.probe_loss))


def test_label_mix_is_exact_in_the_targets_dtype():
    y = torch.tensor([0, 2, 1])
    q = torch.softmax(randn(0, 3, 3), -1)
    lam = 0.9  # not a float32 number: computed in float32 it would be off by ~2e-8
    want = lam * torch.eye(3, dtype=torch.float64)[y] + (1 - lam) * q
    torch.testing.assert_close(mix_targets(y, 3, lam, q), want, rtol=1e-15, atol=1e-16)
    with pytest.raises(ValueError, match="pseudo_targets"):
        mix_targets(y, 3, lam)


def test_probe_tangent_runs_dropout_by_default():
    """probe_tangent(dropout=True) is the documented default: the probe pass draws dropout masks
    (so two seeds differ); dropout=False is deterministic."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 4))
    model = model.double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    xp, yp = randn(1, 5, 6), torch.tensor([0, 1, 2, 3, 0])

    def tangent(seed, **kwargs):
        torch.manual_seed(seed)
        tangents, _ = probe_tangent(model, optimizer, xp, yp, **kwargs)
        return torch.cat([t.reshape(-1) for t in tangents.values()])

    assert not torch.equal(tangent(1), tangent(2))
    assert torch.equal(tangent(1, dropout=False), tangent(2, dropout=False))
