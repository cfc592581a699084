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
import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F

from iegkit import MetaReweighter, compose, recipes
from iegkit.functional import meta as meta_module
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
    tau, _ = meta_module.probe_tangent(model, opt, xp, yp)
    logits, eager, fallback = meta_module.logit_tangent(model, tau, x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # (not "error": torch's own warnings must not abort inductor)
        c_logits, compiled, c_fallback = meta_module.logit_tangent(model, tau, x, compile=True)
        again = meta_module.logit_tangent(model, tau, x, compile=True)[1]  # cached graph
    assert not iegkit_warnings(caught)  # neither a compile failure nor a mismatch
    assert not fallback and not c_fallback
    assert model not in meta_module._COMPILE_FAILURES
    # the exact tangent at the same point: the same float32 weights, tau and inputs, in float64
    model64 = copy.deepcopy(model).double()
    _, exact, _ = meta_module.logit_tangent(model64, {k: v.double() for k, v in tau.items()},
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

    monkeypatch.setattr(meta_module, "_compiled_dual_logits", never)
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

    monkeypatch.setattr(meta_module, "_compiled_dual_logits", lambda: broken)
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
        logits, u = meta_module._dual_logits(model, params, tangents, inputs, buffers)
        return logits, torch.zeros_like(u)  # what a compiler that loses the dual numbers returns

    monkeypatch.setattr(meta_module, "_compiled_dual_logits", lambda: drops_the_tangent)
    model, opt, x, _, xp, yp = problem()
    tau, _ = meta_module.probe_tangent(model, opt, xp, yp)
    _, eager, _ = meta_module.logit_tangent(model, tau, x)
    with pytest.warns(RuntimeWarning, match="differs from the eager pass"):
        _, u, _ = meta_module.logit_tangent(model, tau, x, compile=True)
    assert torch.equal(u, eager)
    assert torch.equal(meta_module.logit_tangent(model, tau, x, compile=True)[1], eager)


def test_a_real_error_of_the_model_is_raised_not_hidden(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("compiler exploded")

    monkeypatch.setattr(meta_module, "_compiled_dual_logits", lambda: broken)
    model, opt, x, _, xp, yp = problem()
    tau, _ = meta_module.probe_tangent(model, opt, xp, yp)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError, match="channels|shape|size"):
            meta_module.logit_tangent(model, tau, x[:, :2], compile=True)  # 2 channels, not 3
    assert model not in meta_module._COMPILE_FAILURES


def test_under_autocast_the_tangent_pass_runs_eagerly(monkeypatch):
    def never():
        raise AssertionError("forward-mode AD under autocast does not compile")

    monkeypatch.setattr(meta_module, "_compiled_dual_logits", never)
    monkeypatch.setattr(meta_module, "_WARNED_AUTOCAST", False)
    model, opt, x, _, xp, yp = problem()
    tau, _ = meta_module.probe_tangent(model, opt, xp, yp)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, eager, _ = meta_module.logit_tangent(model, tau, x)
        with pytest.warns(RuntimeWarning, match="autocast"):
            _, u, _ = meta_module.logit_tangent(model, tau, x, compile=True)
    assert torch.equal(u, eager)
    assert model not in meta_module._COMPILE_FAILURES  # compiled again outside autocast
