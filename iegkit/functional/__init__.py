"""Pure tensor functions behind every part (composer.functional style)."""

from iegkit.functional.forward_correction import (
    estimate_transition,
    forward_corrected_cross_entropy,
    noise_rate_from_transition,
    updated_transition,
)
from iegkit.functional.lookahead import VirtualStep, trainable_parameters, virtual_step
from iegkit.functional.losses import mix_targets, soft_cross_entropy
from iegkit.functional.meta import MetaGradients, meta_gradients
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
