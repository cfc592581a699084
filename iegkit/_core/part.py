"""The one protocol every part implements, and what a part hands back each step."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from torch import Tensor

if TYPE_CHECKING:
    from iegkit._core.context import StepContext

__all__ = ["Contribution", "Part", "Plan", "WeightInit"]

#: omega0: a number, or "1/B" for the uniform 1/B of IEG (the batch size is known only per step).
WeightInit = float | str


@dataclass(frozen=True)
class Contribution:
    """What a part adds to a step.

    values: exactly the context keys the part ``provides`` (e.g. ``weights`` (B,)).
    losses: named scalar loss terms; the pipeline prefixes them ``"{part.name}/{term}"`` and sums them.
    metrics: detached tensors for logging.
    """

    values: Mapping[str, Tensor] = field(default_factory=dict)
    losses: Mapping[str, Tensor] = field(default_factory=dict)
    metrics: Mapping[str, Tensor] = field(default_factory=dict)


@runtime_checkable
class Part(Protocol):
    """A small composable piece of a training step (optax-style: explicit state, no hidden effects).

    A part never calls ``backward()`` or ``optimizer.step()`` and never changes the batch, the model
    or the optimizer (``SGDRSchedule`` alone sets this step's lr); it reads the shared
    ``StepContext`` and returns a ``Contribution``. A part may also declare
    ``optional_requires``: keys it reads only if some part provides them (they order it after
    their provider without being required).
    """

    name: str
    requires: tuple[str, ...]
    provides: tuple[str, ...]

    def setup(self, plan: Plan) -> None:
        """Called once by compose(): declare views and meta variables."""

    def contribute(self, ctx: StepContext) -> Contribution:
        """Called once per step, in dependency order."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


ViewFn = Callable[["StepContext"], Tensor]


class Plan:
    """What the composed parts need from each step: extra batch views and the meta variables.

    The look-ahead is shared: every meta part registers its initial value here, and the context runs
    one virtual step, one probe pass and one JVP per step for all of them.
    """

    def __init__(self) -> None:
        self.views: dict[str, tuple[str, ViewFn]] = {}
        self.weight_init: WeightInit | None = None
        self.label_init: float | None = None
        self.lookahead_lr: float | None = None
        self.meta_owners: list[str] = []
        self.built_views: dict[str, tuple[str, str]] = {}
        #: (weak logits, strong logits) -> pseudo labels with graph, set by the pseudo labeler, for
        #: meta parts that differentiate the look-ahead through the pseudo labels (official IEG).
        self.pseudo_label_fn: Callable[[Tensor, Tensor], Tensor] | None = None
        self.through_pseudo_labels = False

    def add_view(self, name: str, make: ViewFn, *, owner: str) -> None:
        """A derived batch view (e.g. ``strong``), computed at most once per step and forwarded once."""
        if name in ("input", "probe"):
            raise ValueError(f"view name: '{name}' is built in; choose another name")
        if name in self.views:
            raise ValueError(
                f"view name: '{name}' is declared by both '{self.views[name][0]}' and '{owner}'"
            )
        self.views[name] = (owner, make)

    def declare_built_view(self, name: str, *, owner: str, rows: str) -> None:
        """A batch a part builds each step and forwards once with ``StepContext.forward_view``."""
        if name in ("input", "probe") or name in self.views or name in self.built_views:
            raise ValueError(f"view name: '{name}' is already declared")
        self.built_views[name] = (owner, rows)

    def request_meta(
        self,
        *,
        owner: str,
        weight_init: WeightInit | None = None,
        label_init: float | None = None,
        lr: float | None = None,
        through_pseudo_labels: bool = False,
    ) -> None:
        """Register meta variables; two parts must agree on any value both set."""
        self.through_pseudo_labels = self.through_pseudo_labels or through_pseudo_labels
        for attr, value in (("weight_init", weight_init), ("label_init", label_init),
                            ("lookahead_lr", lr)):
            if value is None:
                continue
            current = getattr(self, attr)
            if current is not None and current != value:
                raise ValueError(
                    f"{attr}: '{owner}' asks for {value!r} but another meta part set {current!r}; "
                    "parts sharing the look-ahead must agree"
                )
            setattr(self, attr, value)
        self.meta_owners.append(owner)
