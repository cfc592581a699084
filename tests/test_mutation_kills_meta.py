"""The look-ahead's edges (found by mutation testing, docs/mutation.md): omega0 = 1, input checks on
the path without a caller's forward, dropout in the meta passes by default, a look-ahead over
parameters that do not reach the logits, the overflow fallback of the relabeler, and the float32
contraction of low-precision logits."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import make_problem
from reference import reference_meta_gradients

import iegkit
from iegkit.functional import meta as meta_module
from iegkit.functional import meta_gradients
from iegkit.functional.losses import check_logits, check_targets
from iegkit.functional.meta import (PseudoLabelGraph, contract_meta_gradients, logit_tangent,
                                    lookahead_meta_gradients)


def test_omega0_of_one_is_a_look_ahead_like_any_other():
    model, x, y, xp, yp, q = make_problem("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    got = meta_gradients(model, opt, x, y, xp, yp, weight_init=1.0, label_init=0.9,
                         pseudo_targets=q)
    want_w, want_l = reference_meta_gradients(model, opt, x, y, xp, yp, weight_init=1.0,
                                              label_init=0.9, pseudo_targets=q)
    torch.testing.assert_close(got.weight, want_w, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(got.label, want_l, rtol=1e-10, atol=1e-14)


def test_bad_inputs_are_named_on_every_path():
    model, x, y, xp, yp, q = make_problem("mlp")  # 4 classes
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bad = y.clone()
    bad[0] = 4  # == C
    for weight_init in (0.0, 0.125):  # without and with the virtual gradient's forward
        with pytest.raises(ValueError, match="targets"):
            meta_gradients(model, opt, x, bad, xp, yp, weight_init=weight_init)
        with pytest.raises(ValueError, match="pseudo_targets"):
            meta_gradients(model, opt, x, y, xp, yp, weight_init=weight_init, label_init=0.9,
                           pseudo_targets=torch.full((x.shape[0], 5), 0.2, dtype=x.dtype))
    with pytest.raises(ValueError, match="inputs"):
        meta_gradients(model, opt, x[:0], y[:0], xp, yp)
    with pytest.raises(ValueError, match="pseudo_graph"):
        lookahead_meta_gradients(model, opt, x, y, xp, yp,
                                 weight_init=torch.full((8,), 0.125, dtype=x.dtype),
                                 label_init=torch.full((8,), 0.9, dtype=x.dtype),
                                 pseudo_targets=q, pseudo_graph=PseudoLabelGraph(lambda z: z, []))


def test_check_targets_and_logits_edges():
    check_targets("t", torch.zeros(0, dtype=torch.long), 0, 3)  # an empty batch has no range
    check_targets("t", torch.tensor([2]), 1, 3)
    for labels in (torch.tensor([3]), torch.tensor([0, 3])):
        with pytest.raises(ValueError, match=r"t: labels must lie in \[0, 3\)"):
            check_targets("t", labels, labels.numel(), 3)
    with pytest.raises(TypeError, match="t: expected a tensor"):
        check_targets("t", [0, 1], 2, 3)
    for logits in (torch.zeros(4), torch.zeros(2, 3, 4)):
        with pytest.raises(ValueError, match="model: expected logits of shape"):
            check_logits(logits)


class DropoutMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(),
                                       torch.nn.Dropout(0.5), torch.nn.Linear(16, 4))

    def forward(self, x):
        return self.net(x)


def test_the_meta_passes_run_dropout_unless_told_not_to():
    """Dropout stays on in the probe pass and the JVP by default (docs/architecture.md: a
    stochastic meta-gradient), so two seeds give two results; dropout=False gives one (L2R's
    omega0 = 0, where no virtual-gradient forward runs)."""
    _, x, y, xp, yp, _ = make_problem("mlp")
    model = DropoutMLP().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    omega0 = torch.zeros(8, dtype=torch.float64)

    def weights(seed, **kwargs):
        torch.manual_seed(seed)
        return lookahead_meta_gradients(model, opt, x, y, xp, yp, weight_init=omega0,
                                        **kwargs).weight

    assert not torch.equal(weights(1), weights(2))
    assert torch.equal(weights(1, dropout=False), weights(2, dropout=False))
    torch.manual_seed(1)
    assert not torch.equal(meta_gradients(model, opt, x, y, xp, yp).weight,
                           meta_gradients(model, opt, x, y, xp, yp).weight)
    tangents = {n: torch.ones_like(p) for n, p in model.named_parameters()}

    def jvp(seed, **kwargs):
        torch.manual_seed(seed)
        return logit_tangent(model, tangents, x, **kwargs)[1]

    assert not torch.equal(jvp(1), jvp(2))
    assert torch.equal(jvp(1, dropout=False), jvp(2, dropout=False))


class WithIdle(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(6, 4)
        self.idle = torch.nn.Parameter(torch.ones(3))

    def forward(self, x):
        return self.net(x)


def test_a_look_ahead_over_parameters_that_do_not_reach_the_logits_is_zero():
    _, x, y, xp, yp, q = make_problem("mlp")
    model = WithIdle().double()
    opt = torch.optim.SGD([model.idle], lr=0.1)  # the optimizer only holds the idle parameter
    got = meta_gradients(model, opt, x, y, xp, yp, weight_init=0.125, label_init=0.9,
                         pseudo_targets=q)
    assert torch.equal(got.weight, torch.zeros_like(got.weight))
    assert torch.equal(got.label, torch.zeros_like(got.label))


def test_overflowing_meta_gradients_keep_every_given_label(monkeypatch):
    model, x, y, xp, yp, _ = make_problem("cnn")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    real = meta_module.contract_meta_gradients

    def overflowing(*args, **kwargs):
        weight, label = real(*args, **kwargs)
        return weight, label * float("inf")

    def flip(images, generator=None):
        return images.flip(-1)

    ieg = lambda m, o: iegkit.compose(  # noqa: E731
        iegkit.ConsistencyPseudoLabeler(flip), iegkit.MetaReweighter(label_mix=0.9),
        iegkit.MetaRelabeler(), model=m, optimizer=o)
    twin = copy.deepcopy(model)
    finite = ieg(twin, torch.optim.SGD(twin.parameters(), lr=0.1))(x, y, xp, yp, step=0)
    assert float(finite.metrics["meta_reweighter/nonfinite_fallback"]) == 0.0
    assert 0 < float(finite.relabel.sum()) < 8  # a mixed decision when nothing overflows
    monkeypatch.setattr(meta_module, "contract_meta_gradients", overflowing)
    out = ieg(model, opt)(x, y, xp, yp, step=0)
    assert torch.equal(out.relabel, torch.ones(8, dtype=out.relabel.dtype))  # lambda* = 1
    assert float(out.metrics["meta_reweighter/nonfinite_fallback"]) == 1.0


def test_low_precision_logits_are_contracted_in_float32():
    gen = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(6, 5, generator=gen)).bfloat16()
    tangents = torch.randn(6, 5, generator=gen).bfloat16()
    pseudo = torch.softmax(torch.randn(6, 5, generator=gen), -1).bfloat16()
    targets = torch.tensor([0, 1, 2, 3, 4, 0])
    omega0, lambda0 = torch.full((6,), 1 / 6), torch.full((6,), 0.9)
    weight, label = contract_meta_gradients(logits, tangents, targets, weight_init=omega0,
                                            label_init=lambda0, pseudo_targets=pseudo)
    assert weight.dtype == torch.float32 and label.dtype == torch.float32
    z, u, g = logits.double(), tangents.double(), pseudo.double()
    onehot = F.one_hot(targets, 5).double()
    mixed = 0.9 * onehot + 0.1 * g
    want_w = (u * (torch.softmax(z, -1) - mixed)).sum(-1)
    want_l = omega0.double() * (u * (g - onehot)).sum(-1)
    torch.testing.assert_close(weight.double(), want_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(label.double(), want_l, rtol=1e-5, atol=1e-6)
