"""Sizing of --config cpumem (benchmarks/baselines.py) with plain training alone: does plain fit the
noisy labels (>= 90%) and end >= 5 points below its best test epoch at uniform 0.4?

Plain (SmallCNN, SGD 0.1, momentum 0.9, wd 5e-4, cosine over the run, batch 128, one thread) on a
stratified subset of --n images (10 trusted per class removed first, seed 0), 2x2-averaged to 16x16
with --res 16; --pad 0 is a flip-only weak view, --pad 1 adds a 1-pixel pad-crop. Each run appends
its per-epoch history (accuracy on the noisy and clean training labels, and on the test split) to
benchmarks/results/baselines_cpumem_sizing.jsonl:

    .venv/bin/python -m benchmarks.size_cpumem --n 8000 --res 16 --epochs 40 --pad 0
    .venv/bin/python -m benchmarks.size_cpumem --n 8000 --res 16 --epochs 40 --pad 1
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F

from iegkit import recipes, training
from iegkit.augment import weak_augment
from iegkit.data import NoisyDataset, split_trusted
from iegkit.datasets import load_cifar10_jpeg
from iegkit.models import SmallCNN
from iegkit.noise import uniform_noise

DATA = "../shared/data/cifar10-jpeg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, kind, default in (("n", int, 8000), ("res", int, 16), ("width", int, 26),
                                ("blocks", int, 4), ("epochs", int, 40), ("pad", int, 0),
                                ("lr", float, 0.1), ("wd", float, 5e-4), ("bs", int, 128)):
        parser.add_argument(f"--{name}", type=kind, default=default)
    parser.add_argument("--out", default="benchmarks/results/baselines_cpumem_sizing.jsonl")
    a = parser.parse_args()
    torch.set_num_threads(1)
    train, test = load_cifar10_jpeg(DATA, "train")[:2], load_cifar10_jpeg(DATA, "test")[:2]
    generator = torch.Generator().manual_seed(0)
    trusted, rest = split_trusted(train[1], 10, 10, generator)
    keep = torch.cat([rest[train[1][rest] == c][torch.randperm(int((train[1][rest] == c).sum()),
                                                               generator=generator)[:a.n // 10]]
                      for c in range(10)])

    def prep(images):  # uint8 -> [-1, 1], averaged down to --res pixels
        images = images.float().div(127.5).sub(1)
        return F.avg_pool2d(images, 32 // a.res) if a.res < 32 else images

    x, clean = prep(train[0][keep]), train[1][keep]
    noisy = uniform_noise(clean, 0.4, 10, torch.Generator().manual_seed(10000), include_true_class=True)
    x_test, y_test = prep(test[0]), test[1]
    data = NoisyDataset(x, noisy, clean, prep(train[0][trusted]), train[1][trusted], x_test, y_test, 10)
    torch.manual_seed(0)
    model = SmallCNN(in_channels=3, num_classes=10, width=a.width, blocks=a.blocks)
    optimizer = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=a.wd)

    def evaluate(m):
        return {"fit_noisy": training.accuracy(m, x, noisy), "fit_clean": training.accuracy(m, x, clean),
                "test": training.accuracy(m, x_test, y_test)}

    started = time.time()

    def on_epoch(entry):
        print(entry["epoch"], {k: round(v, 3) for k, v in entry.items() if isinstance(v, float)},
              round(time.time() - started), flush=True)

    result = training.fit(recipes.plain(model, optimizer), model, optimizer, data, epochs=a.epochs,
                          batch_size=a.bs, weak_augment=weak_augment(pad=a.pad, value_range=(-1.0, 1.0)),
                          evaluate=evaluate, on_epoch=on_epoch, progress=False)
    history = result.history
    record = dict(vars(a), best_test=max(h["test"] for h in history), final_test=history[-1]["test"],
                  final_fit=history[-1]["fit_noisy"], seconds=result.seconds,
                  params=sum(p.numel() for p in model.parameters()), history=history)
    with open(a.out, "a") as f:
        f.write(json.dumps(record) + "\n")
    print("RESULT", {k: v for k, v in record.items() if k != "history"})


if __name__ == "__main__":
    main()
