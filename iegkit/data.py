"""Noisy-label data utilities: the embedded digits default, trusted-set split, probe sampling.

Conventions (followed by every generator here): labels are int64 class indices in [0, C); every
random choice comes from an explicit ``torch.Generator``; nothing is downloaded. The noise
generators live in :mod:`iegkit.noise` (``uniform_noise`` and ``asymmetric_noise`` are re-exported
here for old imports).
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor
from torch.utils.data import Dataset

from iegkit.noise import (
    CIFAR10_ASYMMETRIC_MAP,
    DIGITS_ASYMMETRIC_MAP,
    asymmetric_noise,
    uniform_noise,
)

__all__ = [
    "CIFAR10_ASYMMETRIC_MAP",
    "DIGITS_ASYMMETRIC_MAP",
    "NoisyDataset",
    "ProbeSampler",
    "asymmetric_noise",
    "load_digits",
    "make_noisy_digits",
    "split_trusted",
    "stratified_split",
    "trusted_only",
    "uniform_noise",
]


def load_digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's digits (1,797 real 8x8 images shipped in its wheel) as (N, 1, 8, 8) in [-1, 1]."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as error:  # pragma: no cover - exercised only without scikit-learn
        raise ImportError(
            "the digits default needs scikit-learn: pip install 'iegkit[demo]'"
        ) from error
    bunch = sk_load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return images * 2.0 - 1.0, torch.tensor(bunch.target, dtype=torch.int64)


def split_trusted(labels: Tensor, per_class: int, num_classes: int,
                  generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """A class-balanced trusted set: ``per_class`` indices of each class (by clean label), drawn
    without replacement, and the remaining indices. Taken before noise; disjoint by construction.
    """
    if per_class < 1:
        raise ValueError(f"per_class: expected >= 1, got {per_class}")
    trusted = []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        if members.numel() < per_class:
            raise ValueError(
                f"per_class: class {c} has only {members.numel()} examples, fewer than the "
                f"{per_class} requested for the trusted set"
            )
        trusted.append(members[torch.randperm(members.numel(), generator=generator)[:per_class]])
    # class-interleaved order (c0, c1, ..., c0, ...), as the official IEG probe set
    trusted_idx = torch.stack(trusted, dim=1).flatten()
    mask = torch.ones(labels.numel(), dtype=torch.bool)
    mask[trusted_idx] = False
    return trusted_idx, torch.nonzero(mask).flatten()


def stratified_split(labels: Tensor, fraction: float, num_classes: int,
                     generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(kept, held_out) indices: round(fraction * n_c) of each class c held out at random."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction: expected a value in [0, 1], got {fraction}")
    kept, held_out = [], []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(members.numel(), generator=generator)]
        n_held = round(fraction * members.numel())
        held_out.append(members[:n_held])
        kept.append(members[n_held:])
    return torch.cat(kept), torch.cat(held_out)


@dataclass(frozen=True)
class NoisyDataset:
    """Train (noisy labels, with clean labels kept for diagnostics), trusted and test splits."""

    train_inputs: Tensor
    train_labels: Tensor
    train_clean_labels: Tensor
    trusted_inputs: Tensor
    trusted_labels: Tensor
    test_inputs: Tensor
    test_labels: Tensor
    num_classes: int
    class_names: tuple[str, ...] = ()

    @property
    def noise_rate(self) -> float:
        """The realised fraction of wrong training labels."""
        return float((self.train_labels != self.train_clean_labels).float().mean())

    def to(self, device: torch.device | str) -> NoisyDataset:
        """Every tensor on ``device`` (a copy; the labels keep their dtype)."""
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if isinstance(getattr(self, f.name), Tensor)})


def trusted_only(dataset: NoisyDataset) -> NoisyDataset:
    """The trusted-only baseline's data (the floor every method must beat): the trusted examples
    as the training set, repeated in order to the training set's size, so that a loop over it runs
    the same steps and epochs as over the noisy data. Its labels are clean (``noise_rate`` 0); the
    trusted and test splits are unchanged."""
    n, k = dataset.train_inputs.shape[0], dataset.trusted_inputs.shape[0]
    if k == 0:
        raise ValueError("dataset: the trusted set is empty")
    rows = torch.arange(n, device=dataset.trusted_labels.device) % k
    labels = dataset.trusted_labels[rows]
    return replace(dataset, train_inputs=dataset.trusted_inputs[rows], train_labels=labels,
                   train_clean_labels=labels)


def make_noisy_digits(noise: float = 0.8, trusted_per_class: int = 10, *, test_fraction: float = 0.3,
                      seed: int = 0, include_true_class: bool = True,
                      kind: str = "uniform") -> NoisyDataset:
    """Digits: a stratified test split, a trusted set removed from the rest before noise, and
    noise on the remaining training labels: ``kind="uniform"`` (IEG semantics by default) or
    ``"asymmetric"`` (``DIGITS_ASYMMETRIC_MAP``)."""
    if kind not in ("uniform", "asymmetric"):
        raise ValueError(f"kind: expected 'uniform' or 'asymmetric', got {kind!r}")
    images, labels = load_digits()
    generator = torch.Generator().manual_seed(seed)
    num_classes = 10
    train_idx, test_idx = stratified_split(labels, test_fraction, num_classes, generator)
    trusted_local, rest_local = split_trusted(labels[train_idx], trusted_per_class, num_classes,
                                              generator)
    trusted_idx, rest_idx = train_idx[trusted_local], train_idx[rest_local]
    clean = labels[rest_idx]
    if kind == "uniform":
        noisy = uniform_noise(clean, noise, num_classes, generator,
                              include_true_class=include_true_class)
    else:
        noisy = asymmetric_noise(clean, noise, DIGITS_ASYMMETRIC_MAP, generator)
    return NoisyDataset(images[rest_idx], noisy, clean, images[trusted_idx], labels[trusted_idx],
                        images[test_idx], labels[test_idx], num_classes)


def _check_trusted_set(inputs: Tensor, labels: Tensor) -> None:
    for name, value in (("inputs", inputs), ("labels", labels)):
        if not isinstance(value, Tensor) or value.dim() == 0:
            raise TypeError(f"{name}: expected a tensor with one row per trusted example, got "
                            f"{getattr(value, 'shape', type(value).__name__)}")
    if inputs.shape[0] == 0:
        raise ValueError("inputs: the trusted set is empty")
    if labels.dim() != 1 or labels.shape[0] != inputs.shape[0]:
        raise ValueError(f"labels: expected shape ({inputs.shape[0]},), one per input, got "
                         f"{tuple(labels.shape)}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels: expected integer class indices, got dtype {labels.dtype}")


def _check_batch_size(batch_size: object) -> int:
    # 0 used to give empty batches, and a negative size a slice from the end, then empty ones
    try:
        size = None if isinstance(batch_size, bool) else operator.index(batch_size)
    except TypeError:
        size = None
    if size is None or size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    return size


def _dataset_size(dataset: object) -> int:
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise TypeError(f"inputs: expected a tensor or a map-style Dataset (__getitem__ and "
                        f"__len__), got {type(dataset).__name__}")
    size = len(dataset)
    if size == 0:
        raise ValueError("inputs: the trusted set is empty")
    return size


def _collate_pairs(dataset: Dataset, idx: Tensor) -> tuple[Tensor, Tensor]:
    """default_collate of the (input, label) items at ``idx``; labels must be integer classes."""
    from torch.utils.data import default_collate

    items = [dataset[i] for i in idx.tolist()]
    if not all(isinstance(item, (tuple, list)) and len(item) == 2 for item in items):
        raise TypeError("inputs: the Dataset's items must be (input, label) pairs")
    inputs, labels = default_collate(items)
    labels = torch.as_tensor(labels)
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels: expected integer class indices, got dtype {labels.dtype}")
    return inputs, labels


class ProbeSampler:
    """Cycles through the trusted set in reshuffled passes, with its own generator.

    The trusted set is either two tensors (``inputs``, ``labels``) or a map-style
    ``torch.utils.data.Dataset`` of (input, label) pairs (``ProbeSampler(dataset,
    batch_size=100)``): its drawn items are loaded one by one and stacked with torch's
    ``default_collate``, so trusted images may stay on disk like the training set.
    """

    def __init__(self, inputs: Tensor | Dataset, labels: Tensor | None = None,
                 batch_size: int | None = None, *, seed: int = 0) -> None:
        self.dataset: Dataset | None = None
        if isinstance(inputs, Tensor) or labels is not None:
            if not isinstance(inputs, Tensor) and isinstance(labels, int):  # (dataset, 100)
                raise TypeError("labels: not used with a Dataset (its items are (input, label) "
                                "pairs); pass batch_size= by name")
            if labels is None:
                raise TypeError("labels: required with an inputs tensor (or pass a Dataset)")
            _check_trusted_set(inputs, labels)
            size = inputs.shape[0]
        else:
            size = _dataset_size(inputs)
            self.dataset = inputs
        if batch_size is None:
            raise ValueError("batch_size: expected a positive int, got None")
        self.inputs, self.labels = inputs, labels
        self.size = size
        self.batch_size = min(_check_batch_size(batch_size), size)
        self.generator = torch.Generator().manual_seed(seed)
        self._order = torch.randperm(size, generator=self.generator)
        self._position = 0

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        if self._position + self.batch_size > self._order.numel():
            self._order = torch.randperm(self.size, generator=self.generator)
            self._position = 0
        idx = self._order[self._position:self._position + self.batch_size]
        if self.dataset is not None:
            batch = _collate_pairs(self.dataset, idx)  # before moving on: a failed load keeps state
            self._position += self.batch_size
            return batch
        self._position += self.batch_size
        return self.inputs[idx], self.labels[idx]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self._order.clone(),
                "position": self._position}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._order = state["order"].clone()
        self._position = int(state["position"])
