"""TrustedGate: scale the unlabeled terms by the measured quality of the pseudo labels."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from iegkit._core import keys
from iegkit._core.context import StepContext
from iegkit._core.part import Contribution, PartBase
from iegkit.functional.collapse import pseudo_label_accuracy
from iegkit.functional.trusted_gate import smoothed_accuracy, trusted_gate

__all__ = ["TrustedGate"]


class TrustedGate(PartBase):
    """Provides ``keys.UNLABELED_GATE`` (a 0-dim tensor in [0, 1]); ProbeMixUp's unlabeled term and
    KLConsistency multiply their weights (p, k, after any ramp-up) by it.

    Every ``every`` steps the pseudo labeler's ``keys.IMAGE_LABELER`` (ConsistencyPseudoLabeler's
    ``label_images``: its EMA teacher, if any) labels a **held-out** trusted fold (images and clean
    labels that neither the step nor the probe batch ever sees: the probe images are trained on by
    ProbeMixUp, so their accuracy overstates the pseudo labels' quality), drawing its strong views
    from the gate's own generator (``ctx.generator(name)``). The accuracy is smoothed,
    ``a <- momentum a + (1 - momentum) acc`` (the first measurement sets ``a``), and the gate is
    ``trusted_gate(a, C, margin)`` (both pure functions in ``iegkit.functional.trusted_gate``).
    Before the first measurement the gate is closed (0).

    Args:
      holdout_inputs, holdout_labels: the held-out trusted fold, (N, ...) and (N,) class indices.
        Class-balanced folds make a collapsed labeler score exactly chance. A few per class will do:
        the smoothing averages over strong-view draws, not over images.
      margin: accuracy above chance at which the gate is fully open (0.1).
      every: steps between measurements (10; each costs a strong view and two no-grad forwards of
        the fold).
      momentum: smoothing of the measured accuracy (0.9).
    """

    requires = (keys.IMAGE_LABELER,)
    provides = (keys.UNLABELED_GATE,)

    def __init__(self, holdout_inputs: Tensor, holdout_labels: Tensor, *,
                 margin: float = 0.1, every: int = 10, momentum: float = 0.9,
                 name: str = "trusted_gate") -> None:
        if not isinstance(holdout_inputs, Tensor) and hasattr(holdout_inputs, "label_images"):
            raise TypeError("holdout_inputs: expected a tensor; TrustedGate no longer takes the "
                            "pseudo labeler: it reads keys.IMAGE_LABELER, which "
                            "ConsistencyPseudoLabeler provides")
        for argument, value in (("holdout_inputs", holdout_inputs),
                                ("holdout_labels", holdout_labels)):
            if not isinstance(value, Tensor):
                raise TypeError(f"{argument}: expected a tensor, got {type(value).__name__}")
        if holdout_inputs.ndim == 0 or holdout_inputs.shape[0] == 0:
            raise ValueError("holdout_inputs: expected a non-empty tensor (N, ...)")
        if (holdout_labels.dtype.is_floating_point
                or holdout_labels.shape != (holdout_inputs.shape[0],)):
            raise ValueError(f"holdout_labels: expected integer class indices of shape "
                             f"({holdout_inputs.shape[0]},), got "
                             f"{tuple(holdout_labels.shape)} {holdout_labels.dtype}")
        if int(holdout_labels.min()) < 0:
            raise ValueError(f"holdout_labels: expected class indices >= 0, got "
                             f"{int(holdout_labels.min())}")
        if not 0.0 < margin < 1.0:
            raise ValueError(f"margin: expected a value in (0, 1), got {margin}")
        if int(every) != every or every < 1:
            raise ValueError(f"every: expected an integer >= 1, got {every}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum: expected a value in [0, 1), got {momentum}")
        self.name = name
        self.holdout_inputs = holdout_inputs
        self.holdout_labels = holdout_labels
        self.margin = margin
        self.every = int(every)
        self.momentum = momentum
        self.accuracy: float | None = None
        self.num_classes: int | None = None

    def _measure(self, ctx: StepContext) -> float:
        device = ctx.inputs.device
        inputs = self.holdout_inputs.to(device=device, dtype=ctx.inputs.dtype)
        label_images = ctx.get(keys.IMAGE_LABELER)
        with torch.no_grad():
            pseudo = label_images(ctx.model, inputs, ctx.generator(self.name))
        num_classes = pseudo.shape[-1]
        if int(self.holdout_labels.max()) >= num_classes:
            raise ValueError(f"holdout_labels: expected values in [0, {num_classes - 1}] (the "
                             f"pseudo labels have {num_classes} classes), got "
                             f"{int(self.holdout_labels.max())}")
        self.num_classes = num_classes
        return float(pseudo_label_accuracy(pseudo, self.holdout_labels.to(device)))

    def contribute(self, ctx: StepContext) -> Contribution:
        metrics: dict[str, Tensor] = {}
        if ctx.step % self.every == 0:
            measured = self._measure(ctx)
            self.accuracy = smoothed_accuracy(self.accuracy, measured, self.momentum)
            metrics["holdout_accuracy"] = torch.tensor(measured)
        gate = (0.0 if self.accuracy is None or self.num_classes is None
                else trusted_gate(self.accuracy, self.num_classes, self.margin))
        gate_tensor = torch.tensor(gate)
        metrics["gate"] = gate_tensor
        return Contribution(values={keys.UNLABELED_GATE: gate_tensor}, metrics=metrics)

    def state_dict(self) -> dict[str, Any]:
        # its generator is the pipeline's, checkpointed with the pipeline's generators
        return {"accuracy": self.accuracy, "num_classes": self.num_classes}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        unknown = set(state) - {"accuracy", "num_classes"}
        if unknown:
            raise ValueError(f"state: unexpected keys {sorted(unknown)} for TrustedGate")
        if "accuracy" in state:
            self.accuracy = None if state["accuracy"] is None else float(state["accuracy"])
        if "num_classes" in state:
            self.num_classes = None if state["num_classes"] is None else int(state["num_classes"])
