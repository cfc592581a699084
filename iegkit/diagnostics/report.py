"""The noisy-label report of a recorded run: detection metrics of down-weighting and relabeling,
clean vs mislabeled averages, and a cleanlab-style list of suspected label errors."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from iegkit.diagnostics.label_issues import LabelIssueFlags
from iegkit.diagnostics.metrics import (
    _group_means,
    detection_metrics,
    lambda_by_cleanliness,
)
from iegkit.diagnostics.recorder import StepRecorder, _to_cpu
from iegkit.functional.shrinkage import unshrink

__all__ = ["LabelIssue", "Report", "noisy_label_report"]


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


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
                       weight_threshold: float = 0.5, relabel_threshold: float = 0.5,
                       posterior: LabelIssueFlags | None = None, weight_shrinkage: float = 0.0,
                       relabel_shrinkage: float = 0.0, label_init: float = 0.9) -> Report:
    """Which examples the run down-weighted or relabeled, and which labels look wrong.

    The recorded omega* and lambda* are read before shrinkage (``weight_shrinkage``,
    ``relabel_shrinkage``: the parts' ``shrinkage``, with lambda0 = ``label_init``): shrunk by 0.75,
    B*omega* never falls below 0.75 and no threshold of 1/2 could flag it.

    Detectors (when ``clean_labels`` is given; mislabeled = given != clean), over the examples the
    corresponding part saw:

    * "down-weighted": score = 1 - w / max(w) with w the average relative weight B*omega*
      (rank-equivalent to -w); flagged when w < ``weight_threshold`` (less than that fraction of
      the uniform weight 1/B).
    * "relabeled": score = 1 - average lambda*; flagged when average lambda* <
      ``relabel_threshold`` (the pseudo label was used on most visits).

    * "label posterior": ``posterior`` (``find_label_issues`` on the deployed weights' softmax),
      score P(label wrong), flagged above its threshold.

    Label issues (cleanlab-style): with ``posterior``, its flags, suggesting the posterior's argmax
    with confidence P(label wrong); else the relabeled examples (else, without a relabeler, the
    down-weighted ones; else the examples whose prediction disagrees with the given label) whose
    suggested label (the last pseudo-label argmax, else the last prediction) differs from the
    given label, sorted by the suggestion's confidence (descending), then by average lambda*
    (ascending), then index; the first ``top_k`` are listed.
    """
    n = recorder.num_examples
    given = _to_cpu(given_labels).long().flatten()
    if given.numel() != n:
        raise ValueError(f"given_labels: expected {n} labels, got {given.numel()}")
    if posterior is not None and posterior.flagged.numel() != n:
        raise ValueError(f"posterior: expected flags for {n} examples, got "
                         f"{posterior.flagged.numel()}")
    clean = None
    is_noisy = None
    if clean_labels is not None:
        clean = _to_cpu(clean_labels).long().flatten()
        if clean.numel() != n:
            raise ValueError(f"clean_labels: expected {n} labels, got {clean.numel()}")
        is_noisy = given != clean
    seen = recorder.seen_count > 0
    w_avg = unshrink(recorder.weight_rel_avg, 1.0, weight_shrinkage)
    lam_avg = unshrink(recorder.relabel_avg, label_init, relabel_shrinkage)
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
        if posterior is not None:
            detection["label posterior"] = detection_metrics(
                _to_cpu(posterior.error_probability), is_noisy,
                decision=_to_cpu(posterior.flagged))

    pseudo_ok = recorder.pseudo_label >= 0
    suggested = torch.where(pseudo_ok, recorder.pseudo_label, recorder.predicted_label)
    confidence = torch.where(pseudo_ok, recorder.pseudo_confidence,
                             recorder.predicted_confidence)
    if posterior is not None:
        source = f"label posterior, P(label wrong) > 1/2, {posterior.channel} channel"
        candidates = _to_cpu(posterior.flagged).bool()
        suggested = _to_cpu(posterior.suggested).long()
        confidence = _to_cpu(posterior.error_probability).double()
    elif has_lam:
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
