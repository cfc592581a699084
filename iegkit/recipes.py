"""Named methods built from parts (optax's alias.py): plain, L2R (and IEG, EG as they land)."""

from __future__ import annotations

import torch

from iegkit._core.compose import Pipeline, compose
from iegkit.parts import CrossEntropy, MetaReweighter

__all__ = ["l2r", "plain"]


def plain(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, seed: int = 0) -> Pipeline:
    """Cross-entropy on the noisy labels; the probe batch is not used."""
    return compose(CrossEntropy(), model=model, optimizer=optimizer, seed=seed)


def l2r(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    weight_init: float = 0.0,
    lookahead_lr: float | None = None,
    normalizer_eps: float = 1e-5,
    seed: int = 0,
) -> Pipeline:
    """Learning to Reweight (Ren et al. 2018): omega0 = 0, one exact look-ahead with the user's
    optimizer, weights max(-grad, 0) normalised, loss sum_i omega*_i CE(y_i)."""
    return compose(
        MetaReweighter(weight_init, lookahead_lr=lookahead_lr, normalizer_eps=normalizer_eps),
        model=model, optimizer=optimizer, seed=seed,
    )
