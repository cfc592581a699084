"""Accuracy on noisy CIFAR-10 (real images): plain vs L2R vs EG vs IEG, with 10 trusted per class.

Data: the CIFAR-10 JPEG archives in ``../shared/data/cifar10-jpeg`` (outside the repository),
extracted and decoded once into a cache (``iegkit.datasets.load_cifar10_jpeg``). When they are
absent the script says so and exits with status 0.

Protocol (both configurations):

* 10 trusted images per class are drawn from the 50k training images by their clean labels
  *before* noise and removed from the training set (``iegkit.data.split_trusted``); the trusted set
  keeps its clean labels and is the probe set (probe batch = training batch, as the official code).
* Noise on the remaining training labels: ``uniform 0.4``, ``uniform 0.8`` (IEG semantics: a
  selected label is redrawn from all 10 classes, so the true class may come back and the realised
  flip rate is 0.9 x rate) and ``asymmetric 0.4`` (``CIFAR10_ASYMMETRIC_MAP``: truck->automobile,
  bird->airplane, cat<->dog, deer->horse, each with probability 0.4).
* Inputs are mapped to [-1, 1] as the official code. Every method sees the same weak view of the
  training and probe batches (``weak_augment(pad=2)``: black pad to 36, random 32 crop, flip: the
  official weak view). EG and IEG also build the strong view ``strong_augment("cifar10")``
  (kornia's AutoAugment CIFAR-10 policy, gray pad-crop 4, flip, 16x16 cutout) on top of it.
* EG and IEG use the paper's hyper-parameters (p = 5, k = 20, tau = 0.5, lambda0 = 0.9,
  omega0 = 1/B) with a **linear ramp-up of p and k** (``rampup_steps``), as the digits demo does:
  over the whole run in the CPU configuration, over the first 10% in the paper configuration. The
  official code has no ramp-up.
* SGD momentum 0.9, weight decay 5e-4 on all parameters, lr 0.1, batch 100 (+ 100 probe).
* Test accuracy on the full 10k test split after every epoch; the table reports the **final**
  model (no model selection on the test split).
* EG never reads the noisy labels (all training data is unlabeled), and the trusted set, training
  subset, initialisation, data order and augmentation draws do not depend on the noise setting, so
  its run is the same under every setting: it is trained once per seed and reported in every row
  (``--eg-per-setting`` trains it under each setting anyway).

``--config cpu`` (the run recorded in docs/results.md): a stratified 5,000-image training subset
(500 per class, drawn after the trusted split), the full 10k test split,
``iegkit.models.SmallCNN(in_channels=3, width=16)``, 25 epochs of 50 steps (1,250 steps), one cosine
decay of the lr to 0 over the run for every method, no EMA (a 0.999 average spans most of such a
short run), the AutoAugment sub-policy drawn once per batch (``per_image_policy=False``: 3-5x
cheaper on CPU than the official per-image draw) and one torch thread. How it was sized
(``--time-steps 5``, median ms per step on the shared 2-core machine, one thread):

    ================  =====  =====  =====  =====  ======================
    SmallCNN width    plain  l2r    eg     ieg    one 10k test pass
    ================  =====  =====  =====  =====  ======================
    32                106    259    548    931    6.4 s
    16                 53    111    190    291    2.5 s
    ================  =====  =====  =====  =====  ======================

With 3 plain + 3 L2R + 1 EG + 3 IEG runs and a test pass per epoch, width 32 costs 4.8 min per
epoch of all runs (12 epochs in an hour), width 16 1.7 min (25 epochs: 43 min projected). Two
torch threads were 4-5x *slower* than one while other jobs shared the two cores (OpenMP threads
wait on each other), hence one thread. ResNet29(base_width=8) costs 12x SmallCNN-16 per step.

``--config paper`` (for a GPU; not run here): the full 49,900 noisy images, WRN-28-10
(``benchmarks/wrn.py``, the AutoAugment-repo variant of the official code), 200 epochs, SGDR
(first cycle one epoch, t_mul 1.5, m_mul 0.9) for every method, EMA 0.999 of the weights
(``iegkit.WeightEMA``, evaluated with the raw model's BN statistics as the official code),
per-image AutoAugment, the official look-ahead (fixed meta lr 0.1, IEG differentiating through the
pseudo labels). Besides the final (epoch 200) accuracy it reports the accuracy at the end of the
last SGDR cycle within 200 epochs (step 85,327 of 99,800, about epoch 171, lr at its minimum): the
point the paper reports, fixed by the schedule, not chosen on the test split.

``--config cpu10k`` (a CPU configuration that can tell the methods apart; issue "CPU CIFAR-10
configuration"): 10 trusted per class removed first (clean labels, the probe set), then a
stratified **clean validation split of 5,000 images** (clean labels, used only for the per-epoch
validation accuracy: every choice is made on it), then a stratified 10,000-image training subset,
the only labels that get noise; test: the full 10k split, reported only as the final model's
accuracy (its largest predicted class's share is logged per epoch as a collapse check, never used
to choose). ``SmallCNN(width=26, blocks=4)`` (widths 26-52-104-208, strides 1-2-2-2, 0.26M
parameters, the added ones at low resolution), 20 epochs of 78 steps, batch 128 + probe batch 100,
SGD lr 0.1 momentum 0.9 wd 5e-4, one cosine decay over the run for every method, one torch thread
per process. The strong view (per-image AutoAugment draw, crop, flip, cutout 16, on the raw images
in [-1, 1]) is made for all 10k training images once per epoch outside the step (1.4-1.8 s) and
passed with ``training.fit(views=...)``, so the step measures the method. EG/IEG ramp p and k over
the run (``recipes.build``); robust EG/IEG use their defaults; probe diagnostics every 10 steps. EG
and robust EG never read the noisy labels (tested), so they run once per seed (setting ``any``)
and appear in every column. Each (setting, method, seed) run is appended to ``--store``
(``benchmarks/results/cifar10_cpu10k.jsonl``, tracked in git, key ``setting|method|seed|config``, with the whole configuration:
a run of another configuration is never counted) as it finishes and skipped on restart; ``--shard
i/n`` runs a disjoint, cost-balanced part of the priority-ordered run list (two processes, one
thread each); ``--ablations`` adds the safeguard ablations and IEG-n with safeguards at uniform
0.8; ``--report-only`` writes the table, two PNGs in docs/figures/ (validation curves; collapse
metrics per epoch) and the section of docs/results.md; ``--dry-run`` is the smoke test
(tests/test_cifar_benchmark.py).

How it was sized. The model: the cheapest that has >= 0.25M parameters and lets plain reach 55%
at uniform 0.4, judged on the validation split (plain, seed 0; runs/cifar10_cpu10k_select.jsonl):

    ======================  =========  =========
    SmallCNN blocks=4       15 epochs  20 epochs
    ======================  =========  =========
    width 26 (0.26M)        54.8       57.2
    width 32 (0.39M)        54.8       56.8
    ======================  =========  =========

(final validation accuracy %; the test accuracies were 55.2 / 56.7 and 54.3 / 57.2). The cost,
``--time-steps 5`` (median ms per step, one thread; the shared 2-core machine, where other jobs
move these by up to 50%: two measurements of width 26 at different loads):

    ==================  =====  =====  =====  =====  =========  ==========  ===============
    SmallCNN blocks=4   plain  l2r    eg     ieg    robust_eg  robust_ieg  val + test pass
    ==================  =====  =====  =====  =====  =========  ==========  ===============
    width 26            259    560    1045   1620   1064       1817        12.5 s
    width 26            299    873    1474   2329   1865       2823        20.2 s
    width 32            300    933    1104   n/a*   1089       1761        18.7 s
    ==================  =====  =====  =====  =====  =========  ==========  ===============

(* 3843, a load spike.) One run of robust IEG is 1,560 steps: about 50-80 min with its evaluations;
the priority list (20 runs) about 8 h on two processes.

    .venv/bin/python -m benchmarks.noisy_cifar10 --config cpu10k --time-steps 5
    # two processes, in the background (the second with --shard 1/2 > runs/cifar10_cpu10k_1.log):
    nohup .venv/bin/python -m benchmarks.noisy_cifar10 --config cpu10k --shard 0/2 > runs/cifar10_cpu10k_0.log 2>&1 &
    .venv/bin/python -m benchmarks.noisy_cifar10 --config cpu10k --list-runs   # what is done
    .venv/bin/python -m benchmarks.noisy_cifar10 --config cpu10k --report-only   # -> docs/

    .venv/bin/python -m benchmarks.noisy_cifar10 --config cpu --time-steps 5   # measure first
    .venv/bin/python -m benchmarks.noisy_cifar10 --config cpu --write docs/results.md
    python -m benchmarks.noisy_cifar10 --config paper --device cuda --write docs/results.md

Runs are saved one by one to ``--results`` (JSON); ``--resume`` skips finished runs and
``--report-only`` rebuilds the table, figure and section from that file.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]

from benchmarks.results_io import RunStore, command, load_average, now, provenance, write_section
from benchmarks.results_io import machine as results_machine

from iegkit import WeightEMA, recipes, training
from iegkit.augment import strong_augment, weak_augment
from iegkit.data import NoisyDataset, ProbeSampler, split_trusted
from iegkit.functional import noise_rate_from_transition
from iegkit.functional.schedule import sgdr_restarts
from iegkit.noise import CIFAR10_ASYMMETRIC_MAP, asymmetric_noise, uniform_noise
from iegkit.parts import SGDRSchedule

DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-jpeg"
HEADING = "Noisy CIFAR-10 (benchmarks/noisy_cifar10.py)"
SETTINGS: tuple[tuple[str, float], ...] = (("uniform", 0.4), ("uniform", 0.8), ("asymmetric", 0.4))
METHODS: tuple[str, ...] = tuple(recipes.RECIPES)
NUM_CLASSES = 10
TRUSTED_PER_CLASS = 10


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    model: str  # small_cnn | small_cnn4 (SmallCNN blocks=4) | resnet29 | wrn28_10 | wrn28_2
    width: int  # SmallCNN width / ResNet29 base_width (ignored by the WRNs)
    train_subset: int | None  # None: all 49,900 noisy training images
    epochs: int
    batch_size: int
    lr: float
    schedule: str  # cosine (one decay to 0 over the run) | sgdr (first cycle one epoch)
    ema_decay: float | None
    per_image_policy: bool
    weak_pad: int
    rampup_fraction: float  # ramp p and k linearly over this fraction of the run
    official_lookahead: bool  # meta lr fixed at 0.1; IEG differentiates through the pseudo labels
    device: str
    threads: int  # 0: torch default
    # --config cpu10k only (the defaults keep the other configurations as they were):
    val_size: int = 0  # a clean validation split carved from the training images (0: none)
    probe_diagnostics_every: int | None = 1  # the pseudo labeler's probe_accuracy, every n steps
    precompute_strong: bool = False  # the strong view made once per epoch outside the step


CONFIGS = {
    "cpu": Config("cpu", "small_cnn", 16, 5000, 25, 100, 0.1, "cosine", None, False, 2, 1.0, False,
                  "cpu", 1),
    "paper": Config("paper", "wrn28_10", 160, None, 200, 100, 0.1, "sgdr", 0.999, True, 2, 0.1, True,
                    "cuda", 0),
    "cpu10k": Config("cpu10k", "small_cnn4", 26, 10_000, 20, 128, 0.1, "cosine", None, True, 2, 1.0,
                     False, "cpu", 1, val_size=5000, probe_diagnostics_every=10,
                     precompute_strong=True),
}

#: The paper's CIFAR-10 numbers (WRN-28-10, 10 trusted per class unless noted; mean +- std of 3
#: runs). Table 1 (uniform), Table 3 (asymmetric), Table 6 (EG: labels ignored, so one number).
PAPER = {
    ("uniform", 0.4): {"l2r": "86.9 ± 0.2 (1k trusted)", "ieg": "95.9 ± 0.2",
                       "ieg_rn29": "92.5 ± 0.5"},
    ("uniform", 0.8): {"l2r": "73.0 ± 0.8 (1k trusted; run by the IEG authors)", "ieg": "93.7 ± 0.5",
                       "ieg_rn29": "85.6 ± 1.1"},
    ("asymmetric", 0.4): {"ieg": "94.9 ± 0.1", "ieg_rn29": "90.2 ± 0.5"},
}
PAPER_EG = "92.4 ± 0.7 (WRN-28-2), 94.5 ± 0.3 (EG*, WRN-28-10)"


# --------------------------------------------------------------------------- data


@dataclasses.dataclass
class Split:
    train_images: Tensor  # uint8 (N, 3, 32, 32)
    train_clean: Tensor
    trusted_images: Tensor
    trusted_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    val_images: Tensor | None = None  # --config cpu10k: clean labels, used for nothing else
    val_labels: Tensor | None = None


def prepare_split(train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], subset: int | None,
                  seed: int) -> Split:
    """Trusted set (10 per class, by clean label) removed first, then a stratified subset of the
    rest; both depend on the seed only, not on the noise setting."""
    images, labels = train
    generator = torch.Generator().manual_seed(seed)
    trusted_idx, rest_idx = split_trusted(labels, TRUSTED_PER_CLASS, NUM_CLASSES, generator)
    if subset is not None and subset < rest_idx.numel():
        if subset % NUM_CLASSES:
            raise ValueError(f"--train-subset: expected a multiple of {NUM_CLASSES}, got {subset}")
        keep = []
        for c in range(NUM_CLASSES):
            members = rest_idx[labels[rest_idx] == c]
            keep.append(members[torch.randperm(members.numel(), generator=generator)[:subset // NUM_CLASSES]])
        rest_idx = torch.sort(torch.cat(keep)).values
    return Split(images[rest_idx], labels[rest_idx], images[trusted_idx], labels[trusted_idx],
                 test[0], test[1])


def noisy_labels(clean: Tensor, kind: str, rate: float, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(10_000 + seed)
    if kind == "uniform":
        return uniform_noise(clean, rate, NUM_CLASSES, generator, include_true_class=True)
    if kind == "asymmetric":
        return asymmetric_noise(clean, rate, CIFAR10_ASYMMETRIC_MAP, generator)
    raise ValueError(f"noise kind: expected 'uniform' or 'asymmetric', got {kind!r}")


def to_input(images: Tensor, device: torch.device) -> Tensor:
    """uint8 [0, 255] -> float [-1, 1] (the official input space) on ``device``."""
    return images.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)


# --------------------------------------------------------------------------- model and training


def build_model(cfg: Config) -> torch.nn.Module:
    if cfg.model == "small_cnn":
        from iegkit.models import SmallCNN

        return SmallCNN(in_channels=3, num_classes=NUM_CLASSES, width=cfg.width)
    if cfg.model == "small_cnn4":
        from iegkit.models import SmallCNN

        return SmallCNN(in_channels=3, num_classes=NUM_CLASSES, width=cfg.width, blocks=4)
    if cfg.model == "resnet29":
        from iegkit.models import ResNet29

        return ResNet29(num_classes=NUM_CLASSES, base_width=cfg.width)
    from benchmarks import wrn

    if cfg.model == "wrn28_10":
        return wrn.wrn28_10(NUM_CLASSES)
    if cfg.model == "wrn28_2":
        return wrn.wrn28_2(NUM_CLASSES)
    raise ValueError(f"model: unknown {cfg.model!r}")


def evaluate(model: torch.nn.Module, images: Tensor, labels: Tensor, device: torch.device,
             batch_size: int = 1000) -> float:
    return training.accuracy(model, images, labels, batch_size=batch_size,
                             transform=lambda batch: to_input(batch, device))


def make_pipeline(method: str, model, optimizer, cfg: Config, seed: int, total_steps: int,
                  extra: dict | None = None, strong=None):
    """``recipes.build`` with the configuration's options, each given to the recipes that take it
    (plain has no look-ahead, L2R no pseudo labels, only IEG relabels through them); ``extra``:
    more recipe options (a variant's), given the same way; ``strong``: the strong view [AutoAugment
    CIFAR-10, per image or per batch as the configuration says]."""
    options: dict = {"rampup_steps": max(1, round(cfg.rampup_fraction * total_steps))}
    options["probe_diagnostics_every"] = cfg.probe_diagnostics_every
    if cfg.official_lookahead:
        options.update(lookahead_lr=0.1, through_pseudo_labels=True)
    options.update(extra or {})
    accepted = recipes.SPECS[method].defaults
    if strong is None:
        strong = strong_augment("cifar10", value_range=(-1.0, 1.0),
                                per_image_policy=cfg.per_image_policy)
    return recipes.build(method, model, optimizer, total_steps=total_steps, strong_augment=strong,
                         seed=seed, **{k: v for k, v in options.items() if k in accepted})


def make_scheduler(cfg: Config, steps_per_epoch: int):
    """``training.fit``'s scheduler: SGDR (first cycle one epoch, t_mul 1.5, m_mul 0.9) for every
    method with ``schedule="sgdr"``; None (fit's cosine decay over the run) with "cosine"."""
    if cfg.schedule == "cosine":
        return None
    return lambda optimizer, _total: SGDRSchedule(optimizer, steps_per_epoch, t_mul=1.5, m_mul=0.9)


class RunLog:
    """``training.fit``'s callbacks for one run: the EMA update after each step; with SGDR, the
    test accuracy (and the mean loss since the epoch began) where a cycle ends inside an epoch,
    and ``cycle_end`` on the epoch entries where one ends with the epoch; per-epoch log lines when
    stderr is not a terminal (the progress bar's place)."""

    def __init__(self, cfg: Config, steps_per_epoch: int, accuracy, ema, desc: str) -> None:
        self.cfg, self.steps_per_epoch, self.accuracy, self.ema = cfg, steps_per_epoch, accuracy, ema
        self.desc = desc
        self.cycle_ends: set[int] = set()
        if cfg.schedule == "sgdr":  # completed-step counts after which the lr is at a cycle minimum
            self.cycle_ends = {math.ceil(s) for s in sgdr_restarts(steps_per_epoch, 1.5, n=40)}
        self.cycle_entries: list[dict] = []
        self.loss_sum, self.loss_count = 0.0, 0

    def on_step(self, step: int, idx: Tensor, out) -> None:
        if self.ema is not None:
            self.ema.update(step)
        if step % self.steps_per_epoch == 0:
            self.loss_sum, self.loss_count = 0.0, 0
        self.loss_sum += float(out.loss.detach())
        self.loss_count += 1
        done = step + 1
        if done in self.cycle_ends and done % self.steps_per_epoch:
            self.cycle_entries.append({"epoch": done / self.steps_per_epoch, "step": done,
                                       "cycle_end": True, "loss": self.loss_sum / self.loss_count,
                                       "test_accuracy": self.accuracy(None)["test_accuracy"]})

    def on_epoch(self, entry: dict) -> None:
        if entry["step"] in self.cycle_ends:
            entry["cycle_end"] = True
        if not sys.stderr.isatty():
            print(f"    {self.desc} epoch {entry['epoch']}/{self.cfg.epochs}: mean loss "
                  f"{entry['loss']:.3f}, test accuracy {100 * entry['test_accuracy']:.2f}%",
                  flush=True)

    def history(self, epochs: list[dict]) -> list[dict]:
        """The epoch entries and the mid-epoch cycle ends, in the order they happened."""
        return sorted(self.cycle_entries + epochs,
                      key=lambda h: (h["step"], isinstance(h["epoch"], int)))


def train_one(method: str, split: Split, labels: Tensor, cfg: Config, seed: int,
              device: torch.device, *, progress: bool = True, desc: str = "",
              max_steps: int | None = None) -> dict:
    """One run (``iegkit.training.fit``); returns {"history": [...], "final": acc, "seconds": ...}."""
    torch.manual_seed(seed)
    model = build_model(cfg).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=5e-4)
    per_epoch = training.steps_per_epoch(split.train_images.shape[0], cfg.batch_size)
    pipeline = make_pipeline(method, model, optimizer, cfg, seed, cfg.epochs * per_epoch)
    ema = WeightEMA(model, cfg.ema_decay) if cfg.ema_decay else None

    def accuracy(_model=None) -> dict[str, float]:
        if ema is None:
            return {"test_accuracy": evaluate(model, split.test_images, split.test_labels, device)}
        with ema.average_parameters():
            return {"test_accuracy": evaluate(model, split.test_images, split.test_labels, device)}

    weak = weak_augment(pad=cfg.weak_pad, value_range=(-1.0, 1.0))

    def weak_view(images: Tensor, generator=None) -> Tensor:  # uint8 on the device -> [-1, 1]
        return weak(to_input(images, device), generator=generator)

    # uint8 images on the device, converted per batch by the weak view
    data = NoisyDataset(split.train_images.to(device), labels.to(device), split.train_clean,
                        split.trusted_images.to(device), split.trusted_labels.to(device),
                        split.test_images, split.test_labels, NUM_CLASSES)
    log = RunLog(cfg, per_epoch, accuracy, ema, desc)
    result = training.fit(pipeline, model, optimizer, data, epochs=cfg.epochs,
                          batch_size=cfg.batch_size, weak_augment=weak_view, seed=seed,
                          scheduler=make_scheduler(cfg, per_epoch), evaluate=accuracy,
                          on_step=log.on_step, on_epoch=log.on_epoch, max_steps=max_steps,
                          progress=progress, desc=desc)
    history = log.history(result.history)
    out = {"history": history, "final": history[-1]["test_accuracy"], "seconds": result.seconds,
           "steps": result.steps}
    if ema is not None:
        out["final_raw"] = evaluate(model, split.test_images, split.test_labels, device)
    ends = [h for h in history if h.get("cycle_end")]
    if ends:
        out["last_cycle_end"] = ends[-1]
    return out


# --------------------------------------------------------------------------- timing


def time_steps(cfg: Config, split: Split, seed: int, device: torch.device, steps: int,
               methods: Sequence[str], settings: Sequence[tuple[str, float]],
               eg_per_setting: bool, label_free: Sequence[str] = ("eg",)) -> None:
    """Median seconds per training step of each method (after 2 warm-up steps), the cost of one
    test evaluation, and the projected time of the full run with the configured epochs (steps,
    the strong views made outside the step, the evaluation after each epoch)."""
    labels = noisy_labels(split.train_clean, "uniform", 0.4, seed)
    n = split.train_images.shape[0]
    steps_per_epoch = training.steps_per_epoch(n, cfg.batch_size)
    per_step, strong_per_step = {}, {}
    for method in methods:
        torch.manual_seed(seed)
        model = build_model(cfg).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=5e-4)
        pipeline = make_pipeline(method, model, optimizer, cfg, seed, cfg.epochs * steps_per_epoch)
        weak = weak_augment(pad=cfg.weak_pad, value_range=(-1.0, 1.0))
        gen = torch.Generator().manual_seed(0)
        probe = ProbeSampler(to_input(split.trusted_images, device), split.trusted_labels.to(device),
                             cfg.batch_size, seed=seed)
        times, precompute = [], []
        strong = strong_augment("cifar10", value_range=(-1.0, 1.0),
                                per_image_policy=cfg.per_image_policy)
        for step in range(steps + 2):
            idx = torch.randint(n, (cfg.batch_size,), generator=gen)
            xp, yp = next(probe)
            views = None
            if cfg.precompute_strong and "strong" in pipeline.plan.views:  # outside the timer
                t0 = time.perf_counter()
                views = {"strong": strong(to_input(split.train_images[idx], device), generator=gen)}
                if device.type == "cuda":
                    torch.cuda.synchronize()
                precompute.append(time.perf_counter() - t0)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = pipeline(weak(to_input(split.train_images[idx], device), generator=gen),
                           labels[idx].to(device), weak(xp, generator=gen), yp, step=step,
                           views=views)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        per_step[method] = statistics.median(times[2:])
        strong_per_step[method] = statistics.median(precompute[2:]) if precompute else 0.0
        print(f"{method:10s} {per_step[method] * 1000:8.1f} ms/step  (min {min(times[2:]) * 1000:.1f})"
              + (f"; strong view precomputed outside the step: {strong_per_step[method] * 1000:.1f}"
                 f" ms per batch" if precompute else ""), flush=True)
    t0 = time.perf_counter()
    evaluate(model, split.test_images, split.test_labels, device)
    if split.val_images is not None:
        evaluate(model, split.val_images, split.val_labels, device)
    # each epoch evaluates the trained weights and their EMA (EVAL_EMA_DECAY): two passes
    eval_s = 2 * (time.perf_counter() - t0)
    print(f"evaluation ({split.test_images.shape[0]} test"
          + (f" + {split.val_images.shape[0]} validation" if split.val_images is not None else "")
          + f" images): {eval_s:.1f} s", flush=True)
    total = 0.0
    for method in methods:
        runs = len(settings) if (method not in label_free or eg_per_setting) else 1
        per_run = cfg.epochs * (steps_per_epoch * (per_step[method] + strong_per_step[method])
                                + eval_s)
        total += runs * per_run
        print(f"{method:10s} {runs} run(s) x {per_run / 60:.1f} min", flush=True)
    per_epoch_all = total / cfg.epochs
    print(f"projected total for {cfg.epochs} epochs, 1 seed: {total / 60:.1f} min "
          f"({per_epoch_all / 60:.2f} min per epoch of every run)", flush=True)
    # read by benchmarks/gpu.sh --cifar-full to choose the epochs that fit its time
    print(f"seconds per epoch of every run: {per_epoch_all:.3f}", flush=True)


# --------------------------------------------------------------------------- report


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    gpu = (f", GPU {torch.cuda.get_device_name(device)}"
           if device.type == "cuda" and torch.cuda.is_available() else ", no GPU used")
    try:
        load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        load = "n/a"
    return (f"{os.cpu_count()} CPU cores ({cpu}, shared; load average at the end {load}), "
            f"torch {torch.__version__} (torch threads: {torch.get_num_threads()}), "
            f"Python {platform.python_version()}{gpu}")


def setting_name(kind: str, rate: float) -> str:
    return f"{kind} {rate:g}"


def run_key(kind: str, rate: float, method: str, seed: int) -> str:
    return f"{kind}:{rate:g}:{method}:{seed}"


def fmt(values: Sequence[float]) -> str:
    mean = 100 * statistics.mean(values)
    if len(values) > 1:
        return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"
    return f"{mean:.1f}"


def build_tables(store: dict, settings, methods, seeds: int) -> tuple[str, str]:
    runs, noise = store["runs"], store.get("noise", {})
    paper_cfg = store["config"]["schedule"] == "sgdr"
    header = "| noise | wrong labels | " + " | ".join(methods) + " |"
    lines = [header, "|" + " --- |" * (len(methods) + 2)]
    extra = []
    for kind, rate in settings:
        cells, best = [], None
        means = {}
        for method in methods:
            accs = [runs[run_key(kind, rate, method, s)]["final"] for s in range(seeds)
                    if run_key(kind, rate, method, s) in runs]
            means[method] = statistics.mean(accs) if accs else None
            cells.append(fmt(accs) if accs else "n/a")
        best = max((m for m in means.values() if m is not None), default=None)
        cells = [f"**{c}**" if means[m] is not None and means[m] == best else c
                 for m, c in zip(methods, cells)]
        wrong = noise.get(f"{kind}:{rate:g}")
        lines.append(f"| {setting_name(kind, rate)} | "
                     f"{'n/a' if wrong is None else f'{100 * wrong:.1f}%'} | " + " | ".join(cells) + " |")
        if paper_cfg:
            row = []
            for method in methods:
                ends = [runs[run_key(kind, rate, method, s)].get("last_cycle_end") for s in range(seeds)
                        if run_key(kind, rate, method, s) in runs]
                ends = [e for e in ends if e]
                row.append(f"{fmt([e['test_accuracy'] for e in ends])} (ep {ends[0]['epoch']:.1f})"
                           if ends else "n/a")
            extra.append(f"| {setting_name(kind, rate)} | " + " | ".join(row) + " |")
    table = "\n".join(lines)
    if extra:
        table += ("\n\nAt the end of the last SGDR cycle within the epoch budget (lr at its minimum; "
                  "the paper's reporting point, fixed by the schedule):\n\n"
                  "| noise | " + " | ".join(methods) + " |\n|" + " --- |" * (len(methods) + 1) + "\n"
                  + "\n".join(extra))
    paper = ["| noise | plain | L2R | EG | IEG (WRN-28-10) | IEG (ResNet-29) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for kind, rate in settings:
        ref = PAPER.get((kind, rate), {})
        paper.append(f"| {setting_name(kind, rate)} | not reported | {ref.get('l2r', 'not reported')} "
                     f"| {PAPER_EG} | {ref.get('ieg', 'not reported')} | "
                     f"{ref.get('ieg_rn29', 'not reported')} |")
    return table, "\n".join(paper)


def plot_curves(store: dict, settings, methods, seeds: int, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 3.4), sharey=True,
                             squeeze=False)
    for ax, (kind, rate) in zip(axes[0], settings):
        for method in methods:
            hists = [store["runs"][run_key(kind, rate, method, s)]["history"] for s in range(seeds)
                     if run_key(kind, rate, method, s) in store["runs"]]
            if not hists:
                continue
            hists = [[h for h in hist if not (h.get("cycle_end") and h["epoch"] % 1)] for hist in hists]
            length = min(len(h) for h in hists)
            xs = [hists[0][i]["epoch"] for i in range(length)]
            ys = [100 * statistics.mean(h[i]["test_accuracy"] for h in hists) for i in range(length)]
            ax.plot(xs, ys, label=method)
        ax.set_title(f"{setting_name(kind, rate)} noise")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


INTRO = """\
Real images: CIFAR-10 from the JPEG archives in `../shared/data/cifar10-jpeg` (lossy re-encoding,
so absolute accuracies run slightly below published CIFAR-10 figures). 10 trusted images per class
(100) are drawn by clean label before noise and removed from training; they are the probe set.
Noise: uniform 0.4 / 0.8 with IEG semantics (the true class may be redrawn, so 0.8 flips about 72%)
and asymmetric 0.4 (truck->automobile, bird->airplane, cat<->dog, deer->horse). Inputs in [-1, 1];
weak view `weak_augment(pad=2)` for every method; EG/IEG add `strong_augment("cifar10")` on top of
it, with the paper's p = 5, k = 20 **linearly ramped up** (`rampup_steps`, as the digits demo; the
official code has none). EG never reads the noisy labels, so it is trained once per seed and its
result appears in every row. Accuracy: the final model on the full 10k test split (no model
selection on the test split). The protocol and every choice are in the script's docstring."""


def write_results(path: Path, config_name: str, body: str) -> None:
    """Replace this script's subsection ``### `--config NAME``` inside its ``## HEADING`` section of
    ``path`` (the section ends at the next ``## `` heading); other sections and the other config's
    subsection are kept. Creates the file with a ``# Results`` title if absent."""
    text = path.read_text() if path.exists() else "# Results\n"
    pattern = re.compile(rf"^## {re.escape(HEADING)}[ \t]*\n.*?(?=^## |\Z)", re.S | re.M)
    match = pattern.search(text)
    subsections: dict[str, str] = {}
    if match:
        for sub in re.finditer(r"^### `--config (\w+)`[ \t]*\n(.*?)(?=^### |\Z)", match.group(0),
                               re.S | re.M):
            subsections[sub.group(1)] = sub.group(2).strip()
    subsections[config_name] = body.strip()
    order = [c for c in CONFIGS if c in subsections] + [c for c in subsections if c not in CONFIGS]
    section = f"## {HEADING}\n\n{INTRO}\n\n" + "\n\n".join(
        f"### `--config {c}`\n\n{subsections[c]}" for c in order) + "\n\n"
    if match:
        text = text[:match.start()] + section + text[match.end():]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")


def report(store: dict, args, settings, methods, device: torch.device) -> str:
    cfg = store["config"]
    seeds = store["seeds"]
    table, paper = build_tables(store, settings, methods, seeds)
    model_desc = {"small_cnn": f"SmallCNN(in_channels=3, width={cfg['width']})",
                  "resnet29": f"ResNet29(base_width={cfg['width']})",
                  "wrn28_10": "WRN-28-10 (benchmarks/wrn.py)", "wrn28_2": "WRN-28-2"}[cfg["model"]]
    n_train = store.get("n_train", "?")
    seconds = sum(r.get("seconds", 0.0) for r in store["runs"].values() if not r.get("shared_from"))
    if "wall_seconds" in store:
        wall = f"{store['wall_seconds'] / 60:.0f} min in all"
    else:  # from the minute-resolution start and end stamps
        stamps = [datetime.datetime.strptime(store[k], "%Y-%m-%d %H:%M UTC")
                  for k in ("date", "finished") if k in store]
        wall = f"about {(stamps[1] - stamps[0]).seconds // 60} min in all" if len(stamps) == 2 else "n/a"
    figure = Path(args.figure)
    base = Path(args.write).resolve().parent if args.write else REPO / "docs"
    figure_rel = os.path.relpath(figure.resolve(), base)
    plot_curves(store, settings, methods, seeds,
                figure, f"noisy CIFAR-10, --config {cfg['name']}: {model_desc}, {n_train} noisy "
                        f"training images, {cfg['epochs']} epochs")
    details = (
        f"{model_desc}; {n_train} noisy training images"
        + (" (stratified subset of the 49,900)" if cfg["train_subset"] else "")
        + f"; {cfg['epochs']} epochs of {n_train // cfg['batch_size']} steps, batch {cfg['batch_size']} "
        f"+ {cfg['batch_size']} probe; SGD lr {cfg['lr']} momentum 0.9 wd 5e-4; "
        + ("one cosine decay to 0 over the run" if cfg["schedule"] == "cosine"
           else "SGDR (first cycle one epoch, t_mul 1.5, m_mul 0.9)")
        + (f"; EMA {cfg['ema_decay']} (evaluated)" if cfg["ema_decay"] else "; no EMA")
        + f"; AutoAugment sub-policy drawn {'per image' if cfg['per_image_policy'] else 'per batch'}"
        + f"; p, k ramped over the first {100 * cfg['rampup_fraction']:.0f}% of the steps"
        + ("; official look-ahead (meta lr 0.1, IEG through the pseudo labels)"
           if cfg["official_lookahead"] else "; look-ahead at the current lr (library default)")
        + f". {seeds} seed(s).")
    body = (
        f"Command: `{store['command']}`  \n"
        f"Date: {store['date']} (finished {store.get('finished', 'n/a')}); wall time {wall} "
        f"({seconds / 60:.0f} min in the training runs, evaluations included).  \n"
        f"Machine: {store.get('machine') or machine(device)}\n\n"
        f"{details}\n\n"
        f"Final test accuracy (%){' , mean ± std over seeds' if seeds > 1 else ''}; "
        f"wrong labels: realised fraction of the noisy training labels; bold: best per row.\n\n"
        f"{table}\n\n"
        f"For comparison, the paper (WRN-28-10, full 50k, 10 trusted per class unless noted, "
        f"mean ± std of 3 runs; Tables 1, 3 and 6; standard training on clean labels: 96.1 "
        f"WRN-28-10 / 92.7 ResNet-29):\n\n{paper}\n\n"
        f"Test accuracy after every epoch: ![noisy CIFAR-10 curves]({figure_rel})\n")
    if args.notes:
        body += f"\n{Path(args.notes).read_text().strip()}\n"
    return body


# --------------------------------------------------------------------------- --config cpu10k

CPU10K_HEADING = "Noisy CIFAR-10, --config cpu10k (benchmarks/noisy_cifar10.py)"
# tracked in git, so that the table grows over sessions (a fresh checkout keeps the finished runs)
CPU10K_STORE = REPO / "benchmarks" / "results" / "cifar10_cpu10k.jsonl"
#: The setting of a run that never reads the noisy labels (EG, robust EG): one run per seed,
#: reported in every row (the data split, initialisation and draws do not depend on the setting).
ANY_SETTING = "any"
#: robust_ieg's meta_shrinkage candidates; the default's runs are stored as "robust_ieg".
SHRINKAGE_CANDIDATES = (0.0, 0.25, 0.5, 0.75, 1.0)


def selection_method(variant: str) -> str:
    """The stored method name of a robust_ieg candidate: "robust_ieg" when its options are the
    recipe's defaults (the runs of the chosen candidate are stored under the method's name)."""
    recipe, options = VARIANTS[variant]
    if variant in HISTORICAL_VARIANTS:
        return variant
    defaults = recipes.SPECS["robust_ieg"].defaults
    if recipe == "robust_ieg" and all(defaults.get(k) == v for k, v in options.items()):
        return "robust_ieg"
    return variant


#: a recipe option value replaced, per run, by the measured accuracy of the run's noisy labels
MEASURED_LABEL_ACCURACY = "measured"
#: a recipe option value replaced, per run, by GLC's C_hat of the final plain model of the same
#: setting and seed (its first stage; stored with every plain run as "transition")
PLAIN_TRANSITION = "plain transition"  # as "noise_rate": that C_hat's noise_rate_from_transition
#: a recipe option value replaced by the run's steps per epoch
STEPS_PER_EPOCH = "steps per epoch"

#: name -> (recipe, recipe options). The six methods, the safeguard ablations of robust IEG and
#: IEG-n of Table 7 with the safeguards (IEG-5 is robust_ieg itself).
VARIANTS: dict[str, tuple[str, dict]] = {
    **{m: (m, {}) for m in METHODS},
    "robust_ieg/no_teacher": ("robust_ieg", {"teacher_decay": None}),
    "robust_ieg/no_alignment": ("robust_ieg", {"alignment_momentum": None}),
    "robust_ieg/mask_0.95": ("robust_ieg", {"confidence_threshold": 0.95}),
    **{f"robust_ieg-{n}": ("robust_ieg", {"components": recipes.TABLE7[n]})
       for n in recipes.TABLE7 if n != 5},
    # candidates for robust_ieg's meta_shrinkage, selected on the validation split (--variants)
    # (measured before the label posterior was a default: it stays off in them)
    **{f"robust_ieg/shrink_{b:g}": ("robust_ieg", {"meta_shrinkage": b, "label_posterior": False})
       for b in SHRINKAGE_CANDIDATES},
    # candidate safeguard: pseudo labels as the posterior given the noisy label (--variants)
    "robust_ieg/posterior": ("robust_ieg", {"label_posterior": True}),
    # the stored run of NoisyLabelPosterior's first estimator (commit ac36477: 50 EM steps from
    # 1/2, the first batch set r); re-running it runs the current part
    "robust_ieg/posterior_v1": ("robust_ieg", {"label_posterior": True}),
    "robust_ieg/posterior_shrink_1": ("robust_ieg", {"label_posterior": True,
                                                     "meta_shrinkage": 1.0}),
    # candidate: weaker unlabeled and consistency terms (p 1, k 5 instead of 5, 20)
    "robust_ieg/p1_k5": ("robust_ieg", {"unlabeled_weight": 1.0, "consistency_weight": 5.0,
                                        "label_posterior": False}),
    # robust_ieg without its label posterior (the defaults before it; the safeguard's ablation)
    "robust_ieg/no_posterior": ("robust_ieg", {"label_posterior": False}),
    # diagnostic, not a candidate default (it reads the noise rate of the training labels): the
    # posterior at the true accuracy of the given labels instead of its running estimate, which
    # overshoots as the teacher fits the labels (0.96 against 0.64 at uniform 0.4)
    "robust_ieg/known_r": ("robust_ieg", {"label_accuracy": MEASURED_LABEL_ACCURACY}),
    # robust_eg before its lr warm-up was a default (its stored run, re-keyed; the warm-up's
    # ablation)
    "robust_eg/no_warmup": ("robust_eg", {"warmup_fraction": 0.0}),
    # diagnostic of robust_eg's first epoch (with --max-steps 78): the trusted images alone
    "robust_eg/no_warmup_no_unlabeled": ("robust_eg", {"warmup_fraction": 0.0,
                                                       "unlabeled_weight": 0.0,
                                                       "consistency_weight": 0.0}),
    # baselines of benchmarks/baselines.py (docs/results.md), for --variants and benchmarks/gpu.sh:
    # plain+, GLC's second stage, small-loss selection (each after the plain run of the same seed)
    "plain_plus": ("plain_plus", {}),
    "glc": ("glc", {"transition": PLAIN_TRANSITION}),
    "small_loss": ("small_loss", {"noise_rate": PLAIN_TRANSITION, "steps_per_epoch": STEPS_PER_EPOCH}),
    # the recommended composition: robust IEG's label posterior through GLC's C_hat
    "robust_ieg_glc": ("robust_ieg", {"label_transition": PLAIN_TRANSITION}),
}
#: the runs of the recipes that never read the noisy labels (every variant of EG and robust EG)
LABEL_FREE = frozenset(name for name, (recipe, _) in VARIANTS.items()
                       if recipe in ("eg", "robust_eg"))
#: stored runs of earlier code under the same options: never the defaults' runs
HISTORICAL_VARIANTS = frozenset({"robust_ieg/posterior_v1"})
#: robust_ieg's candidate defaults, compared on the validation split (the selection table).
SELECTION_CANDIDATES = (*(f"robust_ieg/shrink_{b:g}" for b in SHRINKAGE_CANDIDATES),
                        "robust_ieg/no_posterior", "robust_ieg/posterior_v1", "robust_ieg/posterior",
                        "robust_ieg/posterior_shrink_1",
                        "robust_ieg/p1_k5")
SAFEGUARD_ABLATIONS = ("robust_ieg/no_teacher", "robust_ieg/no_alignment", "robust_ieg/no_posterior",
                       "robust_ieg/mask_0.95")
TABLE7_VARIANTS = tuple(f"robust_ieg-{n}" for n in recipes.TABLE7 if n != 5)
#: ms per training step, measured with --time-steps on the shared 2-core machine (1 thread): only
#: used to balance --shard (an estimate of each run's cost), never reported.
STEP_MS = {"plain": 280.0, "l2r": 715.0, "eg": 1260.0, "ieg": 1975.0, "robust_eg": 1465.0,
           "robust_ieg": 2320.0, "plain_plus": 850.0, "glc": 330.0, "small_loss": 280.0}
# the trained weights' evaluation (the evaluation EMA doubles it; kept, so that --shard assigns
# the runs as before)
EVAL_S_PER_EPOCH = 16.0
#: decay of the weight average evaluated beside every cpu10k run (training never reads it)
EVAL_EMA_DECAY = 0.99


def setting_key(kind: str, rate: float) -> str:
    return f"{kind}:{rate:g}"


def config_label(cfg: Config, dry_run: bool = False) -> str:
    """"cpu10k", plus every field overridden on the command line (part of each run's key, so runs
    of another configuration are never mixed into the table)."""
    base = dataclasses.asdict(CONFIGS["cpu10k"])
    diff = [f"{k}={v}" for k, v in dataclasses.asdict(cfg).items() if base[k] != v and k != "name"]
    return ",".join(["cpu10k", *diff, *(["dry_run"] if dry_run else [])])


@dataclasses.dataclass(frozen=True)
class Cpu10kRun:
    setting: str  # "uniform:0.8", or ANY_SETTING for the label-free methods
    method: str  # a key of VARIANTS
    seed: int

    def key(self, label: str) -> str:
        return f"{self.setting}|{self.method}|{self.seed}|{label}"


def cpu10k_runs(settings: Sequence[tuple[str, float]], methods: Sequence[str], seeds: int,
                ablations: str = "none", variants: Sequence[str] = ()) -> list[Cpu10kRun]:
    """Every run, by priority: (uniform 0.8, 0.4, asymmetric 0.4: plain s0, robust_ieg s0), then
    ieg s0 and robust_eg s0, then l2r and eg, then seeds 1.. of plain and robust_ieg; then, with
    ``ablations`` (safeguards | table7 | all), the safeguard ablations and IEG-1..8 with
    safeguards at uniform 0.8 (seed 0). Label-free methods run once per seed (setting "any")."""
    preferred = [("uniform", 0.8), ("uniform", 0.4), ("asymmetric", 0.4)]
    order = [s for s in preferred if s in settings] + [s for s in settings if s not in preferred]
    runs: list[Cpu10kRun] = []

    def add(setting, method, seed, *, variant=False):
        if not variant and method not in methods:
            return
        run = Cpu10kRun(ANY_SETTING if method in LABEL_FREE else setting_key(*setting), method, seed)
        if run not in runs:
            runs.append(run)

    for pair in (("plain", "robust_ieg"), ("ieg", "robust_eg"), ("l2r", "eg")):
        for setting in order:
            for method in pair:
                add(setting, method, 0)
    for seed in range(1, seeds):
        for setting in order:
            add(setting, "plain", seed)
            add(setting, "robust_ieg", seed)
    if order and ablations != "none":
        where = ("uniform", 0.8) if ("uniform", 0.8) in order else order[0]
        names = ((SAFEGUARD_ABLATIONS if ablations in ("safeguards", "all") else ())
                 + (TABLE7_VARIANTS if ablations in ("table7", "all") else ()))
        for name in names:
            add(where, name, 0, variant=True)
    for name in variants:
        for setting in order:
            add(setting, name, 0, variant=True)
    return runs


def run_cost(run: Cpu10kRun, cfg: Config) -> float:
    """Estimated seconds of a run (for --shard)."""
    steps = cfg.epochs * training.steps_per_epoch(cfg.train_subset or 49_900, cfg.batch_size)
    return steps * STEP_MS[VARIANTS[run.method][0]] / 1000 + cfg.epochs * EVAL_S_PER_EPOCH


def assign_shards(runs: Sequence[Cpu10kRun], shards: int, cfg: Config) -> list[int]:
    """Each run, in priority order, to the shard with the least estimated work so far: disjoint,
    balanced, and the same for every invocation with the same run list."""
    load = [0.0] * shards
    out = []
    for run in runs:
        shard = min(range(shards), key=lambda i: load[i])
        out.append(shard)
        load[shard] += run_cost(run, cfg)
    return out


class Store(RunStore):
    """``results_io.RunStore``, safe for two processes appending to one file: each record goes in
    one ``write`` to an O_APPEND descriptor, a line cut by a kill is skipped when reading, and
    ``reload()`` sees what the other process added."""

    def __init__(self, path: str | Path) -> None:
        self._json = json
        self.path = Path(path)
        self.runs: dict[str, dict] = {}
        self.reload()

    def done(self, key: str, cfg: Config) -> bool:
        """Whether the run is stored, made with exactly this configuration (a record of the same
        key made before a default of the configuration changed does not count)."""
        record = self.runs.get(key)
        return record is not None and record.get("cfg") == dataclasses.asdict(cfg)

    def reload(self) -> None:
        if not self.path.exists():
            return
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by a kill
                continue
            if isinstance(record, dict) and "key" in record:
                self.runs[record["key"]] = record

    def add(self, key: str, record: dict) -> None:
        record = {"key": key, **record}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = (json.dumps(record) + "\n").encode()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # after a line cut by a kill
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        self.runs[key] = record


def _take_stratified(pool: Tensor, labels: Tensor, total: int | None,
                     generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(taken, rest): ``total / 10`` random indices of each class from ``pool`` (None: all)."""
    if total is None:
        return pool, pool[:0]
    if total % NUM_CLASSES:
        raise ValueError(f"expected a multiple of {NUM_CLASSES} images, got {total}")
    taken = []
    for c in range(NUM_CLASSES):
        members = pool[labels[pool] == c]
        if members.numel() < total // NUM_CLASSES:
            raise ValueError(f"class {c}: {members.numel()} images left, {total // NUM_CLASSES} needed")
        taken.append(members[torch.randperm(members.numel(), generator=generator)[:total // NUM_CLASSES]])
    taken = torch.sort(torch.cat(taken)).values
    return taken, pool[~torch.isin(pool, taken)]


def prepare_cpu10k_split(train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], cfg: Config,
                         seed: int) -> Split:
    """10 trusted per class removed first (clean labels: the probe set), then a stratified clean
    validation split of ``cfg.val_size`` images (clean labels, used only for the per-epoch
    validation accuracy), then a stratified ``cfg.train_subset``-image training subset from the
    rest (the only images whose labels get noise). Depends on the seed only, not on the setting."""
    images, labels = train
    generator = torch.Generator().manual_seed(seed)
    trusted_idx, rest = split_trusted(labels, TRUSTED_PER_CLASS, NUM_CLASSES, generator)
    val_idx, rest = _take_stratified(rest, labels, cfg.val_size, generator)
    train_idx, _ = _take_stratified(rest, labels, cfg.train_subset, generator)
    return Split(images[train_idx], labels[train_idx], images[trusted_idx], labels[trusted_idx],
                 test[0], test[1], images[val_idx], labels[val_idx])


def load_cifar10_head(data_dir: Path, split: str, per_class: int) -> tuple[Tensor, Tensor]:
    """The first ``per_class`` images of each class straight from ``<split>.tar.gz`` (about 1 s; no
    cache written): the data of --dry-run."""
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    from iegkit.datasets import CIFAR10_CLASSES

    images, labels = [], []
    with tarfile.open(data_dir / f"{split}.tar.gz", "r|gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if (member.isfile() and len(parts) == 3 and parts[1] in CIFAR10_CLASSES
                    and parts[2].endswith(".jpg") and int(parts[2][:-4]) < per_class):
                with Image.open(io.BytesIO(tar.extractfile(member).read())) as image:
                    images.append(torch.from_numpy(np.asarray(image.convert("RGB")).copy()))
                labels.append(CIFAR10_CLASSES.index(parts[1]))
    return torch.stack(images).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


@torch.no_grad()
def predict(model: torch.nn.Module, images: Tensor, device: torch.device,
            batch_size: int = 1000) -> Tensor:
    """Predicted classes in eval mode (the training mode is restored)."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(to_input(images[i:i + batch_size], device)).argmax(-1).cpu()
                     for i in range(0, images.shape[0], batch_size)])
    model.train(was_training)
    return out


def top_share(predictions: Tensor) -> float:
    """The share of the largest predicted class (1/C: balanced; 1: collapsed)."""
    return float(torch.bincount(predictions, minlength=NUM_CLASSES).max()) / max(1, predictions.numel())


class StrongViews:
    """``training.fit``'s ``views`` hook: the strong view of every training image, made once per
    epoch outside the step (per-image AutoAugment draw on the raw images in [-1, 1]; own generator,
    seeded by the run's seed and the epoch), served by dataset index."""

    def __init__(self, images: Tensor, augment, seed: int, steps_per_epoch: int,
                 device: torch.device, chunk: int = 1000) -> None:
        self.images, self.augment, self.seed = images, augment, seed
        self.steps_per_epoch, self.device, self.chunk = steps_per_epoch, device, chunk
        self.epoch: int | None = None
        self.cache: Tensor | None = None
        self.seconds: list[float] = []

    def refresh(self, epoch: int) -> None:
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(1_000_003 * (self.seed + 1) + epoch)
        self.cache = torch.cat([self.augment(to_input(self.images[i:i + self.chunk], self.device),
                                             generator=generator)
                                for i in range(0, self.images.shape[0], self.chunk)])
        self.epoch = epoch
        self.seconds.append(time.perf_counter() - started)

    def __call__(self, step: int, indices: Tensor) -> dict[str, Tensor]:
        epoch = step // self.steps_per_epoch
        if epoch != self.epoch:
            self.refresh(epoch)
        return {"strong": self.cache[indices.to(self.cache.device)]}



def resolved_options(variant: str, options: dict, plain_transition, per_epoch: int) -> dict:
    """The markers in a variant's options replaced by their values for this run: GLC's C_hat of the
    plain run of the same setting and seed (its first stage), its noise rate, the steps per epoch."""
    out = dict(options)
    for key, value in options.items():
        if value == PLAIN_TRANSITION:
            if plain_transition is None:
                raise RuntimeError(f"{variant}: needs the plain run of the same setting and seed "
                                   "first (GLC's first stage)")
            transition = torch.tensor(plain_transition, dtype=torch.float64)
            out[key] = (float(noise_rate_from_transition(transition)) if key == "noise_rate"
                        else transition)
        elif value == STEPS_PER_EPOCH:
            out[key] = per_epoch
    return out


def train_cpu10k(run: Cpu10kRun, split: Split, labels: Tensor, cfg: Config, device: torch.device,
                 *, max_steps: int | None = None, progress: bool = False, desc: str = "",
                 checkpoint: Path | None = None, plain_transition: list | None = None) -> dict:
    """One run with ``training.fit``: the record stored for it (per-epoch history included).

    ``checkpoint``: written after every epoch and resumed from when present, so that a run longer
    than one session (robust IEG: about two hours on two shared cores) continues where the last
    session stopped; deleted once the run is stored."""
    recipe, variant_options = VARIANTS[run.method]
    if variant_options.get("label_accuracy") == MEASURED_LABEL_ACCURACY:
        variant_options = {**variant_options,
                           "label_accuracy": float((labels == split.train_clean).float().mean())}
    per_epoch = training.steps_per_epoch(split.train_images.shape[0], cfg.batch_size)
    variant_options = resolved_options(run.method, variant_options, plain_transition, per_epoch)
    torch.manual_seed(run.seed)
    model = build_model(cfg).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=5e-4)
    extra = dict(variant_options)
    with_aa = "AA" in extra.get("components", recipes.COMPONENTS)
    strong = strong_augment("cifar10" if with_aa else None, value_range=(-1.0, 1.0),
                            per_image_policy=cfg.per_image_policy)
    if not with_aa:
        extra["plain_strong_augment"] = strong
    pipeline = make_pipeline(recipe, model, optimizer, cfg, run.seed, cfg.epochs * per_epoch,
                             extra=extra, strong=strong)
    views = (StrongViews(split.train_images, strong, run.seed, per_epoch, device)
             if cfg.precompute_strong and "strong" in pipeline.plan.views else None)
    weak = weak_augment(pad=cfg.weak_pad, value_range=(-1.0, 1.0))

    def weak_view(images: Tensor, generator=None) -> Tensor:  # uint8 on the device -> [-1, 1]
        return weak(to_input(images, device), generator=generator)

    data = NoisyDataset(split.train_images.to(device), labels.to(device), split.train_clean,
                        split.trusted_images.to(device), split.trusted_labels.to(device),
                        split.test_images, split.test_labels, NUM_CLASSES)
    eval_seconds: list[float] = []
    final: dict[str, float] = {}
    # evaluated beside the trained weights, never trained on: the official code reports an EMA of
    # the weights (0.999, which would span most of this run; 0.99 spans about one epoch, as
    # robust IEG's teacher, which is exactly this average of the same weights)
    eval_ema = WeightEMA(model, EVAL_EMA_DECAY, name="eval_ema")
    resume = max_steps is None and checkpoint is not None and checkpoint.exists()
    ema_state = {"eval_ema": eval_ema}
    ema_since_epoch = 0
    if resume:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if "eval_ema" not in saved["extra"]:  # written before the EMA: start at the resumed weights
            ema_state, ema_since_epoch = {}, int(saved["extra"]["epoch"])
            eval_ema.load_state_dict({"decay": EVAL_EMA_DECAY, "shadow": {
                name: saved["model"][name] for name in eval_ema.shadow}})

    def evaluate_fn(m: torch.nn.Module) -> dict[str, float]:
        started = time.perf_counter()
        val = predict(m, split.val_images, device)
        test = predict(m, split.test_images, device)
        with eval_ema.average_parameters():
            ema_val = predict(m, split.val_images, device)
            ema_test = predict(m, split.test_images, device)
        eval_seconds.append(time.perf_counter() - started)
        # the test accuracy is kept for the final model only (no selection on the test split);
        # its top-class share is logged per epoch as a collapse check
        final["test_accuracy"] = float((test == split.test_labels).float().mean())
        final["ema_test_accuracy"] = float((ema_test == split.test_labels).float().mean())
        final["ema_val_accuracy"] = float((ema_val == split.val_labels).float().mean())
        return {"val_accuracy": float((val == split.val_labels).float().mean()),
                "val_top_share": top_share(val), "test_top_share": top_share(test),
                "ema_val_accuracy": float((ema_val == split.val_labels).float().mean()),
                "ema_val_top_share": top_share(ema_val), "ema_test_top_share": top_share(ema_test)}

    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    steps_run = [0]  # in this session (a resumed run restores the earlier epochs)
    started = time.perf_counter()

    def on_step(step: int, idx: Tensor, out) -> None:
        steps_run[0] += 1
        eval_ema.update(step)
        for name, value in out.metrics.items():
            if value.numel() == 1:
                sums[name] = sums.get(name, 0.0) + float(value)
                counts[name] = counts.get(name, 0) + 1

    def on_epoch(entry: dict) -> None:
        entry["metrics"] = {name: sums[name] / counts[name] for name in sorted(sums)}
        sums.clear()
        counts.clear()
        entry["seconds"] = time.perf_counter() - started
        metrics = entry["metrics"]
        parts = [f"loss {entry['loss']:.3f}", f"val {100 * entry['val_accuracy']:.1f}%",
                 f"top-class share val {entry['val_top_share']:.2f} "
                 f"test {entry['test_top_share']:.2f}",
                 f"EMA val {100 * entry['ema_val_accuracy']:.1f}% top-class share val "
                 f"{entry['ema_val_top_share']:.2f} test {entry['ema_test_top_share']:.2f}"]
        for name, short in (("pseudo_labeler/top_share", "PL top share"),
                            ("pseudo_labeler/marginal_entropy", "PL marginal entropy"),
                            ("pseudo_labeler/probe_accuracy", "PL probe acc"),
                            ("distribution_alignment/top_share", "DA top share"),
                            ("noisy_label_posterior/label_accuracy", "label accuracy est")):
            if name in metrics:
                parts.append(f"{short} {metrics[name]:.2f}")
        pre = f", strong view {views.seconds[-1]:.1f} s" if views is not None and views.seconds else ""
        print(f"    {desc} epoch {entry['epoch']}/{cfg.epochs}: " + ", ".join(parts)
              + f" ({entry['seconds']:.0f} s{pre})", flush=True)

    result = training.fit(pipeline, model, optimizer, data, epochs=cfg.epochs,
                          batch_size=cfg.batch_size, weak_augment=weak_view, seed=run.seed,
                          scheduler=make_scheduler(cfg, per_epoch), evaluate=evaluate_fn,
                          on_step=on_step, on_epoch=on_epoch, views=views, max_steps=max_steps,
                          progress=progress, desc=desc,
                          checkpoint=None if max_steps is not None else checkpoint,
                          resume=resume, state=ema_state)
    pipeline.close()
    if "test_accuracy" not in final:  # the checkpoint already held every epoch
        evaluate_fn(model)
    precompute = sum(views.seconds) if views is not None else 0.0
    train_seconds = result.seconds - sum(eval_seconds) - precompute
    history = result.history
    return {
        "setting": run.setting, "method": run.method, "recipe": recipe, "seed": run.seed,
        "options": {k: repr(v) for k, v in variant_options.items()},
        "test_accuracy": final["test_accuracy"], "val_accuracy": history[-1]["val_accuracy"],
        "test_top_share": history[-1]["test_top_share"],
        "max_test_top_share": max(h["test_top_share"] for h in history),
        # the evaluation EMA (EVAL_EMA_DECAY) of the same run, from epoch ema_since_epoch + 1
        "ema_decay": EVAL_EMA_DECAY, "ema_since_epoch": ema_since_epoch,
        "ema_test_accuracy": final["ema_test_accuracy"],
        "ema_val_accuracy": final["ema_val_accuracy"],
        "max_ema_test_top_share": max((h["ema_test_top_share"] for h in history
                                       if "ema_test_top_share" in h), default=None),
        "history": history, "steps": result.steps, "seconds": result.seconds,
        "train_seconds": train_seconds, "ms_per_step": 1000 * train_seconds / max(1, steps_run[0]),
        # seconds, train_seconds, eval_seconds, precompute_seconds: this session's (the last, for
        # a run resumed from its checkpoint), over steps_this_session and evaluated_epochs
        "steps_this_session": steps_run[0], "evaluated_epochs": len(eval_seconds),
        "eval_seconds": sum(eval_seconds), "precompute_seconds": precompute,
        "precompute_seconds_per_epoch": precompute / len(views.seconds) if views is not None else 0.0,
        "n_train": int(split.train_images.shape[0]), "n_val": int(split.val_images.shape[0]),
        "n_test": int(split.test_images.shape[0]), "n_trusted": int(split.trusted_images.shape[0]),
        "parameters": sum(p.numel() for p in model.parameters()),
        # GLC's first stage (C_hat of the final model on the trusted images), for the glc variant
        **({"transition": recipes.glc_transition(model, to_input(split.trusted_images, device),
                                                 split.trusted_labels.to(device)).tolist()}
           if recipe == "plain" else {}),
    }


def main_cpu10k(args, cfg: Config) -> int:
    """--config cpu10k: every (setting, method, seed) run stored as it finishes in --store (JSON
    lines) and skipped on restart; --shard i/n runs one disjoint part; --report-only builds the
    tables, figures and section from the store."""
    label = config_label(cfg, args.dry_run)
    if args.max_steps is not None and not (args.store or args.dry_run):
        raise SystemExit("--max-steps: a shortened run would be stored as finished; give it its own "
                         "--store")
    store_path = Path(args.store or (REPO / "runs" / "cifar10_cpu10k_dry.jsonl" if args.dry_run
                                     else CPU10K_STORE))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    seeds = args.seeds if args.seeds is not None else 2
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {sorted(VARIANTS)}")
    runs = cpu10k_runs(args.settings, methods, seeds, args.ablations, variants)
    shard, shards = 0, 1
    if args.shard:
        shard, shards = (int(x) for x in args.shard.split("/"))
    owner = assign_shards(runs, shards, cfg)
    store = Store(store_path)
    if args.report_only:
        args.write = args.write or str(REPO / "docs" / "results.md")
        body = cpu10k_report(store, args, cfg, label, runs)
        print(body)
        if args.write:
            write_section(args.write, CPU10K_HEADING, body)
            print(f"wrote the section '## {CPU10K_HEADING}' into {args.write}")
        return 0
    def finished(key: str) -> bool:
        return store.done(key, cfg) and not (args.rerun_without_ema
                                             and not has_ema(store.runs[key]))

    if args.list_runs:
        for run, s in zip(runs, owner):
            state = "done" if finished(run.key(label)) else "todo"
            print(f"shard {s}/{shards}  {state}  {run.key(label)}  (~{run_cost(run, cfg) / 60:.0f} min)")
        return 0

    mine = [run for run, s in zip(runs, owner) if s == shard]
    if not args.time_steps and all(finished(run.key(label)) for run in mine):
        print(f"--config {label}: all {len(mine)} runs of shard {shard}/{shards} are in {store_path}; "
              "nothing to do (--report-only builds the tables)", flush=True)
        return 0
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    data_dir = Path(args.data)
    if not ((data_dir / "train.tar.gz").is_file() and (data_dir / "test.tar.gz").is_file()):
        print(f"noisy_cifar10: CIFAR-10 JPEG archives not found in {data_dir} (expected train.tar.gz "
              f"and test.tar.gz, see shared/data/cifar10-jpeg/README.md); skipping.")
        return 0
    t0 = time.perf_counter()
    if args.dry_run:
        train = load_cifar10_head(data_dir, "train", TRUSTED_PER_CLASS
                                  + (cfg.val_size + (cfg.train_subset or 0)) // NUM_CLASSES)
        test = load_cifar10_head(data_dir, "test", 20)
    else:
        from iegkit.datasets import load_cifar10_jpeg

        train = load_cifar10_jpeg(data_dir, "train", cache_dir=args.cache_dir, verbose=True)[:2]
        test = load_cifar10_jpeg(data_dir, "test", cache_dir=args.cache_dir, verbose=True)[:2]
    print(f"CIFAR-10 loaded in {time.perf_counter() - t0:.1f} s: train {tuple(train[0].shape)}, "
          f"test {tuple(test[0].shape)}", flush=True)
    if args.time_steps:
        split = prepare_cpu10k_split(train, test, cfg, 0)
        model = build_model(cfg)
        print(f"timing --config {cfg.name}: {cfg.model} width {cfg.width} "
              f"({sum(p.numel() for p in model.parameters()):,} parameters), "
              f"{split.train_images.shape[0]} training images, batch {cfg.batch_size} + probe "
              f"{min(cfg.batch_size, split.trusted_images.shape[0])}, {torch.get_num_threads()} "
              f"threads, device {device}", flush=True)
        strong = strong_augment("cifar10", value_range=(-1.0, 1.0), per_image_policy=True)
        # timed on at most 5,000 images (the full set can take minutes) and scaled to all
        total_images = split.train_images.shape[0]
        sample = split.train_images[:5000]
        started = time.perf_counter()
        StrongViews(sample, strong, 0, 1, device).refresh(0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - started) * total_images / sample.shape[0]
        print(f"strong view of all {total_images} training images (per-image AutoAugment, outside "
              f"the step; timed on {sample.shape[0]}): {seconds:.1f} s per epoch", flush=True)
        time_steps(cfg, split, 0, device, args.time_steps,
                   [m for m in methods if m in METHODS], args.settings, False, tuple(LABEL_FREE))
        return 0

    print(f"--config {label}: {dataclasses.asdict(cfg)}; store {store_path}; shard {shard}/{shards}: "
          f"{len(mine)} of {len(runs)} runs, {sum(finished(r.key(label)) for r in mine)} done",
          flush=True)
    splits: dict[int, Split] = {}
    wall = time.perf_counter()
    for run in mine:
        key = run.key(label)
        store.reload()
        if finished(key):
            continue
        if run.seed not in splits:
            splits[run.seed] = prepare_cpu10k_split(train, test, cfg, run.seed)
        split = splits[run.seed]
        kind, rate = ("uniform", 0.8) if run.setting == ANY_SETTING else parse_settings(run.setting)[0]
        labels = noisy_labels(split.train_clean, kind, rate, run.seed)
        wrong = float((labels != split.train_clean).float().mean())
        desc = f"{run.setting} {run.method} s{run.seed}"
        print(f"{desc}: {split.train_images.shape[0]} training images "
              + ("(labels unused)" if run.method in LABEL_FREE else f"{100 * wrong:.1f}% wrong labels")
              + f", {split.val_images.shape[0]} validation, {split.test_images.shape[0]} test",
              flush=True)
        checkpoint = (Path(store_path).with_suffix("") / "checkpoints"
                      / (re.sub(r"[^A-Za-z0-9_.-]+", "_", key) + ".pt"))
        plain = store.runs.get(Cpu10kRun(run.setting, "plain", run.seed).key(label), {})
        record = train_cpu10k(run, split, labels, cfg, device, max_steps=args.max_steps,
                              progress=not args.no_progress and sys.stderr.isatty(), desc=desc,
                              checkpoint=checkpoint, plain_transition=plain.get("transition"))
        record.update({"config": label, "cfg": dataclasses.asdict(cfg), "wrong_labels": wrong,
                       "command": command(args.argv), "machine": results_machine(),
                       "load_average": load_average(), "date": now()})
        store.add(key, record)
        checkpoint.unlink(missing_ok=True)
        print(f"{desc}: final test accuracy {100 * record['test_accuracy']:.2f}%, val "
              f"{100 * record['val_accuracy']:.2f}%, max test top-class share "
              f"{record['max_test_top_share']:.2f}; {record['ms_per_step']:.0f} ms/step, "
              f"{record['seconds'] / 60:.1f} min (evaluation {record['eval_seconds']:.0f} s, strong "
              f"view {record['precompute_seconds']:.0f} s); shard total "
              f"{(time.perf_counter() - wall) / 60:.1f} min", flush=True)
    print(f"shard {shard}/{shards} done; store {store_path}", flush=True)
    return 0


def has_ema(record: dict) -> bool:
    """Whether a stored run holds the evaluation EMA over all its epochs (a run resumed from a
    checkpoint written before the EMA holds it only from the resumed epoch on)."""
    return record.get("max_ema_test_top_share") is not None and record.get("ema_since_epoch") == 0


def _mean_std(values: Sequence[float]) -> str:
    mean = 100 * statistics.mean(values)
    if len(values) > 1:
        return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"
    return f"{mean:.1f}"


def _largest_class(g: Sequence[dict]) -> str:
    """The largest test class after any epoch: trained weights, and their evaluated EMA (robust
    IEG's teacher) where recorded."""
    trained = f"{max(r['max_test_top_share'] for r in g):.2f}"
    teacher = [r["max_ema_test_top_share"] for r in g if r.get("max_ema_test_top_share") is not None]
    return trained + (f" / {max(teacher):.2f}" if teacher else " / -")


def ablation_tables(group) -> list[str]:
    """The issue's two ablations at uniform 0.8 (seed 0): robust_ieg without each safeguard, and
    IEG-1..8 (paper Table 7) with every safeguard on (robust IEG-5 is robust_ieg itself)."""
    where = "uniform:0.8"
    lines: list[str] = []
    safeguards = [v for v in SAFEGUARD_ABLATIONS if group(where, v)]
    if safeguards:
        lines += ["Safeguard ablation at uniform 0.8 (seed 0; largest test class after any epoch: "
                  "trained weights / their EMA of 0.99, robust IEG's teacher, where recorded; the "
                  "same in the next table):", "",
                  "| variant | test % | val % | largest test class |", "| --- | --- | --- | --- |"]
        for v in ("robust_ieg", *safeguards):
            g = [r for r in group(where, v) if r["seed"] == 0]
            if g:
                options = ", ".join(f"{k}={x}" for k, x in VARIANTS[v][1].items()) or "defaults"
                lines.append(f"| {v} ({options}) | {_mean_std([r['test_accuracy'] for r in g])} | "
                             f"{_mean_std([r['val_accuracy'] for r in g])} | {_largest_class(g)} |")
        lines.append("")
    table7 = {n: [r for r in group(where, "robust_ieg" if n == 5 else f"robust_ieg-{n}")
                  if r["seed"] == 0] for n in recipes.TABLE7}
    if any(table7[n] for n in recipes.TABLE7 if n != 5):
        from benchmarks.ablations import PAPER as PAPER_TABLE7  # the paper's Table 7, for the ordering

        lines += ["IEG-1..8 (paper Table 7) with the safeguards, uniform 0.8 (seed 0; "
                  "`robust_ieg(components=TABLE7[n])`; UC: KL consistency, MC: MixUp "
                  "cross-entropy, AA: AutoAugment strong view, λ: meta relabeling; the paper's "
                  "column is its Table 7 (CIFAR-100, WRN-28-10) at 80% noise, for the ordering "
                  "only):", "",
                  "| # | UC | MC | AA | λ | test % | val % | largest test class | paper 0.8 |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for n, g in table7.items():
            marks = " | ".join("✓" if c in recipes.TABLE7[n] else "" for c in ("UC", "MC", "AA",
                                                                             "lambda"))
            cells = (f"{_mean_std([r['test_accuracy'] for r in g])} | "
                     f"{_mean_std([r['val_accuracy'] for r in g])} | {_largest_class(g)}"
                     if g else "not run | - | -")
            lines.append(f"| {n} | {marks} | {cells} | {PAPER_TABLE7[n][1]:.2f} |")
        lines.append("")
    return lines


def cpu10k_report(store: Store, args, cfg: Config, label: str, runs: Sequence[Cpu10kRun]) -> str:
    """The tables, the figures and the body of the docs/results.md section, from the store."""
    records = [r for r in store.runs.values()
               if r.get("config") == label and r.get("cfg") == dataclasses.asdict(cfg)]
    settings = [setting_key(*s) for s in args.settings]
    by: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        by.setdefault((r["setting"], r["method"]), []).append(r)
    for group in by.values():
        group.sort(key=lambda r: r["seed"])

    def group(setting: str, method: str) -> list[dict]:
        return by.get((ANY_SETTING if method in LABEL_FREE else setting, method), [])

    methods = [m for m in METHODS if any(group(s, m) for s in settings)]
    figures = Path(args.figures_dir)
    base = Path(args.write).resolve().parent if args.write else REPO / "docs"
    figure_paths = plot_cpu10k(group, settings, methods, figures)
    wrong = {s: next((r["wrong_labels"] for r in records if r["setting"] == s), None)
             for s in settings}

    head = "| method | " + " | ".join(
        f"{s.replace(':', ' ')} ({'n/a' if wrong[s] is None else f'{100 * wrong[s]:.0f}% wrong'})"
        for s in settings) + " |"
    lines = [head, "|" + " --- |" * (len(settings) + 1)]
    best = {s: max((statistics.mean(r["test_accuracy"] for r in group(s, m)) for m in methods
                    if group(s, m)), default=None) for s in settings}
    for m in methods:
        cells = []
        for s in settings:
            g = group(s, m)
            if not g:
                cells.append("-")
                continue
            acc = _mean_std([r["test_accuracy"] for r in g])
            if statistics.mean(r["test_accuracy"] for r in g) == best[s]:
                acc = f"**{acc}**"
            cells.append(f"{acc} [{len(g)}] · val {_mean_std([r['val_accuracy'] for r in g])} · "
                         f"top {max(r['max_test_top_share'] for r in g):.2f}")
        lines.append(f"| {m}{' (labels unused)' if m in LABEL_FREE else ''} | " + " | ".join(cells)
                     + " |")
    table = "\n".join(lines)

    # the evaluation EMA (EVAL_EMA_DECAY), recorded beside the trained weights since it was added:
    # only the runs made or re-run since then
    ema_lines = []
    for m in methods:
        cells = []
        for s in settings:
            g = [r for r in group(s, m) if has_ema(r)]
            cells.append("-" if not g else
                         f"{_mean_std([r['ema_test_accuracy'] for r in g])} [{len(g)}] · val "
                         f"{_mean_std([r['ema_val_accuracy'] for r in g])} · top "
                         f"{max(r['max_ema_test_top_share'] for r in g):.2f} (trained weights: "
                         f"{_mean_std([r['test_accuracy'] for r in g])}, top "
                         f"{max(r['max_test_top_share'] for r in g):.2f})")
        if any(c != "-" for c in cells):
            ema_lines.append(f"| {m}{' (labels unused)' if m in LABEL_FREE else ''} | "
                             + " | ".join(cells) + " |")
    if ema_lines:
        ema_lines = [head, "|" + " --- |" * (len(settings) + 1), *ema_lines]

    checks = []
    for s, margin in (("uniform:0.4", 5.0), ("uniform:0.8", 10.0)):
        p, r = group(s, "plain"), group(s, "robust_ieg")
        if p and r:
            diff = 100 * (statistics.mean(x["test_accuracy"] for x in r)
                          - statistics.mean(x["test_accuracy"] for x in p))
            checks.append(f"robust IEG - plain at {s.replace(':', ' ')}: {diff:+.1f} points "
                          f"(target >= +{margin:.0f}: {'met' if diff >= margin else 'not met'})")
    rows = [s for s in settings if group(s, "plain") and group(s, "robust_ieg")]
    if rows:
        worst = min(100 * (statistics.mean(x["test_accuracy"] for x in group(s, "robust_ieg"))
                           - statistics.mean(x["test_accuracy"] for x in group(s, "plain")))
                    for s in rows)
        checks.append(f"robust IEG - plain, worst row: {worst:+.1f} points (target >= -1: "
                      f"{'met' if worst >= -1 else 'not met'})")
    for m in ("robust_ieg", "robust_eg"):
        g = [r for s in settings for r in group(s, m)]
        if g:
            top = max(r["max_test_top_share"] for r in {id(r): r for r in g}.values())
            checks.append(f"{m}: largest test top-class share after any epoch {top:.2f} (target "
                          f"<= 0.25: {'met' if top <= 0.25 else 'not met'})")
            with_ema = list({id(r): r for r in g if has_ema(r)}.values())
            if with_ema:
                top = max(r["max_ema_test_top_share"] for r in with_ema)
                checks.append(f"{m} evaluated with its EMA, in the {len(with_ema)} of "
                              f"{len({id(r) for r in g})} runs recorded with it: {top:.2f} ("
                              f"{'<= 0.25 in these runs' if top <= 0.25 else 'above 0.25'})")

    ablation_lines = ablation_tables(group)

    shrink_lines = []
    candidates = [(v, m) for v, m in ((v, selection_method(v)) for v in SELECTION_CANDIDATES)
                  if any(group(st, m) for st in settings)]
    if len(candidates) > 1:
        shrink_lines = ["Selection of robust_ieg's defaults (seed 0; chosen on the validation "
                        "accuracy, the test accuracy shown for the record):",
                        "", "| robust_ieg options | " + " | ".join(
                            f"{st.replace(':', ' ')} val % / test % (max val top-class share)"
                            for st in settings) + " |",
                        "|" + " --- |" * (len(settings) + 1)]
        for variant, method in candidates:
            cells = []
            for st in settings:
                g = [r for r in group(st, method) if r["seed"] == 0]
                cells.append(f"{100 * g[0]['val_accuracy']:.1f} / {100 * g[0]['test_accuracy']:.1f}"
                             f" ({max(h['val_top_share'] for h in g[0]['history']):.2f})"
                             if g else "-")
            options = ", ".join(f"{k}={x:g}" if isinstance(x, float) else f"{k}={x}"
                                for k, x in VARIANTS[variant][1].items())
            default = (" (the defaults)" if method == "robust_ieg" else
                       " (first estimator, commit ac36477)" if variant in HISTORICAL_VARIANTS else "")
            shrink_lines.append(f"| {options}{default} | " + " | ".join(cells) + " |")
        plain = [group(st, "plain") for st in settings]
        shrink_lines.append("| plain | " + " | ".join(
            f"{100 * g[0]['val_accuracy']:.1f} / {100 * g[0]['test_accuracy']:.1f}"
            f" ({max(h['val_top_share'] for h in g[0]['history']):.2f})" if g else "-"
            for g in (sorted(g, key=lambda r: r["seed"]) for g in plain)) + " |")

    warmup_lines = []
    warmup_runs = [(v, [r for r in group(ANY_SETTING, v) if r["seed"] == 0])
                   for v in ("robust_eg/no_warmup", "robust_eg")]
    if all(g for _, g in warmup_runs):
        warmup_lines = ["Selection of robust_eg's lr warm-up (seed 0; chosen on the validation "
                        "split's largest class after epoch 1, at a final validation accuracy within "
                        "noise; the test accuracy shown for the record). Largest predicted class on "
                        "the validation split, trained weights / EMA (teacher):", "",
                        "| robust_eg options | after epoch 1 | worst epoch | final val % | test % |",
                        "| --- | --- | --- | --- | --- |"]
        for variant, (r,) in ((v, g[:1]) for v, g in warmup_runs):
            h = r["history"]
            ema = has_ema(r)
            first = (f"{h[0]['val_top_share']:.2f} / "
                     + (f"{h[0]['ema_val_top_share']:.2f}" if ema else "-"))
            worst = (f"{max(e['val_top_share'] for e in h):.2f} / "
                     + (f"{max(e['ema_val_top_share'] for e in h):.2f}" if ema else "-"))
            options = ", ".join(f"{k}={x:g}" for k, x in VARIANTS[variant][1].items())
            warmup_lines.append(
                f"| {options or f'defaults (warmup_fraction={recipes.ROBUST_EG_WARMUP_FRACTION:g})'}"
                f" | {first} | {worst} | {100 * r['val_accuracy']:.1f} | "
                f"{100 * r['test_accuracy']:.1f} |")

    cost = ["| method | ms/step (mean over runs) | strong view s/epoch | evaluation s/epoch | "
            "min/run |", "| --- | --- | --- | --- | --- |"]
    for m in methods:
        g = [r for r in records if r["method"] == m]
        epochs = [r.get("evaluated_epochs", len(r["history"])) for r in g]
        cost.append(f"| {m} | {statistics.mean(r['ms_per_step'] for r in g):.0f} | "
                    f"{statistics.mean(r['precompute_seconds_per_epoch'] for r in g):.1f} | "
                    f"{statistics.mean(r['eval_seconds'] / max(1, e) for r, e in zip(g, epochs)):.1f} | "
                    f"{statistics.mean(r['seconds'] for r in g) / 60:.1f} |")
    done = sum(store.done(run.key(label), cfg) for run in runs)
    any_r = records[0] if records else {}
    commands = sorted({r["command"] for r in records})
    model_desc = {"small_cnn4": f"SmallCNN(in_channels=3, width={cfg.width}, blocks=4)",
                  "wrn28_2": "WRN-28-2 (benchmarks/wrn.py)",
                  "wrn28_10": "WRN-28-10 (benchmarks/wrn.py)"}.get(
        cfg.model, f"{cfg.model} (width {cfg.width})")
    n_train = any_r.get("n_train") or cfg.train_subset
    subset_desc = (f"a stratified {cfg.train_subset:,}-image training subset" if cfg.train_subset
                   else f"all {n_train:,} remaining training images" if n_train
                   else "all remaining training images")
    details = (
        f"{model_desc}, {any_r.get('parameters', 0):,} parameters. Data: 10 trusted images per "
        f"class (clean labels; the probe set) removed first, then a stratified clean validation "
        f"split of {cfg.val_size:,} images (clean labels, used only for the validation accuracy), "
        f"then {subset_desc}, the only labels that get "
        f"noise; test: {any_r.get('n_test', 0):,} images"
        f"{' (the full test split)' if any_r.get('n_test') == 10_000 else ''}. {cfg.epochs} epoch(s) of "
        f"{training.steps_per_epoch(n_train, cfg.batch_size) if n_train else '?'} steps, batch "
        f"{cfg.batch_size} + probe batch {min(cfg.batch_size, TRUSTED_PER_CLASS * NUM_CLASSES)}; "
        f"SGD lr {cfg.lr} momentum 0.9 wd 5e-4, one cosine decay to 0 over the run for every "
        f"method; one torch thread per process. Weak view `weak_augment(pad={cfg.weak_pad})`; the "
        f"strong view (per-image AutoAugment CIFAR-10 policy, crop, flip, cutout 16, on the raw "
        f"images) is made for every training image once per epoch outside the step and passed "
        f"with `fit(views=...)`. EG/IEG: p, k ramped over the whole run (`recipes.build`); robust "
        f"EG/IEG: `recipes.robust_ieg`/`robust_eg` defaults (EMA teacher 0.99, distribution "
        f"alignment 0.99, ramp over the run; robust IEG: meta shrinkage "
        f"{recipes.ROBUST_META_SHRINKAGE:g} and the label posterior; robust EG: lr warm-up over "
        f"the first {100 * recipes.ROBUST_EG_WARMUP_FRACTION:g}% of the run); probe diagnostics every "
        f"{cfg.probe_diagnostics_every} steps. EG and robust EG never read the noisy labels: one "
        f"run per seed, shown in every column. Nothing was selected on the test split.")
    head = provenance(f"; {done} of {len(runs)} listed runs in the store.")
    body = [head.replace(command(), command(args.argv), 1), "",
            "Training commands (runs stored one by one in "
            f"`{os.path.relpath(store.path.resolve(), REPO)}`, skipped on restart): "
            + "; ".join(f"`{c}`" for c in commands), "", details, "",
            "Final test accuracy % of the final model (mean ± std over seeds) [seeds] · final "
            "validation accuracy % · top: the largest predicted class's share of the test "
            "predictions, maximum over all epochs (collapse check; balanced = 0.10). Bold: best "
            "per column.", "", table, ""]
    if ema_lines:
        body += [f"Evaluated as the official code evaluates, with an EMA ({EVAL_EMA_DECAY}) of the "
                 "weights (for robust IEG and robust EG exactly their teacher, "
                 "`iegkit.evaluation_weights`), in the runs recorded with it (the EMA was added "
                 "after the first runs; `--rerun-without-ema` repeats a run for it). Each cell: "
                 "EMA test % [runs] · EMA val % · top: the EMA's largest test class after any epoch "
                 "(the same runs' trained weights in brackets):", "", *ema_lines, ""]
    if checks:
        body += ["Against the targets: " + "; ".join(checks) + ".", ""]
    body += ablation_lines
    if shrink_lines:
        body += shrink_lines + [""]
    if warmup_lines:
        body += warmup_lines + [""]
    body += ["Cost on this machine (ms/step: the step, including the pseudo labeler's probe "
             "diagnostic, which augments the 100 probe images inside every 10th step; the strong "
             "view of the training images and the evaluation of the validation and test splits "
             "are timed apart):", "", *cost, ""]
    for path, what in figure_paths:
        body.append(f"{what}: ![{what}]({os.path.relpath(path.resolve(), base)})")
        body.append("")
    return "\n".join(body)


def plot_cpu10k(group, settings: Sequence[str], methods: Sequence[str],
                figures: Path) -> list[tuple[Path, str]]:
    """Validation accuracy per epoch (one panel per setting) and the collapse metrics per epoch
    (rows: metrics, columns: settings); mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def curve(records: list[dict], get) -> tuple[list, list]:
        hists = [r["history"] for r in records]
        length = min(len(h) for h in hists)
        ys = []
        for i in range(length):
            values = [get(h[i]) for h in hists]
            values = [v for v in values if v is not None]
            ys.append(statistics.mean(values) if values else float("nan"))
        return [hists[0][i]["epoch"] for i in range(length)], ys

    figures.mkdir(parents=True, exist_ok=True)
    color = {m: f"C{i}" for i, m in enumerate(METHODS)}  # the same colour in every panel
    out = []
    fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 3.4), sharey=True,
                             squeeze=False)
    for ax, s in zip(axes[0], settings):
        for m in methods:
            if group(s, m):
                xs, ys = curve(group(s, m), lambda h: 100 * h["val_accuracy"])
                ax.plot(xs, ys, label=m, marker=".", color=color[m])
        ax.set_title(f"{s.replace(':', ' ')} noise")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy (%)")
    if axes[0][0].lines:
        axes[0][0].legend(fontsize=7)
    fig.suptitle("noisy CIFAR-10, --config cpu10k:\nclean validation split", fontsize=9)
    fig.tight_layout()
    path = figures / "noisy_cifar10_cpu10k_val.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    out.append((path, "Validation accuracy per epoch"))

    rows = [("test top-class share", lambda h: h["test_top_share"]),
            ("test top-class share, EMA", lambda h: h.get("ema_test_top_share")),
            ("val top-class share", lambda h: h["val_top_share"]),
            ("pseudo-label top share", lambda h: h["metrics"].get("pseudo_labeler/top_share")),
            ("pseudo-label marginal entropy",
             lambda h: h["metrics"].get("pseudo_labeler/marginal_entropy")),
            ("pseudo-label probe accuracy",
             lambda h: h["metrics"].get("pseudo_labeler/probe_accuracy")),
            ("aligned pseudo-label top share",
             lambda h: h["metrics"].get("distribution_alignment/top_share"))]
    fig, axes = plt.subplots(len(rows), len(settings), figsize=(4.2 * len(settings), 2.3 * len(rows)),
                             sharex=True, squeeze=False)
    for j, s in enumerate(settings):
        axes[0][j].set_title(f"{s.replace(':', ' ')} noise")
        for i, (name, get) in enumerate(rows):
            ax = axes[i][j]
            for m in methods:
                if group(s, m):
                    xs, ys = curve(group(s, m), get)
                    if any(y == y for y in ys):  # not all NaN
                        ax.plot(xs, ys, label=m, marker=".", color=color[m])
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
            if name.endswith("share"):
                ax.axhline(0.25, color="gray", lw=0.8, ls="--")
            ax.grid(alpha=0.3)
        axes[-1][j].set_xlabel("epoch")
    handles = {}
    for row in axes:
        for ax in row:
            for handle, name in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(name, handle)
    axes[0][0].legend(handles.values(), handles.keys(), fontsize=7)
    fig.suptitle("collapse metrics per epoch\n(pseudo-label metrics: mean over the epoch's "
                 "steps; dashed: 0.25)", fontsize=9)
    fig.tight_layout()
    path = figures / "noisy_cifar10_cpu10k_collapse.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    out.append((path, "Collapse metrics per epoch"))
    return out


# --------------------------------------------------------------------------- main


def parse_settings(text: str) -> list[tuple[str, float]]:
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        kind, _, rate = item.partition(":")
        if kind not in ("uniform", "asymmetric") or not rate:
            raise argparse.ArgumentTypeError(f"--settings: expected kind:rate with kind uniform or "
                                             f"asymmetric, got {item!r}")
        out.append((kind, float(rate)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Noisy CIFAR-10 (real images, 10 trusted per class): plain vs L2R vs EG vs IEG.",
        epilog="The module docstring describes the protocol and both configurations.")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="folder with train.tar.gz and test.tar.gz [../shared/data/cifar10-jpeg]")
    parser.add_argument("--cache-dir", default=None,
                        help="where to extract and decode once "
                             "[iegkit.datasets.load_cifar10_jpeg's: ~/.cache/iegkit/cifar10-jpeg]")
    parser.add_argument("--settings", type=parse_settings,
                        default=[(k, r) for k, r in SETTINGS],
                        help="comma-separated kind:rate [uniform:0.4,uniform:0.8,asymmetric:0.4]")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds 0..n-1 [1; cpu10k: 2, the seeds after 0 for plain and "
                             "robust_ieg only]")
    parser.add_argument("--device", default=None, help="cpu or cuda [the config's]")
    parser.add_argument("--threads", type=int, default=None, help="torch threads [the config's]")
    parser.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    parser.add_argument("--train-subset", type=int, default=None,
                        help="override the config's training subset (0: all)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--model", choices=["small_cnn", "small_cnn4", "resnet29", "wrn28_10",
                                            "wrn28_2"])
    parser.add_argument("--width", type=int, default=None, help="SmallCNN width / ResNet29 base_width")
    parser.add_argument("--per-image-policy", choices=["yes", "no"], default=None)
    parser.add_argument("--eg-per-setting", action="store_true",
                        help="train EG under every setting instead of once per seed")
    parser.add_argument("--max-steps", type=int, default=None, help="stop each run early (smoke test)")
    parser.add_argument("--test-subset", type=int, default=None,
                        help="evaluate on every k-th test image only, N in all (smoke test)")
    parser.add_argument("--time-steps", type=int, default=0,
                        help="only measure N steps of each method and project the run time")
    parser.add_argument("--results", default=None,
                        help="JSON file of finished runs [/tmp/iegkit_noisy_cifar10_<config>.json]")
    parser.add_argument("--resume", action="store_true", help="skip the runs already in --results")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild table, figure and section from --results; train nothing")
    parser.add_argument("--write", default=None, help="write the section into this markdown file")
    parser.add_argument("--figure", default=None,
                        help="accuracy curves PNG [docs/figures/noisy_cifar10_<config>.png]")
    parser.add_argument("--notes", default=None, help="markdown file appended to the section")
    parser.add_argument("--no-progress", action="store_true")
    cpu10k = parser.add_argument_group("--config cpu10k (runs stored one by one, see the docstring)")
    cpu10k.add_argument("--store", default=None,
                        help="JSON-lines store of finished runs [benchmarks/results/cifar10_cpu10k.jsonl]")
    cpu10k.add_argument("--shard", default=None, metavar="I/N",
                        help="run only part I of N (0-based) of the run list, disjoint and "
                             "balanced: start N processes with 0/N .. N-1/N")
    cpu10k.add_argument("--rerun-without-ema", action="store_true",
                        help="re-run the stored runs made before the evaluation EMA was recorded "
                             "(the same training; the new record adds the EMA's curves)")
    cpu10k.add_argument("--variants", default="",
                        help="comma-separated VARIANTS (e.g. robust_ieg/shrink_0.5), seed 0, at "
                             "every --settings, after the other runs (selection on the val split)")
    cpu10k.add_argument("--ablations", choices=["none", "safeguards", "table7", "all"],
                        default="none",
                        help="also the safeguard ablations of robust_ieg and/or IEG-1..8 with "
                             "safeguards at uniform 0.8, seed 0 (after the main runs) [none]")
    cpu10k.add_argument("--figures-dir", default=str(REPO / "docs" / "figures"),
                        help="where --report-only writes the PNGs [docs/figures]")
    cpu10k.add_argument("--list-runs", action="store_true",
                        help="print the run list (priority order, shard, done or not) and exit")
    cpu10k.add_argument("--dry-run", action="store_true",
                        help="tiny sizes straight from the archives (100 training, 100 validation, "
                             "200 test images, batch 32, width 8), 1 epoch of 3 steps; own store "
                             "and key")
    args = parser.parse_args(argv)
    args.argv = argv  # None: sys.argv (the command recorded with each run and in the report)

    cfg = CONFIGS[args.config]
    overrides = {}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.train_subset is not None:
        overrides["train_subset"] = args.train_subset or None
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    if args.model is not None:
        overrides["model"] = args.model
    if args.width is not None:
        overrides["width"] = args.width
    if args.per_image_policy is not None:
        overrides["per_image_policy"] = args.per_image_policy == "yes"
    if args.device is not None:
        overrides["device"] = args.device
    if args.threads is not None:
        overrides["threads"] = args.threads
    if args.dry_run:
        if cfg.name != "cpu10k":
            parser.error("--dry-run: only with --config cpu10k")
        overrides.update(epochs=1, train_subset=100, val_size=100, batch_size=32, width=8)
    cfg = dataclasses.replace(cfg, **overrides)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {list(METHODS)}")
    if args.shard is not None and not re.fullmatch(r"\d+/\d+", args.shard) or (
            args.shard and not 0 <= int(args.shard.split("/")[0]) < int(args.shard.split("/")[1])):
        parser.error(f"--shard: expected I/N with 0 <= I < N, got {args.shard!r}")
    if cfg.name == "cpu10k":
        return main_cpu10k(args, cfg)
    if args.shard or args.list_runs or args.ablations != "none" or args.store:
        parser.error("--shard, --list-runs, --ablations, --store: only with --config cpu10k")
    args.seeds = args.seeds or 1
    settings = args.settings
    args.figure = args.figure or str(REPO / "docs" / "figures" / f"noisy_cifar10_{cfg.name}.png")
    results_path = Path(args.results or f"/tmp/iegkit_noisy_cifar10_{cfg.name}.json")
    device = torch.device(cfg.device)
    if args.report_only:
        store = json.loads(results_path.read_text())
        settings = [tuple(x) for x in store.get("settings", settings)]
        methods = store.get("methods", methods)
        body = report(store, args, settings, methods, device)
        print(body)
        if args.write:
            write_results(Path(args.write), store["config"]["name"], body)
        return 0

    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"--config {cfg.name} runs on {cfg.device}, but CUDA is not available here; pass "
              f"--device cpu to force it (WRN-28-10 on a CPU takes weeks)", file=sys.stderr)
        return 2
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    data_dir = Path(args.data)
    if not ((data_dir / "train.tar.gz").is_file() and (data_dir / "test.tar.gz").is_file()):
        print(f"noisy_cifar10: CIFAR-10 JPEG archives not found in {data_dir} (expected train.tar.gz "
              f"and test.tar.gz, see shared/data/cifar10-jpeg/README.md); skipping.")
        return 0

    from iegkit.datasets import load_cifar10_jpeg

    t0 = time.perf_counter()
    train_images, train_labels, _ = load_cifar10_jpeg(data_dir, "train", cache_dir=args.cache_dir,
                                                      verbose=True)
    test_images, test_labels, _ = load_cifar10_jpeg(data_dir, "test", cache_dir=args.cache_dir,
                                                    verbose=True)
    if args.test_subset:
        stride = max(1, test_images.shape[0] // args.test_subset)
        test_images, test_labels = test_images[::stride], test_labels[::stride]
    print(f"CIFAR-10 loaded in {time.perf_counter() - t0:.1f} s: train {tuple(train_images.shape)}, "
          f"test {tuple(test_images.shape)}", flush=True)

    if args.time_steps:
        split = prepare_split((train_images, train_labels), (test_images, test_labels),
                              cfg.train_subset, 0)
        print(f"timing --config {cfg.name}: {cfg.model}, {split.train_images.shape[0]} training "
              f"images, batch {cfg.batch_size}, {torch.get_num_threads()} threads, device {device}")
        time_steps(cfg, split, 0, device, args.time_steps, methods, settings, args.eg_per_setting)
        return 0

    fresh = {"config": dataclasses.asdict(cfg), "seeds": args.seeds, "runs": {}, "noise": {},
             "settings": [list(x) for x in settings], "methods": methods,
             "command": ".venv/bin/python " + " ".join(shlex.quote(a) for a in
                                                       [os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
             "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    store = fresh
    if args.resume and results_path.exists():
        store = json.loads(results_path.read_text())
        defaults = {f.name: f.default for f in dataclasses.fields(Config)
                    if f.default is not dataclasses.MISSING}  # fields added later: same run
        if any(store["config"].get(k, defaults.get(k)) != v for k, v in fresh["config"].items()):
            print(f"--resume: {results_path} was made with another configuration "
                  f"({store['config']}); remove it or pass --results", file=sys.stderr)
            return 2
        store["seeds"] = max(store["seeds"], args.seeds)
    print(f"--config {cfg.name}: {dataclasses.asdict(cfg)}", flush=True)
    wall = time.perf_counter()
    for seed in range(args.seeds):
        split = prepare_split((train_images, train_labels), (test_images, test_labels),
                              cfg.train_subset, seed)
        store["n_train"] = int(split.train_images.shape[0])
        eg_done: str | None = None
        for kind, rate in settings:
            labels = noisy_labels(split.train_clean, kind, rate, seed)
            wrong = float((labels != split.train_clean).float().mean())
            store["noise"][f"{kind}:{rate:g}"] = wrong
            for method in methods:
                key = run_key(kind, rate, method, seed)
                if key in store["runs"]:
                    if method == "eg":
                        eg_done = key
                    continue
                if method == "eg" and eg_done is not None and not args.eg_per_setting:
                    store["runs"][key] = dict(store["runs"][eg_done], shared_from=eg_done)
                    print(f"{key}: EG ignores the noisy labels; same run as {eg_done}", flush=True)
                    continue
                desc = f"{setting_name(kind, rate)} {method} s{seed}"
                print(f"{desc}: {split.train_images.shape[0]} training images, "
                      f"{100 * wrong:.1f}% wrong labels", flush=True)
                result = train_one(method, split, labels, cfg, seed, device,
                                   progress=not args.no_progress, desc=desc, max_steps=args.max_steps)
                store["runs"][key] = result
                if method == "eg":
                    eg_done = key
                print(f"{desc}: final test accuracy {100 * result['final']:.2f}% "
                      f"({result['seconds'] / 60:.1f} min; total so far "
                      f"{(time.perf_counter() - wall) / 60:.1f} min)", flush=True)
                results_path.write_text(json.dumps(store))
    store["finished"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    store["wall_seconds"] = store.get("wall_seconds", 0.0) + time.perf_counter() - wall
    store["machine"] = machine(device)
    results_path.write_text(json.dumps(store))
    print(f"all runs done in {(time.perf_counter() - wall) / 60:.1f} min; results in {results_path}")
    body = report(store, args, settings, methods, device)
    print(body)
    if args.write:
        write_results(Path(args.write), cfg.name, body)
        print(f"wrote the section '## {HEADING}' ({cfg.name}) into {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
