"""The loss stage: loss terms assembled after every part has run, from the final values of keys.

Deciding and applying are separate: a part *provides* its decisions (MetaReweighter's weights and
per-example losses, MetaRelabeler's lambda) and returns the loss that spends them as a
``StagedLoss``. The pipeline computes it here, after the last refiner of every key it reads, so a
part that refines ``weights`` changes the loss that is backpropagated. A key its provider uses up
within its own contribute (``not_refinable``: the lr set on the optimizer) cannot be refined, and
compose refuses a refiner of it at build time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor

from iegkit._core.part import Contribution, Part, StagedLoss
from iegkit.errors import CompositionError, MissingProviderError

__all__ = ["assemble", "check_loss_stage", "loss_reads", "staged_terms"]


def loss_reads(part: Part) -> tuple[str, ...]:
    """The keys a part's staged losses read (optional member: parts without it stage nothing)."""
    return tuple(getattr(part, "loss_reads", ()))


def _not_refinable(part: Part) -> tuple[str, ...]:
    return tuple(getattr(part, "not_refinable", ()))


def check_loss_stage(parts: Sequence[Part]) -> None:
    """At build time: every key a staged loss reads has a provider, and no part refines a key
    whose provider already used it in the same contribute (the refinement would change nothing
    the provider did, silently)."""
    providers = {key: part.name for part in parts for key in part.provides}
    for part in parts:
        missing = [key for key in loss_reads(part) if key not in providers]
        if missing:
            raise MissingProviderError(f"compose: '{part.name}' has a loss that reads {missing} "
                                       "(loss_reads) but no part provides them")
        foreign = [key for key in _not_refinable(part) if key not in part.provides]
        if foreign:
            raise CompositionError(f"compose: '{part.name}' declares {foreign} not_refinable but "
                                   "does not provide them")
    used_up = {key: part.name for part in parts for key in _not_refinable(part)}
    for part in parts:
        for key in part.refines:
            if key in used_up:
                raise CompositionError(
                    f"compose: '{part.name}' refines '{key}', but its provider '{used_up[key]}' "
                    f"already uses '{key}' within its own step (not_refinable), so the refined "
                    "value would not change what it did. Keys a loss stage reads can be refined "
                    "(e.g. 'weights', 'relabel'); otherwise provide a key of your own")


def staged_terms(part: Part, contribution: Contribution) -> list[tuple[str, StagedLoss]]:
    """The part's staged loss terms, named ``"{part.name}/{term}"``, checked against what it
    declares: each a ``StagedLoss`` that reads only its ``loss_reads``, named apart from its
    immediate ``losses``."""
    declared = set(loss_reads(part))
    terms = []
    for term, staged in contribution.staged_losses.items():
        if not isinstance(staged, StagedLoss):
            raise TypeError(f"part '{part.name}': staged_losses['{term}'] must be a StagedLoss, "
                            f"got {type(staged).__name__}")
        undeclared = sorted(set(staged.reads) - declared)
        if undeclared:
            raise ValueError(f"part '{part.name}': staged_losses['{term}'] reads {undeclared}, "
                             f"which its loss_reads {sorted(declared)} do not declare")
        if term in contribution.losses:
            raise ValueError(f"part '{part.name}': '{term}' is both a loss and a staged loss")
        terms.append((f"{part.name}/{term}", staged))
    return terms


def assemble(terms: Sequence[tuple[str, StagedLoss]],
             final_value: Callable[[str], Any]) -> Mapping[str, Tensor]:
    """Each staged term from the final value of every key it reads (in the parts' order)."""
    return {name: staged.fn(*(final_value(key) for key in staged.reads))
            for name, staged in terms}
