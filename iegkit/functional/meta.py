"""The exact meta step without second-order backward (L2R / IEG meta-gradients).

Definitions (B training examples, C classes; IEG eq. 2-4, L2R eq. 6-10):

    t_i(lambda)   = lambda_i onehot(y_i) + (1 - lambda_i) q_i          (onehot(y_i) without relabeling)
    l_i(theta)    = CE(t_i, f(x_i; theta))                             (BatchNorm on batch statistics)
    theta'        = U(theta, sum_i omega_i grad l_i)                   (one step of the user's optimizer)
    L_p(theta')   = mean_j CE(onehot(y^p_j), f(x^p_j; theta'))

Because U is element-wise, d theta'/d g = D (diagonal), and the gradient of the weighted loss is
J^T (omega * r) with J the Jacobian of the batch logits and r_i = softmax(z_i) - t_i. Hence, with
tau = D * grad L_p(theta') and u = J tau (one forward-mode JVP of the batch logits):

    dL_p/d omega_i  = <u_i, softmax(z_i) - t_i>
    dL_p/d lambda_i = omega_i <u_i, q_i - onehot(y_i)>

This is exact, including train-mode BatchNorm (J is the Jacobian of the whole batch function). Where a
layer has no forward-mode formula the same u is obtained by double backward (a one-time warning).
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from iegkit.errors import NonFiniteLossError
from iegkit.functional.distributed import all_reduce_mean
from iegkit.functional.lookahead import trainable_parameters, virtual_step
from iegkit.functional.losses import check_logits, check_targets, mix_targets, soft_cross_entropy

__all__ = [
    "MetaGradients",
    "PseudoLabelGraph",
    "lookahead_meta_gradients",
    "meta_gradients",
    "probe_tangent",
    "logit_tangent",
    "contract_meta_gradients",
    "logit_gradient",
    "InnerLoss",
]

#: A per-example training loss ``(logits (B, C), targets (B,)) -> (B,)`` whose weights are learned.
InnerLoss = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class MetaGradients:
    """dL_p/d omega (``weight``, shape (B,)) and dL_p/d lambda (``label``, (B,) or None).

    ``probe_loss`` is L_p(theta'), detached; ``used_fallback`` tells whether double backward was used.
    ``finite`` is False when the meta-gradients overflowed (float16 forwards): ``weight`` and
    ``label`` are then -1 everywhere, so the step falls back to uniform weights and kept labels.
    """

    weight: Tensor
    label: Tensor | None
    probe_loss: Tensor
    used_fallback: bool = False
    finite: bool = True


@contextlib.contextmanager
def train_mode(model: torch.nn.Module, *, dropout: bool = True) -> Iterator[None]:
    """Run the meta passes with BatchNorm on batch statistics, restoring each module's mode after.
    ``dropout=False`` keeps dropout layers and nn.MultiheadAttention's attention dropout off
    (deterministic meta passes)."""
    modes = [(m, m.training) for m in model.modules()]
    # nn.MultiheadAttention's attention dropout is a float, not a dropout module: it is zeroed
    # rather than put in eval mode (which would enable its fast path, which has no JVP formula).
    attention = [] if dropout else [(m, m.dropout) for m in model.modules()
                                    if isinstance(m, torch.nn.MultiheadAttention)]
    model.train()
    if not dropout:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.dropout._DropoutNd):
                m.eval()
        for m, _ in attention:
            m.dropout = 0.0
    try:
        yield
    finally:
        for m, was_training in modes:
            m.training = was_training
        for m, rate in attention:
            m.dropout = rate


def _math_attention_factory() -> Callable[[], contextlib.AbstractContextManager]:
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch 2.1-2.2: the same process-wide flags, set by the older context
        legacy = getattr(torch.backends.cuda, "sdp_kernel", None)
        if legacy is None:
            return contextlib.nullcontext
        return lambda: legacy(enable_flash=False, enable_mem_efficient=False, enable_math=True)
    return lambda: sdpa_kernel(SDPBackend.MATH)


#: ``with math_attention():`` runs F.scaled_dot_product_attention on its math backend. The passes
#: that are forward-differentiated (the JVP) or differentiated twice (its double-backward fallback)
#: need it: the fused kernels (flash on CUDA and CPU, memory-efficient, cuDNN) have no
#: forward-mode formula and a backward that cannot be differentiated. Every other pass, the
#: real forward included, keeps the user's backend. The flags are process-wide while it is held.
math_attention = _math_attention_factory()


def buffers_snapshot(model: torch.nn.Module) -> dict[str, Tensor]:
    """Fresh copies of every buffer, so that a pass's BatchNorm statistics updates land nowhere."""
    return {name: b.clone() for name, b in model.named_buffers()}


def _check_finite(name: str, loss: Tensor) -> None:
    if not bool(torch.isfinite(loss)):
        raise NonFiniteLossError(
            f"{name}: loss is {float(loss.detach())}; check the inputs and the learning rate "
            "(the meta step needs a finite loss)"
        )


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
        _check_finite("probe loss L_p(theta')", probe_loss)
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
        stacklevel=4,
    )


def _has_active_dropout(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.training and m.p > 0
               for m in model.modules())


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


def _compiled_logit_tangent(model: torch.nn.Module, params: Mapping[str, Tensor],
                            tangents: Mapping[str, Tensor], inputs: Tensor,
                            ) -> tuple[Tensor, Tensor] | None:
    """(logits, u) from the compiled forward-mode pass, or None where the eager pass must run.

    The first use per input shape is checked against the eager pass (a torch version that drops or
    mangles the tangent in compiled code would otherwise give silently wrong meta-gradients); a
    failure or a mismatch warns once and leaves the model on the eager pass.
    """
    global _WARNED_AUTOCAST
    if model in _COMPILE_FAILURES:
        return None
    if _autocast_enabled(inputs.device.type):
        # Forward-mode AD under autocast does not trace (torch 2.13: the casts give tangents another
        # dtype than their primals); the pass runs eagerly under autocast, compiled otherwise.
        if not _WARNED_AUTOCAST:
            _WARNED_AUTOCAST = True
            warnings.warn("iegkit: compile_tangent=True is not used under torch.autocast (forward-mode "
                          "AD does not compile with autocast); the tangent pass runs eagerly",
                          RuntimeWarning, stacklevel=4)
        return None
    try:
        with torch.no_grad():
            logits, u = _compiled_dual_logits()(model, params, tangents, inputs,
                                                buffers_snapshot(model))
    except Exception as error:  # noqa: BLE001 - a real error of the model raises in the eager pass
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        failure = f"{type(error).__name__}: {' '.join(lines[:2])[:300]}"
        logits = u = None
    else:
        key = (tuple(inputs.shape), inputs.dtype, str(inputs.device),
               tuple(m.training for m in model.modules()))
        checked = _COMPILE_CHECKED.setdefault(model, set())
        if key in checked or _has_active_dropout(model):  # dropout: masks differ, nothing to compare
            return logits, u
        failure = None
    try:  # the eager pass: the reference of a first use, or the explanation of a failure
        with torch.no_grad():
            eager_logits, eager_u = _dual_logits(model, params, tangents, inputs,
                                                 buffers_snapshot(model))
    except (RuntimeError, NotImplementedError):
        return None  # the eager path reruns it, and raises or falls back to double backward there
    if failure is None:
        if not (bool(torch.isfinite(eager_u).all()) and bool(torch.isfinite(eager_logits).all())):
            return eager_logits, eager_u  # an overflow: nothing to compare; check on the next use
        tolerance = _COMPILE_CHECK_TOLERANCE.get(eager_u.dtype, 1e-1)
        scale = eager_u.float().norm().clamp_min(torch.finfo(torch.float32).tiny)
        difference = float((u.float() - eager_u.float()).norm() / scale)
        if difference <= tolerance:  # NaN in the compiled u fails too
            checked.add(key)
            return logits, u
        failure = (f"it differs from the eager pass by {difference:.2e} (relative L2; tolerance "
                   f"{tolerance:g})")
    _warn_compile_failure(model, failure)
    return eager_logits, eager_u


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


def contract_meta_gradients(
    logits: Tensor,
    logit_tangents: Tensor,
    targets: Tensor,
    *,
    weight_init: Tensor,
    label_init: Tensor | None = None,
    pseudo_targets: Tensor | None = None,
    pseudo_tangents: Tensor | None = None,
    inner_loss: InnerLoss | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Closed-form contractions of u = J tau (module docstring): (dL_p/d omega, dL_p/d lambda).

    ``inner_loss``: a per-example loss l_i(z_i, y_i) other than cross-entropy (GCE, SCE, ...):
    dL_p/d omega_i = <u_i, d l_i / d z_i>, the residual softmax(z_i) - t_i of cross-entropy replaced
    by the loss's own gradient in the logits (one autograd call on B x C values; no relabeling).

    ``pseudo_tangents`` = (J_q tau), the directional derivative of the pseudo labels q(theta) along
    tau, for the official variant whose look-ahead differentiates through q: it adds
    <J_q tau, -(1 - lambda_i) log p_i> to dL_p/d omega_i and omega_i <J_q tau, log p_i> to
    dL_p/d lambda_i (the q-path of d l_i / d theta along tau).
    """
    # Under autocast (bf16/fp16 forwards) the contraction still runs in float32: it is B x C, so
    # free, and it keeps the rounding to that of the logits and tangents themselves.
    compute = torch.promote_types(logits.dtype, torch.float32)
    logits, logit_tangents = logits.detach().to(compute), logit_tangents.to(compute)
    if pseudo_tangents is not None:
        pseudo_tangents = pseudo_tangents.to(compute)
    num_classes = logits.shape[-1]
    if inner_loss is not None:
        if label_init is not None:
            raise ValueError("inner_loss: a loss other than cross-entropy has no relabeling "
                             "meta-gradient; use it without label_init")
        return (logit_tangents * logit_gradient(inner_loss, logits, targets)).sum(dim=-1), None
    onehot = F.one_hot(targets, num_classes).to(logits.dtype)
    mixed = mix_targets(targets, num_classes, label_init,
                        None if pseudo_targets is None else pseudo_targets.detach().to(logits.dtype))
    residual = torch.softmax(logits, dim=-1) - mixed.to(logits.dtype)
    weight_grad = (logit_tangents * residual).sum(dim=-1)
    if label_init is None:
        return weight_grad, None
    label_grad = weight_init * (logit_tangents * (pseudo_targets.detach() - onehot)).sum(dim=-1)
    if pseudo_tangents is not None:
        log_p = torch.log_softmax(logits, dim=-1)
        along_q = (pseudo_tangents * log_p).sum(dim=-1)
        weight_grad = weight_grad - (1.0 - label_init) * along_q
        label_grad = label_grad + weight_init * along_q
    return weight_grad, label_grad


def logit_gradient(inner_loss: InnerLoss, logits: Tensor, targets: Tensor) -> Tensor:
    """d l_i / d z_i for every example (B, C): each loss depends on its own row of logits only, so
    the gradient of their sum is the per-example gradient."""
    with torch.enable_grad():
        z = logits.detach().requires_grad_(True)
        losses = inner_loss(z, targets)
        if losses.shape != targets.shape:
            raise ValueError(f"inner_loss: expected per-example losses of shape "
                             f"{tuple(targets.shape)}, got {tuple(losses.shape)}")
        return torch.autograd.grad(losses.sum(), z)[0]


def broadcast_init(name: str, value, batch_size: int, like: Tensor) -> Tensor:
    """A scalar or (B,) initial value as a (B,) tensor, with a clear error otherwise."""
    tensor = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if tensor.dim() == 0:
        return tensor.expand(batch_size).clone()
    if tensor.shape != (batch_size,):
        raise ValueError(
            f"{name}: expected a scalar or shape ({batch_size},), got {tuple(tensor.shape)}"
        )
    return tensor.clone()


def check_meta_inputs(inputs: Tensor, targets: Tensor, probe_inputs: Tensor,
                      probe_targets: Tensor) -> None:
    if inputs.shape[0] == 0:
        raise ValueError("inputs: empty training batch")
    check_targets("targets", targets, inputs.shape[0])
    if probe_inputs.shape[0] == 0:
        raise ValueError("probe_inputs: empty probe batch; the meta step needs at least one trusted "
                         "example")
    if probe_inputs.shape[1:] != inputs.shape[1:]:
        raise ValueError(
            f"probe_inputs: expected examples of shape {tuple(inputs.shape[1:])} like inputs, got "
            f"{tuple(probe_inputs.shape[1:])}"
        )
    check_targets("probe_targets", probe_targets, probe_inputs.shape[0])


def virtual_gradients(model: torch.nn.Module, optimizer: torch.optim.Optimizer, logits: Tensor,
                      targets: Tensor, weight_init: Tensor, label_init: Tensor | None,
                      pseudo_targets: Tensor | None, *, retain_graph: bool,
                      through_pseudo_targets: bool = False,
                      inner_loss: InnerLoss | None = None) -> list[Tensor]:
    """grad_theta sum_i omega0_i l_i(theta; lambda0) from logits that carry the model's graph.

    With ``through_pseudo_targets`` the gradient also flows through ``pseudo_targets`` (which must
    then carry their graph), as in the official IEG look-ahead.
    """
    params = [p for _, p, _ in trainable_parameters(model, optimizer)]
    if pseudo_targets is not None and not through_pseudo_targets:
        pseudo_targets = pseudo_targets.detach()
    if inner_loss is not None:
        loss = (weight_init * inner_loss(logits, targets)).sum()
    else:
        mixed = mix_targets(targets, logits.shape[-1], label_init, pseudo_targets)
        loss = (weight_init * soft_cross_entropy(logits, mixed.to(logits.dtype))).sum()
    _check_finite("look-ahead loss sum_i omega0_i l_i", loss)
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


@dataclass(frozen=True)
class PseudoLabelGraph:
    """Pseudo labels as a function of view logits, for a look-ahead that differentiates through them.

    ``fn(*[logits() for _, logits in views])`` gives q with graph; ``views`` pairs each view's inputs
    (None for the training batch, whose JVP is reused) with a callable returning its logits (with
    graph, forwarded once by the caller).
    """

    fn: Callable[..., Tensor]
    views: Sequence[tuple[Tensor | None, Callable[[], Tensor]]]


def lookahead_meta_gradients(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: Tensor,
    targets: Tensor,
    probe_inputs: Tensor,
    probe_targets: Tensor,
    *,
    weight_init: Tensor,
    label_init: Tensor | None = None,
    pseudo_targets: Tensor | None = None,
    training_logits: Callable[[], Tensor] | None = None,
    pseudo_graph: PseudoLabelGraph | None = None,
    lr: float | None = None,
    dropout: bool = True,
    process_group: object | None = None,
    compile_tangent: bool = False,
    inner_loss: InnerLoss | None = None,
) -> MetaGradients:
    """The one implementation of the look-ahead: virtual gradient -> probe tangent -> logit tangent
    -> contraction (module docstring). ``weight_init``/``label_init`` are (B,) tensors.

    ``training_logits``: a callable returning the training batch's logits with graph (the caller's
    real forward, run at most once; its graph is kept for the caller's backward). None: a forward on
    a buffer snapshot where the virtual gradient needs one, and the JVP's own logits otherwise.
    ``pseudo_graph``: differentiate the look-ahead through the pseudo labels (official IEG option);
    needs ``training_logits`` and ``label_init``. ``dropout=False``: the probe pass and the JVP
    run without dropout (deterministic; the look-ahead is then that of the dropout-free network).
    ``process_group`` (DDP): the virtual gradient and the probe gradient are averaged over the
    processes (one bucketed all-reduce each), so every rank looks ahead with the global step; the
    per-example contractions stay local. With equal batches and omega0 = 1/B this is the look-ahead
    of one process on the concatenated batch (BatchNorm, if any, uses each rank's own batch).
    ``compile_tangent``: run the JVP(s) through ``torch.compile`` (``logit_tangent(compile=True)``).
    ``inner_loss``: the per-example training loss l_i(logits, targets) -> (B,) whose weights are
    learned (default: cross-entropy against the label mix); e.g. GCE (no relabeling with it).
    """
    if inner_loss is not None and label_init is not None:
        raise ValueError("inner_loss: a loss other than cross-entropy has no relabeling "
                         "meta-gradient; use it without label_init")
    through = pseudo_graph is not None and label_init is not None
    if pseudo_graph is not None and training_logits is None:
        raise ValueError("pseudo_graph: differentiating through the pseudo labels needs "
                         "training_logits (the caller's forward with graph)")
    targets_for_virtual = pseudo_targets
    if through:
        targets_for_virtual = pseudo_graph.fn(*(logits() for _, logits in pseudo_graph.views))
    virtual = None
    if bool((weight_init != 0).any()):
        if training_logits is not None:
            # The virtual gradient reuses the real forward's graph; the real backward runs later.
            virtual = virtual_gradients(model, optimizer, training_logits(), targets,
                                        weight_init, label_init, targets_for_virtual,
                                        retain_graph=True, through_pseudo_targets=through,
                                        inner_loss=inner_loss)
        else:
            with train_mode(model), torch.enable_grad():
                logits = functional_call(model, buffers_snapshot(model), (inputs,))
                _check_pseudo(pseudo_targets, logits, label_init)
                check_targets("targets", targets, inputs.shape[0], logits.shape[-1])
                virtual = virtual_gradients(model, optimizer, logits, targets, weight_init,
                                            label_init, pseudo_targets, retain_graph=False,
                                            inner_loss=inner_loss)
    if virtual is not None:
        virtual = all_reduce_mean(virtual, process_group)
    tangents, probe_loss = probe_tangent(model, optimizer, probe_inputs, probe_targets, virtual,
                                         lr=lr, dropout=dropout, process_group=process_group)
    # The JVP runs without autograd on a buffer snapshot, BEFORE the real forward where it can: a
    # JVP fused into the real forward (dual-number parameters) would save a forward but autograd
    # records every tangent operation, which more than doubles the step's peak memory.
    jvp_logits, u, fallback = logit_tangent(model, tangents, inputs, dropout=dropout,
                                            compile=compile_tangent)
    logits = jvp_logits if training_logits is None else training_logits()
    check_targets("targets", targets, inputs.shape[0], logits.shape[-1])
    _check_pseudo(pseudo_targets, logits, label_init)
    pseudo_tangents = None
    if through:
        view_tangents = [u if view is None else logit_tangent(model, tangents, view,
                                                              dropout=dropout,
                                                              compile=compile_tangent)[1]
                         for view, _ in pseudo_graph.views]
        _, pseudo_tangents = torch.func.jvp(
            pseudo_graph.fn, tuple(logits().detach() for _, logits in pseudo_graph.views),
            tuple(view_tangents),
        )
    weight, label = contract_meta_gradients(
        logits, u, targets, weight_init=weight_init, label_init=label_init,
        pseudo_targets=pseudo_targets, pseudo_tangents=pseudo_tangents, inner_loss=inner_loss,
    )
    finite = bool(torch.isfinite(weight).all()) and (label is None
                                                     or bool(torch.isfinite(label).all()))
    if not finite:  # an overflow in low precision: uniform weights, given labels for this step
        weight = -torch.ones_like(weight)
        label = None if label is None else -torch.ones_like(label)
    return MetaGradients(weight.detach(), None if label is None else label.detach(), probe_loss,
                         fallback, finite)


def meta_gradients(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: Tensor,
    targets: Tensor,
    probe_inputs: Tensor,
    probe_targets: Tensor,
    *,
    weight_init: float | Tensor = 0.0,
    label_init: float | Tensor | None = None,
    pseudo_targets: Tensor | None = None,
    lr: float | None = None,
    inner_loss: InnerLoss | None = None,
) -> MetaGradients:
    """Exact dL_p/d omega and dL_p/d lambda at (weight_init, label_init) after one optimizer step.

    Leaves the model's parameters and buffers (BatchNorm statistics) and the optimizer's state
    untouched; uses no second-order backward unless a layer lacks a forward-mode formula.

    Args:
      model: any ``nn.Module`` mapping ``inputs`` to logits of shape (B, C).
      optimizer: the user's optimizer (SGD in any configuration, Adam, AdamW); its update rule and
        live state define the look-ahead theta'.
      inputs, targets: the training batch, (B, ...) and class indices (B,).
      probe_inputs, probe_targets: the trusted batch, (B_p, ...) and (B_p,), B_p >= 1.
      weight_init: omega0, scalar or (B,) (L2R: 0, IEG: 1/B).
      label_init: lambda0, scalar or (B,) (IEG: 0.9), or None for no relabeling.
      pseudo_targets: q, (B, C), required with ``label_init``; treated as constants.
      lr: look-ahead learning rate; default: each param group's current lr.
      inner_loss: the per-example training loss ``(logits, targets) -> (B,)`` being reweighted
        (default: cross-entropy); e.g. ``functional.generalized_cross_entropy``. Not with
        ``label_init``.

    Returns:
      ``MetaGradients`` with ``weight`` (B,) and ``label`` (B,) or None.
    """
    check_meta_inputs(inputs, targets, probe_inputs, probe_targets)
    batch_size = inputs.shape[0]
    reference = next(iter(model.parameters()))
    omega0 = broadcast_init("weight_init", weight_init, batch_size, reference)
    lambda0 = None
    if label_init is not None:
        lambda0 = broadcast_init("label_init", label_init, batch_size, reference)
        if pseudo_targets is None:
            raise ValueError("pseudo_targets: required (shape (B, C)) when label_init is given")
    return lookahead_meta_gradients(
        model, optimizer, inputs, targets, probe_inputs, probe_targets, weight_init=omega0,
        label_init=lambda0, pseudo_targets=pseudo_targets, lr=lr, inner_loss=inner_loss,
    )


def _check_pseudo(pseudo_targets: Tensor | None, logits: Tensor, label_init: Tensor | None) -> None:
    if label_init is None or pseudo_targets is None:
        return
    if tuple(pseudo_targets.shape) != tuple(logits.shape):
        raise ValueError(
            f"pseudo_targets: expected shape {tuple(logits.shape)} (B, C), got "
            f"{tuple(pseudo_targets.shape)}"
        )
