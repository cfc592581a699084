"""Mixed precision: bf16 autocast on CPU, and the fallback when the meta-gradients overflow."""

from __future__ import annotations

import copy

import pytest
import torch

from iegkit import recipes
from iegkit.functional import meta as meta_module
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
