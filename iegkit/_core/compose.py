"""compose(): order parts by their declared data, and the Pipeline that runs one step."""

from __future__ import annotations

import weakref
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import register_optimizer_step_post_hook

from iegkit._core import keys
from iegkit._core.checks import (
    check_batch,
    check_binding,
    check_grad_enabled,
    check_meta_inputs,
    check_step,
    step_labels,
    warn_about_modes,
)
from iegkit._core.context import StepContext
from iegkit._core.loss_stage import assemble, check_loss_stage, loss_reads, staged_terms
from iegkit._core.part import Contribution, Part, Plan, overrides
from iegkit.errors import (
    CycleError,
    DuplicateProviderError,
    MissingProviderError,
    NonFiniteLossError,
)
from iegkit.functional.lookahead import check_lookahead_optimizer

__all__ = ["Pipeline", "StepOutput", "compose"]

FORMAT_VERSION = 1


@dataclass(frozen=True)
class StepOutput:
    """The result of one step. ``loss`` is what the user backpropagates.

    losses: the named terms (``"part/term"``) that sum to ``loss``.
    values: every tensor the parts provided, as last written (detached); ``weights`` and
    ``relabel`` are conveniences over it.
    forward_counts: forwards run per view this step; lookahead_count: look-aheads run (0 or 1).
    """

    loss: Tensor
    losses: dict[str, Tensor]
    values: dict[str, Tensor]
    logits: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)
    forward_counts: dict[str, int] = field(default_factory=dict)
    lookahead_count: int = 0

    @property
    def weights(self) -> Tensor | None:
        """omega* (B,) when a reweighting part ran (``values[keys.WEIGHTS]``), else None."""
        return self.values.get(keys.WEIGHTS)

    @property
    def relabel(self) -> Tensor | None:
        """lambda* (B,) when a relabeling part ran: 1 keeps the given label, 0 takes the pseudo
        label (``values[keys.RELABEL]``), else None."""
        return self.values.get(keys.RELABEL)


_PROTOCOL = ("name", "requires", "optional_requires", "provides", "refines", "needs_probe",
             "setup", "bind", "contribute", "before_optimizer_step", "after_optimizer_step",
             "state_dict", "load_state_dict")


def _order(parts: Sequence[Part], lookahead_inputs: Mapping[str, Sequence[str]] | None = None
           ) -> list[Part]:
    """Stable topological order: a key's provider, then its refiners (in the user's order), then
    its readers; ties keep the user's order. ``lookahead_inputs``: part name -> keys the shared
    look-ahead reads when that part first runs it (every meta part reads them)."""
    lookahead_inputs = lookahead_inputs or {}
    names: dict[str, Part] = {}
    providers: dict[str, str] = {}
    refiners: dict[str, list[str]] = {}
    for part in parts:
        if not isinstance(part, Part):
            missing = [m for m in _PROTOCOL if not hasattr(part, m)]
            raise TypeError(
                f"compose: {part!r} is not a part: it lacks {missing} (subclass iegkit.PartBase "
                "for the defaults)"
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
        for key in part.refines:
            if key in part.provides:
                raise ValueError(f"compose: '{part.name}' both provides and refines '{key}'")
            refiners.setdefault(key, []).append(part.name)
    for part in parts:
        for key in lookahead_inputs.get(part.name, ()):
            if key not in providers:
                raise MissingProviderError(
                    f"compose: '{part.name}' shares the look-ahead, which reads '{key}', but no "
                    "part provides it"
                )
        missing = [key for key in (*part.requires, *part.refines) if key not in providers]
        if missing:
            raise MissingProviderError(
                f"compose: '{part.name}' {'refines' if set(missing) <= set(part.refines) else 'requires'} "
                f"{missing} but no part provides {'it' if len(missing) == 1 else 'them'}"
            )

    def stages_needed(part: Part) -> dict[str, int]:
        """How many writes (provider + refiners) of each key must precede this part."""
        needs: dict[str, int] = {}
        for key in (*part.requires, *lookahead_inputs.get(part.name, ()),
                    *(k for k in part.optional_requires if k in providers)):
            needs[key] = 1 + len(refiners.get(key, ()))
        for key in part.refines:
            needs[key] = 1 + refiners[key].index(part.name)
        return needs

    needs = {part.name: stages_needed(part) for part in parts}
    ordered: list[Part] = []
    written: dict[str, int] = {}
    pending = list(parts)
    while pending:
        for part in pending:
            if all(written.get(key, 0) >= n for key, n in needs[part.name].items()):
                ordered.append(part)
                for key in (*part.provides, *part.refines):
                    written[key] = written.get(key, 0) + 1
                pending.remove(part)
                break
        else:
            raise CycleError(
                "compose: the parts' requires/provides/refines form a cycle: "
                + ", ".join(f"{p.name} requires {list(p.requires)} refines {list(p.refines)}"
                            for p in pending)
            )
    return ordered


def _check_finite_inputs(name: str, inputs: Tensor) -> None:
    if inputs.is_floating_point() and not bool(torch.isfinite(inputs).all()):
        raise ValueError(f"{name}: the batch holds NaN or inf values; nothing was changed (check the "
                         "data pipeline)")


def compose(
    *parts: Part,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    seed: int = 0,
    meta_dropout: bool = True,
    compile_tangent: bool = False,
) -> Pipeline:
    """Build a pipeline from parts, ordered by what each requires and provides.

    ``meta_dropout=False`` runs the look-ahead's probe pass and JVP with dropout off (deterministic
    meta-gradients for models with dropout; default: dropout as in training, a stochastic estimate).
    ``compile_tangent=True`` runs the look-ahead's forward-mode pass (u = J tau) through
    ``torch.compile`` (opt-in; the same meta-gradients up to float32 rounding, docs/results.md; the
    first step compiles; eager again, with a warning, where compiling fails). A recipe's pipeline:
    set ``pipeline.compile_tangent = True``.

    Raises DuplicateProviderError, MissingProviderError or CycleError at build time. ``seed`` seeds
    each part's own generator (derived from the part's name, so parts do not share draws).
    """
    if not parts:
        raise ValueError("compose: expected at least one part")
    ordered = _order(parts)
    check_loss_stage(ordered)
    plan = Plan()
    plan.meta_dropout = meta_dropout
    plan.compile_tangent = bool(compile_tangent)
    for part in ordered:
        part.setup(plan)
    plan.check()
    if plan.meta is not None:
        # The first meta part to run triggers the shared look-ahead, so every meta part must run
        # after the look-ahead's inputs (e.g. the relabeler's pseudo labels, fully refined).
        inputs = [k for k in (plan.meta.pseudo_targets_key, plan.meta.pseudo_source_key) if k]
        ordered = _order(parts, {owner: inputs for owner in plan.meta.owners})
    pipeline = Pipeline(ordered, plan, seed=seed)
    if model is not None or optimizer is not None:
        if model is None or optimizer is None:
            raise ValueError("compose: pass both model and optimizer, or neither (then bind())")
        pipeline.bind(model, optimizer)
    return pipeline


@dataclass
class _CallRecord:
    """The last successful call, as the step guard needs it."""

    optimizer_steps: int  # the bound optimizer's step count when the call returned
    other_steps: int  # steps other optimizers took over the bound parameters, likewise
    lookahead: bool
    backpropagated: bool = False

    def mark_backpropagated(self, _grad: Tensor) -> None:
        self.backpropagated = True


# The pipelines whose hooks are registered; weak, so that an unclosed pipeline is still collected.
_WATCHING: weakref.WeakSet[Pipeline] = weakref.WeakSet()
_GLOBAL_HOOK: list[Any] = []  # the one global step post-hook, registered on first use


def _watch_other_optimizers(pipeline: Pipeline) -> None:
    """Count the steps other optimizers take over the bound optimizer's parameters (one built
    after compose and never bound), from torch's global step post-hook: it sees every optimizer,
    fused ones included, which bump no parameter version. One hook for the process, never
    removed: removing hooks while torch iterates them (a pipeline collected during a step) fails."""
    if not _GLOBAL_HOOK:
        _GLOBAL_HOOK.append(register_optimizer_step_post_hook(_count_other_step))
    _WATCHING.add(pipeline)


def _count_other_step(optimizer: torch.optim.Optimizer, _args, _kwargs) -> None:
    for pipeline in list(_WATCHING):  # a copy: a collection during the loop shrinks the set
        if _steps_bound_parameters(optimizer, pipeline.optimizer):
            pipeline._other_steps += 1


def _steps_bound_parameters(optimizer: torch.optim.Optimizer,
                            bound: torch.optim.Optimizer | None) -> bool:
    """Whether ``optimizer`` is another optimizer over ``bound``'s parameters. A second optimizer
    over other parameters (a GAN's) is not, nor a wrapper sharing the bound one's param_groups."""
    if bound is None or optimizer is bound or optimizer.param_groups is bound.param_groups:
        return False
    held = {id(p) for group in bound.param_groups for p in group["params"]}
    return any(id(p) in held for group in optimizer.param_groups for p in group["params"])


def _pending_gradients(optimizer: torch.optim.Optimizer) -> str:
    """The gradients of the bound optimizer's parameters: 'none' (None, or zeroed), 'finite', or
    'non-finite' (what GradScaler leaves when it skips optimizer.step() on overflow). Reads every
    gradient: only for the step guard's rare case."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grads = [p.grad.coalesce().values() if p.grad.is_sparse else p.grad
             for p in params if p.grad is not None]
    peaks = [g.detach().abs().amax().float().cpu() for g in grads if g.numel()]
    if not peaks:
        return "none"
    peaks_tensor = torch.stack(peaks)
    if not bool(torch.isfinite(peaks_tensor).all()):
        return "non-finite"
    return "finite" if bool((peaks_tensor > 0).any()) else "none"


_OPTIMIZER_REPLACED = (
    "optimizer: since the last pipeline call another optimizer stepped the model's parameters and "
    "the optimizer bound to the pipeline did not (one built after compose, e.g. optimizer = "
    "torch.optim.SGD(model.parameters(), lr=0.01)). The look-ahead models the bound optimizer's "
    "lr and state, and the after-step work (EMA teacher, running statistics) runs from its hook, "
    "so the last step used the old optimizer. Call pipeline.bind(model, new_optimizer)."
)

_ACCUMULATION_REFUSED = (
    "pipeline: called again before optimizer.step(), with the last call's gradients still "
    "pending (gradient accumulation). Meta weights are normalised over the batch the look-ahead "
    "sees; gradient accumulation splits it: call the pipeline once on the whole batch per "
    "optimizer.step(), or use recipes without a meta step (plain/eg) when you need "
    "accumulation. If you skipped optimizer.step() on purpose, call optimizer.zero_grad() before "
    "the next call (or pipeline.reset_step_guard()). Nothing was changed."
)


class Pipeline:
    """Composed parts that turn one batch (and a probe batch) into a loss.

    The user keeps the loop::

        out = pipeline(inputs, targets, probe_inputs, probe_targets, step=step)
        optimizer.zero_grad(); out.loss.backward(); optimizer.step()

    Gradient accumulation (several calls, one ``optimizer.step()``) is refused where the pipeline
    has a look-ahead (its meta weights are normalised over the batch it sees): call it once on the
    whole batch per step. Without one (``plain``, ``eg``) it is allowed. A step skipped after
    ``loss.backward()``: ``optimizer.zero_grad()`` (or ``reset_step_guard()``) before the next call.
    """

    def __init__(self, parts: list[Part], plan: Plan, *, seed: int = 0) -> None:
        self.parts = parts
        self.plan = plan
        self.seed = seed
        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.last_step: int | None = None
        self.forward_model: torch.nn.Module | None = None
        self.process_group: Any = None
        self._hook: Any = None
        self._pre_hook: Any = None
        self._before_hooks: list[Callable[[int], None]] = []
        self._optimizer_steps = 0  # steps of the bound optimizer, counted by its post-hook
        self._other_steps = 0  # other optimizers' steps over its parameters
        self._last_call: _CallRecord | None = None
        # one generator per part and per declared extra stream, each seeded from its name
        names = [part.name for part in parts] + list(plan.random_streams)
        if len(set(names)) != len(names):
            raise ValueError(f"compose: a random stream is named like a part: {sorted(names)}")
        self.generators: dict[str, torch.Generator] = {
            name: torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            for name in names}

    def bind(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Pipeline:
        """Attach the user's model and optimizer (the pipeline never steps the optimizer).

        A ``DistributedDataParallel`` model: the real forward runs through it, the look-ahead
        all-reduces its virtual and probe gradients over its process group (docs/distributed.md).
        Registers one ``optimizer.register_step_post_hook`` that runs each part's
        ``after_optimizer_step`` after every ``optimizer.step()`` and, when a part has the optional
        ``before_optimizer_step``, one ``register_step_pre_hook`` for it; ``close()`` removes them,
        and the next call (or ``with pipeline:``) registers them again.

        Call it again after replacing the optimizer (``pipeline.bind(model, new_optimizer)``): the
        old optimizer's hooks are removed and the look-ahead models the new one. Rebinding the
        model already bound keeps every part's state (the EMA teacher's average, running
        statistics), as a resume from ``state_dict()`` would.
        """
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        self.forward_model, self.process_group = model, None
        module = model
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            # The real forward goes through DDP (its hooks reduce the user's backward); the meta
            # passes run the wrapped module functionally and reduce their own gradients.
            module, self.process_group = model.module, model.process_group
            if any(isinstance(m, torch.nn.SyncBatchNorm) for m in module.modules()):
                raise ValueError(
                    "model: SyncBatchNorm cannot run in the look-ahead's functional passes (its "
                    "collectives have no forward-mode formula); use BatchNorm: the meta passes then "
                    "use each process's own batch statistics (docs/distributed.md)"
                )
        check_binding(module, optimizer)
        if self.plan.meta is not None:
            check_lookahead_optimizer(optimizer)
        self.close()
        # Parts such as the pseudo labeler build their EMA teacher in bind(): a new optimizer on
        # the same model must not restart the teacher's average.
        rebinding = module is self.model
        kept = {part.name: part.state_dict() for part in self.parts} if rebinding else None
        self.model, self.optimizer = module, optimizer
        for part in self.parts:
            part.bind(module, optimizer)
            if kept is not None:
                part.load_state_dict(kept[part.name])
        self._before_hooks = [part.before_optimizer_step for part in self.parts
                              if overrides(part, "before_optimizer_step")]
        self._register_hooks()
        return self

    def _register_hooks(self) -> None:
        """Register the optimizer hooks unless they are (idempotent): bind, ``with pipeline:`` and
        every call do, so the after-step work follows use and not the first ``with`` block."""
        if self.optimizer is None or self._hook is not None:
            return
        self._hook = self.optimizer.register_step_post_hook(self._after_optimizer_step)
        if self._before_hooks:
            self._pre_hook = self.optimizer.register_step_pre_hook(self._before_optimizer_step)
        _watch_other_optimizers(self)

    def _before_optimizer_step(self, _optimizer, _args, _kwargs) -> None:
        if self.last_step is None:
            return
        for hook in self._before_hooks:
            hook(self.last_step)

    def _after_optimizer_step(self, _optimizer, _args, _kwargs) -> None:
        self._optimizer_steps += 1  # first: the step guard asks whether the optimizer stepped
        if self.last_step is None:  # the optimizer stepped before any pipeline step: nothing to do
            return
        for part in self.parts:
            part.after_optimizer_step(self.last_step)

    def close(self) -> None:
        """Remove the optimizer hooks now (idempotent); ``with pipeline:`` closes on exit. The next
        call (or ``with pipeline:``) registers them again: an ``optimizer.step()`` taken while
        closed runs no after-step work (EMA teacher, running statistics)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._pre_hook is not None:
            self._pre_hook.remove()
            self._pre_hook = None
        _WATCHING.discard(self)
        # Steps taken while closed are not counted: the step guard starts afresh.
        self._last_call = None

    def __enter__(self) -> Pipeline:
        self._register_hooks()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def reset_step_guard(self) -> None:
        """Do not check the next call against the last one (see ``_check_step_guard``).

        For a deliberate ``optimizer.step()`` skipped after ``loss.backward()`` whose gradients
        are then discarded later in the loop; ``optimizer.zero_grad()`` before the next call does
        the same."""
        self._last_call = None

    def _check_step_guard(self) -> None:
        """Refuse a call that would silently go wrong, when the bound optimizer has not stepped
        since the last call (its hook counts the steps). Both cases are "called again without the
        bound optimizer stepping"; whether the parameters were stepped tells them apart:

        - another optimizer stepped its parameters: it was replaced without ``bind``; raise.
        - none did, the last call's loss was backpropagated, its gradients are still pending and
          the pipeline has a look-ahead: gradient accumulation, which the look-ahead cannot do
          exactly; raise.
        Allowed: accumulation without a look-ahead, a call whose loss was never backpropagated
        (metrics), gradients zeroed since (a skipped step) or non-finite (GradScaler skipped the
        step on overflow). The gradients are read only in the rare case that reaches them."""
        last = self._last_call
        if last is None or self._optimizer_steps != last.optimizer_steps:
            return
        if self._other_steps != last.other_steps:
            raise RuntimeError(_OPTIMIZER_REPLACED)
        if not (last.backpropagated and last.lookahead):
            return
        if _pending_gradients(self.optimizer) == "finite":
            raise RuntimeError(_ACCUMULATION_REFUSED)

    def _prepare_call(self) -> None:
        """First in every call, before anything moves: refuse a call that would silently go wrong
        (the step guard), then register the optimizer hooks again if ``close()`` (or the end of a
        ``with`` block) removed them."""
        self._check_step_guard()
        self._register_hooks()

    def _remember_call(self, loss: Tensor, lookahead_count: int) -> None:
        """What the step guard compares the next call with; a hook on the loss records whether it
        was backpropagated (it returns None: the gradient is unchanged)."""
        record = _CallRecord(self._optimizer_steps, self._other_steps, lookahead_count > 0)
        if loss.requires_grad:
            loss.register_hook(record.mark_backpropagated)
        self._last_call = record

    @property
    def compile_tangent(self) -> bool:
        """Whether the look-ahead's JVP runs through ``torch.compile`` (``compose(compile_tangent=)``);
        settable, e.g. ``recipes.l2r(model, opt).compile_tangent = True``."""
        return self.plan.compile_tangent

    @compile_tangent.setter
    def compile_tangent(self, value: bool) -> None:
        self.plan.compile_tangent = bool(value)

    @property
    def provides(self) -> frozenset[str]:
        """Every context key some part provides (e.g. ``"lr"`` when a schedule part sets the lr)."""
        return frozenset(key for part in self.parts for key in part.provides)

    @property
    def needs_probe(self) -> bool:
        return self.plan.meta is not None or any(part.needs_probe for part in self.parts)

    def __call__(
        self,
        inputs: Tensor,
        targets: Tensor,
        probe_inputs: Tensor | None = None,
        probe_targets: Tensor | None = None,
        *,
        step: int,
        views: Mapping[str, Tensor] | None = None,
    ) -> StepOutput:
        """One step: the total loss and what the parts provided.

        ``views``: precomputed inputs of declared views, e.g. ``{"strong": strong_batch}`` from
        DataLoader workers (FixMatch-style datasets that return weak and strong views), so the
        augmentation does not run inside the step; each replaces the part's own view function.
        """
        if self.model is None or self.optimizer is None:
            raise RuntimeError("pipeline: call bind(model, optimizer) (or pass them to compose) first")
        self._prepare_call()
        # Before anything moves (a forward, a generator draw): the step, the grad mode and the
        # labels, converted to int64 (any integer dtype is accepted, float and bool refused).
        step = check_step(step)
        check_grad_enabled()
        targets, probe_targets = step_labels(inputs, targets, probe_inputs, probe_targets)
        if self.needs_probe:
            check_meta_inputs(inputs, targets, probe_inputs, probe_targets)
        for name, view in (views or {}).items():
            if name not in self.plan.views:
                raise ValueError(f"views: no part declares a view named '{name}' (declared: "
                                 f"{sorted(self.plan.views)})")
            if not isinstance(view, Tensor) or view.shape != inputs.shape:
                raise ValueError(f"views['{name}']: expected a tensor of the inputs' shape "
                                 f"{tuple(inputs.shape)}, got {getattr(view, 'shape', type(view))}")
            _check_finite_inputs(f"views['{name}']", view)
        ctx = StepContext(
            model=self.model, optimizer=self.optimizer, plan=self.plan, inputs=inputs,
            targets=targets, probe_inputs=probe_inputs, probe_targets=probe_targets, step=step,
            generators=self.generators, views=views, forward_model=self.forward_model,
            process_group=self.process_group,
        )
        check_batch(self.model, inputs, probe_inputs)
        if self.plan.meta is not None:
            warn_about_modes(self.model, dropout=self.plan.meta_dropout)
        _check_finite_inputs("inputs", inputs)
        if probe_inputs is not None:
            _check_finite_inputs("probe_inputs", probe_inputs)
        # A step that fails must change nothing: the real forward has already moved the BatchNorm
        # statistics when a loss turns out non-finite, so they are restored before re-raising.
        saved_buffers = {name: b.detach().clone() for name, b in self.model.named_buffers()}
        try:
            losses, metrics = self._run_parts(ctx)
        except BaseException:
            with torch.no_grad():
                for name, buffer in self.model.named_buffers():
                    buffer.copy_(saved_buffers[name])
            raise
        # Summed in name order so that the total does not depend on the order of independent parts.
        total = sum(losses[name] for name in sorted(losses))
        values = {k: v.detach() for k, v in ctx.values().items() if isinstance(v, Tensor)}
        self.last_step = step
        self._remember_call(total, ctx.lookahead_count)
        return StepOutput(
            loss=total,
            losses=losses,
            values=values,
            logits=ctx.logits("input").detach(),
            metrics=metrics,
            forward_counts=dict(ctx.forward_counts),
            lookahead_count=ctx.lookahead_count,
        )

    def _run_parts(self, ctx: StepContext) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        losses: dict[str, Tensor] = {}
        metrics: dict[str, Tensor] = {}
        staged = []
        for part in self.parts:
            contribution = part.contribute(ctx)
            if not isinstance(contribution, Contribution):
                raise TypeError(f"part '{part.name}': contribute() must return a Contribution")
            declared = {*part.provides, *part.refines}
            if set(contribution.values) != declared:
                raise ValueError(
                    f"part '{part.name}': returned values {sorted(contribution.values)} but declares "
                    f"provides + refines {sorted(declared)}"
                )
            for key, value in contribution.values.items():
                ctx._provide(key, value)
            for term, value in contribution.losses.items():
                losses[f"{part.name}/{term}"] = value
            for term, value in contribution.metrics.items():
                metrics[f"{part.name}/{term}"] = value
            staged.extend(staged_terms(part, contribution))
        # The loss stage: after every part, so every refiner of the keys these terms read has run.
        losses.update(assemble(staged, ctx.get))
        if not losses:
            raise ValueError("pipeline: no part contributed a loss term")
        for name, value in losses.items():
            if not bool(torch.isfinite(value.detach()).all()):
                raise NonFiniteLossError(f"loss term '{name}' is {float(value.detach())}")
        return losses, metrics

    def describe(self) -> str:
        """The parts in execution order and the passes one step runs, in that order."""
        lines = ["iegkit pipeline, parts in execution order:"]
        for i, part in enumerate(self.parts, 1):
            refines = f" refines {list(part.refines)}" if part.refines else ""
            lines.append(
                f"  {i}. {part.name} ({type(part).__name__}) requires {list(part.requires)} "
                f"provides {list(part.provides)}{refines}"
            )
        lines.append("passes per step:")
        meta = self.plan.meta
        at_zero = meta is not None and meta.init.starts_at_zero  # L2R: no virtual gradient
        if at_zero:
            lines.append(f"  look-ahead for {meta.owners} ({meta.init}): "
                         "probe forward+backward at theta', one JVP of the training logits (no "
                         "autograd); the virtual gradient is 0")
        lines.append("  forward 'input' (training batch; the only pass that updates BatchNorm "
                     "statistics)")
        for view, (owner, _) in self.plan.views.items():
            lines.append(f"  forward '{view}' (declared by {owner}; BatchNorm statistics frozen)")
        if meta is not None and not at_zero:
            lines.append(f"  look-ahead for {meta.owners} ({meta.init}): "
                         "virtual backward on the 'input' graph (kept for the real backward), "
                         "probe forward+backward at theta', one JVP of the training logits")
            if meta.pseudo_source_key is not None:
                lines.append("    and one JVP per other pseudo-label view (through the pseudo "
                             "labels)")
        for view, (owner, rows) in self.plan.built_views.items():
            lines.append(f"  forward '{view}' ({rows} rows built by {owner}; BatchNorm statistics "
                         "frozen)")
        staged = [f"{p.name} reads {list(loss_reads(p))}" for p in self.parts if loss_reads(p)]
        if staged:
            lines.append("  loss stage (after every part, so refiners of these keys change the "
                         "loss): " + "; ".join(staged))
        lines.append("  backward of the total loss, optimizer.step(): in the user's loop")
        hooked = [p.name for p in self.parts if overrides(p, "after_optimizer_step")]
        before = [p.name for p in self.parts if overrides(p, "before_optimizer_step")]
        if before:
            lines.append("  before optimizer.step() (hook): " + ", ".join(before))
        if hooked:
            lines.append("  after optimizer.step() (hook): " + ", ".join(hooked))
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
        for name, generator in self.generators.items():
            if name in state.get("generators", {}):
                generator.set_state(state["generators"][name])
