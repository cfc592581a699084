"""TrustedGate: the gate's math, its measurement on a held-out fold, and what it scales."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from conftest import make_problem
from hypothesis import given
from hypothesis import strategies as st

import iegkit
from iegkit import Contribution, PartBase, keys
from iegkit.functional.trusted_gate import smoothed_accuracy, trusted_gate


@given(accuracy=st.floats(0.0, 1.0), num_classes=st.integers(2, 100),
       margin_fraction=st.floats(0.01, 1.0))
def test_gate_is_a_clipped_ramp_from_chance(accuracy, num_classes, margin_fraction):
    margin = margin_fraction * (1.0 - 1.0 / num_classes)
    gate = trusted_gate(accuracy, num_classes, margin)
    assert 0.0 <= gate <= 1.0
    chance = 1.0 / num_classes
    if accuracy <= chance:
        assert gate == 0.0
    elif accuracy >= chance + margin:
        assert gate == 1.0
    else:
        assert gate == pytest.approx((accuracy - chance) / margin, rel=1e-12)


@given(a=st.floats(0.0, 1.0), b=st.floats(0.0, 1.0), num_classes=st.integers(2, 100))
def test_gate_is_monotone_in_accuracy(a, b, num_classes):
    low, high = sorted((a, b))
    assert trusted_gate(low, num_classes, 0.05) <= trusted_gate(high, num_classes, 0.05)


@given(previous=st.one_of(st.none(), st.floats(0.0, 1.0)), measured=st.floats(0.0, 1.0),
       momentum=st.floats(0.0, 1.0, exclude_max=True))
def test_smoothed_accuracy_lies_between_the_estimate_and_the_measurement(previous, measured,
                                                                         momentum):
    smoothed = smoothed_accuracy(previous, measured, momentum)
    if previous is None:
        assert smoothed == measured
        return
    low, high = sorted((previous, measured))
    assert low - 1e-15 <= smoothed <= high + 1e-15
    assert smoothed == pytest.approx(momentum * previous + (1 - momentum) * measured)
    assert smoothed_accuracy(previous, measured, 0.0) == measured


def test_smoothed_accuracy_rejects_a_momentum_of_one():
    with pytest.raises(ValueError, match="momentum"):
        smoothed_accuracy(0.5, 0.5, 1.0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(accuracy=1.5, num_classes=10), "accuracy"),
    (dict(accuracy=float("nan"), num_classes=10), "accuracy"),
    (dict(accuracy=0.5, num_classes=1), "num_classes"),
    (dict(accuracy=0.5, num_classes=10, margin=0.0), "margin"),
    (dict(accuracy=0.5, num_classes=2, margin=0.6), "margin"),
])
def test_gate_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        trusted_gate(**kwargs)


class FixedLabeler(PartBase):
    """Stands in for ConsistencyPseudoLabeler: provides ``keys.IMAGE_LABELER``, whose label_images
    returns preset pseudo labels in turn."""

    provides = (keys.IMAGE_LABELER,)

    def __init__(self, predictions):
        self.name = "fixed_labeler"
        self.predictions = list(predictions)
        self.calls = []

    def contribute(self, ctx):
        return Contribution(values={keys.IMAGE_LABELER: self.label_images})

    def label_images(self, model, images, generator=None):
        self.calls.append(images.shape[0])
        classes = self.predictions.pop(0)
        return torch.nn.functional.one_hot(classes, 4).to(images.dtype)


class GateReader(PartBase):
    optional_requires = (keys.UNLABELED_GATE,)

    def __init__(self, log):
        self.name, self.log = "reader", log

    def contribute(self, ctx):
        self.log.append(float(ctx.get(keys.UNLABELED_GATE, -1.0)))
        return Contribution(losses={"loss": ctx.logits("input").square().mean()})


def _compose(labeler, holdout_y, **kwargs):
    model, x, y, xp, yp, _ = make_problem("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    holdout_x = torch.zeros(holdout_y.shape[0], *x.shape[1:], dtype=x.dtype)
    log: list = []
    gate = iegkit.TrustedGate(holdout_x, holdout_y, **kwargs)
    pipeline = iegkit.compose(GateReader(log), gate, labeler, model=model, optimizer=opt)
    return pipeline, gate, log, (x, y, xp, yp)


def test_measures_on_the_holdout_smooths_and_gates():
    holdout_y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    right, half, collapsed = holdout_y, torch.tensor([0, 1, 2, 3, 1, 2, 3, 0]), torch.zeros(8).long()
    labeler = FixedLabeler([right, half, collapsed])
    pipeline, gate, log, batch = _compose(labeler, holdout_y, every=2, momentum=0.5, margin=0.5)
    accuracies = []
    for step in range(5):
        out = pipeline(*batch, step=step)
        accuracies.append(gate.accuracy)
        if step % 2 == 0:
            assert float(out.metrics["trusted_gate/holdout_accuracy"]) == [1.0, 0.5, 0.25][step // 2]
    assert labeler.calls == [8, 8, 8]  # steps 0, 2 and 4 only
    # a <- 0.5 a + 0.5 acc, from the first measurement
    assert accuracies == [1.0, 1.0, 0.75, 0.75, 0.5]
    # gate = clip((a - 1/4) / 0.5, 0, 1): the reader sees it in the same step
    assert log == [1.0, 1.0, 1.0, 1.0, 0.5]


def test_a_collapsed_labeler_closes_the_gate():
    """One class for every image of a class-balanced fold scores exactly chance."""
    holdout_y = torch.arange(8) % 4
    pipeline, _, log, batch = _compose(FixedLabeler([torch.full((8,), 2)]), holdout_y)
    pipeline(*batch, step=0)
    assert log == [0.0]


def test_gate_scales_p_and_k_exactly():
    """ProbeMixUp's unlabeled term and KLConsistency are multiplied by the gate; the probe term
    and the rest of the step are unchanged (same generators, same draws)."""

    class FixedGate(PartBase):
        provides = (keys.UNLABELED_GATE,)

        def __init__(self, value):
            self.name, self.value = "fixed_gate", value

        def contribute(self, ctx):
            return Contribution(values={keys.UNLABELED_GATE: torch.tensor(self.value)})

    def losses(*extra):
        model, x, y, xp, yp, _ = make_problem("cnn", batch=12)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        labeler = iegkit.ConsistencyPseudoLabeler(
            lambda images, generator=None: images.flip(-1))
        pipeline = iegkit.compose(labeler, *extra, iegkit.ProbeMixUp(5.0),
                                  iegkit.KLConsistency(20.0), model=model, optimizer=opt)
        return pipeline(x, y, xp, yp, step=0).losses

    plain, gated = losses(), losses(FixedGate(0.25))
    for key in ("probe_mixup/unlabeled", "kl_consistency/loss"):
        torch.testing.assert_close(gated[key], 0.25 * plain[key], rtol=1e-12, atol=0)
    torch.testing.assert_close(gated["probe_mixup/probe"], plain["probe_mixup/probe"], rtol=0, atol=0)


def test_label_images_is_the_steps_pseudo_labelling_without_side_effects():
    model, x, y, xp, yp, _ = make_problem("cnn", batch=12)
    labeler = iegkit.ConsistencyPseudoLabeler(lambda images, generator=None: images.flip(-1))
    buffers = copy.deepcopy(dict(model.named_buffers()))
    model.eval()
    got = labeler.label_images(model, x)
    assert not model.training  # the mode is restored
    for name, value in model.named_buffers():
        assert torch.equal(value, buffers[name]), name
    # the reference: each view on batch statistics, in a copy of the model
    twin = copy.deepcopy(model).train()
    want = labeler.pseudo_labels(copy.deepcopy(twin)(x), copy.deepcopy(twin)(x.flip(-1)))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_state_round_trips():
    holdout_y = torch.arange(8) % 4
    pipeline, gate, _, batch = _compose(FixedLabeler([holdout_y, holdout_y]), holdout_y)
    pipeline(*batch, step=0)
    state = copy.deepcopy(gate.state_dict())
    twin = iegkit.TrustedGate(torch.zeros(8, 3), holdout_y)
    twin.load_state_dict(state)
    assert twin.accuracy == gate.accuracy == 1.0 and twin.num_classes == 4
    assert set(state) == {"accuracy", "num_classes"}  # its generator is the pipeline's
    with pytest.raises(ValueError, match="unexpected keys"):
        twin.load_state_dict({"generator": gate.accuracy})  # the state before the generator moved
    with pytest.raises(ValueError, match="unexpected keys"):
        twin.load_state_dict({"nope": 1})


@pytest.mark.parametrize("args,kwargs,match", [
        ((torch.zeros(0, 3), torch.zeros(0).long()), {}, "holdout_inputs"),
    ((torch.zeros(4, 3), torch.zeros(4)), {}, "holdout_labels"),
    ((torch.zeros(4, 3), torch.zeros(3).long()), {}, "holdout_labels"),
    ((torch.zeros(4, 3), -torch.ones(4).long()), {}, "holdout_labels"),
    ((torch.zeros(4, 3), torch.zeros(4).long()), {"margin": 0.0}, "margin"),
    ((torch.zeros(4, 3), torch.zeros(4).long()), {"every": 0}, "every"),
    ((torch.zeros(4, 3), torch.zeros(4).long()), {"momentum": 1.0}, "momentum"),
])
def test_rejects_bad_arguments(args, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        iegkit.TrustedGate(*args, **kwargs)


def test_labels_beyond_the_pseudo_labels_classes_are_named():
    holdout_y = torch.tensor([0, 1, 2, 7])
    pipeline, _, _, batch = _compose(FixedLabeler([torch.zeros(4).long()]), holdout_y)
    with pytest.raises(ValueError, match=r"holdout_labels: expected values in \[0, 3\]"):
        pipeline(*batch, step=0)


def test_robust_ieg_with_a_holdout_composes_the_gate():
    model, x, y, xp, yp, _ = make_problem("cnn", batch=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    holdout = (xp[:6].clone(), yp[:6].clone())
    pipeline = iegkit.recipes.robust_ieg(model, opt, total_steps=10,
                                         strong_augment=lambda im, generator=None: im.flip(-1),
                                         trusted_holdout=holdout)
    assert any(isinstance(p, iegkit.TrustedGate) for p in pipeline.parts)
    out = pipeline(x, y, xp, yp, step=0)
    assert keys.UNLABELED_GATE in out.values
    with pytest.raises(TypeError, match="trusted_holdout"):
        iegkit.recipes.robust_ieg(model, opt, total_steps=10, trusted_holdout=[xp, yp])
    pipeline.close()


def test_an_unbound_labeler_with_a_teacher_refuses_to_label():
    """Before bind() there is no teacher: labelling with the student instead would be silent."""
    model, x, *_ = make_problem("cnn", batch=4)
    labeler = iegkit.ConsistencyPseudoLabeler(lambda images, generator=None: images,
                                              teacher_decay=0.9)
    with pytest.raises(RuntimeError, match=r"bind\(model, optimizer\) first"):
        labeler.label_images(model, x)


def _exactly(message):
    return "^" + re.escape(message) + "$"


@pytest.mark.parametrize("args,error,message", [
    ((iegkit.ConsistencyPseudoLabeler(lambda x, generator=None: x), torch.zeros(4).long()),
     TypeError, "holdout_inputs: expected a tensor; TrustedGate no longer takes the pseudo "
     "labeler: it reads keys.IMAGE_LABELER, which ConsistencyPseudoLabeler provides"),
    ((torch.zeros(0, 3), torch.zeros(0).long()), ValueError,
     "holdout_inputs: expected a non-empty tensor (N, ...)"),
    # a non-tensor that is no labeler is a TypeError naming the argument
    (([[0.0, 1.0]] * 4, torch.zeros(4).long()), TypeError,
     "holdout_inputs: expected a tensor, got list"),
    ((torch.zeros(4, 2), [0, 1, 0, 1]), TypeError, "holdout_labels: expected a tensor, got list"),
    ((torch.tensor(1.0), torch.zeros(1).long()), ValueError,
     "holdout_inputs: expected a non-empty tensor (N, ...)"),
    ((torch.zeros(4, 3), torch.zeros(3).long()), ValueError,
     "holdout_labels: expected integer class indices of shape (4,), got (3,) torch.int64"),
    ((torch.zeros(4, 3), torch.zeros(4)), ValueError,
     "holdout_labels: expected integer class indices of shape (4,), got (4,) torch.float32"),
])
def test_errors_name_the_argument_exactly(args, error, message):
    with pytest.raises(error, match=_exactly(message)):
        iegkit.TrustedGate(*args)


def test_margin_and_momentum_bounds():
    assert trusted_gate(1.0, 4, 0.75) == 1.0  # margin 1 - 1/C is allowed
    labels = torch.zeros(4).long()
    with pytest.raises(ValueError, match="margin"):
        iegkit.TrustedGate(torch.zeros(4, 3), labels, margin=1.0)
    assert iegkit.TrustedGate(torch.zeros(4, 3), labels, momentum=0.0).momentum == 0.0


def test_defaults_measure_every_ten_steps():
    holdout_y = torch.arange(8) % 4
    labeler = FixedLabeler([holdout_y] * 3)
    pipeline, gate, _, batch = _compose(labeler, holdout_y)
    assert gate.num_classes is None and gate.accuracy is None
    for step in range(12):
        out = pipeline(*batch, step=step)
        assert ("trusted_gate/holdout_accuracy" in out.metrics) == (step % 10 == 0)
        assert float(out.metrics["trusted_gate/gate"]) == 1.0
    assert labeler.calls == [8, 8]


def test_gate_is_closed_until_the_first_measurement_of_a_resumed_run():
    """A state saved before any measurement (accuracy None) keeps the gate closed on a step that
    does not measure."""
    holdout_y = torch.arange(8) % 4
    pipeline, gate, log, batch = _compose(FixedLabeler([]), holdout_y, every=5)
    gate.load_state_dict({"accuracy": None, "num_classes": None})
    assert gate.accuracy is None and gate.num_classes is None
    pipeline(*batch, step=1)
    assert log == [0.0]
    gate.load_state_dict({"accuracy": 0.9, "num_classes": None})
    pipeline(*batch, step=2)
    assert log == [0.0, 0.0]


def test_a_label_equal_to_the_number_of_classes_is_refused():
    pipeline, _, _, batch = _compose(FixedLabeler([torch.zeros(4).long()]), torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match=r"holdout_labels: expected values in \[0, 3\]"):
        pipeline(*batch, step=0)


def test_the_real_labeler_labels_the_holdout_with_the_model_and_the_gates_generator():
    model, x, y, xp, yp, _ = make_problem("cnn", batch=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def noise(images, generator=None):
        return images + torch.randn(images.shape, generator=generator, dtype=images.dtype)

    labeler = iegkit.ConsistencyPseudoLabeler(noise)
    holdout_x, holdout_y = x.float(), y  # float32 fold for a float64 model: cast by the gate
    gate = iegkit.TrustedGate(holdout_x, holdout_y)
    pipeline = iegkit.compose(labeler, gate, iegkit.KLConsistency(), model=model, optimizer=opt,
                              seed=3)
    twin = copy.deepcopy(model)
    gates_generator = torch.Generator()
    gates_generator.set_state(pipeline.generators["trusted_gate"].get_state())
    out = pipeline(x, y, xp, yp, step=0)
    want = labeler.label_images(twin, x, gates_generator).argmax(-1)
    assert float(out.metrics["trusted_gate/holdout_accuracy"]) == pytest.approx(
        float((want == y).double().mean()), rel=1e-6)


def test_the_default_margin_is_a_tenth():
    assert trusted_gate(0.35, 4) == pytest.approx(1.0)  # 0.25 + 0.1 opens it fully
    assert trusted_gate(0.30, 4) == pytest.approx(0.5)
