"""The compiled tangent pass when compiling works (found by mutation testing, docs/mutation.md).

tests/test_compile.py covers a failing and a disagreeing compiled pass with a stand-in for
torch.compile; here the stand-in agrees with the eager pass up to "compiler rounding" (a relative
1e-9, or more where a tolerance is tested), so the contract of a working compiled pass is checked
without a compiler: the first use per input shape and mode is checked against the eager pass, later
uses are not, a model with active dropout is never compared, and the tolerance depends on the dtype.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from iegkit.functional import meta as meta_module
from iegkit.functional.meta import logit_tangent, probe_tangent


def _problem(dtype=torch.float32, dropout=0.0):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.BatchNorm1d(12), torch.nn.Tanh(),
                                torch.nn.Dropout(dropout), torch.nn.Linear(12, 4)).to(dtype)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 6, generator=gen).to(dtype)
    xp, yp = torch.randn(5, 6, generator=gen).to(dtype), torch.tensor([0, 1, 2, 3, 0])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tau, _ = probe_tangent(model, opt, xp, yp, dropout=False)
    return model, tau, x


@pytest.fixture
def compiled_stand_in(monkeypatch):
    """torch.compile replaced by the eager pass times (1 + rel); counts eager passes."""
    eager_dual_logits = meta_module._dual_logits
    counts = {"eager": 0, "compiled": 0}
    settings = {"rel": 1e-9}

    def counting_eager(*args, **kwargs):
        counts["eager"] += 1
        return eager_dual_logits(*args, **kwargs)

    def compiled(model, params, tangents, inputs, buffers):
        counts["compiled"] += 1
        logits, u = eager_dual_logits(model, params, tangents, inputs, buffers)
        return logits, u * (1 + settings["rel"])

    monkeypatch.setattr(meta_module, "_dual_logits", counting_eager)
    monkeypatch.setattr(meta_module, "_compiled_dual_logits", lambda: compiled)
    return counts, settings


def test_a_working_compiled_pass_is_checked_once_per_shape(compiled_stand_in):
    counts, _ = compiled_stand_in
    model, tau, x = _problem()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, eager, _ = logit_tangent(model, tau, x)
        assert counts == {"eager": 1, "compiled": 0}
        _, first, fallback = logit_tangent(model, tau, x, compile=True)
        assert not fallback and counts == {"eager": 2, "compiled": 1}  # checked against eager
        assert torch.equal(first, eager * (1 + 1e-9))  # and the compiled result is used
        _, again, _ = logit_tangent(model, tau, x, compile=True)
        assert counts == {"eager": 2, "compiled": 2}  # the same shape is not checked again
        assert torch.equal(again, first)
        logit_tangent(model, tau, x[:6], compile=True)
        assert counts == {"eager": 3, "compiled": 3}  # a new shape is
        model.eval()
        logit_tangent(model, tau, x, compile=True)  # the meta passes run in train mode anyway
        assert counts == {"eager": 3, "compiled": 4}
    assert not [w for w in caught if "iegkit" in str(w.message)]  # the compiled pass agrees
    assert model not in meta_module._COMPILE_FAILURES


def test_with_active_dropout_the_compiled_pass_is_not_compared(compiled_stand_in):
    counts, _ = compiled_stand_in
    model, tau, x = _problem(dropout=0.5)
    logit_tangent(model, tau, x, compile=True)
    assert counts == {"eager": 0, "compiled": 1}  # masks differ: nothing to compare
    logit_tangent(model, tau, x, compile=True, dropout=False)  # dropout off: compared
    assert counts == {"eager": 1, "compiled": 2}


@pytest.mark.parametrize("dtype,rel,used", [(torch.float32, 5e-3, True),
                                            (torch.float32, 5e-2, False),
                                            (torch.float64, 5e-7, True),
                                            (torch.float64, 5e-6, False)])
def test_the_check_tolerance_follows_the_dtype(compiled_stand_in, dtype, rel, used):
    """float32: 1e-2 relative L2 (reassociation on deep nets); float64: 1e-6."""
    counts, settings = compiled_stand_in
    settings["rel"] = rel
    model, tau, x = _problem(dtype)
    _, eager, _ = logit_tangent(model, tau, x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, u, _ = logit_tangent(model, tau, x, compile=True)
    iegkit_warnings = [w for w in caught if "compiled tangent pass" in str(w.message)]
    if used:
        assert torch.equal(u, eager * (1 + rel)) and not iegkit_warnings
        assert model not in meta_module._COMPILE_FAILURES
    else:
        assert torch.equal(u, eager) and len(iegkit_warnings) == 1
        assert "differs from the eager pass" in str(iegkit_warnings[0].message)
        assert model in meta_module._COMPILE_FAILURES
        logit_tangent(model, tau, x, compile=True)
        assert counts["compiled"] == 1  # not tried again for this model
