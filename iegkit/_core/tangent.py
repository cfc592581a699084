"""The tangent passes of the look-ahead: tau = D * grad L_p(theta') (``probe_tangent``) and
u = J tau, the forward-mode JVP of the training logits (``logit_tangent``).

They run the user's model, so they hold what a pure function cannot: forward hooks that name the
layer a forward-mode failure happened in, a per-model memory of that failure (the double-backward
fallback, warned once), and the opt-in torch.compile cache with its eager cross-check. The math
they feed is in ``iegkit.functional.meta``.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from iegkit._core.checks import check_finite_loss
from iegkit._core.modes import buffers_snapshot, math_attention, train_mode
from iegkit.functional.distributed import all_reduce_mean
from iegkit.functional.lookahead import trainable_parameters, virtual_step
from iegkit.functional.losses import check_logits, check_targets

__all__ = ["logit_tangent", "probe_tangent"]


def probe_tangent(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    probe_inputs: Tensor,
    probe_targets: Tensor,
    virtual_grads: list[Tensor] | None = None,
    *,
    lr: float | None = None,
    dropout: bool = True,
    process_group: object | None = None,
) -> tuple[dict[str, Tensor], Tensor]:
    """tau = D * grad L_p(theta'), keyed by parameter name, and L_p(theta') (detached).

    With a ``process_group`` the probe gradient is averaged over the processes (one bucketed
    all-reduce): the gradient of the mean probe loss over the union of equal-sized probe batches.

    ``virtual_grads`` is the gradient of sum_i omega0_i l_i for each trainable parameter (in the order
    of ``trainable_parameters``), or None when omega0 = 0 (then it is zero).
    """
    entries = trainable_parameters(model, optimizer)
    names = [n for n, _, _ in entries]
    params = [p for _, p, _ in entries]
    groups = [g for _, _, g in entries]
    if virtual_grads is None:
        virtual_grads = [torch.zeros_like(p) for p in params]
    step = virtual_step(optimizer, params, virtual_grads, groups, lr=lr)
    lookahead = {n: q.detach().requires_grad_(True) for n, q in zip(names, step.params)}
    with train_mode(model, dropout=dropout), torch.enable_grad():
        probe_logits = check_logits(functional_call(
            model, {**buffers_snapshot(model), **lookahead}, (probe_inputs,)
        ))
        check_targets("probe_targets", probe_targets, probe_inputs.shape[0], probe_logits.shape[-1])
        probe_loss = F.cross_entropy(probe_logits, probe_targets)
        check_finite_loss("probe loss L_p(theta')", probe_loss)
        probe_grads = torch.autograd.grad(probe_loss, list(lookahead.values()), allow_unused=True)
    probe_grads = all_reduce_mean(
        [torch.zeros_like(p) if g is None else g for p, g in zip(params, probe_grads)],
        process_group)
    tangents = {
        n: (torch.zeros_like(p) if g is None else g * s)
        for n, p, g, s in zip(names, params, probe_grads, step.scale)
    }
    return tangents, probe_loss.detach()


_FORWARD_AD_FAILURES: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()


def _is_forward_ad_failure(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, (NotImplementedError, RuntimeError)) and (
        "forward ad" in text or "forward-mode" in text or "forward mode" in text or "jvp" in text
        or "functorch" in text
    )


@contextlib.contextmanager
def _track_current_layer(model: torch.nn.Module, stack: list[str]) -> Iterator[None]:
    """Record the innermost module being run, so a failure can name the layer."""
    handles = []
    for name, module in model.named_modules():
        def pre(_m, _a, name=name):
            stack.append(name or type(model).__name__)
        def post(_m, _a, _o):
            stack.pop()
        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _warn_fallback(model: torch.nn.Module, layer: str, error: BaseException) -> None:
    if model in _FORWARD_AD_FAILURES:
        return
    _FORWARD_AD_FAILURES[model] = layer
    module = model.get_submodule(layer) if layer and layer != type(model).__name__ else model
    warnings.warn(
        f"iegkit: layer '{layer}' ({type(module).__name__}) has no forward-mode (JVP) formula "
        f"({error}); the meta step falls back to double backward for this model, which is exact "
        "but slower and uses more memory. Give its autograd.Function a jvp() to use the fast path.",
        RuntimeWarning,
        stacklevel=3,
    )


def _dual_logits(model, params: Mapping[str, Tensor], tangents: Mapping[str, Tensor],
                 inputs: Tensor, buffers: Mapping[str, Tensor] | None) -> tuple[Tensor, Tensor]:
    with fwAD.dual_level():
        duals = {n: fwAD.make_dual(params[n], tangents[n]) for n in tangents}
        overrides = duals if buffers is None else {**buffers, **duals}
        out = functional_call(model, overrides, (inputs,))
        logits, tangent = fwAD.unpack_dual(out)
    if tangent is None:  # the logits do not depend on any trainable parameter
        tangent = torch.zeros_like(logits)
    return logits, tangent


def _double_backward_tangent(model, params: Mapping[str, Tensor], tangents: Mapping[str, Tensor],
                             inputs: Tensor) -> tuple[Tensor, Tensor]:
    # u = J tau as the gradient, w.r.t. a dummy cotangent c, of <J^T c, tau> (double backward).
    primals = {n: params[n].detach().requires_grad_(True) for n in tangents}
    with torch.enable_grad():
        logits = functional_call(model, {**buffers_snapshot(model), **primals}, (inputs,))
        cotangent = torch.zeros_like(logits, requires_grad=True)
        grads = torch.autograd.grad(
            logits, list(primals.values()), grad_outputs=cotangent, create_graph=True,
            allow_unused=True,
        )
        inner = sum((g * tangents[n]).sum() for n, g in zip(primals, grads) if g is not None)
        (u,) = torch.autograd.grad(inner, cotangent)
    return logits.detach(), u.detach()


_COMPILE_FAILURES: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()
_COMPILE_CHECKED: "weakref.WeakKeyDictionary[torch.nn.Module, set]" = weakref.WeakKeyDictionary()
_COMPILED_DUAL_LOGITS: Callable | None = None
_WARNED_AUTOCAST = False
#: largest relative L2 difference between the compiled and the eager u = J tau on a first use:
#: float32 rounding gives up to 6e-4 on ResNet-29 (both passes differ from float64 by that much,
#: docs/results.md); a tangent that a torch version drops or mangles differs by O(1).
_COMPILE_CHECK_TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-2}


def _dual_logits_entry(model, params, tangents, inputs, buffers):
    # The function torch.compile sees (its own code object, so the eager _dual_logits never runs
    # through dynamo's cache): the model is an argument, its parameters, tangents, buffers and inputs
    # are graph inputs; dynamo keeps one graph per module structure, mode and input shape (a new
    # instance of the same architecture reuses it). The dual numbers are made inside the graph.
    return _dual_logits(model, params, tangents, inputs, buffers)


def _compiled_dual_logits() -> Callable:
    global _COMPILED_DUAL_LOGITS
    if _COMPILED_DUAL_LOGITS is None:
        _COMPILED_DUAL_LOGITS = torch.compile(_dual_logits_entry, fullgraph=True, dynamic=False)
    return _COMPILED_DUAL_LOGITS


def _warn_compile_failure(model: torch.nn.Module, reason: str) -> None:
    if model in _COMPILE_FAILURES:
        return
    _COMPILE_FAILURES[model] = reason
    warnings.warn(
        f"iegkit: the compiled tangent pass (compile_tangent=True) is not used for "
        f"{type(model).__name__}: {reason}. The look-ahead runs it eagerly for this model (the same "
        "exact meta-gradients, not sped up). torch.compile needs a C++ compiler on CPU (Triton on "
        "CUDA).",
        RuntimeWarning,
        stacklevel=5,
    )


def _has_active_dropout(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.training and m.p > 0
               for m in model.modules())


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


def _under_autocast(inputs: Tensor) -> bool:
    """Forward-mode AD under autocast does not trace (torch 2.13: the casts give tangents another
    dtype than their primals); the pass runs eagerly under autocast (one warning), compiled
    otherwise."""
    global _WARNED_AUTOCAST
    if not _autocast_enabled(inputs.device.type):
        return False
    if not _WARNED_AUTOCAST:
        _WARNED_AUTOCAST = True
        warnings.warn("iegkit: compile_tangent=True is not used under torch.autocast (forward-mode "
                      "AD does not compile with autocast); the tangent pass runs eagerly",
                      RuntimeWarning, stacklevel=5)
    return True


def _eager_dual_logits(model: torch.nn.Module, params: Mapping[str, Tensor],
                       tangents: Mapping[str, Tensor], inputs: Tensor,
                       ) -> tuple[Tensor, Tensor] | None:
    """The eager pass, as the reference of a compiled first use or the explanation of a compile
    failure; None where it fails too (``logit_tangent`` reruns it, and raises or falls back to
    double backward there)."""
    try:
        with torch.no_grad():
            return _dual_logits(model, params, tangents, inputs, buffers_snapshot(model))
    except (RuntimeError, NotImplementedError):
        return None


def _eager_after_compile_failure(model: torch.nn.Module, params: Mapping[str, Tensor],
                                 tangents: Mapping[str, Tensor], inputs: Tensor, error: Exception,
                                 ) -> tuple[Tensor, Tensor] | None:
    eager = _eager_dual_logits(model, params, tangents, inputs)
    if eager is not None:  # else a real error of the model: the eager path raises it
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        _warn_compile_failure(model, f"{type(error).__name__}: {' '.join(lines[:2])[:300]}")
    return eager


def _checked_against_eager(model: torch.nn.Module, params: Mapping[str, Tensor],
                           tangents: Mapping[str, Tensor], inputs: Tensor,
                           compiled: tuple[Tensor, Tensor], checked: set, key: tuple,
                           ) -> tuple[Tensor, Tensor] | None:
    """The compiled (logits, u) where it agrees with the eager pass (then ``key`` is not checked
    again), else the eager one and a one-time warning."""
    eager = _eager_dual_logits(model, params, tangents, inputs)
    if eager is None:
        return None
    eager_logits, eager_u = eager
    if not (bool(torch.isfinite(eager_u).all()) and bool(torch.isfinite(eager_logits).all())):
        return eager  # an overflow: nothing to compare; check on the next use
    tolerance = _COMPILE_CHECK_TOLERANCE.get(eager_u.dtype, 1e-1)
    scale = eager_u.float().norm().clamp_min(torch.finfo(torch.float32).tiny)
    difference = float((compiled[1].float() - eager_u.float()).norm() / scale)
    if difference <= tolerance:  # NaN in the compiled u fails too
        checked.add(key)
        return compiled
    _warn_compile_failure(model, f"it differs from the eager pass by {difference:.2e} (relative "
                                 f"L2; tolerance {tolerance:g})")
    return eager


def _compiled_logit_tangent(model: torch.nn.Module, params: Mapping[str, Tensor],
                            tangents: Mapping[str, Tensor], inputs: Tensor,
                            ) -> tuple[Tensor, Tensor] | None:
    """(logits, u) from the compiled forward-mode pass, or None where the eager pass must run.

    The first use per input shape is checked against the eager pass (a torch version that drops or
    mangles the tangent in compiled code would otherwise give silently wrong meta-gradients); a
    failure or a mismatch warns once and leaves the model on the eager pass.
    """
    if model in _COMPILE_FAILURES or _under_autocast(inputs):
        return None
    try:
        with torch.no_grad():
            compiled = _compiled_dual_logits()(model, params, tangents, inputs,
                                               buffers_snapshot(model))
    except Exception as error:  # noqa: BLE001 - a real error of the model raises in the eager pass
        return _eager_after_compile_failure(model, params, tangents, inputs, error)
    key = (tuple(inputs.shape), inputs.dtype, str(inputs.device),
           tuple(m.training for m in model.modules()))
    checked = _COMPILE_CHECKED.setdefault(model, set())
    if key in checked or _has_active_dropout(model):  # dropout: masks differ, nothing to compare
        return compiled
    return _checked_against_eager(model, params, tangents, inputs, compiled, checked, key)


def logit_tangent(
    model: torch.nn.Module,
    tangents: Mapping[str, Tensor],
    inputs: Tensor,
    *,
    dropout: bool = True,
    compile: bool = False,
) -> tuple[Tensor, Tensor, bool]:
    """(logits, u = J tau, used_fallback) at the model's current parameters, leaving it untouched.

    One forward-mode pass; double backward (with a one-time warning naming the layer) where a layer
    has no forward-mode formula. Attention runs on its math backend here (``math_attention``).

    ``compile=True`` runs the same forward-mode pass through ``torch.compile`` (one graph; compiled
    on first use and cached per module structure, mode and input shape; the first use per shape is
    checked against the eager pass). It computes the same J tau up to float32 reassociation
    (docs/results.md). Where compiling fails (e.g. no C++ compiler) or disagrees, the pass runs
    eagerly for this model from then on, with a one-time warning; under ``torch.autocast`` it runs
    eagerly.
    """
    params = {n: p.detach() for n, p in model.named_parameters()}
    with train_mode(model, dropout=dropout), math_attention():
        if compile and model not in _FORWARD_AD_FAILURES:
            compiled = _compiled_logit_tangent(model, params, tangents, inputs)
            if compiled is not None:
                return compiled[0], compiled[1], False
        if model not in _FORWARD_AD_FAILURES:
            stack: list[str] = []
            try:
                with torch.no_grad(), _track_current_layer(model, stack):
                    logits, u = _dual_logits(model, params, tangents, inputs,
                                             buffers_snapshot(model))
                return logits, u, False
            except (RuntimeError, NotImplementedError) as error:
                if not _is_forward_ad_failure(error):
                    raise
                _warn_fallback(model, stack[-1] if stack else "", error)
        logits, u = _double_backward_tangent(model, params, tangents, inputs)
        return logits, u, True

