"""Accuracy on noisy CIFAR-10 (real images): plain vs L2R vs EG vs IEG, with 10 trusted per class.

Data: the CIFAR-10 JPEG archives in ``../shared/data/cifar10-jpeg`` (outside the repository),
extracted and decoded once into a cache (``iegkit.datasets.load_cifar10_jpeg``). When they are
absent the script says so and exits with status 0.

Protocol (both configurations):

* 10 trusted images per class are drawn from the 50k training images by their clean labels
  *before* noise and removed from the training set (``iegkit.data.split_trusted``); the trusted set
  keeps its clean labels and is the probe set (probe batch = training batch, as the official code).
* Noise on the remaining training labels: ``uniform 0.4``, ``uniform 0.8`` (IEG semantics: a
  selected label is redrawn from all 10 classes, so the true class may come back and the realised
  flip rate is 0.9 x rate) and ``asymmetric 0.4`` (``CIFAR10_ASYMMETRIC_MAP``: truck->automobile,
  bird->airplane, cat<->dog, deer->horse, each with probability 0.4).
* Inputs are mapped to [-1, 1] as the official code. Every method sees the same weak view of the
  training and probe batches (``weak_augment(pad=2)``: black pad to 36, random 32 crop, flip: the
  official weak view). EG and IEG also build the strong view ``strong_augment("cifar10")``
  (kornia's AutoAugment CIFAR-10 policy, gray pad-crop 4, flip, 16x16 cutout) on top of it.
* EG and IEG use the paper's hyper-parameters (p = 5, k = 20, tau = 0.5, lambda0 = 0.9,
  omega0 = 1/B) with a **linear ramp-up of p and k** (``rampup_steps``), as the digits demo does:
  over the whole run in the CPU configuration, over the first 10% in the paper configuration. The
  official code has no ramp-up.
* SGD momentum 0.9, weight decay 5e-4 on all parameters, lr 0.1, batch 100 (+ 100 probe).
* Test accuracy on the full 10k test split after every epoch; the table reports the **final**
  model (no model selection on the test split).
* EG never reads the noisy labels (all training data is unlabeled), and the trusted set, training
  subset, initialisation, data order and augmentation draws do not depend on the noise setting, so
  its run is the same under every setting: it is trained once per seed and reported in every row
  (``--eg-per-setting`` trains it under each setting anyway).

``--config cpu`` (the run recorded in docs/results.md): a stratified 5,000-image training subset
(500 per class, drawn after the trusted split), the full 10k test split,
``iegkit.models.SmallCNN(in_channels=3, width=16)``, 25 epochs of 50 steps (1,250 steps), one cosine
decay of the lr to 0 over the run for every method, no EMA (a 0.999 average spans most of such a
short run), the AutoAugment sub-policy drawn once per batch (``per_image_policy=False``: 3-5x
cheaper on CPU than the official per-image draw) and one torch thread. How it was sized
(``--time-steps 5``, median ms per step on the shared 2-core machine, one thread):

    ================  =====  =====  =====  =====  ======================
    SmallCNN width    plain  l2r    eg     ieg    one 10k test pass
    ================  =====  =====  =====  =====  ======================
    32                106    259    548    931    6.4 s
    16                 53    111    190    291    2.5 s
    ================  =====  =====  =====  =====  ======================

With 3 plain + 3 L2R + 1 EG + 3 IEG runs and a test pass per epoch, width 32 costs 4.8 min per
epoch of all runs (12 epochs in an hour), width 16 1.7 min (25 epochs: 43 min projected). Two
torch threads were 4-5x *slower* than one while other jobs shared the two cores (OpenMP threads
wait on each other), hence one thread. ResNet29(base_width=8) costs 12x SmallCNN-16 per step.

``--config paper`` (for a GPU; not run here): the full 49,900 noisy images, WRN-28-10
(``benchmarks/wrn.py``, the AutoAugment-repo variant of the official code), 200 epochs, SGDR
(first cycle one epoch, t_mul 1.5, m_mul 0.9) for every method, EMA 0.999 of the weights
(``iegkit.WeightEMA``, evaluated with the raw model's BN statistics as the official code),
per-image AutoAugment, the official look-ahead (fixed meta lr 0.1, IEG differentiating through the
pseudo labels). Besides the final (epoch 200) accuracy it reports the accuracy at the end of the
last SGDR cycle within 200 epochs (step 85,327 of 99,800, about epoch 171, lr at its minimum): the
point the paper reports, fixed by the schedule, not chosen on the test split.

``--config cpu10k`` (a CPU configuration that can tell the methods apart; issue "CPU CIFAR-10
configuration"): 10 trusted per class removed first (clean labels, the probe set), then a
stratified **clean validation split of 5,000 images** (clean labels, used only for the per-epoch
validation accuracy: every choice is made on it), then a stratified 10,000-image training subset,
the only labels that get noise; test: the full 10k split, reported only as the final model's
accuracy (its largest predicted class's share is logged per epoch as a collapse check, never used
to choose). ``SmallCNN(width=26, blocks=4)`` (widths 26-52-104-208, strides 1-2-2-2, 0.26M
parameters, the added ones at low resolution), 20 epochs of 78 steps, batch 128 + probe batch 100,
SGD lr 0.1 momentum 0.9 wd 5e-4, one cosine decay over the run for every method, one torch thread
per process. The strong view (per-image AutoAugment draw, crop, flip, cutout 16, on the raw images
in [-1, 1]) is made for all 10k training images once per epoch outside the step (1.4-1.8 s) and
passed with ``training.fit(views=...)``, so the step measures the method. EG/IEG ramp p and k over
the run (``recipes.build``); robust EG/IEG use their defaults; probe diagnostics every 10 steps. EG
and robust EG never read the noisy labels (tested), so they run once per seed (setting ``any``)
and appear in every column. Each (setting, method, seed) run is appended to ``--store``
(``benchmarks/results/cifar10_cpu10k.jsonl``, tracked in git, key ``setting|method|seed|config``, with the whole configuration:
a run of another configuration is never counted) as it finishes and skipped on restart; ``--shard
i/n`` runs a disjoint, cost-balanced part of the priority-ordered run list (two processes, one
thread each); ``--ablations`` adds the safeguard ablations and IEG-n with safeguards at uniform
0.8; ``--report-only`` writes the table, two PNGs in docs/figures/ (validation curves; collapse
metrics per epoch) and the section of docs/results.md; ``--dry-run`` is the smoke test
(tests/test_cifar_benchmark.py).

How it was sized. The model: the cheapest that has >= 0.25M parameters and lets plain reach 55%
at uniform 0.4, judged on the validation split (plain, seed 0; runs/cifar10_cpu10k_select.jsonl):

    ======================  =========  =========
    SmallCNN blocks=4       15 epochs  20 epochs
    ======================  =========  =========
    width 26 (0.26M)        54.8       57.2
    width 32 (0.39M)        54.8       56.8
    ======================  =========  =========

(final validation accuracy %; the test accuracies were 55.2 / 56.7 and 54.3 / 57.2). The cost,
``--time-steps 5`` (median ms per step, one thread; the shared 2-core machine, where other jobs
move these by up to 50%: two measurements of width 26 at different loads):

    ==================  =====  =====  =====  =====  =========  ==========  ===============
    SmallCNN blocks=4   plain  l2r    eg     ieg    robust_eg  robust_ieg  val + test pass
    ==================  =====  =====  =====  =====  =========  ==========  ===============
    width 26            259    560    1045   1620   1064       1817        12.5 s
    width 26            299    873    1474   2329   1865       2823        20.2 s
    width 32            300    933    1104   n/a*   1089       1761        18.7 s
    ==================  =====  =====  =====  =====  =========  ==========  ===============

(* 3843, a load spike.) One run of robust IEG is 1,560 steps: about 50-80 min with its evaluations;
the priority list (20 runs) about 8 h on two processes.

    .venv/bin/python -m benchmarks.noisy_cifar10 --config cpu10k --time-steps 5
    # two processes, in the background (the second with --shard 1/2 > runs/cifar10_cpu10k_1.log):
    nohup .venv/bin/python -m benchmarks.noisy_cifar10 --config cpu10k --shard 0/2 > runs/cifar10_cpu10k_0.log 2>&1 &
    .venv/bin/python -m benchmarks.noisy_cifar10 --config cpu10k --list-runs   # what is done
    .venv/bin/python -m benchmarks.noisy_cifar10 --config cpu10k --report-only   # -> docs/

    .venv/bin/python -m benchmarks.noisy_cifar10 --config cpu --time-steps 5   # measure first
    .venv/bin/python -m benchmarks.noisy_cifar10 --config cpu --write docs/results.md
    python -m benchmarks.noisy_cifar10 --config paper --device cuda --write docs/results.md

Runs are saved one by one to ``--results`` (JSON); ``--resume`` skips finished runs and
``--report-only`` rebuilds the table, figure and section from that file.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Sequence

from benchmarks.cifar_cpu10k import main_cpu10k
from benchmarks.cifar_paper import main_paper
from benchmarks.cifar_runs import CONFIGS, DEFAULT_DATA, METHODS, REPO, SETTINGS, Config, parse_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Noisy CIFAR-10 (real images, 10 trusted per class): plain vs L2R vs EG vs IEG.",
        epilog="The module docstring describes the protocol and both configurations.")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="folder with train.tar.gz and test.tar.gz [../shared/data/cifar10-jpeg]")
    parser.add_argument("--cache-dir", default=None,
                        help="where to extract and decode once "
                             "[iegkit.datasets.load_cifar10_jpeg's: ~/.cache/iegkit/cifar10-jpeg]")
    parser.add_argument("--settings", type=parse_settings,
                        default=[(k, r) for k, r in SETTINGS],
                        help="comma-separated kind:rate [uniform:0.4,uniform:0.8,asymmetric:0.4]")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds 0..n-1 [1; cpu10k: 2, the seeds after 0 for plain and "
                             "robust_ieg only]")
    parser.add_argument("--device", default=None, help="cpu or cuda [the config's]")
    parser.add_argument("--threads", type=int, default=None, help="torch threads [the config's]")
    parser.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    parser.add_argument("--train-subset", type=int, default=None,
                        help="override the config's training subset (0: all)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--model", choices=["small_cnn", "small_cnn4", "resnet29", "wrn28_10",
                                            "wrn28_2"])
    parser.add_argument("--width", type=int, default=None, help="SmallCNN width / ResNet29 base_width")
    parser.add_argument("--per-image-policy", choices=["yes", "no"], default=None)
    parser.add_argument("--eg-per-setting", action="store_true",
                        help="train EG under every setting instead of once per seed")
    parser.add_argument("--max-steps", type=int, default=None, help="stop each run early (smoke test)")
    parser.add_argument("--test-subset", type=int, default=None,
                        help="evaluate on every k-th test image only, N in all (smoke test)")
    parser.add_argument("--time-steps", type=int, default=0,
                        help="only measure N steps of each method and project the run time")
    parser.add_argument("--results", default=None,
                        help="JSON file of finished runs [/tmp/iegkit_noisy_cifar10_<config>.json]")
    parser.add_argument("--resume", action="store_true", help="skip the runs already in --results")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild table, figure and section from --results; train nothing")
    parser.add_argument("--write", default=None, help="write the section into this markdown file")
    parser.add_argument("--figure", default=None,
                        help="accuracy curves PNG [docs/figures/noisy_cifar10_<config>.png]")
    parser.add_argument("--notes", default=None, help="markdown file appended to the section")
    parser.add_argument("--no-progress", action="store_true")
    cpu10k = parser.add_argument_group("--config cpu10k (runs stored one by one, see the docstring)")
    cpu10k.add_argument("--store", default=None,
                        help="JSON-lines store of finished runs [benchmarks/results/cifar10_cpu10k.jsonl]")
    cpu10k.add_argument("--shard", default=None, metavar="I/N",
                        help="run only part I of N (0-based) of the run list, disjoint and "
                             "balanced: start N processes with 0/N .. N-1/N")
    cpu10k.add_argument("--rerun-without-ema", action="store_true",
                        help="re-run the stored runs made before the evaluation EMA was recorded "
                             "(the same training; the new record adds the EMA's curves)")
    cpu10k.add_argument("--variants", default="",
                        help="comma-separated VARIANTS (e.g. robust_ieg/shrink_0.5), seed 0, at "
                             "every --settings, after the other runs (selection on the val split)")
    cpu10k.add_argument("--baselines", action="store_true",
                        help="also the baselines of benchmarks/baselines.py (plain+, GLC, small-loss "
                             "selection, GCE, SCE, online forward correction, l2r_gce, "
                             "trusted-only) and robust_ieg_glc (seeds 0..--seeds-1, every "
                             "--settings), each at the candidate "
                             "benchmarks/baselines.py selected for the setting on cpumem's noisy "
                             "validation labels")
    cpu10k.add_argument("--only", default="",
                        help="comma-separated glob patterns on run keys (setting|method|seed|"
                             "config, as --list-runs prints them): only the matching runs, with "
                             "GLC's first stage where a run reads it (e.g. '*|robust_ieg_glc|1|*')")
    cpu10k.add_argument("--ablations", choices=["none", "safeguards", "table7", "all"],
                        default="none",
                        help="also the safeguard ablations of robust_ieg and/or IEG-1..8 with "
                             "safeguards at uniform 0.8, seed 0 (after the main runs) [none]")
    cpu10k.add_argument("--figures-dir", default=str(REPO / "docs" / "figures"),
                        help="where --report-only writes the PNGs [docs/figures]")
    cpu10k.add_argument("--list-runs", action="store_true",
                        help="print the run list (priority order, shard, done or not) and exit")
    cpu10k.add_argument("--dry-run", action="store_true",
                        help="tiny sizes straight from the archives (100 training, 100 validation, "
                             "200 test images, batch 32, width 8), 1 epoch of 3 steps; own store "
                             "and key")
    return parser


def _configure(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[Config, list[str]]:
    """The configuration with the command line's overrides, and the methods to run."""
    cfg = CONFIGS[args.config]
    overrides = {}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.train_subset is not None:
        overrides["train_subset"] = args.train_subset or None
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    if args.model is not None:
        overrides["model"] = args.model
    if args.width is not None:
        overrides["width"] = args.width
    if args.per_image_policy is not None:
        overrides["per_image_policy"] = args.per_image_policy == "yes"
    if args.device is not None:
        overrides["device"] = args.device
    if args.threads is not None:
        overrides["threads"] = args.threads
    if args.dry_run:
        if cfg.name != "cpu10k":
            parser.error("--dry-run: only with --config cpu10k")
        overrides.update(epochs=1, train_subset=100, val_size=100, batch_size=32, width=8)
    cfg = dataclasses.replace(cfg, **overrides)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {list(METHODS)}")
    if args.shard is not None and not re.fullmatch(r"\d+/\d+", args.shard) or (
            args.shard and not 0 <= int(args.shard.split("/")[0]) < int(args.shard.split("/")[1])):
        parser.error(f"--shard: expected I/N with 0 <= I < N, got {args.shard!r}")
    return cfg, methods


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    args.argv = argv  # None: sys.argv (the command recorded with each run and in the report)
    cfg, methods = _configure(args, parser)
    if cfg.name == "cpu10k":
        return main_cpu10k(args, cfg)
    if args.shard or args.list_runs or args.ablations != "none" or args.store:
        parser.error("--shard, --list-runs, --ablations, --store: only with --config cpu10k")
    return main_paper(args, cfg, methods)


if __name__ == "__main__":
    raise SystemExit(main())
