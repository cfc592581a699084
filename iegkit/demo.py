"""The embedded demo: digits, 80% uniform noise, 10 trusted per class; plain vs L2R vs EG vs IEG.

    python -m iegkit.demo            # the default table
    python -m iegkit.demo --help

The training loop below is the one a user writes: the pipeline returns the loss, the loop keeps
``loss.backward()`` and ``optimizer.step()``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from iegkit import recipes
from iegkit.augment import strong_augment, weak_augment
from iegkit.data import NoisyDataset, ProbeSampler, make_noisy_digits
from iegkit.models import SmallCNN

__all__ = ["RunResult", "digits_augmentations", "evaluate", "main", "train"]

METHODS: dict[str, Callable] = {"plain": recipes.plain, "l2r": recipes.l2r, "eg": recipes.eg,
                                "ieg": recipes.ieg}


def digits_augmentations() -> tuple[Callable, Callable]:
    """Weak and strong views for 8x8 digits in [-1, 1]: a 1-pixel shift (no flip: digits are not
    mirror-symmetric), and the shift plus a 4x4 cutout. AutoAugment's CIFAR policy needs RGB, so
    the digits strong view is the paper's "without AA" chain (crop, cutout)."""
    weak = weak_augment(pad=1, flip=False, value_range=(-1.0, 1.0))
    strong = strong_augment(policy=None, pad=1, cutout=4, flip=False, value_range=(-1.0, 1.0))
    return weak, strong


@dataclass(frozen=True)
class RunResult:
    method: str
    seed: int
    test_accuracy: float
    seconds: float
    history: list[dict]


@torch.no_grad()
def evaluate(model: torch.nn.Module, inputs: Tensor, labels: Tensor, batch_size: int = 512) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, inputs.shape[0], batch_size):
        logits = model(inputs[start:start + batch_size])
        correct += int((logits.argmax(-1) == labels[start:start + batch_size]).sum())
    model.train(was_training)
    return correct / inputs.shape[0]


def train(method: str, data: NoisyDataset, *, epochs: int = 30, batch_size: int = 100,
          lr: float = 0.1, seed: int = 0, width: int = 32, progress: bool = True,
          recipe_kwargs: dict | None = None, recipe: Callable | None = None,
          on_step: Callable[[int, Tensor, object], None] | None = None) -> RunResult:
    """Train ``SmallCNN`` on ``data`` with one recipe; report the final test accuracy (no model
    selection on the test split). ``recipe`` overrides ``METHODS[method]``; ``on_step(step, dataset_indices, step_output)`` sees every step
    (e.g. to record omega* and lambda* per example)."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    model = SmallCNN(in_channels=data.train_inputs.shape[1], num_classes=data.num_classes,
                     width=width)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    steps_per_epoch = max(1, data.train_inputs.shape[0] // batch_size)
    total_steps = epochs * steps_per_epoch
    kwargs = dict(recipe_kwargs or {})
    weak, strong = digits_augmentations()
    is_ieg_like = method in ("eg", "ieg") or method.startswith("ieg-")
    if is_ieg_like:
        kwargs.setdefault("strong_augment", strong)
        # From a random init the pseudo labels all point to one class and, at full weight from
        # step 0, the MixUp term locks the model there (docs/results.md); the official code has
        # no ramp-up, MixMatch ramps p and k linearly. We ramp over the whole run.
        kwargs.setdefault("rampup_steps", total_steps)
    if method == "ieg" or method.startswith("ieg-"):
        kwargs.setdefault("plain_strong_augment", strong)
    pipeline = (recipe or METHODS[method])(model, optimizer, seed=seed, **kwargs)
    scheduler = None
    if not any(type(p).__name__ == "SGDRSchedule" for p in pipeline.parts):
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_steps)
    augment_gen = torch.Generator().manual_seed(seed + 1)
    probe = ProbeSampler(data.trusted_inputs, data.trusted_labels, batch_size, seed=seed)
    order_gen = torch.Generator().manual_seed(seed)
    history = []
    start = time.perf_counter()
    bar = tqdm(total=total_steps, desc=f"{method} seed {seed}", disable=not progress, leave=False)
    step = 0
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(data.train_inputs.shape[0], generator=order_gen)
        for b in range(steps_per_epoch):
            idx = order[b * batch_size:(b + 1) * batch_size]
            probe_inputs, probe_labels = next(probe)
            # the weak view is the user's usual augmentation, the same for every method
            out = pipeline(weak(data.train_inputs[idx], generator=augment_gen),
                           data.train_labels[idx], weak(probe_inputs, generator=augment_gen),
                           probe_labels, step=step)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            if on_step is not None:
                on_step(step, idx, out)
            if scheduler is not None:
                scheduler.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(out.loss.detach()):.3f}")
        history.append({"epoch": epoch + 1, "loss": float(out.loss.detach()),
                        "test_accuracy": evaluate(model, data.test_inputs, data.test_labels)})
    bar.close()
    return RunResult(method, seed, history[-1]["test_accuracy"], time.perf_counter() - start,
                     history)


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
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs [30]")
    parser.add_argument("--batch-size", type=int, default=100, help="training and probe batch [100]")
    parser.add_argument("--seeds", type=int, default=1, help="number of seeds (0, 1, ...) [1]")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {sorted(METHODS)}")
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
