"""What every CIFAR-10 protocol shares (``noisy_cifar10`` describes them): the data, its trusted,
validation and training splits, the noise, the model, the pipeline and schedule of a run, the
strong views made outside the step, prediction, and the run store."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]

from benchmarks.results_io import RunStore
from iegkit import recipes, training
from iegkit.augment import strong_augment, weak_augment
from iegkit.data import NoisyDataset, ProbeSampler, split_trusted
from iegkit.noise import CIFAR10_ASYMMETRIC_MAP, asymmetric_noise, uniform_noise
from iegkit.parts import SGDRSchedule

DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-jpeg"
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


def take_stratified(pool: Tensor, labels: Tensor, total: int | None,
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
    val_idx, rest = take_stratified(rest, labels, cfg.val_size, generator)
    train_idx, _ = take_stratified(rest, labels, cfg.train_subset, generator)
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


def tiled_trusted(split: Split, n: int) -> tuple[Tensor, Tensor]:
    """The trusted images and labels repeated to ``n`` rows, as ``iegkit.data.trusted_only`` repeats
    them (the benchmarks' splits are not yet a ``NoisyDataset`` here): the trusted-only baseline
    trains on them for the same steps and epochs as every other method."""
    rows = torch.arange(n) % split.trusted_images.shape[0]
    return split.trusted_images[rows], split.trusted_labels[rows]


def device_data(split: Split, labels: Tensor, weak_pad: int, device: torch.device):
    """The run's data as ``training.fit`` reads it (uint8 images on the device; the clean and test
    labels stay where they are) and its weak view, which maps each uint8 batch to [-1, 1] on the
    device before the pad-crop (``weak_pad``) and flip."""
    weak = weak_augment(pad=weak_pad, value_range=(-1.0, 1.0))

    def weak_view(images: Tensor, generator=None) -> Tensor:
        return weak(to_input(images, device), generator=generator)

    data = NoisyDataset(split.train_images.to(device), labels.to(device), split.train_clean,
                        split.trusted_images.to(device), split.trusted_labels.to(device),
                        split.test_images, split.test_labels, NUM_CLASSES)
    return data, weak_view


class EpochMetrics:
    """The parts' scalar diagnostics of a run, averaged per epoch: ``on_step`` sums them after
    every step, ``close_epoch(entry)`` writes the means into the epoch's history entry. Counts the
    steps this session ran (a resumed run restores the earlier epochs)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.steps_run = 0

    def on_step(self, out) -> None:
        self.steps_run += 1
        for name, value in out.metrics.items():
            if value.numel() == 1:
                self.sums[name] = self.sums.get(name, 0.0) + float(value)
                self.counts[name] = self.counts.get(name, 0) + 1

    def close_epoch(self, entry: dict) -> None:
        entry["metrics"] = {name: self.sums[name] / self.counts[name] for name in sorted(self.sums)}
        self.sums.clear()
        self.counts.clear()


def run_timing(seconds: float, eval_seconds: Sequence[float], views, steps_run: int) -> dict:
    """Where a run's time went: the step (``ms_per_step``, this session's steps), the
    evaluations and the strong views made outside the step."""
    precompute = sum(views.seconds) if views is not None else 0.0
    train_seconds = seconds - sum(eval_seconds) - precompute
    return {"train_seconds": train_seconds, "ms_per_step": 1000 * train_seconds / max(1, steps_run),
            "eval_seconds": sum(eval_seconds), "precompute_seconds": precompute}


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


def has_ema(record: dict) -> bool:
    """Whether a stored run holds the evaluation EMA over all its epochs (a run resumed from a
    checkpoint written before the EMA holds it only from the resumed epoch on)."""
    return record.get("max_ema_test_top_share") is not None and record.get("ema_since_epoch") == 0


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
