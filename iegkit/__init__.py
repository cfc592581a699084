"""iegkit: train on severely noisy labels with a tiny trusted set (L2R, EG, IEG as composable parts)."""

from iegkit import augment, data, errors, functional, recipes
from iegkit._core import keys
from iegkit._core.checks import LogitsOf
from iegkit._core.compose import Pipeline, StepOutput, compose
from iegkit._core.context import StepContext
from iegkit._core.part import Contribution, Part, PartBase, Plan, PseudoLabelSource, StagedLoss
from iegkit.data import ProbeSampler
from iegkit.ema import WeightEMA, evaluation_weights
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

__version__ = "0.1.0"
__all__ = [
    "ConfidenceMask",
    "ConsistencyPseudoLabeler",
    "Contribution",
    "CrossEntropy",
    "DistributionAlignment",
    "ForwardCorrection",
    "GeneralizedCrossEntropy",
    "KLConsistency",
    "LogitsOf",
    "LRWarmup",
    "MetaRelabeler",
    "MetaReweighter",
    "NoisyLabelPosterior",
    "Part",
    "PartBase",
    "Pipeline",
    "Plan",
    "PseudoLabelSource",
    "ProbeMixUp",
    "ProbeSampler",
    "SGDRSchedule",
    "SmallLossSelection",
    "StagedLoss",
    "StrongView",
    "SymmetricCrossEntropy",
    "TrustedCrossEntropy",
    "StepContext",
    "StepOutput",
    "TrustedGate",
    "WeightEMA",
    "augment",
    "compose",
    "data",
    "errors",
    "evaluation_weights",
    "functional",
    "keys",
    "recipes",
]
