"""The baselines' sanity check on digits: does each keep its paper's ordering against plain?

The loop and protocol of benchmarks/noisy_digits.py (``iegkit.training.train``: SmallCNN, SGD 0.1,
cosine, 30 epochs, 10 trusted per class, the final model on the test split), for plain, GCE, SCE,
plain+ and GLC (its first stage is the plain run of the same seed: C_hat from that final model)
at uniform 0.4 and 0.8, seeds 0..2. Prints and writes the table with paired differences to plain:

    .venv/bin/python -m benchmarks.baselines_digits --write docs/results.md
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.results_io import command, machine, now, write_section
from iegkit import recipes
from iegkit.data import make_noisy_digits
from iegkit.training import accuracy, default_augmentations, train

HEADING = "Baselines on digits (benchmarks/baselines_digits.py)"
METHODS = ("plain", "gce", "sce", "plain_plus", "glc")


def run_setting(rate: float, seeds: int, epochs: int,
                methods: tuple[str, ...] = METHODS) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {m: [] for m in METHODS}
    fits: dict[str, list[float]] = {m: [] for m in METHODS}
    for seed in range(seeds):
        data = make_noisy_digits(rate, 10, seed=seed)

        def evaluate(model, data=data):  # the test split, and the fit of the noisy labels
            return {"test_accuracy": accuracy(model, data.test_inputs, data.test_labels),
                    "fit_noisy": accuracy(model, data.train_inputs, data.train_labels)}

        plain = train("plain", data, epochs=epochs, seed=seed, progress=False, evaluate=evaluate)
        results["plain"].append(plain.final["test_accuracy"])
        fits["plain"].append(plain.final["fit_noisy"])
        _, strong = default_augmentations(1, 8)  # the grayscale strong view train() gives IEG
        # GLC's first stage: C_hat of the final plain model on the trusted images (the inputs as
        # train() feeds them)
        transition = recipes.glc_transition(plain.model, data.trusted_inputs, data.trusted_labels)
        options = {"gce": {}, "sce": {}, "plain_plus": {"strong_augment": strong},
                   "glc": {"transition": transition}}
        for method, extra in options.items():
            if method not in methods:
                continue
            run = train(method, data, epochs=epochs, seed=seed, progress=False, recipe_options=extra,
                        evaluate=evaluate)
            results[method].append(run.final["test_accuracy"])
            fits[method].append(run.final["fit_noisy"])
        print(f"uniform {rate} seed {seed}: " + ", ".join(
            f"{m} {100 * results[m][-1]:.1f} (fit {100 * fits[m][-1]:.0f})" for m in methods),
            flush=True)
    return {m: v for m, v in results.items() if m in methods}, fits


def paired(a: list[float], b: list[float]) -> str:
    diffs = [100 * (x - y) for x, y in zip(a, b)]
    return f"{statistics.mean(diffs):+.1f} ({', '.join(f'{d:+.1f}' for d in diffs)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--rates", default="0.4,0.8")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", default=",".join(METHODS), help="plain and a subset of the others")
    parser.add_argument("--heading", default=HEADING)
    parser.add_argument("--write", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    methods = tuple(m for m in METHODS if m in args.methods.split(","))
    if "plain" not in methods:
        parser.error("--methods: plain is the reference (and GLC's first stage); include it")
    others = methods[1:]
    lines = ["| uniform noise | " + " | ".join(others) + " | plain |",
             "|" + " --- |" * (len(others) + 2)]
    for rate in (float(r) for r in args.rates.split(",")):
        res, fits = run_setting(rate, args.seeds, args.epochs, methods)
        cells = [f"{100 * statistics.mean(res[m]):.1f} (vs plain {paired(res[m], res['plain'])}; "
                 f"fit {100 * statistics.mean(fits[m]):.0f}%)" for m in others]
        lines.append(f"| {rate} | " + " | ".join(cells) + f" | {100 * statistics.mean(res['plain']):.1f} "
                     f"(fit {100 * statistics.mean(fits['plain']):.0f}%) |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        body = (f"Command: `{command()}`  \nMachine: {machine()}  \nDate: {now()}; "
                f"{(time.time() - started) / 60:.1f} min.\n\nFinal test accuracy (%), mean over "
                f"{args.seeds} seeds, {args.epochs} epochs, the paired difference to plain in points "
                "(per seed), and the final accuracy on the noisy training labels (fit). "
                "Defaults of each paper (GCE q 0.7; SCE alpha 0.1, beta 1; plain+ p 1; GLC "
                "trusted weight 1), nothing selected.\n\n" + table + "\n")
        write_section(args.write, args.heading, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
