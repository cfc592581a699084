"""Each part's documented defaults and argument ranges (found by mutation testing, docs/mutation.md).

A part built with its defaults must take exactly the step of the same part given the documented
(official) values explicitly; every range a docstring or error message states is checked at both
ends; and the metrics the parts document are there, named as documented, with their values.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_problem

import iegkit
from iegkit.functional.distribution_alignment import align_distribution, updated_marginal
from iegkit.functional.confidence_mask import confidence_mask


def flip_view(images, generator=None):  # a deterministic strong view: no draws
    return images.flip(-1) * 0.9


def labeler(**kwargs):
    return iegkit.ConsistencyPseudoLabeler(flip_view, **kwargs)


def run(parts_factory, steps: int = 2):
    """``steps`` SGD steps of a BN CNN on one fixed float64 problem; the StepOutputs."""
    model, x, y, xp, yp, _ = make_problem("cnn", batch=10, probe=6)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pipeline = iegkit.compose(*parts_factory(opt), model=model, optimizer=opt)
    outs = []
    for step in range(steps):
        out = pipeline(x, y, xp, yp, step=step)
        outs.append(out)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    pipeline.close()
    return outs


def assert_same_steps(a, b):
    for out_a, out_b in zip(a, b, strict=True):
        assert out_a.losses.keys() == out_b.losses.keys()
        for name in out_a.losses:
            torch.testing.assert_close(out_a.losses[name], out_b.losses[name], rtol=0, atol=0,
                                       msg=name)
        assert out_a.values.keys() == out_b.values.keys()
        for name, value in out_a.values.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(value, out_b.values[name], rtol=0, atol=0, msg=name)
        assert out_a.metrics.keys() == out_b.metrics.keys()
        for name in out_a.metrics:
            torch.testing.assert_close(torch.as_tensor(out_a.metrics[name]),
                                       torch.as_tensor(out_b.metrics[name]), rtol=0, atol=0,
                                       msg=name)


DEFAULTS = {
    "CrossEntropy": (lambda opt: [iegkit.CrossEntropy()],
                     lambda opt: [iegkit.CrossEntropy(loss_weight=1.0)]),
    "KLConsistency": (lambda opt: [labeler(), iegkit.KLConsistency()],
                      lambda opt: [labeler(), iegkit.KLConsistency(20.0, rampup_steps=None)]),
    "MetaRelabeler": (lambda opt: [labeler(), iegkit.MetaRelabeler()],
                      lambda opt: [labeler(), iegkit.MetaRelabeler(0.9, loss_weight=1.0)]),
    "ProbeMixUp": (lambda opt: [labeler(), iegkit.ProbeMixUp()],
                   lambda opt: [labeler(), iegkit.ProbeMixUp(5.0, coefficient="official", alpha=0.5,
                                                             normalize_logits=True, threshold=None,
                                                             rampup_steps=None)]),
    "ProbeMixUp-beta": (lambda opt: [labeler(), iegkit.ProbeMixUp(coefficient="beta")],
                        lambda opt: [labeler(), iegkit.ProbeMixUp(coefficient="beta", alpha=0.5)]),
    "ConfidenceMask": (lambda opt: [labeler(), iegkit.ConfidenceMask(), iegkit.KLConsistency()],
                       lambda opt: [labeler(), iegkit.ConfidenceMask(0.95), iegkit.KLConsistency()]),
    "ConsistencyPseudoLabeler": (
        lambda opt: [labeler(), iegkit.KLConsistency()],
        lambda opt: [labeler(temperature=0.5, normalize_logits=True, teacher_decay=None,
                             probe_diagnostics_every=10), iegkit.KLConsistency()]),
    "DistributionAlignment": (
        lambda opt: [labeler(), iegkit.DistributionAlignment(), iegkit.KLConsistency()],
        lambda opt: [labeler(), iegkit.DistributionAlignment(None, momentum=0.99, target=None,
                                                             temperature=0.5),
                     iegkit.KLConsistency()]),
    "MetaReweighter": (lambda opt: [iegkit.MetaReweighter()],
                       lambda opt: [iegkit.MetaReweighter("auto", label_mix=None, loss_weight=1.0,
                                                          normalizer_eps=1e-5)]),
}


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_defaults_are_the_documented_values(name):
    defaults, explicit = DEFAULTS[name]
    assert_same_steps(run(defaults, steps=2), run(explicit, steps=2))


def test_documented_metrics_are_reported():
    out = run(lambda opt: [labeler(probe_diagnostics_every=1), iegkit.ConfidenceMask(0.4),
                           iegkit.DistributionAlignment(), iegkit.MetaRelabeler(),
                           iegkit.KLConsistency()], steps=2)[-1]
    relabel = out.relabel
    torch.testing.assert_close(out.metrics["meta_relabeler/kept_fraction"].double(),
                               relabel.double().mean())
    kept = (out.values[iegkit.keys.PSEUDO_TARGETS].max(-1).values >= 0.4).double().mean()
    torch.testing.assert_close(out.metrics["confidence_mask/kept_fraction"].double(), kept)
    assert float(out.metrics["kl_consistency/kl"]) * 20.0 == pytest.approx(
        float(out.losses["kl_consistency/loss"].detach()), rel=1e-12)
    for name in ("top_share", "marginal_entropy", "model_marginal_max"):
        assert f"distribution_alignment/{name}" in out.metrics
    for name in ("top_share", "marginal_entropy", "agreement", "probe_accuracy"):
        assert f"pseudo_labeler/{name}" in out.metrics


# --- argument ranges, both ends -------------------------------------------------------------------

def test_confidence_threshold_range():
    for threshold in (0.0, 1.0):
        iegkit.ConfidenceMask(threshold)
        confidence_mask(torch.full((2, 3), 1 / 3), threshold)
    for threshold in (-0.01, 1.01):
        with pytest.raises(ValueError, match="threshold"):
            iegkit.ConfidenceMask(threshold)
        with pytest.raises(ValueError, match="threshold"):
            confidence_mask(torch.full((2, 3), 1 / 3), threshold)


def test_confidence_mask_keeps_rows_at_the_threshold_over_the_class_axis():
    pseudo = torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.25, 0.5], [0.4, 0.3, 0.3]],
                          dtype=torch.float64)
    assert confidence_mask(pseudo, 0.5).tolist() == [1.0, 1.0, 0.0]  # >= at the threshold


def test_relabeler_label_init_range():
    for value in (0.0, 1.0):
        iegkit.MetaRelabeler(value)
    for value in (-0.01, 1.01):
        with pytest.raises(ValueError, match="label_init"):
            iegkit.MetaRelabeler(value)


def test_kl_weight_range():
    iegkit.KLConsistency(0.0)
    iegkit.KLConsistency(0.5)
    with pytest.raises(ValueError, match="weight"):
        iegkit.KLConsistency(-0.01)


def test_pseudo_labeler_argument_ranges():
    with pytest.raises(TypeError, match="strong_augment"):
        iegkit.ConsistencyPseudoLabeler("not a callable")
    for temperature in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature"):
            labeler(temperature=temperature)
    labeler(teacher_decay=0.0)
    for decay in (1.0, -0.1):
        with pytest.raises(ValueError, match="teacher_decay"):
            labeler(teacher_decay=decay)
    labeler(probe_diagnostics_every=None)
    labeler(probe_diagnostics_every=3)
    for every in (0, 1.5, -2):
        with pytest.raises(ValueError, match="probe_diagnostics_every"):
            labeler(probe_diagnostics_every=every)


def test_distribution_alignment_argument_ranges():
    iegkit.DistributionAlignment(2)
    iegkit.DistributionAlignment(momentum=0.0)
    for num_classes in (1, 2.5, 0):
        with pytest.raises(ValueError, match="num_classes"):
            iegkit.DistributionAlignment(num_classes)
    for momentum in (1.0, -0.1):
        with pytest.raises(ValueError, match="momentum"):
            iegkit.DistributionAlignment(momentum=momentum)
    for temperature in (0.0, -0.5):
        with pytest.raises(ValueError, match="temperature"):
            iegkit.DistributionAlignment(temperature=temperature)
    for target in ([0.5, 0.5, 0.0], [0.2, 0.3], [-0.1, 0.6, 0.5]):
        with pytest.raises(ValueError, match="target"):
            iegkit.DistributionAlignment(3, target=torch.tensor(target))
    pseudo = torch.full((2, 3), 1 / 3, dtype=torch.float64)
    marginal = torch.full((3,), 1 / 3, dtype=torch.float64)
    for temperature in (0.0, -0.5):
        with pytest.raises(ValueError, match="temperature"):
            align_distribution(pseudo, marginal, marginal, temperature=temperature)
    torch.testing.assert_close(updated_marginal(marginal, pseudo * 3, 0.0), marginal * 3)
    with pytest.raises(ValueError, match="momentum"):
        updated_marginal(marginal, pseudo, 1.0)


def test_distribution_alignment_refuses_another_number_of_classes():
    part = iegkit.DistributionAlignment(4)
    with pytest.raises(ValueError, match="num_classes"):
        run(lambda opt: [labeler(), part, iegkit.KLConsistency()], steps=1)


def test_reweighter_argument_ranges():
    iegkit.MetaReweighter(normalize="per_rank")
    iegkit.MetaReweighter(normalizer_eps=0.0)
    for value in (0.0, 1.0):
        iegkit.MetaReweighter(label_mix=value)
    with pytest.raises(ValueError, match="normalize"):
        iegkit.MetaReweighter(normalize="local")
    with pytest.raises(ValueError, match="weight_init"):
        iegkit.MetaReweighter("1/N")
    for value in (-0.01, 1.01):
        with pytest.raises(ValueError, match="label_mix"):
            iegkit.MetaReweighter(label_mix=value)
    with pytest.raises(ValueError, match="normalizer_eps"):
        iegkit.MetaReweighter(normalizer_eps=-1e-9)


def test_probe_mixup_argument_ranges_and_no_global_draws():
    before = torch.random.get_rng_state()
    iegkit.ProbeMixUp(coefficient="beta", alpha=2.0)
    iegkit.ProbeMixUp(coefficient="beta_max")
    assert torch.equal(torch.random.get_rng_state(), before)  # validating draws nothing global
    iegkit.ProbeMixUp(0.0)
    iegkit.ProbeMixUp(0.5)
    with pytest.raises(ValueError, match="unlabeled_weight"):
        iegkit.ProbeMixUp(-0.1)
    with pytest.raises(ValueError, match="kind"):
        iegkit.ProbeMixUp(coefficient="uniform")
    for alpha in (0.0, -1.0):
        with pytest.raises(ValueError, match="alpha"):
            iegkit.ProbeMixUp(coefficient="beta", alpha=alpha)


def test_parts_declare_what_their_options_read():
    model, *_ = make_problem("cnn")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(iegkit.errors.MissingProviderError, match="targets:pseudo"):
        iegkit.compose(iegkit.MetaReweighter(label_mix=0.9), model=model, optimizer=opt)
    with pytest.raises(iegkit.errors.MissingProviderError, match="weights"):
        iegkit.compose(labeler(), iegkit.ProbeMixUp(threshold=0.1), model=model, optimizer=opt)
    text = iegkit.compose(labeler(), iegkit.ProbeMixUp(), model=model, optimizer=opt).describe()
    assert "forward 'mixed' (3B rows built by probe_mixup" in text


def test_reweighter_metrics():
    out = run(lambda opt: [iegkit.MetaReweighter()], steps=1)[0]
    torch.testing.assert_close(out.metrics["meta_reweighter/nonzero_fraction"].double(),
                               (out.weights > 0).double().mean())
    assert 0 < float(out.metrics["meta_reweighter/nonzero_fraction"]) < 1
    assert float(out.metrics["meta_reweighter/probe_loss"]) > 0
