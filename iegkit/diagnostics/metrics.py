"""Pure metrics of noisy-label detection: AUC / precision / recall of a detector of mislabeled
examples, and the clean vs mislabeled means of a per-example quantity (IEG Figure 2)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from iegkit.diagnostics.recorder import _to_cpu

__all__ = ["detection_metrics", "lambda_by_cleanliness"]


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
