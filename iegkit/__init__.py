"""iegkit: train on severely noisy labels with a tiny trusted set (L2R, EG, IEG as composable parts)."""

from iegkit import functional

__version__ = "0.1.0"
__all__ = ["functional"]
