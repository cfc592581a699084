"""Named methods built from parts (optax's alias.py): plain, L2R, EG, IEG and the ablations IEG-1..8.

Each recipe takes the user's model and optimizer and the paper's hyper-parameters as defaults, and
returns a composed, bound ``Pipeline``. ``pipeline.describe()`` prints the parts and passes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from iegkit._core.compose import Pipeline, compose
from iegkit._core.part import Part
from iegkit.parts import (
    ConfidenceMask,
    ConsistencyPseudoLabeler,
    CrossEntropy,
    DistributionAlignment,
    ForwardCorrection,
    GeneralizedCrossEntropy,
    KLConsistency,
    LRWarmup,
    MetaRelabeler,
    MetaReweighter,
    NoisyLabelPosterior,
    ProbeMixUp,
    SGDRSchedule,
    SmallLossSelection,
    StrongView,
    SymmetricCrossEntropy,
    TrustedCrossEntropy,
    TrustedGate,
)

__all__ = ["BASELINES", "RECIPES", "REQUIRED", "SPECS", "TABLE7", "RecipeSpec", "ablation",
           "build", "eg", "forward_online", "gce", "glc", "glc_transition", "ieg", "l2r", "l2r_gce",
           "method_names", "plain", "plain_plus", "required_options", "robust_eg", "robust_ieg",
           "sce", "small_loss"]

Augment = Callable[..., torch.Tensor]

#: Table 7 of the paper: the components of IEG-1..8 (UC: KL consistency, MC: MixUp cross-entropy,
#: AA: AutoAugment in the strong view, lambda: meta relabeling). IEG-1 is L2R-style reweighting
#: only; IEG-5 is the full IEG.
TABLE7: dict[int, frozenset[str]] = {
    1: frozenset(),
    2: frozenset({"lambda"}),
    3: frozenset({"AA", "lambda"}),
    4: frozenset({"MC", "AA", "lambda"}),
    5: frozenset({"UC", "MC", "AA", "lambda"}),
    6: frozenset({"UC", "AA", "lambda"}),
    7: frozenset({"UC", "MC", "lambda"}),
    8: frozenset({"UC", "MC", "AA"}),
}
COMPONENTS = frozenset({"UC", "MC", "AA", "lambda"})
#: the components that need pseudo labels (AA only changes their strong view)
PSEUDO_LABEL_COMPONENTS = frozenset({"UC", "MC", "lambda"})
#: robust_ieg/robust_eg ramp p and k over this fraction of the run (selected on digits' validation
#: split, docs/results.md).
ROBUST_RAMPUP_FRACTION = 1.0
#: robust_ieg shrinks omega* toward 1/B and lambda* toward lambda0 by this much (selected on the
#: validation split of CIFAR-10 cpu10k, docs/results.md).
ROBUST_META_SHRINKAGE = 0.75
#: robust_eg warms its lr up over this fraction of the run (``LRWarmup``; selected on the
#: validation split of CIFAR-10 cpu10k, docs/results.md). robust_ieg: 0 (it learns from the noisy
#: labels from the first step and its teacher stays balanced without; a warm-up is an option).
ROBUST_EG_WARMUP_FRACTION = 0.05


def _schedule(optimizer, first_cycle_steps: int | None, t_mul: float, m_mul: float,
              warmup_steps: int = 0) -> list[Part]:
    """SGDR when the recipe owns the schedule; an ``LRWarmup`` on top of whichever schedule runs
    (SGDR's or the user's) when there is a warm-up."""
    parts: list[Part] = [LRWarmup(warmup_steps)] if warmup_steps else []
    if first_cycle_steps is not None:
        parts.append(SGDRSchedule(optimizer, first_cycle_steps, t_mul=t_mul, m_mul=m_mul))
    return parts


def _warmup_steps(total_steps: int, warmup_fraction: float) -> int:
    if not 0.0 <= warmup_fraction <= 1.0:
        raise ValueError(f"warmup_fraction: expected a value in [0, 1], got {warmup_fraction}")
    return round(warmup_fraction * total_steps)


def _default_strong(policy: str | None) -> Augment:
    """The strong view when the user passes none: it follows the images it is given (channels,
    size; ``augment.FittedStrongAugment``), AutoAugment's CIFAR-10 policy for RGB where ``policy``
    asks for it. Images in [0, 1]; other ranges pass their own view."""
    from iegkit.augment import FittedStrongAugment

    return FittedStrongAugment(autoaugment=policy is not None)


def _check_components(components: Collection[str]) -> frozenset[str]:
    unknown = set(components) - COMPONENTS
    if unknown:
        raise ValueError(f"components: unknown {sorted(unknown)}; choose from {sorted(COMPONENTS)}")
    return frozenset(components)


def _strong_view(components: frozenset[str], strong_augment: Augment | None,
                 plain_strong_augment: Augment | None) -> Augment:
    """The strong view with AutoAugment ("AA" in Table 7's components) or without it; each
    defaults to ``iegkit.augment.strong_augment`` (CIFAR-10 policy, or no policy)."""
    if "AA" in components:
        return strong_augment if strong_augment is not None else _default_strong("cifar10")
    return plain_strong_augment if plain_strong_augment is not None else _default_strong(None)


def plain(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, seed: int = 0) -> Pipeline:
    """Cross-entropy on the noisy labels; the probe batch is not used."""
    return compose(CrossEntropy(), model=model, optimizer=optimizer, seed=seed)


def l2r(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    weight_init: float | str = 0.0,
    lookahead_lr: float | None = None,
    normalizer_eps: float = 1e-5,
    first_cycle_steps: int | None = None,
    t_mul: float = 1.5,
    m_mul: float = 0.9,
    seed: int = 0,
) -> Pipeline:
    """Learning to Reweight (Ren et al. 2018): omega0 = 0, one exact look-ahead with the user's
    optimizer, weights max(-grad, 0) normalised, loss sum_i omega*_i CE(y_i)."""
    return compose(
        MetaReweighter(weight_init, lookahead_lr=lookahead_lr, normalizer_eps=normalizer_eps),
        *_schedule(optimizer, first_cycle_steps, t_mul, m_mul),
        model=model, optimizer=optimizer, seed=seed,
    )


def eg(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    strong_augment: Augment | None = None,
    unlabeled_weight: float = 5.0,
    consistency_weight: float = 20.0,
    temperature: float = 0.5,
    mixup_coefficient: str = "official",
    normalize_logits: bool = True,
    rampup_steps: int | None = None,
    first_cycle_steps: int | None = None,
    t_mul: float = 1.5,
    m_mul: float = 0.9,
    seed: int = 0,
    probe_diagnostics_every: int | None = 10,
) -> Pipeline:
    """EG (paper section 3.4): IEG without Isolation. The noisy labels are ignored: all training data
    is unlabeled (pseudo labels), the probe set is the labeled set. Loss L^p + p L^u + k KL.
    (Not torchopt's "explicit gradient".) ``rampup_steps``: None (official) or a linear ramp-up of
    p and k (MixMatch's), which tiny datasets need against early confirmation bias."""
    strong = _strong_view(frozenset({"AA"}), strong_augment, None)
    return compose(
        *_pseudo_label_stack(strong, temperature=temperature, normalize_logits=normalize_logits,
                             probe_diagnostics_every=probe_diagnostics_every),
        ProbeMixUp(unlabeled_weight, coefficient=mixup_coefficient,
                   normalize_logits=normalize_logits, rampup_steps=rampup_steps),
        KLConsistency(consistency_weight, rampup_steps=rampup_steps),
        *_schedule(optimizer, first_cycle_steps, t_mul, m_mul),
        model=model, optimizer=optimizer, seed=seed,
    )


def ieg(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    strong_augment: Augment | None = None,
    plain_strong_augment: Augment | None = None,
    components: Collection[str] = COMPONENTS,
    unlabeled_weight: float = 5.0,
    consistency_weight: float = 20.0,
    label_init: float = 0.9,
    weight_init: float | str = "1/B",
    temperature: float = 0.5,
    mixup_coefficient: str = "official",
    threshold: float | None = None,
    normalize_logits: bool = True,
    lookahead_lr: float | None = None,
    through_pseudo_labels: bool = False,
    rampup_steps: int | None = None,
    first_cycle_steps: int | None = None,
    t_mul: float = 1.5,
    m_mul: float = 0.9,
    seed: int = 0,
    probe_diagnostics_every: int | None = 10,
) -> Pipeline:
    """IEG (Algorithm 1) with the official code's choices (docs/method.md):

    1/2 (L_lambda* + L_omega*) + L^p + p L^u + k KL, with omega0 = 1/B, lambda0 = 0.9, L_omega*'s
    target 0.9 y + 0.1 g, p = 5, k = 20, tau = 0.5, MixUp m = 1 - U^2/2.

    Args:
      strong_augment: the strong view (default: ``iegkit.augment.strong_augment("cifar10")``:
        AutoAugment CIFAR-10 policy, flip, crop, cutout 16).
      plain_strong_augment: the strong view without AutoAugment, used when "AA" is not in
        ``components`` (default: flip, crop, cutout).
      components: a subset of {"UC", "MC", "AA", "lambda"} (Table 7); the isolation (reweighting)
        is always on. Without "lambda" the reweighted loss uses the given labels with weight 1.
      threshold: None (official, no split) or T of the paper's I(omega* < T) split in the MixUp.
      lookahead_lr: None uses the optimizer's current lr (exact); the official code uses 0.1.
      through_pseudo_labels: the official look-ahead differentiates through the pseudo labels
        (one more JVP per step); False treats them as constants.
      rampup_steps: None (official) or a linear ramp-up of p and k from 0 over that many steps.
      first_cycle_steps: adds SGDRSchedule (the paper: one epoch, t_mul 1.5, m_mul 0.9).
    """
    components = _check_components(components)
    parts: list[Part] = []
    if components & PSEUDO_LABEL_COMPONENTS:
        parts += _pseudo_label_stack(
            _strong_view(components, strong_augment, plain_strong_augment),
            temperature=temperature, normalize_logits=normalize_logits,
            probe_diagnostics_every=probe_diagnostics_every)
    if "lambda" in components:
        parts.append(MetaReweighter(weight_init, label_mix=label_init, loss_weight=0.5,
                                    lookahead_lr=lookahead_lr))
        parts.append(MetaRelabeler(label_init, loss_weight=0.5,
                                   through_pseudo_labels=through_pseudo_labels))
    else:
        parts.append(MetaReweighter(weight_init, lookahead_lr=lookahead_lr))
    if "MC" in components:
        parts.append(ProbeMixUp(unlabeled_weight, coefficient=mixup_coefficient,
                                normalize_logits=normalize_logits, threshold=threshold,
                                rampup_steps=rampup_steps))
    if "UC" in components:
        parts.append(KLConsistency(consistency_weight, rampup_steps=rampup_steps))
    parts.extend(_schedule(optimizer, first_cycle_steps, t_mul, m_mul))
    return compose(*parts, model=model, optimizer=optimizer, seed=seed)


def _robust_rampup_steps(total_steps: int, rampup_fraction: float) -> int:
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps: expected an integer >= 1, got {total_steps!r}")
    if not 0.0 < rampup_fraction <= 1.0:
        raise ValueError(f"rampup_fraction: expected a value in (0, 1], got {rampup_fraction}")
    return max(1, round(rampup_fraction * total_steps))


def _pseudo_label_stack(strong: Augment, *, temperature: float, normalize_logits: bool = True,
                        teacher_decay: float | None = None,
                        alignment_momentum: float | None = None,
                        confidence_threshold: float | None = None,
                        probe_diagnostics_every: int | None = 10,
                        trusted_holdout: tuple[torch.Tensor, torch.Tensor] | None = None,
                        gate_margin: float = 0.1,
                        label_posterior: bool = False,
                        label_accuracy: float | None = None,
                        label_transition: torch.Tensor | None = None) -> list[Part]:
    """The pseudo labels of every recipe that has them: the labeler (an EMA teacher with
    ``teacher_decay``) and the safeguards that refine, mask or gate its labels (none by default:
    EG's and IEG's official stack)."""
    labeler = ConsistencyPseudoLabeler(strong, temperature=temperature,
                                       normalize_logits=normalize_logits,
                                       teacher_decay=teacher_decay,
                                       probe_diagnostics_every=probe_diagnostics_every)
    parts: list[Part] = [labeler]
    if alignment_momentum is not None:
        parts.append(DistributionAlignment(momentum=alignment_momentum, temperature=temperature))
    if label_posterior:
        parts.append(NoisyLabelPosterior(temperature=temperature, label_accuracy=label_accuracy,
                                         transition=label_transition))
    elif label_accuracy is not None or label_transition is not None:
        name = "label_accuracy" if label_accuracy is not None else "label_transition"
        raise ValueError(f"{name}: only used by the label posterior; pass label_posterior=True "
                         f"or leave {name}=None")
    if confidence_threshold is not None:
        parts.append(ConfidenceMask(confidence_threshold))
    if trusted_holdout is not None:
        if not (isinstance(trusted_holdout, tuple) and len(trusted_holdout) == 2):
            raise TypeError("trusted_holdout: expected a tuple (images, labels) of held-out "
                            "trusted examples")
        parts.append(TrustedGate(*trusted_holdout, margin=gate_margin))
    return parts


def robust_ieg(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    strong_augment: Augment | None = None,
    seed: int = 0,
    components: Collection[str] = COMPONENTS,
    plain_strong_augment: Augment | None = None,
    unlabeled_weight: float = 5.0,
    consistency_weight: float = 20.0,
    label_init: float = 0.9,
    temperature: float = 0.5,
    teacher_decay: float | None = 0.99,
    alignment_momentum: float | None = 0.99,
    confidence_threshold: float | None = None,
    trusted_holdout: tuple[torch.Tensor, torch.Tensor] | None = None,
    gate_margin: float = 0.1,
    meta_shrinkage: float = ROBUST_META_SHRINKAGE,
    label_posterior: bool = True,
    label_accuracy: float | None = None,
    label_transition: torch.Tensor | None = None,
    rampup_fraction: float = ROBUST_RAMPUP_FRACTION,
    warmup_fraction: float = 0.0,
    lookahead_lr: float | None = None,
    first_cycle_steps: int | None = None,
    t_mul: float = 1.5,
    m_mul: float = 0.9,
    probe_diagnostics_every: int | None = 10,
) -> Pipeline:
    """IEG with safeguards against the collapse of the pseudo labels (docs/method.md, "Robust IEG").

    The official objective and parts of ``ieg`` (1/2 (L_lambda* + L_omega*) + L^p + p L^u + k KL,
    omega0 = 1/B, lambda0 = 0.9, p = 5, k = 20, tau = 0.5), with five differences:

    1. The pseudo labels come from an EMA teacher (``teacher_decay`` 0.99, mean teacher), not from
       the weights being trained.
    2. They are distribution-aligned (ReMixMatch): rescaled by uniform / running marginal of the
       teacher's predictions (``alignment_momentum`` 0.99).
    3. p and k ramp up linearly over ``rampup_fraction`` of ``total_steps`` (MixMatch's ramp-up;
       the paper has none). Derived from the run length, so nothing is set per dataset.
    4. The meta decisions are shrunk toward where their meta-gradient is taken (``meta_shrinkage``
       beta = 0.75): the losses use (1 - beta) omega* + beta / B and (1 - beta) lambda* + beta
       lambda0. With 100 trusted images the probe set is soon memorised and omega*, lambda* are
       mostly noise; on CIFAR-10 (cpu10k, validation split) 0.75 had the best worst-case gain
       over plain of 0 / 0.5 / 0.75 at 40% and 80% noise; beta = 1 (no meta step) was 1.2 points
       better at 40% but 4.9 worse at 80% (docs/results.md). beta = 0 is the paper's rule.
    5. The pseudo labels become the posterior of the true class given them (the prior) and the
       noisy given label (the evidence) through a symmetric noise channel whose accuracy is a
       running maximum-likelihood estimate (``NoisyLabelPosterior``, after the alignment;
       ``label_posterior``). The paper's pseudo labels ignore the given label, which at 40% noise
       on a small model is more often right than they are; on CIFAR-10 (cpu10k, validation split)
       this took robust IEG from 2.9 points below plain training to above it at 40% noise.

    ``teacher_decay=None`` / ``alignment_momentum=None`` drop a safeguard (for ablations);
    ``label_posterior=False`` drops difference 5; ``label_accuracy`` gives the posterior a known
    accuracy of the given labels (the fraction that is correct; 1 - rho + rho / C for uniform noise
    of rate rho over all C classes) instead of its running estimate; ``label_transition`` a
    class-conditional channel T[c, j] = P(given j | true c) instead of the symmetric one (GLC's
    C_hat from the trusted set, ``glc_transition``), for class-dependent noise.
    Optional: ``confidence_threshold`` adds FixMatch's mask on the unlabeled terms;
    ``trusted_holdout=(images, labels)``, trusted examples kept out of the probe set, adds a
    ``TrustedGate`` that scales p and k by the pseudo labels' measured accuracy on them
    (``gate_margin`` above chance opens it fully). The look-ahead
    treats the pseudo labels as constants (the teacher's do not depend on the weights).
    ``components`` selects Table 7's pieces as in ``ieg`` (the ablations with safeguards).
    ``warmup_fraction`` > 0 warms the lr up over that fraction of the run (``LRWarmup``, as
    ``robust_eg`` does by default; off here: not measured on robust IEG, whose teacher met the
    collapse bound without it).

    Evaluate and deploy the teacher's averaged weights, as the official code evaluates an EMA of
    the weights: ``with iegkit.evaluation_weights(pipeline): evaluate(model)``. Early in a run at a
    high learning rate the trained weights can put a third or more of the images into one class
    after single epochs; the teacher averages that swing away (docs/results.md).
    """
    rampup_steps = _robust_rampup_steps(total_steps, rampup_fraction)
    components = _check_components(components)
    if label_accuracy is not None and not components & PSEUDO_LABEL_COMPONENTS:
        raise ValueError(f"label_accuracy: unused without pseudo labels (components "
                         f"{sorted(components)} have none of UC, MC, lambda)")
    parts: list[Part] = []
    if components & PSEUDO_LABEL_COMPONENTS:
        parts += _pseudo_label_stack(
            _strong_view(components, strong_augment, plain_strong_augment),
            temperature=temperature, teacher_decay=teacher_decay,
            alignment_momentum=alignment_momentum, confidence_threshold=confidence_threshold,
            probe_diagnostics_every=probe_diagnostics_every, trusted_holdout=trusted_holdout,
            gate_margin=gate_margin, label_posterior=label_posterior,
            label_accuracy=label_accuracy, label_transition=label_transition)
    if "lambda" in components:
        parts.append(MetaReweighter("1/B", label_mix=label_init, loss_weight=0.5,
                                    lookahead_lr=lookahead_lr, shrinkage=meta_shrinkage))
        parts.append(MetaRelabeler(label_init, loss_weight=0.5, shrinkage=meta_shrinkage))
    else:
        parts.append(MetaReweighter("1/B", lookahead_lr=lookahead_lr, shrinkage=meta_shrinkage))
    if "MC" in components:
        parts.append(ProbeMixUp(unlabeled_weight, rampup_steps=rampup_steps))
    if "UC" in components:
        parts.append(KLConsistency(consistency_weight, rampup_steps=rampup_steps))
    parts.extend(_schedule(optimizer, first_cycle_steps, t_mul, m_mul,
                           _warmup_steps(total_steps, warmup_fraction)))
    return compose(*parts, model=model, optimizer=optimizer, seed=seed)


def robust_eg(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    strong_augment: Augment | None = None,
    seed: int = 0,
    unlabeled_weight: float = 5.0,
    consistency_weight: float = 20.0,
    temperature: float = 0.5,
    teacher_decay: float | None = 0.99,
    alignment_momentum: float | None = 0.99,
    confidence_threshold: float | None = None,
    trusted_holdout: tuple[torch.Tensor, torch.Tensor] | None = None,
    gate_margin: float = 0.1,
    rampup_fraction: float = ROBUST_RAMPUP_FRACTION,
    warmup_fraction: float = ROBUST_EG_WARMUP_FRACTION,
    first_cycle_steps: int | None = None,
    t_mul: float = 1.5,
    m_mul: float = 0.9,
    probe_diagnostics_every: int | None = 10,
) -> Pipeline:
    """EG (no isolation: the noisy labels are unused) with ``robust_ieg``'s safeguards: EMA-teacher
    pseudo labels, distribution alignment, p and k ramped over ``rampup_fraction`` of the run;
    ``confidence_threshold`` and ``trusted_holdout`` as there. Evaluate the teacher as there:
    ``with iegkit.evaluation_weights(pipeline): evaluate(model)``.

    One more difference from the paper: the lr warms up linearly over ``warmup_fraction`` of the
    run (``LRWarmup``, on top of the user's schedule or of ``SGDRSchedule`` with
    ``first_cycle_steps``; 0 has none, and so has a run too short for a warm-up of 2 steps or more,
    fewer than about 1.5 / ``warmup_fraction`` steps). Without the noisy labels the first epoch
    learns from the trusted images alone; at the full lr from a random start one class took 0.31 (trained weights)
    and 0.39 (teacher) of the validation predictions after epoch 1 on CIFAR-10 (cpu10k)."""
    rampup_steps = _robust_rampup_steps(total_steps, rampup_fraction)
    return compose(
        *_pseudo_label_stack(
            _strong_view(frozenset({"AA"}), strong_augment, None), temperature=temperature, teacher_decay=teacher_decay,
            alignment_momentum=alignment_momentum, confidence_threshold=confidence_threshold,
            probe_diagnostics_every=probe_diagnostics_every, trusted_holdout=trusted_holdout,
            gate_margin=gate_margin),
        ProbeMixUp(unlabeled_weight, rampup_steps=rampup_steps),
        KLConsistency(consistency_weight, rampup_steps=rampup_steps),
        *_schedule(optimizer, first_cycle_steps, t_mul, m_mul,
                   _warmup_steps(total_steps, warmup_fraction)),
        model=model, optimizer=optimizer, seed=seed,
    )


def ablation(n: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, **kwargs) -> Pipeline:
    """IEG-n of the paper's Table 7 (n = 1..8): ``ieg(..., components=TABLE7[n])``."""
    if n not in TABLE7:
        raise ValueError(f"n: expected an ablation number in 1..8 (Table 7), got {n}")
    return ieg(model, optimizer, components=TABLE7[n], **kwargs)


# --------------------------------------------------------------------------- baselines
# What a user would run instead of IEG (docs/method.md, "Baselines"); benchmarks/baselines.py
# compares them under one protocol.


def gce(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, q: float = 0.7,
        seed: int = 0) -> Pipeline:
    """Generalized cross-entropy L_q on the given labels (Zhang & Sabuncu 2018; q = 0.7)."""
    return compose(GeneralizedCrossEntropy(q), model=model, optimizer=optimizer, seed=seed)


def sce(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, alpha: float = 0.1,
        beta: float = 1.0, seed: int = 0) -> Pipeline:
    """Symmetric cross-entropy (Wang et al. 2019; CIFAR-10: alpha 0.1, beta 1.0, A = -4)."""
    return compose(SymmetricCrossEntropy(alpha, beta), model=model, optimizer=optimizer, seed=seed)


@torch.no_grad()
def glc_transition(model: torch.nn.Module, trusted_inputs: torch.Tensor,
                   trusted_labels: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """GLC's C_hat (Hendrycks et al. 2018): the mean softmax, in eval mode, of ``model`` (trained
    on the noisy labels: the first stage) over the trusted examples of each true class; float64."""
    from iegkit.functional.forward_correction import estimate_transition

    was_training = model.training
    model.eval()
    try:
        probs = torch.cat([torch.softmax(model(trusted_inputs[i:i + batch_size]).double(), -1)
                           for i in range(0, trusted_inputs.shape[0], batch_size)])
    finally:
        model.train(was_training)
    return estimate_transition(probs.cpu(), trusted_labels.cpu(), probs.shape[-1])


def glc(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, transition: torch.Tensor,
        trusted_weight: float = 1.0, seed: int = 0) -> Pipeline:
    """GLC's second stage (Hendrycks et al. 2018): a fresh model trained with the forward-corrected
    loss under C_hat (``glc_transition`` of a first model trained with ``plain``) on the noisy
    batch, plus cross-entropy on the trusted batch (weight ``trusted_weight``)."""
    return compose(ForwardCorrection(transition), TrustedCrossEntropy(loss_weight=trusted_weight),
                   model=model, optimizer=optimizer, seed=seed)


def forward_online(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, total_steps: int,
                   estimate_fraction: float = 0.5, momentum: float = 0.99,
                   trusted_weight: float = 1.0, seed: int = 0) -> Pipeline:
    """Forward correction in one run (our extension of GLC): plain cross-entropy while C_hat is a
    running average over the trusted batches for ``estimate_fraction`` of the run, then the
    corrected loss with it, plus cross-entropy on the trusted batch. The trusted term starts only
    when C_hat is frozen: trained on the trusted images, the model predicts their clean labels and
    C_hat collapses to the identity (what the first version did)."""
    if not 0.0 < estimate_fraction < 1.0:
        raise ValueError(f"estimate_fraction: expected a value in (0, 1), got {estimate_fraction}")
    steps = max(1, round(estimate_fraction * total_steps))
    return compose(ForwardCorrection("online", estimate_steps=steps, momentum=momentum),
                   TrustedCrossEntropy(loss_weight=trusted_weight, start_step=steps),
                   model=model, optimizer=optimizer, seed=seed)


def small_loss(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, noise_rate: float,
               steps_per_epoch: int, rampup_epochs: float = 10.0, seed: int = 0) -> Pipeline:
    """Small-loss selection on one network (Co-teaching's R(T), MentorNet's predefined curriculum):
    ``noise_rate`` estimated from the trusted set (``functional.noise_rate_from_transition`` of
    ``glc_transition``)."""
    return compose(SmallLossSelection(noise_rate, steps_per_epoch, rampup_epochs=rampup_epochs),
                   model=model, optimizer=optimizer, seed=seed)


def plain_plus(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *,
               strong_augment: Augment | None = None, mixup_weight: float = 1.0,
               coefficient: str = "official", seed: int = 0) -> Pipeline:
    """What a careful practitioner runs without a meta step: cross-entropy on the weak view, and
    IEG's MixUp of [trusted batch | weak | strong view] with the *given* labels (the trusted images
    in every batch, the strong view, MixUp; weight ``mixup_weight`` on the noisy rows)."""
    strong = strong_augment if strong_augment is not None else _default_strong("cifar10")
    return compose(CrossEntropy(), StrongView(strong),
                   ProbeMixUp(mixup_weight, targets="given", normalize_logits=False,
                              coefficient=coefficient),
                   model=model, optimizer=optimizer, seed=seed)


def l2r_gce(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, q: float = 0.7,
            weight_init: float | str = 0.0, seed: int = 0) -> Pipeline:
    """A composition no anchor offers: L2R's exact meta reweighting over the GCE loss (the
    look-ahead steps along and reweights L_q instead of cross-entropy)."""
    from functools import partial

    from iegkit.functional.robust_losses import generalized_cross_entropy

    return compose(MetaReweighter(weight_init, loss=partial(generalized_cross_entropy, q=q)),
                   model=model, optimizer=optimizer, seed=seed)


#: The baselines by name (``build`` accepts them; glc needs ``transition``, small_loss
#: ``noise_rate`` and ``steps_per_epoch``, forward_online ``total_steps``).
BASELINES: dict[str, Callable[..., Pipeline]] = {
    "gce": gce, "sce": sce, "glc": glc, "forward_online": forward_online, "small_loss": small_loss,
    "plain_plus": plain_plus, "l2r_gce": l2r_gce}


#: The recipes by the name the demo, the CLI and the benchmarks use ("ieg-1".."ieg-8" via ablation).
RECIPES: dict[str, Callable[..., Pipeline]] = {"plain": plain, "l2r": l2r, "eg": eg, "ieg": ieg,
                                               "robust_eg": robust_eg, "robust_ieg": robust_ieg}

#: the strong views of a recipe whose components may leave AutoAugment out
_BOTH_VIEWS = ("strong_augment", "plain_strong_augment")


@dataclass(frozen=True)
class RecipeSpec:
    """One row of ``SPECS``, the table ``build()``, the demo, the CLI and the benchmarks read.

    make: the recipe, ``make(model, optimizer, **options)``.
    run_length: options that ``build()`` sets to the run's length in steps unless passed
      (``total_steps``; or ``rampup_steps``: EG and IEG ramp p and k over the whole run, which the
      official recipe, ``recipes.ieg``, does not: from a random start, full-weight pseudo labels
      lock the model on one class, docs/results.md).
    strong_views: options that take ``build()``'s ``strong_augment`` unless passed.
    fixed: options the name fixes (IEG-n's Table 7 components).
    """

    make: Callable[..., Pipeline]
    run_length: tuple[str, ...] = ()
    strong_views: tuple[str, ...] = ()
    fixed: Mapping[str, Any] = field(default_factory=dict)

    @property
    def defaults(self) -> dict[str, Any]:
        """Every keyword option the recipe takes and its default (``REQUIRED`` where it has none),
        read from the recipe itself, so the table and the signature cannot disagree."""
        code = self.make.__code__
        names = code.co_varnames[code.co_argcount:code.co_argcount + code.co_kwonlyargcount]
        given = self.make.__kwdefaults__ or {}
        return {name: given.get(name, REQUIRED) for name in names if name not in self.fixed}


#: the default of an option the recipe needs (``total_steps`` of robust IEG, GLC's ``transition``)
REQUIRED = object()

SPECS: dict[str, RecipeSpec] = {
    "plain": RecipeSpec(plain),
    "l2r": RecipeSpec(l2r),
    "eg": RecipeSpec(eg, run_length=("rampup_steps",), strong_views=("strong_augment",)),
    "ieg": RecipeSpec(ieg, run_length=("rampup_steps",), strong_views=_BOTH_VIEWS),
    "robust_eg": RecipeSpec(robust_eg, run_length=("total_steps",),
                            strong_views=("strong_augment",)),
    "robust_ieg": RecipeSpec(robust_ieg, run_length=("total_steps",), strong_views=_BOTH_VIEWS),
    **{f"ieg-{n}": RecipeSpec(ieg, run_length=("rampup_steps",), strong_views=_BOTH_VIEWS,
                              fixed={"components": TABLE7[n]}) for n in TABLE7},
    "gce": RecipeSpec(gce),
    "sce": RecipeSpec(sce),
    "glc": RecipeSpec(glc),
    "forward_online": RecipeSpec(forward_online, run_length=("total_steps",)),
    "small_loss": RecipeSpec(small_loss),
    "plain_plus": RecipeSpec(plain_plus, strong_views=("strong_augment",)),
    "l2r_gce": RecipeSpec(l2r_gce),
}


def method_names() -> list[str]:
    """Every name ``build`` accepts."""
    return list(SPECS)


def required_options(method: str) -> list[str]:
    """The options ``build(method, ...)`` needs beyond the model, the optimizer and the run's
    length (GLC's ``transition``; small-loss selection's ``noise_rate`` and ``steps_per_epoch``)."""
    spec = SPECS[method]
    return [name for name, default in spec.defaults.items()
            if default is REQUIRED and name not in spec.run_length]


def build(
    method: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    strong_augment: Augment | None = None,
    seed: int = 0,
    **options,
) -> Pipeline:
    """A recipe by name (``SPECS``), with the defaults the applications (demo, CLI, benchmarks)
    share: the run's length fills the options of ``RecipeSpec.run_length`` and ``strong_augment``
    those of ``RecipeSpec.strong_views``, unless passed. ``options`` go to the recipe unchanged."""
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps: expected an integer >= 1, got {total_steps!r}")
    spec = SPECS.get(method.lower())
    if spec is None:
        raise ValueError(f"method: unknown {method!r}; choose from {method_names()}")
    fixed = set(options) & set(spec.fixed)
    if fixed:
        raise ValueError(f"{sorted(fixed)[0]}: fixed by the method {method!r}; use 'ieg' to "
                         "choose it")
    for name in spec.run_length:
        options.setdefault(name, total_steps)
    if strong_augment is not None:
        for name in spec.strong_views:
            options.setdefault(name, strong_augment)
    return spec.make(model, optimizer, seed=seed, **spec.fixed, **options)
