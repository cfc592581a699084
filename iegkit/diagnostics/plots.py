"""PNG plots of a run: accuracy / loss curves, lambda* and weight curves on clean vs mislabeled
examples (IEG Figure 2), and the histogram of per-example weights.

matplotlib is imported only inside the plot functions, through its object API (``Figure``), so
the global pyplot backend of the caller is never changed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from iegkit.diagnostics.recorder import StepRecorder, _to_cpu

__all__ = ["plot_curves", "plot_lambda_curves", "plot_weight_histogram"]


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
    fig.savefig(path, format="png", bbox_inches="tight")  # keeps the legends beside the axes
    return path


def _epoch_axis(ax: Any) -> None:
    """An x axis of epochs: whole numbers only."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _legend(ax: Any) -> None:
    """The legend beside the axes, off the curves."""
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


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
        _epoch_axis(ax)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.lines:
            _legend(ax)
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
        _epoch_axis(ax)
        ax.set_title(title)
        if key == "lambda":
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        _legend(ax)
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
    _legend(ax)
    return _save(fig, path)


COLLAPSE_KEYS = ("pseudo_top_share", "pseudo_marginal_entropy", "pseudo_probe_accuracy")


def plot_collapse(history: Sequence[Mapping[str, Any]], path: str | Path, *,
                  threshold: float | None = None) -> Path:
    """The collapse signals per epoch (``CollapseMonitor``'s keys): top pseudo-label share,
    normalised marginal entropy, probe accuracy of the pseudo labels; with ``threshold`` (the
    monitor's ``collapse_threshold``) the warning line. Writes a PNG, returns its path."""
    x = [float(h.get("epoch", k + 1)) for k, h in enumerate(history)]
    fig, (ax,) = _figure(1)
    for name in COLLAPSE_KEYS:
        pts = [(xi, float(h[name])) for xi, h in zip(x, history) if h.get(name) is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=name)
    if threshold is not None:
        ax.axhline(threshold, color="gray", linestyle="--", label="warning threshold")
    _epoch_axis(ax)
    ax.set_ylim(0, 1)
    ax.set_title("pseudo-label collapse signals")
    ax.grid(alpha=0.3)
    if ax.lines:
        _legend(ax)
    else:
        ax.text(0.5, 0.5, "no pseudo labels", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)
