"""The relabeling controller lambda* from the meta-gradient (IEG eq. 4-5)."""

from __future__ import annotations

from torch import Tensor

__all__ = ["relabel_from_meta_gradient"]


def relabel_from_meta_gradient(label_grad: Tensor) -> Tensor:
    """lambda*_i = 1 (keep the given label) where dL_p/d lambda_i < 0, else 0 (use the pseudo label).

    The sign rule of IEG eq. 4; a gradient of exactly 0 picks the pseudo label, as the official code.
    Shape (B,) -> (B,) in {0, 1}, detached, same dtype.
    """
    return (label_grad.detach() < 0).to(label_grad.dtype)
