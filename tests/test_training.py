"""iegkit.training: the one loop of the demo, the CLI and the benchmarks (tiny digits runs)."""

from __future__ import annotations

import pytest
import torch
from conftest import flip, tiny_noisy_digits, weak

from iegkit import recipes
from iegkit.data import NoisyDataset
from iegkit.models import SmallCNN
from iegkit.parts import SGDRSchedule
from iegkit.training import accuracy, fit, train


@pytest.fixture(scope="module")
def data() -> NoisyDataset:
    return tiny_noisy_digits()


def make(method, init_seed=0, **options):
    torch.manual_seed(init_seed)
    model = SmallCNN(1, 10, width=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    pipeline = recipes.build(method, model, optimizer, total_steps=9, strong_augment=flip,
                             seed=0, **options)
    return model, optimizer, pipeline


@pytest.mark.parametrize("method", ["plain", "l2r"])
def test_one_epoch_of_digits(data, method):
    result = train(method, data, epochs=1, batch_size=20, width=4, progress=False)
    assert result.steps == 3 and len(result.history) == 1
    entry = result.final
    assert entry["epoch"] == 1 and entry["step"] == 3 and torch.isfinite(torch.tensor(entry["loss"]))
    assert 0.0 <= entry["test_accuracy"] <= 1.0
    assert entry["test_accuracy"] == accuracy(result.model, data.test_inputs, data.test_labels)


def test_lr_warmup_scales_fits_scheduler_and_does_not_replace_it(data):
    """LRWarmup provides "lr" (for the meta parts' order) but is no schedule: fit keeps its cosine,
    and each step runs at cosine(step) * linear_warmup(step)."""
    import math

    from iegkit.functional.schedule import linear_warmup
    from iegkit.parts import LRWarmup

    model, optimizer, pipeline = make("robust_eg", warmup_fraction=0.5)  # 9 steps: warm-up 4
    assert [p.warmup_steps for p in pipeline.parts if isinstance(p, LRWarmup)] == [4]
    seen = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(opt.param_groups[0]["lr"]))
    result = fit(pipeline, model, optimizer, data, epochs=3, batch_size=20, weak_augment=weak,
                 progress=False)
    assert isinstance(result.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert seen == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * s / 9)) * linear_warmup(s, 4)
                                  for s in range(9)])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0)


def test_evaluate_average_evaluates_the_pipelines_weight_average(data):
    from iegkit import evaluation_weights

    @torch.no_grad()
    def evaluate(m):  # a value that tells any two sets of weights apart
        m.eval()
        value = float(m(data.test_inputs).double().mean())
        m.train()
        return {"mean_logit": value}

    model, optimizer, pipeline = make("robust_ieg")
    result = fit(pipeline, model, optimizer, data, epochs=1, batch_size=20, weak_augment=weak,
                 evaluate=evaluate, evaluate_average=True, progress=False)
    trained = result.final["mean_logit"]
    with evaluation_weights(pipeline):
        assert result.final["average_mean_logit"] == evaluate(model)["mean_logit"]
    assert result.final["average_mean_logit"] != trained
    assert evaluate(model)["mean_logit"] == trained  # the trained weights are back
    model, optimizer, pipeline = make("plain")  # keeps no average: nothing is added
    result = fit(pipeline, model, optimizer, data, epochs=1, batch_size=20, weak_augment=weak,
                 evaluate=evaluate, evaluate_average=True, progress=False)
    assert not any(k.startswith("average_") for k in result.final)


def test_a_scheduler_is_used_iff_no_part_provides_lr(data):
    model, optimizer, pipeline = make("plain")
    assert "lr" not in pipeline.provides
    result = fit(pipeline, model, optimizer, data, epochs=2, batch_size=20, weak_augment=weak,
                 progress=False)
    assert isinstance(result.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert result.scheduler.T_max == 6 and optimizer.param_groups[0]["lr"] == pytest.approx(0.0)

    model, optimizer, pipeline = make("l2r", first_cycle_steps=2)
    assert "lr" in pipeline.provides
    result = fit(pipeline, model, optimizer, data, epochs=2, batch_size=20, weak_augment=weak,
                 progress=False)
    assert result.scheduler is None
    schedule = next(p for p in pipeline.parts if isinstance(p, SGDRSchedule))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(schedule.lrs_at(5)[0])
    with pytest.raises(ValueError, match="already sets the lr"):
        fit(pipeline, model, optimizer, data, epochs=1, batch_size=20, weak_augment=weak,
            scheduler=lambda opt, total: SGDRSchedule(opt, 3), progress=False)

    model, optimizer, pipeline = make("plain")
    result = fit(pipeline, model, optimizer, data, epochs=1, batch_size=20, weak_augment=weak,
                 scheduler=lambda opt, total: SGDRSchedule(opt, 2), progress=False)
    assert isinstance(result.scheduler, SGDRSchedule) and result.scheduler.last_epoch == 3


def test_on_step_is_called_once_per_step_and_on_epoch_once_per_epoch(data):
    model, optimizer, pipeline = make("l2r")
    calls, epochs = [], []

    def on_step(step, idx, out):
        assert out.weights is not None and out.weights.shape == idx.shape == (20,)
        calls.append((step, idx.clone()))

    def on_epoch(entry):
        epochs.append(entry["epoch"])
        entry["extra"] = len(calls)

    result = fit(pipeline, model, optimizer, data, epochs=2, batch_size=20, weak_augment=weak,
                 on_step=on_step, on_epoch=on_epoch, progress=False)
    assert [s for s, _ in calls] == list(range(6)) and result.steps == 6
    first_epoch = torch.cat([idx for _, idx in calls[:3]])
    assert sorted(first_epoch.tolist()) == list(range(60))  # a permutation of the split
    assert epochs == [1, 2] and [h["extra"] for h in result.history] == [3, 6]


def test_max_steps_stops_inside_an_epoch_and_evaluates_it(data):
    model, optimizer, pipeline = make("plain")
    result = fit(pipeline, model, optimizer, data, epochs=3, batch_size=20, weak_augment=weak,
                 evaluate=lambda m: {"test_accuracy": 0.5}, evaluate_every_epoch=False,
                 max_steps=4, progress=False)
    assert result.steps == 4
    assert [(h["epoch"], h["step"]) for h in result.history] == [(1, 3), (2, 4)]
    assert "test_accuracy" not in result.history[0] and result.final["test_accuracy"] == 0.5


class Counter:
    def __init__(self):
        self.n = 0

    def __call__(self, step, idx, out):
        self.n += 1

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


@pytest.mark.parametrize("method", ["plain", "ieg"])
def test_resume_equals_an_uninterrupted_run(data, tmp_path, method):
    def run(path, init_seed=0, **kwargs):
        model, optimizer, pipeline = make(method, init_seed)
        counter = Counter()
        result = fit(pipeline, model, optimizer, data, epochs=3, batch_size=20, weak_augment=weak,
                     evaluate=lambda m: {"test_accuracy": accuracy(m, data.test_inputs,
                                                                   data.test_labels)},
                     on_step=counter, checkpoint=path, state={"counter": counter},
                     progress=False, **kwargs)
        return model, result, counter

    full_model, full, _ = run(tmp_path / "full.pt")
    _, first, _ = run(tmp_path / "split.pt", stop_after=1)
    assert first.steps == 3 and len(first.history) == 1
    model, resumed, counter = run(tmp_path / "split.pt", init_seed=99, resume=True)
    assert counter.n == 9 and resumed.steps == 9
    assert resumed.history == full.history
    for a, b in zip(model.parameters(), full_model.parameters()):
        assert torch.equal(a, b)


def test_resume_needs_a_checkpoint(data):
    model, optimizer, pipeline = make("plain")
    with pytest.raises(ValueError, match="resume"):
        fit(pipeline, model, optimizer, data, epochs=1, batch_size=20, weak_augment=weak,
            resume=True, progress=False)


def test_views_hook_passes_precomputed_views_to_the_pipeline(data):
    """``fit(views=...)``: called before each step with (step, dataset indices); its strong view
    replaces the part's own (never called) and equals computing the same view inside the step."""

    def identity(images, generator=None):
        return images

    def never(images, generator=None):
        raise AssertionError("the strong view was computed inside the step")

    cache = data.train_inputs.flip(-1)  # flip(weak) == flip(inputs) with the identity weak view
    calls = []

    def views(step, idx):
        calls.append((step, idx.clone()))
        return {"strong": cache[idx]}

    def run(strong, **kwargs):
        torch.manual_seed(0)
        model = SmallCNN(1, 10, width=4)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        pipeline = recipes.build("robust_ieg", model, optimizer, total_steps=6, strong_augment=strong,
                                 probe_diagnostics_every=None)
        seen = []
        result = fit(pipeline, model, optimizer, data, epochs=2, batch_size=20,
                     weak_augment=identity, on_step=lambda s, idx, out: seen.append(idx.clone()),
                     progress=False, **kwargs)
        return result, seen, model

    hooked, seen, hooked_model = run(never, views=views)
    assert [s for s, _ in calls] == list(range(6))
    assert all(torch.equal(a, b) for (_, a), b in zip(calls, seen))
    inside, _, inside_model = run(flip)
    assert [h["loss"] for h in hooked.history] == [h["loss"] for h in inside.history]
    for a, b in zip(hooked_model.parameters(), inside_model.parameters()):
        assert torch.equal(a, b)

    model, optimizer, pipeline = make("plain")  # no part declares a strong view
    with pytest.raises(ValueError, match="no part declares a view named 'strong'"):
        fit(pipeline, model, optimizer, data, epochs=1, batch_size=20, weak_augment=weak,
            views=views, progress=False)


def test_fit_refuses_float16_autocast_and_data_moves_whole():
    from iegkit import recipes
    from iegkit.data import make_noisy_digits
    from iegkit.models import SmallCNN
    from iegkit.training import default_augmentations, fit

    data = make_noisy_digits(0.4, seed=0)
    moved = data.to("cpu")
    assert moved.num_classes == data.num_classes and moved.train_labels.dtype == data.train_labels.dtype
    assert torch.equal(moved.train_inputs, data.train_inputs)
    model = SmallCNN(1, 10, width=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pipeline = recipes.build("plain", model, optimizer, total_steps=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="autocast: expected None or torch.bfloat16"):
        fit(pipeline, model, optimizer, data, epochs=1, batch_size=16,
            weak_augment=default_augmentations(1, 8)[0], autocast=torch.float16, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
