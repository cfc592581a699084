"""Robust IEG against the baselines a user would run instead, where label noise hurts (issue 22).

``--config cpumem`` (the configuration where plain training memorises the noise): CIFAR-10 from the
JPEG archives in ``../shared/data/cifar10-jpeg`` (skipped cleanly when absent), downsampled to
16x16 (2x2 average of the uint8 pixels). Per seed: 10 trusted images per class drawn first by their
clean labels (the probe set, 100 images), then a stratified pool of 9,000 images whose labels get
the noise; from the pool, 1,000 random images are the **noisy validation split** (their noisy
labels are all that selection reads; their clean labels give the oracle row only) and 8,000 the
training set. ``SmallCNN(width=26, blocks=4)`` (0.26M parameters), 40 epochs of 62 steps, batch
128 + probe batch 100, SGD lr 0.1 momentum 0.9 weight decay 5e-4, one cosine decay over the run,
one torch thread. Every method sees the same weak view (a random horizontal flip, no crop: with a
crop, plain needs more epochs than one robust IEG run can afford here to fit the noise, see the
sizing table in docs/results.md); those with a strong view get AutoAugment's CIFAR-10 policy (per
image, made once per epoch outside the step), a 1-pixel pad-crop, flip and an 8x8 cutout.

Methods (``METHODS``; each ``recipes`` baseline with its paper's defaults): plain, plain_plus (CE
+ strong view + MixUp with the trusted images in every batch), trusted_only (plain on the 100
trusted images, tiled to the training-set size so that steps and epochs match), gce, sce, glc
(second stage; its C_hat comes from the plain run of the same setting and seed, the first stage, at its
epoch with the best accuracy on the noisy validation labels; so plain runs first), forward_online (our one-run variant), small_loss (tau = 1 - the mean
diagonal of that C_hat), l2r, l2r_gce (meta reweighting over GCE), robust_ieg, and robust_ieg_glc
(robust IEG whose label posterior uses that C_hat instead of its symmetric channel). Candidates for
selection (``CANDIDATES``: at most 3 per method) are stored as ``method/option=value``.

Each evaluation (after every epoch, eval mode, no augmentation) records the accuracy on 2,000
training images' noisy labels (``fit_noisy``) and clean labels (``fit_clean``), on the noisy and
clean validation labels, and on the test split (10,000 images); for robust_ieg also its teacher's
(``iegkit.evaluation_weights``). Nothing is chosen on the test split or the clean labels:
``--report-only`` selects each method's candidate by the final-epoch accuracy on the noisy
validation labels (seed 0, per setting), reports the final epoch and the mean of the last three
evaluations, and paired differences over seeds with a 95% t interval.

Each (setting, method, seed) run is appended to ``benchmarks/results/baselines_cpumem.jsonl`` as
it finishes and skipped on restart; a run checkpoints every epoch
(``benchmarks/results/baselines_cpumem/checkpoints/``, git-ignored) and resumes from it.
``--shard i/n`` takes whole (setting, seed) groups, so plain runs before glc and small_loss in the
same process.

    .venv/bin/python -m benchmarks.baselines --list-runs
    nohup .venv/bin/python -m benchmarks.baselines --shard 0/2 --no-progress > runs/baselines_0.log 2>&1 &
    nohup .venv/bin/python -m benchmarks.baselines --shard 1/2 --no-progress > runs/baselines_1.log 2>&1 &
    .venv/bin/python -m benchmarks.baselines --report-only          # -> docs/results.md, docs/figures/
    .venv/bin/python -m benchmarks.baselines --dry-run              # the smoke test (tests/)
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]

from benchmarks import cifar_runs as cifar
from benchmarks.results_io import run_provenance, t_interval, write_section
from iegkit import recipes, training
from iegkit.augment import strong_augment, weak_augment
from iegkit.data import NoisyDataset, split_trusted
from iegkit.functional import noise_rate_from_transition
from iegkit.models import SmallCNN

HEADING = "Baselines where noise hurts, --config cpumem (benchmarks/baselines.py)"
STORE = REPO / "benchmarks" / "results" / "baselines_cpumem.jsonl"
SETTINGS = ("uniform:0.4", "uniform:0.8", "asymmetric:0.4")


@dataclasses.dataclass(frozen=True)
class Config:
    name: str = "cpumem"
    resolution: int = 16
    pool: int = 9000  # noisy images per seed: validation + training
    val_size: int = 1000  # carved from the pool, with its noisy labels
    width: int = 26
    blocks: int = 4
    epochs: int = 40
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    weak_pad: int = 0  # 0: flip only
    strong_pad: int = 1
    cutout: int = 8
    threads: int = 1
    fit_sample: int = 2000  # training images whose fit is measured after every epoch


CONFIG = Config()

#: name -> (recipe, options). The first entry of each method is its paper's default.
CANDIDATES: dict[str, dict[str, dict]] = {
    # in the order they run within a (setting, seed) group: what decides the table first
    "plain": {"plain": {}},
    "robust_ieg": {"robust_ieg": {}, "robust_ieg/shrink_0.5": {"meta_shrinkage": 0.5},
                   "robust_ieg/shrink_1": {"meta_shrinkage": 1.0}},
    "plain_plus": {"plain_plus": {}, "plain_plus/mixup_weight=5": {"mixup_weight": 5.0}},
    "glc": {"glc": {}, "glc/trusted_weight=0.1": {"trusted_weight": 0.1}},
    # a composition: robust IEG's label posterior through GLC's class-conditional C_hat (from the
    # same first-stage plain model as glc) instead of its symmetric channel
    "robust_ieg_glc": {"robust_ieg_glc": {}},
    "l2r_gce": {"l2r_gce": {}},
    "gce": {"gce": {}, "gce/q=0.4": {"q": 0.4}, "gce/q=0.9": {"q": 0.9}},
    "sce": {"sce": {}, "sce/alpha=1": {"alpha": 1.0}, "sce/beta=0.5": {"beta": 0.5}},
    "small_loss": {"small_loss": {}, "small_loss/rampup_epochs=5": {"rampup_epochs": 5.0}},
    "forward_online": {"forward_online": {},
                       "forward_online/estimate_fraction=0.3": {"estimate_fraction": 0.3}},
    "l2r": {"l2r": {}},
    "trusted_only": {"trusted_only": {}},
}
METHODS = tuple(CANDIDATES)
#: diagnostics, not candidates (never selected): why robust IEG fits the noise at uniform 0.8
ABLATIONS: dict[str, tuple[str, dict]] = {
    # its label posterior's running accuracy estimate rises as the teacher fits the given labels
    "robust_ieg/no_posterior": ("robust_ieg", {"label_posterior": False}),
}
VARIANTS = {**{name: (method, options) for method, group in CANDIDATES.items()
               for name, options in group.items()}, **ABLATIONS}
#: rough ms per step on one shared core (only to balance --shard)
STEP_MS = {"plain": 110, "trusted_only": 90, "plain_plus": 320, "gce": 110, "sce": 110,
           "glc": 130, "forward_online": 130, "small_loss": 110, "l2r": 220, "l2r_gce": 220,
           "robust_ieg": 700, "robust_ieg_glc": 700}
#: needs the final plain model of its setting and seed (C_hat, GLC's first stage)
NEEDS_PLAIN = ("glc", "small_loss", "robust_ieg_glc")


@dataclasses.dataclass(frozen=True)
class Run:
    setting: str
    variant: str
    seed: int

    @property
    def method(self) -> str:
        return VARIANTS[self.variant][0]

    def key(self, label: str) -> str:
        return f"{self.setting}|{self.variant}|{self.seed}|{label}"


# --------------------------------------------------------------------------- data


@dataclasses.dataclass
class Split:
    train_images: Tensor  # uint8 (N, 3, r, r)
    train_clean: Tensor
    val_images: Tensor
    val_clean: Tensor
    trusted_images: Tensor
    trusted_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    pool_clean: Tensor  # train then val order: the labels that get noise


def downsample(images: Tensor, resolution: int) -> Tensor:
    """uint8 (N, 3, 32, 32) -> uint8 (N, 3, r, r) by averaging (32 / r)-pixel squares."""
    factor = images.shape[-1] // resolution
    if factor == 1:
        return images
    return F.avg_pool2d(images.float(), factor).round().to(torch.uint8)


def prepare_split(train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], cfg: Config,
                  seed: int) -> Split:
    """Trusted (10 per class by clean label) first, then a stratified pool; a random val_size of
    the pool is the validation split. Depends on the seed only, not on the noise setting."""
    images, labels = train
    generator = torch.Generator().manual_seed(seed)
    trusted_idx, rest = split_trusted(labels, cifar.TRUSTED_PER_CLASS, cifar.NUM_CLASSES, generator)
    pool, _ = cifar.take_stratified(rest, labels, cfg.pool, generator)
    pool = pool[torch.randperm(pool.numel(), generator=generator)]
    val_idx, train_idx = pool[:cfg.val_size], pool[cfg.val_size:]
    small = lambda x: downsample(x, cfg.resolution)  # noqa: E731
    return Split(small(images[train_idx]), labels[train_idx], small(images[val_idx]),
                 labels[val_idx], small(images[trusted_idx]), labels[trusted_idx],
                 small(test[0]), test[1], torch.cat([labels[train_idx], labels[val_idx]]))


def noisy_pool_labels(split: Split, setting: str, seed: int) -> tuple[Tensor, Tensor]:
    kind, rate = cifar.parse_settings(setting)[0]
    noisy = cifar.noisy_labels(split.pool_clean, kind, rate, seed)
    n = split.train_images.shape[0]
    return noisy[:n], noisy[n:]


# --------------------------------------------------------------------------- one run


def build_pipeline(run: Run, model, optimizer, cfg: Config, total_steps: int, per_epoch: int,
                   strong, store: cifar.Store, label: str):
    method, options = VARIANTS[run.variant]
    options = dict(options)
    if method in NEEDS_PLAIN:
        plain = store.runs.get(Run(run.setting, "plain", run.seed).key(label))
        if plain is None:
            raise RuntimeError(f"{run.variant}: needs the plain run of {run.setting}, seed "
                               f"{run.seed} first (GLC's first stage)")
        transition = torch.tensor(plain["transition"], dtype=torch.float64)
        if method == "glc":
            options["transition"] = transition
        elif method == "robust_ieg_glc":
            options["label_transition"] = transition
        else:
            options.update(noise_rate=float(noise_rate_from_transition(transition)),
                           steps_per_epoch=per_epoch)
    if method.startswith("robust_ieg"):
        options["probe_diagnostics_every"] = 10
    recipe = {"trusted_only": "plain", "robust_ieg_glc": "robust_ieg"}.get(method, method)
    return recipes.build(recipe, model, optimizer, total_steps=total_steps, strong_augment=strong,
                         seed=run.seed, **options)


def train_run(run: Run, split: Split, noisy_train: Tensor, noisy_val: Tensor, cfg: Config,
              store: cifar.Store, label: str, *, checkpoint: Path | None, max_steps: int | None,
              progress: bool, on_step=None, finish=None) -> dict:
    """One run; ``on_step(step, indices, out)`` also sees every step and ``finish(pipeline, model)``
    the trained run before the pipeline closes (its dict joins the record)."""
    device = torch.device("cpu")
    torch.manual_seed(run.seed)
    model = SmallCNN(in_channels=3, num_classes=cifar.NUM_CLASSES, width=cfg.width, blocks=cfg.blocks)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9,
                                weight_decay=cfg.weight_decay)
    n = split.train_images.shape[0]
    per_epoch = training.steps_per_epoch(n, cfg.batch_size)
    total = cfg.epochs * per_epoch
    strong = strong_augment("cifar10", value_range=(-1.0, 1.0), pad=cfg.strong_pad,
                            cutout=cfg.cutout, per_image_policy=True)
    pipeline = build_pipeline(run, model, optimizer, cfg, total, per_epoch, strong, store, label)
    train_images, train_labels = split.train_images, noisy_train
    if run.method == "trusted_only":
        train_images, train_labels = cifar.tiled_trusted(split, n)
    views = (cifar.StrongViews(train_images, strong, run.seed, per_epoch, device)
             if "strong" in pipeline.plan.views else None)
    weak = weak_augment(pad=cfg.weak_pad, value_range=(-1.0, 1.0))
    data = NoisyDataset(train_images, train_labels, split.train_clean, split.trusted_images,
                        split.trusted_labels, split.test_images, split.test_labels, cifar.NUM_CLASSES)
    eval_seconds: list[float] = []
    metrics = cifar.EpochMetrics()

    fit_n = min(cfg.fit_sample, n)  # the pool is shuffled: its first images are a random sample

    def accuracies(m: torch.nn.Module) -> dict[str, float]:
        train_pred = cifar.predict(m, split.train_images[:fit_n], device)
        val_pred = cifar.predict(m, split.val_images, device)
        test_pred = cifar.predict(m, split.test_images, device)
        return {"fit_noisy": float((train_pred == noisy_train[:fit_n]).float().mean()),
                "fit_clean": float((train_pred == split.train_clean[:fit_n]).float().mean()),
                "val_noisy": float((val_pred == noisy_val).float().mean()),
                "val_clean": float((val_pred == split.val_clean).float().mean()),
                "test": float((test_pred == split.test_labels).float().mean()),
                "test_top_share": cifar.top_share(test_pred)}

    def evaluate(m: torch.nn.Module) -> dict:
        started = time.perf_counter()
        out: dict = accuracies(m)
        if run.method == "plain":  # GLC's C_hat after every epoch (in the checkpointed history)
            out["transition"] = recipes.glc_transition(
                m, cifar.to_input(split.trusted_images, device), split.trusted_labels).tolist()
        eval_seconds.append(time.perf_counter() - started)
        return out

    def on_epoch(entry: dict) -> None:
        metrics.close_epoch(entry)
        text = ", ".join(f"{k} {100 * v:.1f}" for k, v in entry.items()
                         if isinstance(v, float) and k != "loss")
        print(f"    {run.key(label)} epoch {entry['epoch']}/{cfg.epochs}: loss {entry['loss']:.3f}, "
              f"{text}", flush=True)

    def step_hook(step: int, indices: Tensor, out) -> None:
        metrics.on_step(out)
        if on_step is not None:
            on_step(step, indices, out)

    result = training.fit(
        pipeline, model, optimizer, data, epochs=cfg.epochs, batch_size=cfg.batch_size,
        weak_augment=lambda images, generator=None: weak(cifar.to_input(images, device),
                                                         generator=generator),
        seed=run.seed, evaluate=evaluate, evaluate_average=True, on_epoch=on_epoch,
        on_step=step_hook, views=views,
        checkpoint=None if max_steps is not None else checkpoint,
        resume=max_steps is None and checkpoint is not None and checkpoint.exists(),
        max_steps=max_steps, progress=progress, desc=run.variant)
    extra = finish(pipeline, model) if finish is not None else {}
    pipeline.close()
    timing = cifar.run_timing(result.seconds, eval_seconds, views, metrics.steps_run)
    record = {
        "setting": run.setting, "variant": run.variant, "method": run.method, "seed": run.seed,
        "history": result.history, "final": result.history[-1],
        "ms_per_step": timing["ms_per_step"], "steps": result.steps,
        "steps_this_session": metrics.steps_run, "seconds": result.seconds,
        "wrong_labels": float((noisy_train != split.train_clean).float().mean()),
        "n_train": n, "n_val": int(split.val_images.shape[0]),
        "n_trusted": int(split.trusted_images.shape[0]),
    }
    if run.method == "plain":
        # GLC's first stage: C_hat of the plain model at its best epoch on the noisy validation
        # labels (early stopping with what a user has; the final, memorised model confuses its own
        # errors with label noise: C_hat's noise rate was 0.62 where 0.36 of the labels are wrong)
        best = max(result.history, key=lambda entry: entry["val_noisy"])
        record.update(transition=best["transition"], transition_epoch=best["epoch"])
    record.update(extra)
    return record


def load_data(data_dir: Path, cfg: Config, dry_run: bool) -> tuple[tuple[Tensor, Tensor], ...]:
    """(train, test) as (uint8 images, labels): all of CIFAR-10, or its head for a dry run."""
    if dry_run:
        return (cifar.load_cifar10_head(data_dir, "train", cifar.TRUSTED_PER_CLASS + cfg.pool // 10),
                cifar.load_cifar10_head(data_dir, "test", 20))
    from iegkit.datasets import load_cifar10_jpeg

    return (load_cifar10_jpeg(data_dir, "train", verbose=True)[:2],
            load_cifar10_jpeg(data_dir, "test", verbose=True)[:2])


# --------------------------------------------------------------------------- run list


def config_label(cfg: Config, dry_run: bool) -> str:
    diff = [f"{k}={v}" for k, v in dataclasses.asdict(cfg).items()
            if dataclasses.asdict(CONFIG)[k] != v]
    return ",".join([cfg.name, *diff, *(["dry_run"] if dry_run else [])])


def selected_variant(store: cifar.Store, method: str, setting: str, label: str) -> str | None:
    """The candidate with the best final accuracy on the noisy validation labels at seed 0, once
    every candidate of the method has its seed-0 run; None before."""
    names = list(CANDIDATES[method])
    records = [store.runs.get(Run(setting, name, 0).key(label)) for name in names]
    if any(r is None for r in records):
        return None
    return max(zip(names, records), key=lambda nr: nr[1]["final"]["val_noisy"])[0]


def run_list(store: cifar.Store, settings: Sequence[str], methods: Sequence[str], seeds: int,
             label: str, candidates: bool, ablations: bool = False) -> list[Run]:
    """Seed 0 of every method's default, (with ``candidates``) its other candidates, (with
    ``ablations``) the ABLATIONS, then seeds 1.. of each method's selected candidate (the default
    until its candidates are all in)."""
    runs = []
    for setting in settings:
        for method in methods:
            names = list(CANDIDATES[method])
            runs.append(Run(setting, names[0], 0))
            if candidates:
                runs += [Run(setting, name, 0) for name in names[1:]]
        if ablations:
            runs += [Run(setting, name, 0) for name in ABLATIONS]
        for seed in range(1, seeds):
            for method in methods:
                chosen = selected_variant(store, method, setting, label) or next(iter(CANDIDATES[method]))
                runs.append(Run(setting, chosen, seed))
    return runs


def shard_of(runs: Sequence[Run], shards: int) -> dict[Run, int]:
    """Whole (setting, seed) groups to the shard with the least estimated work so far."""
    groups: dict[tuple[str, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.setting, run.seed), []).append(run)
    load, owner = [0.0] * shards, {}
    for group in groups.values():
        shard = min(range(shards), key=lambda i: load[i])
        for run in group:
            owner[run] = shard
            load[shard] += STEP_MS[run.method]
    return owner


# --------------------------------------------------------------------------- report


def last3(record: dict, key: str = "test") -> float:
    return statistics.mean(h[key] for h in record["history"][-3:])


def report(store: cifar.Store, settings: Sequence[str], label: str, figure_dir: Path) -> str:
    lines = ["Reprint: `.venv/bin/python -m benchmarks.baselines --report-only`; runs: "
             "`.venv/bin/python -m benchmarks.baselines --shard i/2 --no-progress` (i = 0, 1; add "
             "`--seeds N`, `--candidates`, `--ablations`).", "",
             f"Stored runs: `{store.path.name}` in `benchmarks/results/` (configuration `{label}`). Selection: each "
             "method's candidate with the best final accuracy on the **noisy** validation labels "
             "(seed 0, per setting); test accuracy is never read to choose. Accuracy in %: final "
             "epoch (mean of the last 3 evaluations), mean over seeds.", ""]
    for setting in settings:
        rows, finals = [], {}
        for method in METHODS:
            chosen = selected_variant(store, method, setting, label) or next(iter(CANDIDATES[method]))
            records = [r for r in store.runs.values() if r.get("config") == label
                       and r["setting"] == setting and r["variant"] == chosen]
            if not records:
                continue
            records.sort(key=lambda r: r["seed"])
            finals[method] = {r["seed"]: r for r in records}
            final = statistics.mean(r["final"]["test"] for r in records)
            best = statistics.mean(max(h["test"] for h in r["history"]) for r in records)
            fit = statistics.mean(r["final"]["fit_noisy"] for r in records)
            rows.append((method, chosen, len(records), final, statistics.mean(map(last3, records)),
                         best, fit, statistics.mean(r["final"]["val_noisy"] for r in records),
                         statistics.mean(r["final"]["val_clean"] for r in records),
                         statistics.mean(r["ms_per_step"] for r in records), records))
        if not rows:
            continue
        lines += [f"#### {setting}", "",
                  "| method | selected | seeds | test final | test last 3 | (best epoch) | fit noisy "
                  "| val noisy | val clean (oracle) | ms/step |", "|" + " --- |" * 10]
        for method, chosen, n, final, l3, best, fit, vn, vc, ms, records in rows:
            extra = ""
            if method.startswith("robust_ieg") and "average_test" in records[0]["final"]:
                extra = f" (teacher {100 * statistics.mean(r['final']['average_test'] for r in records):.1f})"
            lines.append(f"| {method} | `{chosen}` | {n} | {100 * final:.1f}{extra} | {100 * l3:.1f} | "
                         f"({100 * best:.1f}) | {100 * fit:.1f} | {100 * vn:.1f} | {100 * vc:.1f} | "
                         f"{ms:.0f} |")
        lines += ["", "glc, small_loss and robust_ieg_glc also pay for plain's run (GLC's first "
                  "stage, the plain row's ms/step over the same steps).", ""]
        lines += comparisons(rows, finals) + posterior_lines(finals)
        for name in ABLATIONS:
            record = store.runs.get(Run(setting, name, 0).key(label))
            default = finals.get("robust_ieg", {}).get(0)
            if record is not None and default is not None:
                lines.append(f"- ablation `{name}` (seed 0): final test {100 * record['final']['test']:.1f} "
                             f"against {100 * default['final']['test']:.1f}; fits "
                             f"{100 * record['final']['fit_noisy']:.1f}% of the noisy labels against "
                             f"{100 * default['final']['fit_noisy']:.1f}%.")
        lines.append("")
    lines[4:4] = summary(store, settings, label)
    plot_memorisation(store, label, figure_dir / "baselines_cpumem_plain.png")
    lines.append("Plain's curves (seed 0): `docs/figures/baselines_cpumem_plain.png`.")
    return "\n".join(lines)


def summary(store: cifar.Store, settings: Sequence[str], label: str) -> list[str]:
    """One line per method: its selected candidate's final test accuracy per setting (mean over
    seeds, the seed count in brackets)."""
    lines = ["| method | " + " | ".join(settings) + " |", "|" + " --- |" * (len(settings) + 1)]
    for method in METHODS:
        cells = []
        for setting in settings:
            chosen = selected_variant(store, method, setting, label) or next(iter(CANDIDATES[method]))
            finals = [r["final"]["test"] for r in store.runs.values() if r.get("config") == label
                      and r["setting"] == setting and r["variant"] == chosen]
            cells.append(f"{100 * statistics.mean(finals):.1f} ({len(finals)})" if finals else "")
        if any(cells):
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return ["Final test accuracy % (seeds), every setting:", "", *lines, ""]


def posterior_lines(finals: dict) -> list[str]:
    """Why robust_ieg and robust_ieg_glc differ: the label posterior's estimate of the fraction of
    correct given labels (its channel's diagonal) at the final epoch, against the truth."""
    out = []
    key = "noisy_label_posterior/label_accuracy"
    for method in ("robust_ieg", "robust_ieg_glc"):
        records = [r for r in finals.get(method, {}).values() if key in r["final"].get("metrics", {})]
        if records:
            estimate = statistics.mean(r["final"]["metrics"][key] for r in records)
            truth = statistics.mean(1 - r["wrong_labels"] for r in records)
            fit = statistics.mean(r["final"]["fit_noisy"] for r in records)
            out.append(f"- {method}: its label posterior takes {100 * estimate:.1f}% of the given "
                       f"labels to be right in the final epoch ({100 * truth:.1f}% are); it fits "
                       f"{100 * fit:.1f}% of them (seeds {sorted(r['seed'] for r in records)}).")
    return out


def paired_line(name: str, finals: dict, a: str, b: str, key_a: str = "test") -> str | None:
    seeds = sorted(set(finals.get(a, {})) & set(finals.get(b, {})))
    if not seeds:
        return None
    diffs = [finals[a][s]["final"][key_a] - finals[b][s]["final"]["test"] for s in seeds]
    return f"- {name}: {t_interval(diffs)} points (seeds {seeds})."


def comparisons(rows: list, finals: dict) -> list[str]:
    """The issue's checks, as paired differences of final test accuracy over the common seeds."""
    out = []
    plain = finals.get("plain", {})
    for seed, record in sorted(plain.items()):
        best = max(h["test"] for h in record["history"])
        out.append(f"- plain, seed {seed}: final {100 * record['final']['test']:.1f}, "
                   f"{100 * (best - record['final']['test']):.1f} below its best epoch; fits "
                   f"{100 * record['final']['fit_noisy']:.1f}% of the noisy training labels.")
    baselines = [r for r in rows if r[0] not in ("robust_ieg", "robust_ieg_glc", "trusted_only")]
    if baselines:
        best = max(baselines, key=lambda r: r[3])[0]
        for ours in ("robust_ieg", "robust_ieg_glc"):
            for key, what in (("test", "trained weights"), ("average_test", "teacher")):
                line = paired_line(f"{ours} ({what}) − best baseline ({best})", finals, ours, best, key)
                if line and (key == "test" or "average_test" in next(iter(finals[ours].values()))["final"]):
                    out.append(line)
    line = paired_line("plain_plus − plain", finals, "plain_plus", "plain")
    if line:
        out.append(line)
    return out


def plot_memorisation(store: cifar.Store, label: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [store.runs.get(Run(s, "plain", 0).key(label)) for s in SETTINGS]
    records = [r for r in records if r is not None]
    if not records:
        return
    fig, axes = plt.subplots(1, len(records), figsize=(4.2 * len(records), 3.4), squeeze=False)
    for ax, record in zip(axes[0], records):
        epochs = [h["epoch"] for h in record["history"]]
        for key, name in (("fit_noisy", "train, noisy labels"), ("fit_clean", "train, clean labels"),
                          ("val_noisy", "validation, noisy labels"), ("test", "test")):
            ax.plot(epochs, [100 * h[key] for h in record["history"]], label=name)
        ax.set_title(f"plain, {record['setting']}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy %")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("CIFAR-10 16x16, 8k noisy images, SmallCNN 0.26M (--config cpumem)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(cifar.DEFAULT_DATA))
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--candidates", action="store_true",
                        help="also every method's other candidates at seed 0 (selection)")
    parser.add_argument("--ablations", action="store_true",
                        help="also the ABLATIONS of robust_ieg at seed 0 (diagnostics)")
    parser.add_argument("--epochs", type=int, default=None, help="override (a sizing run)")
    parser.add_argument("--weak-pad", type=int, default=None, help="override (a sizing run)")
    parser.add_argument("--store", default=None)
    parser.add_argument("--shard", default="0/1")
    parser.add_argument("--list-runs", action="store_true")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--write", default=str(REPO / "docs" / "results.md"))
    parser.add_argument("--figures-dir", default=str(REPO / "docs" / "figures"))
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny sizes (300 pool, 100 validation, width 8, 2 epochs of 3 steps)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in CANDIDATES]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {list(METHODS)}")
    for setting in settings:
        cifar.parse_settings(setting)
    if not re.fullmatch(r"\d+/\d+", args.shard):
        parser.error(f"--shard: expected I/N, got {args.shard!r}")
    shard, shards = (int(x) for x in args.shard.split("/"))
    if not 0 <= shard < shards:
        parser.error(f"--shard: expected 0 <= I < N, got {args.shard!r}")
    cfg = CONFIG
    overrides = {}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.weak_pad is not None:
        overrides["weak_pad"] = args.weak_pad
    if args.dry_run:
        overrides.update(pool=300, val_size=100, width=8, epochs=2, batch_size=64)
    cfg = dataclasses.replace(cfg, **overrides)
    label = config_label(cfg, args.dry_run)
    store_path = Path(args.store) if args.store else (
        REPO / "runs" / "baselines_dry.jsonl" if args.dry_run else STORE)
    store = cifar.Store(store_path)
    if args.report_only:
        body = report(store, settings, label, Path(args.figures_dir))
        print(body)
        if args.write:
            write_section(args.write, HEADING, body)
        return 0
    runs = run_list(store, settings, methods, args.seeds, label, args.candidates, args.ablations)
    owner = shard_of(runs, shards)
    if args.list_runs:
        for run in runs:
            state = "done" if run.key(label) in store.runs else "todo"
            print(f"shard {owner[run]}/{shards}  {state}  {run.key(label)}")
        return 0
    data_dir = Path(args.data)
    if not ((data_dir / "train.tar.gz").is_file() and (data_dir / "test.tar.gz").is_file()):
        print(f"baselines: CIFAR-10 JPEG archives not found in {data_dir}; skipping.")
        return 0
    torch.set_num_threads(cfg.threads)
    train, test = load_data(data_dir, cfg, args.dry_run)
    splits: dict[int, Split] = {}
    mine = [run for run in runs if owner[run] == shard]
    print(f"{label}: {dataclasses.asdict(cfg)}; shard {shard}/{shards}: {len(mine)} runs", flush=True)
    for run in mine:
        key = run.key(label)
        store.reload()
        if key in store.runs:
            continue
        if run.seed not in splits:
            splits[run.seed] = prepare_split(train, test, cfg, run.seed)
        split = splits[run.seed]
        noisy_train, noisy_val = noisy_pool_labels(split, run.setting, run.seed)
        checkpoint = store_path.with_suffix("") / "checkpoints" / (re.sub(r"[^A-Za-z0-9_.=-]+", "_", key) + ".pt")
        started = time.perf_counter()
        record = train_run(run, split, noisy_train, noisy_val, cfg, store, label,
                           checkpoint=checkpoint, max_steps=3 if args.dry_run else None,
                           progress=not args.no_progress and sys.stderr.isatty())
        record.update({"config": label, "cfg": dataclasses.asdict(cfg), **run_provenance(argv, split)})
        store.add(key, record)
        checkpoint.unlink(missing_ok=True)
        final = record["final"]
        print(f"{key}: test {100 * final['test']:.1f}, val noisy {100 * final['val_noisy']:.1f}, "
              f"fit noisy {100 * final['fit_noisy']:.1f}; {record['ms_per_step']:.0f} ms/step, "
              f"{(time.perf_counter() - started) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
