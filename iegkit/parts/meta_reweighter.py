"""MetaReweighter: per-example weights from the exact meta-gradient (L2R; IEG eq. 2, 5)."""

from __future__ import annotations

from functools import partial

import torch

from iegkit._core import keys
from iegkit._core.context import StepContext
from iegkit._core.part import (
    Contribution,
    PartBase,
    Plan,
    StagedLoss,
    WeightInit,
    parse_weight_init,
)
from iegkit.functional.distributed import world_size
from iegkit.functional.losses import mix_targets, soft_cross_entropy
from iegkit.functional.meta import InnerLoss
from iegkit.functional.reweight import (
    OFFICIAL_NORMALIZER_EPS,
    normalize_meta_weights,
    weighted_loss,
)
from iegkit.functional.shrinkage import shrink_toward_init

__all__ = ["MetaReweighter"]


class MetaReweighter(PartBase):
    """omega* = max(-dL_p/d omega, 0) / (sum + eps), and the loss sum_i omega*_i CE(t_i, f(x_i)).

    Args:
      weight_init: omega0, the point where the meta-gradient is taken: "auto" (default) is 0 as in
        L2R (Ren et al. 2018) alone and 1/B (IEG, paper footnote 1) when a MetaRelabeler shares the
        look-ahead (its lambda meta-gradient is exactly 0 at omega0 = 0); or a number, or "1/B".
      label_mix: None for the target onehot(y) (L2R); a number lambda0 for the soft target
        lambda0 y + (1 - lambda0) g of IEG's L_omega* (official code: 0.9; requires pseudo labels;
        must equal the relabeler's label_init).
      loss_weight: factor on the loss term (IEG's official code uses 1/2).
      normalizer_eps: the official code divides by sum + 1e-5; 0 normalises exactly.
      lookahead_lr: the look-ahead's learning rate (default: the optimizer's current lr).
      normalize: under DDP, "global" (default: the weights sum to 1 over all processes' batches,
        one scalar all-reduce, and the loss is scaled by the world size so that DDP's gradient
        average gives one process's step on the concatenated batch) or "per_rank" (the official
        code's per-replica normalisation). The same without DDP.
      shrinkage: beta in [0, 1]; the loss uses (1 - beta) omega* + beta / B (B: the examples the
        weights are normalised over), omega* shrunk toward uniform weights (robust IEG; 0, the
        paper's rule, by default). ``keys.WEIGHTS`` holds the weights the loss used. An all-zero
        omega* then gives beta / B everywhere (the prior), not the paper's empty step.

    Provides ``keys.WEIGHTS`` and the per-example losses ``keys.REWEIGHTED_LOSSES``; the loss
    ``loss_weight * sum_i omega_i l_i`` is assembled in the pipeline's loss stage from their final
    values, so a part that refines either changes the loss.
      loss: None (cross-entropy) or a per-example loss ``(logits, targets) -> (B,)`` to reweight,
        e.g. ``functools.partial(functional.generalized_cross_entropy, q=0.7)``: the look-ahead
        then steps along sum_i omega0_i l_i and takes dL_p/d omega_i = <u_i, d l_i / d z_i>, still
        exact. Not with ``label_mix`` or a MetaRelabeler (their meta-gradients assume
        cross-entropy).
    """

    # a schedule part sets this step's lr, LRWarmup scales it: look ahead with that lr
    optional_requires = (keys.LR, keys.LR_SCALE)
    provides = (keys.WEIGHTS, keys.REWEIGHTED_LOSSES)
    loss_reads = (keys.WEIGHTS, keys.REWEIGHTED_LOSSES)

    def __init__(
        self,
        weight_init: WeightInit = "auto",
        *,
        label_mix: float | None = None,
        loss_weight: float = 1.0,
        normalizer_eps: float = OFFICIAL_NORMALIZER_EPS,
        lookahead_lr: float | None = None,
        normalize: str = "global",
        shrinkage: float = 0.0,
        loss: InnerLoss | None = None,
        name: str = "meta_reweighter",
    ) -> None:
        if normalize not in ("global", "per_rank"):
            raise ValueError(f"normalize: expected 'global' or 'per_rank', got {normalize!r}")
        parse_weight_init(weight_init)  # refused here, at construction, rather than at compose
        if label_mix is not None and not 0.0 <= label_mix <= 1.0:
            raise ValueError(f"label_mix: expected a value in [0, 1], got {label_mix}")
        if not 0.0 <= shrinkage <= 1.0:
            raise ValueError(f"shrinkage: expected a value in [0, 1], got {shrinkage}")
        if normalizer_eps < 0:
            raise ValueError(f"normalizer_eps: expected >= 0, got {normalizer_eps}")
        if loss is not None and not callable(loss):
            raise TypeError(f"loss: expected None or a callable (logits, targets) -> (B,), got "
                            f"{type(loss).__name__}")
        if loss is not None and label_mix is not None:
            raise ValueError("loss: a loss other than cross-entropy cannot take label_mix's soft "
                             "targets; pass label_mix=None")
        self.name = name
        self.weight_init = weight_init
        self.label_mix = label_mix
        self.loss_weight = loss_weight
        self.normalizer_eps = normalizer_eps
        self.lookahead_lr = lookahead_lr
        self.normalize = normalize
        self.shrinkage = shrinkage
        self.loss = loss
        self.requires: tuple[str, ...] = (keys.PSEUDO_TARGETS,) if label_mix is not None else ()

    def setup(self, plan: Plan) -> None:
        plan.request_meta(owner=self.name, weight_init=self.weight_init, lr=self.lookahead_lr,
                          loss_label_mix=self.label_mix, inner_loss=self.loss)

    def _per_example_loss(self, ctx: StepContext) -> torch.Tensor:
        logits = ctx.logits("input")
        if self.loss is not None:
            return self.loss(logits, ctx.targets)
        pseudo = ctx.get(keys.PSEUDO_TARGETS) if self.label_mix is not None else None
        target = mix_targets(ctx.targets, logits.shape[-1], self.label_mix, pseudo).to(logits.dtype)
        return soft_cross_entropy(logits, target)

    def contribute(self, ctx: StepContext) -> Contribution:
        meta = ctx.meta()
        group = ctx.process_group if self.normalize == "global" else None
        weights = normalize_meta_weights(meta.weight, self.normalizer_eps, process_group=group)
        nonzero = (weights > 0).to(torch.float32).mean()
        if self.shrinkage:
            uniform = 1.0 / (weights.shape[0] * world_size(group))
            weights = shrink_toward_init(weights, uniform, self.shrinkage)
        # made here, not in the loss stage: for L2R this is the step's real forward, which must
        # run before any other part's views; only the weighted sum waits for the refiners
        per_example = self._per_example_loss(ctx)
        loss = StagedLoss((keys.WEIGHTS, keys.REWEIGHTED_LOSSES),
                          partial(self._loss, world_size(group)))
        return Contribution(
            values={keys.WEIGHTS: weights, keys.REWEIGHTED_LOSSES: per_example},
            staged_losses={"loss": loss},
            metrics={
                "probe_loss": meta.probe_loss,
                "nonzero_fraction": nonzero,  # of omega*, before any shrinkage
                # 1 when the meta-gradients overflowed (float16) and this step used uniform weights
                "nonfinite_fallback": torch.tensor(float(not meta.finite)),
            },
        )

    def _loss(self, scale: int, weights: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """The loss stage's term, from the final (refined) weights and per-example losses."""
        return self.loss_weight * weighted_loss(weights, losses, scale)
