"""KL consistency between the weak and the strong view (IEG eq. 7)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["kl_consistency"]


def kl_consistency(weak_logits: Tensor, strong_logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """(1/B) sum_i m_i KL(softmax(sg(z_w,i)) || softmax(z_s,i)): gradient only through the strong
    view; m_i = 1 without a ``mask`` (B,) (FixMatch's confidence mask: a fixed 1/B denominator, so an
    empty mask gives 0).

    The official code averages over B x C and multiplies by C, which is this per-example mean.
    """
    if weak_logits.shape != strong_logits.shape:
        raise ValueError(f"strong_logits: expected shape {tuple(weak_logits.shape)} like "
                         f"weak_logits, got {tuple(strong_logits.shape)}")
    target_log = F.log_softmax(weak_logits.detach(), dim=-1)
    log_q = F.log_softmax(strong_logits, dim=-1)
    per_example = (target_log.exp() * (target_log - log_q)).sum(dim=-1)
    if mask is None:
        return per_example.mean()
    if mask.shape != per_example.shape:
        raise ValueError(f"mask: expected shape {tuple(per_example.shape)} (B,), got "
                         f"{tuple(mask.shape)}")
    return (per_example * mask.to(per_example.dtype)).mean()
