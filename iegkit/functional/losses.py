"""Cross-entropy against soft targets and the label mix t = lambda * onehot(y) + (1 - lambda) * q."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["check_logits", "check_targets", "mix_targets", "soft_cross_entropy"]


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Per-example cross-entropy -sum_c target_c log softmax(logits)_c, shape (B,)."""
    return -(target * F.log_softmax(logits, dim=-1)).sum(dim=-1)


def mix_targets(targets: Tensor, num_classes: int, label_mix: Tensor | float | None = None,
                pseudo_targets: Tensor | None = None) -> Tensor:
    """t_i = lambda_i onehot(y_i) + (1 - lambda_i) q_i (IEG eq. 3); onehot(y) when lambda is None.

    Shape: targets (B,), label_mix scalar or (B,), pseudo_targets (B, C) -> (B, C).
    """
    onehot = F.one_hot(targets, num_classes).to(
        pseudo_targets.dtype if pseudo_targets is not None else torch.get_default_dtype()
    )
    if label_mix is None:
        return onehot
    if pseudo_targets is None:
        raise ValueError("pseudo_targets: required (shape (B, C)) when a label mix is given")
    lam = torch.as_tensor(label_mix, dtype=onehot.dtype, device=onehot.device)
    if lam.dim() == 1:
        lam = lam[:, None]
    return lam * onehot + (1.0 - lam) * pseudo_targets


def check_targets(name: str, targets: Tensor, batch_size: int, num_classes: int | None = None) -> None:
    """Raise a ValueError naming ``name`` unless targets are (batch_size,) class indices in [0, C)."""
    if not isinstance(targets, Tensor):
        raise TypeError(f"{name}: expected a tensor of class indices, got {type(targets).__name__}")
    if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"{name}: expected integer class indices, got dtype {targets.dtype}")
    if targets.dim() != 1 or targets.shape[0] != batch_size:
        raise ValueError(
            f"{name}: expected shape ({batch_size},) to match the batch, got {tuple(targets.shape)}"
        )
    if num_classes is not None and targets.numel() > 0:
        low, high = int(targets.min()), int(targets.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"{name}: labels must lie in [0, {num_classes}) (the model has {num_classes} "
                f"outputs), got values in [{low}, {high}]"
            )


def check_logits(logits: object) -> Tensor:
    if not isinstance(logits, Tensor):
        raise TypeError(
            f"model: returned a {type(logits).__name__}, expected the logits tensor (B, C); wrap it: "
            "iegkit.LogitsOf(model, lambda out: out[0]) (or out['logits'])"
        )
    if logits.dim() != 2:
        raise ValueError(f"model: expected logits of shape (B, C), got {tuple(logits.shape)}")
    return logits
