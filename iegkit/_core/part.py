"""The one protocol every part implements, its defaults, and what a part hands back each step."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from iegkit.functional.meta import ONE_OVER_B, BatchUniform, MetaInit

if TYPE_CHECKING:
    from iegkit._core.context import StepContext

__all__ = ["Contribution", "Part", "PartBase", "Plan", "PseudoLabelSource", "StagedLoss",
           "WeightInit"]

#: omega0: a number, "1/B" (IEG's uniform start; B is known only per step), or "auto" (1/B when a
#: relabeler shares the look-ahead, whose meta-gradient is 0 at omega0 = 0; else 0 as in L2R).
WeightInit = float | str


def parse_weight_init(value: WeightInit | None) -> float | BatchUniform | None:
    """omega0 as a part states it, typed: a number as a float, "1/B" as ``ONE_OVER_B``, and
    "auto" (or None, "as the other meta part says") as None, resolved by ``Plan.request_meta``
    once it knows whether a relabeler shares the look-ahead."""
    if value is None or value is ONE_OVER_B:
        return value
    refused = ValueError(f"weight_init: expected a number, '1/B' or 'auto', got {value!r}")
    if isinstance(value, str):
        if value not in ("auto", "1/B"):
            raise refused
        return None if value == "auto" else ONE_OVER_B
    try:
        return float(value)
    except (TypeError, ValueError):
        raise refused from None


@dataclass(frozen=True)
class StagedLoss:
    """A loss term the pipeline's loss stage assembles after every part has run:
    ``fn(*(final value of each key in reads))``.

    Why: a part that made and spent its weights in one call would leave a refiner of them no effect
    on the loss. Staged, the term reads each key after its last refiner (``reads`` must be in the
    part's ``loss_reads``).
    """

    reads: tuple[str, ...]
    fn: Callable[..., Tensor]


@dataclass(frozen=True)
class Contribution:
    """What a part adds to a step.

    values: exactly the context keys the part ``provides`` and ``refines`` (tensors, or a
      ``PseudoLabelSource`` for ``keys.PSEUDO_LABELER``).
    losses: named scalar loss terms; the pipeline prefixes them ``"{part.name}/{term}"`` and sums them.
    staged_losses: named terms computed in the loss stage, after every part (and so every refiner
      of the keys they read) has run; named and summed like ``losses``.
    metrics: detached tensors for logging.
    """

    values: Mapping[str, Any] = field(default_factory=dict)
    losses: Mapping[str, Tensor] = field(default_factory=dict)
    metrics: Mapping[str, Tensor] = field(default_factory=dict)
    staged_losses: Mapping[str, StagedLoss] = field(default_factory=dict)


@dataclass(frozen=True)
class PseudoLabelSource:
    """How pseudo labels are made from the logits of some views: ``fn(*logits_of(views))`` with graph.

    The official IEG look-ahead differentiates through the pseudo labels; the context runs one JVP
    per view (the training view ``input`` reuses the JVP it already has).
    """

    views: tuple[str, ...]
    fn: Callable[..., Tensor]


@runtime_checkable
class Part(Protocol):
    """A small composable piece of a training step (optax-style: explicit state, no hidden effects).

    A part never calls ``backward()`` or ``optimizer.step()`` and never changes the batch or the
    model's parameters; it reads the shared ``StepContext`` and returns a ``Contribution``. Two
    declared exceptions touch the learning rate: a schedule part that provides ``lr`` sets this
    step's lr, and ``LRWarmup`` scales it for the duration of ``optimizer.step()``.

    requires: keys it reads; compose refuses to build without a provider.
    optional_requires: keys it reads only if some part provides them (they order it after their
      provider and refiners without being required).
    provides: keys it writes first. refines: keys another part provides that it rewrites (optax's
      chain): ordered after the provider (and earlier refiners, in the user's order), before readers.
    needs_probe: whether a step needs the probe batch (meta parts need it through the plan anyway).
    setup(plan): once at compose time: declare views and meta variables.
    bind(model, optimizer): once when the pipeline is bound to the user's model and optimizer.
    before_optimizer_step(step): runs from ``optimizer.register_step_pre_hook`` just before each
      ``optimizer.step()`` (``LRWarmup`` scales the lr there and gives it back after the step); the
      pipeline registers the pre-hook only when some part overrides ``PartBase``'s no-op.
    after_optimizer_step(step): runs from ``optimizer.register_step_post_hook`` after each
      ``optimizer.step()`` of the bound optimizer (EMA weights, running class priors); ``step`` is
      the step the pipeline last ran.
    Optional (``PartBase`` has them): ``loss_reads`` and ``not_refinable``.
    """

    name: str
    requires: tuple[str, ...]
    optional_requires: tuple[str, ...]
    provides: tuple[str, ...]
    refines: tuple[str, ...]
    needs_probe: bool

    def setup(self, plan: Plan) -> None: ...

    def bind(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None: ...

    def contribute(self, ctx: StepContext) -> Contribution: ...

    def before_optimizer_step(self, step: int) -> None: ...

    def after_optimizer_step(self, step: int) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class PartBase(abc.ABC):
    """The defaults of the protocol: no keys, no views, nothing on bind or after a step, no state.

    Subclasses set ``name`` and the key tuples, and implement ``contribute`` (abstract: a subclass
    without it cannot be instantiated, so the mistake shows at construction, not at step 1).
    """

    name: str = "part"
    requires: tuple[str, ...] = ()
    optional_requires: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    refines: tuple[str, ...] = ()
    needs_probe: bool = False
    #: keys whose final (refined) values its ``Contribution.staged_losses`` read in the loss stage
    loss_reads: tuple[str, ...] = ()
    #: keys of ``provides`` the part already used itself in the same contribute (the lr it set on
    #: the optimizer): a refiner could change the value but not its use, so compose refuses one
    not_refinable: tuple[str, ...] = ()

    def setup(self, plan: Plan) -> None:
        """Nothing to declare by default."""

    def bind(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Nothing to attach by default."""

    @abc.abstractmethod
    def contribute(self, ctx: StepContext) -> Contribution:
        """This step's losses, values and metrics (the one member every part must define)."""

    def before_optimizer_step(self, step: int) -> None:
        """Nothing to do before the optimizer step by default (no pre-hook is registered)."""

    def after_optimizer_step(self, step: int) -> None:
        """Nothing to update after the optimizer step by default."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"state: {type(self).__name__} has no state, got keys {sorted(state)}")


def overrides(part: Part, member: str) -> bool:
    """Whether ``part`` has its own ``member`` (a hook with work), not ``PartBase``'s no-op."""
    own = getattr(getattr(part, member), "__func__", getattr(part, member))
    return own is not getattr(PartBase, member)


ViewFn = Callable[["StepContext"], Tensor]

BUILT_IN_VIEWS = ("input", "probe")


@dataclass
class MetaRequest:
    """The look-ahead every meta part shares: its initial point and where its inputs come from.

    init: omega0 and lambda0 as every reader takes them (the context, the look-ahead, describe()):
    resolved by ``Plan.request_meta`` from what the parts asked for, ``weight_init`` (omega0,
    None: "auto") and ``label_init`` (lambda0, or None without relabeling).
    pseudo_targets_key: the context key of q (with label_init). pseudo_source_key: the key of a
    ``PseudoLabelSource`` when the look-ahead differentiates through q (official IEG option).
    """

    owners: list[str] = field(default_factory=list)
    init: MetaInit = MetaInit()
    weight_init: float | BatchUniform | None = None
    label_init: float | None = None
    lookahead_lr: float | None = None
    pseudo_targets_key: str | None = None
    pseudo_source_key: str | None = None
    loss_label_mix: float | None = None
    #: the per-example loss being reweighted when it is not cross-entropy (MetaReweighter(loss=))
    inner_loss: Callable[[Tensor, Tensor], Tensor] | None = None

    def _resolve_init(self) -> MetaInit:
        # "auto": 1/B where a relabeler shares the look-ahead (its meta-gradient is exactly 0 at
        # omega0 = 0), else 0 as in L2R
        omega0 = self.weight_init
        if omega0 is None:
            omega0 = ONE_OVER_B if self.label_init is not None else 0.0
        return MetaInit(omega0, self.label_init)


class Plan:
    """What the composed parts need from each step: extra batch views and the shared look-ahead."""

    def __init__(self) -> None:
        self.views: dict[str, tuple[str, ViewFn]] = {}
        self.built_views: dict[str, tuple[str, str]] = {}
        self.meta: MetaRequest | None = None
        #: extra random streams (name -> owner), each a pipeline generator like a part's own
        self.random_streams: dict[str, str] = {}
        #: dropout in the meta passes (compose(meta_dropout=...)); False makes them deterministic
        self.meta_dropout = True
        #: run the look-ahead's JVP through torch.compile (compose(compile_tangent=...)); opt-in
        self.compile_tangent = False

    def add_view(self, name: str, make: ViewFn, *, owner: str) -> None:
        """A derived batch view (e.g. ``strong``), computed at most once per step and forwarded once."""
        if name in BUILT_IN_VIEWS:
            raise ValueError(f"view name: '{name}' is built in; choose another name")
        if name in self.views:
            raise ValueError(
                f"view name: '{name}' is declared by both '{self.views[name][0]}' and '{owner}'"
            )
        self.views[name] = (owner, make)

    def declare_built_view(self, name: str, *, owner: str, rows: str) -> None:
        """A batch a part builds each step and forwards once with ``StepContext.forward_view``."""
        if name in BUILT_IN_VIEWS or name in self.views or name in self.built_views:
            raise ValueError(f"view name: '{name}' is already declared")
        self.built_views[name] = (owner, rows)

    def add_random_stream(self, name: str, *, owner: str) -> None:
        """A generator besides the part's own, seeded and checkpointed by the pipeline and read
        with ``ctx.generator(name)``: draws that must not shift the part's other draws (a
        diagnostic that runs every few steps)."""
        if not isinstance(name, str) or not name.startswith(f"{owner}/"):
            raise ValueError(f"random stream: expected a name '{owner}/<stream>', got {name!r}")
        if name in self.random_streams:
            raise ValueError(f"random stream: '{name}' is declared twice")
        self.random_streams[name] = owner

    def request_meta(
        self,
        *,
        owner: str,
        weight_init: WeightInit | None = None,
        label_init: float | None = None,
        lr: float | None = None,
        pseudo_targets_key: str | None = None,
        pseudo_source_key: str | None = None,
        loss_label_mix: float | None = None,
        inner_loss: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> None:
        """Register meta variables and their inputs; parts sharing the look-ahead must agree.
        omega0 and lambda0 are resolved here, the one place, into ``self.meta.init``."""
        if self.meta is None:
            self.meta = MetaRequest()
        weight_init = parse_weight_init(weight_init)
        for attr, value in (("weight_init", weight_init), ("label_init", label_init),
                            ("lookahead_lr", lr), ("pseudo_targets_key", pseudo_targets_key),
                            ("pseudo_source_key", pseudo_source_key),
                            ("loss_label_mix", loss_label_mix), ("inner_loss", inner_loss)):
            if value is None:
                continue
            current = getattr(self.meta, attr)
            if current is not None and current != value:
                raise ValueError(
                    f"{attr}: '{owner}' asks for {value!r} but another meta part set {current!r}; "
                    "parts sharing the look-ahead must agree"
                )
            setattr(self.meta, attr, value)
        self.meta.owners.append(owner)
        self.meta.init = self.meta._resolve_init()

    def check(self) -> None:
        """Refuse combinations that would silently give wrong meta-gradients."""
        meta = self.meta
        if meta is None:
            return
        if meta.label_init is not None and meta.inner_loss is not None:
            raise ValueError(f"loss: the reweighter's loss is not cross-entropy, and a relabeler "
                             f"({meta.owners}) needs the cross-entropy look-ahead; drop one")
        if meta.label_init is not None:
            if meta.pseudo_targets_key is None:
                raise ValueError("label_init: relabeling needs pseudo targets; the relabeler must "
                                 "declare pseudo_targets_key")
            if meta.init.starts_at_zero:
                raise ValueError(
                    f"weight_init: 0 with a relabeler ({meta.owners}): the lambda meta-gradient is "
                    "exactly 0 at omega0 = 0, so every example would take its pseudo label; use "
                    "'auto' or '1/B'"
                )
            if meta.loss_label_mix is not None and meta.loss_label_mix != meta.label_init:
                raise ValueError(
                    f"label_mix: the reweighter's target mix {meta.loss_label_mix} differs from the "
                    f"relabeler's label_init {meta.label_init}; the weights would be taken at "
                    "another target than the loss uses: pass the same value"
                )
