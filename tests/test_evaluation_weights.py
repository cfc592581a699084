"""iegkit.evaluation_weights: the weights a pipeline's averages say to evaluate (the official code
evaluates an EMA of the weights), and the benchmark's evaluation EMA as robust IEG's teacher."""

from __future__ import annotations

import pytest
import torch
from conftest import flip, tiny_noisy_digits, weak

import iegkit
from iegkit import recipes
from iegkit.data import NoisyDataset
from iegkit.models import SmallCNN
from iegkit.training import accuracy, fit


@pytest.fixture(scope="module")
def data() -> NoisyDataset:
    return tiny_noisy_digits()


def make(method, **options):
    torch.manual_seed(0)
    model = SmallCNN(1, 10, width=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    pipeline = recipes.build(method, model, optimizer, total_steps=9, strong_augment=flip,
                             seed=0, **options)
    return model, optimizer, pipeline


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("method", ["robust_ieg", "robust_eg"])
def test_robust_recipes_evaluate_their_teacher_which_a_separate_ema_reproduces(data, method):
    model, optimizer, pipeline = make(method)
    # the benchmark's evaluation EMA, updated in fit's on_step at the same decay as the teacher
    separate = iegkit.WeightEMA(model, 0.99)
    fit(pipeline, model, optimizer, data, epochs=2, batch_size=20, weak_augment=weak,
        on_step=lambda step, idx, out: separate.update(step), progress=False)
    teacher = next(p.teacher for p in pipeline.parts if getattr(p, "teacher", None) is not None)
    assert teacher.decay == 0.99
    for name, value in teacher.shadow.items():
        assert torch.equal(separate.shadow[name], value), name  # bit for bit: the same average

    trained = params(model)
    assert any(not torch.equal(trained[n], v) for n, v in teacher.shadow.items())
    with iegkit.evaluation_weights(pipeline) as average:
        assert average is teacher
        for name, p in model.named_parameters():
            assert torch.equal(p, teacher.shadow[name])
        averaged_accuracy = accuracy(model, data.test_inputs, data.test_labels)
    for name, p in model.named_parameters():  # restored after the block
        assert torch.equal(p, trained[name])
    with separate.average_parameters():
        assert accuracy(model, data.test_inputs, data.test_labels) == averaged_accuracy


def test_without_an_average_the_trained_weights_are_evaluated(data):
    model, optimizer, pipeline = make("ieg")  # the official recipe: no teacher, no WeightEMA part
    fit(pipeline, model, optimizer, data, epochs=1, batch_size=20, weak_augment=weak,
        progress=False)
    trained = params(model)
    with iegkit.evaluation_weights(pipeline) as average:
        assert average is None
        assert all(torch.equal(p, trained[n]) for n, p in model.named_parameters())


def test_a_weight_ema_part_comes_before_the_teacher_and_two_are_refused():
    torch.manual_seed(0)
    model = SmallCNN(1, 10, width=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    labeler = iegkit.ConsistencyPseudoLabeler(flip, teacher_decay=0.9)
    ema = iegkit.WeightEMA(decay=0.5)
    pipeline = iegkit.compose(labeler, iegkit.ProbeMixUp(5.0), ema, model=model,
                              optimizer=optimizer)
    for shadow in (ema.shadow, labeler.teacher.shadow):  # tell the two averages apart
        for value in shadow.values():
            value.normal_()
    with iegkit.evaluation_weights(pipeline) as average:
        assert average is ema
        assert all(torch.equal(p, ema.shadow[n]) for n, p in model.named_parameters())

    pipeline = iegkit.compose(iegkit.CrossEntropy(), iegkit.WeightEMA(name="a"),
                              iegkit.WeightEMA(name="b"), model=model, optimizer=optimizer)
    with pytest.raises(ValueError, match="pipeline: 2 WeightEMA parts \\(a, b\\)"):
        with iegkit.evaluation_weights(pipeline):
            pass
    with pytest.raises(TypeError, match="^pipeline: expected a composed Pipeline, got SmallCNN$"):
        with iegkit.evaluation_weights(model):
            pass


# mutation testing (docs/mutation.md): WeightEMA's defaults, bounds, messages and loading


def linear():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2)).double()


def test_the_default_decay_caps_the_warm_up_at_0_999():
    assert iegkit.ema.ema_decay(10**6) == 0.999 == iegkit.WeightEMA().decay


def test_an_unbound_average_names_itself_and_saves_an_empty_state():
    ema = iegkit.WeightEMA(decay=0.5)
    assert ema.state_dict() == {"decay": 0.5, "shadow": {}}
    message = "'weight_ema': no model; pass one or bind the pipeline first"
    with pytest.raises(RuntimeError, match=f"^{message}$"):
        ema.update(0)


def test_decay_0_is_no_averaging_and_decay_1_is_refused():
    model = linear()
    ema = iegkit.WeightEMA(model, decay=0.0)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(100)
    assert all(torch.equal(ema.shadow[n], p) for n, p in model.named_parameters())
    with pytest.raises(ValueError, match=r"^decay: expected a value in \[0, 1\), got 1.0$"):
        iegkit.WeightEMA(model, decay=1.0)


def test_a_loaded_average_takes_its_parameters_dtype_and_bad_ones_say_what_to_load():
    model = linear()
    model[0].bias.requires_grad_(False)  # not averaged now: the load adds it
    ema = iegkit.WeightEMA(model, decay=0.5)
    saved = {n: torch.randn_like(p, dtype=torch.float32) for n, p in model.named_parameters()}
    ema.load_state_dict({"decay": 0.5, "shadow": saved})
    for name, p in model.named_parameters():
        assert ema.shadow[name].dtype == p.dtype, name
        assert torch.equal(ema.shadow[name], saved[name].double()), name
    with pytest.raises(ValueError, match=r"^state: the saved EMA's shapes differ from the model's "
                                         r"for \['0.bias'\]; load a state saved from this model$"):
        ema.load_state_dict({"decay": 0.5, "shadow": {"0.bias": torch.zeros(3)}})
