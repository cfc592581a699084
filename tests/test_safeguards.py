"""The robust-IEG safeguards: distribution alignment, confidence mask, EMA teacher, collapse signals."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest
import torch
from conftest import make_problem
from hypothesis import given, settings
from hypothesis import strategies as st

import iegkit
from iegkit import keys, recipes
from iegkit.ema import ema_decay
from iegkit.errors import MissingProviderError
from iegkit.functional.collapse import (
    collapse_threshold,
    pseudo_label_accuracy,
    pseudo_label_concentration,
)
from iegkit.functional.confidence_mask import confidence_mask
from iegkit.functional.consistency import kl_consistency
from iegkit.functional.distribution_alignment import (
    align_distribution,
    unsharpen,
    updated_marginal,
)
from iegkit.functional.pseudo_label import sharpen


def noise_augment(images, generator=None):
    return images + 0.1 * torch.randn(images.shape, generator=generator, dtype=images.dtype)


def simplex_rows(draw, rows, classes):
    logits = torch.tensor(draw(st.lists(st.floats(-4, 4), min_size=rows * classes,
                                        max_size=rows * classes)), dtype=torch.float64)
    return torch.softmax(logits.reshape(rows, classes), -1)


@st.composite
def pseudo_batches(draw):
    rows, classes = draw(st.integers(1, 12)), draw(st.integers(2, 10))
    return simplex_rows(draw, rows, classes)


@st.composite
def marginals(draw, classes):
    return simplex_rows(draw, 1, classes)[0].clamp_min(1e-3)


# --- pure functions ------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.data())
def test_alignment_equals_sharpening_the_aligned_average(data):
    q = data.draw(pseudo_batches())
    classes = q.shape[-1]
    p_model, p_target = data.draw(marginals(classes)), data.draw(marginals(classes))
    tau = data.draw(st.sampled_from([0.25, 0.5, 1.0]))
    # reference: ReMixMatch's order (align the average, then sharpen), written out by hand
    aligned = q * p_target / p_model
    aligned = aligned / aligned.sum(-1, keepdim=True)
    expected = aligned ** (1 / tau)
    expected = expected / expected.sum(-1, keepdim=True)
    got = align_distribution(sharpen(q, tau), p_model, p_target, temperature=tau)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got.sum(-1), torch.ones(q.shape[0], dtype=torch.float64))


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_alignment_is_identity_for_equal_marginals_and_permutation_equivariant(data):
    g = data.draw(pseudo_batches())
    p = data.draw(marginals(g.shape[-1]))
    torch.testing.assert_close(align_distribution(g, p, p), g, rtol=1e-9, atol=1e-12)
    perm = torch.randperm(g.shape[0])
    other = data.draw(marginals(g.shape[-1]))
    torch.testing.assert_close(align_distribution(g[perm], p, other),
                               align_distribution(g, p, other)[perm])


@settings(max_examples=30, deadline=None)
@given(pseudo_batches(), st.sampled_from([0.25, 0.5, 2.0]))
def test_unsharpen_inverts_sharpen(q, tau):
    torch.testing.assert_close(unsharpen(sharpen(q, tau), tau), q, rtol=1e-6, atol=1e-9)


def test_updated_marginal_is_a_convex_update():
    running = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    batch = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(updated_marginal(running, batch, 0.9),
                               0.9 * running + 0.1 * torch.tensor([0.5, 0.5, 0.0],
                                                                  dtype=torch.float64))
    with pytest.raises(ValueError, match="momentum"):
        updated_marginal(running, batch, 1.0)


@settings(max_examples=40, deadline=None)
@given(st.data(), st.floats(0.0, 1.0, exclude_max=True))
def test_updated_marginal_stays_on_the_simplex_between_its_inputs(data, momentum):
    batch = data.draw(pseudo_batches())
    running = data.draw(marginals(batch.shape[-1]))
    running = running / running.sum()
    updated = updated_marginal(running, batch, momentum)
    batch_mean = batch.mean(0)
    assert updated.shape == running.shape
    assert float(updated.sum()) == pytest.approx(1.0, abs=1e-12)
    low, high = torch.minimum(running, batch_mean), torch.maximum(running, batch_mean)
    assert bool((updated >= low - 1e-12).all()) and bool((updated <= high + 1e-12).all())
    order = torch.randperm(batch.shape[0], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(updated_marginal(running, batch[order], momentum), updated)
    torch.testing.assert_close(updated_marginal(running, batch, 0.0), batch_mean)


def test_alignment_rejects_bad_marginals():
    g = torch.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="model_marginal: expected shape"):
        align_distribution(g, torch.ones(4) / 4, torch.ones(3) / 3)
    with pytest.raises(ValueError, match="target_marginal: expected finite positive"):
        align_distribution(g, torch.ones(3) / 3, torch.tensor([0.5, 0.5, 0.0]))


@settings(max_examples=40, deadline=None)
@given(pseudo_batches())
def test_concentration_bounds_and_invariance(g):
    classes = g.shape[-1]
    top, entropy = pseudo_label_concentration(g)
    assert 1 / classes - 1e-12 <= float(top) <= 1.0
    assert -1e-9 <= float(entropy) <= 1.0 + 1e-9
    perm = torch.randperm(g.shape[0])
    top_p, entropy_p = pseudo_label_concentration(g[perm])
    assert float(top_p) == float(top)
    assert math.isclose(float(entropy_p), float(entropy), rel_tol=1e-9, abs_tol=1e-12)


def test_concentration_extremes_and_accuracy():
    one_class = torch.zeros(6, 4)
    one_class[:, 2] = 1
    top, entropy = pseudo_label_concentration(one_class)
    assert float(top) == 1.0 and float(entropy) == pytest.approx(0.0, abs=1e-6)
    uniform = torch.eye(4).repeat(2, 1)
    top, entropy = pseudo_label_concentration(uniform)
    assert float(top) == 0.25 and float(entropy) == pytest.approx(1.0)
    assert float(pseudo_label_accuracy(uniform, torch.tensor([0, 1, 2, 3, 0, 0, 0, 0]))) == 0.625


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_pseudo_label_accuracy_counts_matching_argmaxes(data):
    g = data.draw(pseudo_batches())
    rows, classes = g.shape
    labels = torch.tensor(data.draw(st.lists(st.integers(0, classes - 1), min_size=rows,
                                             max_size=rows)))
    accuracy = float(pseudo_label_accuracy(g, labels))
    assert 0.0 <= accuracy <= 1.0
    assert accuracy * rows == pytest.approx(float((g.argmax(-1) == labels).sum()), abs=1e-4)
    assert float(pseudo_label_accuracy(g, g.argmax(-1))) == 1.0
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(1))
    assert float(pseudo_label_accuracy(g[order], labels[order])) == accuracy
    wrong = (g.argmax(-1) + 1) % classes
    assert float(pseudo_label_accuracy(g, wrong)) == 0.0


def test_pseudo_label_accuracy_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="labels"):
        pseudo_label_accuracy(torch.full((3, 2), 0.5), torch.tensor([0, 1]))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 100_000), st.integers(0, 100_000), st.floats(0.0, 1.0))
def test_ema_decay_warms_up_monotonically_to_its_cap(step_a, step_b, decay):
    early, late = sorted((step_a, step_b))
    assert ema_decay(early, decay) <= ema_decay(late, decay) <= decay
    assert ema_decay(early, decay) == min(decay, (1 + early) / (10 + early))
    assert ema_decay(0, 1.0) == pytest.approx(0.1)


def test_ema_decay_reaches_its_cap_at_the_documented_step():
    # min(d, (1 + t)/(10 + t)) = d from t = (10 d - 1)/(1 - d): 890 for the teacher's 0.99
    assert ema_decay(889, 0.99) < 0.99 and ema_decay(890, 0.99) == 0.99
    with pytest.raises(ValueError, match="step"):
        ema_decay(-1)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 1000), st.floats(1.0, 50.0, exclude_min=True))
def test_collapse_threshold_lies_between_balanced_and_one_class(classes, factor):
    threshold = collapse_threshold(classes, factor)
    assert 1 / classes < threshold < 1.0
    if factor / classes <= (1 + 1 / classes) / 2:
        assert threshold == factor / classes  # the rule: factor x the uniform share
    assert collapse_threshold(classes, factor * 2) >= threshold  # monotone in the factor


def test_collapse_threshold_values_and_errors():
    assert collapse_threshold(10) == 0.2
    assert collapse_threshold(2) == 0.75  # 2/C = 1 could never be exceeded
    assert collapse_threshold(3) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="num_classes"):
        collapse_threshold(1)
    with pytest.raises(ValueError, match="factor"):
        collapse_threshold(10, 1.0)


@settings(max_examples=30, deadline=None)
@given(pseudo_batches(), st.floats(0, 1))
def test_confidence_mask_keeps_exactly_the_confident_rows(g, threshold):
    mask = confidence_mask(g, threshold)
    assert mask.shape == (g.shape[0],)
    for row, kept in zip(g, mask):
        assert bool(kept) == bool(row.max() >= threshold)


def test_masked_kl_matches_a_written_out_reference():
    gen = torch.Generator().manual_seed(0)
    weak, strong = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0])
    p = torch.softmax(weak, -1)
    per_row = (p * (p.log() - torch.log_softmax(strong, -1))).sum(-1)
    torch.testing.assert_close(kl_consistency(weak, strong, mask), (per_row * mask).sum() / 5)
    assert float(kl_consistency(weak, strong, torch.zeros(5))) == 0.0


# --- parts in a pipeline -------------------------------------------------------------------------

def ieg_like(model, opt, *extra, teacher_decay=None):
    return iegkit.compose(
        iegkit.ConsistencyPseudoLabeler(noise_augment, teacher_decay=teacher_decay),
        *extra,
        iegkit.MetaReweighter("1/B", label_mix=0.9, loss_weight=0.5),
        iegkit.MetaRelabeler(0.9, loss_weight=0.5),
        iegkit.ProbeMixUp(5.0),
        iegkit.KLConsistency(20.0),
        model=model, optimizer=opt,
    )


def step(pipeline, opt, batch, index):
    _, x, y, xp, yp, _ = batch
    out = pipeline(x, y, xp, yp, step=index)
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    return out


def test_alignment_refines_what_the_meta_parts_read():
    model, *batch = make_problem("cnn", batch=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    align = iegkit.DistributionAlignment(momentum=0.5)
    pipeline = ieg_like(model, opt, align)
    names = [p.name for p in pipeline.parts]
    assert names.index("pseudo_labeler") < names.index("distribution_alignment") < names.index(
        "meta_reweighter")
    align.model_marginal = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)  # skewed on purpose
    out = pipeline(*batch[:4], step=0)
    aligned = out.values[keys.PSEUDO_TARGETS]
    assert aligned.shape == (12, 3)
    # the aligned labels moved mass away from the over-predicted class 0 (they are sharpened
    # then rescaled by (1/3 / 0.6)^2 and (1/3 / 0.1)^2): class 2 gains, class 0 loses
    before = float(out.metrics["pseudo_labeler/top_share"])
    assert 0.0 < before <= 1.0
    assert float(aligned[:, 2].mean()) > float(aligned[:, 0].mean())


def test_alignment_marginal_moves_only_after_the_optimizer_step():
    model, *batch = make_problem("cnn", batch=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    align = iegkit.DistributionAlignment(momentum=0.5)
    pipeline = ieg_like(model, opt, align)
    pipeline(*batch[:4], step=0)
    assert torch.equal(align.model_marginal, torch.full((3,), 1 / 3, dtype=torch.float64))
    step(pipeline, opt, (model, *batch), 0)
    assert not torch.equal(align.model_marginal, torch.full((3,), 1 / 3, dtype=torch.float64))
    torch.testing.assert_close(align.model_marginal.sum(), torch.tensor(1.0, dtype=torch.float64))
    state = align.state_dict()
    fresh = iegkit.DistributionAlignment(momentum=0.5)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.model_marginal, align.model_marginal)


def test_alignment_without_a_pseudo_labeler_fails_at_build_time():
    model, *_ = make_problem("cnn")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(MissingProviderError, match="refines"):
        iegkit.compose(iegkit.DistributionAlignment(), iegkit.CrossEntropy(), model=model,
                       optimizer=opt)


def test_empty_confidence_mask_zeroes_the_unlabeled_terms():
    model, *batch = make_problem("cnn", batch=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pipeline = ieg_like(model, opt, iegkit.ConfidenceMask(1.0))
    out = pipeline(*batch[:4], step=0)
    assert float(out.metrics["confidence_mask/kept_fraction"]) == 0.0
    assert float(out.losses["probe_mixup/unlabeled"].detach()) == 0.0
    assert float(out.losses["kl_consistency/loss"].detach()) == 0.0
    assert torch.isfinite(out.loss)


def test_ema_teacher_labels_follow_the_averaged_weights():
    model, *batch = make_problem("cnn", batch=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pipeline = ieg_like(model, opt, teacher_decay=0.9)
    labeler = pipeline.parts[0]
    first = pipeline(*batch[:4], step=0)
    # before any optimizer step the teacher's weights are the model's: same pseudo labels
    own = ieg_like(*_copy_model_and_opt(model))(*batch[:4], step=0)
    torch.testing.assert_close(first.values[keys.PSEUDO_TARGETS], own.values[keys.PSEUDO_TARGETS])
    step(pipeline, opt, (model, *batch), 0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    shadow_before = {n: v.clone() for n, v in labeler.teacher.shadow.items()}
    step(pipeline, opt, (model, *batch), 1)
    d = iegkit.ema.ema_decay(1, 0.9)
    for name, p in model.named_parameters():
        torch.testing.assert_close(labeler.teacher.shadow[name],
                                   d * shadow_before[name] + (1 - d) * p.detach())
    # the model moved, so the teacher's average is a real test. Not the conv biases before
    # BatchNorm: BN cancels them, their gradient is rounding (~1e-16), and whether a float64 step
    # of that size moves them depends on the machine's summation order.
    moved = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    cancelled = {"net.0.bias", "net.3.bias"}
    assert moved | cancelled == {n for n, _ in model.named_parameters()}
    state = pipeline.state_dict()
    model2, *_ = make_problem("cnn", batch=12)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    again = ieg_like(model2, opt2, teacher_decay=0.9)
    again.load_state_dict(state)
    for name, value in labeler.teacher.shadow.items():
        assert torch.equal(again.parts[0].teacher.shadow[name], value)


def _copy_model_and_opt(model):
    import copy

    clone = copy.deepcopy(model)
    return clone, torch.optim.SGD(clone.parameters(), lr=0.1, momentum=0.9)


def test_teacher_cannot_feed_the_look_ahead_through_the_pseudo_labels():
    model, *_ = make_problem("cnn")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(MissingProviderError, match="fn:pseudo_labels"):
        iegkit.compose(iegkit.ConsistencyPseudoLabeler(noise_augment, teacher_decay=0.99),
                       iegkit.MetaRelabeler(through_pseudo_labels=True), model=model,
                       optimizer=opt)


def test_collapse_metrics_are_reported_every_step():
    model, *batch = make_problem("cnn", batch=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = ieg_like(model, opt)(*batch[:4], step=0)
    for name in ("top_share", "marginal_entropy", "probe_accuracy", "agreement"):
        value = float(out.metrics[f"pseudo_labeler/{name}"])
        assert 0.0 <= value <= 1.0 + 1e-6


def test_robust_ieg_builds_from_total_steps_and_runs():
    model, *batch = make_problem("cnn", batch=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pipeline = recipes.robust_ieg(model, opt, total_steps=10, strong_augment=noise_augment)
    kinds = [type(p).__name__ for p in pipeline.parts]
    assert kinds[:2] == ["ConsistencyPseudoLabeler", "DistributionAlignment"]
    out = step(pipeline, opt, (model, *batch), 0)
    assert torch.isfinite(out.loss)
    assert float(out.metrics["probe_mixup/unlabeled_weight"]) == 0.0  # ramped from 0
    with pytest.raises(ValueError, match="total_steps"):
        recipes.robust_ieg(model, opt, total_steps=0, strong_augment=noise_augment)
    eg = recipes.build("robust_eg", model, opt, total_steps=4, strong_augment=noise_augment)
    assert "DistributionAlignment" in [type(p).__name__ for p in eg.parts]


@pytest.mark.parametrize("recipe", ["ieg", "robust_ieg"])
def test_probe_diagnostics_leave_training_bit_for_bit_unchanged(recipe):
    """The probe's pseudo labels use a generator of their own and batch statistics without
    touching BatchNorm's running ones, so measuring them every step or never trains the same
    weights (with the real AutoAugment strong view), and the default's frequency changes nothing."""
    from iegkit.models import SmallCNN
    from iegkit.training import default_augmentations

    gen = torch.Generator().manual_seed(3)
    x = torch.rand(12, 3, 16, 16, generator=gen) * 2 - 1
    xp = torch.rand(10, 3, 16, 16, generator=gen) * 2 - 1
    y, yp = torch.randint(0, 10, (12,), generator=gen), torch.arange(10)

    def train(every):
        torch.manual_seed(0)
        model = SmallCNN(3, 10, width=4)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        _, strong = default_augmentations(3, 16)
        pipeline = recipes.build(recipe, model, optimizer, total_steps=3, strong_augment=strong,
                                 probe_diagnostics_every=every)
        seen = []
        for step in range(3):
            out = pipeline(x, y, xp, yp, step=step)
            seen.append("pseudo_labeler/probe_accuracy" in out.metrics)
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
        return model.state_dict(), seen

    measured, seen = train(1)
    assert seen == [True, True, True]
    for every in (None, 10):
        state, _ = train(every)
        for name, value in measured.items():
            assert torch.equal(value, state[name]), name


# --- Collapse signals and distribution alignment at their edges -----------------------------------
# Found by mutation testing (docs/mutation.md): one and two classes, errors that name the argument,
# documented defaults and the dtype of the result.


def randn(seed, *shape, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


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


# --- DistributionAlignment's construction --------------------------------------------------------
# mutation testing (docs/mutation.md): a prior alone fixes C and is normalised, the uniform prior
# is float64, and an optimizer step with nothing measured leaves the marginal alone.


def test_a_given_prior_alone_fixes_the_classes_and_is_normalised():
    align = iegkit.DistributionAlignment(target=torch.tensor([1.0, 3.0]))
    assert align.num_classes == 2
    torch.testing.assert_close(align.target, torch.tensor([0.25, 0.75], dtype=torch.float64))
    torch.testing.assert_close(align.model_marginal, torch.full((2,), 0.5, dtype=torch.float64))


@pytest.mark.parametrize("classes", [3, 10])
def test_the_default_prior_is_uniform_in_float64(classes):
    align = iegkit.DistributionAlignment(classes)
    uniform = torch.full((classes,), 1.0 / classes, dtype=torch.float64)
    torch.testing.assert_close(align.target, uniform)  # dtype checked too
    torch.testing.assert_close(align.target.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_an_optimizer_step_before_any_pseudo_labels_keeps_the_marginal():
    align = iegkit.DistributionAlignment(3, momentum=0.5)
    align.after_optimizer_step(0)
    assert torch.equal(align.model_marginal, torch.full((3,), 1 / 3, dtype=torch.float64))


# --- mutation testing (docs/mutation.md): class axis, dtypes, default prior, bad shapes -----------
# The pure functions check no shape: the class axis is the last one (any leading axes are batch
# axes, as in torch.softmax(dim=-1)), so (B, T, C) pseudo labels, one per token, give what their
# (B * T, C) rows give. Results keep their input's precision; metrics are float32 shares.


def one_per_token():
    """(B, T, C) = (2, 5, 3) pseudo labels: T != C, so a reduction over the wrong axis shows."""
    return torch.softmax(randn(7, 2, 5, 3), -1)


def test_the_confidence_mask_reduces_over_the_class_axis_only():
    g = one_per_token()
    threshold = float(g.max(-1).values.median())  # some tokens kept, some not
    mask = confidence_mask(g, threshold)
    assert mask.shape == (2, 5) and 0 < int(mask.sum()) < 10
    assert torch.equal(mask, confidence_mask(g.reshape(10, 3), threshold).reshape(2, 5))
    assert torch.equal(mask, (g.max(-1).values >= threshold).to(g.dtype))


def test_alignment_and_unsharpening_act_on_the_class_axis_only():
    g = one_per_token()
    model = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    target = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    aligned = align_distribution(g, model, target)
    torch.testing.assert_close(aligned, align_distribution(g.reshape(10, 3), model,
                                                           target).reshape(2, 5, 3))
    want = g * (target / model) ** 2  # tau = 1/2: g' proportional to g (p_target / p_model)^(1/tau)
    torch.testing.assert_close(aligned, want / want.sum(-1, keepdim=True))
    q = unsharpen(g)
    torch.testing.assert_close(q, unsharpen(g.reshape(10, 3)).reshape(2, 5, 3))
    torch.testing.assert_close(q, g.sqrt() / g.sqrt().sum(-1, keepdim=True))


def test_accuracy_compares_the_class_argmax_of_every_token():
    g = one_per_token()
    labels = torch.tensor([[0, 1, 2, 0, 1], [2, 2, 0, 1, 0]])
    accuracy = pseudo_label_accuracy(g, labels)
    assert accuracy.dtype == torch.float32
    assert float(accuracy) == pytest.approx(float((g.argmax(-1) == labels).double().mean()),
                                            abs=1e-7)
    assert float(accuracy) == pytest.approx(float(pseudo_label_accuracy(g.reshape(10, 3),
                                                                        labels.reshape(10))))


def test_updated_marginal_is_computed_in_the_running_marginals_dtype():
    """The batch mean is cast to the running marginal's dtype first: a float64 marginal updated
    from float32 probabilities is the float64 update, and a float32 one stays float32."""
    running = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    batch = torch.softmax(randn(3, 6, 3, dtype=torch.float32), -1)
    for momentum in (0.9, 0.99, 0.3):
        got = updated_marginal(running, batch, momentum)
        assert got.dtype == torch.float64
        assert torch.equal(got, momentum * running
                           + (1.0 - momentum) * batch.mean(0).to(torch.float64))
    got = updated_marginal(running.float(), batch.double(), 0.9)
    assert got.dtype == torch.float32
    assert torch.equal(got, 0.9 * running.float() + 0.1 * batch.double().mean(0).float())


def test_the_top_share_is_exact_in_the_labels_dtype():
    """count / B in the labels' own dtype: 2/3 for float64 labels is the float64 2/3, not a
    float32 rounding of it."""
    pseudo = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8]], dtype=torch.float64)
    top, entropy = pseudo_label_concentration(pseudo)
    assert top.dtype == entropy.dtype == torch.float64
    assert top.item() == 2 / 3
    top32, _ = pseudo_label_concentration(pseudo.float())
    assert top32.dtype == torch.float32 and top32.item() == torch.tensor(2 / 3).item()


@pytest.mark.parametrize("classes", [6, 7, 13])
def test_the_default_prior_is_the_uniform_prior_given_explicitly(classes):
    """target=None means p_target = 1/C: the same prior, to the last bit, as passing
    torch.full((C,), 1/C) (both normalised by their sum; for these C that sum is not exactly 1)."""
    default = iegkit.DistributionAlignment(classes)
    given = iegkit.DistributionAlignment(
        target=torch.full((classes,), 1.0 / classes, dtype=torch.float64))
    assert torch.equal(default.target, given.target)
    g = torch.softmax(randn(classes, 4, classes), -1)
    ctx = SimpleNamespace(get=lambda key, *default_value: g)
    assert torch.equal(default.contribute(ctx).values[keys.PSEUDO_TARGETS],
                       given.contribute(ctx).values[keys.PSEUDO_TARGETS])


@pytest.mark.parametrize("num_classes", [None, 3])
@pytest.mark.parametrize("shape", [(3,), (2, 5, 3)])
def test_alignment_refuses_pseudo_labels_that_are_not_a_batch_of_rows(shape, num_classes):
    """Pseudo labels from a provider that are not (B, C) (keys.PSEUDO_TARGETS) are refused with
    the ValueError that names them and their shape: not an IndexError, not a count of classes
    taken from another axis."""
    pseudo = torch.softmax(randn(0, *shape), -1)
    align = iegkit.DistributionAlignment(num_classes)
    with pytest.raises(ValueError, match=r"^pseudo: expected a non-empty \(B, C\) batch, got "
                                         + re.escape(str(shape)) + "$"):
        align.contribute(SimpleNamespace(get=lambda key, *default: pseudo))
