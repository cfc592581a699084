"""Exponential moving average of the weights for evaluation (official IEG code; not in the paper)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch

__all__ = ["WeightEMA", "ema_decay"]


def ema_decay(step: int, decay: float = 0.999) -> float:
    """min(decay, (1 + t) / (10 + t)): TF's ExponentialMovingAverage with num_updates = t."""
    if step < 0:
        raise ValueError(f"step: expected >= 0, got {step}")
    return min(decay, (1.0 + step) / (10.0 + step))


class WeightEMA:
    """Shadow copy of the trainable parameters, updated after each ``optimizer.step()``.

    Evaluation uses the averaged parameters with the raw model's BatchNorm statistics, as the
    official code does::

        optimizer.step(); ema.update(step)
        with ema.average_parameters():
            accuracy = evaluate(model)
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay: expected a value in [0, 1), got {decay}")
        self.model = model
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = ema_decay(step, self.decay)
        for name, p in self.model.named_parameters():
            if name in self.shadow:
                self.shadow[name].mul_(d).add_(p.detach(), alpha=1.0 - d)

    @contextlib.contextmanager
    def average_parameters(self) -> Iterator[None]:
        params = dict(self.model.named_parameters())
        saved = {n: params[n].detach().clone() for n in self.shadow}
        with torch.no_grad():
            for n, value in self.shadow.items():
                params[n].copy_(value)
        try:
            yield
        finally:
            with torch.no_grad():
                for n, value in saved.items():
                    params[n].copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shadow": {n: v.clone() for n, v in self.shadow.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise ValueError("state: EMA parameter names do not match the model")
        self.decay = state["decay"]
        for n, v in state["shadow"].items():
            self.shadow[n].copy_(v)
