"""The relabeling controller lambda* from the meta-gradient (IEG eq. 4-5)."""

from __future__ import annotations

from torch import Tensor

from iegkit.functional.losses import mix_targets, soft_cross_entropy

__all__ = ["relabel_from_meta_gradient", "relabeled_cross_entropy"]


def relabel_from_meta_gradient(label_grad: Tensor) -> Tensor:
    """lambda*_i = 1 (keep the given label) where dL_p/d lambda_i < 0, else 0 (use the pseudo label).

    The sign rule of IEG eq. 4; a gradient of exactly 0 picks the pseudo label, as the official code.
    Shape (B,) -> (B,) in {0, 1}, detached, same dtype.
    """
    return (label_grad.detach() < 0).to(label_grad.dtype)


def relabeled_cross_entropy(logits: Tensor, targets: Tensor, relabel: Tensor,
                            pseudo_targets: Tensor) -> Tensor:
    """L_lambda = (1/B) sum_i CE(lambda_i onehot(y_i) + (1 - lambda_i) g_i, f(x_i)) (IEG eq. 5).

    Shape: logits (B, C), targets (B,), relabel (B,), pseudo_targets (B, C) -> scalar.
    """
    if relabel.shape != targets.shape:
        raise ValueError(f"relabel: expected shape {tuple(targets.shape)} (B,), got "
                         f"{tuple(relabel.shape)}")
    target = mix_targets(targets, logits.shape[-1], relabel, pseudo_targets)
    return soft_cross_entropy(logits, target.to(logits.dtype)).mean()
