"""Exponential moving average of the weights (official IEG code; not in the paper), as a part."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call

from iegkit._core.context import StepContext
from iegkit._core.part import Contribution, PartBase

__all__ = ["WeightEMA", "ema_decay", "evaluation_weights"]


def ema_decay(step: int, decay: float = 0.999) -> float:
    """min(decay, (1 + t) / (10 + t)): TF's ExponentialMovingAverage with num_updates = t."""
    if step < 0:
        raise ValueError(f"step: expected >= 0, got {step}")
    return min(decay, (1.0 + step) / (10.0 + step))


# While an average is swapped into a model: id(parameter) -> (parameter, its training value), so
# that save_checkpoint saves the training weights, not the average (and load_checkpoint refuses to
# load weights the end of the block would overwrite).
_SWAPPED_OUT: dict[int, tuple[Tensor, Tensor]] = {}


def training_values() -> dict[int, Tensor]:
    """id(parameter) -> its training value, for each parameter an average is swapped into now."""
    return {key: value for key, (_, value) in _SWAPPED_OUT.items()}


class WeightEMA(PartBase):
    """Shadow copy of the trainable parameters, updated after each ``optimizer.step()``.

    As a part of a pipeline it updates itself through the pipeline's optimizer hook (nothing to add
    to the loop); alone, call ``update(step)`` after ``optimizer.step()``. Evaluation uses the
    averaged parameters with the raw model's BatchNorm statistics, as the official code does::

        pipeline = compose(..., ema := WeightEMA(), model=model, optimizer=optimizer)
        ...
        with ema.average_parameters():
            accuracy = evaluate(model)

    Args:
      model: the model to average; None binds the pipeline's model.
      decay: 0.999 (official); the effective decay warms up as TF's num_updates (``ema_decay``).
    """

    def __init__(self, model: torch.nn.Module | None = None, decay: float = 0.999, *,
                 name: str = "weight_ema") -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay: expected a value in [0, 1), got {decay}")
        self.name = name
        self.decay = decay
        self.model: torch.nn.Module | None = None
        self.shadow: dict[str, Tensor] = {}
        if model is not None:
            self._attach(model)

    def _attach(self, model: torch.nn.Module) -> None:
        self.model = model
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def bind(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if self.model is None:
            self._attach(model)
        elif self.model is not model:
            raise ValueError(f"model: part '{self.name}' averages another model than the pipeline's")

    def contribute(self, ctx: StepContext) -> Contribution:
        return Contribution()

    def after_optimizer_step(self, step: int) -> None:
        self.update(step)

    def _model(self) -> torch.nn.Module:
        if self.model is None:
            raise RuntimeError(f"'{self.name}': no model; pass one or bind the pipeline first")
        return self.model

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Average the parameters after an optimizer step.

        The trainable set is read here, not only at bind: a parameter unfrozen since
        (``requires_grad`` False -> True) joins the average from its current value, so that
        ``evaluation_weights`` never deploys its raw weights beside an averaged rest. A parameter
        frozen later stays averaged (its average converges to the frozen value)."""
        d = ema_decay(step, self.decay)
        for name, p in self._model().named_parameters():
            if name in self.shadow:
                self.shadow[name].mul_(d).add_(p.detach(), alpha=1.0 - d)
            elif p.requires_grad:
                self.shadow[name] = p.detach().clone()

    @torch.no_grad()
    def forward(self, inputs: Tensor) -> Tensor:
        """The averaged model's output (BatchNorm on batch statistics, running statistics untouched),
        without changing the model: the teacher of mean-teacher pseudo labels."""
        model = self._model()
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        modes = [(m, m.training) for m in model.modules()]
        model.train()
        try:
            return functional_call(model, {**buffers, **self.shadow}, (inputs,))
        finally:
            for m, was_training in modes:
                m.training = was_training

    @contextlib.contextmanager
    def average_parameters(self) -> Iterator[None]:
        params = dict(self._model().named_parameters())
        saved = {n: params[n].detach().clone() for n in self.shadow}
        # the outermost swap records the training values (a nested one would record an average)
        fresh = [n for n in saved if id(params[n]) not in _SWAPPED_OUT]
        for n in fresh:
            _SWAPPED_OUT[id(params[n])] = (params[n], saved[n])
        try:
            with torch.no_grad():
                for n, value in self.shadow.items():
                    params[n].copy_(value)
            yield
        finally:
            with torch.no_grad():
                for n, value in saved.items():
                    params[n].copy_(value)
            for n in fresh:
                del _SWAPPED_OUT[id(params[n])]

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shadow": {n: v.clone() for n, v in self.shadow.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Every saved average must be a parameter of the model, of its shape. The saved and the
        current trainable sets may differ (a layer unfrozen before or after the save): a saved
        average is loaded whether or not its parameter is trainable now, and a parameter trainable
        now but absent from the state keeps its current value as its average (as on unfreezing)."""
        params = dict(self._model().named_parameters())
        _check_saved_shadow(state["shadow"], params)
        self.decay = state["decay"]
        for n, v in state["shadow"].items():
            if n in self.shadow:
                self.shadow[n].copy_(v)
            else:
                self.shadow[n] = v.detach().to(params[n]).clone()


def _check_saved_shadow(saved: Mapping[str, Tensor], params: Mapping[str, Tensor]) -> None:
    unknown = sorted(n for n in saved if n not in params)
    if unknown:
        raise ValueError(f"state: the saved EMA averages parameters the model does not have: "
                         f"{unknown}; load a state saved from this model")
    reshaped = sorted(n for n, v in saved.items() if tuple(v.shape) != tuple(params[n].shape))
    if reshaped:
        raise ValueError(f"state: the saved EMA's shapes differ from the model's for {reshaped}; "
                         "load a state saved from this model")


def _weight_average(pipeline: Any) -> WeightEMA | None:
    parts = getattr(pipeline, "parts", None)
    if parts is None:
        raise TypeError(f"pipeline: expected a composed Pipeline, got {type(pipeline).__name__}")
    averages = [part for part in parts if isinstance(part, WeightEMA)]
    if len(averages) > 1:
        raise ValueError(f"pipeline: {len(averages)} WeightEMA parts "
                         f"({', '.join(a.name for a in averages)}); expected at most one")
    if averages:
        return averages[0]
    teachers = [getattr(part, "teacher", None) for part in parts]
    return next((t for t in teachers if isinstance(t, WeightEMA)), None)


@contextlib.contextmanager
def evaluation_weights(pipeline: Any) -> Iterator[WeightEMA | None]:
    """The weights to evaluate and deploy, swapped into the model for the block::

        with iegkit.evaluation_weights(pipeline):
            accuracy = evaluate(model)

    The average a pipeline keeps, with the raw model's BatchNorm statistics, as the official code
    evaluates (an EMA of the weights, docs/method.md, spec §9): a ``WeightEMA`` part if
    the pipeline has one, else the pseudo labeler's EMA teacher (``robust_ieg``, ``robust_eg``); the
    model's own weights, untouched, where it keeps neither. Yields that average (or None).

    Why the teacher: it averages about the last ``1 / (1 - decay)`` steps (100 at robust IEG's
    0.99, reached at step 890 through the warm-up min(decay, (1 + t) / (10 + t))), which
    smooths the epoch-to-epoch swings of a model trained at a high learning rate
    (on CIFAR-10, the early epochs' imbalance of the predicted classes: docs/results.md, "Robust
    IEG on CIFAR-10 (cpu10k): status").
    """
    average = _weight_average(pipeline)
    if average is None:
        yield None
        return
    with average.average_parameters():
        yield average
