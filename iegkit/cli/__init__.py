"""The ``iegkit`` command line: train a recipe on an image folder (or the digits default) with
synthetic or supplied noise, checkpoint, resume, and write a report and plots.

    iegkit train --data DIR --noise uniform:0.8 --trusted-per-class 10 --recipe ieg --epochs 30 --out RUN/
    iegkit train --resume RUN/
    python -m iegkit.cli train ...

A run folder keeps ``config.json``, ``checkpoint.pt``, ``history.csv`` (per-epoch metrics),
``model.pt`` (the weights to deploy: the
recipe's weight average where it keeps one, ``iegkit.evaluation_weights``; a plain state dict,
``model.load_state_dict(torch.load("RUN/model.pt", weights_only=True))``), ``summary.json``, the
report and the plots. ``--out`` refuses a folder that already holds a run unless ``--overwrite``.

The loop is ``iegkit.training``; the noise specs are parsed in ``iegkit.cli.noise_specs``.

Exit codes: 0 success; 2 invalid arguments (including the noise spec); 3 a data problem (missing
folder, unreadable image, too few images per class for the trusted set); 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from iegkit import recipes, training
from iegkit.data import NoisyDataset, load_digits, split_trusted, stratified_split
from iegkit.parts import SGDRSchedule

__all__ = ["main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_DATA = 0, 1, 2, 3


class DataError(Exception):
    """A problem with the user's data that they can fix."""


class UsageError(Exception):
    """An invalid argument value."""


@dataclass(frozen=True)
class RunConfig:
    data: str | None
    noise: str
    trusted_per_class: int
    recipe: str
    epochs: int
    batch_size: int
    lr: float
    seed: int
    test_fraction: float
    image_size: int | None
    checkpoint_every: int
    width: int
    model: str = "small_cnn"  # runs written before --model existed have none: SmallCNN
    stream: bool = False  # read training and test images from disk at each step (ImageFiles)
    label_transition: str | None = None  # C_hat (JSON) for robust_ieg's posterior and the report


def _load_folder(root: Path, image_size: int | None, stream: bool = False):
    """(images, labels, class names): a [-1, 1] tensor, or with ``stream`` an ``ImageFiles``
    that reads each image from disk when a step asks for it."""
    from iegkit.datasets import ImageFiles, list_image_folder, load_image_folder

    if not root.is_dir():
        raise DataError(f"--data: no folder at {root}")
    try:
        if stream:
            paths, labels, names = list_image_folder(root)
            return ImageFiles(paths, image_size=image_size), labels, list(names)
        images, labels, names = load_image_folder(root, image_size=image_size)
    except (OSError, ValueError) as error:
        raise DataError(f"--data: {error}") from error
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    return images * 2.0 - 1.0, labels, list(names)


def build_splits(config: RunConfig) -> NoisyDataset:
    """Deterministic in ``config.seed``: test split, trusted set (before noise), noise."""
    from iegkit.cli.noise_specs import apply_noise, parse_noise_spec

    try:
        spec = parse_noise_spec(config.noise)
    except ValueError as error:
        raise UsageError(str(error)) from error
    generator = torch.Generator().manual_seed(config.seed)
    if config.data is None:
        try:
            images, labels = load_digits()
        except ModuleNotFoundError as error:
            raise UsageError(f"the default data (scikit-learn's digits) needs {error.name}: pip "
                             "install 'iegkit[demo]', or pass --data DIR") from None
        names = [str(d) for d in range(10)]
        train_root = None
    else:
        root = Path(config.data)
        train_root = root / "train" if (root / "train").is_dir() and (root / "test").is_dir() \
            else None
        if train_root is not None:
            images, labels, names = _load_folder(train_root, config.image_size, config.stream)
            test_images, test_labels, test_names = _load_folder(root / "test", config.image_size,
                                                                config.stream)
            if test_names != names:
                raise DataError(f"--data: {root}/test has classes {test_names}, {root}/train has "
                                f"{names}")
        else:
            images, labels, names = _load_folder(root, config.image_size, config.stream)
    num_classes = len(names)
    take = (lambda x, idx: x.subset(idx)) if config.stream else (lambda x, idx: x[idx])
    if train_root is None:
        train_idx, test_idx = stratified_split(labels, config.test_fraction, num_classes,
                                                generator)
        test_images, test_labels = take(images, test_idx), labels[test_idx]
        images, labels = take(images, train_idx), labels[train_idx]
    try:
        trusted, rest = split_trusted(labels, config.trusted_per_class, num_classes, generator)
    except ValueError as error:
        raise DataError(f"--trusted-per-class: {error}") from error
    clean = labels[rest]
    try:
        noisy = apply_noise(spec, clean, num_classes, generator,
                            features=None if config.stream else images[rest].flatten(1))
    except (ValueError, OSError) as error:
        raise UsageError(f"--noise: {error}") from error
    trusted_images = images[trusted]  # a stack in memory even when streaming: the probe set is small
    return NoisyDataset(take(images, rest), noisy, clean, trusted_images, labels[trusted],
                        test_images, test_labels, num_classes, tuple(names))


def model_factory(spec: str, width: int):
    """``--model``: "small_cnn" (SmallCNN of ``width``), "timm:NAME" (``timm.create_model``, no
    pretrained weights; the ``timm`` extra) or "MODULE:FACTORY", the user's own network, called as
    ``FACTORY(in_channels=C, num_classes=K)``. Returns ``(in_channels, num_classes) -> model``."""
    import importlib

    from iegkit.models import SmallCNN

    if spec == "small_cnn":
        return lambda channels, classes: SmallCNN(in_channels=channels, num_classes=classes,
                                                  width=width)
    source, sep, name = spec.partition(":")
    if not (sep and source and name):
        raise UsageError(f"--model: expected small_cnn, timm:NAME or MODULE:FACTORY, got {spec!r}")
    if source == "timm":
        try:
            timm = importlib.import_module("timm")
        except ModuleNotFoundError:
            raise UsageError(f"--model {spec}: needs timm: pip install 'iegkit[timm]'") from None
        if name not in timm.list_models():
            raise UsageError(f"--model {spec}: timm has no model {name!r}")
        return lambda channels, classes: timm.create_model(name, pretrained=False,
                                                           num_classes=classes, in_chans=channels)
    try:
        factory = getattr(importlib.import_module(source), name)
    except (ImportError, AttributeError) as error:
        raise UsageError(f"--model {spec}: {error}") from None
    if not callable(factory):
        raise UsageError(f"--model {spec}: {name} is not callable")
    return lambda channels, classes: factory(in_channels=channels, num_classes=classes)


def resolve_device(name: str) -> torch.device:
    """--device: auto is cuda when available, else cpu; cuda without a GPU is a usage error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device cuda: no CUDA device (torch {torch.__version__}); use "
                         "--device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise UsageError(f"--device: expected auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def resolve_amp(name: str) -> torch.dtype | None:
    """--amp: the autocast dtype of each step; fp16 is refused (it needs loss scaling)."""
    if name == "fp16":
        raise UsageError("--amp fp16: not supported (float16 needs loss scaling, which the meta "
                         "step has not been validated with); use --amp bf16")
    if name not in ("none", "bf16"):
        raise UsageError(f"--amp: expected none, bf16 or fp16, got {name!r}")
    return torch.bfloat16 if name == "bf16" else None


def train_run(config: RunConfig, out: Path, *, resume: bool = False, progress: bool = True,
              stop_after: int | None = None, device: torch.device | None = None,
              autocast: torch.dtype | None = None, workers: int = 0) -> dict:
    """Train (or continue) a run in ``out``; returns the final summary. ``stop_after`` ends this
    session after that many epochs (checkpointed; continue with ``resume=True``). ``device`` (CPU
    by default) holds the model and the data; ``autocast``: see ``training.fit``."""
    from iegkit.diagnostics import (
        CollapseMonitor,
        StepRecorder,
        noisy_label_report,
        plot_collapse,
        plot_curves,
        plot_lambda_curves,
        plot_weight_histogram,
    )
    from iegkit.functional.collapse import collapse_threshold

    splits = build_splits(config).to(device or "cpu")
    per_epoch = training.steps_per_epoch(splits.train_inputs.shape[0], config.batch_size)
    is_noisy = splits.train_labels != splits.train_clean_labels
    recorder = StepRecorder(splits.train_inputs.shape[0], is_noisy=is_noisy,
                            steps_per_epoch=per_epoch)

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        return {"probe_accuracy": training.accuracy(model, splits.trusted_inputs,
                                                    splits.trusted_labels),
                "test_accuracy": training.accuracy(model, splits.test_inputs, splits.test_labels)}

    monitor = CollapseMonitor()

    def on_step(step: int, indices: Tensor, out) -> None:
        recorder.record(step, indices, out)
        monitor.record(out)

    writer = tensorboard_writer(out / "tensorboard")

    def on_epoch(entry: dict) -> None:
        summary = monitor.epoch_summary()
        entry.update(summary)
        if writer is not None:
            for name, value in entry.items():
                if isinstance(value, (int, float)) and name not in ("epoch", "step"):
                    writer.add_scalar(name, value, entry["epoch"])
            writer.flush()
        if monitor.should_warn():
            print(f"iegkit: warning: epoch {entry['epoch']}: {100 * summary['pseudo_top_share']:.0f}% "
                  f"of a batch's pseudo labels share one class on average, above "
                  f"{100 * monitor.threshold:.0f}% for "
                  f"{monitor.epochs_above} epochs in a row (uniform: "
                  f"{100 / monitor.num_classes:.0f}%): the pseudo labels are concentrating; "
                  + ("check their probe accuracy in collapse.png" if config.recipe.startswith(
                      "robust") else "try --recipe robust_ieg"), file=sys.stderr)

    # SGDR (first cycle one epoch, t_mul 1.5, m_mul 0.9: the paper's) for every recipe, as a torch
    # scheduler: it has no fixed length, so a resumed run may be extended with --epochs.
    transition = read_transition(config, splits.num_classes)
    result = training.train(
        config.recipe, splits, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
        seed=config.seed, width=config.width, evaluate=evaluate, on_step=on_step,
        model_factory=model_factory(config.model, config.width), device=device,
        autocast=autocast, num_workers=workers if config.stream else 0, on_epoch=on_epoch,
        evaluate_average=True,
        scheduler=lambda optimizer, _total: SGDRSchedule(optimizer, per_epoch),
        checkpoint=out / "checkpoint.pt", checkpoint_every=config.checkpoint_every,
        resume=resume, state={"recorder": recorder}, stop_after=stop_after, progress=progress,
        desc=config.recipe,
        recipe_options=None if transition is None else {"label_transition": transition})
    if writer is not None:
        writer.close()
    history = result.history
    report = noisy_label_report(recorder, splits.train_labels, splits.train_clean_labels,
                                posterior=deployed_posterior(result, splits.train_inputs,
                                                             splits.train_labels, transition),
                                **meta_shrinkage(result.pipeline))
    (out / "report.md").write_text(report.to_markdown())
    (out / "report.json").write_text(report.to_json())
    plot_curves(history, out / "curves.png")
    if any("pseudo_top_share" in h for h in history):
        plot_collapse(history, out / "collapse.png", threshold=collapse_threshold(
            splits.num_classes, monitor.factor) if splits.num_classes >= 2 else None)
    if recorder.has_weights:
        plot_weight_histogram(recorder, None, out / "weights.png")
    if recorder.has_weights or recorder.has_relabel:
        plot_lambda_curves(recorder, None, out / "lambda.png")
    save_deployable(result, out / "model.pt")
    if config.recipe == "plain":
        write_transition(result, splits, out / "transition.json")
    write_history_csv(history, out / "history.csv")
    summary = {"final": result.final, "epochs": len(history),
               "realised_noise": float(is_noisy.float().mean())}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


#: the files a run writes into its folder (``--overwrite`` removes them first)
RUN_FILES = ("config.json", "checkpoint.pt", "model.pt", "summary.json", "history.csv", "report.md",
             "report.json", "curves.png", "collapse.png", "weights.png", "lambda.png", "tensorboard",
             "transition.json")


def deployed_posterior(result: training.FitResult, inputs: Tensor, labels: Tensor,
                       transition: Tensor | None = None):
    """The label posterior's flags on the softmax of the weights to deploy, under C_hat when
    given, else the symmetric channel with r fitted to the model: the report's label issues."""
    from iegkit.diagnostics import find_label_issues, predicted_probabilities
    from iegkit.ema import evaluation_weights

    with evaluation_weights(result.pipeline):
        probs = predicted_probabilities(result.model, inputs)
    return find_label_issues(probs, labels, transition=transition)


def read_transition(config: RunConfig, num_classes: int) -> Tensor | None:
    """--label-transition: a (C, C) row-stochastic C_hat from a JSON file (a plain run's
    RUN/transition.json), for robust_ieg only."""
    if config.label_transition is None:
        return None
    if config.recipe != "robust_ieg":
        raise UsageError(f"--label-transition: only --recipe robust_ieg takes a noise channel, "
                         f"not {config.recipe}")
    path = Path(config.label_transition)
    try:
        matrix = torch.tensor(json.loads(path.read_text()), dtype=torch.float64)
    except (OSError, ValueError, TypeError) as error:
        raise UsageError(f"--label-transition: cannot read a matrix from {path}: {error}") from None
    if matrix.shape != (num_classes, num_classes) or (matrix < 0).any() or not torch.allclose(
            matrix.sum(-1), torch.ones(num_classes, dtype=torch.float64), atol=1e-4):
        raise UsageError(f"--label-transition: {path} must hold a {num_classes}x{num_classes} "
                         f"matrix with non-negative rows summing to 1, got shape "
                         f"{tuple(matrix.shape)}")
    return matrix


def write_transition(result: training.FitResult, splits: NoisyDataset, path: Path) -> None:
    """A plain run's GLC C_hat (``recipes.glc_transition`` of the final model on the trusted set),
    for a second run with --recipe robust_ieg --label-transition (the recipe we recommend)."""
    matrix = recipes.glc_transition(result.model, splits.trusted_inputs, splits.trusted_labels)
    path.write_text(json.dumps(matrix.tolist()))


def meta_shrinkage(pipeline) -> dict[str, float]:
    """The shrinkage of the pipeline's meta parts, so that the report reads omega*, lambda* raw."""
    from iegkit.parts import MetaRelabeler, MetaReweighter

    out: dict[str, float] = {}
    for part in pipeline.parts:
        if isinstance(part, MetaReweighter):
            out["weight_shrinkage"] = part.shrinkage
        elif isinstance(part, MetaRelabeler):
            out.update(relabel_shrinkage=part.shrinkage, label_init=part.label_init)
    return out


def save_deployable(result: training.FitResult, path: Path) -> None:
    """The weights to deploy as a plain state dict: the pipeline's weight average where it keeps
    one (``evaluation_weights``: robust IEG's teacher), else the trained weights."""
    from iegkit.ema import evaluation_weights

    with evaluation_weights(result.pipeline):
        state = {name: value.detach().cpu().clone() for name, value in
                 result.model.state_dict().items()}
    torch.save(state, path)


def tensorboard_writer(folder: Path):
    """A ``SummaryWriter`` logging every epoch's scalars to ``RUN/tensorboard`` where TensorBoard
    is installed (``pip install tensorboard``), else None: history.csv holds the same numbers."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder))


def write_history_csv(history: Sequence[dict], path: Path) -> None:
    """One row per epoch, one column per scalar metric (in the order they first appear)."""
    import csv

    columns: list[str] = []
    for entry in history:
        columns += [k for k, v in entry.items() if isinstance(v, (int, float)) and k not in columns]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


def _claim_run_folder(out: Path, overwrite: bool) -> None:
    """Refuse a folder that holds a run (its checkpoint would be replaced) unless ``overwrite``,
    which removes the old run's files so that none stays beside the new ones."""
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise UsageError(f"--out: {out} already holds a run ({', '.join(existing[:3])}); pass "
                         f"--resume {out} to continue it or --overwrite to replace it")
    for name in existing:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
        else:
            (out / name).unlink()


class _DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Every default in --help, except "None" and "False" (an option not given, a flag off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False):
            return action.help or ""
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    from iegkit import __version__

    parser = argparse.ArgumentParser(prog="iegkit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"iegkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a recipe with a tiny trusted set",
                           formatter_class=_DefaultsShown)
    train.add_argument("--data", help="image-folder root (DIR/<class>/*.png, or DIR/train and "
                       "DIR/test); default: scikit-learn's digits")
    train.add_argument("--noise", default="uniform:0.8", help="noise spec, e.g. uniform:0.8, "
                       "uniform-exclusive:0.4, asymmetric:0.4, pairflip:0.45, instance:0.4, "
                       "file:labels.txt, none")
    train.add_argument("--trusted-per-class", type=int, default=10,
                       help="clean trusted images per class (the probe set)")
    train.add_argument("--recipe", default="ieg", help="the method (recipes.SPECS)",
                       choices=[m for m in recipes.method_names() if not recipes.required_options(m)])
    train.add_argument("--epochs", type=int, help="training epochs (30 for a new run); with "
                       "--resume, extends the run")
    train.add_argument("--batch-size", type=int, default=100, help="training and probe batch")
    train.add_argument("--lr", type=float, default=0.1, help="SGD learning rate")
    train.add_argument("--seed", type=int, default=0, help="seeds the split, the noise and training")
    train.add_argument("--test-fraction", type=float, default=0.3,
                       help="held-out fraction when DIR has no train/test folders")
    train.add_argument("--image-size", type=int, help="resize images to this square size")
    train.add_argument("--label-transition", metavar="JSON",
                       help="robust_ieg only: GLC's C_hat, e.g. RUN/transition.json of an earlier "
                            "--recipe plain run (stopped before it memorises the noise), as the "
                            "label posterior's noise channel in training and in the report")
    train.add_argument("--stream", action="store_true",
                       help="read the training and test images from disk at each step instead of "
                            "loading the folder into memory (the trusted images stay in memory)")
    train.add_argument("--workers", type=int, default=2,
                       help="DataLoader worker processes that read the batches with --stream")
    train.add_argument("--model", default="small_cnn",
                       help="small_cnn, timm:NAME (the timm extra; no pretrained weights) or "
                            "MODULE:FACTORY, your network: FACTORY(in_channels=C, num_classes=K)")
    train.add_argument("--width", type=int, default=32, help="SmallCNN width")
    train.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints")
    train.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                       help="where to train; auto: cuda when available")
    train.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"],
                       help="mixed precision for each step (autocast); fp16 is refused: it needs "
                            "loss scaling, not validated with the meta step")
    train.add_argument("--out", help="run folder (config, checkpoint, model.pt, report, plots)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the run already in --out (its files are removed first)")
    train.add_argument("--resume", metavar="RUN", help="continue the run in RUN/")
    train.add_argument("--stop-after", type=int, metavar="EPOCHS",
                       help="end this session after EPOCHS epochs (continue with --resume)")
    train.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        resolve_device(args.device), resolve_amp(args.amp)  # fail before touching any folder
        if args.resume:
            out = Path(args.resume)
            config_path = out / "config.json"
            if not config_path.is_file():
                raise UsageError(f"--resume: {out} holds no config.json (not an iegkit run folder)")
            config = RunConfig(**json.loads(config_path.read_text()))
            if args.epochs is not None:
                config = RunConfig(**{**asdict(config), "epochs": args.epochs})
        else:
            if not args.out:
                raise UsageError("--out: required (the run folder) unless --resume is given")
            if args.epochs is None:
                args.epochs = 30
            for name in ("trusted_per_class", "epochs", "batch_size", "checkpoint_every"):
                if getattr(args, name) < 1:
                    raise UsageError(f"--{name.replace('_', '-')}: expected >= 1")
            if not 0.0 < args.test_fraction < 1.0:
                raise UsageError("--test-fraction: expected a value in (0, 1)")
            config = RunConfig(args.data, args.noise, args.trusted_per_class, args.recipe,
                               args.epochs, args.batch_size, args.lr, args.seed,
                               args.test_fraction, args.image_size, args.checkpoint_every,
                               args.width, args.model, args.stream, args.label_transition)
            model_factory(config.model, config.width)  # an unknown --model fails here
            out = Path(args.out)
            read_transition(config, build_splits(config).num_classes)  # fail before any write
            out.mkdir(parents=True, exist_ok=True)
            _claim_run_folder(out, args.overwrite)
            (out / "config.json").write_text(json.dumps(asdict(config), indent=2))
        if args.stop_after is not None and args.stop_after < 1:
            raise UsageError("--stop-after: expected >= 1")
        if args.workers < 0:
            raise UsageError("--workers: expected >= 0")
        summary = train_run(config, out, resume=bool(args.resume), progress=not args.no_progress,
                            stop_after=args.stop_after, device=resolve_device(args.device),
                            autocast=resolve_amp(args.amp), workers=args.workers)
    except UsageError as error:
        print(f"iegkit: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except DataError as error:
        print(f"iegkit: data error: {error}", file=sys.stderr)
        return EXIT_DATA
    final = summary["final"]
    average = (f" (the recipe's weight average, to evaluate and deploy: "
               f"{100 * final['average_test_accuracy']:.1f}%)"
               if "average_test_accuracy" in final else "")
    print(f"iegkit: {summary['epochs']} epochs; test accuracy {100 * final.get('test_accuracy', 0):.1f}%"
          f"{average}, trusted-set accuracy {100 * final.get('probe_accuracy', 0):.1f}%; report in "
          f"{out}/")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
