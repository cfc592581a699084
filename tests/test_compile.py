"""The opt-in compiled tangent pass (compose(compile_tangent=True), logit_tangent(compile=True)).

Tolerances. The compiled pass computes the same function as the eager one in another order of
floating-point operations (inductor fuses and reassociates), so in float32 both differ from the
exact J tau by rounding. Measured with ``benchmarks/meta_step.py --compare-tangents`` (docs/results.md,
"Compiled tangent pass vs float64"): relative L2 error of u = J tau against float64 eager at the
same point (the float32 weights, tau and inputs cast exactly)

    model                  eager f32   double bw f32   compiled f32   compiled vs eager   f64: compiled vs eager
    SmallCNN(32), B=128    5.1e-8      5.7e-8          8.2e-8         9.7e-8              3.4e-16
    ResNet-29, B=64        6.1e-4      6.1e-4          6.2e-4         5.4e-4              3.0e-15

The float64 column is the evidence that the float32 differences (up to 1.7e-3 of the largest
component on ResNet-29, whose tangent is ill-conditioned in float32: its logits are accurate to
1e-6) are rounding, not an error: an error in the compiled graph would show at every precision.
Eager and double backward agree with each other to 1e-7 because they share the same float32
forward kernels; the compiled forward rounds differently, hence its 5e-4 from both. The tests
therefore require (a) the compiled pass to be as close to float64 as the eager pass is, up to a
factor 10 (or 1e-6 relative, a few float32 ulps of accumulated rounding, where the eager pass is
closer than that), and (b) compiled vs eager in float32 within 1e-4 relative: ~1000x the 1e-7
measured on small BN CNNs, and ~10^4 below a wrong tangent (O(1)).

The tests that compile are skipped where torch.compile cannot run here (no C++ compiler for
inductor's CPU code, or dynamo unsupported on this Python); the fallback tests need no compiler.
One compilation of a small BN CNN (about 20-30 s on 2 shared cores) serves every compiled test.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import lookahead_through_two_views

from iegkit import MetaReweighter, compose, recipes
from iegkit._core import tangent as tangent_module
from iegkit._core.meta_step import (
    LookaheadOptions,
)
from iegkit._core.tangent import logit_tangent, probe_tangent
from iegkit.models import SmallCNN

B, PROBE, SIDE = 32, 20, 16


def compiler_problem() -> str | None:
    """Why torch.compile (inductor, CPU) cannot run here, or None."""
    try:
        import torch._dynamo
        import torch._inductor.config as inductor_config
    except Exception as error:  # pragma: no cover - depends on the torch build
        return f"torch.compile unavailable ({error})"
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile (dynamo) is not supported on this Python"
    cxx = os.environ.get("CXX") or next((c for c in inductor_config.cpp.cxx if c), None) or "g++"
    if shutil.which(cxx) is None and shutil.which("g++") is None and shutil.which("c++") is None:
        return f"no C++ compiler ({cxx!r} not found): inductor's CPU code needs one"
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except ImportError:
        pass
    except Exception as error:  # pragma: no cover - depends on the machine
        return f"inductor finds no working C++ compiler ({error})"
    return None


needs_compiler = pytest.mark.skipif(compiler_problem() is not None,
                                    reason=str(compiler_problem()))


def problem(seed: int = 0):
    """A small BN CNN after one real SGD step (momentum buffers and BN statistics exist), a
    training batch and a probe batch, float32."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = SmallCNN(in_channels=3, num_classes=10, width=8)
    x = torch.randn(B, 3, SIDE, SIDE, generator=gen)
    y = torch.randint(0, 10, (B,), generator=gen)
    xp = torch.randn(PROBE, 3, SIDE, SIDE, generator=gen)
    yp = torch.arange(PROBE) % 10
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad()
    return model, opt, x, y, xp, yp


def iegkit_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if str(w.message).startswith("iegkit")]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@needs_compiler
def test_compiled_tangent_is_float32_rounding_of_the_exact_tangent():
    model, opt, x, _, xp, yp = problem()
    tau, _ = tangent_module.probe_tangent(model, opt, xp, yp)
    logits, eager, fallback = tangent_module.logit_tangent(model, tau, x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # (not "error": torch's own warnings must not abort inductor)
        c_logits, compiled, c_fallback = tangent_module.logit_tangent(model, tau, x, compile=True)
        again = tangent_module.logit_tangent(model, tau, x, compile=True)[1]  # cached graph
    assert not iegkit_warnings(caught)  # neither a compile failure nor a mismatch
    assert not fallback and not c_fallback
    assert model not in tangent_module._COMPILE_FAILURES
    # the exact tangent at the same point: the same float32 weights, tau and inputs, in float64
    model64 = copy.deepcopy(model).double()
    _, exact, _ = tangent_module.logit_tangent(model64, {k: v.double() for k, v in tau.items()},
                                            x.double())
    eager_error, compiled_error = relative(eager, exact), relative(compiled, exact)
    assert compiled_error <= max(10 * eager_error, 1e-6), (eager_error, compiled_error)
    assert relative(compiled, eager) <= 1e-4
    assert relative(c_logits, logits) <= 1e-4
    assert torch.equal(again, compiled)  # deterministic given the graph
    assert compiled.dtype == torch.float32 and compiled.shape == (B, 10)


@needs_compiler
def test_compiled_pipeline_gives_the_eager_meta_weights():
    model, opt, x, y, xp, yp = problem()
    twin, twin_opt = copy.deepcopy((model, opt))
    eager = recipes.l2r(model, opt)
    compiled = recipes.l2r(twin, twin_opt)
    assert not eager.compile_tangent
    compiled.compile_tangent = True
    assert compiled.plan.compile_tangent
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(2):  # the second step also checks that the real steps stay in sync
            outs = []
            for pipe, o in ((eager, opt), (compiled, twin_opt)):
                out = pipe(x, y, xp, yp, step=step)
                o.zero_grad()
                out.loss.backward()
                o.step()
                outs.append(out)
            w, wc = outs[0].weights, outs[1].weights
            # weights = relu(-g) / sum: the tangents' 1e-7 relative rounding moves them by as much
            assert float((wc - w).abs().max()) <= 1e-4 * float(w.abs().max())
            assert torch.equal(wc > 0, w > 0) or float((wc - w).abs().max()) <= 1e-6
            assert float((outs[1].loss - outs[0].loss).abs()) <= 1e-4 * float(outs[0].loss.abs())
    assert not iegkit_warnings(caught)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6)


def test_compile_is_off_by_default_and_threaded_through_compose(monkeypatch):
    def never():
        raise AssertionError("compiled although compile_tangent is off")

    monkeypatch.setattr(tangent_module, "_compiled_dual_logits", never)
    model, opt, x, y, xp, yp = problem()
    pipe = compose(MetaReweighter(), model=model, optimizer=opt)
    assert pipe.plan.compile_tangent is False and pipe.compile_tangent is False
    pipe(x, y, xp, yp, step=0)
    on = compose(MetaReweighter(), model=model, optimizer=opt, compile_tangent=True)
    assert on.compile_tangent is True


def test_a_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch):
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found in "
                           "torch._inductor.config.cpp.cxx: (None, 'g++')")

    monkeypatch.setattr(tangent_module, "_compiled_dual_logits", lambda: broken)
    model, opt, x, y, xp, yp = problem()
    reference = recipes.l2r(*copy.deepcopy((model, opt)))(x, y, xp, yp, step=0).weights
    pipe = compose(MetaReweighter(), model=model, optimizer=opt, compile_tangent=True)
    with pytest.warns(RuntimeWarning, match="compiled tangent pass.*InvalidCxxCompiler"):
        out = pipe(x, y, xp, yp, step=0)
    assert torch.equal(out.weights, reference)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per model; the compiler is not tried again
        again = pipe(x, y, xp, yp, step=1)
    assert torch.equal(again.weights, reference) and len(calls) == 1


def test_a_compiled_pass_that_disagrees_with_eager_is_not_used(monkeypatch):
    def drops_the_tangent(model, params, tangents, inputs, buffers):
        logits, u = tangent_module._dual_logits(model, params, tangents, inputs, buffers)
        return logits, torch.zeros_like(u)  # what a compiler that loses the dual numbers returns

    monkeypatch.setattr(tangent_module, "_compiled_dual_logits", lambda: drops_the_tangent)
    model, opt, x, _, xp, yp = problem()
    tau, _ = tangent_module.probe_tangent(model, opt, xp, yp)
    _, eager, _ = tangent_module.logit_tangent(model, tau, x)
    with pytest.warns(RuntimeWarning, match="differs from the eager pass"):
        _, u, _ = tangent_module.logit_tangent(model, tau, x, compile=True)
    assert torch.equal(u, eager)
    assert torch.equal(tangent_module.logit_tangent(model, tau, x, compile=True)[1], eager)


def test_a_real_error_of_the_model_is_raised_not_hidden(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("compiler exploded")

    monkeypatch.setattr(tangent_module, "_compiled_dual_logits", lambda: broken)
    model, opt, x, _, xp, yp = problem()
    tau, _ = tangent_module.probe_tangent(model, opt, xp, yp)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError, match="channels|shape|size"):
            tangent_module.logit_tangent(model, tau, x[:, :2], compile=True)  # 2 channels, not 3
    assert model not in tangent_module._COMPILE_FAILURES


def test_under_autocast_the_tangent_pass_runs_eagerly(monkeypatch):
    def never():
        raise AssertionError("forward-mode AD under autocast does not compile")

    monkeypatch.setattr(tangent_module, "_compiled_dual_logits", never)
    monkeypatch.setattr(tangent_module, "_WARNED_AUTOCAST", False)
    model, opt, x, _, xp, yp = problem()
    tau, _ = tangent_module.probe_tangent(model, opt, xp, yp)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, eager, _ = tangent_module.logit_tangent(model, tau, x)
        with pytest.warns(RuntimeWarning, match="autocast"):
            _, u, _ = tangent_module.logit_tangent(model, tau, x, compile=True)
    assert torch.equal(u, eager)
    assert model not in tangent_module._COMPILE_FAILURES  # compiled again outside autocast


# --- A working compiled pass, with a stand-in for torch.compile -----------------------------------
# Found by mutation testing (docs/mutation.md). The tests above cover a failing and a disagreeing
# compiled pass; here the stand-in agrees with the eager pass up to "compiler rounding" (a relative
# 1e-9, or more where a tolerance is tested), so the contract of a working compiled pass is checked
# without a compiler: the first use per input shape and mode is checked against the eager pass,
# later uses are not, a model with active dropout is never compared, and the tolerance depends on
# the dtype.


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
    eager_dual_logits = tangent_module._dual_logits
    counts = {"eager": 0, "compiled": 0}
    settings = {"rel": 1e-9}

    def counting_eager(*args, **kwargs):
        counts["eager"] += 1
        return eager_dual_logits(*args, **kwargs)

    def compiled(model, params, tangents, inputs, buffers):
        counts["compiled"] += 1
        logits, u = eager_dual_logits(model, params, tangents, inputs, buffers)
        return logits, u * (1 + settings["rel"])

    monkeypatch.setattr(tangent_module, "_dual_logits", counting_eager)
    monkeypatch.setattr(tangent_module, "_compiled_dual_logits", lambda: compiled)
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
    assert model not in tangent_module._COMPILE_FAILURES


def test_with_active_dropout_the_compiled_pass_is_not_compared(compiled_stand_in):
    counts, _ = compiled_stand_in
    model, tau, x = _problem(dropout=0.5)
    logit_tangent(model, tau, x, compile=True)
    assert counts == {"eager": 0, "compiled": 1}  # masks differ: nothing to compare
    logit_tangent(model, tau, x, compile=True, dropout=False)  # dropout off: compared
    assert counts == {"eager": 1, "compiled": 2}


@pytest.mark.parametrize("scale", [1.0, 1e-3, 1e3])
@pytest.mark.parametrize("dtype,rel,used", [(torch.float32, 5e-3, True),
                                            (torch.float32, 5e-2, False),
                                            (torch.float64, 5e-7, True),
                                            (torch.float64, 5e-6, False),
                                            (torch.bfloat16, 5e-2, True),
                                            (torch.bfloat16, 0.5, False)])
def test_the_check_tolerance_follows_the_dtype(compiled_stand_in, dtype, rel, used, scale):
    """float32: 1e-2 relative L2 (reassociation on deep nets); float64: 1e-6; any other dtype
    (bfloat16, float16): 1e-1. Relative to the eager u: the same decision at any scale of tau."""
    counts, settings = compiled_stand_in
    settings["rel"] = rel
    model, tau, x = _problem(dtype)
    tau = {name: t * scale for name, t in tau.items()}
    _, eager, _ = logit_tangent(model, tau, x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, u, _ = logit_tangent(model, tau, x, compile=True)
    iegkit_warnings = [w for w in caught if "compiled tangent pass" in str(w.message)]
    if used:
        assert torch.equal(u, eager * (1 + rel)) and not iegkit_warnings
        assert model not in tangent_module._COMPILE_FAILURES
    else:
        assert torch.equal(u, eager) and len(iegkit_warnings) == 1
        assert "differs from the eager pass" in str(iegkit_warnings[0].message)
        assert model in tangent_module._COMPILE_FAILURES
        logit_tangent(model, tau, x, compile=True)
        assert counts["compiled"] == 1  # not tried again for this model


# --- mutation testing (docs/mutation.md): the warnings, overflow, buffers, every JVP pass ---------
# The compile-failure and autocast warnings are matched exactly (like tests/test_errors.py); the
# compiled pass must leave BatchNorm statistics alone, skip the check where the eager pass
# overflows, and serve the pseudo-label views' JVPs too.


@pytest.mark.parametrize("error,reason", [
    (RuntimeError("\n  first line  \n\n second line\nthird line"),
     "RuntimeError: first line second line"),  # the first two non-blank lines, stripped
    (ValueError("A" * 200 + "\n" + "B" * 200),
     "ValueError: " + ("A" * 200 + " " + "B" * 200)[:300]),  # at most 300 characters
], ids=["lines", "long"])
def test_the_compile_failure_warning_gives_the_model_and_the_error(monkeypatch, error, reason):
    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(tangent_module, "_compiled_dual_logits", lambda: broken)
    model, tau, x = _problem()
    with pytest.warns(RuntimeWarning, match="^" + re.escape(
            f"iegkit: the compiled tangent pass (compile_tangent=True) is not used for Sequential: "
            f"{reason}. The look-ahead runs it eagerly for this model (the same exact "
            "meta-gradients, not sped up). torch.compile needs a C++ compiler on CPU (Triton on "
            "CUDA).") + "$"):
        logit_tangent(model, tau, x, compile=True)
    assert tangent_module._COMPILE_FAILURES[model] == reason  # benchmarks/meta_step.py prints it


def test_the_autocast_warning_is_given_once_and_says_why(compiled_stand_in, monkeypatch):
    counts, _ = compiled_stand_in
    monkeypatch.setattr(tangent_module, "_WARNED_AUTOCAST", False)
    model, tau, x = _problem()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.warns(RuntimeWarning, match="^" + re.escape(
                "iegkit: compile_tangent=True is not used under torch.autocast (forward-mode AD "
                "does not compile with autocast); the tangent pass runs eagerly") + "$"):
            logit_tangent(model, tau, x, compile=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once per process, not once per call
            logit_tangent(model, tau, x, compile=True)
    assert counts["compiled"] == 0


@pytest.mark.filterwarnings("ignore:torch.is_autocast_cpu_enabled:DeprecationWarning")
def test_autocast_is_detected_with_the_api_of_torch_before_2_4(compiled_stand_in, monkeypatch):
    """torch < 2.4 (supported: torch>=2.1) has is_autocast_enabled() for CUDA only and
    is_autocast_cpu_enabled() for the CPU."""
    counts, _ = compiled_stand_in
    monkeypatch.setattr(tangent_module, "_WARNED_AUTOCAST", True)
    real = torch.is_autocast_enabled
    model, tau, x = _problem()

    def before_2_4(*device_type):
        if device_type:
            raise TypeError("is_autocast_enabled() takes 0 positional arguments but 1 was given")
        return real("cuda")

    with torch.autocast("cpu", dtype=torch.bfloat16), monkeypatch.context() as patch:
        _, eager, _ = logit_tangent(model, tau, x)
        patch.setattr(torch, "is_autocast_enabled", before_2_4)
        _, u, _ = logit_tangent(model, tau, x, compile=True)
    assert counts["compiled"] == 0 and torch.equal(u, eager)  # the eager pass


class OverflowingLogits(torch.nn.Module):
    """A linear layer whose last logit is +inf (a constant buffer): u = J tau stays finite."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(6, 4)
        self.register_buffer("shift", torch.tensor([0.0, 0.0, 0.0, float("inf")]))

    def forward(self, x):
        return self.linear(x) + self.shift


def test_where_the_eager_pass_overflows_it_is_used_and_checked_again(compiled_stand_in):
    counts, settings = compiled_stand_in
    settings["rel"] = 1e-3
    model = OverflowingLogits()
    tau = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    _, eager, _ = logit_tangent(model, tau, x)
    assert bool(torch.isfinite(eager).all())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to compare: no warning
        for calls in (1, 2):
            logits, u, _ = logit_tangent(model, tau, x, compile=True)
            assert torch.equal(u, eager) and bool(torch.isinf(logits[:, 3]).all())
            assert counts == {"eager": 1 + calls, "compiled": calls}  # checked on every use
    assert model not in tangent_module._COMPILE_FAILURES


def test_the_compiled_pass_leaves_the_batchnorm_statistics_alone(compiled_stand_in):
    model, tau, x = _problem()
    before = {n: b.clone() for n, b in model.named_buffers()}
    for _ in range(2):  # checked against eager, then not
        logit_tangent(model, tau, x, compile=True)
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), name


def test_compile_tangent_also_compiles_the_pseudo_label_views(compiled_stand_in):
    counts, _ = compiled_stand_in
    model, _, x = _problem()
    gen = torch.Generator().manual_seed(2)
    xp, yp = torch.randn(5, 6, generator=gen), torch.tensor([0, 1, 2, 3, 0])
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    lookahead_through_two_views(model, x, y, xp, yp, 0.0, LookaheadOptions(compile_tangent=True))
    # the training batch's JVP and the view's, both compiled; one check for their common shape
    assert counts == {"eager": 1, "compiled": 2}
