"""compose(): order parts by their declared data, and the Pipeline that runs one step."""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from iegkit._core.context import StepContext
from iegkit._core.part import Contribution, Part, Plan
from iegkit.errors import (
    CycleError,
    DuplicateProviderError,
    MissingProviderError,
    NonFiniteLossError,
)
from iegkit.functional.meta import check_meta_inputs

__all__ = ["Pipeline", "StepOutput", "compose"]

FORMAT_VERSION = 1


@dataclass(frozen=True)
class StepOutput:
    """The result of one step. ``loss`` is what the user backpropagates.

    losses: the named terms (``"part/term"``) that sum to ``loss``.
    weights: per-example omega* (B,) when a reweighting part ran, else None.
    relabel: per-example lambda* (B,) when a relabeling part ran, else None.
    values: every context value the parts provided (detached).
    forward_counts: forwards run per view this step; lookahead_count: look-aheads run (0 or 1).
    """

    loss: Tensor
    losses: dict[str, Tensor]
    weights: Tensor | None
    relabel: Tensor | None
    logits: Tensor
    values: dict[str, Tensor] = field(default_factory=dict)
    metrics: dict[str, Tensor] = field(default_factory=dict)
    forward_counts: dict[str, int] = field(default_factory=dict)
    lookahead_count: int = 0


def _order(parts: Sequence[Part]) -> list[Part]:
    names: dict[str, Part] = {}
    providers: dict[str, str] = {}
    for part in parts:
        if not isinstance(part, Part):
            raise TypeError(
                f"compose: {part!r} is not a part (needs name, requires, provides, setup, "
                "contribute, state_dict, load_state_dict)"
            )
        if part.name in names:
            raise DuplicateProviderError(f"compose: two parts are named '{part.name}'; pass name=")
        names[part.name] = part
        for key in part.provides:
            if key in providers:
                raise DuplicateProviderError(
                    f"compose: '{key}' is provided by both '{providers[key]}' and '{part.name}'"
                )
            providers[key] = part.name
    for part in parts:
        missing = [key for key in part.requires if key not in providers]
        if missing:
            raise MissingProviderError(
                f"compose: '{part.name}' requires {missing} but no part provides "
                f"{'it' if len(missing) == 1 else 'them'}"
            )
    # A part may read a key only if some part provides it (e.g. the meta parts read "lr" so that
    # the look-ahead uses this step's scheduled lr): such optional keys order it but are not required.
    needs = {
        part.name: tuple(part.requires) + tuple(
            key for key in getattr(part, "optional_requires", ()) if key in providers
        )
        for part in parts
    }
    # Stable topological sort: the first part (in the user's order) whose inputs are ready goes next.
    ordered: list[Part] = []
    ready: set[str] = set()
    pending = list(parts)
    while pending:
        for part in pending:
            if all(key in ready for key in needs[part.name]):
                ordered.append(part)
                ready.update(part.provides)
                pending.remove(part)
                break
        else:
            raise CycleError(
                "compose: the parts' requires/provides form a cycle: "
                + ", ".join(f"{p.name} requires {list(p.requires)}" for p in pending)
            )
    return ordered


def compose(
    *parts: Part,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    seed: int = 0,
) -> Pipeline:
    """Build a pipeline from parts, ordered by what each requires and provides.

    Raises DuplicateProviderError, MissingProviderError or CycleError at build time. ``seed`` seeds
    each part's own generator (derived from the part's name, so parts do not share draws).
    """
    if not parts:
        raise ValueError("compose: expected at least one part")
    ordered = _order(parts)
    plan = Plan()
    for part in ordered:
        part.setup(plan)
    pipeline = Pipeline(ordered, plan, seed=seed)
    if model is not None or optimizer is not None:
        if model is None or optimizer is None:
            raise ValueError("compose: pass both model and optimizer, or neither (then bind())")
        pipeline.bind(model, optimizer)
    return pipeline


class Pipeline:
    """Composed parts that turn one batch (and a probe batch) into a loss.

    The user keeps the loop::

        out = pipeline(inputs, targets, probe_inputs, probe_targets, step=step)
        optimizer.zero_grad(); out.loss.backward(); optimizer.step()
    """

    def __init__(self, parts: list[Part], plan: Plan, *, seed: int = 0) -> None:
        self.parts = parts
        self.plan = plan
        self.seed = seed
        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.generators: dict[str, torch.Generator] = {}
        for part in parts:
            generator = torch.Generator()
            generator.manual_seed(seed * 1_000_003 + zlib.crc32(part.name.encode()))
            self.generators[part.name] = generator

    def bind(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Pipeline:
        """Attach the user's model and optimizer (the pipeline never steps the optimizer)."""
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        self.model, self.optimizer = model, optimizer
        for part in self.parts:
            bind = getattr(part, "bind", None)
            if callable(bind):
                bind(model, optimizer)
        return self

    @property
    def provides(self) -> frozenset[str]:
        """Every context key some part provides (e.g. ``"lr"`` when a schedule part sets the lr)."""
        return frozenset(key for part in self.parts for key in part.provides)

    @property
    def needs_probe(self) -> bool:
        return bool(self.plan.meta_owners) or any(
            getattr(part, "needs_probe", False) for part in self.parts
        )

    def __call__(
        self,
        inputs: Tensor,
        targets: Tensor,
        probe_inputs: Tensor | None = None,
        probe_targets: Tensor | None = None,
        *,
        step: int,
    ) -> StepOutput:
        if self.model is None or self.optimizer is None:
            raise RuntimeError("pipeline: call bind(model, optimizer) (or pass them to compose) first")
        if self.needs_probe:
            if probe_inputs is None or probe_targets is None:
                raise ValueError("probe_inputs: this pipeline needs a probe batch "
                                 "(probe_inputs, probe_targets)")
            check_meta_inputs(inputs, targets, probe_inputs, probe_targets)
        ctx = StepContext(
            model=self.model, optimizer=self.optimizer, plan=self.plan, inputs=inputs,
            targets=targets, probe_inputs=probe_inputs, probe_targets=probe_targets, step=step,
            generators=self.generators,
        )
        losses: dict[str, Tensor] = {}
        metrics: dict[str, Tensor] = {}
        for part in self.parts:
            contribution = part.contribute(ctx)
            if not isinstance(contribution, Contribution):
                raise TypeError(f"part '{part.name}': contribute() must return a Contribution")
            if set(contribution.values) != set(part.provides):
                raise ValueError(
                    f"part '{part.name}': provided {sorted(contribution.values)} but declares "
                    f"{sorted(part.provides)}"
                )
            for key, value in contribution.values.items():
                ctx._provide(key, value)
            for term, value in contribution.losses.items():
                losses[f"{part.name}/{term}"] = value
            for term, value in contribution.metrics.items():
                metrics[f"{part.name}/{term}"] = value
        if not losses:
            raise ValueError("pipeline: no part contributed a loss term")
        for name, value in losses.items():
            if not bool(torch.isfinite(value.detach()).all()):
                raise NonFiniteLossError(f"loss term '{name}' is {float(value.detach())}")
        # Summed in name order so that the total does not depend on the order of independent parts.
        total = sum(losses[name] for name in sorted(losses))
        values = {k: v.detach() for k, v in ctx._values.items()}
        return StepOutput(
            loss=total,
            losses=losses,
            weights=values.get("weights"),
            relabel=values.get("relabel"),
            logits=ctx.logits("input").detach(),
            values=values,
            metrics=metrics,
            forward_counts=dict(ctx.forward_counts),
            lookahead_count=ctx.lookahead_count,
        )

    def describe(self) -> str:
        """The parts in execution order and the passes one step runs."""
        lines = ["iegkit pipeline, parts in execution order:"]
        for i, part in enumerate(self.parts, 1):
            lines.append(
                f"  {i}. {part.name} ({type(part).__name__}) requires {list(part.requires)} "
                f"provides {list(part.provides)}"
            )
        lines.append("passes per step:")
        lines.append("  forward 'input' (training batch; the only pass that updates BatchNorm "
                     "statistics)")
        for view, (owner, _) in self.plan.views.items():
            lines.append(f"  forward '{view}' (declared by {owner}; BatchNorm statistics frozen)")
        for view, (owner, rows) in self.plan.built_views.items():
            lines.append(f"  forward '{view}' ({rows} rows built by {owner}; BatchNorm statistics "
                         "frozen)")
        if self.plan.meta_owners:
            w0 = self.plan.weight_init
            if w0 is None:
                w0 = "1/B" if self.plan.label_init is not None else 0.0
            lines.append(f"  look-ahead for {self.plan.meta_owners}: omega0={w0}, "
                         f"lambda0={self.plan.label_init}")
            if w0 == 0.0:
                lines.append("    probe forward+backward at theta', one JVP of the training "
                             "logits (no autograd), then the 'input' forward (omega0=0: the "
                             "virtual gradient is 0)")
            else:
                lines.append("    virtual backward on the 'input' graph (kept for the real "
                             "backward), probe forward+backward at theta', one JVP of the "
                             "training logits")
        lines.append("  backward of the total loss: in the user's loop")
        return "\n".join(lines)

    def state_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "order": [part.name for part in self.parts],
            "parts": {part.name: part.state_dict() for part in self.parts},
            "generators": {name: g.get_state() for name, g in self.generators.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        version = state.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"state: format_version {version!r} is not supported (expected {FORMAT_VERSION})"
            )
        names = {part.name for part in self.parts}
        saved = set(state["parts"])
        if strict and names != saved:
            raise ValueError(
                f"state: parts differ: missing {sorted(names - saved)}, unexpected "
                f"{sorted(saved - names)} (use strict=False to allow)"
            )
        for part in self.parts:
            if part.name in state["parts"]:
                part.load_state_dict(state["parts"][part.name])
            if part.name in state.get("generators", {}):
                self.generators[part.name].set_state(state["generators"][part.name])
