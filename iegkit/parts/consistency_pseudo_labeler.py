"""ConsistencyPseudoLabeler: pseudo labels from the weak and strong views (IEG section 2.2.1)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from iegkit._core import keys
from iegkit._core.context import StepContext
from iegkit._core.part import Contribution, PartBase, Plan, PseudoLabelSource
from iegkit.ema import WeightEMA
from iegkit.functional.collapse import pseudo_label_accuracy, pseudo_label_concentration
from iegkit.functional.pseudo_label import guess_targets

__all__ = ["ConsistencyPseudoLabeler"]

Augment = Callable[..., Tensor]


class ConsistencyPseudoLabeler(PartBase):
    """g = sharpen(mean_k softmax(LN(z_k)), tau) over the weak view (the training batch as given)
    and a strong view ``strong_augment(inputs, generator=...)``; g is detached (the official code
    detaches it everywhere except in its look-ahead).

    Provides ``keys.PSEUDO_TARGETS`` (B, C), ``keys.STRONG_VIEW`` (the strong inputs, forwarded once
    per step and shared with KLConsistency and ProbeMixUp), ``keys.IMAGE_LABELER`` (its
    ``label_images``, for parts that label other images: TrustedGate) and, without a teacher,
    ``keys.PSEUDO_LABELER`` (for the official look-ahead through the pseudo labels).

    Collapse diagnostics, every step, detached (``metrics``): ``top_share`` (the share of the
    batch's most frequent pseudo label), ``marginal_entropy`` (of the batch's mean pseudo label,
    over log C), ``agreement`` with the given labels and, every ``probe_diagnostics_every`` steps,
    ``probe_accuracy``: the pseudo labels of the probe batch's two views (made the same way, with
    its own random stream ``"{name}/probe_diagnostics"``, declared in ``setup`` and seeded by the
    pipeline, so training draws are unchanged) against its trusted labels.

    Args:
      strong_augment: any callable ``(images, generator=None) -> images`` (``iegkit.augment`` has the
        paper's AutoAugment + flip + crop + cutout); non-image users pass their own view.
      temperature: tau = 0.5.
      normalize_logits: the official per-view RMS logit normalisation; False is the paper's plain
        softmax average.
      teacher_decay: None (official: the pseudo labels come from the model being trained) or the
        decay of an EMA teacher (mean teacher, Tarvainen & Valpola 2017): the pseudo labels come
        from ``WeightEMA(decay)`` weights, updated after each optimizer step, with BatchNorm on
        batch statistics (two extra no-grad forwards per step).
      probe_diagnostics_every: measure ``probe_accuracy`` every that many steps (default 10; 1:
        every step; None: never). Each measurement costs the strong augmentation of the probe batch
        inside the step (per-image AutoAugment: tens of ms for 100 CIFAR images on a CPU core) and
        two no-grad forwards; an epoch's average needs only some of the steps.
    """

    # the pseudo labels are made here from the strong view's forward (as KLConsistency's term
    # is): a refined tensor would reach ProbeMixUp only
    not_refinable = (keys.STRONG_VIEW,)

    def __init__(self, strong_augment: Augment, *, temperature: float = 0.5,
                 normalize_logits: bool = True, teacher_decay: float | None = None,
                 probe_diagnostics_every: int | None = 10,
                 name: str = "pseudo_labeler") -> None:
        if not callable(strong_augment):
            raise TypeError("strong_augment: expected a callable (images, generator=None) -> images")
        if temperature <= 0:
            raise ValueError(f"temperature: expected > 0, got {temperature}")
        if teacher_decay is not None and not 0.0 <= teacher_decay < 1.0:
            raise ValueError(f"teacher_decay: expected None or a value in [0, 1), got "
                             f"{teacher_decay}")
        self.name = name
        self.strong_augment = strong_augment
        self.temperature = temperature
        self.normalize_logits = normalize_logits
        self.teacher_decay = teacher_decay
        if probe_diagnostics_every is not None and (
                int(probe_diagnostics_every) != probe_diagnostics_every or probe_diagnostics_every < 1):
            raise ValueError(f"probe_diagnostics_every: expected None or an integer >= 1, got "
                             f"{probe_diagnostics_every}")
        self.probe_diagnostics_every = probe_diagnostics_every
        self.teacher: WeightEMA | None = None
        self._pending_teacher_state: Mapping[str, Any] | None = None
        self.provides: tuple[str, ...] = (
            keys.PSEUDO_TARGETS, keys.STRONG_VIEW, keys.IMAGE_LABELER) + (
            () if teacher_decay is not None else (keys.PSEUDO_LABELER,))

    @property
    def _probe_stream(self) -> str:
        return f"{self.name}/probe_diagnostics"

    def setup(self, plan: Plan) -> None:
        plan.add_view(keys.STRONG_VIEW_NAME, self._strong_view, owner=self.name)
        plan.add_random_stream(self._probe_stream, owner=self.name)

    def bind(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if self.teacher_decay is None:
            return
        self.teacher = WeightEMA(model, self.teacher_decay, name=f"{self.name}/teacher")
        if self._pending_teacher_state is not None:
            self.teacher.load_state_dict(self._pending_teacher_state)
            self._pending_teacher_state = None

    def after_optimizer_step(self, step: int) -> None:
        """Moves the EMA teacher towards the stepped weights (nothing without a teacher)."""
        if self.teacher is not None:
            self.teacher.update(step)

    def pseudo_labels(self, weak_logits: Tensor, strong_logits: Tensor) -> Tensor:
        """g from the two views' logits, with graph (the part itself provides it detached)."""
        return guess_targets([weak_logits, strong_logits], self.temperature,
                             normalize_logits=self.normalize_logits)

    def _check_strong(self, strong: Tensor, inputs: Tensor) -> Tensor:
        if strong.shape != inputs.shape:
            raise ValueError(f"strong_augment: returned shape {tuple(strong.shape)}, expected the "
                             f"input shape {tuple(inputs.shape)}")
        return strong

    def _strong_view(self, ctx: StepContext) -> Tensor:
        with torch.no_grad():
            strong = self.strong_augment(ctx.inputs, generator=ctx.generator(self.name))
        return self._check_strong(strong, ctx.inputs)

    def _teacher_labels(self, weak: Tensor, strong: Tensor) -> Tensor:
        if self.teacher is None:
            raise RuntimeError(f"'{self.name}': the EMA teacher is created when the pipeline is "
                               "bound; bind(model, optimizer) first")
        return self.pseudo_labels(self.teacher.forward(weak), self.teacher.forward(strong))

    @torch.no_grad()
    def label_images(self, model: torch.nn.Module, images: Tensor,
                     generator: torch.Generator | None = None) -> Tensor:
        """Pseudo labels (N, C) of any images, made as the step makes them (the images as the weak
        view, ``strong_augment(images, generator=generator)`` as the strong one; the teacher if
        there is one), without gradients and without touching BatchNorm running statistics: for
        diagnostics and TrustedGate."""
        strong = self._check_strong(self.strong_augment(images, generator=generator), images)
        if self.teacher_decay is not None:  # an unbound labeler must not label with the student
            return self._teacher_labels(images, strong)
        return self.pseudo_labels(_batch_stats_forward(model, images),
                                  _batch_stats_forward(model, strong))

    def _probe_accuracy(self, ctx: StepContext) -> Tensor:
        pseudo = self.label_images(ctx.model, ctx.view("probe"), ctx.generator(self._probe_stream))
        return pseudo_label_accuracy(pseudo, ctx.probe_targets)

    def contribute(self, ctx: StepContext) -> Contribution:
        weak, strong = ctx.logits("input"), ctx.logits(keys.STRONG_VIEW_NAME)
        if self.teacher_decay is not None:
            pseudo = self._teacher_labels(ctx.inputs, ctx.view(keys.STRONG_VIEW_NAME))
        else:
            pseudo = self.pseudo_labels(weak.detach(), strong.detach())
        top_share, entropy = pseudo_label_concentration(pseudo)
        metrics = {"agreement": pseudo_label_accuracy(pseudo, ctx.targets),
                   "top_share": top_share, "marginal_entropy": entropy}
        every = self.probe_diagnostics_every
        if every is not None and ctx.step % every == 0 and ctx.probe_inputs is not None:
            metrics["probe_accuracy"] = self._probe_accuracy(ctx)
        values: dict[str, Any] = {keys.PSEUDO_TARGETS: pseudo,
                                  keys.STRONG_VIEW: ctx.view(keys.STRONG_VIEW_NAME),
                                  keys.IMAGE_LABELER: self.label_images}
        if keys.PSEUDO_LABELER in self.provides:
            values[keys.PSEUDO_LABELER] = PseudoLabelSource(("input", keys.STRONG_VIEW_NAME),
                                                            self.pseudo_labels)
        return Contribution(values=values, metrics=metrics)

    def state_dict(self) -> dict[str, Any]:
        # its random streams are the pipeline's, checkpointed with the pipeline's generators
        return {} if self.teacher is None else {"teacher": self.teacher.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        unknown = set(state) - {"teacher"}
        if unknown:
            raise ValueError(f"state: unexpected keys {sorted(unknown)} for ConsistencyPseudoLabeler")
        if "teacher" in state:
            if self.teacher is None:
                self._pending_teacher_state = state["teacher"]
            else:
                self.teacher.load_state_dict(state["teacher"])


def _batch_stats_forward(model: torch.nn.Module, inputs: Tensor) -> Tensor:
    """The model's logits with BatchNorm on batch statistics, leaving its running statistics."""
    from iegkit._core.modes import buffers_snapshot, train_mode

    with train_mode(model):
        return torch.func.functional_call(model, buffers_snapshot(model), (inputs,))
