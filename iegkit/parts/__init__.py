"""The composable parts, one file each."""

from iegkit.parts.confidence_mask import ConfidenceMask
from iegkit.parts.consistency_pseudo_labeler import ConsistencyPseudoLabeler
from iegkit.parts.cross_entropy import CrossEntropy
from iegkit.parts.distribution_alignment import DistributionAlignment
from iegkit.parts.forward_correction import ForwardCorrection
from iegkit.parts.generalized_cross_entropy import GeneralizedCrossEntropy
from iegkit.parts.kl_consistency import KLConsistency
from iegkit.parts.lr_warmup import LRWarmup
from iegkit.parts.meta_relabeler import MetaRelabeler
from iegkit.parts.meta_reweighter import MetaReweighter
from iegkit.parts.noisy_label_posterior import NoisyLabelPosterior
from iegkit.parts.probe_mixup import ProbeMixUp
from iegkit.parts.sgdr_schedule import SGDRSchedule
from iegkit.parts.small_loss_selection import SmallLossSelection
from iegkit.parts.strong_view import StrongView
from iegkit.parts.symmetric_cross_entropy import SymmetricCrossEntropy
from iegkit.parts.trusted_cross_entropy import TrustedCrossEntropy
from iegkit.parts.trusted_gate import TrustedGate

__all__ = [
    "ConfidenceMask",
    "ConsistencyPseudoLabeler",
    "CrossEntropy",
    "DistributionAlignment",
    "ForwardCorrection",
    "GeneralizedCrossEntropy",
    "KLConsistency",
    "LRWarmup",
    "MetaRelabeler",
    "MetaReweighter",
    "NoisyLabelPosterior",
    "ProbeMixUp",
    "SGDRSchedule",
    "SmallLossSelection",
    "StrongView",
    "SymmetricCrossEntropy",
    "TrustedCrossEntropy",
    "TrustedGate",
]
