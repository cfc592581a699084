"""Cost of one training step of every method of ``benchmarks/baselines.py``, side by side.

The ms/step column of the cpumem table is each run's own wall time, measured while another
benchmark (and, some days, other work) shared the two cores, so it moves with the machine's load
from one session to the next. This script measures the ratios that the cost claims rest on in one
process and one run: each method's pipeline as ``baselines.py`` builds it (``--config cpumem``
sizes: 16x16 images, batch 128, probe batch 100, SmallCNN(26, blocks=4), one thread), on random
images in [-1, 1] with the strong view passed precomputed (as the runs pass it), timed in blocks of
``--steps`` consecutive steps (forward, the pipeline's passes, backward, ``optimizer.step()``; the
block includes robust IEG's probe diagnostic, every 10th step), the methods interleaved block by
block for ``--rounds`` rounds; the median block, in ms per step, and its ratio to plain.
glc, small_loss and robust_ieg_glc get a fixed C_hat (uniform noise 0.4); trusted_only runs plain's
step and is not timed apart.

    .venv/bin/python -m benchmarks.baselines_cost --write docs/results.md
"""

from __future__ import annotations

import argparse
import statistics
import time
import types

import torch

from benchmarks import baselines as bl
from benchmarks.results_io import load_average, provenance, write_section
from iegkit.augment import strong_augment
from iegkit.models import SmallCNN

HEADING = "Baselines: cost per step, side by side (benchmarks/baselines_cost.py)"
TIMED = tuple(m for m in bl.METHODS if m != "trusted_only")


def uniform_transition(rate: float, classes: int = 10) -> list[list[float]]:
    off = rate / (classes - 1)
    return [[1 - rate if i == j else off for j in range(classes)] for i in range(classes)]


def build(method: str, cfg: bl.Config, total_steps: int, per_epoch: int):
    torch.manual_seed(0)
    model = SmallCNN(in_channels=3, num_classes=10, width=cfg.width, blocks=cfg.blocks)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9,
                                weight_decay=cfg.weight_decay)
    strong = strong_augment("cifar10", value_range=(-1.0, 1.0), pad=cfg.strong_pad,
                            cutout=cfg.cutout, per_image_policy=True)
    run = bl.Run("uniform:0.4", method, 0)
    store = types.SimpleNamespace(runs={bl.Run("uniform:0.4", "plain", 0).key("cost"):
                                        {"transition": uniform_transition(0.4)}})
    pipeline = bl.build_pipeline(run, model, optimizer, cfg, total_steps, per_epoch, strong,
                                 store, "cost")
    return model, optimizer, pipeline


def time_block(method: str, state: dict, batches: dict, steps: int) -> float:
    """ms per step over ``steps`` consecutive steps of one method, continuing its step counter."""
    model, optimizer, pipeline = state["parts"]
    x, y, xp, yp, strong = batches["x"], batches["y"], batches["xp"], batches["yp"], batches["strong"]
    views = {"strong": strong} if "strong" in pipeline.plan.views else None
    started = time.perf_counter()
    for _ in range(steps):
        out = pipeline(x, y, xp, yp, step=state["step"], views=views)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        state["step"] += 1
    return 1000 * (time.perf_counter() - started) / steps


def measure(cfg: bl.Config, steps: int, rounds: int, methods=TIMED) -> dict[str, list[float]]:
    torch.set_num_threads(cfg.threads)
    g = torch.Generator().manual_seed(0)
    r = cfg.resolution
    batches = {"x": torch.rand(cfg.batch_size, 3, r, r, generator=g) * 2 - 1,
               "y": torch.randint(0, 10, (cfg.batch_size,), generator=g),
               "xp": torch.rand(100, 3, r, r, generator=g) * 2 - 1,
               "yp": torch.arange(100) % 10,
               "strong": torch.rand(cfg.batch_size, 3, r, r, generator=g) * 2 - 1}
    total = (rounds + 1) * steps + 10
    states = {m: {"parts": build(m, cfg, total, steps), "step": 0} for m in methods}
    for m in methods:  # warm-up: first-call costs (compile caches, allocator) out of the timing
        time_block(m, states[m], batches, 2)
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(rounds):
        for m in methods:
            times[m].append(time_block(m, states[m], batches, steps))
    for m in methods:
        states[m]["parts"][2].close()
    return times


def table(times: dict[str, list[float]]) -> str:
    plain = statistics.median(times["plain"])
    lines = ["| method | median ms/step | × plain | min-max ms/step over rounds |",
             "| --- | --- | --- | --- |"]
    for m, values in times.items():
        med = statistics.median(values)
        lines.append(f"| {m} | {med:.0f} | {med / plain:.2f} | {min(values):.0f}-{max(values):.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--methods", default=",".join(TIMED))
    parser.add_argument("--write", default=None, help="markdown file to write the section into")
    parser.add_argument("--dry-run", action="store_true", help="width 8, 2 steps, 1 round")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in TIMED]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {list(TIMED)}")
    if "plain" not in methods:
        methods.insert(0, "plain")
    cfg, steps, rounds = bl.CONFIG, args.steps, args.rounds
    if args.dry_run:
        cfg, steps, rounds = bl.dataclasses.replace(cfg, width=8), 2, 1
    before = load_average()
    times = measure(cfg, steps, rounds, methods)
    body = "\n".join([
        "Reprint (measures again: a benchmark, not stored runs): "
        "`.venv/bin/python -m benchmarks.baselines_cost --write docs/results.md`.", "",
        f"{provenance()}; load average before/after: {before} / {load_average()}. "
        f"{rounds} rounds of {steps}-step blocks per method, interleaved; cpumem sizes "
        f"(batch {cfg.batch_size} + probe 100, {cfg.resolution}x{cfg.resolution}, "
        f"SmallCNN({cfg.width}, blocks={cfg.blocks}), {cfg.threads} thread). glc, small_loss and "
        "robust_ieg_glc also need plain's run first (GLC's first stage): add 1.00 to their ratio "
        "for the whole cost.", "", table(times)])
    print(body)
    if args.write and not args.dry_run:
        write_section(args.write, HEADING, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
