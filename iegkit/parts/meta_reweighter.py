"""MetaReweighter: per-example weights from the exact meta-gradient (L2R; IEG eq. 2, 5)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from iegkit._core.context import StepContext
from iegkit._core.part import Contribution, Plan, WeightInit
from iegkit.functional.losses import mix_targets, soft_cross_entropy
from iegkit.functional.reweight import OFFICIAL_NORMALIZER_EPS, normalize_meta_weights

__all__ = ["MetaReweighter"]


class MetaReweighter:
    """omega* = max(-dL_p/d omega, 0) / (sum + eps), and the loss sum_i omega*_i CE(t_i, f(x_i)).

    Args:
      weight_init: omega0, the point where the meta-gradient is taken: 0 for L2R (Ren et al. 2018),
        "1/B" for IEG (paper footnote 1).
      label_mix: None for the target onehot(y) (L2R); a number lambda0 for the soft target
        lambda0 y + (1 - lambda0) g of IEG's L_omega* (official code: 0.9; requires pseudo labels).
      loss_weight: factor on the loss term (IEG's official code uses 1/2).
      normalizer_eps: the official code divides by sum + 1e-5; 0 normalises exactly.
      lookahead_lr: the look-ahead's learning rate (default: the optimizer's current lr).
    """

    provides = ("weights",)
    optional_requires = ("lr",)  # when a schedule sets this step's lr, look ahead with it

    def __init__(
        self,
        weight_init: WeightInit = 0.0,
        *,
        label_mix: float | None = None,
        loss_weight: float = 1.0,
        normalizer_eps: float = OFFICIAL_NORMALIZER_EPS,
        lookahead_lr: float | None = None,
        name: str = "meta_reweighter",
    ) -> None:
        if isinstance(weight_init, str) and weight_init != "1/B":
            raise ValueError(f"weight_init: expected a number or '1/B', got {weight_init!r}")
        if label_mix is not None and not 0.0 <= label_mix <= 1.0:
            raise ValueError(f"label_mix: expected a value in [0, 1], got {label_mix}")
        if normalizer_eps < 0:
            raise ValueError(f"normalizer_eps: expected >= 0, got {normalizer_eps}")
        self.name = name
        self.weight_init = weight_init
        self.label_mix = label_mix
        self.loss_weight = loss_weight
        self.normalizer_eps = normalizer_eps
        self.lookahead_lr = lookahead_lr
        self.requires: tuple[str, ...] = ("targets:pseudo",) if label_mix is not None else ()

    def setup(self, plan: Plan) -> None:
        plan.request_meta(owner=self.name, weight_init=self.weight_init, lr=self.lookahead_lr)

    def contribute(self, ctx: StepContext) -> Contribution:
        meta = ctx.meta()
        weights = normalize_meta_weights(meta.weight, self.normalizer_eps)
        logits = ctx.logits("input")
        pseudo = ctx.get("targets:pseudo") if self.label_mix is not None else None
        target = mix_targets(ctx.targets, logits.shape[-1], self.label_mix, pseudo).to(logits.dtype)
        loss = (weights * soft_cross_entropy(logits, target)).sum()
        return Contribution(
            values={"weights": weights},
            losses={"loss": self.loss_weight * loss},
            metrics={
                "probe_loss": meta.probe_loss,
                "nonzero_fraction": (weights > 0).to(torch.float32).mean(),
            },
        )

    def state_dict(self) -> dict[str, Any]:
        return {}  # stateless: omega0 and the look-ahead come from the step and the optimizer

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"state: MetaReweighter has no state, got keys {sorted(state)}")
