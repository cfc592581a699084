"""Errors raised by iegkit. Each names the argument at fault and what was expected."""

from __future__ import annotations

__all__ = [
    "CompositionError",
    "CycleError",
    "DuplicateProviderError",
    "MissingProviderError",
    "NonFiniteLossError",
    "UnsupportedOptimizerError",
]


class UnsupportedOptimizerError(TypeError):
    """The look-ahead cannot reproduce this optimizer's update rule exactly."""


class NonFiniteLossError(FloatingPointError):
    """A loss needed by the meta step is NaN or infinite."""


class CompositionError(ValueError):
    """compose() was given parts that cannot form a pipeline."""


class DuplicateProviderError(CompositionError):
    """Two parts provide the same context key (or share a name)."""


class MissingProviderError(CompositionError):
    """A part requires a context key that no part provides."""


class CycleError(CompositionError):
    """The parts' requires/provides form a cycle."""
