"""Layers without a forward-mode formula: automatic, warned, exact double-backward fallback."""

from __future__ import annotations

import copy
import linecache
import re
import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from conftest import Square, SquareNoJvp, make_problem
from reference import reference_meta_gradients
from torch import nn
from torch.func import functional_call

import iegkit
from iegkit._core import tangent as tangent_module
from iegkit._core.meta_step import LookaheadOptions, MetaBatch, lookahead_meta_gradients
from iegkit._core.modes import buffers_snapshot
from iegkit._core.tangent import _dual_logits, logit_tangent, probe_tangent
from iegkit.functional import meta_gradients
from iegkit.functional.meta import MetaInit


def model_with_custom_layer():
    model, x, y, xp, yp, q = make_problem("mlp")
    model.net = nn.Sequential(model.net[0], model.net[1], Square(), model.net[3])
    return model, x, y, xp, yp, q


@pytest.mark.parametrize("weight_init,label_init", [(0.0, None), (0.125, 0.9)])
def test_fallback_is_exact_and_warns_once_naming_the_layer(weight_init, label_init):
    model, x, y, xp, yp, q = model_with_custom_layer()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.warns(RuntimeWarning, match=r"layer 'net\.2' \(Square\)"):
        got = meta_gradients(model, opt, x, y, xp, yp, weight_init=weight_init,
                             label_init=label_init, pseudo_targets=q)
    assert got.used_fallback
    want_w, want_l = reference_meta_gradients(model, opt, x, y, xp, yp, weight_init=weight_init,
                                              label_init=label_init, pseudo_targets=q)
    torch.testing.assert_close(got.weight, want_w, rtol=1e-12, atol=1e-15)
    if label_init is not None:
        torch.testing.assert_close(got.label, want_l, rtol=1e-12, atol=1e-15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call does not warn again
        meta_gradients(model, opt, x, y, xp, yp, weight_init=weight_init, label_init=label_init,
                       pseudo_targets=q)


def test_pipeline_falls_back_and_keeps_batchnorm_statistics_right():
    model, x, y, xp, yp, q = model_with_custom_layer()
    shadow = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(RuntimeWarning, match="double backward"):
        out = iegkit.recipes.l2r(model, opt)(x, y, xp, yp, step=0)
    assert out.forward_counts == {"input": 1}
    shadow(x)
    for a, b in zip(model.buffers(), shadow.buffers()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-15)
    out.loss.backward()


# --- Every wording of a missing forward-mode formula ----------------------------------------------
# Found by mutation testing (docs/mutation.md). torch words "this layer has no forward-mode formula"
# in several ways across layers and versions (an autograd.Function without jvp(), an op without a
# forward AD formula, a functorch transform); each wording must switch the look-ahead to the exact
# double-backward path with one warning, and any other error of the model must propagate unchanged,
# without a warning and without a fallback.


def _is_dual(x: torch.Tensor) -> bool:
    return fwAD.unpack_dual(x).tangent is not None


class RaisesUnderForwardAD(nn.Module):
    """Identity, except that a forward-mode (dual) input raises ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def forward(self, x):
        if _is_dual(x):
            raise self.error
        return x


def _model_with(layer: nn.Module):
    model, x, y, xp, yp, q = make_problem("mlp")
    model.net = nn.Sequential(model.net[0], model.net[1], layer, model.net[2], model.net[3])
    return model, x, y, xp, yp, q


WORDINGS = [
    RuntimeError("Trying to use forward AD with my_op that does not support it"),
    NotImplementedError("my_op: derivative for forward-mode differentiation is not implemented"),
    RuntimeError("my_op is not supported in forward mode"),
    NotImplementedError("You must implement the JVP function for my_op"),
    RuntimeError("vmap: my_op is not supported by functorch transforms"),
]


@pytest.mark.parametrize("error", WORDINGS, ids=lambda e: str(e)[:24])
def test_every_wording_of_a_missing_forward_formula_falls_back_exactly(error):
    model, x, y, xp, yp, q = _model_with(RaisesUnderForwardAD(error))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.warns(RuntimeWarning, match=r"layer 'net\.2' \(RaisesUnderForwardAD\) has no "
                      r"forward-mode \(JVP\) formula " + re.escape(f"({error});")):
        got = meta_gradients(model, opt, x, y, xp, yp, weight_init=0.125, label_init=0.9,
                             pseudo_targets=q)
    assert got.used_fallback
    want_w, want_l = reference_meta_gradients(model, opt, x, y, xp, yp, weight_init=0.125,
                                              label_init=0.9, pseudo_targets=q)
    torch.testing.assert_close(got.weight, want_w, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(got.label, want_l, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("error", [RuntimeError("mat1 and mat2 shapes cannot be multiplied"),
                                   NotImplementedError("my_op has no CPU kernel")],
                         ids=lambda e: type(e).__name__)
def test_any_other_error_of_the_model_propagates_without_a_fallback(error):
    model, x, y, xp, yp, q = _model_with(RaisesUnderForwardAD(error))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "falls back to double backward" warning
        with pytest.raises(type(error), match=str(error)):
            meta_gradients(model, opt, x, y, xp, yp)


class RootLevelSquare(nn.Module):
    """The layer without a jvp() is called in the model's own forward, not in a submodule; with
    ``unused`` one more parameter is held by the optimizer but never reaches the logits."""

    def __init__(self, unused: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Linear(6, 8)
        self.second = nn.Linear(8, 4)
        if unused:
            self.unused = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return self.second(SquareNoJvp.apply(self.first(x)) * 0.5)


def test_a_root_level_layer_is_named_after_the_model_and_unused_parameters_are_fine():
    _, x, y, xp, yp, q = make_problem("mlp")
    model = RootLevelSquare(unused=True).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.warns(RuntimeWarning, match=r"layer 'RootLevelSquare' \(RootLevelSquare\)"):
        got = meta_gradients(model, opt, x, y, xp, yp, weight_init=0.125, label_init=0.9,
                             pseudo_targets=q)
    assert got.used_fallback
    # the unused parameter changes nothing: the reference runs on the same model without it
    twin = RootLevelSquare(unused=False).double()
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    want_w, want_l = reference_meta_gradients(twin, twin_opt, x, y, xp, yp, weight_init=0.125,
                                              label_init=0.9, pseudo_targets=q)
    torch.testing.assert_close(got.weight, want_w, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(got.label, want_l, rtol=1e-12, atol=1e-15)


# --- The tangent pass: no fallback where none is needed, and the warning --------------------------
# Found by mutation testing (docs/mutation.md); the warning is matched exactly, like the error
# messages in tests/test_errors.py.


def _tangents(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: torch.ones_like(p) for n, p in model.named_parameters()}


def test_the_tangent_pass_runs_the_given_model_without_a_fallback():
    """A model with forward-mode formulas everywhere gets its own logits, no warning and no
    fallback."""
    model, x, *_ = make_problem("mlp")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="iegkit")
        logits, u, fallback = logit_tangent(model, _tangents(model), x)
    assert not fallback
    torch.testing.assert_close(logits, model(x))
    assert u.shape == logits.shape


def test_the_fallback_warning_names_the_layer_and_the_fix():
    """A layer without jvp() is named in the warning, which says how to get the fast path."""
    model, x, *_ = make_problem("mlp")
    model.net = nn.Sequential(model.net[0], model.net[1], Square(), model.net[3])
    with pytest.warns(RuntimeWarning, match=(
            r"^iegkit: layer 'net\.2' \(Square\) has no forward-mode \(JVP\) formula .*"
            + re.escape("; the meta step falls back to double backward for this model, which is "
                        "exact but slower and uses more memory. Give its autograd.Function a jvp() "
                        "to use the fast path.") + "$")):
        _, _, fallback = logit_tangent(model, _tangents(model), x)
    assert fallback


# --- mutation testing (docs/mutation.md): the forward-mode pass, a failure before any layer -------
# u = J tau is checked against reverse mode (the double-backward trick of
# torch.autograd.functional.jvp); a forward-mode failure before any layer's forward (in a forward
# pre-hook of the model) falls back like any other; a parameter the probe loss never reaches has a
# zero tangent, also where the probe gradients are averaged over ranks.


def _reverse_mode_jvp(model, tangents, x):
    """(logits, J tau) by reverse mode, on copies of the buffers."""
    names = list(tangents)

    def logits(*params):
        return functional_call(model, {**buffers_snapshot(model), **dict(zip(names, params))}, (x,))

    params = tuple(model.get_parameter(n).detach() for n in names)
    return torch.autograd.functional.jvp(logits, params, tuple(tangents[n] for n in names))


def test_the_forward_mode_pass_is_the_jvp_with_the_models_own_or_given_buffers():
    model, x, *_ = make_problem("mlp")
    model.eval()  # BatchNorm reads its running statistics: the buffers matter
    with torch.no_grad():
        model.net[1].running_mean.uniform_(-1, 1)
    params = {n: p.detach() for n, p in model.named_parameters()}
    want_logits, want_u = _reverse_mode_jvp(model, _tangents(model), x)
    for buffers in (None, buffers_snapshot(model)):  # None: the model's own
        logits, u = _dual_logits(model, params, _tangents(model), x, buffers)
        torch.testing.assert_close(logits, want_logits, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(u, want_u, rtol=1e-12, atol=1e-15)


def test_a_failure_before_any_layer_runs_falls_back_naming_the_model():
    model, x, *_ = make_problem("mlp")
    model.scale = nn.Parameter(torch.tensor(1.5, dtype=x.dtype))
    model.register_forward_pre_hook(lambda m, args: (args[0] * SquareNoJvp.apply(m.scale),))
    with pytest.warns(RuntimeWarning, match=r"^iegkit: layer '' \(TinyMLP\) has no forward-mode"):
        logits, u, fallback = logit_tangent(model, _tangents(model), x)
    assert fallback
    want_logits, want_u = _reverse_mode_jvp(model, _tangents(model), x)
    torch.testing.assert_close(logits, want_logits, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(u, want_u, rtol=1e-12, atol=1e-15)


def test_a_parameter_the_probe_loss_never_reaches_has_a_zero_tangent_over_ranks(
        two_identical_ranks):
    group, _ = two_identical_ranks  # the other rank holds the same probe batch
    _, _, _, xp, yp, _ = make_problem("mlp")
    model = RootLevelSquare(unused=True).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    single, single_loss = probe_tangent(model, opt, xp, yp)
    ranks, loss = probe_tangent(model, opt, xp, yp, process_group=group)
    torch.testing.assert_close(single["unused"], torch.zeros(3, dtype=torch.float64),
                               rtol=0, atol=0)
    assert ranks.keys() == single.keys()
    for name in single:
        torch.testing.assert_close(ranks[name], single[name], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(loss, single_loss, rtol=0, atol=0)


# --- mutation testing (docs/mutation.md): where the look-ahead's warnings point --------------------
# Each warning of the tangent pass is attributed to a caller's frame (stacklevel > 1), never to the
# warnings.warn call inside iegkit. Which caller exactly is not checked: mutmut's copy puts two
# trampoline frames under every mutated function, so only this property holds on both.


def assert_attributed_to_a_caller(caught, text):
    (warning,) = [w for w in caught if text in str(w.message)]
    assert "warnings.warn(" not in linecache.getline(warning.filename, warning.lineno), (
        warning.filename, warning.lineno)


def all_ones_tangents(model):
    return {n: torch.ones_like(p) for n, p in model.named_parameters()}


def test_the_fallback_warning_is_attributed_to_a_caller():
    model, x, *_ = make_problem("mlp")
    model.net = torch.nn.Sequential(model.net[0], model.net[1], Square(), model.net[3])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logit_tangent(model, all_ones_tangents(model), x)
    assert_attributed_to_a_caller(caught, "falls back to double backward")


def test_the_compile_failure_warning_is_attributed_to_a_caller(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(tangent_module, "_compiled_dual_logits", lambda: broken)
    model, x, *_ = make_problem("mlp")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logit_tangent(model, all_ones_tangents(model), x, compile=True)
    assert_attributed_to_a_caller(caught, "compiled tangent pass")


def test_the_autocast_warning_is_attributed_to_a_caller(monkeypatch):
    def never():
        raise AssertionError("forward-mode AD under autocast does not compile")

    monkeypatch.setattr(tangent_module, "_compiled_dual_logits", never)
    monkeypatch.setattr(tangent_module, "_WARNED_AUTOCAST", False)
    model, x, y, xp, yp, _ = make_problem("mlp", dtype=torch.float32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lookahead_meta_gradients(model, optimizer, MetaBatch(x, y, xp, yp), MetaInit(0.0),
                                 options=LookaheadOptions(compile_tangent=True))
    assert_attributed_to_a_caller(caught, "torch.autocast")
