"""iegkit: train on severely noisy labels with a tiny trusted set (L2R, EG, IEG as composable parts)."""

from iegkit import errors, functional, recipes
from iegkit._core.compose import Pipeline, StepOutput, compose
from iegkit._core.context import StepContext
from iegkit._core.part import Contribution, Part, Plan
from iegkit.parts import CrossEntropy, MetaReweighter

__version__ = "0.1.0"
__all__ = [
    "Contribution",
    "CrossEntropy",
    "MetaReweighter",
    "Part",
    "Pipeline",
    "Plan",
    "StepContext",
    "StepOutput",
    "compose",
    "errors",
    "functional",
    "recipes",
]
