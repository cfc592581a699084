"""The training loop of the demo, the CLI and the benchmarks: one loop, written as a user would.

``fit`` runs epochs of a shuffled training split with a cycling probe (trusted) batch, the same
weak augmentation of both, ``out = pipeline(...)``, then the user's ``zero_grad``/``backward``/
``step``. Everything specific to an application comes in as arguments and callbacks: the lr
scheduler, the per-epoch evaluation, ``on_step`` (a diagnostics recorder, an EMA of the weights),
``on_epoch`` (logs), ``views`` (precomputed view inputs, e.g. a strong view made outside the step),
checkpoints. ``train`` builds SmallCNN, SGD and a named recipe
(``recipes.build``, which owns the per-method defaults) and calls ``fit``.

Randomness: ``fit`` draws the data order from ``Generator(seed)``, the augmentations from
``Generator(seed + 1)`` (batch first, then probe, each step) and the probe order from
``ProbeSampler(seed=seed)``; it never draws from the global RNG (it only restores it from a
checkpoint), so a caller that seeds it (``torch.manual_seed(seed)`` before building the model)
gets the same run every time.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler
from torch.utils.data import DataLoader

from iegkit import recipes
from iegkit._core.compose import Pipeline, StepOutput
from iegkit.checkpoint import load_checkpoint, save_checkpoint
from iegkit.data import NoisyDataset, ProbeSampler
from iegkit.ema import evaluation_weights

__all__ = ["FitResult", "TrainingData", "accuracy", "default_augmentations", "fit",
           "steps_per_epoch", "train"]

#: ``augment(images, generator=g) -> images``, e.g. ``iegkit.augment.weak_augment(...)``.
Augment = Callable[..., Tensor]
#: ``on_step(step, dataset_indices, step_output)``, after ``optimizer.step()``.
StepCallback = Callable[[int, Tensor, StepOutput], None]
#: ``views(step, dataset_indices) -> {view name: inputs}``, before each step (``Pipeline(views=)``).
ViewsCallback = Callable[[int, Tensor], Mapping[str, Tensor]]
#: ``scheduler(optimizer, total_steps) -> LRScheduler``, stepped after every optimizer step.
SchedulerFactory = Callable[[torch.optim.Optimizer, int], LRScheduler]


class TrainingData(Protocol):
    """What ``fit`` reads (``iegkit.data.NoisyDataset`` has it): the training split with its given
    (noisy) labels and the trusted (probe) set. ``fit`` indexes the tensors as they are, so they
    may live on the GPU, or hold uint8 images that ``weak_augment`` converts."""

    train_inputs: Tensor
    train_labels: Tensor
    trusted_inputs: Tensor
    trusted_labels: Tensor


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class FitResult:
    """history: one dict per epoch, ``{"epoch", "step", "loss" (mean over the epoch's steps),
    **evaluate(model)}`` plus what ``on_epoch`` added, restored epochs included; steps: optimizer
    steps done in all (sessions included); seconds: this call's wall time; scheduler: the lr
    scheduler ``fit`` stepped (None when a part set the lr); pipeline: the one trained with (for
    ``iegkit.evaluation_weights(result.pipeline)``: the weights to deploy)."""

    history: list[dict]
    steps: int
    seconds: float
    model: torch.nn.Module
    scheduler: LRScheduler | None
    pipeline: Pipeline | None = None

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full batches per epoch (the last partial batch is dropped), at least 1."""
    return max(1, num_examples // batch_size)


@torch.no_grad()
def accuracy(model: torch.nn.Module, inputs: Tensor, labels: Tensor, *, batch_size: int = 512,
             transform: Callable[[Tensor], Tensor] | None = None) -> float:
    """Top-1 accuracy in eval mode (the training mode is restored); ``transform`` maps each batch
    of ``inputs`` to the model's input (e.g. uint8 to float on the model's device)."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, inputs.shape[0], batch_size):
        batch = inputs[start:start + batch_size]
        if not isinstance(inputs, Tensor):  # a Dataset read from disk (ImageFiles)
            batch = batch.to(_model_device(model))
        logits = model(transform(batch) if transform is not None else batch)
        target = labels[start:start + batch_size].to(logits.device)
        correct += int((logits.argmax(-1) == target).sum())
    model.train(was_training)
    return correct / max(1, inputs.shape[0])


def _model_device(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def default_augmentations(channels: int, size: int) -> tuple[Augment, Augment]:
    """Weak and strong views for images in [-1, 1] of ``size`` pixels: a crop after a pad of
    size/8 (at least 1), a flip for RGB only (digits are not mirror-symmetric); the strong view
    adds a (size/2)-pixel cutout and, for RGB, AutoAugment's CIFAR-10 policy (it needs RGB, so a
    grayscale strong view is the paper's "without AA" chain). For the 8x8 digits: pad 1, cutout 4."""
    from iegkit.augment import strong_augment, weak_augment

    pad, rgb = max(1, size // 8), channels == 3
    weak = weak_augment(pad=pad, flip=rgb, value_range=(-1.0, 1.0))
    strong = strong_augment(policy="cifar10" if rgb else None, pad=pad, cutout=max(1, size // 2),
                            flip=rgb, value_range=(-1.0, 1.0))
    return weak, strong


def fit(
    pipeline: Pipeline,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: TrainingData,
    *,
    epochs: int,
    batch_size: int,
    weak_augment: Augment,
    seed: int = 0,
    scheduler: SchedulerFactory | None = None,
    evaluate: Callable[[torch.nn.Module], Mapping[str, float]] | None = None,
    evaluate_every_epoch: bool = True,
    evaluate_average: bool = False,
    on_step: StepCallback | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    views: ViewsCallback | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    state: Mapping[str, Stateful] | None = None,
    stop_after: int | None = None,
    max_steps: int | None = None,
    autocast: torch.dtype | None = None,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "",
) -> FitResult:
    """Train ``model`` with ``pipeline`` for ``epochs`` epochs of ``steps_per_epoch`` full batches.

    Args:
      pipeline, model, optimizer: bound together (``recipes.build`` or ``compose``).
      data: see ``TrainingData``; the probe batch has ``batch_size`` trusted examples (fewer if
        the trusted set is smaller).
      weak_augment: applied to the training batch, then to the probe batch, with the loop's
        augmentation generator.
      scheduler: a factory ``(optimizer, total_steps) -> LRScheduler``, stepped after every
        optimizer step. None: ``CosineAnnealingLR(optimizer, total_steps)`` unless a part provides
        ``"lr"`` (a schedule part); giving one with such a part is an error. (``LRWarmup`` provides
        ``"lr_scale"``: it scales the lr of whichever schedule runs.)
      evaluate: ``model -> {name: value}`` merged into each epoch's history entry; default: none.
        With ``evaluate_every_epoch=False`` only the last epoch of this call is evaluated.
      evaluate_average: also ``evaluate`` the weight average the pipeline keeps, as the official
        code evaluates (``iegkit.evaluation_weights``: a ``WeightEMA`` part, or the EMA teacher of
        ``robust_ieg``/``robust_eg``), its values prefixed ``average_``; nothing is added when the
        pipeline keeps none.
      on_step: ``(step, indices, out)`` after each ``optimizer.step()`` (before the scheduler's).
      on_epoch: ``(entry)`` after each epoch's evaluation; it may add keys to the entry, which is
        then appended to the history (and checkpointed).
      views: ``(step, indices) -> {name: inputs}``, called before each step with the batch's
        dataset indices; the mapping goes to ``pipeline(..., views=...)`` and replaces those
        declared views' own functions (e.g. ``{"strong": cache[indices]}``, a strong view
        precomputed once per epoch or made by DataLoader workers, so the augmentation does not run
        inside the step). Its tensors must have the shape of the (weak) training batch and be on
        its device; only names a part declares are accepted (``pipeline.plan.views``).
      checkpoint: a file written (``iegkit.checkpoint``) every ``checkpoint_every`` epochs and after
        the last epoch of this call: model, optimizer, pipeline, global RNG, the loop's generators,
        probe sampler, scheduler, history, and ``state``'s objects. ``resume=True`` restores it
        first and continues from the epoch it holds, bit for bit on CPU (a restored
        CosineAnnealingLR keeps the length it was saved with, even if ``epochs`` grew).
      state: more objects to checkpoint and restore by name (``state_dict``/``load_state_dict``),
        e.g. ``{"recorder": step_recorder}``.
      stop_after: end this call after that many epochs (continue later with ``resume=True``).
      max_steps: stop after that many steps in all (smoke tests); the partial epoch is evaluated,
        not checkpointed.
      autocast: run each pipeline call (forward, look-ahead, meta step) under ``torch.autocast``
        of this dtype on the training inputs' device; backward and the optimizer step stay
        outside, as torch's recipe has them. ``torch.bfloat16`` only: float16 needs loss scaling,
        which the meta step has not been validated with.
      num_workers: where ``data.train_inputs`` is a map-style Dataset rather than a tensor (images
        read from disk, ``iegkit.datasets.ImageFiles``), a ``DataLoader`` with this many worker
        processes loads each batch of the loop's order ahead of the step; batches move to the
        model's device. 0 loads them in the loop's process.
    """
    from tqdm.auto import tqdm

    if epochs < 1 or batch_size < 1 or checkpoint_every < 1:
        raise ValueError(f"epochs, batch_size, checkpoint_every: expected >= 1, got {epochs}, "
                         f"{batch_size}, {checkpoint_every}")
    if resume and checkpoint is None:
        raise ValueError("resume: needs checkpoint=PATH")
    if num_workers < 0:
        raise ValueError(f"num_workers: expected >= 0, got {num_workers}")
    if autocast not in (None, torch.bfloat16):
        raise ValueError(f"autocast: expected None or torch.bfloat16, got {autocast} (float16 "
                         "needs loss scaling, which the meta step has not been validated with)")
    per_epoch = steps_per_epoch(data.train_inputs.shape[0], batch_size)
    loop = _Loop(pipeline, model, optimizer, data, batch_size, weak_augment, views, on_step,
                 _lr_scheduler(pipeline, optimizer, scheduler, epochs * per_epoch),
                 seed=seed, state=dict(state or {}), checkpoint=checkpoint, autocast=autocast,
                 num_workers=num_workers)
    start_epoch = loop.restore() if resume else 0
    last_epoch = epochs if stop_after is None else min(epochs, start_epoch + stop_after)
    step = start_epoch * per_epoch
    end_step = last_epoch * per_epoch if max_steps is None else min(max_steps, last_epoch * per_epoch)
    bar = tqdm(total=end_step, initial=step, desc=desc, disable=not progress, leave=False,
               mininterval=0.1 if sys.stderr.isatty() else 30.0)
    started = time.perf_counter()
    model.train()
    for epoch in range(start_epoch, last_epoch):
        if step >= end_step:
            break
        step, losses = loop.run_epoch(step, end_step, bar)
        last = step >= end_step
        entry: dict = {"epoch": epoch + 1, "step": step, "loss": sum(losses) / len(losses)}
        if evaluate is not None and (evaluate_every_epoch or last):
            entry.update(_evaluation(pipeline, model, evaluate, evaluate_average))
        if on_epoch is not None:
            on_epoch(entry)
        loop.history.append(entry)
        bar.set_postfix({k: f"{v:.3f}" for k, v in entry.items() if isinstance(v, float)})
        whole_epoch = len(losses) == per_epoch  # a partial epoch (max_steps) is not checkpointed
        if checkpoint is not None and whole_epoch and ((epoch + 1) % checkpoint_every == 0 or last):
            loop.save(epoch + 1, step)
    bar.close()
    return FitResult(loop.history, step, time.perf_counter() - started, model, loop.lr_scheduler,
                     pipeline)


def _lr_scheduler(pipeline: Pipeline, optimizer: torch.optim.Optimizer,
                  scheduler: SchedulerFactory | None, total_steps: int) -> LRScheduler | None:
    """The loop's schedule: none where a part sets the lr, else the factory's (cosine default)."""
    if "lr" not in pipeline.provides:
        return (scheduler or CosineAnnealingLR)(optimizer, total_steps)
    if scheduler is not None:
        raise ValueError("scheduler: a part of the pipeline already sets the lr ('lr' in "
                         "pipeline.provides); pass scheduler=None")
    return None


def _evaluation(pipeline: Pipeline, model: torch.nn.Module,
                evaluate: Callable[[torch.nn.Module], Mapping[str, float]],
                evaluate_average: bool) -> dict[str, float]:
    """``evaluate(model)``, and of the pipeline's weight average (prefixed) when asked and kept."""
    values = dict(evaluate(model))
    if evaluate_average:
        with evaluation_weights(pipeline) as average:
            if average is not None:
                values.update({f"average_{k}": v for k, v in evaluate(model).items()})
    return values


class _Loop:
    """What ``fit`` carries from step to step and checkpoints: the bound pipeline, the loop's
    generators (data order, augmentation), the probe sampler, the schedule, the history."""

    def __init__(self, pipeline: Pipeline, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, data: TrainingData, batch_size: int,
                 weak_augment: Augment, views: ViewsCallback | None,
                 on_step: StepCallback | None, lr_scheduler: LRScheduler | None, *, seed: int,
                 state: dict[str, Stateful], checkpoint: str | os.PathLike | None,
                 autocast: torch.dtype | None = None, num_workers: int = 0) -> None:
        self.pipeline, self.model, self.optimizer, self.data = pipeline, model, optimizer, data
        self.autocast, self.num_workers = autocast, num_workers
        self.batch_size, self.weak_augment, self.views = batch_size, weak_augment, views
        self.on_step, self.lr_scheduler = on_step, lr_scheduler
        self.state, self.checkpoint = state, checkpoint
        self.generators = {"order": torch.Generator().manual_seed(seed),
                           "augment": torch.Generator().manual_seed(seed + 1)}
        self.probe = ProbeSampler(data.trusted_inputs, data.trusted_labels, batch_size, seed=seed)
        self.history: list[dict] = []

    def run_epoch(self, step: int, end_step: int, bar: Any) -> tuple[int, list[float]]:
        """One epoch of full batches in a fresh order (or up to ``end_step``); its losses."""
        n = self.data.train_inputs.shape[0]
        order = torch.randperm(n, generator=self.generators["order"])
        losses: list[float] = []
        for idx, images in self._batches(order, steps_per_epoch(n, self.batch_size)):
            losses.append(self.run_step(step, idx, images))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            if step >= end_step:
                break
        return step, losses

    def _batches(self, order: Tensor, steps: int) -> Iterator[tuple[Tensor, Tensor | None]]:
        """(dataset indices, their images or None to index in the step) for one epoch."""
        chunks = [order[b * self.batch_size:(b + 1) * self.batch_size] for b in range(steps)]
        inputs = self.data.train_inputs
        if self.num_workers == 0 or isinstance(inputs, Tensor):
            return ((idx, None) for idx in chunks)
        loader = DataLoader(inputs, batch_sampler=[idx.tolist() for idx in chunks],
                            num_workers=self.num_workers)
        return zip(chunks, loader)

    def run_step(self, step: int, idx: Tensor, images: Tensor | None = None) -> float:
        """The README's loop: the pipeline's loss, backward, the user's optimizer step."""
        augment = self.generators["augment"]
        probe_inputs, probe_labels = next(self.probe)
        if images is None:
            images = self.data.train_inputs[idx]
        if not isinstance(self.data.train_inputs, Tensor):  # read from disk: to the model
            images = images.to(_model_device(self.model), non_blocking=True)
        inputs = self.weak_augment(images, generator=augment)
        with torch.autocast(inputs.device.type, dtype=self.autocast or torch.bfloat16,
                            enabled=self.autocast is not None):
            out = self.pipeline(inputs, self.data.train_labels[idx],
                                self.weak_augment(probe_inputs, generator=augment),
                                probe_labels, step=step,
                                views=self.views(step, idx) if self.views is not None else None)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.optimizer.step()
        if self.on_step is not None:
            self.on_step(step, idx, out)
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        return float(out.loss.detach())

    def restore(self) -> int:
        """Load the checkpoint into everything; the epoch it holds."""
        extra = load_checkpoint(self.checkpoint, model=self.model, optimizer=self.optimizer,
                                pipeline=self.pipeline, generators=self.generators)["extra"]
        needed = ["epoch", "history", "probe_sampler", *self.state,
                  *(["scheduler"] if self.lr_scheduler is not None else [])]
        missing = [key for key in needed if key not in extra]
        if missing:
            raise ValueError(f"checkpoint: {self.checkpoint} holds no state for {missing} "
                             "(written by another loop or version)")
        self.history = list(extra["history"])
        self.probe.load_state_dict(extra["probe_sampler"])
        if self.lr_scheduler is not None:
            self.lr_scheduler.load_state_dict(extra["scheduler"])
        for name, obj in self.state.items():
            obj.load_state_dict(extra[name])
        return int(extra["epoch"])

    def save(self, epoch: int, step: int) -> None:
        extra: dict[str, Any] = {"epoch": epoch, "history": self.history,
                                 "probe_sampler": self.probe.state_dict()}
        if self.lr_scheduler is not None:
            extra["scheduler"] = self.lr_scheduler.state_dict()
        extra.update({name: obj.state_dict() for name, obj in self.state.items()})
        save_checkpoint(self.checkpoint, model=self.model, optimizer=self.optimizer,
                        pipeline=self.pipeline, step=step, generators=self.generators,
                        extra=extra)


def train(
    method: str,
    data: NoisyDataset,
    *,
    epochs: int = 30,
    batch_size: int = 100,
    lr: float = 0.1,
    seed: int = 0,
    width: int = 32,
    weak_augment: Augment | None = None,
    strong_augment: Augment | None = None,
    recipe_options: Mapping[str, Any] | None = None,
    evaluate: Callable[[torch.nn.Module], Mapping[str, float]] | None = None,
    model_factory: Callable[[int, int], torch.nn.Module] | None = None,
    device: torch.device | str | None = None,
    **fit_options: Any,
) -> FitResult:
    """SmallCNN, SGD (momentum 0.9, weight decay 5e-4) and ``recipes.build(method, ...)`` on
    ``data`` (an ``iegkit.data.NoisyDataset``), then ``fit``.

    ``torch.manual_seed(seed)`` is set before the model is built: ``model_factory(in_channels,
    num_classes)`` (the user's network), by default ``SmallCNN(width=width)``. The views default to
    ``default_augmentations`` of the data's shape; ``recipe_options`` go to ``recipes.build`` (a
    ``strong_augment`` there overrides the argument). ``evaluate`` defaults to the test accuracy
    (``{"test_accuracy": ...}``). ``device``: the model and every tensor of ``data`` move there
    first (the result's model stays there). ``fit_options``: the other arguments of ``fit``.
    """
    from iegkit.models import SmallCNN

    torch.manual_seed(seed)
    channels, size = data.train_inputs.shape[1], data.train_inputs.shape[-1]
    model = (model_factory(channels, data.num_classes) if model_factory is not None
             else SmallCNN(in_channels=channels, num_classes=data.num_classes, width=width))
    if device is not None:
        model, data = model.to(device), data.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    total_steps = epochs * steps_per_epoch(data.train_inputs.shape[0], batch_size)
    default_weak, default_strong = default_augmentations(channels, size)
    options = dict(recipe_options or {})
    strong = options.pop("strong_augment", strong_augment or default_strong)
    pipeline = recipes.build(method, model, optimizer, total_steps=total_steps,
                             strong_augment=strong, seed=seed, **options)
    if evaluate is None:
        def evaluate(m: torch.nn.Module) -> dict[str, float]:
            return {"test_accuracy": accuracy(m, data.test_inputs, data.test_labels)}
    fit_options.setdefault("desc", f"{method} seed {seed}")
    return fit(pipeline, model, optimizer, data, epochs=epochs, batch_size=batch_size,
               weak_augment=weak_augment or default_weak, seed=seed, evaluate=evaluate,
               **fit_options)
