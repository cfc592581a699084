"""Resuming from a checkpoint reproduces an uninterrupted run bit for bit (CPU)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TinyCNN, assert_same

import iegkit
from iegkit import recipes
from iegkit.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def noise_augment(images, generator=None):
    return images + 0.1 * torch.randn(images.shape, generator=generator, dtype=images.dtype)


def make_run(seed=0, *, classes=3, recipe="ieg"):
    torch.manual_seed(seed)
    model = TinyCNN(classes).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    if recipe == "ieg":
        pipeline = recipes.ieg(model, optimizer, strong_augment=noise_augment,
                               first_cycle_steps=3, rampup_steps=4)
    else:
        pipeline = recipes.l2r(model, optimizer)
    data_gen = torch.Generator().manual_seed(123)
    return model, optimizer, pipeline, data_gen


def run_steps(model, optimizer, pipeline, data_gen, start, stop):
    for step in range(start, stop):
        x = torch.randn(8, 1, 8, 8, generator=data_gen, dtype=torch.float64)
        y = torch.randint(0, 3, (8,), generator=data_gen)
        xp = torch.randn(6, 1, 8, 8, generator=data_gen, dtype=torch.float64)
        yp = torch.randint(0, 3, (6,), generator=data_gen)
        out = pipeline(x, y, xp, yp, step=step)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        # global RNG in the loop too, so that its restore is tested
        torch.rand(1)


def test_resume_is_bit_for_bit(tmp_path):
    model, optimizer, pipeline, data_gen = make_run()
    run_steps(model, optimizer, pipeline, data_gen, 0, 6)
    uninterrupted = [p.detach().clone() for p in model.parameters()]

    model, optimizer, pipeline, data_gen = make_run()
    run_steps(model, optimizer, pipeline, data_gen, 0, 4)
    save_checkpoint(tmp_path / "ckpt.pt", model=model, optimizer=optimizer, pipeline=pipeline,
                    step=4, generators={"data": data_gen})
    run_steps(model, optimizer, pipeline, data_gen, 4, 5)  # diverge, then come back

    model, optimizer, pipeline, data_gen = make_run(seed=99)  # a fresh, different start
    restored = load_checkpoint(tmp_path / "ckpt.pt", model=model, optimizer=optimizer,
                               pipeline=pipeline, generators={"data": data_gen})
    assert restored["step"] == 4
    run_steps(model, optimizer, pipeline, data_gen, 4, 6)
    for a, b in zip(model.parameters(), uninterrupted):
        assert torch.equal(a.detach(), b)
    schedule = next(p for p in pipeline.parts if p.name == "sgdr_schedule")
    assert optimizer.param_groups[0]["lr"] == pytest.approx(schedule.lrs_at(5)[0], rel=0, abs=1e-15)


def test_bad_checkpoints_are_clear_errors(tmp_path):
    model, optimizer, pipeline, _ = make_run()
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        load_checkpoint(tmp_path / "missing.pt", model=model, optimizer=optimizer,
                        pipeline=pipeline)
    save_checkpoint(tmp_path / "c.pt", model=model, optimizer=optimizer, pipeline=pipeline, step=0)
    state = torch.load(tmp_path / "c.pt", weights_only=False)
    state["format_version"] = 42
    torch.save(state, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="format_version"):
        load_checkpoint(tmp_path / "c.pt", model=model, optimizer=optimizer, pipeline=pipeline)


def test_loading_refuses_pickled_code(tmp_path):
    """A checkpoint from an untrusted run folder must not run code when loaded (weights_only)."""
    import pickle

    import iegkit

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pipeline = iegkit.compose(iegkit.CrossEntropy(), model=model, optimizer=optimizer)
    state = {"format_version": 1, "step": 0, "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "pipeline": pipeline.state_dict(),
             "torch_rng": torch.get_rng_state(), "generators": {}, "extra": {"x": Evil()}}
    torch.save(state, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(tmp_path / "evil.pt", model=model, optimizer=optimizer, pipeline=pipeline)


class Evil:
    def __reduce__(self):
        return (print, ("this would have run",))


def everything(model, optimizer, pipeline, generators=None):
    """Every tensor a load may write, copied, to compare bit for bit."""
    return copy.deepcopy({
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "pipeline": pipeline.state_dict(), "torch_rng": torch.get_rng_state(),
        "generators": {n: g.get_state() for n, g in (generators or {}).items()},
        "lr": [group["lr"] for group in optimizer.param_groups],
    })


def stepped_run(**kwargs):
    """A run two steps in, so the optimizer has momentum and the schedule has moved."""
    model, optimizer, pipeline, data_gen = make_run(**kwargs)
    run_steps(model, optimizer, pipeline, data_gen, 0, 2)
    return model, optimizer, pipeline, data_gen


def assert_refused_and_unchanged(path, match, target, *, generators=None, error=CheckpointError):
    model, optimizer, pipeline, data_gen = target
    generators = {"data": data_gen} if generators is None else generators
    before = everything(model, optimizer, pipeline, generators)
    with pytest.raises(error, match=match) as raised:
        load_checkpoint(path, model=model, optimizer=optimizer, pipeline=pipeline,
                        generators=generators)
    assert str(path) in str(raised.value)
    assert_same(before, everything(model, optimizer, pipeline, generators))


@pytest.fixture
def saved(tmp_path):
    """A checkpoint of a run three steps in (another seed than the run it is loaded into)."""
    model, optimizer, pipeline, data_gen = stepped_run(seed=5)
    run_steps(model, optimizer, pipeline, data_gen, 2, 3)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model=model, optimizer=optimizer, pipeline=pipeline, step=3,
                    generators={"data": data_gen})
    return path


@pytest.mark.parametrize("damage", ["empty", "truncated", "cut short", "text", "a tensor",
                                    "a dict"])
def test_a_corrupt_file_is_named_and_changes_nothing(saved, damage):
    data = saved.read_bytes()
    if damage == "empty":
        saved.write_bytes(b"")
    elif damage == "truncated":
        saved.write_bytes(data[: len(data) // 2])  # torch: OSError [Errno 22]
    elif damage == "cut short":
        saved.write_bytes(data[:-10])  # torch: RuntimeError from the zip reader
    elif damage == "text":
        saved.write_text("step=3, lr=0.1")
    elif damage == "a tensor":
        torch.save(torch.zeros(3), saved)
    else:
        torch.save({"model": {}}, saved)
    match = "corrupt or not a checkpoint" if damage in ("empty", "truncated", "cut short",
                                                        "text") else "not an iegkit checkpoint"
    assert_refused_and_unchanged(saved, match, stepped_run())


def damaged(path, edit):
    state = torch.load(path, weights_only=False)
    edit(state)
    torch.save(state, path)
    return path


def split_groups(state):
    group = state["optimizer"]["param_groups"][0]
    state["optimizer"]["param_groups"] = [{**group, "params": group["params"][:4]},
                                          {**group, "params": group["params"][4:]}]


DAMAGE = {
    "format_version": (lambda s: s.update(format_version=42), "format_version 42 is not supported"),
    "a model tensor missing": (lambda s: s["model"].pop("net.4.running_var"),
                               r"model tensors differ: the model's \['net.4.running_var'\]"),
    "optimizer groups": (split_groups, "the optimizer has 2 parameter groups saved, 1 now"),
    "optimizer group size": (
        lambda s: s["optimizer"]["param_groups"][0]["params"].pop(),
        "optimizer parameter group 0 holds 9 parameters saved, 10 now"),
    "optimizer state shape": (
        lambda s: s["optimizer"]["state"][0].update(momentum_buffer=torch.zeros(7)),
        r"optimizer state 'momentum_buffer' of 'net.0.weight' has shape \(7,\), the "
        r"parameter's is \(4, 1, 3, 3\)"),
    "a part's state": (lambda s: s["pipeline"]["parts"]["pseudo_labeler"].update(bogus=1),
                       "part 'pseudo_labeler' refuses its saved state: state: unexpected keys"),
    "a part's generator": (
        lambda s: s["pipeline"]["generators"].update(meta_relabeler=torch.zeros(3).byte()),
        "the generator of part 'meta_relabeler': the saved state does not fit"),
    "the pipeline's format": (lambda s: s["pipeline"].update(format_version=0),
                              "its pipeline state has format_version 0, expected 1"),
    "torch_rng": (lambda s: s.update(torch_rng=torch.zeros(3, dtype=torch.uint8)),
                  "torch_rng: the saved state does not fit"),
    "step": (lambda s: s.update(step="3"), "step is a str, expected an int"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_checkpoint_that_does_not_fit_is_refused_before_anything_is_written(saved, case):
    edit, match = DAMAGE[case]
    assert_refused_and_unchanged(damaged(saved, edit), match, stepped_run())


def test_a_checkpoint_of_another_recipe_changes_neither_model_nor_optimizer(saved):
    """It used to overwrite the model and optimizer, then raise 'parts differ'."""
    assert_refused_and_unchanged(saved, r"saved by a pipeline of parts \['kl_consistency'",
                                 stepped_run(recipe="l2r"))


def test_a_checkpoint_of_a_10_class_model_into_a_3_class_one_changes_nothing(tmp_path):
    """It used to load every tensor but the head, then raise."""
    model, optimizer, pipeline, data_gen = stepped_run(classes=10)
    path = save_checkpoint(tmp_path / "ten.pt", model=model, optimizer=optimizer,
                           pipeline=pipeline, step=2, generators={"data": data_gen})
    assert_refused_and_unchanged(
        path, r"model tensor 'net.7.weight' has shape \(10, 16\), the model's is \(3, 16\)",
        stepped_run(classes=3))


def test_a_generator_the_checkpoint_lacks_is_refused_before_anything_is_written(saved):
    target = stepped_run()
    generators = {"data": target[3], "augment": torch.Generator().manual_seed(1)}
    assert_refused_and_unchanged(saved, "no state for generator 'augment'", target,
                                 generators=generators)


class FailsOnItsSecondLoad(iegkit.PartBase):
    """Its state loads into the copy load_checkpoint checks first, then fails on the real part
    (a part whose load has a side effect the check cannot see)."""

    name = "fails_on_its_second_load"
    loads = 0  # on the class: the checked copy counts too

    def contribute(self, ctx):
        return iegkit.Contribution()

    def load_state_dict(self, state):
        type(self).loads += 1
        if type(self).loads == 2:
            raise RuntimeError("disk quota exceeded")


def test_a_write_that_fails_midway_is_undone(tmp_path):
    def run(seed):
        torch.manual_seed(seed)
        model = TinyCNN().double()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        pipeline = iegkit.compose(iegkit.CrossEntropy(), FailsOnItsSecondLoad(), model=model,
                                  optimizer=optimizer, seed=seed)
        data_gen = torch.Generator().manual_seed(seed)
        run_steps(model, optimizer, pipeline, data_gen, 0, 2)
        return model, optimizer, pipeline, data_gen

    model, optimizer, pipeline, data_gen = run(0)
    path = save_checkpoint(tmp_path / "c.pt", model=model, optimizer=optimizer, pipeline=pipeline,
                           step=2, generators={"data": data_gen})
    target = run(1)
    FailsOnItsSecondLoad.loads = 0
    # the model and the optimizer are written before the pipeline fails: both are restored
    assert_refused_and_unchanged(path, "loading failed midway .*disk quota exceeded.* restored",
                                 target)
    assert FailsOnItsSecondLoad.loads == 3  # the check, the failed write, the undo


def test_saving_inside_evaluation_weights_saves_the_training_weights(tmp_path):
    torch.manual_seed(0)
    model = TinyCNN().double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pipeline = iegkit.compose(iegkit.CrossEntropy(), ema := iegkit.WeightEMA(decay=0.9),
                              model=model, optimizer=optimizer)
    run_steps(model, optimizer, pipeline, torch.Generator().manual_seed(0), 0, 3)
    kwargs = {"model": model, "optimizer": optimizer, "pipeline": pipeline, "step": 3}
    outside = torch.load(save_checkpoint(tmp_path / "outside.pt", **kwargs), weights_only=True)
    with iegkit.evaluation_weights(pipeline):
        assert torch.equal(model.net[0].weight, ema.shadow["net.0.weight"])  # the average is in
        inside = torch.load(save_checkpoint(tmp_path / "inside.pt", **kwargs), weights_only=True)
        with ema.average_parameters():  # nested: still the training weights
            nested = torch.load(save_checkpoint(tmp_path / "nested.pt", **kwargs),
                                weights_only=True)
    assert not torch.equal(outside["model"]["net.0.weight"], ema.shadow["net.0.weight"])
    assert_same(outside["model"], inside["model"])
    assert_same(outside["model"], nested["model"])
    assert_same(outside["pipeline"], inside["pipeline"])  # the average is saved there


def test_loading_inside_evaluation_weights_is_refused(tmp_path):
    """The end of the block would overwrite the loaded weights with the ones before the load."""
    torch.manual_seed(0)
    model = TinyCNN().double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pipeline = iegkit.compose(iegkit.CrossEntropy(), iegkit.WeightEMA(decay=0.9), model=model,
                              optimizer=optimizer)
    run_steps(model, optimizer, pipeline, torch.Generator().manual_seed(0), 0, 2)
    path = save_checkpoint(tmp_path / "c.pt", model=model, optimizer=optimizer,
                           pipeline=pipeline, step=2)
    with iegkit.evaluation_weights(pipeline):
        assert_refused_and_unchanged(path, "inside evaluation_weights", (model, optimizer,
                                     pipeline, None), generators={}, error=RuntimeError)
