"""The ``cpu`` and ``paper`` protocols of ``noisy_cifar10`` (one JSON file of runs): training
one run, timing steps, and their table, figure and section of docs/results.md."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import re
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from benchmarks.cifar_runs import (
    CONFIGS,
    REPO,
    Config,
    Split,
    build_model,
    device_data,
    evaluate,
    machine,
    make_pipeline,
    make_scheduler,
    noisy_labels,
    prepare_split,
    run_key,
    setting_name,
    time_steps,
)
from benchmarks.results_io import rerunnable
from iegkit import WeightEMA, training
from iegkit.functional.schedule import sgdr_restarts

HEADING = "Noisy CIFAR-10 (benchmarks/noisy_cifar10.py)"

#: The paper's CIFAR-10 numbers (WRN-28-10, 10 trusted per class unless noted; mean +- std of 3
#: runs). Table 1 (uniform), Table 3 (asymmetric), Table 6 (EG: labels ignored, so one number).
PAPER = {
    ("uniform", 0.4): {"l2r": "86.9 ± 0.2 (1k trusted)", "ieg": "95.9 ± 0.2",
                       "ieg_rn29": "92.5 ± 0.5"},
    ("uniform", 0.8): {"l2r": "73.0 ± 0.8 (1k trusted; run by the IEG authors)", "ieg": "93.7 ± 0.5",
                       "ieg_rn29": "85.6 ± 1.1"},
    ("asymmetric", 0.4): {"ieg": "94.9 ± 0.1", "ieg_rn29": "90.2 ± 0.5"},
}
PAPER_EG = "92.4 ± 0.7 (WRN-28-2), 94.5 ± 0.3 (EG*, WRN-28-10)"


class RunLog:
    """``training.fit``'s callbacks for one run: the EMA update after each step; with SGDR, the
    test accuracy (and the mean loss since the epoch began) where a cycle ends inside an epoch,
    and ``cycle_end`` on the epoch entries where one ends with the epoch; per-epoch log lines when
    stderr is not a terminal (the progress bar's place)."""

    def __init__(self, cfg: Config, steps_per_epoch: int, accuracy, ema, desc: str) -> None:
        self.cfg, self.steps_per_epoch, self.accuracy, self.ema = cfg, steps_per_epoch, accuracy, ema
        self.desc = desc
        self.cycle_ends: set[int] = set()
        if cfg.schedule == "sgdr":  # completed-step counts after which the lr is at a cycle minimum
            self.cycle_ends = {math.ceil(s) for s in sgdr_restarts(steps_per_epoch, 1.5, n=40)}
        self.cycle_entries: list[dict] = []
        self.loss_sum, self.loss_count = 0.0, 0

    def on_step(self, step: int, idx: Tensor, out) -> None:
        if self.ema is not None:
            self.ema.update(step)
        if step % self.steps_per_epoch == 0:
            self.loss_sum, self.loss_count = 0.0, 0
        self.loss_sum += float(out.loss.detach())
        self.loss_count += 1
        done = step + 1
        if done in self.cycle_ends and done % self.steps_per_epoch:
            self.cycle_entries.append({"epoch": done / self.steps_per_epoch, "step": done,
                                       "cycle_end": True, "loss": self.loss_sum / self.loss_count,
                                       "test_accuracy": self.accuracy(None)["test_accuracy"]})

    def on_epoch(self, entry: dict) -> None:
        if entry["step"] in self.cycle_ends:
            entry["cycle_end"] = True
        if not sys.stderr.isatty():
            print(f"    {self.desc} epoch {entry['epoch']}/{self.cfg.epochs}: mean loss "
                  f"{entry['loss']:.3f}, test accuracy {100 * entry['test_accuracy']:.2f}%",
                  flush=True)

    def history(self, epochs: list[dict]) -> list[dict]:
        """The epoch entries and the mid-epoch cycle ends, in the order they happened."""
        return sorted(self.cycle_entries + epochs,
                      key=lambda h: (h["step"], isinstance(h["epoch"], int)))


def train_one(method: str, split: Split, labels: Tensor, cfg: Config, seed: int,
              device: torch.device, *, progress: bool = True, desc: str = "",
              max_steps: int | None = None) -> dict:
    """One run (``iegkit.training.fit``); returns {"history": [...], "final": acc, "seconds": ...}."""
    torch.manual_seed(seed)
    model = build_model(cfg).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=5e-4)
    per_epoch = training.steps_per_epoch(split.train_images.shape[0], cfg.batch_size)
    pipeline = make_pipeline(method, model, optimizer, cfg, seed, cfg.epochs * per_epoch)
    ema = WeightEMA(model, cfg.ema_decay) if cfg.ema_decay else None

    def accuracy(_model=None) -> dict[str, float]:
        if ema is None:
            return {"test_accuracy": evaluate(model, split.test_images, split.test_labels, device)}
        with ema.average_parameters():
            return {"test_accuracy": evaluate(model, split.test_images, split.test_labels, device)}

    data, weak_view = device_data(split, labels, cfg.weak_pad, device)
    log = RunLog(cfg, per_epoch, accuracy, ema, desc)
    result = training.fit(pipeline, model, optimizer, data, epochs=cfg.epochs,
                          batch_size=cfg.batch_size, weak_augment=weak_view, seed=seed,
                          scheduler=make_scheduler(cfg, per_epoch), evaluate=accuracy,
                          on_step=log.on_step, on_epoch=log.on_epoch, max_steps=max_steps,
                          progress=progress, desc=desc)
    history = log.history(result.history)
    out = {"history": history, "final": history[-1]["test_accuracy"], "seconds": result.seconds,
           "steps": result.steps}
    if ema is not None:
        out["final_raw"] = evaluate(model, split.test_images, split.test_labels, device)
    ends = [h for h in history if h.get("cycle_end")]
    if ends:
        out["last_cycle_end"] = ends[-1]
    return out


def fmt(values: Sequence[float]) -> str:
    mean = 100 * statistics.mean(values)
    if len(values) > 1:
        return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"
    return f"{mean:.1f}"


def build_tables(store: dict, settings, methods, seeds: int) -> tuple[str, str]:
    runs, noise = store["runs"], store.get("noise", {})
    paper_cfg = store["config"]["schedule"] == "sgdr"
    header = "| noise | wrong labels | " + " | ".join(methods) + " |"
    lines = [header, "|" + " --- |" * (len(methods) + 2)]
    extra = []
    for kind, rate in settings:
        cells, best = [], None
        means = {}
        for method in methods:
            accs = [runs[run_key(kind, rate, method, s)]["final"] for s in range(seeds)
                    if run_key(kind, rate, method, s) in runs]
            means[method] = statistics.mean(accs) if accs else None
            cells.append(fmt(accs) if accs else "n/a")
        best = max((m for m in means.values() if m is not None), default=None)
        cells = [f"**{c}**" if means[m] is not None and means[m] == best else c
                 for m, c in zip(methods, cells)]
        wrong = noise.get(f"{kind}:{rate:g}")
        lines.append(f"| {setting_name(kind, rate)} | "
                     f"{'n/a' if wrong is None else f'{100 * wrong:.1f}%'} | " + " | ".join(cells) + " |")
        if paper_cfg:
            row = []
            for method in methods:
                ends = [runs[run_key(kind, rate, method, s)].get("last_cycle_end") for s in range(seeds)
                        if run_key(kind, rate, method, s) in runs]
                ends = [e for e in ends if e]
                row.append(f"{fmt([e['test_accuracy'] for e in ends])} (ep {ends[0]['epoch']:.1f})"
                           if ends else "n/a")
            extra.append(f"| {setting_name(kind, rate)} | " + " | ".join(row) + " |")
    table = "\n".join(lines)
    if extra:
        table += ("\n\nAt the end of the last SGDR cycle within the epoch budget (lr at its minimum; "
                  "the paper's reporting point, fixed by the schedule):\n\n"
                  "| noise | " + " | ".join(methods) + " |\n|" + " --- |" * (len(methods) + 1) + "\n"
                  + "\n".join(extra))
    paper = ["| noise | plain | L2R | EG | IEG (WRN-28-10) | IEG (ResNet-29) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for kind, rate in settings:
        ref = PAPER.get((kind, rate), {})
        paper.append(f"| {setting_name(kind, rate)} | not reported | {ref.get('l2r', 'not reported')} "
                     f"| {PAPER_EG} | {ref.get('ieg', 'not reported')} | "
                     f"{ref.get('ieg_rn29', 'not reported')} |")
    return table, "\n".join(paper)


def plot_curves(store: dict, settings, methods, seeds: int, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 3.4), sharey=True,
                             squeeze=False)
    for ax, (kind, rate) in zip(axes[0], settings):
        for method in methods:
            hists = [store["runs"][run_key(kind, rate, method, s)]["history"] for s in range(seeds)
                     if run_key(kind, rate, method, s) in store["runs"]]
            if not hists:
                continue
            hists = [[h for h in hist if not (h.get("cycle_end") and h["epoch"] % 1)] for hist in hists]
            length = min(len(h) for h in hists)
            xs = [hists[0][i]["epoch"] for i in range(length)]
            ys = [100 * statistics.mean(h[i]["test_accuracy"] for h in hists) for i in range(length)]
            ax.plot(xs, ys, label=method)
        ax.set_title(f"{setting_name(kind, rate)} noise")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


INTRO = """\
Real images: CIFAR-10 from the JPEG archives in `../shared/data/cifar10-jpeg` (lossy re-encoding,
so absolute accuracies run slightly below published CIFAR-10 figures). 10 trusted images per class
(100) are drawn by clean label before noise and removed from training; they are the probe set.
Noise: uniform 0.4 / 0.8 with IEG semantics (the true class may be redrawn, so 0.8 flips about 72%)
and asymmetric 0.4 (truck->automobile, bird->airplane, cat<->dog, deer->horse). Inputs in [-1, 1];
weak view `weak_augment(pad=2)` for every method; EG/IEG add `strong_augment("cifar10")` on top of
it, with the paper's p = 5, k = 20 **linearly ramped up** (`rampup_steps`, as the digits demo; the
official code has none). EG never reads the noisy labels, so it is trained once per seed and its
result appears in every row. Accuracy: the final model on the full 10k test split (no model
selection on the test split). The protocol and every choice are in the script's docstring."""


def write_results(path: Path, config_name: str, body: str) -> None:
    """Replace this script's subsection ``### `--config NAME``` inside its ``## HEADING`` section of
    ``path`` (the section ends at the next ``## `` heading); other sections and the other config's
    subsection are kept. Creates the file with a ``# Results`` title if absent."""
    text = path.read_text() if path.exists() else "# Results\n"
    pattern = re.compile(rf"^## {re.escape(HEADING)}[ \t]*\n.*?(?=^## |\Z)", re.S | re.M)
    match = pattern.search(text)
    subsections: dict[str, str] = {}
    if match:
        for sub in re.finditer(r"^### `--config (\w+)`[ \t]*\n(.*?)(?=^### |\Z)", match.group(0),
                               re.S | re.M):
            subsections[sub.group(1)] = sub.group(2).strip()
    subsections[config_name] = body.strip()
    order = [c for c in CONFIGS if c in subsections] + [c for c in subsections if c not in CONFIGS]
    section = f"## {HEADING}\n\n{INTRO}\n\n" + "\n\n".join(
        f"### `--config {c}`\n\n{subsections[c]}" for c in order) + "\n\n"
    if match:
        text = text[:match.start()] + section + text[match.end():]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")


def report(store: dict, args, settings, methods, device: torch.device) -> str:
    cfg = store["config"]
    seeds = store["seeds"]
    table, paper = build_tables(store, settings, methods, seeds)
    model_desc = {"small_cnn": f"SmallCNN(in_channels=3, width={cfg['width']})",
                  "resnet29": f"ResNet29(base_width={cfg['width']})",
                  "wrn28_10": "WRN-28-10 (benchmarks/wrn.py)", "wrn28_2": "WRN-28-2"}[cfg["model"]]
    n_train = store.get("n_train", "?")
    seconds = sum(r.get("seconds", 0.0) for r in store["runs"].values() if not r.get("shared_from"))
    if "wall_seconds" in store:
        wall = f"{store['wall_seconds'] / 60:.0f} min in all"
    else:  # from the minute-resolution start and end stamps
        stamps = [datetime.datetime.strptime(store[k], "%Y-%m-%d %H:%M UTC")
                  for k in ("date", "finished") if k in store]
        wall = f"about {(stamps[1] - stamps[0]).seconds // 60} min in all" if len(stamps) == 2 else "n/a"
    figure = Path(args.figure)
    base = Path(args.write).resolve().parent if args.write else REPO / "docs"
    figure_rel = os.path.relpath(figure.resolve(), base)
    plot_curves(store, settings, methods, seeds,
                figure, f"noisy CIFAR-10, --config {cfg['name']}: {model_desc}, {n_train} noisy "
                        f"training images, {cfg['epochs']} epochs")
    details = (
        f"{model_desc}; {n_train} noisy training images"
        + (" (stratified subset of the 49,900)" if cfg["train_subset"] else "")
        + f"; {cfg['epochs']} epochs of {n_train // cfg['batch_size']} steps, batch {cfg['batch_size']} "
        f"+ {cfg['batch_size']} probe; SGD lr {cfg['lr']} momentum 0.9 wd 5e-4; "
        + ("one cosine decay to 0 over the run" if cfg["schedule"] == "cosine"
           else "SGDR (first cycle one epoch, t_mul 1.5, m_mul 0.9)")
        + (f"; EMA {cfg['ema_decay']} (evaluated)" if cfg["ema_decay"] else "; no EMA")
        + f"; AutoAugment sub-policy drawn {'per image' if cfg['per_image_policy'] else 'per batch'}"
        + f"; p, k ramped over the first {100 * cfg['rampup_fraction']:.0f}% of the steps"
        + ("; official look-ahead (meta lr 0.1, IEG through the pseudo labels)"
           if cfg["official_lookahead"] else "; look-ahead at the current lr (library default)")
        + f". {seeds} seed(s).")
    body = (
        f"Command: `{rerunnable(store['command'])}`  \n"
        f"Date: {store['date']} (finished {store.get('finished', 'n/a')}); wall time {wall} "
        f"({seconds / 60:.0f} min in the training runs, evaluations included).  \n"
        f"Machine: {store.get('machine') or machine(device)}\n\n"
        f"{details}\n\n"
        f"Final test accuracy (%){' , mean ± std over seeds' if seeds > 1 else ''}; "
        f"wrong labels: realised fraction of the noisy training labels; bold: best per row.\n\n"
        f"{table}\n\n"
        f"For comparison, the paper (WRN-28-10, full 50k, 10 trusted per class unless noted, "
        f"mean ± std of 3 runs; Tables 1, 3 and 6; standard training on clean labels: 96.1 "
        f"WRN-28-10 / 92.7 ResNet-29):\n\n{paper}\n\n"
        f"Test accuracy after every epoch: ![noisy CIFAR-10 curves]({figure_rel})\n")
    if args.notes:
        body += f"\n{Path(args.notes).read_text().strip()}\n"
    return body


def main_paper(args, cfg: Config, methods: list[str]) -> int:
    """The ``cpu`` and ``paper`` protocols: every (seed, setting, method) run into one JSON file
    (``--resume`` skips the finished ones), then the report."""
    args.seeds = args.seeds or 1
    settings = args.settings
    args.figure = args.figure or str(REPO / "docs" / "figures" / f"noisy_cifar10_{cfg.name}.png")
    results_path = Path(args.results or f"/tmp/iegkit_noisy_cifar10_{cfg.name}.json")
    device = torch.device(cfg.device)
    if args.report_only:
        store = json.loads(results_path.read_text())
        settings = [tuple(x) for x in store.get("settings", settings)]
        methods = store.get("methods", methods)
        body = report(store, args, settings, methods, device)
        print(body)
        if args.write:
            write_results(Path(args.write), store["config"]["name"], body)
        return 0

    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"--config {cfg.name} runs on {cfg.device}, but CUDA is not available here; pass "
              f"--device cpu to force it (WRN-28-10 on a CPU takes weeks)", file=sys.stderr)
        return 2
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    data_dir = Path(args.data)
    if not ((data_dir / "train.tar.gz").is_file() and (data_dir / "test.tar.gz").is_file()):
        print(f"noisy_cifar10: CIFAR-10 JPEG archives not found in {data_dir} (expected train.tar.gz "
              f"and test.tar.gz, see shared/data/cifar10-jpeg/README.md); skipping.")
        return 0

    from iegkit.datasets import load_cifar10_jpeg

    t0 = time.perf_counter()
    train_images, train_labels, _ = load_cifar10_jpeg(data_dir, "train", cache_dir=args.cache_dir,
                                                      verbose=True)
    test_images, test_labels, _ = load_cifar10_jpeg(data_dir, "test", cache_dir=args.cache_dir,
                                                    verbose=True)
    if args.test_subset:
        stride = max(1, test_images.shape[0] // args.test_subset)
        test_images, test_labels = test_images[::stride], test_labels[::stride]
    print(f"CIFAR-10 loaded in {time.perf_counter() - t0:.1f} s: train {tuple(train_images.shape)}, "
          f"test {tuple(test_images.shape)}", flush=True)

    if args.time_steps:
        split = prepare_split((train_images, train_labels), (test_images, test_labels),
                              cfg.train_subset, 0)
        print(f"timing --config {cfg.name}: {cfg.model}, {split.train_images.shape[0]} training "
              f"images, batch {cfg.batch_size}, {torch.get_num_threads()} threads, device {device}")
        time_steps(cfg, split, 0, device, args.time_steps, methods, settings, args.eg_per_setting)
        return 0

    fresh = {"config": dataclasses.asdict(cfg), "seeds": args.seeds, "runs": {}, "noise": {},
             "settings": [list(x) for x in settings], "methods": methods,
             "command": ".venv/bin/python " + " ".join(shlex.quote(a) for a in
                                                       [os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
             "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    store = fresh
    if args.resume and results_path.exists():
        store = json.loads(results_path.read_text())
        defaults = {f.name: f.default for f in dataclasses.fields(Config)
                    if f.default is not dataclasses.MISSING}  # fields added later: same run
        if any(store["config"].get(k, defaults.get(k)) != v for k, v in fresh["config"].items()):
            print(f"--resume: {results_path} was made with another configuration "
                  f"({store['config']}); remove it or pass --results", file=sys.stderr)
            return 2
        store["seeds"] = max(store["seeds"], args.seeds)
    print(f"--config {cfg.name}: {dataclasses.asdict(cfg)}", flush=True)
    wall = time.perf_counter()
    for seed in range(args.seeds):
        split = prepare_split((train_images, train_labels), (test_images, test_labels),
                              cfg.train_subset, seed)
        store["n_train"] = int(split.train_images.shape[0])
        eg_done: str | None = None
        for kind, rate in settings:
            labels = noisy_labels(split.train_clean, kind, rate, seed)
            wrong = float((labels != split.train_clean).float().mean())
            store["noise"][f"{kind}:{rate:g}"] = wrong
            for method in methods:
                key = run_key(kind, rate, method, seed)
                if key in store["runs"]:
                    if method == "eg":
                        eg_done = key
                    continue
                if method == "eg" and eg_done is not None and not args.eg_per_setting:
                    store["runs"][key] = dict(store["runs"][eg_done], shared_from=eg_done)
                    print(f"{key}: EG ignores the noisy labels; same run as {eg_done}", flush=True)
                    continue
                desc = f"{setting_name(kind, rate)} {method} s{seed}"
                print(f"{desc}: {split.train_images.shape[0]} training images, "
                      f"{100 * wrong:.1f}% wrong labels", flush=True)
                result = train_one(method, split, labels, cfg, seed, device,
                                   progress=not args.no_progress, desc=desc, max_steps=args.max_steps)
                store["runs"][key] = result
                if method == "eg":
                    eg_done = key
                print(f"{desc}: final test accuracy {100 * result['final']:.2f}% "
                      f"({result['seconds'] / 60:.1f} min; total so far "
                      f"{(time.perf_counter() - wall) / 60:.1f} min)", flush=True)
                results_path.write_text(json.dumps(store))
    store["finished"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    store["wall_seconds"] = store.get("wall_seconds", 0.0) + time.perf_counter() - wall
    store["machine"] = machine(device)
    results_path.write_text(json.dumps(store))
    print(f"all runs done in {(time.perf_counter() - wall) / 60:.1f} min; results in {results_path}")
    body = report(store, args, settings, methods, device)
    print(body)
    if args.write:
        write_results(Path(args.write), cfg.name, body)
        print(f"wrote the section '## {HEADING}' ({cfg.name}) into {args.write}")
    return 0
