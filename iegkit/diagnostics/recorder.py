"""StepRecorder: what omega* and lambda* did to each training example, step by step.

Conventions:

* omega* is normalised per batch (it sums to ~1), so the recorder also keeps the *relative* weight
  B * omega*_i (1 = the uniform weight 1/B, 0 = dropped): averages over steps with different batch
  sizes stay comparable. "Average weight" below means the average relative weight.
* lambda*_i = 1 keeps the given label, 0 takes the pseudo label; its running average is the
  fraction of visits on which the given label was kept.
* Examples never seen (or never seen by a part) have NaN averages and are left out of metrics.
* Memory is O(N) per-example state plus O(epochs) curve sums plus one row of scalars per step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from iegkit._core import keys

__all__ = ["StepRecorder"]

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
        pseudo = values.get(keys.PSEUDO_TARGETS) if isinstance(values, Mapping) else None
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
