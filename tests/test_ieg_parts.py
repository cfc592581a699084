"""IEG parts: pure functions against direct references, properties, one look-ahead, ablations."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import ieg_meta_reference, make_problem, take_real_step
from hypothesis import given
from hypothesis import strategies as st

import iegkit
from iegkit import recipes
from iegkit._core import meta_step as meta_module
from iegkit.functional.confidence_mask import confidence_mask
from iegkit.functional.consistency import kl_consistency
from iegkit.functional.distribution_alignment import align_distribution, updated_marginal
from iegkit.functional.mixup import mix_coefficients, mixup_batch
from iegkit.functional.pseudo_label import guess_targets, logit_norm, sharpen
from iegkit.functional.relabel import relabel_from_meta_gradient
from iegkit.functional.schedule import check_rampup, linear_rampup
from iegkit.parts.probe_mixup import probe_mixup_pool

seeds = st.integers(0, 2**31 - 1)


def randn(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def noise_augment(images, generator=None):
    return images + 0.1 * torch.randn(images.shape, generator=generator, dtype=images.dtype)


# --- pure functions ------------------------------------------------------------------------------

def test_guess_targets_matches_a_direct_computation():
    zw, zs = randn(0, 5, 4), randn(1, 5, 4)

    def ln(z):
        return z / (z.pow(2).mean() + 1e-8) ** 0.5

    p = (torch.softmax(ln(zw), -1) + torch.softmax(ln(zs), -1)) / 2
    want = p**2 / (p**2).sum(-1, keepdim=True)
    torch.testing.assert_close(guess_targets([zw, zs], 0.5), want)
    p = (torch.softmax(zw, -1) + torch.softmax(zs, -1)) / 2
    torch.testing.assert_close(guess_targets([zw, zs], 0.5, normalize_logits=False),
                               p**2 / (p**2).sum(-1, keepdim=True))


@given(seeds, st.integers(1, 6), st.integers(2, 7), st.integers(1, 3), st.floats(0.05, 2.0))
def test_pseudo_labels_are_distributions(seed, b, c, k, tau):
    g = guess_targets([randn(seed + i, b, c) * 5 for i in range(k)], tau)
    assert bool((g >= 0).all())
    torch.testing.assert_close(g.sum(-1), torch.ones(b, dtype=torch.float64))


@given(seeds, st.integers(1, 6), st.integers(2, 7), st.floats(0.05, 0.99))
def test_sharpening_keeps_the_argmax_and_lowers_entropy(seed, b, c, tau):
    p = torch.softmax(randn(seed, b, c) * 3, -1)
    s = sharpen(p, tau)
    assert torch.equal(s.argmax(-1), p.argmax(-1))
    entropy = lambda q: -(q * q.clamp_min(1e-300).log()).sum(-1)  # noqa: E731
    assert bool((entropy(s) <= entropy(p) + 1e-9).all())


@given(seeds, st.integers(1, 6), st.integers(2, 7))
def test_logit_norm_has_unit_rms(seed, b, c):
    z = randn(seed, b, c) * 7
    assert abs(float(logit_norm(z).pow(2).mean()) - 1.0) < 1e-6


def test_relabel_sign_rule():
    grad = torch.tensor([-1.0, 0.0, 2.0, -1e-30])
    assert relabel_from_meta_gradient(grad).tolist() == [1.0, 0.0, 0.0, 1.0]


@given(seeds, st.integers(1, 6), st.integers(2, 7))
def test_kl_is_nonnegative_zero_for_equal_views_and_matches_torch(seed, b, c):
    zw, zs = randn(seed, b, c), randn(seed + 1, b, c)
    kl = kl_consistency(zw, zs)
    assert float(kl) >= -1e-12
    assert abs(float(kl_consistency(zw, zw))) < 1e-12
    want = F.kl_div(F.log_softmax(zs, -1), F.log_softmax(zw, -1), log_target=True,
                    reduction="batchmean")
    torch.testing.assert_close(kl, want)


def test_kl_gradient_flows_only_through_the_strong_view():
    zw, zs = randn(0, 4, 3).requires_grad_(), randn(1, 4, 3).requires_grad_()
    kl_consistency(zw, zs).backward()
    assert zw.grad is None and zs.grad.abs().sum() > 0


@given(seeds, st.integers(1, 8), st.integers(2, 5), st.sampled_from(["official", "beta", "beta_max"]))
def test_mixup_targets_stay_distributions(seed, n, c, kind):
    gen = torch.Generator().manual_seed(seed)
    x, y = randn(seed, n, 3), torch.softmax(randn(seed + 1, n, c), -1)
    m = mix_coefficients(n, gen, kind=kind, dtype=torch.float64)
    assert bool((m >= 0).all() and (m <= 1).all())
    if kind != "beta":
        assert bool((m >= 0.5).all())
    perm = torch.randperm(n, generator=gen)
    mx, my = mixup_batch(x, y, m, perm)
    torch.testing.assert_close(my.sum(-1), torch.ones(n, dtype=torch.float64))
    for i in range(n):  # per-sample loop reference
        torch.testing.assert_close(mx[i], m[i] * x[i] + (1 - m[i]) * x[perm[i]])
    ident_x, ident_y = mixup_batch(x, y, torch.ones(n, dtype=torch.float64), perm)
    assert torch.equal(ident_x, x) and torch.equal(ident_y, y)


def test_official_mix_coefficient_distribution():
    m = mix_coefficients(200_000, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(float(m.mean()) - (1 - 1 / 6)) < 3e-3  # E[1 - U^2/2] = 5/6
    b = mix_coefficients(200_000, torch.Generator().manual_seed(0), kind="beta", dtype=torch.float64)
    assert abs(float(b.mean()) - 0.5) < 3e-3 and abs(float(b.var()) - 0.125) < 3e-3


def test_probe_mixup_pool_layout_and_threshold():
    b, c = 4, 3
    gen = torch.Generator().manual_seed(0)
    weak, strong = randn(0, b, 2), randn(1, b, 2)
    probe_x, probe_y = randn(2, 2, 2), torch.tensor([0, 2])
    pseudo = torch.softmax(randn(3, b, c), -1)
    y = torch.tensor([1, 1, 0, 2])
    x, t = probe_mixup_pool(probe_x, probe_y, weak, strong, pseudo, y, generator=gen)
    assert x.shape == (3 * b, 2) and t.shape == (3 * b, c)
    assert torch.equal(x[b:2 * b], weak) and torch.equal(x[2 * b:], strong)
    assert torch.equal(t[b:2 * b], pseudo) and torch.equal(t[2 * b:], pseudo)
    weights = torch.tensor([0.5, 0.2, 0.3, 0.0])
    _, t1 = probe_mixup_pool(probe_x, probe_y, weak, strong, pseudo, y, weights=weights,
                             threshold=1.0, generator=gen)
    assert torch.equal(t1[b:], t[b:])  # T = 1 is a no-op on normalised weights
    _, t2 = probe_mixup_pool(probe_x, probe_y, weak, strong, pseudo, y, weights=weights,
                             threshold=0.4, generator=gen)
    assert torch.equal(t2[b], F.one_hot(y[0], c).double()) and torch.equal(t2[b + 1], pseudo[1])


# --- parts in a pipeline --------------------------------------------------------------------------

def ieg_pipeline(model, opt, **kwargs):
    return recipes.ieg(model, opt, strong_augment=noise_augment, plain_strong_augment=noise_augment,
                       **kwargs)


def test_ieg_step_uses_one_lookahead_and_one_jvp(monkeypatch):
    model, x, y, xp, yp, _ = make_problem("cnn")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    calls = {"jvp": 0, "probe": 0}
    real_tangent, real_probe = meta_module.logit_tangent, meta_module.probe_tangent

    def counted_tangent(*a, **k):
        calls["jvp"] += 1
        return real_tangent(*a, **k)

    def counted_probe(*a, **k):
        calls["probe"] += 1
        return real_probe(*a, **k)

    monkeypatch.setattr(meta_module, "logit_tangent", counted_tangent)
    monkeypatch.setattr(meta_module, "probe_tangent", counted_probe)
    out = ieg_pipeline(model, opt)(x, y, xp, yp, step=0)
    assert calls == {"jvp": 1, "probe": 1}
    assert out.lookahead_count == 1
    assert out.forward_counts == {"input": 1, "strong": 1, "mixed": 1}
    assert set(out.losses) == {"meta_reweighter/loss", "meta_relabeler/loss", "probe_mixup/probe",
                               "probe_mixup/unlabeled", "kl_consistency/loss"}
    out.loss.backward()


def test_ieg_meta_values_match_the_functional_meta_step():
    model, x, y, xp, yp, _ = make_problem("cnn")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    shadow = copy.deepcopy(model)
    out = ieg_pipeline(model, opt)(x, y, xp, yp, step=0)
    pseudo = out.values["targets:pseudo"]
    want = ieg_meta_reference(shadow, x, y, xp, yp, pseudo)
    assert torch.equal(out.relabel, relabel_from_meta_gradient(want.label))
    torch.testing.assert_close(out.weights, iegkit.functional.normalize_meta_weights(want.weight))


def test_order_of_parts_does_not_change_the_ieg_loss():
    model, x, y, xp, yp, _ = make_problem("cnn")
    parts = lambda: [  # noqa: E731
        iegkit.KLConsistency(), iegkit.ProbeMixUp(), iegkit.MetaRelabeler(loss_weight=0.5),
        iegkit.MetaReweighter("1/B", label_mix=0.9, loss_weight=0.5),
        iegkit.ConsistencyPseudoLabeler(noise_augment)]
    losses = []
    for order in ([0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3]):
        m = copy.deepcopy(model)
        ps = parts()
        pipe = iegkit.compose(*[ps[i] for i in order], model=m,
                              optimizer=torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9))
        losses.append(pipe(x, y, xp, yp, step=0).loss)
    assert torch.equal(losses[0], losses[1]) and torch.equal(losses[0], losses[2])


@pytest.mark.parametrize("n", range(1, 9))
def test_every_ablation_builds_and_runs_one_step(n):
    model, x, y, xp, yp, _ = make_problem("cnn")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pipe = recipes.ablation(n, model, opt, strong_augment=noise_augment,
                            plain_strong_augment=noise_augment)
    out = pipe(x, y, xp, yp, step=0)
    names = {type(p).__name__ for p in pipe.parts}
    components = recipes.TABLE7[n]
    assert ("MetaRelabeler" in names) == ("lambda" in components)
    assert ("ProbeMixUp" in names) == ("MC" in components)
    assert ("KLConsistency" in names) == ("UC" in components)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="n: expected"):
        recipes.ablation(9, model, opt)


def test_eg_ignores_the_noisy_labels():
    model, x, y, xp, yp, _ = make_problem("cnn")
    a = recipes.eg(model, torch.optim.SGD(model.parameters(), lr=0.1), strong_augment=noise_augment)
    m1, m2 = copy.deepcopy(model), copy.deepcopy(model)
    out1 = recipes.eg(m1, torch.optim.SGD(m1.parameters(), lr=0.1), strong_augment=noise_augment)(
        x, y, xp, yp, step=0)
    out2 = recipes.eg(m2, torch.optim.SGD(m2.parameters(), lr=0.1), strong_augment=noise_augment)(
        x, (y + 1) % 3, xp, yp, step=0)
    assert torch.equal(out1.loss, out2.loss)
    assert a.needs_probe and out1.lookahead_count == 0


def test_schedule_runs_before_the_lookahead():
    model, x, y, xp, yp, _ = make_problem("cnn")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pipe = recipes.l2r(model, opt, first_cycle_steps=4)
    names = [p.name for p in pipe.parts]
    assert names.index("sgdr_schedule") < names.index("meta_reweighter")
    out = pipe(x, y, xp, yp, step=2)
    assert abs(opt.param_groups[0]["lr"] - 0.05) < 1e-12  # half-way down the first cosine
    assert abs(float(out.values["lr"]) - 0.05) < 1e-7


def test_pipeline_resume_reproduces_the_next_step():
    model, x, y, xp, yp, _ = make_problem("cnn")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pipe = ieg_pipeline(model, opt)
    pipe(x, y, xp, yp, step=0)
    state = pipe.state_dict()
    first = pipe(x, y, xp, yp, step=1).loss
    m2 = copy.deepcopy(model)
    pipe2 = ieg_pipeline(m2, torch.optim.SGD(m2.parameters(), lr=0.1, momentum=0.9), seed=7)
    pipe2.load_state_dict(state)
    assert torch.equal(pipe2(x, y, xp, yp, step=1).loss, first)


def test_weight_ema_matches_the_tf_formula():
    model = torch.nn.Linear(2, 1).double()
    ema = iegkit.WeightEMA(model, 0.999)
    shadow = model.weight.detach().clone()
    for t in range(3):
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update(t)
        d = min(0.999, (1 + t) / (10 + t))
        shadow = d * shadow + (1 - d) * model.weight.detach()
    torch.testing.assert_close(ema.shadow["weight"], shadow)
    raw = model.weight.detach().clone()
    with ema.average_parameters():
        torch.testing.assert_close(model.weight.detach(), shadow)
    assert torch.equal(model.weight.detach(), raw)


def flip_augment(images, generator=None):
    return 0.8 * images.flip(-1)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_official_lookahead_through_pseudo_labels_matches_double_backward(kind):
    from reference import reference_meta_gradients

    model, x, y, xp, yp, _ = make_problem(kind)
    augment = flip_augment
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    take_real_step(model, opt, x, y)
    labeler = iegkit.ConsistencyPseudoLabeler(augment)
    shadow = copy.deepcopy(model)
    shadow_opt = torch.optim.SGD(shadow.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    shadow_opt.load_state_dict(opt.state_dict())
    pipe = iegkit.compose(labeler, iegkit.MetaReweighter("1/B", label_mix=0.9, loss_weight=0.5),
                          iegkit.MetaRelabeler(loss_weight=0.5, through_pseudo_labels=True),
                          model=model, optimizer=opt)
    out = pipe(x, y, xp, yp, step=1)
    want_w, want_l = reference_meta_gradients(
        shadow, shadow_opt, x, y, xp, yp, weight_init=1 / x.shape[0], label_init=0.9,
        pseudo_fn=labeler.pseudo_labels, strong_inputs=augment(x))
    torch.testing.assert_close(out.weights, iegkit.functional.normalize_meta_weights(want_w),
                               rtol=1e-10, atol=1e-14)
    assert torch.equal(out.relabel, relabel_from_meta_gradient(want_l))
    # and the option really changes the meta-gradient (the constant-q version differs)
    const_w, _ = reference_meta_gradients(shadow, shadow_opt, x, y, xp, yp, weight_init=1 / x.shape[0],
                                          label_init=0.9, pseudo_targets=out.values["targets:pseudo"])
    assert not torch.allclose(const_w, want_w, rtol=1e-6)


def test_rampup_scales_the_unlabeled_and_consistency_terms():
    model, x, y, xp, yp, _ = make_problem("cnn")
    m1, m2 = copy.deepcopy(model), copy.deepcopy(model)
    full = recipes.eg(m1, torch.optim.SGD(m1.parameters(), lr=0.1), strong_augment=flip_augment)
    ramped = recipes.eg(m2, torch.optim.SGD(m2.parameters(), lr=0.1), strong_augment=flip_augment,
                        rampup_steps=4)
    a, b = full(x, y, xp, yp, step=1), ramped(x, y, xp, yp, step=1)
    torch.testing.assert_close(b.losses["probe_mixup/unlabeled"], 0.25 * a.losses["probe_mixup/unlabeled"])
    torch.testing.assert_close(b.losses["kl_consistency/loss"], 0.25 * a.losses["kl_consistency/loss"])
    torch.testing.assert_close(b.losses["probe_mixup/probe"], a.losses["probe_mixup/probe"])
    with pytest.raises(ValueError, match="rampup_steps"):
        iegkit.KLConsistency(rampup_steps=0)


# --- Pseudo labels, KL consistency and the ramp-up at their edges ---------------------------------
# Found by mutation testing (docs/mutation.md): documented defaults, both ends of every stated
# range, errors that name the argument, and no warning from inside.


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


def test_rampup_of_one_step_and_its_ceiling():
    assert check_rampup(1) == 1
    assert linear_rampup(0, 1) == 0.0 and linear_rampup(1, 1) == 1.0
    assert linear_rampup(40, 4) == 1.0  # never above 1
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match="rampup_steps"):
            check_rampup(bad)


# --- Each part's documented defaults, argument ranges and metrics ---------------------------------
# Found by mutation testing (docs/mutation.md). A part built with its defaults must take exactly the
# step of the same part given the documented (official) values explicitly; every range a docstring
# or error message states is checked at both ends; and the metrics the parts document are there,
# named as documented, with their values.


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
