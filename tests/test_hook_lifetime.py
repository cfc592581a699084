"""The optimizer hooks follow use (issue 24): a ``with pipeline:`` block per epoch, ``close()`` and
a call after it, an optimizer replaced mid-run (detected, and ``bind(model, new_optimizer)``), and a
layer unfrozen after bind (the EMA averages it from then on)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import flip, make_problem

import iegkit
from iegkit import recipes


def teacher_pipeline(model, optimizer, *parts):
    labeler = iegkit.ConsistencyPseudoLabeler(flip, teacher_decay=0.9)
    pipeline = iegkit.compose(iegkit.CrossEntropy(), labeler, iegkit.KLConsistency(1.0), *parts,
                              model=model, optimizer=optimizer)
    return pipeline, labeler


def train_step(pipeline, optimizer, batch, step):
    x, y, xp, yp = batch
    out = pipeline(x, y, xp, yp, step=step)
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    return out


def snapshot(tensors):
    return {name: value.detach().clone() for name, value in tensors.items()}


def moved(before, after):
    return any(not torch.equal(before[name], after[name]) for name in before)


def problem(batch=8):
    model, x, y, xp, yp, _ = make_problem("mlp", batch=batch)
    return model, (x, y, xp, yp)


# --- 1. hook lifetime ---------------------------------------------------------------------------


def test_the_teacher_moves_in_every_with_block():
    """The review's loop: ``with pipeline:`` once per epoch. The second block's steps update the
    teacher (and so ``evaluation_weights``) as the first block's do."""
    model, batch = problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pipeline, labeler = teacher_pipeline(model, optimizer)
    step = 0
    for _epoch in range(2):
        with pipeline:
            before = snapshot(labeler.teacher.shadow)
            for _ in range(2):
                train_step(pipeline, optimizer, batch, step)
                step += 1
            assert moved(before, labeler.teacher.shadow)
    with iegkit.evaluation_weights(pipeline) as average:
        assert average is labeler.teacher


def test_the_teacher_is_updated_once_per_step_however_often_the_hooks_are_registered():
    """Re-entering ``with`` (nested too) and every call register the hooks only if they are not:
    the teacher is exactly an EMA updated once per optimizer.step()."""
    model, batch = problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pipeline, labeler = teacher_pipeline(model, optimizer)
    reference = iegkit.WeightEMA(copy.deepcopy(model), decay=0.9)
    for step in range(4):
        with pipeline, pipeline:
            train_step(pipeline, optimizer, batch, step)
        reference.model.load_state_dict(model.state_dict())
        reference.update(step)
        for name, value in reference.shadow.items():
            assert torch.equal(labeler.teacher.shadow[name], value), (step, name)


def test_close_removes_the_hooks_now_and_a_call_or_a_with_block_registers_them_again():
    model, batch = problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pipeline, labeler = teacher_pipeline(model, optimizer)
    train_step(pipeline, optimizer, batch, 0)
    pipeline.close()
    before = snapshot(labeler.teacher.shadow)
    optimizer.step()  # closed: no after-step work
    assert not moved(before, labeler.teacher.shadow)

    train_step(pipeline, optimizer, batch, 1)  # the call registers the hook again
    assert moved(before, labeler.teacher.shadow)

    pipeline.close()
    with pipeline:  # so does a with block, before any call
        before = snapshot(labeler.teacher.shadow)
        optimizer.step()
        assert moved(before, labeler.teacher.shadow)


def test_the_step_pre_hook_comes_back_too():
    """LRWarmup scales the lr inside optimizer.step() from the pre-hook: in a second ``with`` block
    the step still runs at the warmed-up lr (plain SGD: the update is lr * factor * grad)."""
    model, (x, y, _, _) = problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pipeline = iegkit.compose(iegkit.CrossEntropy(), iegkit.LRWarmup(4), model=model,
                              optimizer=optimizer)
    with pipeline:
        out = pipeline(x, y, step=0)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    with pipeline:
        out = pipeline(x, y, step=1)  # factor (1 + 1) / 4
        optimizer.zero_grad()
        out.loss.backward()
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.step()
    for p, old in zip(model.parameters(), before, strict=True):
        torch.testing.assert_close(p.detach(), old - 0.1 * 0.5 * p.grad, rtol=0, atol=1e-15)
    assert optimizer.param_groups[0]["lr"] == 0.1


# --- 2. a replaced optimizer --------------------------------------------------------------------


def test_a_replaced_optimizer_is_refused_at_the_next_call_before_anything_changes():
    """The fine-tuning pattern: a new optimizer, not bound. The step after the swap is taken; at
    the next call another optimizer has stepped the parameters and the bound one has not:
    refused, naming the fix, with the model and the teacher as they were."""
    model, batch = problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pipeline, labeler = teacher_pipeline(model, optimizer)
    for step in range(2):
        train_step(pipeline, optimizer, batch, step)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    train_step(pipeline, optimizer, batch, 2)
    state = snapshot(model.state_dict())
    teacher = snapshot(labeler.teacher.shadow)
    with pytest.raises(RuntimeError, match=r"pipeline\.bind\(model, new_optimizer\)"):
        pipeline(*batch, step=3)
    assert not moved(state, model.state_dict())
    assert not moved(teacher, labeler.teacher.shadow)


@pytest.mark.parametrize("fused", [False, True])
def test_the_swap_is_detected_without_a_look_ahead_and_with_a_fused_optimizer(fused):
    """Plain cross-entropy (nothing to accumulate wrongly), gradients zeroed before the call, and a
    fused optimizer (which bumps no parameter version): still the replaced optimizer's error."""
    model, (x, y, _, _) = problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pipeline = recipes.plain(model, optimizer)
    replacement = torch.optim.Adam(model.parameters(), lr=0.01, fused=fused)
    replacement.zero_grad()
    pipeline(x, y, step=0).loss.backward()
    replacement.step()
    replacement.zero_grad()
    with pytest.raises(RuntimeError, match="another optimizer stepped"):
        pipeline(x, y, step=1)


def test_a_second_optimizer_over_other_parameters_is_no_replacement():
    """A GAN-like loop: another optimizer steps parameters the bound one does not hold, while
    the bound one skips its steps; only optimizers over the bound parameters count."""
    model, (x, y, _, _) = problem()
    head = list(model.net[3].parameters())
    body = [p for p in model.parameters() if all(p is not h for h in head)]
    optimizer = torch.optim.SGD(body, lr=0.1)
    other = torch.optim.SGD(head, lr=0.1)
    pipeline = recipes.plain(model, optimizer)
    for step in range(3):
        out = pipeline(x, y, step=step)
        other.zero_grad()
        out.loss.backward()
        other.step()  # the bound optimizer never steps here


def test_bind_moves_the_hooks_and_the_look_ahead_to_the_new_optimizer():
    """After ``pipeline.bind(model, new_optimizer)``: the old optimizer's steps run no after-step
    work, the new one's do, the teacher keeps its average, and the look-ahead steps the new
    optimizer (the meta weights are those of a pipeline built on it, bit for bit)."""
    model, batch = problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    reweighter = iegkit.MetaReweighter("1/B")
    pipeline, labeler = teacher_pipeline(model, optimizer, reweighter)
    for step in range(2):
        train_step(pipeline, optimizer, batch, step)
    teacher = snapshot(labeler.teacher.shadow)
    replacement = torch.optim.Adam(model.parameters(), lr=0.01)
    assert pipeline.bind(model, replacement) is pipeline
    assert not moved(teacher, labeler.teacher.shadow)  # the average was not restarted
    optimizer.step()  # the old optimizer: no hook any more
    assert not moved(teacher, labeler.teacher.shadow)

    twin_model = copy.deepcopy(model)
    twin_optimizer = torch.optim.Adam(twin_model.parameters(), lr=0.01)
    twin, _ = teacher_pipeline(twin_model, twin_optimizer, iegkit.MetaReweighter("1/B"))
    twin.load_state_dict(pipeline.state_dict())
    stale_model = copy.deepcopy(model)  # what the old binding's look-ahead would have stepped
    stale_optimizer = torch.optim.SGD(stale_model.parameters(), lr=0.1, momentum=0.9)
    stale_optimizer.load_state_dict(optimizer.state_dict())
    stale, _ = teacher_pipeline(stale_model, stale_optimizer, iegkit.MetaReweighter("1/B"))
    stale.load_state_dict(pipeline.state_dict())
    out = train_step(pipeline, replacement, batch, 2)
    assert torch.equal(out.weights, twin(*batch, step=2).weights)
    assert not torch.equal(out.weights, stale(*batch, step=2).weights)
    assert moved(teacher, labeler.teacher.shadow)  # the new optimizer's step ran the hook
    train_step(pipeline, replacement, batch, 3)  # and the step guard follows the new optimizer


def test_bind_to_another_model_starts_the_parts_afresh():
    model, batch = problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pipeline, labeler = teacher_pipeline(model, optimizer)
    train_step(pipeline, optimizer, batch, 0)
    other, _ = problem()
    pipeline.bind(other, torch.optim.SGD(other.parameters(), lr=0.1))
    for name, p in other.named_parameters():
        assert torch.equal(labeler.teacher.shadow[name], p.detach())


# --- 3. a layer unfrozen after bind -------------------------------------------------------------


def test_a_layer_unfrozen_after_bind_joins_the_average_from_its_current_value():
    model, batch = problem()
    first = model.net[0]
    first.requires_grad_(False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pipeline, labeler = teacher_pipeline(model, optimizer)
    assert "net.0.weight" not in labeler.teacher.shadow
    train_step(pipeline, optimizer, batch, 0)
    first.requires_grad_(True)  # unfrozen; the optimizer already holds it
    train_step(pipeline, optimizer, batch, 1)
    shadow = labeler.teacher.shadow
    assert torch.equal(shadow["net.0.weight"], first.weight.detach())  # joined at its value
    joined = first.weight.detach().clone()
    train_step(pipeline, optimizer, batch, 2)
    d = iegkit.ema.ema_decay(2, 0.9)
    torch.testing.assert_close(shadow["net.0.weight"], d * joined + (1 - d) * first.weight.detach(),
                               rtol=0, atol=1e-15)
    assert not torch.equal(first.weight.detach(), shadow["net.0.weight"])
    with iegkit.evaluation_weights(pipeline):  # deployed averaged, beside the averaged rest
        assert torch.equal(first.weight.detach(), shadow["net.0.weight"])


def test_a_layer_frozen_after_bind_stays_averaged():
    model, batch = problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = iegkit.WeightEMA(decay=0.5)
    pipeline = iegkit.compose(iegkit.CrossEntropy(), ema, model=model, optimizer=optimizer)
    train_step(pipeline, optimizer, batch[:2] + (None, None), 0)
    model.net[0].requires_grad_(False)
    before = ema.shadow["net.0.weight"].clone()
    train_step(pipeline, optimizer, batch[:2] + (None, None), 1)
    d = iegkit.ema.ema_decay(1, 0.5)
    torch.testing.assert_close(ema.shadow["net.0.weight"],
                               d * before + (1 - d) * model.net[0].weight.detach(), rtol=0,
                               atol=1e-15)


def test_a_saved_average_loads_across_a_changed_trainable_set():
    """Saved after unfreezing, resumed with the layer still frozen at bind (and the reverse)."""
    model, _ = problem()
    ema = iegkit.WeightEMA(model, decay=0.5)
    saved = ema.state_dict()
    model.net[0].requires_grad_(False)
    frozen = iegkit.WeightEMA(model, decay=0.5)
    assert "net.0.weight" not in frozen.shadow
    frozen.load_state_dict(saved)
    assert torch.equal(frozen.shadow["net.0.weight"], saved["shadow"]["net.0.weight"])
    model.net[0].requires_grad_(True)
    again = iegkit.WeightEMA(model, decay=0.5)
    again.load_state_dict({"decay": 0.5, "shadow": {"net.3.bias": saved["shadow"]["net.3.bias"]}})
    assert torch.equal(again.shadow["net.0.weight"], model.net[0].weight.detach())


def test_a_saved_average_of_another_model_is_refused():
    model, _ = problem()
    ema = iegkit.WeightEMA(model, decay=0.5)
    with pytest.raises(ValueError, match=r"does not have: \['head.weight'\]"):
        ema.load_state_dict({"decay": 0.5, "shadow": {"head.weight": torch.zeros(2)}})
    with pytest.raises(ValueError, match=r"shapes differ .* \['net.3.bias'\]"):
        ema.load_state_dict({"decay": 0.5, "shadow": {"net.3.bias": torch.zeros(1)}})
