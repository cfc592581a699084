"""Label issues worth reading (issue 25, item 2): iegkit's label-posterior flags against cleanlab's
``find_label_issues`` (confident learning), on the same trained model and the same data.

The data and training are those of ``benchmarks.baselines`` (``--config cpumem``, where plain
training memorises the noise; seed 0, uniform 0.4 and asymmetric 0.4): the recommended recipe,
robust_ieg_glc, trained once per setting with a ``StepRecorder`` on every step. After the last step,
``iegkit.evaluation_weights`` (its EMA teacher, the weights it deploys) gives the softmax on the
8,000 un-augmented training images; both detectors read that one matrix:

* **iegkit, C_hat**: ``diagnostics.find_label_issues(probs, labels, transition=C_hat)``, the label
  posterior under GLC's C_hat from the trusted set (the plain run of the same setting and seed,
  as robust_ieg_glc itself uses), flagged when P(label wrong) > 1/2;
* **iegkit, symmetric r**: the same under the symmetric channel with r fitted to the model's own
  probabilities (no trusted set);
* **cleanlab**: ``cleanlab.filter.find_label_issues(labels, pred_probs)`` with its defaults
  (prune by noise rate); its AUC ranks by its self-confidence score. cleanlab recommends
  out-of-sample probabilities (cross-validation, k models); here both get the same in-sample ones.

Also reported, as the detectors the run report used before: the recorded omega* and lambda*
(averaged over visits), as the run shrank them and un-shrunk (``functional.shrinkage.unshrink``),
flagged below 1/2 of the uniform weight / below 1/2; and "prediction disagrees" (argmax != label).
Nothing here is selected: the threshold 1/2 is Bayes' decision, fixed before any run.

Each run is appended to ``benchmarks/results/label_issues_cpumem.jsonl`` with its per-example
arrays in ``benchmarks/results/label_issues_cpumem/`` (probabilities, labels, the cleanlab mask,
the recorded averages): ``--report-only`` recomputes the table from them without cleanlab.

    .venv/bin/pip install -e ".[cleanlab]"
    .venv/bin/python -m benchmarks.label_issues --no-progress     # about 25 min per setting
    .venv/bin/python -m benchmarks.label_issues --report-only     # -> docs/results.md
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from benchmarks import baselines
from benchmarks import cifar_runs as cifar
from benchmarks.results_io import run_provenance, write_section
from iegkit import recipes
from iegkit.diagnostics import (
    StepRecorder,
    detection_metrics,
    find_label_issues,
    predicted_probabilities,
)
from iegkit.ema import evaluation_weights
from iegkit.functional.shrinkage import unshrink

REPO = baselines.REPO
HEADING = "Label issues: iegkit's label posterior against cleanlab (benchmarks/label_issues.py)"
STORE = REPO / "benchmarks" / "results" / "label_issues_cpumem.jsonl"
SETTINGS = ("uniform:0.4", "asymmetric:0.4")
METHOD = "robust_ieg_glc"
LABEL_INIT = 0.9  # robust_ieg's lambda0


def arrays_path(store_path: Path, key: str) -> Path:
    return store_path.with_suffix("") / (re.sub(r"[^A-Za-z0-9_.=-]+", "_", key) + ".pt")


def cleanlab_flags(labels: Tensor, probs: Tensor) -> tuple[Tensor, Tensor]:
    """cleanlab's defaults: the issue mask, and its self-confidence quality (low = suspect)."""
    from cleanlab.filter import find_label_issues as cleanlab_find
    from cleanlab.rank import get_label_quality_scores

    y, p = labels.numpy(), probs.float().numpy()
    return (torch.from_numpy(cleanlab_find(labels=y, pred_probs=p)),
            torch.from_numpy(get_label_quality_scores(y, p)).double())


def label_issue_run(run: baselines.Run, split: baselines.Split, cfg: baselines.Config,
                    base_store: cifar.Store, label: str, *, max_steps: int | None,
                    progress: bool) -> tuple[dict, dict]:
    """Train ``run`` with a recorder; returns (record, per-example arrays)."""
    noisy_train, noisy_val = baselines.noisy_pool_labels(split, run.setting, run.seed)
    n = split.train_images.shape[0]
    recorder = StepRecorder(n, is_noisy=noisy_train != split.train_clean)

    def finish(pipeline, model) -> dict:
        with evaluation_weights(pipeline):
            probs = predicted_probabilities(model, cifar.to_input(split.train_images,
                                                                  torch.device("cpu")))
        return {"probs": probs}

    record = baselines.train_run(run, split, noisy_train, noisy_val, cfg, base_store, label,
                                 checkpoint=None, max_steps=max_steps, progress=progress,
                                 on_step=recorder.record, finish=finish)
    probs = record.pop("probs")
    plain = base_store.runs[baselines.Run(run.setting, "plain", run.seed).key(label)]
    mask, quality = cleanlab_flags(noisy_train, probs)
    arrays = {"probs": probs.float(), "given": noisy_train, "clean": split.train_clean,
              "transition": torch.tensor(plain["transition"], dtype=torch.float64),
              "cleanlab_mask": mask, "cleanlab_quality": quality,
              "weight_rel_avg": recorder.weight_rel_avg, "relabel_avg": recorder.relabel_avg,
              "shrinkage": recipes.ROBUST_META_SHRINKAGE, "label_init": LABEL_INIT}
    return record, arrays


def detectors(arrays: dict) -> dict[str, tuple[str, dict]]:
    """name -> (uses the trusted set?, detection metrics against the true mislabeled mask)."""
    probs, given, clean = arrays["probs"].double(), arrays["given"], arrays["clean"]
    noisy = given != clean
    out: dict[str, tuple[str, dict]] = {}
    posterior = find_label_issues(probs, given, transition=arrays["transition"])
    out["iegkit: label posterior, C_hat from the trusted set"] = ("yes", detection_metrics(
        posterior.error_probability, noisy, decision=posterior.flagged))
    symmetric = find_label_issues(probs, given)
    out[f"iegkit: label posterior, symmetric r = {symmetric.label_accuracy:.2f}"] = (
        "no", detection_metrics(symmetric.error_probability, noisy, decision=symmetric.flagged))
    out["cleanlab find_label_issues (defaults)"] = ("no", detection_metrics(
        1 - arrays["cleanlab_quality"], noisy, decision=arrays["cleanlab_mask"]))
    disagrees = probs.argmax(-1) != given
    out["prediction disagrees with the label"] = ("no", detection_metrics(
        1 - probs.gather(1, given[:, None]).squeeze(1), noisy, decision=disagrees))
    beta = arrays["shrinkage"]
    weight, relabel = arrays["weight_rel_avg"], arrays["relabel_avg"]
    seen = ~torch.isnan(weight) & ~torch.isnan(relabel)
    for name, values in (("B omega*", weight), ("lambda*", relabel)):
        init = 1.0 if name == "B omega*" else arrays["label_init"]
        for how, v in (("as shrunk", values), ("un-shrunk", unshrink(values, init, beta))):
            out[f"recorded {name} < 1/2, {how}"] = ("yes", detection_metrics(
                -v[seen], noisy[seen], decision=v[seen] < 0.5))
    return out


def report(store: cifar.Store, label: str) -> str:
    lines = ["Flags of mislabeled training examples from one trained model per setting "
             "(robust_ieg_glc, seed 0, --config cpumem: 8,000 training images), scored against the "
             "true labels. Precision, recall and F1 of each detector's own flags; AUC of its score. "
             "Reprint: `.venv/bin/python -m benchmarks.label_issues --report-only`.", ""]
    for setting in SETTINGS:
        key = baselines.Run(setting, METHOD, 0).key(label)
        if key not in store.runs:
            lines += [f"### {setting}", "", "not run yet", ""]
            continue
        arrays = torch.load(arrays_path(store.path, key), weights_only=True)
        record = store.runs[key]
        noisy = int((arrays["given"] != arrays["clean"]).sum())
        lines += [f"### {setting}: {noisy} of {arrays['given'].numel()} labels wrong; the model's "
                  f"test accuracy {100 * record['final']['average_test']:.1f}% (teacher)", "",
                  "| detector | trusted set | precision | recall | F1 | AUC | flagged |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, (trusted, m) in detectors(arrays).items():
            lines.append(f"| {name} | {trusted} | {m['precision']:.3f} | {m['recall']:.3f} | "
                         f"{m['f1']:.3f} | {m['auc']:.3f} | {int(m['flagged'])} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(cifar.DEFAULT_DATA))
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--store", default=str(STORE))
    parser.add_argument("--baselines-store", default=str(baselines.STORE),
                        help="where the plain runs (C_hat) are; missing ones are trained first")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--write", default=str(REPO / "docs" / "results.md"))
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, as baselines --dry-run")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cfg = baselines.CONFIG
    if args.dry_run:
        cfg = dataclasses.replace(cfg, pool=300, val_size=100, width=8, epochs=2, batch_size=64)
    label = baselines.config_label(cfg, args.dry_run)
    store = cifar.Store(Path(args.store))
    if args.report_only:
        body = report(store, label)
        print(body)
        if args.write:
            write_section(args.write, HEADING, body)
        return 0
    data_dir = Path(args.data)
    if not ((data_dir / "train.tar.gz").is_file() and (data_dir / "test.tar.gz").is_file()):
        print(f"label_issues: CIFAR-10 JPEG archives not found in {data_dir}; skipping.")
        return 0
    torch.set_num_threads(cfg.threads)
    train, test = baselines.load_data(data_dir, cfg, args.dry_run)
    split = baselines.prepare_split(train, test, cfg, 0)
    base_store = cifar.Store(Path(args.baselines_store))
    progress = not args.no_progress and sys.stderr.isatty()
    max_steps = 3 if args.dry_run else None
    for setting in [s.strip() for s in args.settings.split(",") if s.strip()]:
        key = baselines.Run(setting, METHOD, 0).key(label)
        store.reload()
        if key in store.runs:
            continue
        plain = baselines.Run(setting, "plain", 0)
        if plain.key(label) not in base_store.runs:  # C_hat's first stage
            base_store.add(plain.key(label), baselines.train_run(
                plain, split, *baselines.noisy_pool_labels(split, setting, 0), cfg, base_store,
                label, checkpoint=None, max_steps=max_steps, progress=progress))
        started = time.perf_counter()
        record, arrays = label_issue_run(baselines.Run(setting, METHOD, 0), split, cfg, base_store,
                                         label, max_steps=max_steps, progress=progress)
        path = arrays_path(store.path, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(arrays, path)
        record.update({"arrays": str(path.relative_to(store.path.parent)), "config": label,
                       "cfg": dataclasses.asdict(cfg), **run_provenance(argv, split)})
        store.add(key, record)
        print(f"{key}: stored in {path} ({(time.perf_counter() - started) / 60:.1f} min)",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
