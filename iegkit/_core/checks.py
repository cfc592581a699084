"""Checks of the user's model, optimizer and batches, with errors that name the argument."""

from __future__ import annotations

import operator
import warnings
import weakref

import torch
from torch import Tensor, nn

from iegkit.errors import NonFiniteLossError
from iegkit.functional.losses import check_targets

__all__ = [
    "LogitsOf",
    "as_class_indices",
    "check_batch",
    "check_binding",
    "check_finite_loss",
    "check_grad_enabled",
    "check_meta_inputs",
    "check_pseudo_targets",
    "check_step",
    "step_labels",
    "warn_about_modes",
]


class LogitsOf(nn.Module):
    """A model whose forward returns a tuple, dict or object, seen as one returning logits:
    ``LogitsOf(model, lambda out: out["logits"])``. It shares the model's parameters and buffers,
    so the user's optimizer and checkpoints are unchanged."""

    def __init__(self, model: nn.Module, select) -> None:
        super().__init__()
        if not callable(select):
            raise TypeError("select: expected a callable output -> logits")
        self.model = model
        self.select = select

    def forward(self, inputs: Tensor) -> Tensor:
        return self.select(self.model(inputs))


def check_binding(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """The optimizer must update the model's parameters (the look-ahead models that update)."""
    owned = {id(p) for p in model.parameters()}
    held = [p for group in optimizer.param_groups for p in group["params"]]
    if not any(id(p) in owned for p in held):
        raise ValueError("optimizer: none of its parameters belongs to model; build the optimizer "
                         "on model.parameters()")


def check_batch(model: nn.Module, inputs: Tensor, probe_inputs: Tensor | None) -> None:
    """dtype, device and BatchNorm1d batch-size mismatches, caught before torch's own errors."""
    reference = next(model.parameters(), None)
    for name, batch in (("inputs", inputs), ("probe_inputs", probe_inputs)):
        if batch is None:
            continue
        if reference is not None and batch.is_floating_point() and batch.dtype != reference.dtype:
            raise TypeError(
                f"{name}: dtype {batch.dtype} but the model's parameters are {reference.dtype}; "
                "cast the batch (or use torch.autocast for mixed precision)"
            )
        if reference is not None and batch.device != reference.device:
            raise ValueError(f"{name}: on {batch.device} but the model is on {reference.device}; "
                             "move the batch to the model's device")
        if batch.shape[0] == 1 and any(isinstance(m, nn.BatchNorm1d) for m in model.modules()):
            raise ValueError(
                f"{name}: a batch of 1 cannot pass BatchNorm1d in train mode (the meta passes use "
                "batch statistics); use batches of at least 2"
            )


def check_meta_inputs(inputs: Tensor, targets: Tensor, probe_inputs: Tensor | None,
                      probe_targets: Tensor | None) -> None:
    """The batches a look-ahead reads, before any forward: the one check of the probe batch's
    presence, size and example shape (the pipeline runs it once per step, ``meta_gradients`` once
    per call; the labels' range needs the logits and is checked at the probe forward)."""
    if probe_inputs is None or probe_targets is None:
        raise ValueError("probe_inputs: this pipeline needs a probe batch "
                         "(probe_inputs, probe_targets)")
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


def check_pseudo_targets(pseudo_targets: Tensor | None, *, relabeling: bool,
                         logits: Tensor | None = None) -> None:
    """Relabeling needs the pseudo labels q, shaped like the training logits (B, C) where those
    are known."""
    if not relabeling:
        return
    if pseudo_targets is None:
        raise ValueError("pseudo_targets: required (shape (B, C)) when label_init is given")
    if logits is not None and tuple(pseudo_targets.shape) != tuple(logits.shape):
        raise ValueError(
            f"pseudo_targets: expected shape {tuple(logits.shape)} (B, C), got "
            f"{tuple(pseudo_targets.shape)}"
        )


def check_finite_loss(name: str, loss: Tensor) -> None:
    """The look-ahead steps along a loss's gradient: a NaN or inf one would poison every weight."""
    if not bool(torch.isfinite(loss)):
        raise NonFiniteLossError(
            f"{name}: loss is {float(loss.detach())}; check the inputs and the learning rate "
            "(the meta step needs a finite loss)"
        )


def check_step(step: object) -> int:
    """The step as an int >= 0 (a NumPy or 0-d tensor integer too; bool refused). Checked first: a
    negative step used to pass the pipeline, then fail (if at all) in the optimizer.step() hook,
    after the weights had moved."""
    if isinstance(step, bool):
        raise TypeError("step: expected an int >= 0, got a bool")
    try:
        value = operator.index(step)
    except TypeError:
        raise TypeError(f"step: expected an int >= 0, got {type(step).__name__}") from None
    if value < 0:
        raise ValueError(f"step: expected an int >= 0 (the optimizer steps taken so far), got "
                         f"{value}")
    return value


def check_grad_enabled() -> None:
    """A step under no_grad/inference_mode builds no graph: its loss cannot be backpropagated, and
    the meta parts' virtual gradient fails deep inside; say what to do before any forward."""
    if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
        return
    raise RuntimeError(
        "pipeline: called with gradients disabled (inside torch.no_grad() or "
        "torch.inference_mode()); a training step needs them: call the pipeline with grad "
        "enabled, and evaluate by running the model alone (model.eval(), under no_grad) outside "
        "the pipeline"
    )


def as_class_indices(name: str, labels: object, batch_size: int | None) -> Tensor:
    """Integer labels of any dtype as int64 (NumPy gives int32, image datasets uint8; one_hot and
    the losses need int64); float and bool labels are refused, they are not class indices.
    ``batch_size`` None skips the shape check (no batch to match)."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name}: expected a tensor of class indices, got {type(labels).__name__}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"{name}: expected integer class indices, got dtype {labels.dtype} "
                        "(soft or one-hot labels are not class indices: pass labels.argmax(-1))")
    labels = labels.to(torch.int64)  # the same tensor when it is already int64
    if batch_size is not None:
        check_targets(name, labels, batch_size)
    return labels


def step_labels(inputs: object, targets: object, probe_inputs: object,
                probe_targets: object) -> tuple[Tensor, Tensor | None]:
    """``targets`` and ``probe_targets`` as int64 class indices shaped like their batches, checked
    before any forward (their range needs the model's output, so it is checked after it)."""
    for name, batch in (("inputs", inputs), ("probe_inputs", probe_inputs)):
        if batch is not None and (not isinstance(batch, Tensor) or batch.dim() == 0):
            raise TypeError(f"{name}: expected a batch tensor (B, ...), got "
                            f"{getattr(batch, 'shape', type(batch).__name__)}")
    targets = as_class_indices("targets", targets, inputs.shape[0])
    if probe_targets is not None:
        probe_size = None if probe_inputs is None else probe_inputs.shape[0]
        probe_targets = as_class_indices("probe_targets", probe_targets, probe_size)
    return targets, probe_targets


_WARNED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


def warn_about_modes(model: nn.Module, *, dropout: bool = True) -> None:
    """Warn once per model when the meta passes cannot match the real forward exactly
    (``dropout``: whether the meta passes run with dropout)."""
    if model in _WARNED:
        return
    batch_norm = (nn.modules.batchnorm._BatchNorm,)
    eval_bn = [n for n, m in model.named_modules() if isinstance(m, batch_norm) and not m.training]
    dropout = [n for n, m in model.named_modules()
               if dropout and isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
    reasons = []
    if eval_bn:
        reasons.append(
            f"BatchNorm layers in eval mode ({', '.join(eval_bn[:3])}...): the real forward uses "
            "running statistics but the meta passes use batch statistics, so the meta weights are "
            "not exactly those of the step; keep BatchNorm in train mode while training"
        )
    if dropout:
        reasons.append(
            f"dropout ({', '.join(dropout[:3])}...): each meta pass draws its own masks, so the "
            "meta-gradient is stochastic; pass meta_dropout=False to compose() to run the meta "
            "passes without dropout (deterministic)"
        )
    if reasons:
        _WARNED.add(model)
        warnings.warn("iegkit: " + "; ".join(reasons), RuntimeWarning, stacklevel=4)
