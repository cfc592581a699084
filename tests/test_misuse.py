"""Misuse that used to give a silent wrong result now raises a clear error and changes nothing."""

from __future__ import annotations

import pytest
import torch
from conftest import make_problem

import iegkit
from iegkit._core.meta_step import MetaBatch, lookahead_meta_gradients
from iegkit.augment import strong_augment, weak_augment
from iegkit.errors import NonFiniteLossError
from iegkit.functional import generalized_cross_entropy
from iegkit.functional.meta import MetaInit


def buffers(model):
    return {n: b.clone() for n, b in model.named_buffers()}


def test_nan_inputs_raise_before_any_buffer_moves():
    model, x, y, xp, yp, _ = make_problem("cnn", batch=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pipeline = iegkit.recipes.l2r(model, opt)
    before = buffers(model)
    bad = x.clone()
    bad[3, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="inputs: the batch holds NaN"):
        pipeline(bad, y, xp, yp, step=0)
    bad_probe = xp.clone()
    bad_probe[0] = float("inf")
    with pytest.raises(ValueError, match="probe_inputs: the batch holds NaN or inf"):
        pipeline(x, y, bad_probe, yp, step=0)
    assert all(torch.equal(before[n], b) for n, b in model.named_buffers())


def test_a_failing_step_restores_the_batchnorm_statistics():
    model, x, y, xp, yp, _ = make_problem("cnn", batch=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    class Explodes(iegkit.PartBase):
        name = "explodes"

        def contribute(self, ctx):
            ctx.logits("input")  # the real forward moves the running statistics
            return iegkit.Contribution(losses={"loss": torch.tensor(float("inf"))})

    pipeline = iegkit.compose(iegkit.CrossEntropy(), Explodes(), model=model, optimizer=opt)
    before = buffers(model)
    with pytest.raises(NonFiniteLossError, match="explodes/loss"):
        pipeline(x, y, step=0)
    assert all(torch.equal(before[n], b) for n, b in model.named_buffers())
    out = iegkit.compose(iegkit.CrossEntropy(), model=model, optimizer=opt)(x, y, step=0)
    assert not all(torch.equal(before[n], b) for n, b in model.named_buffers()) and out.loss > 0


@pytest.mark.parametrize("make", [lambda: weak_augment(), lambda: strong_augment(policy=None)])
def test_augmentations_refuse_images_outside_their_value_range(make):
    augment = make()
    normalised = (torch.rand(4, 3, 8, 8) - 0.5) / 0.25  # mean/std-normalised: about [-2, 2]
    with pytest.raises(ValueError, match="value_range"):
        augment(normalised)
    assert augment(torch.rand(4, 3, 8, 8)).shape == (4, 3, 8, 8)
    declared = weak_augment(value_range=(-2.5, 2.5))
    assert declared(normalised.clamp(-2.5, 2.5)).shape == normalised.shape


class TupleModel(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x), {"features": x}


def test_a_model_returning_a_tuple_is_named_and_logits_of_fixes_it():
    model, x, y, xp, yp, _ = make_problem("cnn", batch=12)
    wrapped = TupleModel(model)
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"model: returned a tuple.*LogitsOf"):
        iegkit.recipes.l2r(wrapped, opt)(x, y, xp, yp, step=0)
    pipeline = iegkit.recipes.l2r(iegkit.LogitsOf(wrapped, lambda out: out[0]), opt)
    out = pipeline(x, y, xp, yp, step=0)
    reference = iegkit.functional.meta_gradients(model, opt, x, y, xp, yp)
    expected = iegkit.functional.normalize_meta_weights(reference.weight)
    torch.testing.assert_close(out.weights, expected)


def test_batches_that_torch_would_reject_deep_inside_are_named():
    model, x, y, xp, yp, _ = make_problem("cnn", batch=12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pipeline = iegkit.recipes.l2r(model, opt)
    with pytest.raises(TypeError, match="inputs: dtype torch.float16"):
        pipeline(x.half(), y, xp, yp, step=0)
    with pytest.raises(TypeError, match="probe_inputs: dtype torch.float32"):
        pipeline(x, y, xp.float(), yp, step=0)
    mlp, mx, my, mxp, myp, _ = make_problem("mlp", batch=12)
    mlp_pipeline = iegkit.recipes.l2r(mlp, torch.optim.SGD(mlp.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="probe_inputs: a batch of 1 cannot pass BatchNorm1d"):
        mlp_pipeline(mx, my, mxp[:1], myp[:1], step=0)


def test_an_optimizer_of_another_model_is_refused_at_bind_time():
    model, *_ = make_problem("cnn")
    other, *_ = make_problem("cnn", seed=1)
    with pytest.raises(ValueError, match="optimizer: none of its parameters belongs to model"):
        iegkit.recipes.l2r(model, torch.optim.SGD(other.parameters(), lr=0.1))


def test_eval_mode_and_dropout_warn_once_and_meta_dropout_makes_the_step_deterministic():
    model, x, y, xp, yp, _ = make_problem("mlp", batch=12)
    model.net.insert(3, torch.nn.Dropout(0.5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pipeline = iegkit.compose(iegkit.MetaReweighter(), model=model, optimizer=opt)
    with pytest.warns(RuntimeWarning, match="dropout"):
        pipeline(x, y, xp, yp, step=0)
    deterministic = iegkit.compose(iegkit.MetaReweighter(), model=model, optimizer=opt,
                                   meta_dropout=False)
    model.net[3].eval()  # the real forward too: only then is the whole step reproducible
    first = deterministic(x, y, xp, yp, step=0).weights
    second = deterministic(x, y, xp, yp, step=0).weights
    torch.testing.assert_close(first, second)
    eval_model, *_ = make_problem("cnn", batch=12)
    eval_model.eval()
    with pytest.warns(RuntimeWarning, match="BatchNorm layers in eval mode"):
        iegkit.recipes.l2r(eval_model, torch.optim.SGD(eval_model.parameters(), lr=0.1))(
            *make_problem("cnn", batch=12)[1:5], step=0)


# --- mutation testing (docs/mutation.md): the look-ahead's arguments, refused before any pass -----


def count_forwards(model):
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_a_robust_inner_loss_with_relabeling_is_refused_by_name_before_any_pass():
    model, x, y, xp, yp, q = make_problem("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = count_forwards(model)
    with pytest.raises(ValueError, match=r"^inner_loss: a loss other than cross-entropy has no "
                                         r"relabeling meta-gradient; use it without label_init$"):
        iegkit.functional.meta_gradients(
            model, opt, x, y, xp, yp, weight_init=0.125, label_init=0.9, pseudo_targets=q,
            inner_loss=lambda z, t: generalized_cross_entropy(z, t, 0.7))
    assert calls == []


@pytest.mark.parametrize("weight_init", [0.0, 0.125])
def test_relabeling_without_pseudo_labels_is_refused_before_any_pass(weight_init):
    """Before the caller's forward too (StepContext's training_logits), with or without a
    virtual gradient."""
    model, x, y, xp, yp, _ = make_problem("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = count_forwards(model)
    with pytest.raises(ValueError, match=r"^pseudo_targets: required \(shape \(B, C\)\) when "
                                         r"label_init is given$"):
        lookahead_meta_gradients(model, opt, MetaBatch(x, y, xp, yp), MetaInit(weight_init, 0.9),
                                 training_logits=lambda: model(x))
    assert calls == []
