"""The look-ahead: virtual gradient -> probe tangent -> logit tangent -> contraction.

``lookahead_meta_gradients`` is the one implementation, used by ``meta_gradients`` (the functional
entry point, re-exported as ``iegkit.functional.meta_gradients``) and by ``StepContext.meta()``.
The math is in ``iegkit.functional.meta``; the passes that run the model are in
``iegkit._core.tangent``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import functional_call

from iegkit._core.checks import (
    check_finite_loss,
    check_meta_inputs,
    check_pseudo_targets,
)
from iegkit._core.modes import buffers_snapshot, train_mode
from iegkit._core.tangent import logit_tangent, probe_tangent
from iegkit.functional.distributed import all_reduce_mean
from iegkit.functional.lookahead import trainable_parameters
from iegkit.functional.losses import (
    check_logits,
    check_targets,
    mix_targets,
    soft_cross_entropy,
)
from iegkit.functional.meta import (
    InnerLoss,
    MetaGradients,
    MetaInit,
    contract_meta_gradients,
)

__all__ = [
    "LookaheadOptions",
    "MetaBatch",
    "PseudoLabelGraph",
    "lookahead_meta_gradients",
    "meta_gradients",
    "virtual_gradients",
]


@dataclass(frozen=True)
class MetaBatch:
    """The batches of one look-ahead: the training batch (B, ...) with its labels (B,), the probe
    batch (B_p, ...) with its labels (B_p,), and the pseudo labels q (B, C) where relabeling."""

    inputs: Tensor
    targets: Tensor
    probe_inputs: Tensor
    probe_targets: Tensor
    pseudo_targets: Tensor | None = None


@dataclass(frozen=True)
class LookaheadOptions:
    """How the look-ahead runs; a pipeline's are the same every step.

    lr: the look-ahead's learning rate (None: each param group's current lr).
    dropout: False runs the probe pass and the JVP without dropout (deterministic; the look-ahead
      is then that of the dropout-free network).
    process_group (DDP): the virtual gradient and the probe gradient are averaged over the
      processes (one bucketed all-reduce each), so every rank looks ahead with the global step; the
      per-example contractions stay local. With equal batches and omega0 = 1/B this is the
      look-ahead of one process on the concatenated batch (BatchNorm, if any, uses each rank's own
      batch).
    compile_tangent: run the JVP(s) through ``torch.compile`` (``logit_tangent(compile=True)``).
    inner_loss: the per-example training loss l_i(logits, targets) -> (B,) whose weights are
      learned (default: cross-entropy against the label mix); e.g. GCE (no relabeling with it).
    """

    lr: float | None = None
    dropout: bool = True
    process_group: object | None = None
    compile_tangent: bool = False
    inner_loss: InnerLoss | None = None


@dataclass(frozen=True)
class PseudoLabelGraph:
    """Pseudo labels as a function of view logits, for a look-ahead that differentiates through them.

    ``fn(*[logits() for _, logits in views])`` gives q with graph; ``views`` pairs each view's inputs
    (None for the training batch, whose JVP is reused) with a callable returning its logits (with
    graph, forwarded once by the caller).
    """

    fn: Callable[..., Tensor]
    views: Sequence[tuple[Tensor | None, Callable[[], Tensor]]]


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
    check_finite_loss("look-ahead loss sum_i omega0_i l_i", loss)
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _check_arguments(init: MetaInit, training_logits: Callable[[], Tensor] | None,
                     pseudo_graph: PseudoLabelGraph | None, options: LookaheadOptions) -> None:
    if options.inner_loss is not None and init.relabeling:
        raise ValueError("inner_loss: a loss other than cross-entropy has no relabeling "
                         "meta-gradient; use it without label_init")
    if pseudo_graph is not None and training_logits is None:
        raise ValueError("pseudo_graph: differentiating through the pseudo labels needs "
                         "training_logits (the caller's forward with graph)")


def _checked_logits(logits: Tensor, batch: MetaBatch, *, relabeling: bool) -> Tensor:
    """The training logits, once checked against the batch's targets and pseudo targets."""
    logits = check_logits(logits)
    check_targets("targets", batch.targets, batch.inputs.shape[0], logits.shape[-1])
    check_pseudo_targets(batch.pseudo_targets, relabeling=relabeling, logits=logits)
    return logits


def _virtual_gradient(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: MetaBatch,
                      weight_init: Tensor, label_init: Tensor | None,
                      training_logits: Callable[[], Tensor] | None,
                      pseudo_graph: PseudoLabelGraph | None,
                      options: LookaheadOptions) -> tuple[list[Tensor] | None, Tensor | None]:
    """g0 = grad sum_i omega0_i l_i (averaged over the processes under DDP), or None where
    omega0 = 0 (L2R); and the caller's training logits where it read (and checked) them."""
    through = pseudo_graph is not None and label_init is not None
    targets_for_virtual = batch.pseudo_targets
    if through:
        targets_for_virtual = pseudo_graph.fn(*(logits() for _, logits in pseudo_graph.views))
    if not bool((weight_init != 0).any()):
        return None, None
    if training_logits is not None:
        # The virtual gradient reuses the real forward's graph; the real backward runs later.
        logits = _checked_logits(training_logits(), batch, relabeling=label_init is not None)
        virtual = virtual_gradients(model, optimizer, logits, batch.targets,
                                    weight_init, label_init, targets_for_virtual,
                                    retain_graph=True, through_pseudo_targets=through,
                                    inner_loss=options.inner_loss)
        return all_reduce_mean(virtual, options.process_group), logits
    with train_mode(model), torch.enable_grad():
        logits = functional_call(model, buffers_snapshot(model), (batch.inputs,))
        logits = _checked_logits(logits, batch, relabeling=label_init is not None)
        virtual = virtual_gradients(model, optimizer, logits, batch.targets, weight_init,
                                    label_init, batch.pseudo_targets, retain_graph=False,
                                    inner_loss=options.inner_loss)
    return all_reduce_mean(virtual, options.process_group), None


def _pseudo_label_tangent(model: torch.nn.Module, tangents: dict[str, Tensor], u: Tensor,
                          pseudo_graph: PseudoLabelGraph, options: LookaheadOptions) -> Tensor:
    """J_q tau: the pseudo labels' directional derivative along tau, one JVP per view other than
    the training batch (whose u is reused)."""
    view_tangents = [u if view is None else logit_tangent(model, tangents, view,
                                                          dropout=options.dropout,
                                                          compile=options.compile_tangent)[1]
                     for view, _ in pseudo_graph.views]
    _, pseudo_tangents = torch.func.jvp(
        pseudo_graph.fn, tuple(logits().detach() for _, logits in pseudo_graph.views),
        tuple(view_tangents),
    )
    return pseudo_tangents


def _finite_or_uniform(weight: Tensor, label: Tensor | None, probe_loss: Tensor,
                       used_fallback: bool) -> MetaGradients:
    finite = bool(torch.isfinite(weight).all()) and (label is None
                                                     or bool(torch.isfinite(label).all()))
    if not finite:  # an overflow in low precision: uniform weights, given labels for this step
        weight = -torch.ones_like(weight)
        label = None if label is None else -torch.ones_like(label)
    return MetaGradients(weight.detach(), None if label is None else label.detach(), probe_loss,
                         used_fallback, finite)


def lookahead_meta_gradients(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: MetaBatch,
    init: MetaInit,
    *,
    training_logits: Callable[[], Tensor] | None = None,
    pseudo_graph: PseudoLabelGraph | None = None,
    options: LookaheadOptions = LookaheadOptions(),
) -> MetaGradients:
    """The one implementation of the look-ahead: virtual gradient -> probe tangent -> logit tangent
    -> contraction (``iegkit.functional.meta``), at ``init``'s omega0 and lambda0.

    ``training_logits``: a callable returning the training batch's logits with graph (the caller's
    real forward, run at most once; its graph is kept for the caller's backward). None: a forward on
    a buffer snapshot where the virtual gradient needs one, and the JVP's own logits otherwise.
    ``pseudo_graph``: differentiate the look-ahead through the pseudo labels (official IEG option);
    needs ``training_logits`` and relabeling.
    """
    _check_arguments(init, training_logits, pseudo_graph, options)
    reference = next(iter(model.parameters()))
    batch_size = batch.inputs.shape[0]
    weight_init = init.weight_init(batch_size, reference)
    label_init = init.label_init(batch_size, reference)
    check_pseudo_targets(batch.pseudo_targets, relabeling=label_init is not None)
    virtual, checked_logits = _virtual_gradient(model, optimizer, batch, weight_init, label_init,
                                                training_logits, pseudo_graph, options)
    tangents, probe_loss = probe_tangent(model, optimizer, batch.probe_inputs, batch.probe_targets,
                                         virtual, lr=options.lr, dropout=options.dropout,
                                         process_group=options.process_group)
    # The JVP runs without autograd on a buffer snapshot, BEFORE the real forward where it can: a
    # JVP fused into the real forward (dual-number parameters) would save a forward but autograd
    # records every tangent operation, which more than doubles the step's peak memory.
    jvp_logits, u, fallback = logit_tangent(model, tangents, batch.inputs,
                                            dropout=options.dropout,
                                            compile=options.compile_tangent)
    logits = checked_logits
    if logits is None:
        logits = _checked_logits(jvp_logits if training_logits is None else training_logits(),
                                 batch, relabeling=label_init is not None)
    pseudo_tangents = None
    if pseudo_graph is not None and label_init is not None:
        pseudo_tangents = _pseudo_label_tangent(model, tangents, u, pseudo_graph, options)
    weight, label = contract_meta_gradients(
        logits, u, batch.targets, weight_init=weight_init, label_init=label_init,
        pseudo_targets=batch.pseudo_targets, pseudo_tangents=pseudo_tangents,
        inner_loss=options.inner_loss,
    )
    return _finite_or_uniform(weight, label, probe_loss, fallback)


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
    return lookahead_meta_gradients(
        model, optimizer, MetaBatch(inputs, targets, probe_inputs, probe_targets, pseudo_targets),
        MetaInit(weight_init, label_init), options=LookaheadOptions(lr=lr, inner_loss=inner_loss),
    )
