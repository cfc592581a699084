"""The composable parts, one file each."""

from iegkit.parts.cross_entropy import CrossEntropy
from iegkit.parts.meta_reweighter import MetaReweighter

__all__ = ["CrossEntropy", "MetaReweighter"]
