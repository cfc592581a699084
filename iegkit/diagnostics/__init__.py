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

Modules: ``recorder`` (StepRecorder; its conventions), ``metrics`` (detection metrics),
``report`` (noisy_label_report), ``label_issues`` (find_label_issues: the label
posterior's flags), ``plots`` (PNG figures; matplotlib imported lazily).
"""

from __future__ import annotations

from iegkit.diagnostics.collapse import CollapseMonitor
from iegkit.diagnostics.label_issues import (
    LabelIssueFlags,
    find_label_issues,
    predicted_probabilities,
)
from iegkit.diagnostics.metrics import detection_metrics, lambda_by_cleanliness
from iegkit.diagnostics.plots import (
    plot_collapse,
    plot_curves,
    plot_lambda_curves,
    plot_weight_histogram,
)
from iegkit.diagnostics.recorder import FORMAT_VERSION, StepRecorder
from iegkit.diagnostics.report import LabelIssue, Report, noisy_label_report

__all__ = [
    "CollapseMonitor",
    "LabelIssue",
    "LabelIssueFlags",
    "Report",
    "StepRecorder",
    "detection_metrics",
    "find_label_issues",
    "lambda_by_cleanliness",
    "noisy_label_report",
    "plot_collapse",
    "plot_curves",
    "plot_lambda_curves",
    "plot_weight_histogram",
    "predicted_probabilities",
]
