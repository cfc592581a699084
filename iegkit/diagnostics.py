"""Diagnostics for noisy-label training: what omega* and lambda* did to each training example.

Record every step (``train(..., on_step=recorder.record)``), then ask which examples the meta
step down-weighted or relabeled, how well that detects the mislabeled ones (when the clean labels
are known, as in the synthetic-noise benchmarks), and which labels look wrong (a cleanlab-style
label-issue list)::

    is_noisy = data.train_labels != data.train_clean_labels
    recorder = StepRecorder(len(data.train_labels), is_noisy=is_noisy)
    result = train("ieg", data, on_step=recorder.record)
    report = noisy_label_report(recorder, data.train_labels, data.train_clean_labels)
    print(report.to_markdown())
    plot_curves(result.history, "curves.png")
    plot_lambda_curves(recorder, None, "lambda.png")       # paper Figure 2, per epoch
    plot_weight_histogram(recorder, None, "weights.png")

Conventions:

* omega* is normalised per batch (it sums to ~1), so the recorder also keeps the *relative* weight
  B * omega*_i (1 = the uniform weight 1/B, 0 = dropped): averages over steps with different batch
  sizes stay comparable. "Average weight" below means the average relative weight.
* lambda*_i = 1 keeps the given label, 0 takes the pseudo label; its running average is the
  fraction of visits on which the given label was kept.
* Examples never seen (or never seen by a part) have NaN averages and are left out of metrics.
* Memory is O(N) per-example state plus O(epochs) curve sums plus one row of scalars per step.
* matplotlib is imported only inside the plot functions, through its object API (``Figure``), so
  the global pyplot backend of the caller is never changed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "LabelIssue",
    "Report",
    "StepRecorder",
    "detection_metrics",
    "lambda_by_cleanliness",
    "noisy_label_report",
    "plot_curves",
    "plot_lambda_curves",
    "plot_weight_histogram",
]

FORMAT_VERSION = 1

# Per-example float64 state: name -> initial value.
_FLOAT_STATE = {
    "weight_last": math.nan,       # omega* at the last visit (as given, sums to ~1 per batch)
    "weight_sum": 0.0,             # sum of omega*
    "weight_rel_last": math.nan,   # B * omega* at the last visit
    "weight_rel_sum": 0.0,         # sum of B * omega*
    "relabel_last": math.nan,      # lambda* at the last visit
    "relabel_sum": 0.0,
    "pseudo_confidence": math.nan,     # max probability of the last pseudo label
    "predicted_confidence": math.nan,  # max softmax probability of the last training logits
}
_INT_STATE = {
    "seen_count": 0,
    "weight_count": 0,
    "relabel_count": 0,
    "pseudo_count": 0,
    "last_step": -1,
    "pseudo_label": -1,      # argmax of the last pseudo label (-1: never)
    "predicted_label": -1,   # argmax of the last training logits (-1: never)
}
# Per-window sums, one column per group: 0 = all, 1 = clean, 2 = mislabeled (when is_noisy given).
_WINDOW_SUMS = ("weight_rel_sum", "weight_count", "relabel_sum", "relabel_count")
_GROUPS = ("all", "clean", "noisy")


def _to_cpu(value: Any) -> Tensor:
    return torch.as_tensor(value).detach().cpu()


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


class StepRecorder:
    """Accumulates omega*, lambda*, pseudo labels and loss terms per training example and per step.

    ``record(step, dataset_indices, step_output)`` has the signature of ``train``'s ``on_step``.
    Either of ``step_output.weights`` / ``.relabel`` may be None (plain, L2R, EG); the pseudo label
    is read from ``step_output.values["targets:pseudo"]`` when present, the model's prediction from
    ``step_output.logits`` when present.

    Args:
      num_examples: N, the training-set size (dataset indices are in [0, N)).
      is_noisy: optional (N,) bool mask of mislabeled examples; with it the per-epoch curves are
        also split into clean and mislabeled (needed by ``plot_lambda_curves``; the per-epoch split
        cannot be recovered later in O(N) memory).
      steps_per_epoch: the curve window in steps (window = step // steps_per_epoch). None infers
        max(1, N // B) from the first batch, which matches a loop that drops the last partial
        batch (``iegkit.demo.train``). ``record(..., epoch=e)`` overrides the window per call.
    """

    def __init__(self, num_examples: int, *, is_noisy: Tensor | None = None,
                 steps_per_epoch: int | None = None) -> None:
        if num_examples < 1:
            raise ValueError(f"num_examples: expected >= 1, got {num_examples}")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch: expected >= 1 or None, got {steps_per_epoch}")
        self.num_examples = int(num_examples)
        self.steps_per_epoch = steps_per_epoch
        self.is_noisy: Tensor | None = None
        if is_noisy is not None:
            mask = _to_cpu(is_noisy).bool().flatten()
            if mask.numel() != num_examples:
                raise ValueError(f"is_noisy: expected {num_examples} entries, got {mask.numel()}")
            self.is_noisy = mask
        self._float = {k: torch.full((num_examples,), v, dtype=torch.float64)
                       for k, v in _FLOAT_STATE.items()}
        self._int = {k: torch.full((num_examples,), v, dtype=torch.int64)
                     for k, v in _INT_STATE.items()}
        # window id -> {"first_step", "last_step", "steps", sums: (3,) float64 tensors}
        self._windows: dict[int, dict[str, Any]] = {}
        # one row per step: (step, window, {scalar name: value})
        self._rows: list[tuple[int, int, dict[str, float]]] = []

    # ------------------------------------------------------------------ recording
    def __call__(self, step: int, indices: Tensor, out: Any, *, epoch: int | None = None) -> None:
        self.record(step, indices, out, epoch=epoch)

    def record(self, step: int, indices: Tensor, out: Any, *, epoch: int | None = None) -> None:
        """Accumulate one step. ``indices`` (B,) are dataset indices of the batch rows."""
        idx = _to_cpu(indices).long().flatten()
        batch = idx.numel()
        if batch == 0:
            return
        if int(idx.min()) < 0 or int(idx.max()) >= self.num_examples:
            raise IndexError(f"indices: expected values in [0, {self.num_examples}), got "
                             f"[{int(idx.min())}, {int(idx.max())}]")
        if self.steps_per_epoch is None:
            self.steps_per_epoch = max(1, self.num_examples // batch)
        window = int(epoch) if epoch is not None else int(step) // self.steps_per_epoch
        f, i = self._float, self._int
        ones = torch.ones(batch, dtype=torch.int64)
        i["seen_count"].index_add_(0, idx, ones)
        i["last_step"][idx] = int(step)

        win = self._windows.get(window)
        if win is None:
            win = {"first_step": int(step), "last_step": int(step), "steps": 0,
                   **{k: torch.zeros(3, dtype=torch.float64) for k in _WINDOW_SUMS}}
            self._windows[window] = win
        win["first_step"] = min(win["first_step"], int(step))
        win["last_step"] = max(win["last_step"], int(step))
        win["steps"] += 1
        noisy = self.is_noisy[idx] if self.is_noisy is not None else None

        def window_add(name_sum: str, name_count: str, values: Tensor) -> None:
            win[name_sum][0] += values.sum()
            win[name_count][0] += values.numel()
            if noisy is not None:
                win[name_sum][1] += values[~noisy].sum()
                win[name_count][1] += int((~noisy).sum())
                win[name_sum][2] += values[noisy].sum()
                win[name_count][2] += int(noisy.sum())

        weights = getattr(out, "weights", None)
        if weights is not None:
            w = self._per_row(weights, batch, "weights")
            rel = w * batch
            f["weight_last"][idx] = w
            f["weight_sum"].index_add_(0, idx, w)
            f["weight_rel_last"][idx] = rel
            f["weight_rel_sum"].index_add_(0, idx, rel)
            i["weight_count"].index_add_(0, idx, ones)
            window_add("weight_rel_sum", "weight_count", rel)

        relabel = getattr(out, "relabel", None)
        if relabel is not None:
            lam = self._per_row(relabel, batch, "relabel")
            f["relabel_last"][idx] = lam
            f["relabel_sum"].index_add_(0, idx, lam)
            i["relabel_count"].index_add_(0, idx, ones)
            window_add("relabel_sum", "relabel_count", lam)

        values = getattr(out, "values", None) or {}
        pseudo = values.get("targets:pseudo") if isinstance(values, Mapping) else None
        if pseudo is not None:
            g = _to_cpu(pseudo).to(torch.float64)
            if g.dim() != 2 or g.shape[0] != batch:
                raise ValueError(f"targets:pseudo: expected shape ({batch}, C), got "
                                 f"{tuple(g.shape)}")
            conf, label = g.max(dim=-1)
            i["pseudo_label"][idx] = label
            f["pseudo_confidence"][idx] = conf
            i["pseudo_count"].index_add_(0, idx, ones)

        logits = getattr(out, "logits", None)
        if logits is not None:
            z = _to_cpu(logits).to(torch.float64)
            if z.dim() == 2 and z.shape[0] == batch:
                conf, label = z.softmax(-1).max(dim=-1)
                i["predicted_label"][idx] = label
                f["predicted_confidence"][idx] = conf

        row: dict[str, float] = {}
        loss = getattr(out, "loss", None)
        if loss is not None:
            row["loss"] = float(_to_cpu(loss).double().sum())
        for name, value in (getattr(out, "losses", None) or {}).items():
            row[name] = float(_to_cpu(value).double().sum())
        for name, value in (getattr(out, "metrics", None) or {}).items():
            row[f"metric:{name}"] = float(_to_cpu(value).double().mean())
        self._rows.append((int(step), window, row))

    @staticmethod
    def _per_row(value: Any, batch: int, name: str) -> Tensor:
        v = _to_cpu(value).to(torch.float64).flatten()
        if v.numel() != batch:
            raise ValueError(f"{name}: expected {batch} values (one per batch row), got "
                             f"{v.numel()}")
        return v

    # ------------------------------------------------------------------ per-example views
    @staticmethod
    def _mean(total: Tensor, count: Tensor) -> Tensor:
        return torch.where(count > 0, total / count.clamp(min=1).double(),
                           torch.full_like(total, math.nan))

    @property
    def seen_count(self) -> Tensor:
        """(N,) int64: how many times each example was in a batch."""
        return self._int["seen_count"].clone()

    @property
    def weight_count(self) -> Tensor:
        return self._int["weight_count"].clone()

    @property
    def relabel_count(self) -> Tensor:
        return self._int["relabel_count"].clone()

    @property
    def has_weights(self) -> bool:
        return bool((self._int["weight_count"] > 0).any())

    @property
    def has_relabel(self) -> bool:
        return bool((self._int["relabel_count"] > 0).any())

    @property
    def has_pseudo(self) -> bool:
        return bool((self._int["pseudo_count"] > 0).any())

    @property
    def weight_last(self) -> Tensor:
        """(N,) omega* at each example's last visit (NaN: never weighted)."""
        return self._float["weight_last"].clone()

    @property
    def weight_avg(self) -> Tensor:
        """(N,) running average of omega* as given (NaN: never weighted)."""
        return self._mean(self._float["weight_sum"], self._int["weight_count"])

    @property
    def weight_rel_last(self) -> Tensor:
        return self._float["weight_rel_last"].clone()

    @property
    def weight_rel_avg(self) -> Tensor:
        """(N,) running average of the relative weight B * omega* (1 = uniform; NaN: never)."""
        return self._mean(self._float["weight_rel_sum"], self._int["weight_count"])

    @property
    def relabel_last(self) -> Tensor:
        """(N,) lambda* at the last visit (NaN: never relabeled)."""
        return self._float["relabel_last"].clone()

    @property
    def relabel_avg(self) -> Tensor:
        """(N,) fraction of visits that kept the given label (NaN: never)."""
        return self._mean(self._float["relabel_sum"], self._int["relabel_count"])

    @property
    def pseudo_label(self) -> Tensor:
        """(N,) argmax of the last pseudo label (-1: none)."""
        return self._int["pseudo_label"].clone()

    @property
    def pseudo_confidence(self) -> Tensor:
        return self._float["pseudo_confidence"].clone()

    @property
    def predicted_label(self) -> Tensor:
        """(N,) argmax of the training logits at the last visit (-1: none)."""
        return self._int["predicted_label"].clone()

    @property
    def predicted_confidence(self) -> Tensor:
        return self._float["predicted_confidence"].clone()

    @property
    def last_step(self) -> Tensor:
        return self._int["last_step"].clone()

    # ------------------------------------------------------------------ curves
    def window_curves(self) -> list[dict[str, float]]:
        """One dict per window (epoch), in window order: 'window' (0-based), 'epoch' (window + 1),
        'first_step', 'last_step', 'steps'; 'weight_mean', 'lambda_mean' over all visits in the
        window, '_clean' / '_noisy' variants when the recorder has ``is_noisy`` (NaN where no
        visit); and the mean of every per-step scalar (total 'loss', each 'part/term', each
        'metric:part/name')."""
        scalars: dict[int, dict[str, list[float]]] = {}
        for _, window, row in self._rows:
            bucket = scalars.setdefault(window, {})
            for name, value in row.items():
                bucket.setdefault(name, []).append(value)
        curves = []
        for window in sorted(self._windows):
            win = self._windows[window]
            entry: dict[str, float] = {"window": window, "epoch": window + 1,
                                       "first_step": win["first_step"],
                                       "last_step": win["last_step"], "steps": win["steps"]}
            groups = range(3) if self.is_noisy is not None else range(1)
            for g in groups:
                suffix = "" if g == 0 else f"_{_GROUPS[g]}"
                for key, s, c in (("weight", "weight_rel_sum", "weight_count"),
                                  ("lambda", "relabel_sum", "relabel_count")):
                    count = float(win[c][g])
                    entry[f"{key}_mean{suffix}"] = (float(win[s][g]) / count if count > 0
                                                    else math.nan)
            for name, values in scalars.get(window, {}).items():
                entry[name] = sum(values) / len(values)
            curves.append(entry)
        return curves

    def step_scalars(self) -> list[dict[str, float]]:
        """One dict per recorded step: 'step', 'window', the total 'loss', each loss term and
        each metric ('metric:part/name')."""
        return [{"step": step, "window": window, **row} for step, window, row in self._rows]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Tensors (and a few ints/strings) only; ``torch.save``-able."""
        names = list(dict.fromkeys(name for _, _, row in self._rows for name in row))
        values = torch.full((len(self._rows), len(names)), math.nan, dtype=torch.float64)
        for r, (_, _, row) in enumerate(self._rows):
            for c, name in enumerate(names):
                if name in row:
                    values[r, c] = row[name]
        windows = sorted(self._windows)
        return {
            "format_version": FORMAT_VERSION,
            "num_examples": self.num_examples,
            "steps_per_epoch": self.steps_per_epoch,
            "is_noisy": None if self.is_noisy is None else self.is_noisy.clone(),
            "examples": {**{k: v.clone() for k, v in self._float.items()},
                         **{k: v.clone() for k, v in self._int.items()}},
            "windows": {
                "ids": torch.tensor(windows, dtype=torch.int64),
                "first_step": torch.tensor([self._windows[w]["first_step"] for w in windows],
                                           dtype=torch.int64),
                "last_step": torch.tensor([self._windows[w]["last_step"] for w in windows],
                                          dtype=torch.int64),
                "steps": torch.tensor([self._windows[w]["steps"] for w in windows],
                                      dtype=torch.int64),
                **{k: (torch.stack([self._windows[w][k] for w in windows]) if windows
                       else torch.zeros(0, 3, dtype=torch.float64)) for k in _WINDOW_SUMS},
            },
            "scalars": {
                "names": names,
                "steps": torch.tensor([s for s, _, _ in self._rows], dtype=torch.int64),
                "windows": torch.tensor([w for _, w, _ in self._rows], dtype=torch.int64),
                "values": values,
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        version = state.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"state: format_version {version!r} is not supported "
                             f"(expected {FORMAT_VERSION})")
        if int(state["num_examples"]) != self.num_examples:
            raise ValueError(f"state: recorded {state['num_examples']} examples, this recorder "
                             f"has {self.num_examples}")
        examples = state["examples"]
        missing = sorted((set(_FLOAT_STATE) | set(_INT_STATE)) - set(examples))
        if missing:
            raise ValueError(f"state: missing per-example entries {missing}")
        self._float = {k: _to_cpu(examples[k]).to(torch.float64).clone() for k in _FLOAT_STATE}
        self._int = {k: _to_cpu(examples[k]).to(torch.int64).clone() for k in _INT_STATE}
        self.steps_per_epoch = state.get("steps_per_epoch")
        is_noisy = state.get("is_noisy")
        self.is_noisy = None if is_noisy is None else _to_cpu(is_noisy).bool().clone()
        win = state["windows"]
        self._windows = {}
        for j, w in enumerate(win["ids"].tolist()):
            self._windows[int(w)] = {
                "first_step": int(win["first_step"][j]), "last_step": int(win["last_step"][j]),
                "steps": int(win["steps"][j]),
                **{k: _to_cpu(win[k][j]).to(torch.float64).clone() for k in _WINDOW_SUMS},
            }
        sc = state["scalars"]
        names = list(sc["names"])
        self._rows = []
        for r, (step, window) in enumerate(zip(sc["steps"].tolist(), sc["windows"].tolist())):
            row = {name: float(sc["values"][r, c]) for c, name in enumerate(names)
                   if not math.isnan(float(sc["values"][r, c]))}
            self._rows.append((int(step), int(window), row))


# ---------------------------------------------------------------------- pure metrics
def _average_ranks(scores: Tensor) -> Tensor:
    """1-based ranks of ``scores`` with ties given their average rank (float64)."""
    order = torch.argsort(scores, stable=True)
    sorted_scores = scores[order]
    _, counts = torch.unique_consecutive(sorted_scores, return_counts=True)
    ends = torch.cumsum(counts, 0).double()          # last 1-based rank of each tie group
    group_rank = ends - (counts.double() - 1) / 2     # average of first..last
    ranks = torch.empty_like(scores, dtype=torch.float64)
    ranks[order] = torch.repeat_interleave(group_rank, counts)
    return ranks


def detection_metrics(scores: Tensor, is_noisy: Tensor, *, threshold: float = 0.5,
                      decision: Tensor | None = None) -> dict[str, float]:
    """Quality of a detector of mislabeled examples (higher score = more likely mislabeled).

    auc: the probability that a random mislabeled example scores above a random clean one, ties
      counting 1/2 (Mann-Whitney U from average ranks); NaN when either class is absent.
    precision / recall / f1 of the flagged set: ``decision`` (a bool mask) when given, else
      ``scores >= threshold``; 0 when undefined (nothing flagged, no mislabeled example).
    Also returned: tp, fp, fn, tn, flagged, noisy, n (as floats, for a uniform dict).
    NaN scores are not allowed; filter unseen examples out first.
    """
    s = _to_cpu(scores).to(torch.float64).flatten()
    y = _to_cpu(is_noisy).bool().flatten()
    if s.numel() != y.numel():
        raise ValueError(f"is_noisy: expected {s.numel()} entries, got {y.numel()}")
    if torch.isnan(s).any():
        raise ValueError("scores: NaN scores (filter out examples that were never scored)")
    if decision is None:
        flagged = s >= threshold
    else:
        flagged = _to_cpu(decision).bool().flatten()
        if flagged.numel() != s.numel():
            raise ValueError(f"decision: expected {s.numel()} entries, got {flagged.numel()}")
    tp = int((flagged & y).sum())
    fp = int((flagged & ~y).sum())
    fn = int((~flagged & y).sum())
    tn = int((~flagged & ~y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        auc = math.nan
    else:
        ranks = _average_ranks(s)
        u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2
        auc = u / (n_pos * n_neg)
    return {"precision": precision, "recall": recall, "f1": f1, "auc": auc,
            "tp": float(tp), "fp": float(fp), "fn": float(fn), "tn": float(tn),
            "flagged": float(tp + fp), "noisy": float(n_pos), "n": float(s.numel())}


def _group_means(values: Tensor, is_noisy: Tensor) -> tuple[float, float]:
    v = _to_cpu(values).to(torch.float64).flatten()
    y = _to_cpu(is_noisy).bool().flatten()
    if v.numel() != y.numel():
        raise ValueError(f"is_noisy: expected {v.numel()} entries, got {y.numel()}")
    ok = ~torch.isnan(v)

    def mean(mask: Tensor) -> float:
        m = mask & ok
        return float(v[m].mean()) if bool(m.any()) else math.nan

    return mean(~y), mean(y)


def lambda_by_cleanliness(lambda_avg: Tensor, is_noisy: Tensor) -> tuple[float, float]:
    """(mean lambda over clean examples, mean over mislabeled ones), ignoring NaN (unseen); NaN
    for an empty group. IEG Figure 2: lambda stays high on clean and falls on mislabeled labels."""
    return _group_means(lambda_avg, is_noisy)


# ---------------------------------------------------------------------- report
@dataclass(frozen=True)
class LabelIssue:
    """One suspected label error: replace ``given_label`` by ``suggested_label``."""

    index: int
    given_label: int
    suggested_label: int
    confidence: float
    lambda_avg: float
    weight_rel_avg: float  # average B * omega*
    clean_label: int | None = None

    @property
    def is_noisy(self) -> bool | None:
        return None if self.clean_label is None else self.given_label != self.clean_label


@dataclass
class Report:
    """Summary of a recorded run; see ``noisy_label_report``."""

    num_examples: int
    num_seen: int
    noise_rate: float | None
    has_weights: bool
    has_relabel: bool
    weight_threshold: float
    relabel_threshold: float
    down_weighted_fraction: float | None
    relabeled_fraction: float | None
    detection: dict[str, dict[str, float]]
    lambda_clean_mean: float | None
    lambda_noisy_mean: float | None
    weight_clean_mean: float | None
    weight_noisy_mean: float | None
    issue_source: str
    num_issues: int
    issues_precision: float | None
    suggestion_accuracy: float | None
    label_issues: list[LabelIssue] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for entry, issue in zip(data["label_issues"], self.label_issues):
            entry["is_noisy"] = issue.is_noisy
        return _nan_to_none(data)

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON (NaN written as null)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def to_markdown(self) -> str:
        def fmt(x: float | None, pct: bool = False) -> str:
            if x is None or (isinstance(x, float) and math.isnan(x)):
                return "n/a"
            return f"{100 * x:.1f}%" if pct else f"{x:.3f}"

        lines = ["# Noisy-label report", ""]
        noise = (f", realised noise {fmt(self.noise_rate, True)}" if self.noise_rate is not None
                 else "")
        lines.append(f"{self.num_seen} of {self.num_examples} training examples seen{noise}.")
        if self.has_weights:
            lines.append(f"- down-weighted (average relative weight B*omega* < "
                         f"{self.weight_threshold:g}): {fmt(self.down_weighted_fraction, True)}")
        if self.has_relabel:
            lines.append(f"- relabeled (average lambda* < {self.relabel_threshold:g}): "
                         f"{fmt(self.relabeled_fraction, True)}")
        if not self.has_weights and not self.has_relabel:
            lines.append("- no omega* or lambda* recorded (plain training)")
        lines.append("")
        if self.detection:
            lines += ["## Mislabeled-example detection", "",
                      "| detector | precision | recall | F1 | AUC | flagged |",
                      "| --- | --- | --- | --- | --- | --- |"]
            for name, m in self.detection.items():
                lines.append(f"| {name} | {fmt(m['precision'])} | {fmt(m['recall'])} | "
                             f"{fmt(m['f1'])} | {fmt(m['auc'])} | {int(m['flagged'])} |")
            lines.append("")
        if self.lambda_clean_mean is not None or self.weight_clean_mean is not None:
            lines += ["## Clean vs mislabeled", "", "| quantity | clean | mislabeled |",
                      "| --- | --- | --- |"]
            if self.has_relabel:
                lines.append(f"| average lambda* | {fmt(self.lambda_clean_mean)} | "
                             f"{fmt(self.lambda_noisy_mean)} |")
            if self.has_weights:
                lines.append(f"| average B*omega* | {fmt(self.weight_clean_mean)} | "
                             f"{fmt(self.weight_noisy_mean)} |")
            lines.append("")
        lines += [f"## Label issues ({self.issue_source}; {self.num_issues} in all, top "
                  f"{len(self.label_issues)} by confidence)", ""]
        if self.issues_precision is not None:
            lines.append(f"Truly mislabeled among all issues: {fmt(self.issues_precision, True)}; "
                         f"suggested label = clean label: {fmt(self.suggestion_accuracy, True)}.")
            lines.append("")
        if self.label_issues:
            known = any(i.clean_label is not None for i in self.label_issues)
            head = "| index | given | suggested | confidence | avg lambda* | avg B*omega* |"
            rule = "| --- | --- | --- | --- | --- | --- |"
            if known:
                head += " clean | mislabeled |"
                rule += " --- | --- |"
            lines += [head, rule]
            for i in self.label_issues:
                line = (f"| {i.index} | {i.given_label} | {i.suggested_label} | "
                        f"{fmt(i.confidence)} | {fmt(i.lambda_avg)} | {fmt(i.weight_rel_avg)} |")
                if known:
                    line += f" {i.clean_label} | {'yes' if i.is_noisy else 'no'} |"
                lines.append(line)
        else:
            lines.append("none")
        return "\n".join(lines) + "\n"


def noisy_label_report(recorder: StepRecorder, given_labels: Tensor,
                       clean_labels: Tensor | None = None, *, top_k: int = 20,
                       weight_threshold: float = 0.5, relabel_threshold: float = 0.5) -> Report:
    """Which examples the run down-weighted or relabeled, and which labels look wrong.

    Detectors (when ``clean_labels`` is given; mislabeled = given != clean), over the examples the
    corresponding part saw:

    * "down-weighted": score = 1 - w / max(w) with w the average relative weight B*omega*
      (rank-equivalent to -w); flagged when w < ``weight_threshold`` (less than that fraction of
      the uniform weight 1/B).
    * "relabeled": score = 1 - average lambda*; flagged when average lambda* <
      ``relabel_threshold`` (the pseudo label was used on most visits).

    Label issues (cleanlab-style): the relabeled examples (else, without a relabeler, the
    down-weighted ones; else the examples whose prediction disagrees with the given label) whose
    suggested label (the last pseudo-label argmax, else the last prediction) differs from the
    given label, sorted by the suggestion's confidence (descending), then by average lambda*
    (ascending), then index; the first ``top_k`` are listed.
    """
    n = recorder.num_examples
    given = _to_cpu(given_labels).long().flatten()
    if given.numel() != n:
        raise ValueError(f"given_labels: expected {n} labels, got {given.numel()}")
    clean = None
    is_noisy = None
    if clean_labels is not None:
        clean = _to_cpu(clean_labels).long().flatten()
        if clean.numel() != n:
            raise ValueError(f"clean_labels: expected {n} labels, got {clean.numel()}")
        is_noisy = given != clean
    seen = recorder.seen_count > 0
    w_avg, lam_avg = recorder.weight_rel_avg, recorder.relabel_avg
    w_seen, lam_seen = recorder.weight_count > 0, recorder.relabel_count > 0
    has_w, has_lam = bool(w_seen.any()), bool(lam_seen.any())
    down = w_seen & (w_avg < weight_threshold)
    relabeled = lam_seen & (lam_avg < relabel_threshold)

    detection: dict[str, dict[str, float]] = {}
    lam_clean = lam_noisy = w_clean = w_noisy = None
    if is_noisy is not None:
        if has_w:
            w = w_avg[w_seen]
            top = float(w.max())
            score = 1 - w / top if top > 0 else torch.ones_like(w)
            detection["down-weighted"] = detection_metrics(score, is_noisy[w_seen],
                                                           decision=down[w_seen])
            w_clean, w_noisy = _group_means(w_avg, is_noisy)
        if has_lam:
            detection["relabeled"] = detection_metrics(1 - lam_avg[lam_seen], is_noisy[lam_seen],
                                                       decision=relabeled[lam_seen])
            lam_clean, lam_noisy = lambda_by_cleanliness(lam_avg, is_noisy)

    pseudo_ok = recorder.pseudo_label >= 0
    suggested = torch.where(pseudo_ok, recorder.pseudo_label, recorder.predicted_label)
    confidence = torch.where(pseudo_ok, recorder.pseudo_confidence,
                             recorder.predicted_confidence)
    if has_lam:
        source, candidates = "relabeled", relabeled
    elif has_w:
        source, candidates = "down-weighted", down
    else:
        source, candidates = "prediction disagrees", seen.clone()
    candidates = candidates & (suggested >= 0) & (suggested != given)
    idx = torch.nonzero(candidates).flatten()
    lam_key = torch.nan_to_num(lam_avg[idx], nan=1.0)
    conf_key = torch.nan_to_num(confidence[idx], nan=-1.0)
    # idx is in index order; stable sorts by lambda, then by confidence, give the order
    # confidence descending, then lambda ascending, then index ascending
    order = torch.argsort(lam_key, stable=True)
    order = order[torch.argsort(-conf_key[order], stable=True)]
    idx = idx[order]
    issues_precision = suggestion_accuracy = None
    if clean is not None and idx.numel() > 0:
        issues_precision = float(is_noisy[idx].float().mean())
        suggestion_accuracy = float((suggested[idx] == clean[idx]).float().mean())
    issues = [
        LabelIssue(index=int(j), given_label=int(given[j]), suggested_label=int(suggested[j]),
                   confidence=float(confidence[j]), lambda_avg=float(lam_avg[j]),
                   weight_rel_avg=float(w_avg[j]),
                   clean_label=None if clean is None else int(clean[j]))
        for j in idx[:max(0, top_k)].tolist()
    ]
    num_seen = int(seen.sum())
    return Report(
        num_examples=n, num_seen=num_seen,
        noise_rate=None if is_noisy is None else float(is_noisy.float().mean()),
        has_weights=has_w, has_relabel=has_lam,
        weight_threshold=weight_threshold, relabel_threshold=relabel_threshold,
        down_weighted_fraction=float(down[w_seen].float().mean()) if has_w else None,
        relabeled_fraction=float(relabeled[lam_seen].float().mean()) if has_lam else None,
        detection=detection,
        lambda_clean_mean=lam_clean, lambda_noisy_mean=lam_noisy,
        weight_clean_mean=w_clean, weight_noisy_mean=w_noisy,
        issue_source=source, num_issues=int(idx.numel()),
        issues_precision=issues_precision, suggestion_accuracy=suggestion_accuracy,
        label_issues=issues,
    )


# ---------------------------------------------------------------------- plots
def _figure(ncols: int = 1):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - exercised only without matplotlib
        raise ImportError("the diagnostics plots need matplotlib: pip install matplotlib") \
            from error
    fig = Figure(figsize=(5.0 * ncols, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, k + 1) for k in range(ncols)]
    return fig, axes


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _resolve_noisy(recorder: StepRecorder, is_noisy: Tensor | None) -> Tensor | None:
    if is_noisy is None:
        return recorder.is_noisy
    mask = _to_cpu(is_noisy).bool().flatten()
    if mask.numel() != recorder.num_examples:
        raise ValueError(f"is_noisy: expected {recorder.num_examples} entries, got {mask.numel()}")
    return mask


def plot_curves(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Accuracy curves (every key containing 'accuracy', in %) and loss curves (every key
    containing 'loss') against 'epoch' (else 1, 2, ...); a panel without keys is left out.
    ``history`` is ``RunResult.history`` or ``StepRecorder.window_curves()``. Writes a PNG,
    returns its path."""
    if not history:
        raise ValueError("history: expected at least one epoch")
    x = [float(h.get("epoch", k + 1)) for k, h in enumerate(history)]
    keys: list[str] = []
    for h in history:
        keys += [k for k in h if k not in keys]
    panels = [(names, scale, title) for names, scale, title in (
        ([k for k in keys if "accuracy" in k], 100.0, "accuracy (%)"),
        ([k for k in keys if "loss" in k], 1.0, "loss")) if names]
    if not panels:
        raise ValueError(f"history: no key containing 'accuracy' or 'loss' (keys: {keys})")
    fig, axes = _figure(len(panels))
    for ax, (names, scale, title) in zip(axes, panels):
        for name in names:
            pts = [(xi, scale * float(h[name])) for xi, h in zip(x, history)
                   if h.get(name) is not None and math.isfinite(float(h[name]))]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 50
                        else None, label=name)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)


def plot_lambda_curves(recorder: StepRecorder, is_noisy: Tensor | None, path: str | Path) -> Path:
    """Average lambda* per epoch on clean vs mislabeled examples (IEG Figure 2) and average
    relative weight B*omega* per epoch, when recorded. The per-epoch split needs the recorder's own
    ``is_noisy`` (given at construction); ``is_noisy`` here may be None or must equal it. Writes a
    PNG, returns its path."""
    if recorder.is_noisy is None:
        raise ValueError("plot_lambda_curves: the per-epoch clean/mislabeled split is accumulated "
                         "while recording; construct StepRecorder(N, is_noisy=...)")
    if is_noisy is not None and not torch.equal(_resolve_noisy(recorder, is_noisy),
                                                recorder.is_noisy):
        raise ValueError("is_noisy: differs from the mask the recorder was built with")
    if not recorder.has_relabel and not recorder.has_weights:
        raise ValueError("plot_lambda_curves: no lambda* or omega* was recorded")
    curves = recorder.window_curves()
    x = [c["epoch"] for c in curves]
    panels = [(k, t) for k, t, ok in (("lambda", "average lambda* (kept given label)",
                                       recorder.has_relabel),
                                      ("weight", "average B*omega* (1 = uniform)",
                                       recorder.has_weights)) if ok]
    fig, axes = _figure(len(panels))
    for ax, (key, title) in zip(axes, panels):
        for group, style in (("clean", "-"), ("noisy", "--")):
            ys = [c[f"{key}_mean_{group}"] for c in curves]
            ax.plot(x, ys, style, marker="." if len(x) < 50 else None,
                    label="clean" if group == "clean" else "mislabeled")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        if key == "lambda":
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, path)


def plot_weight_histogram(recorder: StepRecorder, is_noisy: Tensor | None, path: str | Path, *,
                          bins: int = 30) -> Path:
    """Histogram of the average relative weight B*omega* per example, clean vs mislabeled
    (``is_noisy`` None: the recorder's mask, else one histogram of all). Writes a PNG, returns its
    path."""
    if not recorder.has_weights:
        raise ValueError("plot_weight_histogram: no omega* was recorded (no reweighting part)")
    mask = _resolve_noisy(recorder, is_noisy)
    w = recorder.weight_rel_avg
    ok = ~torch.isnan(w)
    fig, (ax,) = _figure(1)
    top = float(w[ok].max())
    edges = torch.linspace(0.0, max(top, 1e-6), bins + 1).tolist()
    groups = ([("clean", ok & ~mask), ("mislabeled", ok & mask)] if mask is not None
              else [("all", ok)])
    for label, m in groups:
        if bool(m.any()):
            ax.hist(w[m].tolist(), bins=edges, alpha=0.6, label=f"{label} ({int(m.sum())})")
    ax.set_xlabel("average B*omega* (1 = uniform weight)")
    ax.set_ylabel("examples")
    ax.set_title("per-example weight")
    ax.legend(fontsize="small")
    return _save(fig, path)
