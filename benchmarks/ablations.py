"""Ablations IEG-1..8 (paper Table 7) on noisy digits, and the average lambda* of clean vs
mislabeled examples over training (paper Figure 2, top).

Same set-up as benchmarks/noisy_digits.py (digits, 10 trusted per class, SmallCNN, cosine lr,
final model, linear ramp-up of p and k). The components: UC = KLConsistency, MC = ProbeMixUp,
lambda = MetaRelabeler, AA = AutoAugment in the strong view. Digits are 8x8 grayscale, so "AA" is
kornia's CIFAR-10 AutoAugment applied to the image repeated on 3 channels and averaged back, then
the crop and 4x4 cutout of the strong view; without AA the strong view is crop + cutout.

    .venv/bin/python -m benchmarks.ablations --write docs/results.md
    .venv/bin/python -m benchmarks.ablations --robust --threads 1 --write docs/results.md

``--robust``: the same components with robust_ieg's safeguards on (EMA teacher, distribution
alignment, ramp over the run: ``recipes.robust_ieg(components=TABLE7[n])``); each run is stored in
benchmarks/results/ablations_robust.jsonl as it finishes and skipped on restart.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks.results_io import RunStore, command, machine, now, write_section
from iegkit import recipes
from iegkit.augment import strong_augment
from iegkit.data import make_noisy_digits
from iegkit.recipes import ROBUST_META_SHRINKAGE, TABLE7
from iegkit.training import default_augmentations, steps_per_epoch, train

#: Paper Table 7 (CIFAR-100, WRN-28-10): test accuracy at noise 0.4 and 0.8.
PAPER = {1: (64.43, 33.52), 2: (66.14, 36.04), 3: (67.82, 37.01), 4: (78.06, 61.81),
         5: (79.96, 75.42), 6: (73.63, 54.76), 7: (79.16, 72.69), 8: (81.05, 74.04)}


class GrayAutoAugment:
    """AutoAugment (CIFAR-10 policy) for 1-channel images: repeat to RGB, augment, average back."""

    def __init__(self) -> None:
        self.rgb = strong_augment("cifar10", pad=1, cutout=4, flip=False, value_range=(-1.0, 1.0))

    def __call__(self, images, generator=None):
        return self.rgb(images.expand(-1, 3, -1, -1), generator=generator).mean(1, keepdim=True)


def strong_views() -> dict:
    """``recipes.build`` options of IEG-n: the strong view with AA and the one without."""
    return {"strong_augment": GrayAutoAugment(),
            "plain_strong_augment": default_augmentations(channels=1, size=8)[1]}


class LambdaRecorder:
    """Average lambda* per epoch for examples whose given label is clean vs wrong (Figure 2)."""

    def __init__(self, data, steps_per_epoch: int) -> None:
        self.noisy = data.train_labels != data.train_clean_labels
        self.steps_per_epoch = steps_per_epoch
        self.sums: dict[tuple[int, bool], list[float]] = {}

    def __call__(self, step, idx, out) -> None:
        if out.relabel is None:
            return
        epoch = step // self.steps_per_epoch
        for is_noisy in (False, True):
            mask = self.noisy[idx] == is_noisy
            if mask.any():
                entry = self.sums.setdefault((epoch, is_noisy), [0.0, 0])
                entry[0] += float(out.relabel[mask].sum())
                entry[1] += int(mask.sum())

    def curve(self, is_noisy: bool) -> list[float]:
        epochs = sorted({e for e, _ in self.sums})
        return [self.sums[(e, is_noisy)][0] / self.sums[(e, is_noisy)][1] for e in epochs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--noise", default="0.4,0.8")
    parser.add_argument("--ablations", default="1,2,3,4,5,6,7,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", help="write the tables into this markdown file")
    parser.add_argument("--figure", default="docs/figures/ablation_lambda.png")
    parser.add_argument("--robust", action="store_true",
                        help="robust_ieg(components=...) instead of ieg: the safeguards on")
    parser.add_argument("--meta-shrinkage", type=float, default=ROBUST_META_SHRINKAGE,
                        help="with --robust: robust_ieg's meta_shrinkage [its default]")
    parser.add_argument("--label-posterior", choices=("on", "off"),
                        default="on" if _robust_default("label_posterior") else "off",
                        help="with --robust: robust_ieg's label_posterior [its default]")
    parser.add_argument("--store", default="benchmarks/results/ablations_robust.jsonl",
                        help="with --robust: one JSON line per finished run")
    args = parser.parse_args()
    if args.robust:
        return main_robust(args)
    torch.set_num_threads(args.threads)
    rates = [float(r) for r in args.noise.split(",")]
    numbers = [int(n) for n in args.ablations.split(",")]
    start = time.time()
    accs: dict[tuple[int, float], list[float]] = {}
    recorders: dict[float, LambdaRecorder] = {}
    for rate in rates:
        for n in numbers:
            for seed in range(args.seeds):
                data = make_noisy_digits(rate, 10, seed=seed)
                recorder = None
                if n == 5 and seed == 0:
                    recorder = recorders[rate] = LambdaRecorder(
                        data, steps_per_epoch(data.train_inputs.shape[0], 100))
                run = train(f"ieg-{n}", data, epochs=args.epochs, batch_size=100, seed=seed,
                            progress=False, recipe_options=strong_views(), on_step=recorder)
                accuracy = run.final["test_accuracy"]
                accs.setdefault((n, rate), []).append(100 * accuracy)
                print(f"IEG-{n} noise {rate} seed {seed}: {100 * accuracy:.1f}% "
                      f"({run.seconds:.0f}s)", flush=True)
    table = table7(numbers, rates, "ours", lambda n, r: accs.get((n, r), []))
    print(table)
    lambda_lines = []
    if recorders:
        figure = plot_lambda(recorders, args.figure)
        for rate, rec in recorders.items():
            clean, noisy = rec.curve(False), rec.curve(True)
            lambda_lines.append(f"- noise {rate}: mean λ* clean/mislabeled in epoch 1 "
                                f"{clean[0]:.2f}/{noisy[0]:.2f}, in the last epoch "
                                f"{clean[-1]:.2f}/{noisy[-1]:.2f}")
        lambda_text = (f"\n\nAverage λ* (1 = keep the given label) of clean vs mislabeled "
                       f"training examples over training, IEG-5, seed 0 (paper Figure 2, top): "
                       f"`{figure}`.\n\n" + "\n".join(lambda_lines))
    else:
        lambda_text = ""
    print(lambda_text)
    if args.write:
        body = (f"Command: `{command()}`  \nMachine: {machine()}  \nDate: {now()}; total "
                f"{(time.time() - start) / 60:.1f} min.\n\n"
                f"Digits, uniform noise, 10 trusted per class, {args.epochs} epochs, test accuracy "
                f"(%) of the final model, mean ± std over {args.seeds} seeds; the paper's columns "
                "are its Table 7 (CIFAR-100, WRN-28-10), for the ordering of the rows, not the "
                "values.\n\n" + table + lambda_text)
        write_section(args.write, "Ablations IEG-1..8 (benchmarks/ablations.py)", body)
    return 0


def table7(numbers, rates, label: str, accuracies) -> str:
    """Table 7's layout: components, mean ± std of ``accuracies(n, rate)`` per rate, the paper."""
    cols = " | ".join(f"{label} {r}" for r in rates)
    lines = [f"| # | UC | MC | AA | λ | {cols} | paper 0.4 | paper 0.8 |",
             "|---|---|---|---|---|" + "---|" * (len(rates) + 2)]
    for n in numbers:
        marks = " | ".join("✓" if c in TABLE7[n] else "" for c in ("UC", "MC", "AA", "lambda"))
        cells = []
        for rate in rates:
            accs = accuracies(n, rate)
            spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
            cells.append(f"{statistics.mean(accs):.1f} ± {spread:.1f}" if accs else "-")
        lines.append(f"| {n} | {marks} | {' | '.join(cells)} | {PAPER[n][0]:.2f} | "
                     f"{PAPER[n][1]:.2f} |")
    return "\n".join(lines)


def _robust_default(option: str):
    return recipes.SPECS["robust_ieg"].defaults[option]


def main_robust(args) -> int:
    """IEG-1..8 with robust_ieg's safeguards, resumable (no lambda figure)."""
    torch.set_num_threads(args.threads)
    posterior = args.label_posterior == "on"
    rates = [float(r) for r in args.noise.split(",")]
    numbers = [int(n) for n in args.ablations.split(",")]
    store = RunStore(args.store)
    for rate in rates:
        for n in numbers:
            for seed in range(args.seeds):
                key = f"{n}|{rate}|{seed}|{args.epochs}" + (
                    f"|shrink{args.meta_shrinkage:g}" if args.meta_shrinkage else "") + (
                    "|posterior" if posterior else "")
                if key in store:
                    continue
                data = make_noisy_digits(rate, 10, seed=seed)
                run = train("robust_ieg", data, epochs=args.epochs, batch_size=100, seed=seed,
                            progress=False,
                            recipe_options={**strong_views(), "components": TABLE7[n],
                                            "meta_shrinkage": args.meta_shrinkage,
                                            "label_posterior": posterior})
                store.add(key, {"ablation": n, "noise": rate, "seed": seed, "epochs": args.epochs,
                                "meta_shrinkage": args.meta_shrinkage,
                                "label_posterior": posterior,
                                "test_accuracy": run.final["test_accuracy"],
                                "seconds": run.seconds})
                print(f"robust IEG-{n} noise {rate} seed {seed}: "
                      f"{100 * run.final['test_accuracy']:.1f}% ({run.seconds:.0f}s)", flush=True)
    def accuracies(n: int, rate: float) -> list[float]:
        return [100 * rec["test_accuracy"] for rec in store.runs.values()
                if rec["ablation"] == n and rec["noise"] == rate and rec["epochs"] == args.epochs
                and rec["seed"] < args.seeds
                and rec.get("meta_shrinkage", 0.0) == args.meta_shrinkage
                and rec.get("label_posterior", False) == posterior]

    table = table7(numbers, rates, "robust", accuracies)
    print(table)
    if args.write:
        body = (f"Command: `{command()}`  \nMachine: {machine()}  \nDate: {now()}; runs stored in "
                f"`{args.store}`.\n\n"
                f"As the section above (digits, uniform noise, 10 trusted per class, "
                f"{args.epochs} epochs, final-model test accuracy %, mean ± std over {args.seeds} "
                "seeds), with robust_ieg's safeguards on in every row (EMA teacher 0.99, "
                "distribution alignment 0.99, p and k ramped over the run, meta shrinkage "
                f"{args.meta_shrinkage:g}, label posterior {args.label_posterior}): "
                "`recipes.robust_ieg(components=TABLE7[n])`.\n\n" + table)
        write_section(args.write, "Ablations IEG-1..8 with the safeguards (benchmarks/ablations.py "
                      "--robust)", body)
    return 0


def plot_lambda(recorders, path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(recorders), figsize=(4.5 * len(recorders), 3.2), sharey=True)
    axes = axes if len(recorders) > 1 else [axes]
    for ax, (rate, rec) in zip(axes, recorders.items()):
        clean, noisy = rec.curve(False), rec.curve(True)
        ax.plot(range(1, len(clean) + 1), clean, label="clean labels")
        ax.plot(range(1, len(noisy) + 1), noisy, label="mislabeled")
        ax.set_title(f"IEG, uniform noise {rate}")
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("average λ*")
    axes[0].legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return str(path)


if __name__ == "__main__":
    raise SystemExit(main())
