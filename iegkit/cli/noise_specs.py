"""The command line's noise specs (``--noise uniform:0.8``, ``file:labels.npy``, ...) and the
loading of user-supplied noisy-label files, on top of the generators of :mod:`iegkit.noise`.

Errors are ``ValueError``/``TypeError`` whose message starts with the name of the argument at
fault (``noise: ...`` for a spec, ``source: ...`` for a label file), as in :mod:`iegkit.noise`.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

# the argument checks shared with the generators, so that the messages are the same
from iegkit.noise import (
    CIFAR10_ASYMMETRIC_MAP,
    check_class_map,
    check_generator,
    check_labels,
    check_num_classes,
    asymmetric_noise,
    instance_dependent_noise,
    pair_flip_noise,
    uniform_noise,
)

__all__ = ["NOISE_KINDS", "NoiseSpec", "apply_noise", "load_noisy_labels", "parse_noise_spec"]

#: The noise kinds understood by :func:`parse_noise_spec` and :func:`apply_noise`.
NOISE_KINDS: tuple[str, ...] = (
    "none", "uniform", "uniform-exclusive", "asymmetric", "pairflip", "instance", "file",
)


# --------------------------------------------------------------------------------------------
# user-supplied noisy labels

_FILE_SUFFIXES = (".npy", ".pt", ".pth", ".txt", ".csv")


def _read_label_file(path: Path) -> object:
    suffix = path.suffix.lower()
    if suffix not in _FILE_SUFFIXES:
        raise ValueError(f"source: unsupported file type {suffix or path.name!r}; expected one "
                         f"of {', '.join(_FILE_SUFFIXES)}")
    if not path.is_file():
        raise FileNotFoundError(f"source: no such file: {str(path)!r}")
    if suffix == ".npy":
        try:
            import numpy
        except ImportError as error:  # pragma: no cover - numpy ships with most torch installs
            raise ImportError("source: reading .npy files needs numpy: pip install numpy") from error
        return numpy.load(path, allow_pickle=False)
    if suffix in (".pt", ".pth"):
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(loaded, (Tensor, list, tuple)):
            raise TypeError(f"source: expected {str(path)!r} to hold a tensor or list of labels, "
                            f"got {type(loaded).__name__}")
        return loaded
    values = []
    for number, line in enumerate(path.read_text().rstrip().splitlines(), start=1):
        try:
            values.append(int(line.strip()))
        except ValueError:
            raise ValueError(f"source: line {number} of {str(path)!r} is not an integer label: "
                             f"{line!r} (expected one integer per line, in dataset order)") from None
    return values


def load_noisy_labels(source: object, num_examples: int, num_classes: int) -> Tensor:
    """User-supplied noisy labels, one per example in dataset order, as an int64 CPU tensor (N,).

    ``source`` is a tensor, a NumPy array, a list/tuple of ints, or a path (``str`` or
    ``os.PathLike``) to a ``.npy`` file (loaded with ``allow_pickle=False``), a ``.pt``/``.pth``
    file holding a tensor or list (``torch.load(..., weights_only=True)``), or a ``.txt``/``.csv``
    file with one integer per line (no header; trailing blank lines are ignored). Floating values
    are accepted only when integral. Raises ``ValueError`` unless there are exactly
    ``num_examples`` labels, all in ``[0, num_classes)``.
    """
    if isinstance(num_examples, bool) or not isinstance(num_examples, numbers.Integral):
        raise TypeError(f"num_examples: expected an int, got {type(num_examples).__name__}")
    if num_examples < 0:
        raise ValueError(f"num_examples: expected >= 0, got {num_examples}")
    num_classes = check_num_classes(num_classes)
    where = ""
    if isinstance(source, (str, os.PathLike)):
        where = f" in {os.fspath(source)!r}"
        source = _read_label_file(Path(source))
    if isinstance(source, Tensor):
        values = source.detach().cpu()
    else:
        try:
            values = torch.as_tensor(source)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError("source: expected a tensor, array, list of ints or a file path, "
                            f"got {type(source).__name__}") from error
    if values.dtype == torch.bool or values.is_complex():
        raise TypeError(f"source: expected integer class indices{where}, got dtype {values.dtype}")
    if values.dim() != 1:
        raise ValueError(f"source: expected a flat sequence of {num_examples} labels{where}, "
                         f"got shape {tuple(values.shape)}")
    if values.is_floating_point():
        bad = torch.nonzero(~torch.isfinite(values) | (values != values.round())).flatten()
        if bad.numel():
            i = int(bad[0])
            raise ValueError(f"source: labels must be integer class indices{where}; "
                             f"got {float(values[i])} at index {i}")
    values = values.to(torch.int64)
    if values.shape[0] != num_examples:
        raise ValueError(f"source: expected {num_examples} labels (one per example, in dataset "
                         f"order){where}, got {values.shape[0]}")
    bad = torch.nonzero((values < 0) | (values >= num_classes)).flatten()
    if bad.numel():
        i = int(bad[0])
        raise ValueError(f"source: label {int(values[i])} at index {i}{where} is outside "
                         f"[0, {num_classes}) ({bad.numel()} out of range in all)")
    return values.clone()


# --------------------------------------------------------------------------------------------
# CLI specs


@dataclass(frozen=True)
class NoiseSpec:
    """A parsed noise specification (see :func:`parse_noise_spec`).

    ``kind`` is one of :data:`NOISE_KINDS`; ``rate`` is the noise rate in [0, 1] for the rate
    kinds, 0.0 for ``"none"`` and None for ``"file"``; ``path`` is set only for ``"file"``.
    ``str(spec)`` gives back a string that :func:`parse_noise_spec` parses to an equal spec.
    """

    kind: str
    rate: float | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in NOISE_KINDS:
            raise ValueError(f"noise: unknown kind {self.kind!r}; expected one of "
                             f"{', '.join(NOISE_KINDS)}")
        if self.kind == "file":
            if not isinstance(self.path, str) or not self.path:
                raise ValueError("noise: 'file' needs a path, e.g. 'file:noisy_labels.npy'")
            if self.rate is not None:
                raise ValueError("noise: 'file' takes no rate")
            return
        if self.path is not None:
            raise ValueError(f"noise: only 'file' takes a path, not {self.kind!r}")
        if self.kind == "none":
            if self.rate not in (None, 0, 0.0):
                raise ValueError(f"noise: 'none' takes no rate, got {self.rate}")
            object.__setattr__(self, "rate", 0.0)
            return
        if isinstance(self.rate, bool) or not isinstance(self.rate, numbers.Real):
            raise ValueError(f"noise: {self.kind!r} needs a rate, e.g. '{self.kind}:0.4'")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"noise: rate must be in [0, 1], got {self.rate}")
        object.__setattr__(self, "rate", float(self.rate))

    def __str__(self) -> str:
        if self.kind == "none":
            return "none"
        if self.kind == "file":
            return f"file:{self.path}"
        return f"{self.kind}:{self.rate!r}"


def parse_noise_spec(spec: str) -> NoiseSpec:
    """Parse a command-line noise string into a :class:`NoiseSpec`.

    Accepted forms (kind case-insensitive, surrounding spaces ignored):

    * ``"none"``: clean labels;
    * ``"uniform:R"``: :func:`uniform_noise` with the true class among the draws (IEG/DivideMix;
      realised flip rate ``R * (1 - 1/C)``);
    * ``"uniform-exclusive:R"``: the same with ``include_true_class=False`` (flip rate ``R``);
    * ``"asymmetric:R"``: :func:`asymmetric_noise` with the CIFAR-10 map (other datasets: pass
      ``class_map`` to :func:`apply_noise`);
    * ``"pairflip:R"``: :func:`pair_flip_noise`;
    * ``"instance:R"``: :func:`instance_dependent_noise` (needs features);
    * ``"file:PATH"``: :func:`load_noisy_labels` (everything after the first ``:`` is the path).

    ``R`` is a float in [0, 1]. Errors are ``ValueError`` starting with ``"noise: "``.
    """
    if not isinstance(spec, str):
        raise TypeError(f"noise: expected a string such as 'uniform:0.8', got {type(spec).__name__}")
    text = spec.strip()
    kind, sep, argument = text.partition(":")
    kind = kind.strip().lower()
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise: unknown kind {kind!r} in {spec!r}; expected one of "
                         f"{', '.join(NOISE_KINDS)} (e.g. 'uniform:0.8', 'file:labels.npy', "
                         "'none')")
    if kind == "none":
        if argument.strip():
            raise ValueError(f"noise: 'none' takes no rate, got {spec!r}")
        return NoiseSpec("none", 0.0)
    if kind == "file":
        path = argument.strip()
        if not path:
            raise ValueError(f"noise: 'file' needs a path, e.g. 'file:noisy_labels.npy', "
                             f"got {spec!r}")
        return NoiseSpec("file", None, path)
    argument = argument.strip()
    if not sep or not argument:
        raise ValueError(f"noise: {kind!r} needs a rate, e.g. '{kind}:0.4', got {spec!r}")
    try:
        rate = float(argument)
    except ValueError:
        raise ValueError(f"noise: rate must be a number in [0, 1], got {argument!r} "
                         f"in {spec!r}") from None
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise: rate must be in [0, 1], got {argument} in {spec!r}")
    return NoiseSpec(kind, rate)


def apply_noise(spec: NoiseSpec | str, labels: Tensor, num_classes: int,
                generator: torch.Generator | None, *, features: Tensor | None = None,
                class_map: Mapping[int, int] | None = None) -> Tensor:
    """Noisy labels for ``labels`` as described by ``spec`` (a :class:`NoiseSpec` or a string for
    :func:`parse_noise_spec`), dispatching to the generators of :mod:`iegkit.noise` with ``generator``.

    ``features`` (N, ...) are required by ``"instance"`` and ignored otherwise; ``class_map`` is
    used by ``"asymmetric"`` (default: ``CIFAR10_ASYMMETRIC_MAP``, allowed only when
    ``num_classes == 10``) and ignored otherwise. ``"none"`` returns a copy of ``labels``;
    ``"file"`` loads ``spec.path`` with :func:`load_noisy_labels` (one label per element of
    ``labels``). ``generator`` may be None for those two, which draw nothing. The result has the
    dtype and device of ``labels``.
    """
    if isinstance(spec, str):
        spec = parse_noise_spec(spec)
    elif not isinstance(spec, NoiseSpec):
        raise TypeError(f"spec: expected a NoiseSpec or a string such as 'uniform:0.8', "
                        f"got {type(spec).__name__}")
    num_classes = check_num_classes(num_classes)
    check_labels(labels, num_classes)
    if spec.kind == "none":
        return labels.clone()
    if spec.kind == "file":
        loaded = load_noisy_labels(spec.path, labels.shape[0], num_classes)
        return loaded.to(device=labels.device, dtype=labels.dtype)
    check_generator(generator)
    rate = spec.rate
    if spec.kind in ("uniform", "uniform-exclusive"):
        return uniform_noise(labels, rate, num_classes, generator,
                             include_true_class=spec.kind == "uniform")
    if spec.kind == "asymmetric":
        if class_map is None:
            if num_classes != 10:
                raise ValueError(f"class_map: asymmetric noise on {num_classes} classes needs a "
                                 "class_map {true class: noisy class} (the default is CIFAR-10's)")
            class_map = CIFAR10_ASYMMETRIC_MAP
        return asymmetric_noise(labels, rate, check_class_map(class_map, num_classes), generator)
    if spec.kind == "pairflip":
        return pair_flip_noise(labels, rate, num_classes, generator)
    if features is None:
        raise ValueError("features: instance-dependent noise needs the (N, ...) features")
    return instance_dependent_noise(features, labels, rate, num_classes, generator)
