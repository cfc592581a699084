"""The confidence mask of FixMatch (Sohn et al. 2020, eq. 4) over pseudo labels."""

from __future__ import annotations

from torch import Tensor

__all__ = ["confidence_mask"]


def confidence_mask(pseudo: Tensor, threshold: float) -> Tensor:
    """m_i = 1[max_c g_ic >= threshold] (FixMatch, Sohn et al. 2020, eq. 4), as a float of the
    leading shape: (B,) for pseudo labels (B, C), and (...) for (..., C)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold: expected a value in [0, 1], got {threshold}")
    return (pseudo.detach().max(dim=-1).values >= threshold).to(pseudo.dtype)
