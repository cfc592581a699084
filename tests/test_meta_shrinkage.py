"""Meta shrinkage (robust IEG): omega* and lambda* pulled toward omega0 = 1/B and lambda0."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import ieg_meta_reference, make_problem
from hypothesis import given, settings
from hypothesis import strategies as st

import iegkit
from iegkit import recipes
from iegkit.functional import normalize_meta_weights
from iegkit.functional.relabel import relabel_from_meta_gradient
from iegkit.functional.shrinkage import shrink_toward_init, unshrink

betas = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def weight_vectors(draw):
    n = draw(st.integers(1, 16))
    raw = draw(st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=n, max_size=n))
    w = torch.tensor(raw, dtype=torch.float64)
    return w / w.sum() if w.sum() > 0 else torch.full((n,), 1.0 / n, dtype=torch.float64)


@settings(max_examples=60, deadline=None)
@given(weight_vectors(), betas)
def test_shrunk_weights_stay_on_the_simplex_between_omega_star_and_uniform(w, beta):
    uniform = 1.0 / w.shape[0]
    got = shrink_toward_init(w, uniform, beta)
    torch.testing.assert_close(got.sum(), torch.tensor(1.0, dtype=torch.float64))
    low, high = torch.minimum(w, torch.full_like(w, uniform)), torch.maximum(w, torch.full_like(w, uniform))
    assert bool(((got >= low - 1e-12) & (got <= high + 1e-12)).all())
    # each weight moves toward 1/B by exactly the fraction beta of its distance
    torch.testing.assert_close(got - uniform, (1 - beta) * (w - uniform))


@settings(max_examples=40, deadline=None)
@given(weight_vectors(), betas)
def test_shrinkage_is_permutation_equivariant(w, beta):
    perm = torch.randperm(w.shape[0])
    torch.testing.assert_close(shrink_toward_init(w[perm], 0.3, beta),
                               shrink_toward_init(w, 0.3, beta)[perm])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=16), st.floats(0.0, 1.0), betas)
def test_shrunk_lambda_stays_in_unit_interval_and_endpoints_are_exact(bits, lambda0, beta):
    decision = torch.tensor(bits, dtype=torch.float64)
    got = shrink_toward_init(decision, lambda0, beta)
    assert bool(((got >= 0) & (got <= 1)).all())
    assert torch.equal(shrink_toward_init(decision, lambda0, 0.0), decision)
    torch.testing.assert_close(shrink_toward_init(decision, lambda0, 1.0),
                               torch.full_like(decision, lambda0))


@pytest.mark.parametrize("beta", [-0.1, 1.5, float("nan")])
def test_shrinkage_out_of_range_is_refused_by_function_and_parts(beta):
    message = re.escape(f"shrinkage: expected a value in [0, 1], got {beta}")
    with pytest.raises(ValueError, match=message):
        shrink_toward_init(torch.ones(3), 0.5, beta)
    with pytest.raises(ValueError, match=message):
        iegkit.MetaReweighter(shrinkage=beta)
    with pytest.raises(ValueError, match=message):
        iegkit.MetaRelabeler(shrinkage=beta)


def noise_augment(images, generator=None):
    return images + 0.1 * torch.randn(images.shape, generator=generator, dtype=images.dtype)


def shrunk_pipeline(model, beta):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return iegkit.compose(
        iegkit.ConsistencyPseudoLabeler(noise_augment),
        iegkit.MetaReweighter("1/B", label_mix=0.9, loss_weight=0.5, shrinkage=beta),
        iegkit.MetaRelabeler(0.9, loss_weight=0.5, shrinkage=beta),
        model=model, optimizer=opt, seed=0)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_parts_use_the_shrunk_decisions_of_the_exact_meta_step(beta):
    model, x, y, xp, yp, _ = make_problem("cnn")
    shadow = copy.deepcopy(model)
    out = shrunk_pipeline(model, beta)(x, y, xp, yp, step=0)
    pseudo = out.values["targets:pseudo"]
    want = ieg_meta_reference(shadow, x, y, xp, yp, pseudo)
    b = x.shape[0]
    omega = (1 - beta) * normalize_meta_weights(want.weight) + beta / b
    lam = (1 - beta) * relabel_from_meta_gradient(want.label) + beta * 0.9
    torch.testing.assert_close(out.weights, omega)
    torch.testing.assert_close(out.relabel, lam)
    # the losses, written out from eq. 5 with the shrunk decisions
    onehot = F.one_hot(y, pseudo.shape[-1]).to(pseudo.dtype)
    logp = torch.log_softmax(model(x), -1)
    weighted = -(omega * ((0.9 * onehot + 0.1 * pseudo) * logp).sum(-1)).sum()
    relabeled = -((lam[:, None] * onehot + (1 - lam[:, None]) * pseudo) * logp).sum(-1).mean()
    torch.testing.assert_close(out.losses["meta_reweighter/loss"], 0.5 * weighted)
    torch.testing.assert_close(out.losses["meta_relabeler/loss"], 0.5 * relabeled)
    # the diagnostics describe the meta decisions themselves, not the shrunk ones
    assert out.metrics["meta_relabeler/kept_fraction"] == relabel_from_meta_gradient(
        want.label).float().mean()


def test_full_shrinkage_ignores_the_meta_gradient():
    """beta = 1: the same loss whatever the probe batch says (the meta step no longer matters)."""
    model, x, y, xp, yp, _ = make_problem("cnn")
    losses = []
    for probe_labels in (yp, (yp + 1) % 3):
        m = copy.deepcopy(model)
        losses.append(shrunk_pipeline(m, 1.0)(x, y, xp, probe_labels, step=0).losses)
    for name in ("meta_reweighter/loss", "meta_relabeler/loss"):
        torch.testing.assert_close(losses[0][name], losses[1][name])


def test_robust_ieg_passes_its_meta_shrinkage_to_both_meta_parts():
    model, *_ = make_problem("cnn")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pipe = recipes.robust_ieg(model, opt, total_steps=10, strong_augment=noise_augment,
                              meta_shrinkage=0.25)
    found = {type(p).__name__: p.shrinkage for p in pipe.parts
             if isinstance(p, (iegkit.MetaReweighter, iegkit.MetaRelabeler))}
    assert found == {"MetaReweighter": 0.25, "MetaRelabeler": 0.25}
    default = recipes.robust_ieg(model, opt, total_steps=10, strong_augment=noise_augment)
    assert {p.shrinkage for p in default.parts if hasattr(p, "shrinkage")} == {
        recipes.ROBUST_META_SHRINKAGE}
    official = recipes.ieg(model, opt, strong_augment=noise_augment)
    assert {p.shrinkage for p in official.parts if hasattr(p, "shrinkage")} == {0.0}


# mutation testing (docs/mutation.md): beta = 0 returns the decision itself, whatever the init


def test_unshrink_without_shrinkage_keeps_the_decision_its_shape_and_dtype():
    decision = torch.tensor([0.5, 0.0, 1.0], dtype=torch.float32)
    init = torch.full((3,), 0.9, dtype=torch.float64)  # would promote the result if read
    got = unshrink(decision, init, 0.0)
    assert got.dtype == torch.float32 and got.shape == (3,)
    assert torch.equal(got, decision)
