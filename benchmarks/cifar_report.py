"""The report of the ``cpu10k`` protocol: its tables, ablation tables and figures, from the
stored runs (``--report-only``)."""

from __future__ import annotations

import dataclasses
import os
import statistics
from collections.abc import Sequence
from pathlib import Path

from benchmarks.cifar_cpu10k import (
    ANY_SETTING,
    BASELINES,
    EVAL_EMA_DECAY,
    HISTORICAL_VARIANTS,
    LABEL_FREE,
    RECOMMENDED,
    SAFEGUARD_ABLATIONS,
    SELECTION_CANDIDATES,
    VARIANTS,
    Cpu10kRun,
    cpumem_selection,
    selection_method,
    setting_key,
)
from benchmarks.cifar_runs import (
    METHODS,
    NUM_CLASSES,
    REPO,
    TRUSTED_PER_CLASS,
    Config,
    Store,
    has_ema,
)
from benchmarks.results_io import command, provenance, rerunnable, t_interval
from iegkit import recipes, training


def _mean_std(values: Sequence[float]) -> str:
    mean = 100 * statistics.mean(values)
    if len(values) > 1:
        return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"
    return f"{mean:.1f}"


def _largest_class(g: Sequence[dict]) -> str:
    """The largest test class after any epoch: trained weights, and their evaluated EMA (robust
    IEG's teacher) where recorded."""
    trained = f"{max(r['max_test_top_share'] for r in g):.2f}"
    teacher = [r["max_ema_test_top_share"] for r in g if r.get("max_ema_test_top_share") is not None]
    return trained + (f" / {max(teacher):.2f}" if teacher else " / -")


def ablation_tables(group) -> list[str]:
    """The issue's two ablations at uniform 0.8 (seed 0): robust_ieg without each safeguard, and
    IEG-1..8 (paper Table 7) with every safeguard on (robust IEG-5 is robust_ieg itself)."""
    where = "uniform:0.8"
    lines: list[str] = []
    safeguards = [v for v in SAFEGUARD_ABLATIONS if group(where, v)]
    if safeguards:
        lines += ["Safeguard ablation at uniform 0.8 (seed 0; largest test class after any epoch: "
                  "trained weights / their EMA of 0.99, robust IEG's teacher, where recorded; the "
                  "same in the next table):", "",
                  "| variant | test % | val % | largest test class |", "| --- | --- | --- | --- |"]
        for v in ("robust_ieg", *safeguards):
            g = [r for r in group(where, v) if r["seed"] == 0]
            if g:
                options = ", ".join(f"{k}={x}" for k, x in VARIANTS[v][1].items()) or "defaults"
                lines.append(f"| {v} ({options}) | {_mean_std([r['test_accuracy'] for r in g])} | "
                             f"{_mean_std([r['val_accuracy'] for r in g])} | {_largest_class(g)} |")
        lines.append("")
    table7 = {n: [r for r in group(where, "robust_ieg" if n == 5 else f"robust_ieg-{n}")
                  if r["seed"] == 0] for n in recipes.TABLE7}
    if any(table7[n] for n in recipes.TABLE7 if n != 5):
        from benchmarks.ablations import (
            PAPER as PAPER_TABLE7,  # the paper's Table 7, for the ordering
        )

        lines += ["IEG-1..8 (paper Table 7) with the safeguards, uniform 0.8 (seed 0; "
                  "`robust_ieg(components=TABLE7[n])`; UC: KL consistency, MC: MixUp "
                  "cross-entropy, AA: AutoAugment strong view, λ: meta relabeling; the paper's "
                  "column is its Table 7 (CIFAR-100, WRN-28-10) at 80% noise, for the ordering "
                  "only):", "",
                  "| # | UC | MC | AA | λ | test % | val % | largest test class | paper 0.8 |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for n, g in table7.items():
            marks = " | ".join("✓" if c in recipes.TABLE7[n] else "" for c in ("UC", "MC", "AA",
                                                                             "lambda"))
            cells = (f"{_mean_std([r['test_accuracy'] for r in g])} | "
                     f"{_mean_std([r['val_accuracy'] for r in g])} | {_largest_class(g)}"
                     if g else "not run | - | -")
            lines.append(f"| {n} | {marks} | {cells} | {PAPER_TABLE7[n][1]:.2f} |")
        lines.append("")
    return lines


def _accuracy_table(group, settings: Sequence[str], methods: Sequence[str], head: str) -> str:
    """Final test accuracy per method and setting (bold: the best of a column)."""
    lines = [head, "|" + " --- |" * (len(settings) + 1)]
    best = {s: max((statistics.mean(r["test_accuracy"] for r in group(s, m)) for m in methods
                    if group(s, m)), default=None) for s in settings}
    for m in methods:
        cells = []
        for s in settings:
            g = group(s, m)
            if not g:
                cells.append("-")
                continue
            acc = _mean_std([r["test_accuracy"] for r in g])
            if statistics.mean(r["test_accuracy"] for r in g) == best[s]:
                acc = f"**{acc}**"
            cells.append(f"{acc} [{len(g)}] · val {_mean_std([r['val_accuracy'] for r in g])} · "
                         f"top {max(r['max_test_top_share'] for r in g):.2f}")
        lines.append(f"| {m}{' (labels unused)' if m in LABEL_FREE else ''} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines)


def _ema_table(group, settings: Sequence[str], methods: Sequence[str], head: str) -> list[str]:
    """The evaluation EMA (EVAL_EMA_DECAY), recorded beside the trained weights since it was
    added: only the runs made or re-run since then."""
    ema_lines = []
    for m in methods:
        cells = []
        for s in settings:
            g = [r for r in group(s, m) if has_ema(r)]
            cells.append("-" if not g else
                         f"{_mean_std([r['ema_test_accuracy'] for r in g])} [{len(g)}] · val "
                         f"{_mean_std([r['ema_val_accuracy'] for r in g])} · top "
                         f"{max(r['max_ema_test_top_share'] for r in g):.2f} (trained weights: "
                         f"{_mean_std([r['test_accuracy'] for r in g])}, top "
                         f"{max(r['max_test_top_share'] for r in g):.2f})")
        if any(c != "-" for c in cells):
            ema_lines.append(f"| {m}{' (labels unused)' if m in LABEL_FREE else ''} | "
                             + " | ".join(cells) + " |")
    if ema_lines:
        ema_lines = [head, "|" + " --- |" * (len(settings) + 1), *ema_lines]

    return ema_lines


def _target_checks(group, settings: Sequence[str]) -> list[str]:
    """robust IEG against plain and the collapse bound, as the targets state them."""
    checks = []
    for s, margin in (("uniform:0.4", 5.0), ("uniform:0.8", 10.0)):
        p, r = group(s, "plain"), group(s, "robust_ieg")
        if p and r:
            diff = 100 * (statistics.mean(x["test_accuracy"] for x in r)
                          - statistics.mean(x["test_accuracy"] for x in p))
            checks.append(f"robust IEG - plain at {s.replace(':', ' ')}: {diff:+.1f} points "
                          f"(target >= +{margin:.0f}: {'met' if diff >= margin else 'not met'})")
    rows = [s for s in settings if group(s, "plain") and group(s, "robust_ieg")]
    if rows:
        worst = min(100 * (statistics.mean(x["test_accuracy"] for x in group(s, "robust_ieg"))
                           - statistics.mean(x["test_accuracy"] for x in group(s, "plain")))
                    for s in rows)
        checks.append(f"robust IEG - plain, worst row: {worst:+.1f} points (target >= -1: "
                      f"{'met' if worst >= -1 else 'not met'})")
    for m in ("robust_ieg", "robust_eg"):
        g = [r for s in settings for r in group(s, m)]
        if g:
            top = max(r["max_test_top_share"] for r in {id(r): r for r in g}.values())
            checks.append(f"{m}: largest test top-class share after any epoch {top:.2f} (target "
                          f"<= 0.25: {'met' if top <= 0.25 else 'not met'})")
            with_ema = list({id(r): r for r in g if has_ema(r)}.values())
            if with_ema:
                top = max(r["max_ema_test_top_share"] for r in with_ema)
                checks.append(f"{m} evaluated with its EMA, in the {len(with_ema)} of "
                              f"{len({id(r) for r in g})} runs recorded with it: {top:.2f} ("
                              f"{'<= 0.25 in these runs' if top <= 0.25 else 'above 0.25'})")

    return checks


def _shrinkage_selection(group, settings: Sequence[str]) -> list[str]:
    """The selection of robust_ieg's defaults on the validation split, where its runs exist."""
    shrink_lines = []
    candidates = [(v, m) for v, m in ((v, selection_method(v)) for v in SELECTION_CANDIDATES)
                  if any(group(st, m) for st in settings)]
    if len(candidates) > 1:
        shrink_lines = ["Selection of robust_ieg's defaults (seed 0; chosen on the validation "
                        "accuracy, the test accuracy shown for the record):",
                        "", "| robust_ieg options | " + " | ".join(
                            f"{st.replace(':', ' ')} val % / test % (max val top-class share)"
                            for st in settings) + " |",
                        "|" + " --- |" * (len(settings) + 1)]
        for variant, method in candidates:
            cells = []
            for st in settings:
                g = [r for r in group(st, method) if r["seed"] == 0]
                cells.append(f"{100 * g[0]['val_accuracy']:.1f} / {100 * g[0]['test_accuracy']:.1f}"
                             f" ({max(h['val_top_share'] for h in g[0]['history']):.2f})"
                             if g else "-")
            options = ", ".join(f"{k}={x:g}" if isinstance(x, float) else f"{k}={x}"
                                for k, x in VARIANTS[variant][1].items())
            default = (" (the defaults)" if method == "robust_ieg" else
                       " (first estimator, commit ac36477)" if variant in HISTORICAL_VARIANTS else "")
            shrink_lines.append(f"| {options}{default} | " + " | ".join(cells) + " |")
        plain = [group(st, "plain") for st in settings]
        shrink_lines.append("| plain | " + " | ".join(
            f"{100 * g[0]['val_accuracy']:.1f} / {100 * g[0]['test_accuracy']:.1f}"
            f" ({max(h['val_top_share'] for h in g[0]['history']):.2f})" if g else "-"
            for g in (sorted(g, key=lambda r: r["seed"]) for g in plain)) + " |")

    return shrink_lines


#: the rows of the baselines table: what a user runs instead (plain, L2R, --baselines), then ours
OURS = ("robust_ieg", RECOMMENDED)
#: the floor every method must beat, never "the best baseline"
FLOOR = "trusted_only"
BASELINE_ROWS = ("plain", "l2r", *BASELINES, *OURS)


def _row_runs(group, setting: str, method: str) -> dict[int, dict]:
    """A row's runs by seed: the baselines and robust_ieg_glc at cpumem's selection for the
    setting."""
    chosen = cpumem_selection(method, setting) if method in (*BASELINES, RECOMMENDED) else method
    return {r["seed"]: r for r in group(setting, chosen)}


def _mean(runs: dict[int, dict], key: str) -> float:
    return statistics.mean(r[key] for r in runs.values())


def _ours_minus_best(group, settings: Sequence[str]) -> list[str]:
    """Per setting, each of ours minus the baseline it beats by the least (or loses to by the
    most), paired over the seeds the two share: the comparison least favourable to us, not a
    choice for deployment. The trusted-only floor is not a candidate."""
    diffs = []
    for st in settings:
        rows = {m: runs for m in BASELINE_ROWS if (runs := _row_runs(group, st, m))}
        for m in (m for m in OURS if m in rows):
            paired = {b: {s: rows[m][s]["test_accuracy"] - rows[b][s]["test_accuracy"]
                          for s in sorted(set(rows[m]) & set(rows[b]))}
                      for b in rows if b not in (*OURS, FLOOR)}
            paired = {b: d for b, d in paired.items() if d}
            if not paired:
                continue
            best = min(paired, key=lambda b: statistics.mean(paired[b].values()))
            seeds = list(paired[best])
            which = f" (seeds {', '.join(map(str, seeds))})" if len(seeds) > 1 else ""
            diffs.append(f"{st.replace(':', ' ')}: {m} − {best} "
                         f"{t_interval(list(paired[best].values()))}{which}")
    return diffs


def _baseline_cell(runs: dict[int, dict]) -> str:
    """test % [seeds] · clean val % · ms/step, then the selected candidate where not the default."""
    if not runs:
        return "-"
    seeds = f" [{len(runs)}]" if len(runs) > 1 else ""
    variant = next(iter(runs.values()))["method"]
    chosen = f" ({variant.split('/', 1)[1]})" if "/" in variant else ""
    return (f"{100 * _mean(runs, 'test_accuracy'):.1f}{seeds} · "
            f"{100 * _mean(runs, 'val_accuracy'):.1f} · {_mean(runs, 'ms_per_step'):.0f}{chosen}")


def _baseline_table(group, settings: Sequence[str]) -> list[str]:
    """The baselines beside robust IEG (--baselines), mean over the stored seeds, and ours minus
    the best baseline; empty before any baseline run."""
    if not any(_row_runs(group, st, m) for st in settings for m in BASELINES):
        return []
    lines = ["Baselines (`--baselines`; final epoch, mean over the stored seeds, their number in "
             "brackets where more than one). Each baseline and robust_ieg_glc runs "
             "at the candidate that `benchmarks/baselines.py` selected for the setting on cpumem's "
             "noisy validation labels (named at the end of the cell where not the default): "
             "none of their options is chosen on cpu10k's clean split; robust_ieg's defaults were (section "
             "'Robust IEG: what was selected, and on what'). Cell: test % · clean val % · ms/step "
             "(as measured in that run, with up to three other jobs on the machine's two cores: "
             "compare cost in 'Baselines: cost per step, side by side', measured in one run):",
             "", "| method | " + " | ".join(st.replace(":", " ") for st in settings) + " |",
             "|" + " --- |" * (len(settings) + 1)]
    for method in BASELINE_ROWS:
        cells = [_baseline_cell(_row_runs(group, st, method)) for st in settings]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    diffs = _ours_minus_best(group, settings)
    if diffs:
        lines += ["", "Ours minus the baseline it beats by the least, paired over the seeds the two "
                  "share (the comparison least favourable to us; trusted-only is the floor, not a "
                  "candidate), with a 95% t interval where there are two or more: "
                  + "; ".join(diffs) + "."]
    return lines + [""]


def _warmup_selection(group) -> list[str]:
    """The selection of robust_eg's lr warm-up, where both runs exist."""
    warmup_lines = []
    warmup_runs = [(v, [r for r in group(ANY_SETTING, v) if r["seed"] == 0])
                   for v in ("robust_eg/no_warmup", "robust_eg")]
    if all(g for _, g in warmup_runs):
        warmup_lines = ["Selection of robust_eg's lr warm-up (seed 0; chosen on the validation "
                        "split's largest class after epoch 1, at a final validation accuracy within "
                        "noise; the test accuracy shown for the record). Largest predicted class on "
                        "the validation split, trained weights / EMA (teacher):", "",
                        "| robust_eg options | after epoch 1 | worst epoch | final val % | test % |",
                        "| --- | --- | --- | --- | --- |"]
        for variant, (r,) in ((v, g[:1]) for v, g in warmup_runs):
            h = r["history"]
            ema = has_ema(r)
            first = (f"{h[0]['val_top_share']:.2f} / "
                     + (f"{h[0]['ema_val_top_share']:.2f}" if ema else "-"))
            worst = (f"{max(e['val_top_share'] for e in h):.2f} / "
                     + (f"{max(e['ema_val_top_share'] for e in h):.2f}" if ema else "-"))
            options = ", ".join(f"{k}={x:g}" for k, x in VARIANTS[variant][1].items())
            warmup_lines.append(
                f"| {options or f'defaults (warmup_fraction={recipes.ROBUST_EG_WARMUP_FRACTION:g})'}"
                f" | {first} | {worst} | {100 * r['val_accuracy']:.1f} | "
                f"{100 * r['test_accuracy']:.1f} |")

    return warmup_lines


def _cost_table(records: Sequence[dict], methods: Sequence[str]) -> list[str]:
    cost = ["| method | ms/step (mean over runs) | strong view s/epoch | evaluation s/epoch | "
            "min/run |", "| --- | --- | --- | --- | --- |"]
    for m in methods:
        g = [r for r in records if r["method"] == m]
        epochs = [r.get("evaluated_epochs", len(r["history"])) for r in g]
        cost.append(f"| {m} | {statistics.mean(r['ms_per_step'] for r in g):.0f} | "
                    f"{statistics.mean(r['precompute_seconds_per_epoch'] for r in g):.1f} | "
                    f"{statistics.mean(r['eval_seconds'] / max(1, e) for r, e in zip(g, epochs)):.1f} | "
                    f"{statistics.mean(r['seconds'] for r in g) / 60:.1f} |")
    return cost


def _details(cfg: Config, records: Sequence[dict]) -> str:
    """The configuration, in words."""
    any_r = records[0] if records else {}
    model_desc = {"small_cnn4": f"SmallCNN(in_channels=3, width={cfg.width}, blocks=4)",
                  "wrn28_2": "WRN-28-2 (benchmarks/wrn.py)",
                  "wrn28_10": "WRN-28-10 (benchmarks/wrn.py)"}.get(
        cfg.model, f"{cfg.model} (width {cfg.width})")
    n_train = any_r.get("n_train") or cfg.train_subset
    subset_desc = (f"a stratified {cfg.train_subset:,}-image training subset" if cfg.train_subset
                   else f"all {n_train:,} remaining training images" if n_train
                   else "all remaining training images")
    details = (
        f"{model_desc}, {any_r.get('parameters', 0):,} parameters. Data: 10 trusted images per "
        f"class (clean labels; the probe set) removed first, then a stratified clean validation "
        f"split of {cfg.val_size:,} images (clean labels, used only for the validation accuracy), "
        f"then {subset_desc}, the only labels that get "
        f"noise; test: {any_r.get('n_test', 0):,} images"
        f"{' (the full test split)' if any_r.get('n_test') == 10_000 else ''}. {cfg.epochs} epoch(s) of "
        f"{training.steps_per_epoch(n_train, cfg.batch_size) if n_train else '?'} steps, batch "
        f"{cfg.batch_size} + probe batch {min(cfg.batch_size, TRUSTED_PER_CLASS * NUM_CLASSES)}; "
        f"SGD lr {cfg.lr} momentum 0.9 wd 5e-4, one cosine decay to 0 over the run for every "
        f"method; one torch thread per process. Weak view `weak_augment(pad={cfg.weak_pad})`; the "
        f"strong view (per-image AutoAugment CIFAR-10 policy, crop, flip, cutout 16, on the raw "
        f"images) is made for every training image once per epoch outside the step and passed "
        f"with `fit(views=...)`. EG/IEG: p, k ramped over the whole run (`recipes.build`); robust "
        f"EG/IEG: `recipes.robust_ieg`/`robust_eg` defaults (EMA teacher 0.99, distribution "
        f"alignment 0.99, ramp over the run; robust IEG: meta shrinkage "
        f"{recipes.ROBUST_META_SHRINKAGE:g} and the label posterior; robust EG: lr warm-up over "
        f"the first {100 * recipes.ROBUST_EG_WARMUP_FRACTION:g}% of the run); probe diagnostics every "
        f"{cfg.probe_diagnostics_every} steps. EG and robust EG never read the noisy labels: one "
        f"run per seed, shown in every column. Nothing was selected on the test split.")
    return details


def cpu10k_report(store: Store, args, cfg: Config, label: str, runs: Sequence[Cpu10kRun]) -> str:
    """The tables, the figures and the body of the docs/results.md section, from the store."""
    records = [r for r in store.runs.values()
               if r.get("config") == label and r.get("cfg") == dataclasses.asdict(cfg)]
    settings = [setting_key(*s) for s in args.settings]
    by: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        by.setdefault((r["setting"], r["method"]), []).append(r)
    for group in by.values():
        group.sort(key=lambda r: r["seed"])

    def group(setting: str, method: str) -> list[dict]:
        return by.get((ANY_SETTING if method in LABEL_FREE else setting, method), [])

    methods = [m for m in METHODS if any(group(s, m) for s in settings)]
    figures = Path(args.figures_dir)
    base = Path(args.write).resolve().parent if args.write else REPO / "docs"
    figure_paths = plot_cpu10k(group, settings, methods, figures)
    wrong = {s: next((r["wrong_labels"] for r in records if r["setting"] == s), None)
             for s in settings}

    head = "| method | " + " | ".join(
        f"{s.replace(':', ' ')} ({'n/a' if wrong[s] is None else f'{100 * wrong[s]:.0f}% wrong'})"
        for s in settings) + " |"
    table = _accuracy_table(group, settings, methods, head)
    ema_lines = _ema_table(group, settings, methods, head)
    checks = _target_checks(group, settings)
    ablation_lines = ablation_tables(group)
    shrink_lines = _shrinkage_selection(group, settings)
    warmup_lines = _warmup_selection(group)
    baseline_lines = _baseline_table(group, settings)
    cost = _cost_table(records, methods)
    done = sum(store.done(run.key(label), cfg) for run in runs)
    commands = sorted({rerunnable(r["command"]) for r in records})
    details = _details(cfg, records)
    head = provenance(f"; {done} of {len(runs)} listed runs in the store.")
    body = [head.replace(command(), command(args.argv), 1), "",
            "Training commands (runs stored one by one in "
            f"`{os.path.relpath(store.path.resolve(), REPO)}`, skipped on restart): "
            + "; ".join(f"`{c}`" for c in commands), "", details, "",
            "Final test accuracy % of the final model (mean ± std over seeds) [seeds] · final "
            "validation accuracy % · top: the largest predicted class's share of the test "
            "predictions, maximum over all epochs (collapse check; balanced = 0.10). Bold: best "
            "per column.", "", table, ""]
    if ema_lines:
        body += [f"Evaluated as the official code evaluates, with an EMA ({EVAL_EMA_DECAY}) of the "
                 "weights (for robust IEG and robust EG exactly their teacher, "
                 "`iegkit.evaluation_weights`), in the runs recorded with it (the EMA was added "
                 "after the first runs; `--rerun-without-ema` repeats a run for it). Each cell: "
                 "EMA test % [runs] · EMA val % · top: the EMA's largest test class after any epoch "
                 "(the same runs' trained weights in brackets):", "", *ema_lines, ""]
    if checks:
        body += ["Against the targets: " + "; ".join(checks) + ".", ""]
    body += baseline_lines
    body += ablation_lines
    if shrink_lines:
        body += shrink_lines + [""]
    if warmup_lines:
        body += warmup_lines + [""]
    body += ["Cost on this machine (ms/step: the step, including the pseudo labeler's probe "
             "diagnostic, which augments the 100 probe images inside every 10th step; the strong "
             "view of the training images and the evaluation of the validation and test splits "
             "are timed apart):", "", *cost, ""]
    for path, what in figure_paths:
        body.append(f"{what}: ![{what}]({os.path.relpath(path.resolve(), base)})")
        body.append("")
    return "\n".join(body)


def plot_cpu10k(group, settings: Sequence[str], methods: Sequence[str],
                figures: Path) -> list[tuple[Path, str]]:
    """Validation accuracy per epoch (one panel per setting) and the collapse metrics per epoch
    (rows: metrics, columns: settings); mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def curve(records: list[dict], get) -> tuple[list, list]:
        hists = [r["history"] for r in records]
        length = min(len(h) for h in hists)
        ys = []
        for i in range(length):
            values = [get(h[i]) for h in hists]
            values = [v for v in values if v is not None]
            ys.append(statistics.mean(values) if values else float("nan"))
        return [hists[0][i]["epoch"] for i in range(length)], ys

    figures.mkdir(parents=True, exist_ok=True)
    color = {m: f"C{i}" for i, m in enumerate(METHODS)}  # the same colour in every panel
    out = []
    fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 3.4), sharey=True,
                             squeeze=False)
    for ax, s in zip(axes[0], settings):
        for m in methods:
            if group(s, m):
                xs, ys = curve(group(s, m), lambda h: 100 * h["val_accuracy"])
                ax.plot(xs, ys, label=m, marker=".", color=color[m])
        ax.set_title(f"{s.replace(':', ' ')} noise")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy (%)")
    if axes[0][0].lines:
        axes[0][0].legend(fontsize=7)
    fig.suptitle("noisy CIFAR-10, --config cpu10k:\nclean validation split", fontsize=9)
    fig.tight_layout()
    path = figures / "noisy_cifar10_cpu10k_val.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    out.append((path, "Validation accuracy per epoch"))

    rows = [("test top-class share", lambda h: h["test_top_share"]),
            ("test top-class share, EMA", lambda h: h.get("ema_test_top_share")),
            ("val top-class share", lambda h: h["val_top_share"]),
            ("pseudo-label top share", lambda h: h["metrics"].get("pseudo_labeler/top_share")),
            ("pseudo-label marginal entropy",
             lambda h: h["metrics"].get("pseudo_labeler/marginal_entropy")),
            ("pseudo-label probe accuracy",
             lambda h: h["metrics"].get("pseudo_labeler/probe_accuracy")),
            ("aligned pseudo-label top share",
             lambda h: h["metrics"].get("distribution_alignment/top_share"))]
    fig, axes = plt.subplots(len(rows), len(settings), figsize=(4.2 * len(settings), 2.3 * len(rows)),
                             sharex=True, squeeze=False)
    for j, s in enumerate(settings):
        axes[0][j].set_title(f"{s.replace(':', ' ')} noise")
        for i, (name, get) in enumerate(rows):
            ax = axes[i][j]
            for m in methods:
                if group(s, m):
                    xs, ys = curve(group(s, m), get)
                    if any(y == y for y in ys):  # not all NaN
                        ax.plot(xs, ys, label=m, marker=".", color=color[m])
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
            if name.endswith("share"):
                ax.axhline(0.25, color="gray", lw=0.8, ls="--")
            ax.grid(alpha=0.3)
        axes[-1][j].set_xlabel("epoch")
    handles = {}
    for row in axes:
        for ax in row:
            for handle, name in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(name, handle)
    axes[0][0].legend(handles.values(), handles.keys(), fontsize=7)
    fig.suptitle("collapse metrics per epoch\n(pseudo-label metrics: mean over the epoch's "
                 "steps; dashed: 0.25)", fontsize=9)
    fig.tight_layout()
    path = figures / "noisy_cifar10_cpu10k_collapse.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    out.append((path, "Collapse metrics per epoch"))
    return out
