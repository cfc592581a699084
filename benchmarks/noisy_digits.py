"""Accuracy on noisy digits: plain vs L2R vs EG vs IEG, several noise settings, mean +- std over seeds.

Digits (scikit-learn's 1,797 real 8x8 images), a stratified 30% test split, 10 trusted images per
class removed from the training split before noise, SmallCNN, SGD 0.1 momentum 0.9 wd 5e-4, cosine
lr over the run, the final model evaluated once (no selection on the test split). EG/IEG use the
paper's hyper-parameters (p = 5, k = 20, tau = 0.5, lambda0 = 0.9, omega0 = 1/B) with a linear
ramp-up of p and k over the run (the demo's choice, see docs/results.md). The loop is
``iegkit.training.train``, the demo's.

    .venv/bin/python -m benchmarks.noisy_digits --write docs/results.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks.results_io import command, machine, now, write_section
from iegkit import recipes
from iegkit.data import make_noisy_digits
from iegkit.training import train

SETTINGS = [("uniform", 0.0), ("uniform", 0.4), ("uniform", 0.8), ("uniform", 0.95),
            ("asymmetric", 0.4)]
METHODS = list(recipes.RECIPES)


def final(run) -> float:
    """The final model's test accuracy (no model selection on the test split)."""
    return run.final["test_accuracy"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--settings", default=",".join(f"{k}:{r}" for k, r in SETTINGS),
                        help="comma-separated kind:rate, kind in {uniform, asymmetric}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", help="write the table into this markdown file")
    parser.add_argument("--figure", default="docs/figures/noisy_digits_curves.png")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    settings = [(s.split(":")[0], float(s.split(":")[1])) for s in args.settings.split(",")]
    results: dict[tuple, list] = {}
    start = time.time()
    for kind, rate in settings:
        for method in methods:
            for seed in range(args.seeds):
                data = make_noisy_digits(rate, 10, seed=seed, kind=kind)
                run = train(method, data, epochs=args.epochs, seed=seed, progress=False)
                results.setdefault((kind, rate, method), []).append(run)
                print(f"{kind} {rate} {method} seed {seed}: {100 * final(run):.1f}% "
                      f"({run.seconds:.0f}s, realised noise {100 * data.noise_rate:.0f}%)",
                      flush=True)
    header = "| noise | realised wrong labels | " + " | ".join(methods) + " |"
    lines = [header, "|" + " --- |" * (len(methods) + 2)]
    for kind, rate in settings:
        realised = statistics.mean(make_noisy_digits(rate, 10, seed=s, kind=kind).noise_rate
                                   for s in range(args.seeds))
        cells = []
        for method in methods:
            accs = [100 * final(r) for r in results[(kind, rate, method)]]
            best = max(statistics.mean(100 * final(r) for r in results[(kind, rate, m)])
                       for m in methods)
            cell = f"{statistics.mean(accs):.1f} ± {statistics.stdev(accs) if len(accs) > 1 else 0:.1f}"
            cells.append(f"**{cell}**" if statistics.mean(accs) == best else cell)
        lines.append(f"| {kind} {rate} | {100 * realised:.0f}% | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    figure = plot_curves(results, settings, methods, args.figure)
    if args.write:
        body = (f"Command: `{command()}`  \nMachine: {machine()}  \nDate: {now()}; total "
                f"{(time.time() - start) / 60:.1f} min.\n\n"
                f"Test accuracy (%) of the final model, mean ± std over {args.seeds} seeds "
                f"(seed s draws the split, the noise, the init and the order); {args.epochs} epochs; "
                "bold: best mean per row.\n\n" + table +
                f"\n\nTest-accuracy curves (mean over seeds): `{figure}`.\n")
        write_section(args.write, "Accuracy on noisy digits (benchmarks/noisy_digits.py)", body)
    return 0


def plot_curves(results, settings, methods, path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(settings), figsize=(4 * len(settings), 3.2), sharey=True)
    for ax, (kind, rate) in zip(axes if len(settings) > 1 else [axes], settings):
        for method in methods:
            runs = results[(kind, rate, method)]
            curves = torch.tensor([[h["test_accuracy"] for h in r.history] for r in runs])
            mean = 100 * curves.mean(0)
            ax.plot(range(1, len(mean) + 1), mean, label=method)
        ax.set_title(f"{kind} {rate}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    (axes[0] if len(settings) > 1 else axes).set_ylabel("test accuracy (%)")
    (axes[0] if len(settings) > 1 else axes).legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return str(path)


if __name__ == "__main__":
    raise SystemExit(main())
