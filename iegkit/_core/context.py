"""The per-step context: read-only batch views, cached forwards and one cached look-ahead."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import torch
from torch import Tensor
from torch.func import functional_call

from iegkit._core.part import Plan
from iegkit.functional.losses import check_targets
from iegkit.functional.meta import (
    MetaGradients,
    broadcast_init,
    buffers_snapshot,
    contract_meta_gradients,
    logit_tangent,
    probe_tangent,
    virtual_gradients,
)

__all__ = ["StepContext"]


def resolve_weight_init(value, batch_size: int) -> float:
    if isinstance(value, str):
        if value != "1/B":
            raise ValueError(f"weight_init: expected a number or '1/B', got {value!r}")
        return 1.0 / batch_size
    return float(value)


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
    ) -> None:
        self.model = model
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
        self._views: dict[str, Tensor] = {}
        self._logits: dict[str, Tensor] = {}
        self._values: dict[str, Tensor] = {}
        self._meta: MetaGradients | None = None

    @property
    def batch_size(self) -> int:
        return self.inputs.shape[0]

    @property
    def num_classes(self) -> int:
        return self.logits("input").shape[-1]

    def generator(self, name: str) -> torch.Generator:
        """The named part's own generator: adding a part never shifts another part's draws."""
        return self._generators[name]

    def view(self, name: str) -> Tensor:
        """The inputs of a view: ``input``, ``probe`` or one declared with ``Plan.add_view``."""
        if name == "input":
            return self.inputs
        if name == "probe":
            if self.probe_inputs is None:
                raise ValueError("probe_inputs: this pipeline needs a probe batch; pass probe_inputs")
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
                self._logits[view] = self.model(inputs)
            else:
                self._logits[view] = functional_call(
                    self.model, buffers_snapshot(self.model), (inputs,)
                )
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
        self._logits[name] = functional_call(self.model, buffers_snapshot(self.model), (inputs,))
        self.forward_counts[name] += 1
        return self._logits[name]

    def get(self, key: str) -> Tensor:
        """A value provided by an earlier part."""
        if key not in self._values:
            raise KeyError(f"context key '{key}' has not been provided (yet) by any part")
        return self._values[key]

    def has(self, key: str) -> bool:
        return key in self._values

    def _provide(self, key: str, value: Tensor) -> None:
        self._values[key] = value

    def meta(self) -> MetaGradients:
        """The meta-gradients of every registered meta variable: one look-ahead per step."""
        if self._meta is not None:
            return self._meta
        if self.probe_inputs is None or self.probe_targets is None:
            raise ValueError("probe_inputs: the meta step needs a probe batch (probe_inputs, "
                             "probe_targets)")
        plan = self._plan
        reference = next(iter(self.model.parameters()))
        # omega0 defaults to IEG's 1/B when relabeling (its meta-gradient is 0 at omega0 = 0), else 0
        default = "1/B" if plan.label_init is not None else 0.0
        omega0 = broadcast_init(
            "weight_init",
            resolve_weight_init(default if plan.weight_init is None else plan.weight_init,
                                self.batch_size),
            self.batch_size, reference,
        )
        lambda0 = pseudo = None
        if plan.label_init is not None:
            lambda0 = broadcast_init("label_init", plan.label_init, self.batch_size, reference)
            pseudo = self.get("targets:pseudo")
        through = plan.through_pseudo_labels and lambda0 is not None
        if through:
            if plan.pseudo_label_fn is None:
                raise ValueError("through_pseudo_labels: needs a ConsistencyPseudoLabeler")
            pseudo_graph = plan.pseudo_label_fn(self.logits("input"), self.logits("strong"))
        virtual = None
        if bool((omega0 != 0).any()):
            # The virtual gradient reuses the real forward's graph; the real backward runs later.
            virtual = virtual_gradients(self.model, self.optimizer, self.logits("input"),
                                        self.targets, omega0, lambda0,
                                        pseudo_graph if through else pseudo, retain_graph=True,
                                        through_pseudo_targets=through)
        tangents, probe_loss = probe_tangent(
            self.model, self.optimizer, self.probe_inputs, self.probe_targets, virtual,
            lr=plan.lookahead_lr,
        )
        # The JVP runs without autograd on a buffer snapshot, BEFORE the real forward where it
        # can: a JVP fused into the real forward (dual-number parameters) would save a forward but
        # autograd records every tangent operation, which more than doubles the step's peak memory.
        _, u, fallback = logit_tangent(self.model, tangents, self.inputs)
        logits = self.logits("input")
        pseudo_tangents = None
        if through:
            _, u_strong, _ = logit_tangent(self.model, tangents, self.view("strong"))
            _, pseudo_tangents = torch.func.jvp(
                plan.pseudo_label_fn, (logits.detach(), self.logits("strong").detach()),
                (u, u_strong),
            )
        weight, label = contract_meta_gradients(
            logits, u, self.targets, weight_init=omega0, label_init=lambda0, pseudo_targets=pseudo,
            pseudo_tangents=pseudo_tangents,
        )
        self.lookahead_count += 1
        self._meta = MetaGradients(weight.detach(), None if label is None else label.detach(),
                                   probe_loss, fallback)
        return self._meta
