"""The ``cpu10k`` protocol of ``noisy_cifar10`` (runs stored one by one, resumable, sharded):
its variants (selection candidates, ablations), the priority-ordered run list, training one run
and the driver."""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from benchmarks.cifar_runs import (
    CONFIGS,
    METHODS,
    NUM_CLASSES,
    REPO,
    TRUSTED_PER_CLASS,
    Config,
    EpochMetrics,
    Split,
    Store,
    StrongViews,
    build_model,
    device_data,
    has_ema,
    load_cifar10_head,
    make_pipeline,
    make_scheduler,
    noisy_labels,
    parse_settings,
    predict,
    prepare_cpu10k_split,
    run_timing,
    tiled_trusted,
    time_steps,
    to_input,
    top_share,
)
from benchmarks.results_io import run_provenance, write_section
from iegkit import WeightEMA, recipes, training
from iegkit.augment import strong_augment
from iegkit.functional import noise_rate_from_transition

# --------------------------------------------------------------------------- --config cpu10k

CPU10K_HEADING = "Noisy CIFAR-10, --config cpu10k (benchmarks/noisy_cifar10.py)"
# tracked in git, so that the table grows over sessions (a fresh checkout keeps the finished runs)
CPU10K_STORE = REPO / "benchmarks" / "results" / "cifar10_cpu10k.jsonl"
#: The setting of a run that never reads the noisy labels (EG, robust EG, trusted-only): one run
#: per seed,
#: reported in every row (the data split, initialisation and draws do not depend on the setting).
ANY_SETTING = "any"
#: robust_ieg's meta_shrinkage candidates; the default's runs are stored as "robust_ieg".
SHRINKAGE_CANDIDATES = (0.0, 0.25, 0.5, 0.75, 1.0)


def selection_method(variant: str) -> str:
    """The stored method name of a robust_ieg candidate: "robust_ieg" when its options are the
    recipe's defaults (the runs of the chosen candidate are stored under the method's name)."""
    recipe, options = VARIANTS[variant]
    if variant in HISTORICAL_VARIANTS:
        return variant
    defaults = recipes.SPECS["robust_ieg"].defaults
    if recipe == "robust_ieg" and all(defaults.get(k) == v for k, v in options.items()):
        return "robust_ieg"
    return variant


#: a recipe option value replaced, per run, by the measured accuracy of the run's noisy labels
MEASURED_LABEL_ACCURACY = "measured"
#: a recipe option value replaced, per run, by GLC's C_hat of the final plain model of the same
#: setting and seed (its first stage; stored with every plain run as "transition")
PLAIN_TRANSITION = "plain transition"  # as "noise_rate": that C_hat's noise_rate_from_transition
#: a recipe option value replaced by the run's steps per epoch
STEPS_PER_EPOCH = "steps per epoch"

#: name -> (recipe, recipe options). The six methods, the safeguard ablations of robust IEG and
#: IEG-n of Table 7 with the safeguards (IEG-5 is robust_ieg itself).
VARIANTS: dict[str, tuple[str, dict]] = {
    **{m: (m, {}) for m in METHODS},
    "robust_ieg/no_teacher": ("robust_ieg", {"teacher_decay": None}),
    "robust_ieg/no_alignment": ("robust_ieg", {"alignment_momentum": None}),
    "robust_ieg/mask_0.95": ("robust_ieg", {"confidence_threshold": 0.95}),
    **{f"robust_ieg-{n}": ("robust_ieg", {"components": recipes.TABLE7[n]})
       for n in recipes.TABLE7 if n != 5},
    # candidates for robust_ieg's meta_shrinkage, selected on the validation split (--variants)
    # (measured before the label posterior was a default: it stays off in them)
    **{f"robust_ieg/shrink_{b:g}": ("robust_ieg", {"meta_shrinkage": b, "label_posterior": False})
       for b in SHRINKAGE_CANDIDATES},
    # candidate safeguard: pseudo labels as the posterior given the noisy label (--variants)
    "robust_ieg/posterior": ("robust_ieg", {"label_posterior": True}),
    # the stored run of NoisyLabelPosterior's first estimator (commit ac36477: 50 EM steps from
    # 1/2, the first batch set r); re-running it runs the current part
    "robust_ieg/posterior_v1": ("robust_ieg", {"label_posterior": True}),
    "robust_ieg/posterior_shrink_1": ("robust_ieg", {"label_posterior": True,
                                                     "meta_shrinkage": 1.0}),
    # candidate: weaker unlabeled and consistency terms (p 1, k 5 instead of 5, 20)
    "robust_ieg/p1_k5": ("robust_ieg", {"unlabeled_weight": 1.0, "consistency_weight": 5.0,
                                        "label_posterior": False}),
    # robust_ieg without its label posterior (the defaults before it; the safeguard's ablation)
    "robust_ieg/no_posterior": ("robust_ieg", {"label_posterior": False}),
    # diagnostic, not a candidate default (it reads the noise rate of the training labels): the
    # posterior at the true accuracy of the given labels instead of its running estimate, which
    # overshoots as the teacher fits the labels (0.96 against 0.64 at uniform 0.4)
    "robust_ieg/known_r": ("robust_ieg", {"label_accuracy": MEASURED_LABEL_ACCURACY}),
    # robust_eg before its lr warm-up was a default (its stored run, re-keyed; the warm-up's
    # ablation)
    "robust_eg/no_warmup": ("robust_eg", {"warmup_fraction": 0.0}),
    # diagnostic of robust_eg's first epoch (with --max-steps 78): the trusted images alone
    "robust_eg/no_warmup_no_unlabeled": ("robust_eg", {"warmup_fraction": 0.0,
                                                       "unlabeled_weight": 0.0,
                                                       "consistency_weight": 0.0}),
    # baselines of benchmarks/baselines.py (docs/results.md), for --variants and benchmarks/gpu.sh:
    # plain+, GLC's second stage, small-loss selection (each after the plain run of the same seed)
    # plain again, only to record GLC's C_hat where the stored plain run predates it; its record
    # never replaces the plain run's, which the tables pair with robust IEG's of the same code
    "plain/c_hat": ("plain", {}),
    "plain_plus": ("plain_plus", {}),
    "plain_plus/mixup_weight=5": ("plain_plus", {"mixup_weight": 5.0}),
    "glc": ("glc", {"transition": PLAIN_TRANSITION}),
    "glc/trusted_weight=0.1": ("glc", {"transition": PLAIN_TRANSITION, "trusted_weight": 0.1}),
    "small_loss": ("small_loss", {"noise_rate": PLAIN_TRANSITION, "steps_per_epoch": STEPS_PER_EPOCH}),
    "small_loss/rampup_epochs=5": ("small_loss", {"noise_rate": PLAIN_TRANSITION,
                                                  "steps_per_epoch": STEPS_PER_EPOCH,
                                                  "rampup_epochs": 5.0}),
    # the recommended composition: robust IEG's label posterior through GLC's C_hat
    "robust_ieg_glc": ("robust_ieg", {"label_transition": PLAIN_TRANSITION}),
    # the rest of benchmarks/baselines.py's grid, with its options (at cpumem's selection)
    "gce": ("gce", {}), "gce/q=0.4": ("gce", {"q": 0.4}), "gce/q=0.9": ("gce", {"q": 0.9}),
    "sce": ("sce", {}), "sce/alpha=1": ("sce", {"alpha": 1.0}),
    "sce/beta=0.5": ("sce", {"beta": 0.5}),
    "forward_online": ("forward_online", {}),
    "forward_online/estimate_fraction=0.3": ("forward_online", {"estimate_fraction": 0.3}),
    "l2r_gce": ("l2r_gce", {}),
    # plain on the trusted images alone, tiled to the training set's size (the floor)
    "trusted_only": ("plain", {}),
}
#: the runs of --baselines, in the order they run: each at the candidate that cpumem's selection
#: chose for the same setting (on its noisy validation labels; cpu10k's clean split chooses none
#: of their options), after the plain run whose C_hat GLC, small-loss and robust_ieg_glc read
BASELINES = ("glc", "small_loss", "plain_plus", "gce", "sce", "forward_online", "l2r_gce",
             "trusted_only")
RECOMMENDED = "robust_ieg_glc"
#: the baselines at the seeds after 0: plain+ first (the best baseline of seed 0 at uniform noise),
#: so that the paired intervals against robust_ieg (seeds 0-2 stored) come soonest
LATER_SEED_ORDER = ("plain_plus", "glc", RECOMMENDED, "small_loss", "gce", "sce", "forward_online",
                    "l2r_gce", "trusted_only")
#: the runs of the recipes that never read the noisy labels (every variant of EG and robust EG)
LABEL_FREE = frozenset({*(name for name, (recipe, _) in VARIANTS.items()
                          if recipe in ("eg", "robust_eg")), "trusted_only"})
#: stored runs of earlier code under the same options: never the defaults' runs
HISTORICAL_VARIANTS = frozenset({"robust_ieg/posterior_v1"})
#: robust_ieg's candidate defaults, compared on the validation split (the selection table).
SELECTION_CANDIDATES = (*(f"robust_ieg/shrink_{b:g}" for b in SHRINKAGE_CANDIDATES),
                        "robust_ieg/no_posterior", "robust_ieg/posterior_v1", "robust_ieg/posterior",
                        "robust_ieg/posterior_shrink_1",
                        "robust_ieg/p1_k5")
SAFEGUARD_ABLATIONS = ("robust_ieg/no_teacher", "robust_ieg/no_alignment", "robust_ieg/no_posterior",
                       "robust_ieg/mask_0.95")
TABLE7_VARIANTS = tuple(f"robust_ieg-{n}" for n in recipes.TABLE7 if n != 5)
#: ms per training step, measured with --time-steps on the shared 2-core machine (1 thread): only
#: used to balance --shard (an estimate of each run's cost), never reported.
STEP_MS = {"plain": 280.0, "l2r": 715.0, "eg": 1260.0, "ieg": 1975.0, "robust_eg": 1465.0,
           "robust_ieg": 2320.0, "plain_plus": 850.0, "glc": 330.0, "small_loss": 280.0,
           "gce": 280.0, "sce": 280.0, "forward_online": 330.0, "l2r_gce": 715.0}
# the trained weights' evaluation (the evaluation EMA doubles it; kept, so that --shard assigns
# the runs as before)
EVAL_S_PER_EPOCH = 16.0
#: decay of the weight average evaluated beside every cpu10k run (training never reads it)
EVAL_EMA_DECAY = 0.99


@functools.lru_cache(maxsize=None)
def cpumem_selection(method: str, setting: str) -> str:
    """The variant of ``method`` that benchmarks/baselines.py selected for ``setting`` on cpumem's
    noisy validation labels (its default while that selection is incomplete), read once per
    process from the tracked cpumem store."""
    from benchmarks import baselines  # the cpumem protocol, read only for its selection

    chosen = baselines.selected_variant(_cpumem_store(), method, setting, baselines.CONFIG.name)
    return chosen or next(iter(baselines.CANDIDATES[method]))


@functools.lru_cache(maxsize=1)
def _cpumem_store() -> Store:
    from benchmarks import baselines

    return Store(baselines.STORE)


def setting_key(kind: str, rate: float) -> str:
    return f"{kind}:{rate:g}"


def config_label(cfg: Config, dry_run: bool = False) -> str:
    """"cpu10k", plus every field overridden on the command line (part of each run's key, so runs
    of another configuration are never mixed into the table)."""
    base = dataclasses.asdict(CONFIGS["cpu10k"])
    diff = [f"{k}={v}" for k, v in dataclasses.asdict(cfg).items() if base[k] != v and k != "name"]
    return ",".join(["cpu10k", *diff, *(["dry_run"] if dry_run else [])])


@dataclasses.dataclass(frozen=True)
class Cpu10kRun:
    setting: str  # "uniform:0.8", or ANY_SETTING for the label-free methods
    method: str  # a key of VARIANTS
    seed: int

    def key(self, label: str) -> str:
        return f"{self.setting}|{self.method}|{self.seed}|{label}"


def cpu10k_runs(settings: Sequence[tuple[str, float]], methods: Sequence[str], seeds: int,
                ablations: str = "none", variants: Sequence[str] = (),
                baselines: bool = False) -> list[Cpu10kRun]:
    """Every run, by priority: (uniform 0.8, 0.4, asymmetric 0.4: plain s0, robust_ieg s0), then
    ieg s0 and robust_eg s0, then l2r and eg, then seeds 1.. of plain and robust_ieg; then, with
    ``ablations`` (safeguards | table7 | all), the safeguard ablations and IEG-1..8 with
    safeguards at uniform 0.8 (seed 0); the ``variants`` at every setting (seed 0); with
    ``baselines``, BASELINES and RECOMMENDED at cpumem's selection (seed 0, then the seeds
    after it in LATER_SEED_ORDER). Label-free methods run once per seed
    (setting "any")."""
    preferred = [("uniform", 0.8), ("uniform", 0.4), ("asymmetric", 0.4)]
    order = [s for s in preferred if s in settings] + [s for s in settings if s not in preferred]
    runs: list[Cpu10kRun] = []

    def add(setting, method, seed, *, variant=False):
        if not variant and method not in methods:
            return
        run = Cpu10kRun(ANY_SETTING if method in LABEL_FREE else setting_key(*setting), method, seed)
        if run not in runs:
            runs.append(run)

    for pair in (("plain", "robust_ieg"), ("ieg", "robust_eg"), ("l2r", "eg")):
        for setting in order:
            for method in pair:
                add(setting, method, 0)
    for seed in range(1, seeds):
        for setting in order:
            add(setting, "plain", seed)
            add(setting, "robust_ieg", seed)
    if order and ablations != "none":
        where = ("uniform", 0.8) if ("uniform", 0.8) in order else order[0]
        names = ((SAFEGUARD_ABLATIONS if ablations in ("safeguards", "all") else ())
                 + (TABLE7_VARIANTS if ablations in ("table7", "all") else ()))
        for name in names:
            add(where, name, 0, variant=True)
    for name in variants:
        for setting in order:
            add(setting, name, 0, variant=True)
    if baselines:
        for setting in order:
            add(setting, "plain", 0, variant=True)
            add(setting, "plain/c_hat", 0, variant=True)  # finished where plain has its C_hat
        for seed in range(seeds):
            for method in (BASELINES + (RECOMMENDED,) if seed == 0 else LATER_SEED_ORDER):
                for setting in order:
                    chosen = cpumem_selection(method, setting_key(*setting))
                    if needs_first_stage(chosen):  # GLC's first stage, of the same seed
                        add(setting, "plain", seed, variant=True)
                        add(setting, "plain/c_hat", seed, variant=True)
                    add(setting, chosen, seed, variant=True)
    return runs


def only_runs(runs: Sequence[Cpu10kRun], patterns: Sequence[str], label: str) -> list[Cpu10kRun]:
    """The runs whose key matches one of the glob ``patterns`` (all runs without patterns), in
    their priority order, with GLC's first stage of each kept run that reads it (a second-stage
    run cannot train without it)."""
    if not patterns:
        return list(runs)
    kept = {run for run in runs if any(fnmatch.fnmatchcase(run.key(label), p) for p in patterns)}
    for run in list(kept):
        if needs_first_stage(run.method):
            kept.update(Cpu10kRun(run.setting, stage, run.seed)
                        for stage in ("plain", "plain/c_hat"))
    return [run for run in runs if run in kept]


def needs_first_stage(variant: str) -> bool:
    """Whether a variant reads GLC's C_hat of the plain run of its setting and seed."""
    return PLAIN_TRANSITION in VARIANTS[variant][1].values()


def run_cost(run: Cpu10kRun, cfg: Config) -> float:
    """Estimated seconds of a run (for --shard)."""
    steps = cfg.epochs * training.steps_per_epoch(cfg.train_subset or 49_900, cfg.batch_size)
    return steps * STEP_MS[VARIANTS[run.method][0]] / 1000 + cfg.epochs * EVAL_S_PER_EPOCH


def assign_shards(runs: Sequence[Cpu10kRun], shards: int, cfg: Config) -> list[int]:
    """Each run, in priority order, to the shard with the least estimated work so far: disjoint,
    balanced, and the same for every invocation with the same run list. A run that reads GLC's
    first stage goes to the shard of that stage's run (listed before it), which it waits for; a
    plain/c_hat run to the shard of its plain run, which makes it unnecessary once it records
    C_hat (on two shards both would train plain)."""
    load = [0.0] * shards
    out: list[int] = []
    for run in runs:
        shard = min(range(shards), key=lambda i: load[i])
        stages = (("plain",) if run.method == "plain/c_hat"
                  else ("plain/c_hat", "plain") if needs_first_stage(run.method) else ())
        for stage in stages:
            first = Cpu10kRun(run.setting, stage, run.seed)
            if first in runs[:len(out)]:
                shard = out[runs.index(first)]
                break
        out.append(shard)
        load[shard] += run_cost(run, cfg)
    return out



def resolved_options(variant: str, options: dict, plain_transition, per_epoch: int) -> dict:
    """The markers in a variant's options replaced by their values for this run: GLC's C_hat of the
    plain run of the same setting and seed (its first stage), its noise rate, the steps per epoch."""
    out = dict(options)
    for key, value in options.items():
        if value == PLAIN_TRANSITION:
            if plain_transition is None:
                raise RuntimeError(f"{variant}: needs the plain run of the same setting and seed "
                                   "first (GLC's first stage)")
            transition = torch.tensor(plain_transition, dtype=torch.float64)
            out[key] = (float(noise_rate_from_transition(transition)) if key == "noise_rate"
                        else transition)
        elif value == STEPS_PER_EPOCH:
            out[key] = per_epoch
    return out


def train_cpu10k(run: Cpu10kRun, split: Split, labels: Tensor, cfg: Config, device: torch.device,
                 *, max_steps: int | None = None, progress: bool = False, desc: str = "",
                 checkpoint: Path | None = None, plain_transition: list | None = None) -> dict:
    """One run with ``training.fit``: the record stored for it (per-epoch history included).

    ``checkpoint``: written after every epoch and resumed from when present, so that a run longer
    than one session (robust IEG: about two hours on two shared cores) continues where the last
    session stopped; deleted once the run is stored."""
    recipe, variant_options = VARIANTS[run.method]
    if variant_options.get("label_accuracy") == MEASURED_LABEL_ACCURACY:
        variant_options = {**variant_options,
                           "label_accuracy": float((labels == split.train_clean).float().mean())}
    if run.method == "trusted_only":  # the trusted images as the training set (clean labels)
        images, labels = tiled_trusted(split, split.train_images.shape[0])
        split = dataclasses.replace(split, train_images=images, train_clean=labels)
    per_epoch = training.steps_per_epoch(split.train_images.shape[0], cfg.batch_size)
    variant_options = resolved_options(run.method, variant_options, plain_transition, per_epoch)
    torch.manual_seed(run.seed)
    model = build_model(cfg).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=5e-4)
    extra = dict(variant_options)
    with_aa = "AA" in extra.get("components", recipes.COMPONENTS)
    strong = strong_augment("cifar10" if with_aa else None, value_range=(-1.0, 1.0),
                            per_image_policy=cfg.per_image_policy)
    if not with_aa:
        extra["plain_strong_augment"] = strong
    pipeline = make_pipeline(recipe, model, optimizer, cfg, run.seed, cfg.epochs * per_epoch,
                             extra=extra, strong=strong)
    views = (StrongViews(split.train_images, strong, run.seed, per_epoch, device)
             if cfg.precompute_strong and "strong" in pipeline.plan.views else None)
    data, weak_view = device_data(split, labels, cfg.weak_pad, device)
    eval_seconds: list[float] = []
    final: dict[str, float] = {}
    # evaluated beside the trained weights, never trained on: the official code reports an EMA of
    # the weights (0.999, which would span most of this run; 0.99 spans about one epoch, as
    # robust IEG's teacher, which is exactly this average of the same weights)
    eval_ema = WeightEMA(model, EVAL_EMA_DECAY, name="eval_ema")
    resume = max_steps is None and checkpoint is not None and checkpoint.exists()
    ema_state = {"eval_ema": eval_ema}
    ema_since_epoch = 0
    if resume:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if "eval_ema" not in saved["extra"]:  # written before the EMA: start at the resumed weights
            ema_state, ema_since_epoch = {}, int(saved["extra"]["epoch"])
            eval_ema.load_state_dict({"decay": EVAL_EMA_DECAY, "shadow": {
                name: saved["model"][name] for name in eval_ema.shadow}})

    def evaluate_fn(m: torch.nn.Module) -> dict[str, float]:
        started = time.perf_counter()
        val = predict(m, split.val_images, device)
        test = predict(m, split.test_images, device)
        with eval_ema.average_parameters():
            ema_val = predict(m, split.val_images, device)
            ema_test = predict(m, split.test_images, device)
        eval_seconds.append(time.perf_counter() - started)
        # the test accuracy is kept for the final model only (no selection on the test split);
        # its top-class share is logged per epoch as a collapse check
        final["test_accuracy"] = float((test == split.test_labels).float().mean())
        final["ema_test_accuracy"] = float((ema_test == split.test_labels).float().mean())
        final["ema_val_accuracy"] = float((ema_val == split.val_labels).float().mean())
        return {"val_accuracy": float((val == split.val_labels).float().mean()),
                "val_top_share": top_share(val), "test_top_share": top_share(test),
                "ema_val_accuracy": float((ema_val == split.val_labels).float().mean()),
                "ema_val_top_share": top_share(ema_val), "ema_test_top_share": top_share(ema_test)}

    epoch_metrics = EpochMetrics()
    started = time.perf_counter()

    def on_step(step: int, idx: Tensor, out) -> None:
        eval_ema.update(step)
        epoch_metrics.on_step(out)

    def on_epoch(entry: dict) -> None:
        epoch_metrics.close_epoch(entry)
        entry["seconds"] = time.perf_counter() - started
        metrics = entry["metrics"]
        parts = [f"loss {entry['loss']:.3f}", f"val {100 * entry['val_accuracy']:.1f}%",
                 f"top-class share val {entry['val_top_share']:.2f} "
                 f"test {entry['test_top_share']:.2f}",
                 f"EMA val {100 * entry['ema_val_accuracy']:.1f}% top-class share val "
                 f"{entry['ema_val_top_share']:.2f} test {entry['ema_test_top_share']:.2f}"]
        for name, short in (("pseudo_labeler/top_share", "PL top share"),
                            ("pseudo_labeler/marginal_entropy", "PL marginal entropy"),
                            ("pseudo_labeler/probe_accuracy", "PL probe acc"),
                            ("distribution_alignment/top_share", "DA top share"),
                            ("noisy_label_posterior/label_accuracy", "label accuracy est")):
            if name in metrics:
                parts.append(f"{short} {metrics[name]:.2f}")
        pre = f", strong view {views.seconds[-1]:.1f} s" if views is not None and views.seconds else ""
        print(f"    {desc} epoch {entry['epoch']}/{cfg.epochs}: " + ", ".join(parts)
              + f" ({entry['seconds']:.0f} s{pre})", flush=True)

    result = training.fit(pipeline, model, optimizer, data, epochs=cfg.epochs,
                          batch_size=cfg.batch_size, weak_augment=weak_view, seed=run.seed,
                          scheduler=make_scheduler(cfg, per_epoch), evaluate=evaluate_fn,
                          on_step=on_step, on_epoch=on_epoch, views=views, max_steps=max_steps,
                          progress=progress, desc=desc,
                          checkpoint=None if max_steps is not None else checkpoint,
                          resume=resume, state=ema_state)
    pipeline.close()
    if "test_accuracy" not in final:  # the checkpoint already held every epoch
        evaluate_fn(model)
    timing = run_timing(result.seconds, eval_seconds, views, epoch_metrics.steps_run)
    precompute = timing["precompute_seconds"]
    history = result.history
    return {
        "setting": run.setting, "method": run.method, "recipe": recipe, "seed": run.seed,
        "options": {k: repr(v) for k, v in variant_options.items()},
        "test_accuracy": final["test_accuracy"], "val_accuracy": history[-1]["val_accuracy"],
        "test_top_share": history[-1]["test_top_share"],
        "max_test_top_share": max(h["test_top_share"] for h in history),
        # the evaluation EMA (EVAL_EMA_DECAY) of the same run, from epoch ema_since_epoch + 1
        "ema_decay": EVAL_EMA_DECAY, "ema_since_epoch": ema_since_epoch,
        "ema_test_accuracy": final["ema_test_accuracy"],
        "ema_val_accuracy": final["ema_val_accuracy"],
        "max_ema_test_top_share": max((h["ema_test_top_share"] for h in history
                                       if "ema_test_top_share" in h), default=None),
        "history": history, "steps": result.steps, "seconds": result.seconds,
        "train_seconds": timing["train_seconds"], "ms_per_step": timing["ms_per_step"],
        # seconds, train_seconds, eval_seconds, precompute_seconds: this session's (the last, for
        # a run resumed from its checkpoint), over steps_this_session and evaluated_epochs
        "steps_this_session": epoch_metrics.steps_run, "evaluated_epochs": len(eval_seconds),
        "eval_seconds": timing["eval_seconds"], "precompute_seconds": precompute,
        "precompute_seconds_per_epoch": precompute / len(views.seconds) if views is not None else 0.0,
        "n_train": int(split.train_images.shape[0]), "n_val": int(split.val_images.shape[0]),
        "n_test": int(split.test_images.shape[0]), "n_trusted": int(split.trusted_images.shape[0]),
        "parameters": sum(p.numel() for p in model.parameters()),
        # GLC's first stage (C_hat of the final model on the trusted images), for the glc variant
        **({"transition": recipes.glc_transition(model, to_input(split.trusted_images, device),
                                                 split.trusted_labels.to(device)).tolist()}
           if recipe == "plain" and run.method != "trusted_only" else {}),
    }


def _finished(store: Store, args, cfg: Config):
    """Whether a run is stored (and, with --rerun-without-ema, has its evaluation EMA). A
    plain/c_hat run counts as finished where the plain run of its setting and seed has C_hat."""
    def finished(key: str) -> bool:
        plain = key.replace("|plain/c_hat|", "|plain|")
        if plain != key and store.done(plain, cfg) and "transition" in store.runs[plain]:
            return True
        return store.done(key, cfg) and not (args.rerun_without_ema
                                             and not has_ema(store.runs[key]))
    return finished


def plain_transition(store: Store, run: Cpu10kRun, label: str) -> list | None:
    """GLC's C_hat of the plain run of the run's setting and seed (GLC's first stage), or of its
    repetition plain/c_hat where that run predates the record."""
    for first_stage in ("plain", "plain/c_hat"):
        record = store.runs.get(Cpu10kRun(run.setting, first_stage, run.seed).key(label), {})
        if "transition" in record:
            return record["transition"]
    return None


def _report(args, store: Store, cfg: Config, label: str, runs: list[Cpu10kRun]) -> int:
    from benchmarks.cifar_report import cpu10k_report  # the report reads this protocol

    args.write = args.write or str(REPO / "docs" / "results.md")
    body = cpu10k_report(store, args, cfg, label, runs)
    print(body)
    if args.write:
        write_section(args.write, CPU10K_HEADING, body)
        print(f"wrote the section '## {CPU10K_HEADING}' into {args.write}")
    return 0


def _load_cifar(args, cfg: Config):
    """The training and test images and labels (None where the archives are absent)."""
    data_dir = Path(args.data)
    if not ((data_dir / "train.tar.gz").is_file() and (data_dir / "test.tar.gz").is_file()):
        print(f"noisy_cifar10: CIFAR-10 JPEG archives not found in {data_dir} (expected train.tar.gz "
              f"and test.tar.gz, see shared/data/cifar10-jpeg/README.md); skipping.")
        return None
    t0 = time.perf_counter()
    if args.dry_run:
        train = load_cifar10_head(data_dir, "train", TRUSTED_PER_CLASS
                                  + (cfg.val_size + (cfg.train_subset or 0)) // NUM_CLASSES)
        test = load_cifar10_head(data_dir, "test", 20)
    else:
        from iegkit.datasets import load_cifar10_jpeg

        train = load_cifar10_jpeg(data_dir, "train", cache_dir=args.cache_dir, verbose=True)[:2]
        test = load_cifar10_jpeg(data_dir, "test", cache_dir=args.cache_dir, verbose=True)[:2]
    print(f"CIFAR-10 loaded in {time.perf_counter() - t0:.1f} s: train {tuple(train[0].shape)}, "
          f"test {tuple(test[0].shape)}", flush=True)
    return train, test


def _time_steps(args, cfg: Config, train, test, methods: list[str]) -> int:
    """--time-steps: the strong view of the training images and N steps of each method."""
    device = torch.device(cfg.device)
    split = prepare_cpu10k_split(train, test, cfg, 0)
    model = build_model(cfg)
    print(f"timing --config {cfg.name}: {cfg.model} width {cfg.width} "
          f"({sum(p.numel() for p in model.parameters()):,} parameters), "
          f"{split.train_images.shape[0]} training images, batch {cfg.batch_size} + probe "
          f"{min(cfg.batch_size, split.trusted_images.shape[0])}, {torch.get_num_threads()} "
          f"threads, device {device}", flush=True)
    strong = strong_augment("cifar10", value_range=(-1.0, 1.0), per_image_policy=True)
    # timed on at most 5,000 images (the full set can take minutes) and scaled to all
    total_images = split.train_images.shape[0]
    sample = split.train_images[:5000]
    started = time.perf_counter()
    StrongViews(sample, strong, 0, 1, device).refresh(0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) * total_images / sample.shape[0]
    print(f"strong view of all {total_images} training images (per-image AutoAugment, outside "
          f"the step; timed on {sample.shape[0]}): {seconds:.1f} s per epoch", flush=True)
    time_steps(cfg, split, 0, device, args.time_steps,
               [m for m in methods if m in METHODS], args.settings, False, tuple(LABEL_FREE))
    return 0


def _run_one(run: Cpu10kRun, args, cfg: Config, label: str, store: Store, store_path: Path,
             split: Split, wall: float) -> None:
    """Train one run and store its record (its checkpoint removed once stored)."""
    key = run.key(label)
    device = torch.device(cfg.device)
    kind, rate = ("uniform", 0.8) if run.setting == ANY_SETTING else parse_settings(run.setting)[0]
    labels = noisy_labels(split.train_clean, kind, rate, run.seed)
    wrong = float((labels != split.train_clean).float().mean())
    desc = f"{run.setting} {run.method} s{run.seed}"
    print(f"{desc}: {split.train_images.shape[0]} training images "
          + ("(labels unused)" if run.method in LABEL_FREE else f"{100 * wrong:.1f}% wrong labels")
          + f", {split.val_images.shape[0]} validation, {split.test_images.shape[0]} test",
          flush=True)
    checkpoint = (Path(store_path).with_suffix("") / "checkpoints"
                  / (re.sub(r"[^A-Za-z0-9_.-]+", "_", key) + ".pt"))
    record = train_cpu10k(run, split, labels, cfg, device, max_steps=args.max_steps,
                          progress=not args.no_progress and sys.stderr.isatty(), desc=desc,
                          checkpoint=checkpoint,
                          plain_transition=plain_transition(store, run, label))
    record.update({"config": label, "cfg": dataclasses.asdict(cfg), "wrong_labels": wrong,
                   **run_provenance(args.argv, split)})
    store.add(key, record)
    checkpoint.unlink(missing_ok=True)
    print(f"{desc}: final test accuracy {100 * record['test_accuracy']:.2f}%, val "
          f"{100 * record['val_accuracy']:.2f}%, max test top-class share "
          f"{record['max_test_top_share']:.2f}; {record['ms_per_step']:.0f} ms/step, "
          f"{record['seconds'] / 60:.1f} min (evaluation {record['eval_seconds']:.0f} s, strong "
          f"view {record['precompute_seconds']:.0f} s); shard total "
          f"{(time.perf_counter() - wall) / 60:.1f} min", flush=True)


def main_cpu10k(args, cfg: Config) -> int:
    """--config cpu10k: every (setting, method, seed) run stored as it finishes in --store (JSON
    lines) and skipped on restart; --shard i/n runs one disjoint part; --report-only builds the
    tables, figures and section from the store."""
    label = config_label(cfg, args.dry_run)
    if args.max_steps is not None and not (args.store or args.dry_run):
        raise SystemExit("--max-steps: a shortened run would be stored as finished; give it its own "
                         "--store")
    store_path = Path(args.store or (REPO / "runs" / "cifar10_cpu10k_dry.jsonl" if args.dry_run
                                     else CPU10K_STORE))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    seeds = args.seeds if args.seeds is not None else 2
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {sorted(VARIANTS)}")
    runs = cpu10k_runs(args.settings, methods, seeds, args.ablations, variants, args.baselines)
    runs = only_runs(runs, [p.strip() for p in args.only.split(",") if p.strip()], label)
    shard, shards = 0, 1
    if args.shard:
        shard, shards = (int(x) for x in args.shard.split("/"))
    owner = assign_shards(runs, shards, cfg)
    store = Store(store_path)
    if args.report_only:
        return _report(args, store, cfg, label, runs)
    finished = _finished(store, args, cfg)
    if args.list_runs:
        for run, s in zip(runs, owner):
            state = "done" if finished(run.key(label)) else "todo"
            print(f"shard {s}/{shards}  {state}  {run.key(label)}  (~{run_cost(run, cfg) / 60:.0f} min)")
        return 0

    mine = [run for run, s in zip(runs, owner) if s == shard]
    if not args.time_steps and all(finished(run.key(label)) for run in mine):
        print(f"--config {label}: all {len(mine)} runs of shard {shard}/{shards} are in {store_path}; "
              "nothing to do (--report-only builds the tables)", flush=True)
        return 0
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    loaded = _load_cifar(args, cfg)
    if loaded is None:
        return 0
    train, test = loaded
    if args.time_steps:
        return _time_steps(args, cfg, train, test, methods)

    print(f"--config {label}: {dataclasses.asdict(cfg)}; store {store_path}; shard {shard}/{shards}: "
          f"{len(mine)} of {len(runs)} runs, {sum(finished(r.key(label)) for r in mine)} done",
          flush=True)
    splits: dict[int, Split] = {}
    wall = time.perf_counter()
    for run in mine:
        store.reload()
        if finished(run.key(label)):
            continue
        if run.seed not in splits:
            splits[run.seed] = prepare_cpu10k_split(train, test, cfg, run.seed)
        _run_one(run, args, cfg, label, store, store_path, splits[run.seed], wall)
    print(f"shard {shard}/{shards} done; store {store_path}", flush=True)
    return 0
