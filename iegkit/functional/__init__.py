"""Pure tensor functions behind every part (composer.functional style)."""

from iegkit.functional.lookahead import VirtualStep, trainable_parameters, virtual_step
from iegkit.functional.losses import mix_targets, soft_cross_entropy
from iegkit.functional.meta import MetaGradients, meta_gradients
from iegkit.functional.reweight import normalize_meta_weights

__all__ = [
    "MetaGradients",
    "VirtualStep",
    "meta_gradients",
    "mix_targets",
    "normalize_meta_weights",
    "soft_cross_entropy",
    "trainable_parameters",
    "virtual_step",
]
