"""Label-noise generators and transition matrices: uniform, asymmetric (class map), pair-flip,
transition-matrix, instance-dependent and open-set noise.

Conventions (followed by every generator here):

* labels are integer class indices of shape ``(N,)`` in ``[0, C)`` (int64 in practice); every
  generator returns a new tensor of the same dtype and device and never modifies its inputs;
* every random draw comes from the explicit ``torch.Generator`` passed in (random numbers are drawn
  on the generator's device, normally the CPU), so equal generator states give equal noise;
* bad input raises ``TypeError`` (wrong type/dtype) or ``ValueError`` (wrong value/shape) whose
  message starts with the name of the argument at fault.

Transition matrices follow the usual convention: row = true class, column = noisy class,
``T[i, j] = P(noisy = j | true = i)``; the builders return float64 ``(C, C)`` tensors.

The command line's noise specs (``uniform:0.8``, ``file:labels.npy``, ...) and label files are
parsed in ``iegkit.cli.noise_specs``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = [
    "CIFAR10_ASYMMETRIC_MAP",
    "DIGITS_ASYMMETRIC_MAP",
    "asymmetric_noise",
    "asymmetric_transition",
    "expected_instance_flip_rate",
    "instance_dependent_noise",
    "noise_rate_of",
    "open_set_noise",
    "pair_flip_noise",
    "pair_flip_transition",
    "transition_matrix_noise",
    "uniform_noise",
    "uniform_transition",
]

#: Tolerance on the row sums of a transition matrix (and on the sum of a class prior).
ROW_SUM_TOLERANCE = 1e-6

#: The CIFAR-10 asymmetric map of IEG/DivideMix: truck->automobile, bird->airplane, cat<->dog,
#: deer->horse (the official code; docs/method.md, spec §7.1); other classes stay clean.
CIFAR10_ASYMMETRIC_MAP: dict[int, int] = {9: 1, 2: 0, 3: 5, 5: 3, 4: 7}

#: A digits analogue (our choice, look-alike digits, five transitions as in CIFAR-10's map):
#: 7->1, 9->4, 3->8, 5->6, 2->7.
DIGITS_ASYMMETRIC_MAP: dict[int, int] = {7: 1, 9: 4, 3: 8, 5: 6, 2: 7}


# --------------------------------------------------------------------------------------------
# argument checks


def check_generator(generator: object) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            "generator: expected a torch.Generator (every random draw is seeded explicitly), "
            f"got {type(generator).__name__}"
        )
    return generator


def check_num_classes(num_classes: object, name: str = "num_classes") -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(num_classes).__name__}")
    if num_classes < 2:
        raise ValueError(f"{name}: expected at least 2 classes, got {num_classes}")
    return int(num_classes)


def _check_rate(rate: object, name: str = "rate") -> float:
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise TypeError(f"{name}: expected a number in [0, 1], got {type(rate).__name__}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{name}: expected a noise rate in [0, 1], got {rate}")
    return float(rate)


def check_labels(labels: object, num_classes: int | None, name: str = "labels") -> Tensor:
    """An integer tensor of shape (N,), with values in [0, num_classes) when that is given."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name}: expected a tensor of class indices, got {type(labels).__name__}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"{name}: expected an integer (int64) tensor of class indices, "
                        f"got dtype {labels.dtype}")
    if labels.dim() != 1:
        raise ValueError(f"{name}: expected shape (N,), got {tuple(labels.shape)}")
    if num_classes is not None and labels.numel() > 0:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"{name}: class indices must lie in [0, {num_classes}), "
                             f"got values in [{low}, {high}]")
    return labels


def check_class_map(class_map: object, num_classes: int) -> dict[int, int]:
    if not isinstance(class_map, Mapping):
        raise TypeError(f"class_map: expected a dict {{true class: noisy class}}, "
                        f"got {type(class_map).__name__}")
    checked = {}
    for source, dest in class_map.items():
        for value in (source, dest):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"class_map: expected int classes, got {value!r} "
                                f"in {source!r}: {dest!r}")
            if not 0 <= value < num_classes:
                raise ValueError(f"class_map: class {value} in {source}: {dest} is outside "
                                 f"[0, {num_classes})")
        checked[int(source)] = int(dest)
    return checked


def _check_matrix(matrix: object, name: str = "matrix") -> Tensor:
    """A row-stochastic (C, C) float64 copy of ``matrix``."""
    try:
        T = torch.as_tensor(matrix).detach()
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"{name}: expected a (C, C) transition matrix, "
                        f"got {type(matrix).__name__}") from error
    if T.dtype == torch.bool or T.is_complex():
        raise TypeError(f"{name}: expected a real (C, C) transition matrix, got dtype {T.dtype}")
    T = T.to(device="cpu", dtype=torch.float64)
    if T.dim() != 2 or T.shape[0] != T.shape[1] or T.shape[0] < 2:
        raise ValueError(f"{name}: expected a square (C, C) transition matrix with C >= 2 "
                         f"(row = true class, column = noisy class), got shape {tuple(T.shape)}")
    if not bool(torch.isfinite(T).all()):
        raise ValueError(f"{name}: entries must be finite")
    if bool((T < 0).any()):
        i, j = (int(v) for v in torch.nonzero(T < 0)[0])
        raise ValueError(f"{name}: entries must be non-negative probabilities, "
                         f"got T[{i}, {j}] = {float(T[i, j])}")
    sums = T.sum(dim=1)
    bad = torch.nonzero((sums - 1.0).abs() > ROW_SUM_TOLERANCE).flatten()
    if bad.numel():
        i = int(bad[0])
        raise ValueError(f"{name}: row {i} sums to {float(sums[i])!r}, expected 1 (within "
                         f"{ROW_SUM_TOLERANCE}); T[i, j] = P(noisy = j | true = i), so every row "
                         "must be a probability distribution")
    return T


# --------------------------------------------------------------------------------------------
# class-conditional noise


def uniform_noise(labels: Tensor, rate: float, num_classes: int, generator: torch.Generator, *,
                  include_true_class: bool = True) -> Tensor:
    """Uniform (symmetric) label noise.

    Each label is selected with probability ``rate``; a selected label is replaced by a class drawn
    uniformly from all C classes when ``include_true_class`` (IEG, DivideMix: the realised flip rate
    is rate * (1 - 1/C), so "0.8" flips 72% on 10 classes), or from the C - 1 other classes
    (Co-teaching: the flip rate is ``rate``). Draws ``N`` uniforms, then ``N`` integers, from
    ``generator``. Transition matrix: :func:`uniform_transition`.
    """
    num_classes = check_num_classes(num_classes)
    check_labels(labels, num_classes)
    rate = _check_rate(rate)
    check_generator(generator)
    selected = torch.rand(labels.shape, generator=generator, device=generator.device)
    if include_true_class:
        drawn = torch.randint(0, num_classes, labels.shape, generator=generator,
                              device=generator.device).to(labels.device)
    else:
        offset = torch.randint(1, num_classes, labels.shape, generator=generator,
                               device=generator.device).to(labels.device)
        drawn = (labels + offset) % num_classes
    return torch.where((selected < rate).to(labels.device), drawn.to(labels.dtype), labels)


def asymmetric_noise(labels: Tensor, rate: float, class_map: Mapping[int, int],
                     generator: torch.Generator) -> Tensor:
    """Class-dependent noise: a label c in ``class_map`` becomes class_map[c] with probability
    ``rate``; labels of other classes never change. Draws ``N`` uniforms from ``generator``.
    Transition matrix: :func:`asymmetric_transition`."""
    check_labels(labels, None)
    rate = _check_rate(rate)
    check_generator(generator)
    if not isinstance(class_map, Mapping):
        raise TypeError(f"class_map: expected a dict {{true class: noisy class}}, "
                        f"got {type(class_map).__name__}")
    selected = torch.rand(labels.shape, generator=generator, device=generator.device)
    target = labels.clone()
    for source, dest in class_map.items():
        target[labels == source] = dest
    return torch.where((selected < rate).to(labels.device), target, labels)


def pair_flip_noise(labels: Tensor, rate: float, num_classes: int,
                    generator: torch.Generator) -> Tensor:
    """Pair-flip noise (Co-teaching, Han et al. 2018).

    Each label c independently becomes ``(c + 1) % num_classes`` with probability ``rate`` and
    stays c otherwise, so the realised flip rate is ``rate`` and a flipped label is always wrong.
    Draws ``N`` uniforms from ``generator``. Transition matrix: :func:`pair_flip_transition`.
    """
    num_classes = check_num_classes(num_classes)
    check_labels(labels, num_classes)
    rate = _check_rate(rate)
    check_generator(generator)
    selected = torch.rand(labels.shape, generator=generator, device=generator.device)
    selected = (selected < rate).to(labels.device)
    return torch.where(selected, (labels + 1) % num_classes, labels)


def transition_matrix_noise(labels: Tensor, matrix: Tensor, generator: torch.Generator) -> Tensor:
    """Class-conditional noise from a transition matrix.

    ``matrix`` is T of shape (C, C), row = true class, column = noisy class,
    ``T[i, j] = P(noisy = j | true = i)``; it must be row-stochastic (non-negative, each row
    summing to 1 within 1e-6). Each example of true class i gets a noisy class drawn independently
    from row ``T[i]`` (classes with probability 0 are never drawn). The draws are made class by
    class, ``c = 0 .. C-1``, with ``torch.multinomial`` (with replacement) for the examples of
    class c, in their order in ``labels``. Expected flip rate: :func:`noise_rate_of` with the
    class frequencies of ``labels`` as the prior.
    """
    T = _check_matrix(matrix)
    num_classes = T.shape[0]
    check_labels(labels, num_classes)
    check_generator(generator)
    noisy = torch.empty(labels.shape, dtype=torch.int64)
    clean = labels.cpu()
    rows = T.to(generator.device)
    for c in range(num_classes):
        members = clean == c
        count = int(members.sum())
        if count:
            drawn = torch.multinomial(rows[c], count, replacement=True, generator=generator)
            noisy[members] = drawn.cpu()
    return noisy.to(device=labels.device, dtype=labels.dtype)


def uniform_transition(rate: float, num_classes: int, include_true_class: bool = True) -> Tensor:
    """T of :func:`uniform_noise`: ``(1 - rate) I + rate / C`` (``include_true_class``, IEG and
    DivideMix: the flip rate is ``rate * (1 - 1/C)``) or ``(1 - rate) I + rate / (C - 1)`` off the
    diagonal (Co-teaching: the flip rate is ``rate``). float64, shape (C, C)."""
    rate = _check_rate(rate)
    num_classes = check_num_classes(num_classes)
    eye = torch.eye(num_classes, dtype=torch.float64)
    if include_true_class:
        return (1.0 - rate) * eye + rate / num_classes
    return (1.0 - rate) * eye + rate / (num_classes - 1) * (1.0 - eye)


def pair_flip_transition(rate: float, num_classes: int) -> Tensor:
    """T of :func:`pair_flip_noise`: ``T[c, c] = 1 - rate``, ``T[c, (c + 1) % C] = rate``."""
    rate = _check_rate(rate)
    num_classes = check_num_classes(num_classes)
    eye = torch.eye(num_classes, dtype=torch.float64)
    return (1.0 - rate) * eye + rate * torch.roll(eye, shifts=1, dims=1)


def asymmetric_transition(rate: float, class_map: Mapping[int, int], num_classes: int) -> Tensor:
    """T of :func:`asymmetric_noise`: the identity, except that for each ``s -> d`` in
    ``class_map`` row s puts ``1 - rate`` on s and ``rate`` on d (a map ``s -> s`` leaves the row
    unchanged). Classes not in the map stay clean."""
    rate = _check_rate(rate)
    num_classes = check_num_classes(num_classes)
    T = torch.eye(num_classes, dtype=torch.float64)
    for source, dest in check_class_map(class_map, num_classes).items():
        T[source, source] -= rate
        T[source, dest] += rate
    return T


def noise_rate_of(matrix: Tensor, class_prior: Tensor | None = None) -> float:
    """The expected fraction of wrong labels under T: ``1 - sum_i prior[i] * T[i, i]``.

    ``class_prior`` is the distribution of the true classes (length C, non-negative, summing to 1
    within 1e-6), uniform when None; pass ``torch.bincount(labels, minlength=C) / N`` to predict
    the realised rate on a given label vector.
    """
    T = _check_matrix(matrix)
    num_classes = T.shape[0]
    if class_prior is None:
        prior = torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64)
    else:
        try:
            prior = torch.as_tensor(class_prior).detach().to(device="cpu", dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"class_prior: expected a length-{num_classes} probability vector, "
                            f"got {type(class_prior).__name__}") from error
        if prior.shape != (num_classes,):
            raise ValueError(f"class_prior: expected shape ({num_classes},), "
                             f"got {tuple(prior.shape)}")
        if not bool(torch.isfinite(prior).all()) or bool((prior < 0).any()):
            raise ValueError("class_prior: entries must be finite and non-negative")
        if abs(float(prior.sum()) - 1.0) > ROW_SUM_TOLERANCE:
            raise ValueError(f"class_prior: must sum to 1, sums to {float(prior.sum())!r}")
    rate = float(1.0 - (prior * torch.diagonal(T)).sum())
    return min(max(rate, 0.0), 1.0)  # rounding can leave it a hair outside [0, 1]


# --------------------------------------------------------------------------------------------
# instance-dependent noise


def expected_instance_flip_rate(rate: float, std: float = 0.1) -> float:
    """The expected flip rate of :func:`instance_dependent_noise`: the mean of the normal
    N(rate, std^2) truncated to [0, 1], except 0.0 at ``rate == 0`` (the generator then returns
    the labels unchanged). Within 0.006 of ``rate`` for rate in [0.2, 0.8] and the default std;
    larger near 0 (about 0.08 just above 0) and smaller near 1 (about 0.92 at 1)."""
    rate = _check_rate(rate)
    std = _check_std(std)
    if std == 0.0 or rate == 0.0:
        return rate
    alpha, beta = torch.tensor([(0.0 - rate) / std, (1.0 - rate) / std], dtype=torch.float64)
    mass = torch.special.ndtr(beta) - torch.special.ndtr(alpha)
    density = torch.exp(-0.5 * alpha**2) - torch.exp(-0.5 * beta**2)
    return float(rate + std * density / math.sqrt(2.0 * math.pi) / mass)


def _check_std(std: object) -> float:
    if isinstance(std, bool) or not isinstance(std, numbers.Real):
        raise TypeError(f"std: expected a number >= 0, got {type(std).__name__}")
    if not (std >= 0.0 and math.isfinite(std)):
        raise ValueError(f"std: expected a finite number >= 0, got {std}")
    return float(std)


def _truncated_normal(count: int, mean: float, std: float,
                      generator: torch.Generator) -> Tensor:
    """``count`` draws of N(mean, std^2) truncated to [0, 1], by inversion of the CDF (float64)."""
    u = torch.rand(count, generator=generator, dtype=torch.float64, device=generator.device)
    if std == 0.0:
        return torch.full_like(u, mean)
    low = torch.special.ndtr(torch.tensor((0.0 - mean) / std, dtype=torch.float64))
    high = torch.special.ndtr(torch.tensor((1.0 - mean) / std, dtype=torch.float64))
    p = (low + u * (high - low)).to(u.device)
    return (mean + std * torch.special.ndtri(p)).clamp(0.0, 1.0)


def instance_dependent_noise(features: Tensor, labels: Tensor, rate: float, num_classes: int,
                             generator: torch.Generator, *, std: float = 0.1) -> Tensor:
    """Instance-dependent noise (Xia et al., NeurIPS 2020, "Part-dependent label noise"; the
    ``get_instance_noisy_label`` generator of their code, used as "IDN" by later work).

    Exactly what is computed, with ``x_i = features[i].flatten()`` (dimension d, no
    normalisation: pass the features as the model sees them, e.g. normalised images) and
    ``y_i = labels[i]``:

    1. per-instance flip rates ``q_i ~ N(rate, std^2)`` truncated to [0, 1] (``N`` float64 draws,
       inverse-CDF sampling);
    2. one random projection per true class, ``W_c ~ N(0, 1)^(d, C)`` for c = 0 .. C-1 (drawn
       in that order, float32 or the features' floating dtype; the official code's ``W`` of shape
       (C, d, C), of which instance i uses ``W[y_i]``);
    3. ``p_i = softmax(x_i W_{y_i})`` with the true class masked (logit -inf), a distribution over
       the C - 1 other classes;
    4. with probability ``q_i`` (``N`` uniforms) the label is flipped to a class drawn from
       ``p_i`` (``torch.multinomial``, flipped instances in order), else kept.

    So a flipped label always differs from the true one, and the realised flip rate is Binomial
    with mean :func:`expected_instance_flip_rate` (``rate`` up to the truncation). ``std=0`` gives
    ``q_i = rate`` exactly. ``rate == 0`` returns the labels unchanged (and draws nothing), where
    the truncated normal would still flip about 8%. The mixture
    ``(1 - q_i) onehot(y_i) + q_i p_i`` of the official code is sampled in two steps here, so the
    random streams differ from NumPy's but the distribution is the same.
    """
    num_classes = check_num_classes(num_classes)
    check_labels(labels, num_classes)
    rate = _check_rate(rate)
    std = _check_std(std)
    check_generator(generator)
    if not isinstance(features, Tensor):
        raise TypeError(f"features: expected a tensor (N, ...), got {type(features).__name__}")
    if features.dim() < 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"features: expected shape (N, ...) with N = {labels.shape[0]} "
                         f"(one row per label), got {tuple(features.shape)}")
    if rate == 0.0:
        return labels.clone()
    x = features.detach().reshape(features.shape[0], -1)
    dtype = x.dtype if x.is_floating_point() else torch.float32
    x = x.to(dtype)
    n, d = x.shape
    flip_rate = _truncated_normal(n, rate, std, generator)
    clean = labels.to(x.device)
    logits = torch.empty(n, num_classes, dtype=dtype, device=x.device)
    for c in range(num_classes):
        W_c = torch.randn(d, num_classes, generator=generator, dtype=dtype,
                          device=generator.device).to(x.device)
        members = clean == c
        if bool(members.any()):
            logits[members] = x[members] @ W_c
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("features: entries must be finite (and small enough that the projected "
                         f"logits x W stay finite in {dtype})")
    logits.scatter_(1, clean[:, None], float("-inf"))
    flip = torch.rand(n, generator=generator, dtype=torch.float64, device=generator.device)
    flip = (flip < flip_rate).cpu()
    noisy = labels.cpu().to(torch.int64).clone()
    if bool(flip.any()):
        p = torch.softmax(logits[flip.to(x.device)].double(), dim=1).to(generator.device)
        noisy[flip] = torch.multinomial(p, 1, generator=generator).flatten().cpu()
    return noisy.to(device=labels.device, dtype=labels.dtype)


# --------------------------------------------------------------------------------------------
# open-set noise


def open_set_noise(images: Tensor, labels: Tensor, rate: float, ood_images: Tensor,
                   generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Open-set noise: ``k = round(rate * N)`` images (Python's ``round``, halves to even) are
    replaced by out-of-distribution images, keeping their labels (now wrong for the new image).

    The k positions are the first k of ``torch.randperm(N)``; the OOD images are the first k of
    ``torch.randperm(M)`` (without replacement) when ``M = len(ood_images) >= k``, else of
    ``ceil(k / M)`` concatenated permutations (each OOD image is then used ``floor(k / M)`` or
    ``ceil(k / M)`` times). ``ood_images`` must have shape (M, *images.shape[1:]) and the dtype of
    ``images``. Returns ``(new_images, labels, replaced_mask)``: copies of the inputs, and a bool
    (N,) mask of the replaced positions.
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"images: expected a tensor (N, ...), got {type(images).__name__}")
    if images.dim() < 1:
        raise ValueError("images: expected shape (N, ...), got a scalar")
    check_labels(labels, None)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels: expected {images.shape[0]} labels (one per image), "
                         f"got {labels.shape[0]}")
    rate = _check_rate(rate)
    if not isinstance(ood_images, Tensor):
        raise TypeError(f"ood_images: expected a tensor (M, ...), got {type(ood_images).__name__}")
    if ood_images.dim() != images.dim() or ood_images.shape[1:] != images.shape[1:]:
        raise ValueError(f"ood_images: expected shape (M, {', '.join(map(str, images.shape[1:]))}) "
                         f"to match images, got {tuple(ood_images.shape)}")
    if ood_images.dtype != images.dtype:
        raise TypeError(f"ood_images: expected dtype {images.dtype} (that of images), "
                        f"got {ood_images.dtype}")
    check_generator(generator)
    n, m = images.shape[0], ood_images.shape[0]
    k = round(rate * n)
    if k > 0 and m == 0:
        raise ValueError(f"ood_images: empty, but rate {rate} asks for {k} replaced images")
    new_images = images.clone()
    mask = torch.zeros(n, dtype=torch.bool)
    if k > 0:
        positions = torch.randperm(n, generator=generator, device=generator.device)[:k].cpu()
        passes = -(-k // m)
        sources = torch.cat([torch.randperm(m, generator=generator, device=generator.device)
                             for _ in range(passes)])[:k].cpu()
        new_images[positions.to(images.device)] = ood_images[sources.to(ood_images.device)].to(
            images.device)
        mask[positions] = True
    return new_images, labels.clone(), mask.to(images.device)
