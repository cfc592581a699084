"""Label issues from the label posterior (issue 25, item 2): the math against Bayes' rule written
out, its properties, the flags and their argument checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_label_posterior import labelled_batches

from iegkit.diagnostics import (
    detection_metrics,
    find_label_issues,
    predicted_probabilities,
)
from iegkit.functional.label_posterior import label_error_probability
from iegkit.functional.shrinkage import shrink_toward_init, unshrink


@st.composite
def problems(draw):
    """A labelled batch of test_label_posterior's generator plus a row-stochastic transition."""
    probs, labels = draw(labelled_batches())
    classes = probs.shape[-1]
    raw = torch.tensor(draw(st.lists(st.floats(0.01, 1.0), min_size=classes * classes,
                                     max_size=classes * classes)), dtype=torch.float64)
    transition = raw.reshape(classes, classes)
    return probs, labels, transition / transition.sum(-1, keepdim=True)


def reference_error(q, labels, transition):
    """1 - q_y T[y, y] / sum_c q_c T[c, y], row by row (Bayes' rule for the true class)."""
    out = torch.empty(q.shape[0], dtype=q.dtype)
    for i in range(q.shape[0]):
        y = int(labels[i])
        joint = q[i] * transition[:, y]
        out[i] = 1 - joint[y] / joint.sum()
    return out


def symmetric(classes, r):
    off = (1 - r) / (classes - 1)
    return torch.full((classes, classes), off, dtype=torch.float64).fill_diagonal_(r)


@settings(max_examples=60, deadline=None)
@given(problems())
def test_error_probability_is_bayes_rule(problem):
    q, labels, transition = problem
    got = label_error_probability(q, labels, transition=transition)
    torch.testing.assert_close(got, reference_error(q, labels, transition), rtol=1e-9, atol=1e-12)
    assert ((got >= 0) & (got <= 1)).all()


@settings(max_examples=40, deadline=None)
@given(problems(), st.floats(0.0, 1.0))
def test_symmetric_channel_is_the_symmetric_transition(problem, fraction):
    q, labels, _ = problem
    classes = q.shape[-1]
    r = 1 / classes + fraction * (1 - 1 / classes)
    got = label_error_probability(q, labels, label_accuracy=r)
    torch.testing.assert_close(got, label_error_probability(
        q, labels, transition=symmetric(classes, r)), rtol=1e-9, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(problems(), st.randoms(use_true_random=False))
def test_error_probability_permutes_with_the_rows(problem, rng):
    q, labels, transition = problem
    order = list(range(q.shape[0]))
    rng.shuffle(order)
    perm = torch.tensor(order)
    torch.testing.assert_close(label_error_probability(q[perm], labels[perm], transition=transition),
                               label_error_probability(q, labels, transition=transition)[perm])


@settings(max_examples=30, deadline=None)
@given(problems())
def test_no_noise_means_no_error_and_uninformative_labels_keep_the_model(problem):
    q, labels, _ = problem
    classes = q.shape[-1]
    eye = torch.eye(classes, dtype=torch.float64)
    assert torch.all(label_error_probability(q, labels, transition=eye) == 0)
    uniform = torch.full((classes, classes), 1 / classes, dtype=torch.float64)
    torch.testing.assert_close(label_error_probability(q, labels, transition=uniform),
                               1 - q.gather(1, labels[:, None]).squeeze(1))


def test_error_probability_needs_exactly_one_channel():
    q, labels = torch.full((2, 3), 1 / 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="transition, label_accuracy: expected exactly one"):
        label_error_probability(q, labels)
    with pytest.raises(ValueError, match="got both"):
        label_error_probability(q, labels, transition=torch.eye(3), label_accuracy=0.5)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=8), st.floats(0, 1), st.floats(0, 0.99))
def test_unshrink_inverts_shrinkage(values, init, beta):
    x = torch.tensor(values, dtype=torch.float64)
    torch.testing.assert_close(unshrink(shrink_toward_init(x, init, beta), init, beta), x,
                               rtol=1e-9, atol=1e-9)


def test_unshrink_refuses_full_shrinkage():
    with pytest.raises(ValueError, match="shrinkage: expected a value in \\[0, 1\\)"):
        unshrink(torch.ones(2), 0.5, 1.0)


def noisy_problem(n=4000, classes=10, rate=0.4, seed=0):
    """Calibrated by construction: each true class is drawn from the model's softmax, then flipped
    uniformly to another class with probability ``rate``."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(3 * torch.randn(n, classes, generator=g, dtype=torch.float64), -1)
    clean = torch.multinomial(probs, 1, generator=g).squeeze(1)
    flip = torch.rand(n, generator=g, dtype=torch.float64) < rate
    other = (clean + torch.randint(1, classes, (n,), generator=g)) % classes
    return probs, torch.where(flip, other, clean), clean


def test_flags_are_the_bayes_decision_and_find_the_flipped_labels():
    probs, given_labels, clean = noisy_problem()
    flags = find_label_issues(probs, given_labels.int(), transition=symmetric(10, 0.6))
    assert torch.equal(flags.flagged, flags.error_probability > 0.5)
    metrics = detection_metrics(flags.error_probability, given_labels != clean,
                                decision=flags.flagged)
    assert metrics["precision"] > 0.85 and metrics["recall"] > 0.75  # 0.89, 0.82 at seed 0
    suggested_right = (flags.suggested[flags.flagged] == clean[flags.flagged]).float().mean()
    assert suggested_right > 0.55  # 0.64: a wrong label says little about which class is right
    # on calibrated probabilities 1/2 is Bayes' decision: no threshold classifies better
    accuracy = {t: float(((flags.error_probability > t) == (given_labels != clean)).float().mean())
                for t in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)}
    assert accuracy[0.5] >= max(accuracy.values()) - 0.005


def test_symmetric_channel_estimates_its_accuracy_from_the_model():
    probs, given_labels, _ = noisy_problem(rate=0.4)
    flags = find_label_issues(probs, given_labels)
    assert flags.channel == "symmetric" and 0.57 < flags.label_accuracy < 0.63  # 0.595
    fixed = find_label_issues(probs, given_labels, label_accuracy=0.9)
    assert fixed.label_accuracy == 0.9 and fixed.flagged.sum() < flags.flagged.sum()


@pytest.mark.parametrize("kwargs, match", [
    ({"threshold": 1.0}, "threshold: expected a value in \\(0, 1\\)"),
    ({"transition": torch.eye(3), "label_accuracy": 0.5}, "transition, label_accuracy"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        find_label_issues(torch.full((2, 3), 1 / 3), torch.tensor([0, 1]), **kwargs)


def test_float_labels_are_refused_by_name():
    with pytest.raises(ValueError, match="given_labels: expected integer"):
        find_label_issues(torch.full((2, 3), 1 / 3), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="probs: expected an \\(N, C\\) tensor"):
        find_label_issues(torch.ones(3), torch.tensor([0, 1, 2]))


def test_predicted_probabilities_restores_the_mode():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Dropout(0.5))
    model.train()
    inputs = torch.randn(7, 4)
    probs = predicted_probabilities(model, inputs, batch_size=3)
    assert model.training and probs.shape == (7, 3) and probs.dtype == torch.float64
    torch.testing.assert_close(probs.sum(-1), torch.ones(7, dtype=torch.float64))
    model.eval()
    torch.testing.assert_close(probs, torch.softmax(model(inputs).double(), -1))


# --- the run report reads the flags and the un-shrunk decisions ------------------------------

def shrunk_run(beta=0.75):
    """Four examples, the last two mislabeled: raw B*omega* 1.6, 1.6, 0.4, 0.4 and lambda* 1, 1,
    0, 0, recorded after shrinkage by beta toward 1 and 0.9 (robust_ieg's)."""
    from types import SimpleNamespace

    from iegkit.diagnostics import StepRecorder

    recorder = StepRecorder(4)
    raw_w = torch.tensor([0.4, 0.4, 0.1, 0.1])
    raw_lam = torch.tensor([1.0, 1.0, 0.0, 0.0])
    out = SimpleNamespace(weights=shrink_toward_init(raw_w, 0.25, beta),
                          relabel=shrink_toward_init(raw_lam, 0.9, beta), values={}, logits=None,
                          loss=None, losses={})
    recorder.record(0, torch.arange(4), out)
    return recorder


def test_report_unshrinks_so_that_shrunk_decisions_can_flag():
    from iegkit.diagnostics import noisy_label_report

    given_labels, clean = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 1, 2])
    as_shrunk = noisy_label_report(shrunk_run(), given_labels, clean)
    assert as_shrunk.down_weighted_fraction == 0 and as_shrunk.relabeled_fraction == 0
    report = noisy_label_report(shrunk_run(), given_labels, clean, weight_shrinkage=0.75,
                                relabel_shrinkage=0.75, label_init=0.9)
    assert report.down_weighted_fraction == 0.5 and report.relabeled_fraction == 0.5
    assert report.detection["relabeled"]["f1"] == 1.0


def test_report_lists_the_posterior_flags_as_label_issues():
    from iegkit.diagnostics import noisy_label_report

    given_labels, clean = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 1, 2])
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]],
                         dtype=torch.float64)
    flags = find_label_issues(probs, given_labels, label_accuracy=0.6)
    report = noisy_label_report(shrunk_run(), given_labels, clean, posterior=flags)
    assert report.issue_source.startswith("label posterior")
    # both P(wrong) = 1 - 0.06 / 0.24 = 0.75: ties go by lambda*, then index
    assert [(i.index, i.suggested_label) for i in report.label_issues] == [(2, 1), (3, 2)]
    assert report.label_issues[0].confidence == pytest.approx(0.75)
    assert report.detection["label posterior"]["f1"] == 1.0
    assert "| label posterior |" in report.to_markdown()
    with pytest.raises(ValueError, match="posterior: expected flags for 4 examples"):
        noisy_label_report(shrunk_run(), given_labels, clean,
                           posterior=find_label_issues(probs[:3], given_labels[:3]))
