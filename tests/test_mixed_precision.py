"""Mixed precision: bf16 autocast on CPU, and the fallback when the meta-gradients overflow."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import make_problem

import iegkit
from iegkit import recipes
from iegkit._core import meta_step as meta_module
from iegkit.functional.meta import contract_meta_gradients
from iegkit.models import SmallCNN


def problem(seed=0):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = SmallCNN(1, 10, width=16)
    x, y = torch.rand(64, 1, 8, 8, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    xp, yp = torch.rand(20, 1, 8, 8, generator=gen), torch.arange(20) % 10
    return model, x, y, xp, yp


@pytest.mark.parametrize("method", ["l2r", "ieg"])
def test_bf16_autocast_weights_are_close_to_float32(method):
    """bf16 keeps 8 mantissa bits (relative rounding 2^-8 = 0.4% per operation); omega* is a
    difference of such quantities over a whole forward and JVP, so single weights move by up to
    about 10-20% of the largest weight (measured 10% on this problem) while their pattern stays:
    we require a correlation >= 0.98 with the float32 weights, a max deviation <= 25% of the
    largest weight, the same examples dropped to zero as far as rounding allows, and a finite loss."""
    model, x, y, xp, yp = problem()
    twin = copy.deepcopy(model)
    build = (lambda m, o: recipes.l2r(m, o)) if method == "l2r" else (
        lambda m, o: recipes.ieg(m, o, strong_augment=lambda t, generator=None: t.flip(-1),
                                 plain_strong_augment=lambda t, generator=None: t.flip(-1)))
    reference = build(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))(
        x, y, xp, yp, step=0)
    pipeline = build(twin, torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pipeline(x, y, xp, yp, step=0)
    assert out.weights.dtype == torch.float32  # the contraction runs in float32
    assert torch.isfinite(out.loss)
    w, ref = out.weights, reference.weights
    assert float(torch.corrcoef(torch.stack([w, ref]))[0, 1]) >= 0.98
    assert float((w - ref).abs().max()) <= 0.25 * float(ref.abs().max())
    out.loss.backward()


def test_overflowing_meta_gradients_fall_back_to_uniform_weights(monkeypatch):
    model, x, y, xp, yp = problem()
    real = meta_module.contract_meta_gradients

    def overflowing(*args, **kwargs):
        weight, label = real(*args, **kwargs)
        return weight * float("inf"), label

    monkeypatch.setattr(meta_module, "contract_meta_gradients", overflowing)
    pipeline = recipes.l2r(model, torch.optim.SGD(model.parameters(), lr=0.1))
    out = pipeline(x, y, xp, yp, step=0)
    torch.testing.assert_close(out.weights, torch.full((64,), 1 / (64 + 1e-5)))
    assert float(out.metrics["meta_reweighter/nonfinite_fallback"]) == 1.0
    assert torch.isfinite(out.loss)


# --- Overflow and low-precision logits in the meta step -------------------------------------------
# Found by mutation testing (docs/mutation.md): the overflow fallback of the relabeler keeps every
# given label, and low-precision logits are contracted in float32.


def test_overflowing_meta_gradients_keep_every_given_label(monkeypatch):
    model, x, y, xp, yp, _ = make_problem("cnn")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    real = meta_module.contract_meta_gradients

    def overflowing(*args, **kwargs):
        weight, label = real(*args, **kwargs)
        return weight, label * float("inf")

    def flip(images, generator=None):
        return images.flip(-1)

    ieg = lambda m, o: iegkit.compose(  # noqa: E731
        iegkit.ConsistencyPseudoLabeler(flip), iegkit.MetaReweighter(label_mix=0.9),
        iegkit.MetaRelabeler(), model=m, optimizer=o)
    twin = copy.deepcopy(model)
    finite = ieg(twin, torch.optim.SGD(twin.parameters(), lr=0.1))(x, y, xp, yp, step=0)
    assert float(finite.metrics["meta_reweighter/nonfinite_fallback"]) == 0.0
    assert 0 < float(finite.relabel.sum()) < 8  # a mixed decision when nothing overflows
    monkeypatch.setattr(meta_module, "contract_meta_gradients", overflowing)
    out = ieg(model, opt)(x, y, xp, yp, step=0)
    assert torch.equal(out.relabel, torch.ones(8, dtype=out.relabel.dtype))  # lambda* = 1
    assert float(out.metrics["meta_reweighter/nonfinite_fallback"]) == 1.0


def test_low_precision_logits_are_contracted_in_float32():
    gen = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(6, 5, generator=gen)).bfloat16()
    tangents = torch.randn(6, 5, generator=gen).bfloat16()
    pseudo = torch.softmax(torch.randn(6, 5, generator=gen), -1).bfloat16()
    targets = torch.tensor([0, 1, 2, 3, 4, 0])
    omega0, lambda0 = torch.full((6,), 1 / 6), torch.full((6,), 0.9)
    weight, label = contract_meta_gradients(logits, tangents, targets, weight_init=omega0,
                                            label_init=lambda0, pseudo_targets=pseudo)
    assert weight.dtype == torch.float32 and label.dtype == torch.float32
    z, u, g = logits.double(), tangents.double(), pseudo.double()
    onehot = F.one_hot(targets, 5).double()
    mixed = 0.9 * onehot + 0.1 * g
    want_w = (u * (torch.softmax(z, -1) - mixed)).sum(-1)
    want_l = omega0.double() * (u * (g - onehot)).sum(-1)
    torch.testing.assert_close(weight.double(), want_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(label.double(), want_l, rtol=1e-5, atol=1e-6)
