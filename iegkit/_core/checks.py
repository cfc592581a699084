"""Checks of the user's model, optimizer and batches, with errors that name the argument."""

from __future__ import annotations

import warnings
import weakref

import torch
from torch import Tensor, nn

__all__ = ["LogitsOf", "check_batch", "check_binding", "warn_about_modes"]


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
