"""ProbeMixUp: MixUp of the probe batch with the pseudo-labelled views (IEG section 2.2.2, eq. 6)."""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor

from iegkit._core import keys
from iegkit._core.context import StepContext
from iegkit._core.part import Contribution, PartBase, Plan
from iegkit.functional.losses import soft_cross_entropy
from iegkit.functional.mixup import mix_coefficients, mixup_batch, resample
from iegkit.functional.pseudo_label import logit_norm
from iegkit.functional.schedule import check_rampup, linear_rampup

__all__ = ["ProbeMixUp", "probe_mixup_pool"]


def probe_mixup_pool(probe_inputs: Tensor, probe_targets: Tensor, weak: Tensor, strong: Tensor,
                     pseudo: Tensor, targets: Tensor, *, weights: Tensor | None = None,
                     threshold: float | None = None,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The 3B pool [probe resampled to B | weak | strong] and its targets [onehot(y_p) | g | g].

    With ``threshold`` T (the paper's split I(omega* < T), Algorithm 1 step 4), examples with
    omega*_i >= T count as possibly clean and keep onehot(y_i) in both views; T = 1 (or None, the
    official code) is a no-op because normalised omega* < 1.
    """
    b, num_classes = weak.shape[0], pseudo.shape[-1]
    idx = resample(b, probe_inputs.shape[0], generator).to(probe_inputs.device)
    unlabeled = pseudo
    if threshold is not None:
        if weights is None:
            raise ValueError("weights: the threshold split needs the MetaReweighter's weights")
        clean = (weights >= threshold)[:, None]
        unlabeled = torch.where(clean, F.one_hot(targets, num_classes).to(pseudo.dtype), pseudo)
    pool_inputs = torch.cat([probe_inputs[idx], weak, strong])
    pool_targets = torch.cat([F.one_hot(probe_targets[idx], num_classes).to(pseudo.dtype),
                              unlabeled, unlabeled])
    return pool_inputs, pool_targets


class ProbeMixUp(PartBase):
    """L^p_beta + p L^u_beta: the 3B pool mixed with a permutation of itself, forwarded once.

    Args:
      unlabeled_weight: p (5 for CIFAR, 4 for WebVision).
      coefficient: "official" (m = 1 - U^2/2, anchor dominates), "beta" (the paper's Beta(0.5, 0.5))
        or "beta_max" (MixMatch's max(b, 1 - b)).
      alpha: the Beta parameter (0.5).
      normalize_logits: the official per-chunk RMS logit normalisation before the cross-entropies.
      threshold: None (official: every example is pseudo-labelled) or T of the paper's split.
      rampup_steps: None (official: p from the first step) or a linear ramp of p from 0 over that
        many steps (MixMatch's ramp-up), against confirmation bias of early pseudo labels. p is
        also multiplied by ``keys.UNLABELED_GATE`` when a part (TrustedGate) provides it.
      targets: "pseudo" (IEG: the weak and strong rows take the pseudo labels) or "given" (the
        plain+ baseline: they take the given, possibly wrong labels, and no pseudo labeler is
        needed; the strong view then comes from ``StrongView``).
    """

    needs_probe = True
    optional_requires = (keys.UNLABELED_MASK, keys.UNLABELED_GATE)

    def __init__(self, unlabeled_weight: float = 5.0, *, coefficient: str = "official",
                 alpha: float = 0.5, normalize_logits: bool = True, threshold: float | None = None,
                 rampup_steps: int | None = None, targets: str = "pseudo",
                 name: str = "probe_mixup") -> None:
        mix_coefficients(1, torch.Generator(), kind=coefficient, alpha=alpha)  # validates
        if targets not in ("pseudo", "given"):
            raise ValueError(f"targets: expected 'pseudo' or 'given', got {targets!r}")
        if targets == "given" and threshold is not None:
            raise ValueError("threshold: the split by omega* applies to pseudo labels; with "
                             "targets='given' pass threshold=None")
        if unlabeled_weight < 0:
            raise ValueError(f"unlabeled_weight: expected >= 0, got {unlabeled_weight}")
        self.name = name
        self.unlabeled_weight = unlabeled_weight
        self.coefficient = coefficient
        self.alpha = alpha
        self.normalize_logits = normalize_logits
        self.threshold = threshold
        self.rampup_steps = check_rampup(rampup_steps)
        self.targets = targets
        self.requires: tuple[str, ...] = (
            (keys.PSEUDO_TARGETS,) if targets == "pseudo" else ()) + (keys.STRONG_VIEW,) + (
            (keys.WEIGHTS,) if threshold is not None else ())

    def setup(self, plan: Plan) -> None:
        plan.declare_built_view("mixed", owner=self.name, rows="3B")

    def contribute(self, ctx: StepContext) -> Contribution:
        generator = ctx.generator(self.name)
        b = ctx.batch_size
        if self.targets == "pseudo":
            row_targets = ctx.get(keys.PSEUDO_TARGETS)
        else:
            row_targets = F.one_hot(ctx.targets, ctx.logits("input").shape[-1]).to(
                ctx.inputs.dtype if ctx.inputs.is_floating_point() else torch.float32)
        pool_inputs, pool_targets = probe_mixup_pool(
            ctx.view("probe"), ctx.probe_targets, ctx.inputs, ctx.get(keys.STRONG_VIEW),
            row_targets, ctx.targets,
            weights=ctx.get(keys.WEIGHTS) if self.threshold is not None else None,
            threshold=self.threshold, generator=generator,
        )
        m = mix_coefficients(3 * b, generator, kind=self.coefficient, alpha=self.alpha,
                             dtype=pool_targets.dtype)
        perm = torch.randperm(3 * b, generator=generator)
        mixed_inputs, mixed_targets = mixup_batch(pool_inputs, pool_targets, m.to(pool_inputs.device),
                                                  perm.to(pool_inputs.device))
        logits = ctx.forward_view("mixed", mixed_inputs)
        chunks = logits.split(b)
        if self.normalize_logits:
            chunks = [logit_norm(chunk) for chunk in chunks]
        probe_loss = soft_cross_entropy(chunks[0], mixed_targets[:b]).mean()
        unlabeled_rows = soft_cross_entropy(torch.cat(chunks[1:]), mixed_targets[b:])
        mask = ctx.get(keys.UNLABELED_MASK, None)
        if mask is not None:
            # FixMatch: masked rows count as zero loss over a fixed denominator, so an empty mask
            # gives 0, not 0/0. Each mixed row is masked by its anchor (m >= 1/2 keeps it dominant).
            mask = mask.to(unlabeled_rows.dtype)
            unlabeled_loss = (unlabeled_rows * torch.cat([mask, mask])).mean()
        else:
            unlabeled_loss = unlabeled_rows.mean()
        weight = (self.unlabeled_weight * linear_rampup(ctx.step, self.rampup_steps)
                  * float(ctx.get(keys.UNLABELED_GATE, 1.0)))
        return Contribution(losses={"probe": probe_loss, "unlabeled": weight * unlabeled_loss},
                            metrics={"unlabeled_weight": torch.tensor(weight)})
