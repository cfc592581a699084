"""Resuming from a checkpoint reproduces an uninterrupted run bit for bit (CPU)."""

from __future__ import annotations

import pytest
import torch
from conftest import TinyCNN

from iegkit import recipes
from iegkit.checkpoint import load_checkpoint, save_checkpoint


def noise_augment(images, generator=None):
    return images + 0.1 * torch.randn(images.shape, generator=generator, dtype=images.dtype)


def make_run(seed=0):
    torch.manual_seed(seed)
    model = TinyCNN().double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    pipeline = recipes.ieg(model, optimizer, strong_augment=noise_augment,
                           first_cycle_steps=3, rampup_steps=4)
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
