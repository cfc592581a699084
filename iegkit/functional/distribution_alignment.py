"""Distribution alignment of pseudo labels (ReMixMatch, Berthelot et al. 2020, section 3.2)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["align_distribution", "unsharpen", "updated_marginal"]


def _check_marginal(name: str, marginal: Tensor, num_classes: int) -> None:
    if marginal.shape != (num_classes,):
        raise ValueError(f"{name}: expected shape ({num_classes},), got {tuple(marginal.shape)}")
    if bool((marginal <= 0).any()) or not bool(torch.isfinite(marginal).all()):
        raise ValueError(f"{name}: expected finite positive class probabilities")


def align_distribution(pseudo: Tensor, model_marginal: Tensor, target_marginal: Tensor, *,
                       temperature: float = 0.5) -> Tensor:
    """ReMixMatch's q' = Normalize(q * p_target / p_model), applied to sharpened pseudo labels.

    ``pseudo`` g = sharpen(q, tau) (B, C), or any (..., C); sharpening commutes with the
    rescaling as sharpen(q * r) = Normalize(sharpen(q) * r^(1/tau)), so the result equals
    sharpening the aligned q. Rows stay on the simplex; a uniform ratio leaves g unchanged;
    permuting the batch permutes the result.
    """
    if temperature <= 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    num_classes = pseudo.shape[-1]
    _check_marginal("model_marginal", model_marginal, num_classes)
    _check_marginal("target_marginal", target_marginal, num_classes)
    tiny = torch.finfo(pseudo.dtype).tiny
    log_ratio = (torch.log(target_marginal) - torch.log(model_marginal)).to(pseudo.dtype)
    return torch.softmax(torch.log(pseudo.clamp_min(tiny)) + log_ratio / temperature, dim=-1)


def unsharpen(pseudo: Tensor, temperature: float = 0.5) -> Tensor:
    """q = Normalize(g^tau): the prediction average that ``sharpen(q, tau)`` turned into g."""
    tiny = torch.finfo(pseudo.dtype).tiny
    return torch.softmax(temperature * torch.log(pseudo.clamp_min(tiny)), dim=-1)


def updated_marginal(running: Tensor, batch_probs: Tensor, momentum: float) -> Tensor:
    """momentum * running + (1 - momentum) * mean_i batch_probs_i: the running model marginal."""
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum: expected a value in [0, 1), got {momentum}")
    return momentum * running + (1.0 - momentum) * batch_probs.mean(0).to(running.dtype)
