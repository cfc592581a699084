"""The exact JVP meta-gradient against the slow double-backward reference, in float64."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from conftest import lookahead_through_two_views, make_problem, take_real_step
from reference import reference_meta_gradients

from iegkit._core.meta_step import (
    LookaheadOptions,
    MetaBatch,
    lookahead_meta_gradients,
    virtual_gradients,
)
from iegkit._core.tangent import logit_tangent, probe_tangent
from iegkit.functional import generalized_cross_entropy, meta_gradients, mix_targets
from iegkit.functional.meta import MetaInit
from iegkit.functional.relabel import relabeled_cross_entropy

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


# --- The look-ahead's edges -----------------------------------------------------------------------
# Found by mutation testing (docs/mutation.md): omega0 = 1, pseudo targets that carry a graph, the
# label mix in the targets' dtype, dropout in the meta passes by default, and a look-ahead over
# parameters that do not reach the logits.


def randn(seed, *shape, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_omega0_of_one_is_a_look_ahead_like_any_other():
    model, x, y, xp, yp, q = make_problem("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    got = meta_gradients(model, opt, x, y, xp, yp, weight_init=1.0, label_init=0.9,
                         pseudo_targets=q)
    want_w, want_l = reference_meta_gradients(model, opt, x, y, xp, yp, weight_init=1.0,
                                              label_init=0.9, pseudo_targets=q)
    torch.testing.assert_close(got.weight, want_w, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(got.label, want_l, rtol=1e-10, atol=1e-14)


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
        return lookahead_meta_gradients(model, opt, MetaBatch(x, y, xp, yp), MetaInit(omega0),
                                        options=LookaheadOptions(**kwargs)).weight

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


# --- mutation testing (docs/mutation.md): dropout in every JVP pass -------------------------------


class DropoutSpy(torch.nn.Dropout):
    """Dropout(0.5) that records, for each forward-mode (JVP) pass and each other pass through it,
    whether it drops."""

    def __init__(self):
        super().__init__(0.5)
        self.jvp_passes: list[bool] = []
        self.plain_passes: list[bool] = []

    def forward(self, x):
        drops = self.training and self.p > 0
        if fwAD.unpack_dual(x).tangent is not None:
            self.jvp_passes.append(drops)
        else:
            self.plain_passes.append(drops)
        return super().forward(x)


@pytest.mark.parametrize("dropout", [True, False])
def test_the_pseudo_label_views_jvp_follows_the_dropout_option(dropout):
    """The JVP of a view other than the training batch (a look-ahead through the pseudo labels)
    runs dropout exactly where the training batch's does."""
    _, x, y, xp, yp, _ = make_problem("mlp")
    model = DropoutMLP().double()
    spy = model.net[2] = DropoutSpy()
    lookahead_through_two_views(model, x, y, xp, yp, 0.125, LookaheadOptions(dropout=dropout))
    assert spy.jvp_passes == [dropout, dropout]  # the training batch's JVP, then the view's


# --- mutation testing (docs/mutation.md): the virtual gradient is the real step's -----------------


def test_the_virtual_gradient_is_the_real_steps_in_the_logits_dtype():
    """g0 = grad sum_i omega0_i l_i is, at omega0 = 1/B, exactly the gradient of the real step's
    loss (MetaRelabeler's relabeled_cross_entropy): the label mix is cast to the logits' dtype in
    both, so float64 pseudo labels on a float32 model round the same way."""
    model, x, y, _, _, q = make_problem("mlp", batch=6, dtype=torch.float32)
    q = q.double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    logits = model(x)
    got = virtual_gradients(model, opt, logits, y, torch.full((6,), 1 / 6), 0.9, q,
                            retain_graph=True)
    real = relabeled_cross_entropy(logits, y, torch.full((6,), 0.9, dtype=torch.float64), q)
    want = torch.autograd.grad(real, list(model.parameters()))
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=0, atol=0)


@pytest.mark.parametrize("steps", [3, 8])  # 8 = B: broadcast against the labels' one-hot
def test_training_logits_not_b_by_c_are_refused_before_the_virtual_gradient(steps):
    """A model whose output is not (B, C) is refused naming the model and the training logits'
    shape, with omega0 != 0 (a virtual-gradient forward) as with omega0 = 0 (none)."""

    class PerStep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(6, steps * 4)

        def forward(self, x):
            return self.net(x).reshape(x.shape[0], steps, 4)

    _, x, y, xp, yp, _ = make_problem("mlp")
    model = PerStep().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=rf"^model: expected logits of shape \(B, C\), got "
                                         rf"\(8, {steps}, 4\)$"):
        meta_gradients(model, opt, x, y, xp, yp, weight_init=0.125)


# --- mutation testing (docs/mutation.md): the look-ahead at the caller's forward ------------------


def gce(logits, targets):
    return generalized_cross_entropy(logits, targets, 0.7)


def test_a_robust_inner_loss_is_reweighted_at_the_callers_forward_too():
    """With the caller's forward (StepContext's path) and omega0 != 0, the virtual gradient is that
    of the inner loss: the exact meta-gradient of sum_i omega_i GCE_i, as without it."""
    model, x, y, xp, yp, _ = make_problem("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    want, _ = reference_meta_gradients(model, opt, x, y, xp, yp, weight_init=0.125,
                                       inner_loss=gce)
    logits = model(x)
    got = lookahead_meta_gradients(model, opt, MetaBatch(x, y, xp, yp), MetaInit(0.125),
                                   training_logits=lambda: logits,
                                   options=LookaheadOptions(inner_loss=gce))
    torch.testing.assert_close(got.weight, want, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("dropout", [True, False])
def test_the_probe_pass_follows_the_dropout_option(dropout):
    """The probe pass L_p(theta') runs dropout exactly where the JVP does."""
    _, x, y, xp, yp, _ = make_problem("mlp")
    model = DropoutMLP().double()
    spy = model.net[2] = DropoutSpy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lookahead_meta_gradients(model, opt, MetaBatch(x, y, xp, yp), MetaInit(0.0),
                             options=LookaheadOptions(dropout=dropout))
    assert spy.plain_passes == [dropout]  # omega0 = 0: no virtual-gradient forward, one probe pass
    assert spy.jvp_passes == [dropout]


def test_the_meta_gradient_is_taken_at_the_callers_logits():
    """dL_p/d omega_i = <softmax(z_i) - onehot(y_i), u_i> at the caller's logits z (its real
    forward, here with a dropout mask), u = J tau of the dropout-free network (dropout=False);
    plain SGD at omega0 = 0 looks ahead along tau = -lr grad L_p(theta)."""
    _, x, y, xp, yp, _ = make_problem("mlp")
    model = DropoutMLP().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(1)
    z = model(x)
    got = lookahead_meta_gradients(model, opt, MetaBatch(x, y, xp, yp), MetaInit(0.0),
                                   training_logits=lambda: z,
                                   options=LookaheadOptions(dropout=False)).weight
    model.eval()
    params = {n: p.detach() for n, p in model.named_parameters()}
    probe = F.cross_entropy(model(xp), yp)
    tau = {n: -0.1 * g for n, g in zip(params, torch.autograd.grad(probe, model.parameters()))}
    clean, u = torch.func.jvp(lambda p: torch.func.functional_call(model, p, (x,)), (params,),
                              (tau,))
    assert not torch.allclose(z, clean)  # the caller's logits are not the dropout-free network's
    want = ((torch.softmax(z.detach(), -1) - F.one_hot(y, 4)) * u).sum(-1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


class Squeezed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(6, 4)

    def forward(self, x):
        return self.net(x).squeeze()  # (C,) for a batch of one


@pytest.mark.parametrize("weight_init", [0.0, 0.125])
def test_logits_that_lose_the_batch_axis_are_refused_with_or_without_a_virtual_forward(weight_init):
    """A model that squeezes its output gives (C,) logits for a training batch of one (the probe
    batch's are (B_p, C)): refused naming the model at omega0 = 0 (the JVP's logits) as at
    omega0 != 0 (the virtual-gradient forward)."""
    _, x, y, xp, yp, _ = make_problem("mlp")
    model = Squeezed().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"^model: expected logits of shape \(B, C\), got \(4,\)$"):
        meta_gradients(model, opt, x[:1], y[:1], xp, yp, weight_init=weight_init)
