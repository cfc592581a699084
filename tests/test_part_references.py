"""Each part's loss against a reference written out here from the paper and the official code, with
torch primitives only (no iegkit helper), on one IEG step in float64."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import make_problem
from reference import reference_meta_gradients

import iegkit
from iegkit import recipes
from iegkit.errors import MissingProviderError
from iegkit.functional.mixup import mix_coefficients


def flip_view(images, generator=None):  # a deterministic strong view: no draws
    return images.flip(-1) * 0.9


def onehot(labels, classes):
    return torch.eye(classes, dtype=torch.float64)[labels]


def ce(logits, target):
    return -(target * torch.log_softmax(logits, -1)).sum(-1)


def rms_normalised(z):  # the official logit_norm: one RMS over the whole chunk
    return z / torch.sqrt(z.square().mean() + 1e-8)


def sharpen_half(p):
    return p.square() / p.square().sum(-1, keepdim=True)


def forward_train(model, inputs):
    clone = copy.deepcopy(model)
    clone.train()
    return clone(inputs)


@pytest.fixture
def ieg_step():
    model, x, y, xp, yp, _ = make_problem("cnn", batch=10, probe=6)
    start = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pipeline = recipes.ieg(model, opt, strong_augment=flip_view, plain_strong_augment=flip_view)
    mix_state = pipeline.generators["probe_mixup"].get_state()
    out = pipeline(x, y, xp, yp, step=0)
    return start, model, (x, y, xp, yp), out, mix_state


def test_pseudo_labels_are_the_sharpened_mean_of_normalised_views(ieg_step):
    start, _, (x, y, xp, yp), out, _ = ieg_step
    weak, strong = forward_train(start, x), forward_train(start, flip_view(x))
    mean = (torch.softmax(rms_normalised(weak), -1) + torch.softmax(rms_normalised(strong), -1)) / 2
    torch.testing.assert_close(out.values[iegkit.keys.PSEUDO_TARGETS], sharpen_half(mean))


def test_supervised_terms_follow_the_official_targets(ieg_step):
    start, _, (x, y, xp, yp), out, _ = ieg_step
    weak = forward_train(start, x)
    g = out.values[iegkit.keys.PSEUDO_TARGETS]
    omega, lam = out.weights, out.relabel
    y1 = onehot(y, 3)
    # L_omega* = sum_i omega*_i CE(0.9 y_i + 0.1 g_i, z_i), times the official 1/2
    expected_w = 0.5 * (omega * ce(weak, 0.9 * y1 + 0.1 * g)).sum()
    # L_lambda* = (1/B) sum_i CE(lambda*_i y_i + (1 - lambda*_i) g_i, z_i), times 1/2
    expected_l = 0.5 * ce(weak, lam[:, None] * y1 + (1 - lam[:, None]) * g).mean()
    torch.testing.assert_close(out.losses["meta_reweighter/loss"], expected_w)
    torch.testing.assert_close(out.losses["meta_relabeler/loss"], expected_l)
    assert set(lam.tolist()) <= {0.0, 1.0}
    assert float(omega.min()) >= 0 and float(omega.sum()) <= 1


def test_probe_mixup_chunks_and_normalisation(ieg_step):
    start, _, (x, y, xp, yp), out, mix_state = ieg_step
    g = out.values[iegkit.keys.PSEUDO_TARGETS]
    b = x.shape[0]
    gen = torch.Generator()
    gen.set_state(mix_state)
    idx = torch.randint(0, xp.shape[0], (b,), generator=gen)  # probe resampled to B
    m = 1 - torch.rand(3 * b, generator=gen, dtype=torch.float64).square() / 2
    perm = torch.randperm(3 * b, generator=gen)
    pool_x = torch.cat([xp[idx], x, flip_view(x)])
    pool_t = torch.cat([onehot(yp[idx], 3), g, g])
    mixed_x = m[:, None, None, None] * pool_x + (1 - m[:, None, None, None]) * pool_x[perm]
    mixed_t = m[:, None] * pool_t + (1 - m[:, None]) * pool_t[perm]
    logits = forward_train(start, mixed_x)
    chunks = [rms_normalised(c) for c in logits.split(b)]
    probe = ce(chunks[0], mixed_t[:b]).mean()
    unlabeled = ce(torch.cat(chunks[1:]), mixed_t[b:]).mean()
    torch.testing.assert_close(out.losses["probe_mixup/probe"], probe)
    torch.testing.assert_close(out.losses["probe_mixup/unlabeled"], 5.0 * unlabeled)


def test_kl_is_weak_to_strong_with_gradient_through_strong_only(ieg_step):
    start, model, (x, y, xp, yp), out, _ = ieg_step
    weak, strong = forward_train(start, x), forward_train(start, flip_view(x))
    p = torch.softmax(weak, -1)
    expected = 20.0 * (p * (torch.log(p) - torch.log_softmax(strong, -1))).sum(-1).mean()
    torch.testing.assert_close(out.losses["kl_consistency/loss"], expected)
    # KL(p || q) is not symmetric: the reversed direction gives another value here
    reverse = 20.0 * (torch.softmax(strong, -1) * (torch.log_softmax(strong, -1)
                                                   - torch.log(p))).sum(-1).mean()
    assert not torch.isclose(reverse, expected)


def test_only_the_training_batch_moves_the_batchnorm_statistics(ieg_step):
    start, model, (x, y, xp, yp), out, _ = ieg_step
    reference = copy.deepcopy(start)
    reference.train()
    reference(x)  # one train-mode forward of the weak batch, nothing else
    for (name, got), (_, expected) in zip(model.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(got, expected, msg=name)


def test_total_is_the_sum_of_the_terms(ieg_step):
    *_, out = ieg_step[:4]
    torch.testing.assert_close(out.loss, sum(out.losses.values()))


# --- Part options the tests above leave at their defaults -----------------------------------------
# Found by mutation testing (docs/mutation.md): each option against a reference written here from
# the paper / official code with torch primitives, on one float64 step of a BN CNN, plus the state
# and hook paths of the stateful parts (flip_view, onehot, ce and forward_train are the helpers at
# the top of this file).


C = 3  # classes of the "cnn" problem


def labeler(**kwargs):
    return iegkit.ConsistencyPseudoLabeler(flip_view, **kwargs)


def problem():
    model, x, y, xp, yp, _ = make_problem("cnn", batch=10, probe=6)
    return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), (x, y, xp, yp)


def guess(model, x, temperature=0.5, normalize=True):
    """The pseudo labels of ConsistencyPseudoLabeler, written out (IEG 2.2.1, official logit norm)."""
    def ln(z):
        return z / torch.sqrt(z.square().mean() + 1e-8) if normalize else z
    weak, strong = forward_train(model, x), forward_train(model, flip_view(x))
    p = (torch.softmax(ln(weak), -1) + torch.softmax(ln(strong), -1)) / 2
    sharp = p ** (1 / temperature)
    return (sharp / sharp.sum(-1, keepdim=True)).detach()


# --- CrossEntropy ---------------------------------------------------------------------------------

def test_cross_entropy_is_the_weighted_mean_cross_entropy():
    model, opt, (x, y, xp, yp) = problem()
    start = copy.deepcopy(model)
    out = iegkit.compose(iegkit.CrossEntropy(loss_weight=0.25), model=model, optimizer=opt)(
        x, y, xp, yp, step=0)
    expected = 0.25 * F.cross_entropy(forward_train(start, x), y)
    torch.testing.assert_close(out.losses["cross_entropy/loss"], expected)


# --- ConsistencyPseudoLabeler ---------------------------------------------------------------------

def test_labeler_temperature_and_plain_softmax_average():
    model, opt, (x, y, xp, yp) = problem()
    start = copy.deepcopy(model)
    pipeline = iegkit.compose(labeler(temperature=0.25, normalize_logits=False),
                              iegkit.KLConsistency(), model=model, optimizer=opt)
    out = pipeline(x, y, xp, yp, step=0)
    torch.testing.assert_close(out.values[iegkit.keys.PSEUDO_TARGETS],
                               guess(start, x, temperature=0.25, normalize=False))


@pytest.mark.parametrize("every,expected", [(None, [False, False, False]),
                                            (2, [True, False, True]), (1, [True, True, True])])
def test_probe_accuracy_runs_every_that_many_steps(every, expected):
    model, opt, (x, y, xp, yp) = problem()
    pipeline = iegkit.compose(labeler(probe_diagnostics_every=every), iegkit.KLConsistency(),
                              model=model, optimizer=opt)
    seen = ["pseudo_labeler/probe_accuracy" in pipeline(x, y, xp, yp, step=s).metrics
            for s in range(3)]
    assert seen == expected


def test_a_strong_view_of_another_shape_is_named():
    model, opt, (x, y, xp, yp) = problem()
    pipeline = iegkit.compose(iegkit.ConsistencyPseudoLabeler(lambda images, generator=None:
                                                              images[:, :, :4]),
                              iegkit.KLConsistency(), model=model, optimizer=opt)
    with pytest.raises(ValueError, match="strong_augment"):
        pipeline(x, y, xp, yp, step=0)


def test_describe_names_who_declared_the_views_and_the_look_ahead():
    model, opt, _ = problem()
    text = iegkit.compose(labeler(), iegkit.MetaReweighter(), iegkit.MetaRelabeler(),
                          iegkit.KLConsistency(), model=model, optimizer=opt).describe()
    assert "forward 'strong' (declared by pseudo_labeler" in text
    assert "look-ahead for ['meta_reweighter', 'meta_relabeler']" in text


def _teacher_run(steps):
    model, opt, (x, y, xp, yp) = problem()
    pipeline = iegkit.compose(labeler(teacher_decay=0.5), iegkit.KLConsistency(),
                              model=model, optimizer=opt)
    for step in range(steps):
        out = pipeline(x, y, xp, yp, step=step)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return pipeline, model, opt


def test_teacher_state_survives_a_load_before_the_pipeline_is_bound():
    pipeline, model, opt = _teacher_run(steps=12)
    state = copy.deepcopy(pipeline.parts[0].state_dict())
    assert state["teacher"]["decay"] == 0.5
    fresh = labeler(teacher_decay=0.5)
    fresh.load_state_dict(state)  # before bind: kept and applied when the pipeline binds
    twin_model = copy.deepcopy(model)
    twin_opt = torch.optim.SGD(twin_model.parameters(), lr=0.05, momentum=0.9)
    twin = iegkit.compose(fresh, iegkit.KLConsistency(), model=twin_model, optimizer=twin_opt)
    for name, value in pipeline.parts[0].teacher.shadow.items():
        torch.testing.assert_close(fresh.teacher.shadow[name], value, rtol=0, atol=0)
    twin.bind(twin_model, twin_opt)  # binding again starts a new teacher, without error
    with pytest.raises(ValueError, match="unexpected"):
        fresh.load_state_dict({**state, "extra": 1})


def test_teacher_decay_is_the_given_one():
    """After 12 steps the EMA warm-up (min(decay, (1 + t) / (10 + t))) has reached 0.5."""
    pipeline, model, _ = _teacher_run(steps=12)
    shadow = pipeline.parts[0].teacher.state_dict()
    assert shadow["decay"] == 0.5


# --- MetaRelabeler --------------------------------------------------------------------------------

def test_relabeler_weight_init_is_where_the_meta_gradient_is_taken():
    model, opt, (x, y, xp, yp) = problem()
    start = copy.deepcopy(model)
    start_opt = torch.optim.SGD(start.parameters(), lr=0.05, momentum=0.9)
    pipeline = iegkit.compose(labeler(), iegkit.MetaRelabeler(0.9, weight_init=1.0),
                              model=model, optimizer=opt)
    out = pipeline(x, y, xp, yp, step=0)
    g = guess(start, x)
    _, label_grad = reference_meta_gradients(start, start_opt, x, y, xp, yp, weight_init=1.0,
                                             label_init=0.9, pseudo_targets=g)
    assert torch.equal(out.relabel, (label_grad < 0).double())
    _, at_default = reference_meta_gradients(start, start_opt, x, y, xp, yp, weight_init=0.1,
                                             label_init=0.9, pseudo_targets=g)
    # the setting changes a decision on this problem (lambda* is a sign: scale alone would not)
    assert not torch.equal(label_grad < 0, at_default < 0)


def test_relabeling_through_pseudo_labels_needs_a_labeler_that_provides_them():
    model, opt, _ = problem()
    with pytest.raises(MissingProviderError, match=r"requires \['fn:pseudo_labels'\]"):
        iegkit.compose(labeler(teacher_decay=0.9), iegkit.MetaRelabeler(through_pseudo_labels=True),
                       model=model, optimizer=opt)


# --- ProbeMixUp -----------------------------------------------------------------------------------

def test_probe_mixup_threshold_split_and_beta_coefficients():
    """Algorithm 1 step 4: omega*_i >= T keeps onehot(y_i) in both views; Beta(2, 2) factors."""
    model, opt, (x, y, xp, yp) = problem()
    start = copy.deepcopy(model)
    twin = copy.deepcopy(start)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9)
    weights = iegkit.compose(labeler(), iegkit.MetaReweighter(), model=twin, optimizer=twin_opt)(
        x, y, xp, yp, step=0).weights
    positive = weights[weights > 0].sort().values
    threshold = float(positive[len(positive) // 2])  # exactly one example's weight: inclusive
    part = iegkit.ProbeMixUp(2.0, coefficient="beta", alpha=2.0, threshold=threshold,
                             normalize_logits=False)
    pipeline = iegkit.compose(labeler(), iegkit.MetaReweighter(), part, model=model, optimizer=opt)
    state = pipeline.generators["probe_mixup"].get_state()
    out = pipeline(x, y, xp, yp, step=0)
    torch.testing.assert_close(out.weights, weights, rtol=0, atol=0)
    g = out.values[iegkit.keys.PSEUDO_TARGETS]
    b = x.shape[0]
    gen = torch.Generator()
    gen.set_state(state)
    idx = torch.randint(0, xp.shape[0], (b,), generator=gen)
    clean = (weights >= threshold)[:, None]
    assert 0 < int(clean.sum()) < b
    unlabeled = torch.where(clean, onehot(y, C), g)
    m = mix_coefficients(3 * b, gen, kind="beta", alpha=2.0, dtype=torch.float64)
    perm = torch.randperm(3 * b, generator=gen)
    pool_x = torch.cat([xp[idx], x, flip_view(x)])
    pool_t = torch.cat([onehot(yp[idx], C), unlabeled, unlabeled])
    mixed_x = m[:, None, None, None] * pool_x + (1 - m[:, None, None, None]) * pool_x[perm]
    mixed_t = m[:, None] * pool_t + (1 - m[:, None]) * pool_t[perm]
    chunks = forward_train(start, mixed_x).split(b)
    torch.testing.assert_close(out.losses["probe_mixup/probe"], ce(chunks[0], mixed_t[:b]).mean())
    torch.testing.assert_close(out.losses["probe_mixup/unlabeled"],
                               2.0 * ce(torch.cat(chunks[1:]), mixed_t[b:]).mean())


# --- DistributionAlignment ------------------------------------------------------------------------

def test_alignment_with_a_given_prior_and_its_running_marginal():
    """q' = Normalize(q * p_target / p_model) on sharpened labels (ReMixMatch 3.2); p_model starts
    uniform and moves by momentum towards the batch's mean unsharpened label after the step."""
    model, opt, (x, y, xp, yp) = problem()
    start = copy.deepcopy(model)
    prior = torch.tensor([1.0, 2.0, 1.5], dtype=torch.float32)  # unnormalised, float32
    part = iegkit.DistributionAlignment(C, momentum=0.9, target=prior, temperature=0.25)
    pipeline = iegkit.compose(labeler(temperature=0.25), part, iegkit.KLConsistency(),
                              model=model, optimizer=opt)
    out = pipeline(x, y, xp, yp, step=0)
    g = guess(start, x, temperature=0.25)
    target = prior.double() / prior.double().sum()
    uniform = torch.full((C,), 1 / C, dtype=torch.float64)
    aligned = g * (target / uniform) ** (1 / 0.25)
    aligned = aligned / aligned.sum(-1, keepdim=True)
    torch.testing.assert_close(out.values[iegkit.keys.PSEUDO_TARGETS], aligned, rtol=1e-12,
                               atol=1e-14)
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    q = g ** 0.25
    q = q / q.sum(-1, keepdim=True)
    marginal = part.state_dict()["model_marginal"]
    assert marginal.dtype == torch.float64
    torch.testing.assert_close(marginal, 0.9 * uniform + 0.1 * q.mean(0), rtol=1e-12, atol=1e-14)
    opt.step()  # an optimizer step without a pipeline step leaves the marginal alone
    torch.testing.assert_close(part.state_dict()["model_marginal"], marginal, rtol=0, atol=0)


def test_uniform_target_is_exact_and_num_classes_may_be_given():
    outs = []
    for num_classes in (None, C):
        model, opt, (x, y, xp, yp) = problem()
        start = copy.deepcopy(model)
        part = iegkit.DistributionAlignment(num_classes)
        pipeline = iegkit.compose(labeler(), part, iegkit.KLConsistency(), model=model,
                                  optimizer=opt)
        opt.step()  # before the first pipeline step: nothing pending, nothing moves
        out = pipeline(x, y, xp, yp, step=0)
        # first step: p_model = p_target = uniform, so the labels pass through unchanged
        torch.testing.assert_close(out.values[iegkit.keys.PSEUDO_TARGETS], guess(start, x),
                                   rtol=1e-12, atol=1e-15)
        outs.append(out.values[iegkit.keys.PSEUDO_TARGETS])
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_alignment_state_is_float64_and_checked():
    fresh = iegkit.DistributionAlignment().state_dict()["model_marginal"]
    assert fresh.shape == (0,) and fresh.dtype == torch.float64
    part = iegkit.DistributionAlignment(C)
    assert part.state_dict()["model_marginal"].dtype == torch.float64
    part.load_state_dict({"model_marginal": torch.tensor([0.2, 0.3, 0.5], dtype=torch.float32)})
    loaded = part.state_dict()["model_marginal"]
    assert loaded.dtype == torch.float64
    torch.testing.assert_close(loaded, torch.tensor([0.2, 0.3, 0.5]).double())
    with pytest.raises(ValueError, match="model_marginal"):
        part.load_state_dict({"model_marginal": torch.ones(C) / C, "other": 1})
    with pytest.raises(ValueError, match="model_marginal"):
        part.load_state_dict({"model_marginal": torch.ones(C + 1) / (C + 1)})


def test_alignment_state_saved_before_the_first_step_loads():
    """Found by mutation testing (docs/mutation.md): this raised ZeroDivisionError."""
    state = iegkit.DistributionAlignment().state_dict()
    fresh = iegkit.DistributionAlignment()
    fresh.load_state_dict(state)
    assert fresh.num_classes is None
    with pytest.raises(ValueError, match="model_marginal is empty"):
        iegkit.DistributionAlignment(num_classes=3).load_state_dict(state)


# --- MetaReweighter -------------------------------------------------------------------------------

def test_reweighter_looks_ahead_with_its_own_lr():
    model, opt, (x, y, xp, yp) = problem()
    start = copy.deepcopy(model)
    # omega0 = 1/B moves the look-ahead point with the lr, so the normalised weights depend on it
    # (at omega0 = 0 the lr only scales the meta-gradient, which the normalisation removes)
    out = iegkit.compose(iegkit.MetaReweighter("1/B", lookahead_lr=3.0, normalizer_eps=0.0),
                         model=model, optimizer=opt)(x, y, xp, yp, step=0)

    def reference_weights(lr):
        reference_opt = torch.optim.SGD(start.parameters(), lr=lr, momentum=0.9)
        weight_grad, _ = reference_meta_gradients(start, reference_opt, x, y, xp, yp,
                                                  weight_init=1 / x.shape[0])
        clipped = (-weight_grad).clamp_min(0)
        return clipped / clipped.sum()

    torch.testing.assert_close(out.weights, reference_weights(3.0), rtol=1e-10, atol=1e-14)
    assert not torch.allclose(reference_weights(3.0), reference_weights(0.05), rtol=1e-3)
