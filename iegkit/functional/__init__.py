"""Pure tensor functions behind every part (composer.functional style).

``meta_gradients`` is the one name here that runs a model (its forwards, a JVP, hooks that name a
failing layer): it lives in ``iegkit._core.meta_step`` and is re-exported, on first access, because
that module imports this package's pure math (an import here would be circular).
"""

import importlib

from iegkit.functional.forward_correction import (
    estimate_transition,
    forward_corrected_cross_entropy,
    noise_rate_from_transition,
    updated_transition,
)
from iegkit.functional.lookahead import VirtualStep, trainable_parameters, virtual_step
from iegkit.functional.losses import mix_targets, soft_cross_entropy
from iegkit.functional.meta import MetaGradients
from iegkit.functional.reweight import normalize_meta_weights
from iegkit.functional.robust_losses import generalized_cross_entropy, symmetric_cross_entropy
from iegkit.functional.small_loss import forget_rate, small_loss_mask

__all__ = [
    "MetaGradients",
    "VirtualStep",
    "estimate_transition",
    "forget_rate",
    "forward_corrected_cross_entropy",
    "generalized_cross_entropy",
    "meta_gradients",
    "mix_targets",
    "noise_rate_from_transition",
    "normalize_meta_weights",
    "small_loss_mask",
    "soft_cross_entropy",
    "symmetric_cross_entropy",
    "trainable_parameters",
    "updated_transition",
    "virtual_step",
]

#: public names defined in iegkit._core, re-exported here on first access
_CORE_REEXPORTS = ("meta_gradients",)


def __getattr__(name: str):
    if name in _CORE_REEXPORTS:
        return getattr(importlib.import_module("iegkit._core.meta_step"), name)
    raise AttributeError(f"module 'iegkit.functional' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_CORE_REEXPORTS])
