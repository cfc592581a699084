"""MetaRelabeler: keep the given label or take the pseudo label, by the meta-gradient's sign (IEG eq. 3-5)."""

from __future__ import annotations

from functools import partial

from torch import Tensor

from iegkit._core import keys
from iegkit._core.context import StepContext
from iegkit._core.part import Contribution, PartBase, Plan, StagedLoss, WeightInit
from iegkit.functional.relabel import relabel_from_meta_gradient, relabeled_cross_entropy
from iegkit.functional.shrinkage import shrink_toward_init

__all__ = ["MetaRelabeler"]


class MetaRelabeler(PartBase):
    """lambda*_i = 1 where dL_p/d lambda_i < 0 (keep y_i), else 0 (pseudo label g_i), and the loss
    L_lambda* = (1/B) sum_i CE(lambda*_i y_i + (1 - lambda*_i) g_i, f(x_i)) (eq. 5).

    Shares the look-ahead with MetaReweighter: one virtual step, one probe pass and one JVP give
    both meta-gradients. The pseudo labels it reads (``keys.PSEUDO_TARGETS``) are the last refined
    ones (e.g. after DistributionAlignment).

    Args:
      label_init: lambda0, where the meta-gradient is taken (0.9, paper footnote 1).
      weight_init: omega0; None uses the MetaReweighter's, or 1/B without one. 0 is refused (the
        lambda meta-gradient is exactly 0 there).
      loss_weight: factor on L_lambda* (the official code sums 1/2 (L_lambda* + L_omega*)).
      through_pseudo_labels: the official code's look-ahead differentiates through the pseudo
        labels (docs/method.md, spec §1.2); True reproduces it exactly at the cost of one
        more JVP per extra view; it needs a pseudo labeler that provides ``keys.PSEUDO_LABELER``
        (not an EMA teacher, whose labels do not depend on the weights). False (default) treats
        them as constants.
      shrinkage: beta in [0, 1]; the target uses (1 - beta) lambda* + beta lambda0, lambda*
        shrunk toward label_init (robust IEG; 0, the paper's rule, by default). ``keys.RELABEL``
        holds the lambda the loss used.

    The loss is assembled in the pipeline's loss stage from the final ``keys.RELABEL`` and
    ``keys.PSEUDO_TARGETS``, so a part that refines lambda changes the targets the loss uses.
    """

    optional_requires = (keys.LR, keys.LR_SCALE)
    provides = (keys.RELABEL,)
    loss_reads = (keys.RELABEL, keys.PSEUDO_TARGETS)

    def __init__(self, label_init: float = 0.9, *, weight_init: WeightInit | None = None,
                 loss_weight: float = 1.0, through_pseudo_labels: bool = False,
                 shrinkage: float = 0.0, name: str = "meta_relabeler") -> None:
        if not 0.0 <= label_init <= 1.0:
            raise ValueError(f"label_init: expected a value in [0, 1], got {label_init}")
        if not 0.0 <= shrinkage <= 1.0:
            raise ValueError(f"shrinkage: expected a value in [0, 1], got {shrinkage}")
        self.name = name
        self.label_init = label_init
        self.shrinkage = shrinkage
        self.weight_init = weight_init
        self.loss_weight = loss_weight
        self.through_pseudo_labels = through_pseudo_labels
        self.requires: tuple[str, ...] = (keys.PSEUDO_TARGETS,) + (
            (keys.PSEUDO_LABELER,) if through_pseudo_labels else ())

    def setup(self, plan: Plan) -> None:
        plan.request_meta(owner=self.name, weight_init=self.weight_init, label_init=self.label_init,
                          pseudo_targets_key=keys.PSEUDO_TARGETS,
                          pseudo_source_key=keys.PSEUDO_LABELER if self.through_pseudo_labels
                          else None)

    def contribute(self, ctx: StepContext) -> Contribution:
        meta = ctx.meta()
        decision = relabel_from_meta_gradient(meta.label)
        relabel = shrink_toward_init(decision, self.label_init, self.shrinkage)
        loss = StagedLoss((keys.RELABEL, keys.PSEUDO_TARGETS),
                          partial(self._loss, ctx.logits("input"), ctx.targets))
        return Contribution(
            values={keys.RELABEL: relabel},
            staged_losses={"loss": loss},
            metrics={"kept_fraction": decision.float().mean()},  # of lambda*, before shrinkage
        )

    def _loss(self, logits: Tensor, targets: Tensor, relabel: Tensor, pseudo: Tensor) -> Tensor:
        """The loss stage's term, from the final (refined) lambda and pseudo labels."""
        return self.loss_weight * relabeled_cross_entropy(logits, targets, relabel, pseudo)
