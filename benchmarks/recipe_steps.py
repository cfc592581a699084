"""Cost of one training step of each recipe: plain, L2R, EG, IEG (and IEG with the official
look-ahead through the pseudo labels), interleaved in one process, median of repeats, with the
passes each step runs. Strong views use a cheap fixed augmentation so that the timing is the
step's, not kornia's.

    .venv/bin/python -m benchmarks.recipe_steps --write docs/results.md
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.results_io import load_average, provenance, write_section
from iegkit import recipes
from iegkit.models import ResNet29, SmallCNN


def flip_view(images, generator=None):
    return images.flip(-1)


def build(name, model, optimizer):
    if name == "plain":
        return recipes.plain(model, optimizer)
    if name == "l2r":
        return recipes.l2r(model, optimizer)
    if name == "eg":
        return recipes.eg(model, optimizer, strong_augment=flip_view)
    if name == "ieg":
        return recipes.ieg(model, optimizer, strong_augment=flip_view)
    if name == "ieg_through_pseudo":
        return recipes.ieg(model, optimizer, strong_augment=flip_view, through_pseudo_labels=True)
    raise ValueError(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["small_cnn", "resnet29"], default="small_cnn")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b = args.batch_size
    x, y = torch.randn(b, 3, 32, 32), torch.randint(0, 10, (b,))
    xp, yp = torch.randn(b, 3, 32, 32), torch.randint(0, 10, (b,))
    names = ["plain", "l2r", "eg", "ieg", "ieg_through_pseudo"]
    runs = {}
    for name in names:
        model = SmallCNN(3, 10, 32) if args.model == "small_cnn" else ResNet29(10)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        runs[name] = (model, optimizer, build(name, model, optimizer))
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    passes = {}
    for repeat in range(args.repeats + 1):
        for name in names:
            model, optimizer, pipeline = runs[name]
            wall, proc = time.perf_counter(), time.process_time()
            out = pipeline(x, y, xp, yp, step=repeat)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            if repeat > 0:  # the first round warms up and creates the momentum buffers
                times[name].append(time.perf_counter() - wall)
                cpu[name].append(time.process_time() - proc)
            passes[name] = (out.forward_counts, out.lookahead_count)
    base = statistics.median(times["plain"])
    base_cpu = statistics.median(cpu["plain"])
    eg = statistics.median(times["eg"])
    lines = ["| recipe | forwards (rows) | look-aheads | median ms | × plain | × plain (CPU time) | × EG |",
             "|---|---|---|---:|---:|---:|---:|"]
    for name in names:
        fwd, look = passes[name]
        rows = ", ".join(f"{k}" for k in fwd)
        med = statistics.median(times[name])
        lines.append(f"| {name} | {rows} | {look} | {1000 * med:.0f} | {med / base:.2f} | "
                     f"{statistics.median(cpu[name]) / base_cpu:.2f} | {med / eg:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        body = (provenance(f"; load average at the end {load_average()}.") + "\n\n"
                f"{args.model}, B = probe batch = {b}, 32x32 inputs, {args.repeats} interleaved "
                "repeats. Forwards: 'input' is the training batch, 'strong' the strong view, "
                "'mixed' the 3B MixUp batch; the look-ahead adds one probe forward+backward at θ' "
                "and one JVP (two with the official look-ahead through the pseudo labels). "
                "Target: IEG ≤ 2x EG.\n\n" + table)
        write_section(args.write, f"Step cost per recipe, {args.model} (benchmarks/recipe_steps.py)",
                      body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
