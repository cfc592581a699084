"""The embedded demo: digits, 80% uniform noise, 10 trusted per class; plain vs L2R vs EG vs IEG.

    python -m iegkit.demo            # the default table
    python -m iegkit.demo --help

The training loop is ``iegkit.training.fit``, the one a user writes: the pipeline returns the
loss, the loop keeps ``loss.backward()`` and ``optimizer.step()``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from iegkit import recipes, training
from iegkit.data import NoisyDataset, make_noisy_digits
from iegkit.training import accuracy as evaluate

__all__ = ["RunResult", "digits_augmentations", "evaluate", "main", "train"]


def digits_augmentations() -> tuple[Callable, Callable]:
    """Weak and strong views for 8x8 digits in [-1, 1]: a 1-pixel shift (no flip: digits are not
    mirror-symmetric), and the shift plus a 4x4 cutout. AutoAugment's CIFAR policy needs RGB, so
    the digits strong view is the paper's "without AA" chain (crop, cutout)."""
    return training.default_augmentations(channels=1, size=8)


@dataclass(frozen=True)
class RunResult:
    method: str
    seed: int
    test_accuracy: float
    seconds: float
    history: list[dict]


def train(method: str, data: NoisyDataset, *, epochs: int = 30, batch_size: int = 100,
          lr: float = 0.1, seed: int = 0, width: int = 32, progress: bool = True,
          recipe_kwargs: dict | None = None,
          on_step: Callable[[int, Tensor, object], None] | None = None) -> RunResult:
    """Train ``SmallCNN`` on ``data`` with ``recipes.build(method, ...)`` (``iegkit.training.train``);
    report the final test accuracy of the weights to deploy (``iegkit.evaluation_weights``: the
    recipe's weight average where it keeps one, e.g. robust IEG's EMA teacher; else the trained
    weights), with no model selection on the test split. ``recipe_kwargs`` go to
    the recipe; ``on_step(step, dataset_indices, step_output)`` sees every step (e.g. to record
    omega* and lambda* per example)."""
    result = training.train(method, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                            width=width, recipe_options=recipe_kwargs, on_step=on_step,
                            evaluate_average=True, progress=progress)
    final = result.final
    deployed = final.get("average_test_accuracy", final["test_accuracy"])
    return RunResult(method, seed, deployed, result.seconds, result.history)


def format_table(rows: Sequence[tuple[str, list[float]]]) -> str:
    lines = ["| method | test accuracy (%) | runs |", "| --- | --- | --- |"]
    for method, accs in rows:
        mean = 100 * sum(accs) / len(accs)
        if len(accs) > 1:
            std = 100 * torch.tensor(accs).std().item()
            cell = f"{mean:.1f} +- {std:.1f}"
        else:
            cell = f"{mean:.1f}"
        lines.append(f"| {method} | {cell} | {len(accs)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m iegkit.demo",
        description="Noisy digits (scikit-learn's real 8x8 images): train plain, L2R, EG and IEG "
                    "with a tiny trusted set and print the test accuracy of each.",
    )
    parser.add_argument("--noise", type=float, default=0.8,
                        help="uniform noise rate (true class may be drawn, as IEG) [0.8]")
    parser.add_argument("--trusted-per-class", type=int, default=10, help="trusted examples per "
                        "class, removed from the training split before noise [10]")
    parser.add_argument("--methods", default=",".join(recipes.RECIPES),
                        help=f"comma-separated subset of {','.join(recipes.method_names())}")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs [30]")
    parser.add_argument("--batch-size", type=int, default=100, help="training and probe batch [100]")
    parser.add_argument("--seeds", type=int, default=1, help="number of seeds (0, 1, ...) [1]")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in recipes.method_names()]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {recipes.method_names()}")
    rows = []
    for method in methods:
        accs = []
        for seed in range(args.seeds):
            data = make_noisy_digits(args.noise, args.trusted_per_class, seed=seed)
            result = train(method, data, epochs=args.epochs, batch_size=args.batch_size, seed=seed,
                           progress=not args.no_progress)
            accs.append(result.test_accuracy)
        rows.append((method, accs))
    data = make_noisy_digits(args.noise, args.trusted_per_class, seed=0)
    print(f"digits: {data.train_inputs.shape[0]} noisy training images (realised noise "
          f"{100 * data.noise_rate:.0f}% wrong labels at rate {args.noise}), "
          f"{data.trusted_inputs.shape[0]} trusted, {data.test_inputs.shape[0]} test; "
          f"SmallCNN, {args.epochs} epochs")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
