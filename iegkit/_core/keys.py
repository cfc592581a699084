"""The context keys the built-in parts exchange: one place for every name.

A key names a value one part provides (and others may refine) during a step. Third-party parts may
use their own keys; these are the ones iegkit's parts read and write.
"""

from __future__ import annotations

__all__ = ["IMAGE_LABELER", "LR", "LR_SCALE", "PSEUDO_LABELER", "PSEUDO_TARGETS", "RELABEL",
           "REWEIGHTED_LOSSES", "STRONG_VIEW", "STRONG_VIEW_NAME", "UNLABELED_GATE", "UNLABELED_MASK",
           "WEIGHTS"]

#: omega* (B,): per-example weights from the meta-gradient (MetaReweighter). Its loss
#: sum_i omega_i l_i is assembled in the loss stage, so a part that refines it changes the loss.
WEIGHTS = "weights"
#: l (B,), with graph: the per-example losses the weights multiply (MetaReweighter), read with
#: ``WEIGHTS`` in the loss stage (refinable too).
REWEIGHTED_LOSSES = "losses:reweighted"
#: lambda* (B,): 1 keeps the given label, 0 takes the pseudo label (MetaRelabeler). Its loss is
#: assembled in the loss stage, so a part that refines it changes the targets the loss uses.
RELABEL = "relabel"
#: g (B, C): detached pseudo labels on the simplex (ConsistencyPseudoLabeler; refined by
#: DistributionAlignment).
PSEUDO_TARGETS = "targets:pseudo"
#: A ``PseudoLabelSource``: how the pseudo labels are made from view logits, for the official
#: look-ahead that differentiates through them.
PSEUDO_LABELER = "fn:pseudo_labels"
#: The name under which the strong view is declared and forwarded (``plan.add_view``,
#: ``ctx.logits``, ``ctx.view``, ``pipeline(..., views={STRONG_VIEW_NAME: ...})``).
STRONG_VIEW_NAME = "strong"
#: The strong-view inputs (B, ...), forwarded once per step (as the view ``STRONG_VIEW_NAME``) and
#: shared.
STRONG_VIEW = f"view:{STRONG_VIEW_NAME}"
#: ``label_images(model, images, generator) -> (N, C)``: pseudo labels of any images, made as the
#: step makes them, without gradients or BatchNorm updates (ConsistencyPseudoLabeler; read by
#: TrustedGate to label its held-out fold).
IMAGE_LABELER = "fn:label_images"
#: (B,) in [0, 1]: which examples the unlabeled terms keep (ConfidenceMask).
UNLABELED_MASK = "mask:unlabeled"
#: A 0-dim tensor in [0, 1] that scales the unlabeled terms' weights p and k (TrustedGate).
UNLABELED_GATE = "gate:unlabeled"
#: This step's learning rate, set on the optimizer by a schedule part. The meta parts order after
#: it so that the look-ahead uses the lr the real step will use.
LR = "lr"
#: A 0-d float64 factor on every group's lr for this step's look-ahead and ``optimizer.step()``
#: only (``LRWarmup``); the user's lr itself is never changed. The meta parts order after it.
LR_SCALE = "lr_scale"
