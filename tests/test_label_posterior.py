"""NoisyLabelPosterior: pseudo labels as the prior, the noisy given label as the evidence."""

from __future__ import annotations

import pytest
import torch
from conftest import make_problem
from hypothesis import given, settings
from hypothesis import strategies as st

import iegkit
from iegkit import keys, recipes
from iegkit.functional.collapse import pseudo_label_concentration
from iegkit.functional.distribution_alignment import unsharpen
from iegkit.functional.label_posterior import (estimate_label_accuracy, noisy_label_posterior,
                                              posterior_unchecked)
from iegkit.functional.pseudo_label import sharpen


@st.composite
def labelled_batches(draw):
    rows, classes = draw(st.integers(1, 12)), draw(st.integers(2, 10))
    logits = torch.tensor(draw(st.lists(st.floats(-4, 4), min_size=rows * classes,
                                        max_size=rows * classes)), dtype=torch.float64)
    probs = torch.softmax(logits.reshape(rows, classes), -1)
    labels = torch.tensor(draw(st.lists(st.integers(0, classes - 1), min_size=rows,
                                        max_size=rows)))
    return probs, labels


def bayes_reference(q, labels, r, tau):
    """Bayes' rule written out row by row, then sharpening, as the docstring states it."""
    rows, classes = q.shape
    out = torch.empty_like(q)
    for i in range(rows):
        likelihood = torch.full((classes,), (1 - r) / (classes - 1), dtype=q.dtype)
        likelihood[labels[i]] = r
        post = q[i] * likelihood
        post = post / post.sum()
        post = post ** (1 / tau)
        out[i] = post / post.sum()
    return out


def log_likelihood(q_on_label, r, classes):
    return torch.log(q_on_label * r + (1 - q_on_label) * (1 - r) / (classes - 1)).sum()


# --- pure functions ------------------------------------------------------------------------------

@settings(max_examples=50, deadline=None)
@given(labelled_batches(), st.floats(0.0, 0.99), st.sampled_from([0.25, 0.5, 1.0]))
def test_posterior_is_bayes_rule_then_sharpening(batch, fraction, tau):
    q, labels = batch
    classes = q.shape[-1]
    r = 1 / classes + fraction * (1 - 1 / classes)
    got = noisy_label_posterior(sharpen(q, tau), labels, r, temperature=tau)
    torch.testing.assert_close(got, bayes_reference(q, labels, r, tau), rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(got.sum(-1), torch.ones(q.shape[0], dtype=torch.float64))


@settings(max_examples=40, deadline=None)
@given(labelled_batches(), st.randoms(use_true_random=False))
def test_posterior_endpoints_and_permutation_equivariance(batch, rnd):
    g, labels = batch
    classes = g.shape[-1]
    # r = 1/C: the label is no evidence; r = 1: the label is the truth
    torch.testing.assert_close(noisy_label_posterior(g, labels, 1 / classes), g, rtol=1e-9,
                               atol=1e-12)
    onehot = torch.nn.functional.one_hot(labels, classes).to(g.dtype)
    assert torch.equal(noisy_label_posterior(g, labels, 1.0), onehot)
    perm = torch.tensor(rnd.sample(range(g.shape[0]), g.shape[0]))
    torch.testing.assert_close(noisy_label_posterior(g[perm], labels[perm], 0.6),
                               noisy_label_posterior(g, labels, 0.6)[perm])


@settings(max_examples=40, deadline=None)
@given(labelled_batches())
def test_more_reliable_labels_pull_more_mass_onto_the_label(batch):
    g, labels = batch
    classes = g.shape[-1]
    rows = torch.arange(g.shape[0])
    masses = [noisy_label_posterior(g, labels, r)[rows, labels]
              for r in (1 / classes, 0.5 * (1 + 1 / classes), 0.99)]
    assert bool((masses[0] <= masses[1] + 1e-12).all()) and bool((masses[1] <= masses[2] + 1e-12).all())


@settings(max_examples=50, deadline=None)
@given(labelled_batches())
def test_label_accuracy_estimate_is_the_likelihood_maximum(batch):
    probs, labels = batch
    classes = probs.shape[-1]
    estimate = estimate_label_accuracy(probs, labels)
    assert 1 / classes <= estimate <= 1.0
    q_on_label = probs[torch.arange(probs.shape[0]), labels].clamp(1e-12, 1 - 1e-12)
    grid = torch.linspace(1 / classes, 1 - 1e-9, 2001, dtype=torch.float64)
    best = max(float(log_likelihood(q_on_label, r, classes)) for r in grid)
    # no r on a fine grid of [1/C, 1) is more likely than the estimate (up to the grid's step)
    assert float(log_likelihood(q_on_label, torch.tensor(min(estimate, 1 - 1e-9)), classes)) >= best - 1e-3 * probs.shape[0]
    perm = torch.randperm(probs.shape[0], generator=torch.Generator().manual_seed(0))
    assert estimate_label_accuracy(probs[perm], labels[perm]) == pytest.approx(estimate, abs=1e-9)


@pytest.mark.parametrize("accuracy", [0.28, 0.64, 0.9])
def test_label_accuracy_is_recovered_from_calibrated_predictions(accuracy):
    gen = torch.Generator().manual_seed(1)
    rows, classes = 20000, 10
    probs = torch.softmax(2.0 * torch.randn(rows, classes, generator=gen, dtype=torch.float64), -1)
    true = torch.multinomial(probs, 1, generator=gen).squeeze(1)  # calibrated: true ~ probs
    wrong = (true + torch.randint(1, classes, (rows,), generator=gen)) % classes
    flip = torch.rand(rows, generator=gen, dtype=torch.float64) > accuracy
    labels = torch.where(flip, wrong, true)
    assert estimate_label_accuracy(probs, labels) == pytest.approx(accuracy, abs=0.02)


def test_labels_against_the_prediction_are_clipped_to_no_evidence():
    probs = torch.tensor([[0.98, 0.01, 0.01]] * 6, dtype=torch.float64)
    labels = torch.tensor([1, 2, 1, 2, 1, 2])
    assert estimate_label_accuracy(probs, labels) == pytest.approx(1 / 3)
    # a flat prior says nothing about the labels: no evidence either
    assert estimate_label_accuracy(torch.full((5, 4), 0.25), torch.tensor([0, 1, 2, 3, 0])) == 0.25
    # labels the prior always backs are certain
    assert estimate_label_accuracy(torch.eye(3), torch.tensor([0, 1, 2])) == 1.0


def test_float32_and_zero_prior_classes():
    g = torch.tensor([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]], dtype=torch.float32)
    labels = torch.tensor([0, 0])
    out = noisy_label_posterior(g, labels, 0.9)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.sum(-1), torch.ones(2))
    assert float(out[0, 0]) < 1e-6  # no evidence revives a class the prior rules out
    torch.testing.assert_close(out[1], torch.tensor([1.0, 0.0, 0.0]))
    assert 1 / 3 <= estimate_label_accuracy(g, labels) <= 1.0


def test_bad_arguments_are_named():
    g = torch.full((4, 3), 1 / 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="labels"):
        noisy_label_posterior(g, torch.tensor([0, 1, 2, 3]), 0.5)
    with pytest.raises(ValueError, match="labels"):
        noisy_label_posterior(g, torch.tensor([0, 1]), 0.5)
    with pytest.raises(ValueError, match=r"label_accuracy: expected a value in \[1/C, 1\]"):
        noisy_label_posterior(g, torch.tensor([0, 1, 2, 0]), 0.2)
    with pytest.raises(ValueError, match="temperature"):
        noisy_label_posterior(g, torch.tensor([0, 1, 2, 0]), 0.5, temperature=0.0)
    with pytest.raises(ValueError, match="probs: expected a non-empty"):
        estimate_label_accuracy(g[:0], torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="pseudo: expected a non-empty"):
        noisy_label_posterior(g[0], torch.tensor([0]), 0.5)
    with pytest.raises(ValueError, match="temperature"):
        iegkit.NoisyLabelPosterior(temperature=0.0)
    with pytest.raises(ValueError, match="momentum"):
        iegkit.NoisyLabelPosterior(momentum=1.0)


# --- the part in a pipeline ----------------------------------------------------------------------

def noise_augment(images, generator=None):
    return images + 0.1 * torch.randn(images.shape, generator=generator, dtype=images.dtype)


def pipeline_with(model, opt, align, posterior):
    return iegkit.compose(
        iegkit.ConsistencyPseudoLabeler(noise_augment),
        align,
        posterior,
        iegkit.MetaReweighter("1/B", label_mix=0.9, loss_weight=0.5),
        iegkit.MetaRelabeler(0.9, loss_weight=0.5),
        iegkit.ProbeMixUp(5.0),
        model=model, optimizer=opt,
    )


class SpyPosterior(iegkit.NoisyLabelPosterior):
    """Keeps the pseudo labels the part receives (after the alignment), to check what it does."""

    def contribute(self, ctx):
        self.received = ctx.get(keys.PSEUDO_TARGETS).detach().clone()
        return super().contribute(ctx)


def test_part_starts_neutral_then_refines_with_its_running_estimate():
    model, x, y, xp, yp, _ = make_problem("cnn", batch=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    align = iegkit.DistributionAlignment(momentum=0.9)
    posterior = SpyPosterior(momentum=0.9)
    pipeline = pipeline_with(model, opt, align, posterior)
    names = [p.name for p in pipeline.parts]
    assert (names.index("distribution_alignment") < names.index("noisy_label_posterior")
            < names.index("meta_reweighter"))

    out = pipeline(x, y, xp, yp, step=0)
    aligned = posterior.received
    # before any optimizer step r = 1/C: the label is no evidence and the labels pass unchanged
    torch.testing.assert_close(out.values[keys.PSEUDO_TARGETS], aligned)
    first = estimate_label_accuracy(unsharpen(aligned, 0.5), y)
    assert float(out.metrics["noisy_label_posterior/batch_label_accuracy"]) == pytest.approx(
        first, abs=1e-6)
    assert posterior.label_accuracy is None
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    running = 0.9 / 3 + 0.1 * first
    assert posterior.label_accuracy == pytest.approx(running)

    out2 = pipeline(x, y, xp, yp, step=1)
    aligned = posterior.received
    second = estimate_label_accuracy(unsharpen(aligned, 0.5), y)
    assert abs(second - running) > 1e-3  # so using the batch's estimate would be caught
    torch.testing.assert_close(out2.values[keys.PSEUDO_TARGETS],
                               noisy_label_posterior(aligned, y, running))
    opt.zero_grad()
    out2.loss.backward()
    opt.step()
    assert posterior.label_accuracy == pytest.approx(0.9 * running + 0.1 * second)

    fresh = iegkit.NoisyLabelPosterior(momentum=0.9)
    fresh.load_state_dict(posterior.state_dict())
    assert fresh.label_accuracy == posterior.label_accuracy
    with pytest.raises(ValueError, match="label_accuracy"):
        fresh.load_state_dict({"label_accuracy": 1.5})
    with pytest.raises(ValueError, match="expected key"):
        fresh.load_state_dict({})
    # a stored value below 1/C (e.g. from a run with more classes) is used as 1/C, not refused
    fresh.load_state_dict({"label_accuracy": 0.01})
    assert fresh._current(3) == pytest.approx(1 / 3)


def test_robust_ieg_label_posterior_option_adds_the_part_after_alignment():
    model, *_ = make_problem("cnn", batch=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    without = recipes.robust_ieg(model, opt, total_steps=10, strong_augment=noise_augment,
                                 label_posterior=False)
    assert "NoisyLabelPosterior" not in [type(p).__name__ for p in without.parts]
    with_posterior = recipes.robust_ieg(model, opt, total_steps=10, strong_augment=noise_augment,
                                        label_posterior=True, temperature=0.7)
    kinds = [type(p).__name__ for p in with_posterior.parts]
    assert with_posterior.parts[kinds.index("NoisyLabelPosterior")].temperature == 0.7
    assert kinds.index("DistributionAlignment") < kinds.index("NoisyLabelPosterior") < kinds.index(
        "MetaReweighter")


# --- edges found by mutation testing (scripts/mutation.sh) --------------------------------------

def test_label_accuracy_above_one_and_degenerate_shapes_are_refused_with_the_range():
    g = torch.full((4, 3), 1 / 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"\[1/C, 1\] = \[0\.3333, 1\], got 1\.5"):
        noisy_label_posterior(g, y, 1.5)
    with pytest.raises(ValueError, match=r"got shape \(3,\)"):
        noisy_label_posterior(g[0], y[:1], 0.5)
    with pytest.raises(ValueError, match=r"pseudo: expected a non-empty \(B, C\) tensor, got shape \(\)"):
        noisy_label_posterior([[0.5, 0.5]], y[:1], 0.5)  # a list, not a tensor
    with pytest.raises(ValueError, match="probs: expected C >= 2 classes, got 1"):
        estimate_label_accuracy(torch.ones(4, 1), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^labels: labels must lie in \[0, 3\)"):
        estimate_label_accuracy(g, torch.tensor([0, 1, 2, 3]))


def test_estimate_is_computed_in_float64_whatever_the_input_dtype():
    generator = torch.Generator().manual_seed(3)
    probs = torch.softmax(3 * torch.randn(64, 10, generator=generator), -1)  # float32
    labels = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # calibrated
    flip = torch.rand(64, generator=generator) < 0.5  # then half the labels redrawn: r inside
    labels = torch.where(flip, torch.randint(0, 10, (64,), generator=generator), labels)
    assert 0.2 < estimate_label_accuracy(probs.double(), labels) < 0.99
    # float32 arithmetic in the bisection would move the answer by ~1e-7
    assert estimate_label_accuracy(probs, labels) == estimate_label_accuracy(probs.double(), labels)


def test_part_without_momentum_follows_each_batch_and_ignores_stray_step_calls():
    model, x, y, xp, yp, _ = make_problem("cnn", batch=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    posterior = SpyPosterior(momentum=0.0, temperature=0.7)
    pipeline = pipeline_with(model, opt, iegkit.DistributionAlignment(momentum=0.9), posterior)
    posterior.after_optimizer_step(0)  # no batch seen yet: nothing to fold in
    assert posterior.label_accuracy is None
    out = pipeline(x, y, xp, yp, step=0)
    # the batch estimate unsharpens with the part's own temperature (0.7, not the default 0.5)
    estimate = estimate_label_accuracy(unsharpen(posterior.received, 0.7), y)
    metrics = {k.split("/", 1)[1]: float(v) for k, v in out.metrics.items()
               if k.startswith("noisy_label_posterior/")}
    refined = out.values[keys.PSEUDO_TARGETS]
    top, entropy = pseudo_label_concentration(refined)
    assert metrics == pytest.approx({"label_accuracy": 1 / 3, "batch_label_accuracy": estimate,
                                     "top_share": float(top), "marginal_entropy": float(entropy)},
                                    abs=1e-6)
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    assert posterior.label_accuracy == pytest.approx(estimate)  # momentum 0: the batch's estimate
    posterior.after_optimizer_step(1)  # a second call without a new batch changes nothing
    assert posterior.label_accuracy == pytest.approx(estimate)


def test_state_round_trips_at_the_ends_of_its_range():
    part = iegkit.NoisyLabelPosterior()
    for value in (None, 0.0, 1.0):
        part.load_state_dict({"label_accuracy": value})
        assert part.state_dict() == {"label_accuracy": value, "known_label_accuracy": None}
    part.load_state_dict({"label_accuracy": 0.5})  # a state saved before the known-r option
    assert part.label_accuracy == 0.5
    known = iegkit.NoisyLabelPosterior(label_accuracy=0.7)
    fresh = iegkit.NoisyLabelPosterior(label_accuracy=0.7)
    fresh.load_state_dict(known.state_dict())
    assert fresh.state_dict() == {"label_accuracy": None, "known_label_accuracy": 0.7}
    # resuming with the option switched would silently change r: refused both ways
    with pytest.raises(ValueError, match=r"saved with label_accuracy=0\.7, but this part has "
                                         r"label_accuracy=None"):
        part.load_state_dict(known.state_dict())
    with pytest.raises(ValueError, match=r"saved with label_accuracy=None, but this part has "
                                         r"label_accuracy=0\.7"):
        known.load_state_dict(part.state_dict())
    with pytest.raises(ValueError, match="expected key 'label_accuracy'"):
        part.load_state_dict({"label_accuracy": 0.5, "other": 1})


def test_a_known_label_accuracy_replaces_the_running_estimate():
    model, x, y, xp, yp, _ = make_problem("cnn", batch=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    posterior = SpyPosterior(label_accuracy=0.7)
    pipeline = pipeline_with(model, opt, iegkit.DistributionAlignment(momentum=0.9), posterior)
    for step in range(2):
        out = pipeline(x, y, xp, yp, step=step)
        # from the first step on (no neutral start): the posterior at the given r
        torch.testing.assert_close(out.values[keys.PSEUDO_TARGETS],
                                   noisy_label_posterior(posterior.received, y, 0.7))
        assert float(out.metrics["noisy_label_posterior/label_accuracy"]) == pytest.approx(0.7)
        estimate = estimate_label_accuracy(unsharpen(posterior.received, 0.5), y)
        assert float(out.metrics["noisy_label_posterior/batch_label_accuracy"]) == pytest.approx(
            estimate, abs=1e-6)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        assert posterior.label_accuracy is None  # no running estimate is kept
    # the ends of the range: r = 1 trusts the labels (onehot), r = 1/C ignores them (unchanged)
    g = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]], dtype=torch.float64)
    labels = torch.tensor([0, 2])
    for r, expected in ((1.0, torch.eye(3, dtype=torch.float64)[labels]), (1 / 3, g),
                        (0.4, noisy_label_posterior(g, labels, 0.4))):
        part = iegkit.NoisyLabelPosterior(label_accuracy=r)
        assert part._current(3) == r
        torch.testing.assert_close(posterior_unchecked(g, labels, part._current(3), 0.5), expected)
    with pytest.raises(ValueError, match=r"label_accuracy: expected a value in \[1/C, 1\] = "
                                         r"\[0\.3333, 1\] for C = 3 classes, got 0\.2"):
        iegkit.NoisyLabelPosterior(label_accuracy=0.2)._current(3)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"label_accuracy: expected None or a value in "
                                             r"\[1/C, 1\], got"):
            iegkit.NoisyLabelPosterior(label_accuracy=bad)
    model, *_ = make_problem("cnn", batch=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pipeline = recipes.robust_ieg(model, opt, total_steps=10, strong_augment=noise_augment,
                                  label_accuracy=0.64)
    part = next(p for p in pipeline.parts if isinstance(p, iegkit.NoisyLabelPosterior))
    assert part.known_label_accuracy == 0.64
    with pytest.raises(ValueError, match="label_accuracy: only used by the label posterior"):
        recipes.robust_ieg(model, opt, total_steps=10, strong_augment=noise_augment,
                           label_posterior=False, label_accuracy=0.64)
    with pytest.raises(ValueError, match="label_accuracy: unused without pseudo labels"):
        recipes.robust_ieg(model, opt, total_steps=10, strong_augment=noise_augment,
                           components={"AA"}, label_accuracy=0.64)
