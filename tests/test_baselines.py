"""The baselines (GCE, SCE, forward correction / GLC, small-loss selection, plain+) against their
equations written here with torch primitives, their properties, and the meta reweighting of a
robust loss against double backward in float64."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import make_problem
from hypothesis import given
from hypothesis import strategies as st
from reference import reference_meta_gradients

import iegkit
from iegkit import recipes
from iegkit.functional import (
    estimate_transition,
    forget_rate,
    forward_corrected_cross_entropy,
    generalized_cross_entropy,
    meta_gradients,
    noise_rate_from_transition,
    small_loss_mask,
    symmetric_cross_entropy,
    updated_transition,
)

seeds = st.integers(0, 2**31 - 1)


def problem(seed, batch=6, classes=4):
    gen = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(batch, classes, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, classes, (batch,), generator=gen)
    return logits, targets, gen


def random_transition(classes, gen):
    return torch.softmax(2 * torch.randn(classes, classes, generator=gen, dtype=torch.float64), -1)


# --------------------------------------------------------------------------- references


def p_true(logits, targets):
    return torch.softmax(logits, -1)[torch.arange(len(targets)), targets]


def test_gce_is_its_equation():
    logits, targets, _ = problem(0)
    want = (1 - p_true(logits, targets) ** 0.7) / 0.7
    torch.testing.assert_close(generalized_cross_entropy(logits, targets, 0.7), want)


def test_gce_tends_to_cross_entropy_as_q_vanishes_and_is_mae_like_at_one():
    logits, targets, _ = problem(1)
    ce = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    torch.testing.assert_close(generalized_cross_entropy(logits, targets, 1e-7), ce,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(generalized_cross_entropy(logits, targets, 1.0),
                               1 - p_true(logits, targets))


def test_sce_is_its_equation_with_log_zero_clipped():
    logits, targets, _ = problem(2)
    onehot = torch.eye(4, dtype=torch.float64)[targets]
    p = torch.softmax(logits, -1)
    ce = -(onehot * torch.log(p)).sum(-1)
    log_label = torch.where(onehot > 0, torch.zeros_like(onehot), torch.full_like(onehot, -4.0))
    rce = -(p * log_label).sum(-1)
    torch.testing.assert_close(symmetric_cross_entropy(logits, targets, 0.1, 1.0, -4.0),
                               0.1 * ce + 1.0 * rce)


def test_forward_correction_is_its_equation_and_identity_gives_cross_entropy():
    logits, targets, gen = problem(3)
    t = random_transition(4, gen)
    noisy = torch.softmax(logits, -1) @ t
    want = -torch.log(noisy[torch.arange(6), targets])
    torch.testing.assert_close(forward_corrected_cross_entropy(logits, targets, t), want)
    ce = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    torch.testing.assert_close(forward_corrected_cross_entropy(logits, targets,
                                                               torch.eye(4, dtype=torch.float64)), ce)


def test_forward_correction_is_finite_with_zeros_in_the_matrix():
    logits, targets, _ = problem(4)
    t = torch.eye(4, dtype=torch.float64) * 0.6 + torch.roll(torch.eye(4, dtype=torch.float64), 1, 1) * 0.4
    logits = logits.clone().requires_grad_()
    loss = forward_corrected_cross_entropy(logits, targets, t).sum()
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(logits.grad).all())


def test_glc_estimate_is_the_class_mean_of_the_probabilities():
    gen = torch.Generator().manual_seed(5)
    probs = torch.softmax(torch.randn(9, 3, generator=gen, dtype=torch.float64), -1)
    labels = torch.tensor([0, 0, 1, 1, 1, 0, 1, 0, 0])
    c = estimate_transition(probs, labels, 3)
    torch.testing.assert_close(c[0], probs[labels == 0].mean(0))
    torch.testing.assert_close(c[1], probs[labels == 1].mean(0))
    torch.testing.assert_close(c[2], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))  # unseen


def test_noise_rate_of_identity_and_uniform_matrices():
    assert float(noise_rate_from_transition(torch.eye(5))) == 0.0
    uniform = torch.full((5, 5), 0.2)
    assert math.isclose(float(noise_rate_from_transition(uniform)), 0.8, rel_tol=1e-6)
    prior = torch.tensor([1.0, 0, 0, 0, 0])
    t = torch.eye(5)
    t[1] = 0.2
    assert float(noise_rate_from_transition(t, prior)) == 0.0


def test_online_estimate_first_takes_the_batch_then_averages_and_leaves_absent_rows():
    running = torch.eye(3, dtype=torch.float64)
    seen = torch.zeros(3, dtype=torch.bool)
    probs = torch.tensor([[0.5, 0.5, 0.0], [0.1, 0.8, 0.1]], dtype=torch.float64)
    c, seen = updated_transition(running, seen, probs, torch.tensor([0, 1]), 0.9)
    torch.testing.assert_close(c[:2], probs)
    torch.testing.assert_close(c[2], running[2])
    assert seen.tolist() == [True, True, False]
    later = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    c2, _ = updated_transition(c, seen, later, torch.tensor([0]), 0.9)
    torch.testing.assert_close(c2[0], 0.9 * probs[0] + 0.1 * later[0])
    torch.testing.assert_close(c2[1], c[1])


def test_small_loss_mask_keeps_the_smallest():
    losses = torch.tensor([0.3, 2.0, 0.1, 5.0, 0.2])
    assert small_loss_mask(losses, 0.4).tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert small_loss_mask(losses, 0.0).tolist() == [1.0] * 5
    assert small_loss_mask(losses, 1.0).sum() == 1.0  # at least one example


def test_forget_rate_ramps_to_the_noise_rate():
    assert forget_rate(0, 0.4) == 0.0
    assert math.isclose(forget_rate(5, 0.4), 0.2)
    assert forget_rate(10, 0.4) == forget_rate(30, 0.4) == 0.4
    assert forget_rate(3, 0.4, rampup_epochs=0) == 0.4


# --------------------------------------------------------------------------- properties


@given(seeds, st.floats(0.05, 1.0))
def test_gce_is_bounded_and_decreases_with_the_true_class_probability(seed, q):
    logits, targets, _ = problem(seed)
    loss = generalized_cross_entropy(logits, targets, q)
    assert bool((loss >= 0).all()) and bool((loss <= 1 / q + 1e-12).all())
    order = torch.argsort(p_true(logits, targets))
    assert bool((loss[order].diff() <= 1e-12).all())


@given(seeds, st.floats(0.0, 2.0), st.floats(0.0, 2.0), st.floats(-10.0, -0.5))
def test_sce_reverse_term_is_bounded_by_minus_a(seed, alpha, beta, a):
    logits, targets, _ = problem(seed)
    rce = symmetric_cross_entropy(logits, targets, 0.0, 1.0, a)
    assert bool((rce >= 0).all()) and bool((rce <= -a + 1e-12).all())
    ce = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    torch.testing.assert_close(symmetric_cross_entropy(logits, targets, alpha, beta, a),
                               alpha * ce + beta * rce)


@given(seeds, st.integers(2, 6))
def test_forward_correction_is_nonnegative_and_equivariant_to_renaming_classes(seed, classes):
    logits, targets, gen = problem(seed, classes=classes)
    t = random_transition(classes, gen)
    loss = forward_corrected_cross_entropy(logits, targets, t)
    assert bool((loss >= -1e-12).all())
    perm = torch.randperm(classes, generator=gen)
    inverse = torch.argsort(perm)
    renamed = forward_corrected_cross_entropy(logits[:, perm], inverse[targets], t[perm][:, perm])
    torch.testing.assert_close(renamed, loss)


@given(seeds, st.integers(1, 30), st.integers(2, 6))
def test_glc_estimate_is_row_stochastic(seed, n, classes):
    gen = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(n, classes, generator=gen, dtype=torch.float64), -1)
    labels = torch.randint(0, classes, (n,), generator=gen)
    c = estimate_transition(probs, labels, classes)
    torch.testing.assert_close(c.sum(-1), torch.ones(classes, dtype=torch.float64))
    assert bool((c >= 0).all())
    assert 0.0 <= float(noise_rate_from_transition(c)) <= 1.0


@given(seeds, st.floats(0.0, 0.999), st.integers(1, 20))
def test_online_estimate_stays_row_stochastic(seed, momentum, n):
    gen = torch.Generator().manual_seed(seed)
    running, seen = torch.eye(4, dtype=torch.float64), torch.zeros(4, dtype=torch.bool)
    for _ in range(3):
        probs = torch.softmax(torch.randn(n, 4, generator=gen, dtype=torch.float64), -1)
        running, seen = updated_transition(running, seen, probs,
                                           torch.randint(0, 4, (n,), generator=gen), momentum)
        torch.testing.assert_close(running.sum(-1), torch.ones(4, dtype=torch.float64))


@given(st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=40), st.floats(0.0, 1.0))
def test_small_loss_mask_keeps_the_ceiling_share_and_only_smaller_losses(values, rate):
    losses = torch.tensor(values, dtype=torch.float64)
    mask = small_loss_mask(losses, rate)
    assert int(mask.sum()) == max(1, math.ceil(round((1 - rate) * len(values), 9)))
    kept, dropped = losses[mask > 0], losses[mask == 0]
    if dropped.numel():
        assert float(kept.max()) <= float(dropped.min())


@given(st.floats(0, 100), st.floats(0, 1), st.floats(0.5, 20))
def test_forget_rate_is_monotone_and_bounded(epoch, tau, ramp):
    assert 0.0 <= forget_rate(epoch, tau, ramp) <= tau
    assert forget_rate(epoch, tau, ramp) <= forget_rate(epoch + 1, tau, ramp)


# --------------------------------------------------------------------------- parts in a step


@pytest.fixture
def step_problem():
    model, x, y, xp, yp, _ = make_problem("cnn", batch=10, probe=6)
    return model, x, y, xp, yp


def one_step(pipeline, x, y, xp, yp, step=0):
    out = pipeline(x, y, xp, yp, step=step)
    return out


def ce(logits, targets):
    return -torch.log_softmax(logits, -1)[torch.arange(len(targets)), targets]


def train_logits(model, x):
    clone = copy.deepcopy(model)
    clone.train()
    return clone(x)


def test_gce_sce_parts_give_their_mean_loss(step_problem):
    model, x, y, xp, yp = step_problem
    z = train_logits(model, x)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = one_step(recipes.gce(model, opt, q=0.5), x, y, xp, yp)
    torch.testing.assert_close(out.loss, ((1 - p_true(z, y) ** 0.5) / 0.5).mean())
    p = torch.softmax(z, -1)
    out = one_step(recipes.sce(model, opt, alpha=0.3, beta=2.0), x, y, xp, yp)
    torch.testing.assert_close(out.loss, (0.3 * ce(z, y) + 2.0 * 4.0 * (1 - p[torch.arange(10), y])).mean())


def test_glc_stage_two_is_corrected_noisy_loss_plus_trusted_cross_entropy(step_problem):
    model, x, y, xp, yp = step_problem
    gen = torch.Generator().manual_seed(0)
    t = random_transition(3, gen)
    z, zp = train_logits(model, x), train_logits(model, xp)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = one_step(recipes.glc(model, opt, transition=t, trusted_weight=0.5), x, y, xp, yp)
    corrected = -torch.log((torch.softmax(z, -1) @ t)[torch.arange(10), y]).mean()
    torch.testing.assert_close(out.loss, corrected + 0.5 * ce(zp, yp).mean())


def test_glc_transition_uses_the_first_stage_model_in_eval_mode(step_problem):
    model, _, _, xp, yp = step_problem
    model.train()
    c = recipes.glc_transition(model, xp, yp)
    assert model.training
    model.eval()
    probs = torch.softmax(model(xp), -1)
    for i in range(3):
        if bool((yp == i).any()):
            torch.testing.assert_close(c[i], probs[yp == i].mean(0))


def test_online_forward_correction_estimates_then_corrects_with_the_frozen_matrix(step_problem):
    """Estimation without the trusted term (trained on them, the model would predict the trusted
    images' clean labels and C_hat would collapse to the identity); after it, GLC's loss."""
    model, x, y, xp, yp = step_problem
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pipeline = recipes.forward_online(model, opt, total_steps=4, estimate_fraction=0.5,
                                      momentum=0.5, trusted_weight=0.7)
    part = pipeline.parts[0]
    expected = torch.eye(3, dtype=torch.float64)
    seen = torch.zeros(3, dtype=torch.bool)
    for step in range(4):
        z, zp = train_logits(model, x), train_logits(model, xp)
        out = pipeline(x, y, xp, yp, step=step)
        if step < 2:
            torch.testing.assert_close(out.loss, ce(z, y).mean())
            expected, seen = updated_transition(expected, seen, torch.softmax(zp.double(), -1), yp, 0.5)
        else:
            want = -torch.log((torch.softmax(z, -1) @ expected.to(z.dtype))[torch.arange(10), y]).mean()
            torch.testing.assert_close(out.loss, want + 0.7 * ce(zp, yp).mean())
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        torch.testing.assert_close(part.transition, expected)
    pipeline.close()


def test_trusted_cross_entropy_start_step_is_checked_and_off_before_it(step_problem):
    model, x, y, xp, yp = step_problem
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="start_step"):
            iegkit.TrustedCrossEntropy(start_step=bad)
    pipeline = iegkit.compose(iegkit.CrossEntropy(), iegkit.TrustedCrossEntropy(start_step=3),
                              model=model, optimizer=opt)
    z, zp = train_logits(model, x), train_logits(model, xp)
    torch.testing.assert_close(pipeline(x, y, xp, yp, step=2).loss, ce(z, y).mean())
    torch.testing.assert_close(pipeline(x, y, xp, yp, step=3).loss, ce(z, y).mean() + ce(zp, yp).mean())
    pipeline.close()


def test_online_estimate_waits_for_the_optimizer_step(step_problem):
    model, x, y, xp, yp = step_problem
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pipeline = recipes.forward_online(model, opt, total_steps=10)
    pipeline(x, y, xp, yp, step=0)  # no optimizer.step(): the estimate must not move
    part = pipeline.parts[0]
    torch.testing.assert_close(part.transition, torch.eye(3, dtype=torch.float64))
    pipeline.close()


def test_small_loss_part_averages_the_kept_cross_entropies(step_problem):
    model, x, y, xp, yp = step_problem
    z = train_logits(model, x)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pipeline = recipes.small_loss(model, opt, noise_rate=0.4, steps_per_epoch=2, rampup_epochs=2)
    out = pipeline(x, y, xp, yp, step=2)  # epoch 1 of a 2-epoch ramp: drop 20%
    losses = ce(z, y)
    kept = torch.sort(losses).values[:8]
    torch.testing.assert_close(out.loss, kept.mean())
    assert math.isclose(float(out.metrics["small_loss_selection/drop_rate"]), 0.2, rel_tol=1e-6)


def test_plain_plus_mixes_trusted_weak_and_strong_rows_with_the_given_labels(step_problem):
    model, x, y, xp, yp = step_problem
    start = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def strong(images, generator=None):
        return images.flip(-1) * 0.9

    pipeline = recipes.plain_plus(model, opt, strong_augment=strong, mixup_weight=0.7)
    gen = copy.deepcopy(pipeline.generators["probe_mixup"])
    out = pipeline(x, y, xp, yp, step=0)
    b = 10
    idx = torch.randint(0, 6, (b,), generator=gen)
    pool = torch.cat([xp[idx], x, strong(x)])
    onehot = torch.eye(3, dtype=torch.float64)
    targets = torch.cat([onehot[yp[idx]], onehot[y], onehot[y]])
    m = 1 - torch.rand(3 * b, generator=gen, dtype=torch.float64).square() / 2
    perm = torch.randperm(3 * b, generator=gen)
    mixed = m[:, None, None, None] * pool + (1 - m[:, None, None, None]) * pool[perm]
    mixed_t = m[:, None] * targets + (1 - m[:, None]) * targets[perm]
    zm = train_logits(start, mixed)
    rows = -(mixed_t * torch.log_softmax(zm, -1)).sum(-1)
    want = ce(train_logits(start, x), y).mean() + rows[:b].mean() + 0.7 * rows[b:].mean()
    torch.testing.assert_close(out.loss, want)
    assert out.forward_counts["mixed"] == 1 and "strong" not in out.forward_counts


# --------------------------------------------------------------------------- meta reweighting of GCE


def gce_loss(logits, targets):
    return generalized_cross_entropy(logits, targets, 0.7)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("opt_kind", ["sgd", "adam"])
def test_meta_gradients_of_a_robust_loss_match_double_backward(kind, opt_kind):
    model, x, y, xp, yp, _ = make_problem(kind)
    if opt_kind == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-3)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(2):
        for weight_init in (0.0, 1.0 / x.shape[0]):
            got = meta_gradients(model, optimizer, x, y, xp, yp, weight_init=weight_init,
                                 inner_loss=gce_loss)
            want, _ = reference_meta_gradients(model, optimizer, x, y, xp, yp,
                                               weight_init=weight_init, inner_loss=gce_loss)
            assert want.norm() > 0
            assert float((got.weight - want).norm() / want.norm()) < (1e-12 if opt_kind == "sgd" else 1e-9)
            # and it is not the cross-entropy meta-gradient
            ce_grad = meta_gradients(model, optimizer, x, y, xp, yp, weight_init=weight_init).weight
            assert float((ce_grad - want).norm() / want.norm()) > 1e-3
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def test_l2r_gce_pipeline_reweights_the_gce_loss(step_problem):
    model, x, y, xp, yp = step_problem
    start = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    out = recipes.l2r_gce(model, opt, q=0.7)(x, y, xp, yp, step=0)
    grad, _ = reference_meta_gradients(start, torch.optim.SGD(start.parameters(), lr=0.1, momentum=0.9),
                                       x, y, xp, yp, weight_init=0.0, inner_loss=gce_loss)
    clipped = torch.clamp(-grad, min=0)
    weights = clipped / (clipped.sum() + 1e-5)
    torch.testing.assert_close(out.values[iegkit.keys.WEIGHTS], weights)
    z = train_logits(start, x)
    torch.testing.assert_close(out.loss, (weights * (1 - p_true(z, y) ** 0.7) / 0.7).sum())


def _dataset(n: int, k: int) -> iegkit.data.NoisyDataset:
    g = torch.Generator().manual_seed(n * 31 + k)
    return iegkit.data.NoisyDataset(
        torch.randn(n, 2, generator=g), torch.randint(0, 3, (n,), generator=g),
        torch.randint(0, 3, (n,), generator=g), torch.randn(k, 2, generator=g),
        torch.randint(0, 3, (k,), generator=g), torch.randn(4, 2), torch.zeros(4, dtype=torch.long), 3)


def test_trusted_only_is_the_trusted_set_repeated_to_the_training_size():
    noisy = _dataset(7, 3)
    floor = iegkit.data.trusted_only(noisy)
    reps = torch.cat([noisy.trusted_inputs] * 3)[:7]  # the reference: whole copies, cut at n
    torch.testing.assert_close(floor.train_inputs, reps)
    torch.testing.assert_close(floor.train_labels, torch.cat([noisy.trusted_labels] * 3)[:7])
    assert floor.noise_rate == 0.0 and floor.trusted_inputs is noisy.trusted_inputs
    assert floor.test_inputs is noisy.test_inputs
    with pytest.raises(ValueError, match="dataset: the trusted set is empty"):
        iegkit.data.trusted_only(_dataset(7, 0))


@given(st.integers(1, 60), st.integers(1, 20))
def test_trusted_only_uses_every_trusted_example_evenly(n, k):
    noisy = _dataset(n, k)
    floor = iegkit.data.trusted_only(noisy)
    match = (floor.train_inputs[:, None, :] == noisy.trusted_inputs[None]).all(-1)  # (n, k)
    assert floor.train_inputs.shape[0] == n and bool((match.sum(1) == 1).all())
    index = match.float().argmax(1)  # the trusted example each training row is
    torch.testing.assert_close(floor.train_labels, noisy.trusted_labels[index])
    counts = torch.bincount(index, minlength=k)
    assert int(counts.max() - counts.min()) <= 1  # as even as n rows allow


# --------------------------------------------------------------------------- errors


def test_bad_baseline_settings_name_the_argument():
    with pytest.raises(ValueError, match="q:"):
        iegkit.GeneralizedCrossEntropy(q=0)
    with pytest.raises(ValueError, match="log_zero"):
        iegkit.SymmetricCrossEntropy(log_zero=1.0)
    with pytest.raises(ValueError, match="transition: rows must sum to 1"):
        iegkit.ForwardCorrection(torch.ones(3, 3))
    with pytest.raises(ValueError, match="transition: expected a square"):
        iegkit.ForwardCorrection(torch.ones(3, 2) / 2)
    with pytest.raises(ValueError, match="estimate_steps"):
        iegkit.ForwardCorrection("online")
    with pytest.raises(ValueError, match="noise_rate"):
        iegkit.SmallLossSelection(1.5, 10)
    with pytest.raises(ValueError, match="targets:"):
        iegkit.ProbeMixUp(targets="noisy")
    with pytest.raises(ValueError, match="label_mix"):
        iegkit.MetaReweighter(loss=gce_loss, label_mix=0.9)


def test_a_robust_inner_loss_refuses_a_relabeler_at_build_time(step_problem):
    model, *_ = step_problem
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    labeler = iegkit.ConsistencyPseudoLabeler(lambda images, generator=None: images)
    with pytest.raises(ValueError, match="loss:"):
        iegkit.compose(labeler, iegkit.MetaReweighter("1/B", loss=gce_loss),
                       iegkit.MetaRelabeler(), model=model, optimizer=opt)


def test_a_transition_of_the_wrong_size_is_refused_at_the_step(step_problem):
    model, x, y, xp, yp = step_problem
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pipeline = recipes.glc(model, opt, transition=torch.eye(5))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"transition: expected \(3, 3\)"):
        pipeline(x, y, xp, yp, step=0)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])


# --------------------------------------------------------------------------- class-conditional posterior


def test_transition_posterior_is_bayes_rule_and_reduces_to_the_symmetric_channel():
    from iegkit.functional.label_posterior import noisy_label_posterior, transition_label_posterior

    gen = torch.Generator().manual_seed(7)
    g = torch.softmax(torch.randn(5, 4, generator=gen, dtype=torch.float64), -1)
    y = torch.tensor([0, 1, 2, 3, 1])
    t = random_transition(4, gen)
    want = g * t[:, y].T ** 2  # tau = 0.5: the likelihood squared, as g is sharpened
    want = want / want.sum(-1, keepdim=True)
    torch.testing.assert_close(transition_label_posterior(g, y, t, temperature=0.5), want)
    r = 0.7
    symmetric = torch.full((4, 4), (1 - r) / 3, dtype=torch.float64)
    symmetric.fill_diagonal_(r)
    torch.testing.assert_close(transition_label_posterior(g, y, symmetric),
                               noisy_label_posterior(g, y, r))
    uniform = torch.full((4, 4), 0.25, dtype=torch.float64)
    torch.testing.assert_close(transition_label_posterior(g, y, uniform), g)


@given(seeds, st.integers(2, 6), st.floats(0.2, 2.0))
def test_transition_posterior_stays_on_the_simplex(seed, classes, tau):
    from iegkit.functional.label_posterior import transition_label_posterior

    gen = torch.Generator().manual_seed(seed)
    g = torch.softmax(torch.randn(7, classes, generator=gen, dtype=torch.float64), -1)
    y = torch.randint(0, classes, (7,), generator=gen)
    t = random_transition(classes, gen)
    post = transition_label_posterior(g, y, t, temperature=tau)
    assert bool((post >= 0).all())
    torch.testing.assert_close(post.sum(-1), torch.ones(7, dtype=torch.float64))
    perm = torch.randperm(7, generator=gen)
    torch.testing.assert_close(transition_label_posterior(g[perm], y[perm], t, temperature=tau),
                               post[perm])


def test_robust_ieg_takes_a_class_conditional_channel(step_problem):
    model, x, y, xp, yp = step_problem
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    t = random_transition(3, torch.Generator().manual_seed(1))
    pipeline = recipes.robust_ieg(model, opt, total_steps=10, label_transition=t,
                                  strong_augment=lambda images, generator=None: images.flip(-1))
    part = next(p for p in pipeline.parts if isinstance(p, iegkit.NoisyLabelPosterior))
    torch.testing.assert_close(part.transition, t)
    out = pipeline(x, y, xp, yp, step=0)
    assert torch.isfinite(out.loss)
    pipeline.close()
    with pytest.raises(ValueError, match="transition: a class-conditional"):
        iegkit.NoisyLabelPosterior(transition=t, label_accuracy=0.6)
