"""The per-step context: read-only batch views, cached forwards and one cached look-ahead."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call

from iegkit._core import keys
from iegkit._core.lr import scaled_lrs
from iegkit._core.meta_step import (
    LookaheadOptions,
    MetaBatch,
    PseudoLabelGraph,
    lookahead_meta_gradients,
)
from iegkit._core.modes import buffers_snapshot
from iegkit._core.part import MetaRequest, Plan
from iegkit.functional.losses import check_logits, check_targets
from iegkit.functional.meta import MetaGradients

__all__ = ["StepContext"]


_MISSING = object()


class StepContext:
    """Everything the parts of one step share.

    ``logits(view)`` runs each view's forward at most once; the ``input`` view is the model's real
    forward (its BatchNorm statistics are updated, as in a plain step); every other view runs on a
    snapshot of the buffers, so only the training batch moves the running statistics (the official
    IEG code does the same). ``meta()`` runs the look-ahead at most once.
    """

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        plan: Plan,
        inputs: Tensor,
        targets: Tensor,
        probe_inputs: Tensor | None,
        probe_targets: Tensor | None,
        step: int,
        generators: Mapping[str, torch.Generator],
        views: Mapping[str, Tensor] | None = None,
        forward_model: torch.nn.Module | None = None,
        process_group: object | None = None,
    ) -> None:
        self.model = model
        #: the real forward's module: the user's DDP wrapper (its gradient hooks fire on the user's
        #: backward), else ``model``; every other pass runs ``model`` functionally
        self.forward_model = model if forward_model is None else forward_model
        self.process_group = process_group
        self.optimizer = optimizer
        self.inputs = inputs
        self.targets = targets
        self.probe_inputs = probe_inputs
        self.probe_targets = probe_targets
        self.step = step
        self.forward_counts: Counter[str] = Counter()
        self.lookahead_count = 0
        self._plan = plan
        self._generators = generators
        self._views: dict[str, Tensor] = dict(views or {})
        self._logits: dict[str, Tensor] = {}
        self._values: dict[str, Any] = {}
        self._meta: MetaGradients | None = None

    @property
    def batch_size(self) -> int:
        return self.inputs.shape[0]

    def generator(self, name: str) -> torch.Generator:
        """The named part's own generator: adding a part never shifts another part's draws."""
        return self._generators[name]

    def view(self, name: str) -> Tensor:
        """The inputs of a view: ``input``, ``probe`` or one declared with ``Plan.add_view``."""
        if name == "input":
            return self.inputs
        if name == "probe":
            if self.probe_inputs is None:  # the pipeline requires (and checks) a probe batch
                # only where a part declares needs_probe; a part that does not may find none
                raise KeyError("view: 'probe' was not passed this step; a part that reads it "
                               "declares needs_probe = True")
            return self.probe_inputs
        if name not in self._views:
            if name not in self._plan.views:
                raise KeyError(f"view: no part declared a view named '{name}'")
            self._views[name] = self._plan.views[name][1](self)
        return self._views[name]

    def logits(self, view: str = "input") -> Tensor:
        """The model's logits for a view at the current parameters (with graph), forwarded once."""
        if view not in self._logits:
            inputs = self.view(view)
            if view == "input":
                self._logits[view] = check_logits(self.forward_model(inputs))
            else:
                self._logits[view] = check_logits(functional_call(
                    self.model, buffers_snapshot(self.model), (inputs,)
                ))
            self.forward_counts[view] += 1
            if view == "input":
                check_targets("targets", self.targets, self.batch_size,
                              self._logits[view].shape[-1])
        return self._logits[view]

    def forward_view(self, name: str, inputs: Tensor) -> Tensor:
        """Forward inputs built by a part this step (e.g. the MixUp batch) once, BatchNorm statistics
        frozen. Forwarding the same name twice in a step is an error (it would be a wasted pass)."""
        if name not in self._plan.built_views:
            raise KeyError(f"view: '{name}' was not declared with Plan.declare_built_view")
        if name in self._logits:
            raise ValueError(f"view: '{name}' is already forwarded this step")
        self._logits[name] = check_logits(
            functional_call(self.model, buffers_snapshot(self.model), (inputs,)))
        self.forward_counts[name] += 1
        return self._logits[name]

    def get(self, key: str, default: Any = _MISSING) -> Any:
        """A value provided (or refined) by an earlier part; ``default`` if none and one is given
        (for ``optional_requires``)."""
        if key not in self._values:
            if default is not _MISSING:
                return default
            raise KeyError(f"context key '{key}' has not been provided (yet) by any part")
        return self._values[key]

    def values(self) -> Mapping[str, Any]:
        """Every value provided (and refined) so far, read-only (the pipeline's ``StepOutput``)."""
        return MappingProxyType(self._values)

    def _provide(self, key: str, value: Any) -> None:
        self._values[key] = value

    def meta(self) -> MetaGradients:
        """The meta-gradients of every registered meta variable: one look-ahead per step.

        Its inputs come from the keys the meta parts declared (``Plan.request_meta``), never from
        a part's name.
        """
        if self._meta is not None:
            return self._meta
        request = self._plan.meta
        if request is None:
            raise RuntimeError("meta: no part of this pipeline requested the look-ahead")
        # the probe batch was checked by the pipeline (checks.check_meta_inputs), before any pass
        pseudo, graph = self._pseudo_labels(request)
        options = LookaheadOptions(lr=request.lookahead_lr, dropout=self._plan.meta_dropout,
                                   process_group=self.process_group,
                                   compile_tangent=self._plan.compile_tangent,
                                   inner_loss=request.inner_loss)
        # LRWarmup's factor: the look-ahead steps at the lr the real optimizer.step() will use
        # (a fixed lookahead_lr, the official code's 0.1, is not warmed up)
        scale = float(self.get(keys.LR_SCALE, 1.0)) if request.lookahead_lr is None else 1.0
        with scaled_lrs(self.optimizer, scale):
            self._meta = lookahead_meta_gradients(
                self.model, self.optimizer,
                MetaBatch(self.inputs, self.targets, self.probe_inputs, self.probe_targets, pseudo),
                request.init, training_logits=lambda: self.logits("input"), pseudo_graph=graph,
                options=options,
            )
        self.lookahead_count += 1
        return self._meta

    def _pseudo_labels(self, request: MetaRequest,
                       ) -> tuple[Tensor | None, PseudoLabelGraph | None]:
        """q for a relabeling look-ahead, and the graph that makes it where the look-ahead
        differentiates through it (from the keys the meta parts declared)."""
        if not request.init.relabeling:
            return None, None
        pseudo = self.get(request.pseudo_targets_key)
        if request.pseudo_source_key is None:
            return pseudo, None
        source = self.get(request.pseudo_source_key)
        return pseudo, PseudoLabelGraph(source.fn, [
            (None if view == "input" else self.view(view), lambda view=view: self.logits(view))
            for view in source.views
        ])
