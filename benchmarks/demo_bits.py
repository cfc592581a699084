"""A bit-level fingerprint of the six demo recipes (2 epochs on the digits demo data): the final
test accuracy, the last epoch's mean loss and the sum of every parameter, each printed in full.
Two checkouts that print the same lines train bit for bit the same (docs/results.md, "The README
demo"): a restructuring that changes no math must leave them unchanged.

    .venv/bin/python -m benchmarks.demo_bits            # in each checkout (PYTHONPATH=<checkout>)
"""

from __future__ import annotations

import argparse

import torch

from iegkit import training
from iegkit.data import make_noisy_digits

METHODS = ("plain", "l2r", "eg", "ieg", "robust_eg", "robust_ieg")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = make_noisy_digits(0.8, 10, seed=0)
    for method in METHODS:
        result = training.train(method, data, epochs=args.epochs, batch_size=100, seed=0,
                                progress=False)
        with torch.no_grad():
            total = sum(float(p.double().sum()) for p in result.model.parameters())
        print(method, repr(result.final["test_accuracy"]), repr(result.final["loss"]), repr(total))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
