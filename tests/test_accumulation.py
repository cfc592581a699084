"""Gradient accumulation (two pipeline calls, one optimizer.step(); issue 24): refused where the
pipeline has a look-ahead (the meta weights are normalised over the batch it sees), exact and
allowed where it has none; the legitimate calls without a step are not mistaken for it."""

from __future__ import annotations

import pytest
import torch
from conftest import flip, make_problem
from torch import nn

from iegkit import recipes

ACCUMULATION = "normalised over the batch the look-ahead sees; gradient accumulation splits it"


def meta_pipeline(name, model, optimizer):
    if name == "l2r":
        return recipes.l2r(model, optimizer)
    return recipes.robust_ieg(model, optimizer, total_steps=10, strong_augment=flip)


def state_of(model, pipeline):
    """Everything a call could change: parameters, BatchNorm statistics, gradients, the parts'
    state and their generators."""
    tensors = {f"model/{n}": v.detach().clone() for n, v in model.state_dict().items()}
    tensors |= {f"grad/{n}": p.grad.clone() for n, p in model.named_parameters()
                if p.grad is not None}
    return tensors, repr(pipeline.state_dict())


def no_batchnorm_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).double()


def batch(size=8, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 6, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, 4, (size,), generator=gen)


@pytest.mark.parametrize("name", ["l2r", "robust_ieg"])
def test_meta_accumulation_is_refused_before_anything_changes(name):
    model, x, y, xp, yp, _ = make_problem("mlp", batch=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pipeline = meta_pipeline(name, model, optimizer)
    optimizer.zero_grad()
    (pipeline(x[:4], y[:4], xp, yp, step=0).loss / 2).backward()
    before = state_of(model, pipeline)
    with pytest.raises(RuntimeError, match=ACCUMULATION) as error:
        pipeline(x[4:], y[4:], xp, yp, step=0)
    assert "once on the whole batch per optimizer.step()" in str(error.value)
    assert "pipeline.reset_step_guard()" in str(error.value)
    after = state_of(model, pipeline)
    assert after[1] == before[1]
    assert before[0].keys() == after[0].keys()
    for key, value in before[0].items():
        assert torch.equal(after[0][key], value), key


def test_plain_accumulation_is_exact_against_one_batch():
    """Two half batches, each loss halved, one optimizer.step(), twice: the parameters of one
    batch of 8 per step, to float64 rounding (no BatchNorm: nothing couples the examples)."""
    whole_model, split_model = no_batchnorm_model(), no_batchnorm_model()
    whole_opt = torch.optim.SGD(whole_model.parameters(), lr=0.1, momentum=0.9)
    split_opt = torch.optim.SGD(split_model.parameters(), lr=0.1, momentum=0.9)
    whole, split = recipes.plain(whole_model, whole_opt), recipes.plain(split_model, split_opt)
    for step in range(2):
        x, y = batch(seed=step)
        whole_opt.zero_grad()
        whole(x, y, step=step).loss.backward()
        whole_opt.step()
        split_opt.zero_grad()
        for half in (slice(0, 4), slice(4, 8)):
            (split(x[half], y[half], step=step).loss / 2).backward()
        split_opt.step()
    for p, q in zip(whole_model.parameters(), split_model.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-13, atol=1e-15)


def eg_halves_and_whole(**options):
    model, (x, y), (xp, yp) = no_batchnorm_model(), batch(), batch(4, seed=9)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pipeline = recipes.eg(model, optimizer, strong_augment=flip, **options)
    whole = pipeline(x, y, xp, yp, step=0)
    halves = []
    optimizer.zero_grad()
    for half in (slice(0, 4), slice(4, 8)):  # accumulated: not refused (no look-ahead)
        out = pipeline(x[half], y[half], xp, yp, step=0)
        (out.loss / 2).backward()
        halves.append(out)
    optimizer.step()
    return halves, whole


def test_eg_accumulation_is_allowed_and_its_per_example_parts_are_exact():
    """EG has no look-ahead: accumulation is allowed. Without the logit normalisation its pseudo
    labels and the consistency term are per example, so the halves give the whole batch's
    (float64 rounding). MixUp draws its partners within what each call sees (a different draw)."""
    halves, whole = eg_halves_and_whole(normalize_logits=False)
    pseudo = torch.cat([out.values["targets:pseudo"] for out in halves])
    torch.testing.assert_close(pseudo, whole.values["targets:pseudo"], rtol=1e-13, atol=1e-15)
    consistency = sum(out.losses["kl_consistency/loss"] for out in halves) / 2
    torch.testing.assert_close(consistency, whole.losses["kl_consistency/loss"], rtol=1e-13,
                               atol=1e-15)


def test_eg_accumulation_with_the_official_logit_normalisation_is_a_batch_statistic():
    """The official logit_norm divides by ONE RMS over the batch it is given, so, like
    BatchNorm's batch statistics, the pseudo labels of a half batch are not the whole batch's:
    allowed (documented), not exact."""
    halves, whole = eg_halves_and_whole()
    pseudo = torch.cat([out.values["targets:pseudo"] for out in halves])
    assert not torch.allclose(pseudo, whole.values["targets:pseudo"], rtol=1e-6, atol=1e-9)


def test_calls_whose_loss_is_not_backpropagated_are_not_accumulation():
    """Metrics at several steps without stepping (no backward): allowed, also with a look-ahead."""
    model, x, y, xp, yp, _ = make_problem("mlp", batch=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pipeline = recipes.l2r(model, optimizer)
    for step in range(3):
        pipeline(x, y, xp, yp, step=step)
    out = pipeline(x, y, xp, yp, step=3)
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    pipeline(x, y, xp, yp, step=4)


def test_a_skipped_step_whose_gradients_are_discarded_is_allowed():
    """Backward, no optimizer.step() (a loss spike, say), zero_grad(): the next backward will not
    accumulate, so the next call is allowed; without zero_grad it is refused, and
    reset_step_guard() is the opt-out."""
    model, x, y, xp, yp, _ = make_problem("mlp", batch=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pipeline = recipes.l2r(model, optimizer)
    pipeline(x, y, xp, yp, step=0).loss.backward()
    optimizer.zero_grad()
    pipeline(x, y, xp, yp, step=0).loss.backward()
    optimizer.zero_grad(set_to_none=False)  # zeros, not None: also discarded
    pipeline(x, y, xp, yp, step=0).loss.backward()
    with pytest.raises(RuntimeError, match=ACCUMULATION):
        pipeline(x, y, xp, yp, step=0)
    pipeline.reset_step_guard()
    pipeline(x, y, xp, yp, step=0)


def test_a_gradscaler_overflow_skip_is_allowed():
    """GradScaler skips optimizer.step() on overflow and leaves non-finite gradients; the loop's
    zero_grad() comes after the next call (the README's order)."""
    model, x, y, xp, yp, _ = make_problem("mlp", batch=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pipeline = recipes.l2r(model, optimizer)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100)
    before = [p.detach().clone() for p in model.parameters()]
    for step, blow_up in enumerate((1e300, 1.0)):
        out = pipeline(x, y, xp, yp, step=step)
        optimizer.zero_grad()
        scaler.scale(out.loss * blow_up).backward()  # float64: only 1e300 overflows
        scaler.step(optimizer)
        scaler.update()
        if step == 0:
            assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def test_another_optimizers_step_reads_as_a_replaced_optimizer_not_as_accumulation():
    """Both cases are "called again, the bound optimizer has not stepped"; what tells them apart
    is whether another optimizer stepped the parameters."""
    model, x, y, xp, yp, _ = make_problem("mlp", batch=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pipeline = recipes.l2r(model, optimizer)
    pipeline(x, y, xp, yp, step=0).loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    with pytest.raises(RuntimeError, match="another optimizer stepped") as error:
        pipeline(x, y, xp, yp, step=1)
    assert ACCUMULATION not in str(error.value)
