"""Properties of the label-noise generators, transition matrices, and (iegkit.cli.noise_specs)
label files and noise specs.

Rates are checked against a 5-sigma binomial bound on n >= 20000 labels; the statistical
properties run with ``derandomize=True`` so that the (tiny) 5-sigma false-alarm rate cannot make CI
flaky: the same examples are drawn on every run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from iegkit.cli.noise_specs import (
    NOISE_KINDS,
    NoiseSpec,
    apply_noise,
    load_noisy_labels,
    parse_noise_spec,
)
from iegkit.noise import (
    CIFAR10_ASYMMETRIC_MAP,
    asymmetric_noise,
    asymmetric_transition,
    expected_instance_flip_rate,
    instance_dependent_noise,
    noise_rate_of,
    open_set_noise,
    pair_flip_noise,
    pair_flip_transition,
    transition_matrix_noise,
    uniform_noise,
    uniform_transition,
)

N = 20000
seeds = st.integers(0, 2**31 - 1)
rates = st.floats(0, 1, allow_nan=False)
classes = st.integers(2, 12)
quick = settings(max_examples=15, deadline=None, derandomize=True)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_labels(seed: int, num_classes: int, n: int = N) -> torch.Tensor:
    return torch.randint(0, num_classes, (n,), generator=gen(seed))


def assert_rate(flips: torch.Tensor, expected: float) -> None:
    """The realised fraction of True in ``flips`` is within 5 binomial sigma of ``expected``
    (an upper bound on the sigma of a sum of independent Bernoullis with that mean)."""
    n = flips.numel()
    observed = float(flips.double().mean())
    sd = (expected * (1 - expected) / n) ** 0.5
    assert abs(observed - expected) <= 5 * sd + 1e-9, (observed, expected, sd)


def prior(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.bincount(labels, minlength=num_classes).double() / labels.numel()


# ------------------------------------------------------------------------------------------
# class-conditional generators


@quick
@given(rates, classes, st.booleans(), seeds)
def test_uniform_flip_rate_and_transition(rate, num_classes, include_true, seed):
    labels = random_labels(seed, num_classes)
    noisy = uniform_noise(labels, rate, num_classes, gen(seed + 1), include_true_class=include_true)
    expected = rate * (1 - 1 / num_classes) if include_true else rate
    T = uniform_transition(rate, num_classes, include_true)
    assert noise_rate_of(T) == pytest.approx(expected, abs=1e-12)
    assert noise_rate_of(T, prior(labels, num_classes)) == pytest.approx(expected, abs=1e-12)
    assert_rate(noisy != labels, expected)
    assert int(noisy.min()) >= 0 and int(noisy.max()) < num_classes


@quick
@given(rates, classes, seeds)
def test_pair_flip_goes_only_to_the_next_class(rate, num_classes, seed):
    labels = random_labels(seed, num_classes)
    before = labels.clone()
    noisy = pair_flip_noise(labels, rate, num_classes, gen(seed + 1))
    assert torch.equal(labels, before)  # pure
    assert noisy.dtype == labels.dtype and noisy.shape == labels.shape
    changed = noisy != labels
    assert torch.equal(noisy[changed], (labels[changed] + 1) % num_classes)
    assert_rate(changed, rate)
    T = pair_flip_transition(rate, num_classes)
    assert noise_rate_of(T, prior(labels, num_classes)) == pytest.approx(rate, abs=1e-12)
    assert torch.equal(noisy, pair_flip_noise(labels, rate, num_classes, gen(seed + 1)))


class_maps = st.integers(2, 10).flatmap(
    lambda c: st.tuples(st.just(c), st.dictionaries(st.integers(0, c - 1), st.integers(0, c - 1),
                                                    max_size=c)))


@quick
@given(rates, class_maps, seeds)
def test_asymmetric_maps_only_to_the_mapped_class(rate, c_and_map, seed):
    num_classes, class_map = c_and_map
    labels = random_labels(seed, num_classes)
    noisy = asymmetric_noise(labels, rate, class_map, gen(seed + 1))
    changed = noisy != labels
    for c in range(num_classes):
        members = labels == c
        if c not in class_map or class_map[c] == c:
            assert not bool(changed[members].any())
        else:
            assert bool((noisy[members & changed] == class_map[c]).all())
    movable = torch.tensor([c in class_map and class_map[c] != c for c in range(num_classes)])
    on_movable = movable[labels]
    if bool(on_movable.any()):
        assert_rate(changed[on_movable], rate)
    T = asymmetric_transition(rate, class_map, num_classes)
    assert torch.allclose(T.sum(1), torch.ones(num_classes, dtype=torch.float64))
    assert_rate(changed, noise_rate_of(T, prior(labels, num_classes)))


def test_cifar10_asymmetric_transition_matches_the_map():
    T = asymmetric_transition(0.4, CIFAR10_ASYMMETRIC_MAP, 10)
    assert T[9, 1] == pytest.approx(0.4) and T[9, 9] == pytest.approx(0.6)
    assert T[3, 5] == pytest.approx(0.4) and T[5, 3] == pytest.approx(0.4)
    assert T[0, 0] == 1.0 and T[1, 1] == 1.0
    assert noise_rate_of(T) == pytest.approx(0.4 * 5 / 10)


stochastic_matrices = st.integers(2, 5).flatmap(
    lambda c: st.lists(st.lists(st.sampled_from([0.0, 0.0, 0.5, 1.0, 2.0, 3.0]), min_size=c,
                                max_size=c).filter(lambda row: sum(row) > 0),
                       min_size=c, max_size=c))


@quick
@given(stochastic_matrices, seeds)
def test_transition_matrix_noise_has_the_matrix_as_confusion(rows, seed):
    T = torch.tensor(rows, dtype=torch.float64)
    T = T / T.sum(1, keepdim=True)
    num_classes = T.shape[0]
    per_class = 24000 // num_classes
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    labels = labels[torch.randperm(labels.numel(), generator=gen(seed))]
    noisy = transition_matrix_noise(labels, T, gen(seed + 1))
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    confusion.index_put_((labels, noisy), torch.ones(labels.numel(), dtype=torch.float64),
                         accumulate=True)
    empirical = confusion / per_class
    sd = (T * (1 - T) / per_class).sqrt()
    assert bool(((empirical - T).abs() <= 5 * sd + 1e-12).all()), (empirical, T)
    assert bool((confusion[T == 0] == 0).all())  # impossible transitions never happen
    assert_rate(noisy != labels, noise_rate_of(T))
    assert torch.equal(noisy, transition_matrix_noise(labels, T, gen(seed + 1)))


@quick
@given(rates, st.integers(2, 6), seeds)
def test_builders_give_the_generators_rates_through_the_matrix(rate, num_classes, seed):
    labels = random_labels(seed, num_classes)
    p = prior(labels, num_classes)
    for T in (uniform_transition(rate, num_classes), uniform_transition(rate, num_classes, False),
              pair_flip_transition(rate, num_classes)):
        assert bool((T >= 0).all()) and torch.allclose(T.sum(1), torch.ones(num_classes).double())
        noisy = transition_matrix_noise(labels, T, gen(seed + 2))
        assert_rate(noisy != labels, noise_rate_of(T, p))
    noisy = transition_matrix_noise(labels, pair_flip_transition(rate, num_classes), gen(seed))
    changed = noisy != labels
    assert torch.equal(noisy[changed], (labels[changed] + 1) % num_classes)


@pytest.mark.parametrize("matrix, message", [
    ([[0.5, 0.5], [0.2, 0.7]], "matrix: row 1 sums to"),
    ([[1.2, -0.2], [0.0, 1.0]], "matrix: entries must be non-negative"),
    ([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], "matrix: expected a square"),
    ([[float("nan"), 1.0], [0.0, 1.0]], "matrix: entries must be finite"),
])
def test_bad_transition_matrices_are_rejected(matrix, message):
    with pytest.raises(ValueError, match=message):
        transition_matrix_noise(torch.tensor([0, 1]), matrix, gen(0))
    with pytest.raises(ValueError, match=message):
        noise_rate_of(matrix)


def test_argument_errors_name_the_argument():
    labels = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="rate: expected a noise rate in"):
        pair_flip_noise(labels, 1.5, 3, gen(0))
    with pytest.raises(ValueError, match=r"labels: class indices must lie in \[0, 2\)"):
        pair_flip_noise(labels, 0.5, 2, gen(0))
    with pytest.raises(TypeError, match="labels: expected an integer"):
        pair_flip_noise(labels.float(), 0.5, 3, gen(0))
    with pytest.raises(TypeError, match="generator: expected a torch.Generator"):
        pair_flip_noise(labels, 0.5, 3, None)
    with pytest.raises(ValueError, match="labels: class indices"):
        transition_matrix_noise(torch.tensor([0, 2]), torch.eye(2), gen(0))
    with pytest.raises(ValueError, match="class_map: class 7"):
        asymmetric_transition(0.3, {7: 0}, 3)
    with pytest.raises(ValueError, match="class_prior: must sum to 1"):
        noise_rate_of(torch.eye(2), torch.tensor([0.5, 0.6]))


# ------------------------------------------------------------------------------------------
# instance-dependent noise


@settings(max_examples=10, deadline=None, derandomize=True)
@given(st.floats(0.05, 0.95), st.integers(2, 10), st.sampled_from([0.0, 0.1]), seeds)
def test_instance_noise_rate_and_flips_are_wrong(rate, num_classes, std, seed):
    labels = random_labels(seed, num_classes)
    features = torch.randn(N, 2, 4, generator=gen(seed + 1))
    noisy = instance_dependent_noise(features, labels, rate, num_classes, gen(seed + 2), std=std)
    assert noisy.dtype == labels.dtype and int(noisy.min()) >= 0 and int(noisy.max()) < num_classes
    expected = expected_instance_flip_rate(rate, std)
    if std == 0.0 or 0.2 <= rate <= 0.8:
        assert abs(expected - rate) < 0.006
    assert_rate(noisy != labels, expected)
    again = instance_dependent_noise(features, labels, rate, num_classes, gen(seed + 2), std=std)
    assert torch.equal(noisy, again)


@settings(max_examples=10, deadline=None)
@given(st.integers(2, 10), seeds)
def test_instance_noise_always_flips_to_another_class_at_rate_one(num_classes, seed):
    labels = random_labels(seed, num_classes, n=2000)
    features = torch.randn(2000, 5, generator=gen(seed + 1)) * 30  # peaked softmax
    noisy = instance_dependent_noise(features, labels, 1.0, num_classes, gen(seed), std=0.0)
    assert bool((noisy != labels).all())
    assert torch.equal(instance_dependent_noise(features, labels, 0.0, num_classes, gen(seed)),
                       labels)


def test_instance_noise_depends_on_the_features():
    # identical instances share W_y x, so with a peaked softmax and q = 1 they get the same class
    labels = torch.zeros(500, dtype=torch.int64)
    features = torch.randn(1, 16, generator=gen(0)).repeat(500, 1) * 100
    noisy = instance_dependent_noise(features, labels, 1.0, 10, gen(1), std=0.0)
    assert noisy.unique().numel() == 1 and int(noisy[0]) != 0


def test_instance_noise_validates_features():
    labels = torch.tensor([0, 1, 1])
    with pytest.raises(ValueError, match="features: expected shape"):
        instance_dependent_noise(torch.zeros(4, 2), labels, 0.3, 2, gen(0))
    with pytest.raises(ValueError, match="features: entries must be finite"):
        instance_dependent_noise(torch.tensor([[1.0], [float("inf")], [0.0]]), labels, 0.3, 2,
                                 gen(0))
    with pytest.raises(ValueError, match="std:"):
        instance_dependent_noise(torch.zeros(3, 2), labels, 0.3, 2, gen(0), std=-1.0)


# ------------------------------------------------------------------------------------------
# open-set noise


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 200), rates, st.integers(1, 60), seeds)
def test_open_set_replaces_round_rate_n_images_and_keeps_labels(n, rate, m, seed):
    images = torch.arange(n, dtype=torch.float32)[:, None, None].repeat(1, 2, 3)  # >= 0
    ood = -torch.arange(1, m + 1, dtype=torch.float32)[:, None, None].repeat(1, 2, 3)  # < 0
    labels = torch.randint(0, 5, (n,), generator=gen(seed))
    new_images, new_labels, mask = open_set_noise(images, labels, rate, ood, gen(seed))
    k = round(rate * n)
    assert mask.dtype == torch.bool and int(mask.sum()) == k
    assert torch.equal(new_labels, labels)
    assert torch.equal(new_images[~mask], images[~mask])
    ids = (-new_images[mask][:, 0, 0]).long() - 1  # which OOD image went where
    assert bool((ids >= 0).all()) and bool((ids < m).all())
    assert torch.equal(new_images[mask], ood[ids])
    counts = torch.bincount(ids, minlength=m)
    if k <= m:
        assert bool((counts <= 1).all())  # without replacement
    else:
        assert int(counts.max()) - int(counts.min()) <= 1  # balanced reuse
    again = open_set_noise(images, labels, rate, ood, gen(seed))
    assert all(torch.equal(a, b) for a, b in zip((new_images, new_labels, mask), again))


def test_open_set_validates_ood_images():
    images, labels = torch.zeros(4, 3, 2), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="ood_images: expected shape"):
        open_set_noise(images, labels, 0.5, torch.zeros(4, 2, 3), gen(0))
    with pytest.raises(TypeError, match="ood_images: expected dtype"):
        open_set_noise(images, labels, 0.5, torch.zeros(4, 3, 2, dtype=torch.uint8), gen(0))
    with pytest.raises(ValueError, match="ood_images: empty"):
        open_set_noise(images, labels, 0.5, torch.zeros(0, 3, 2), gen(0))
    with pytest.raises(ValueError, match="labels: expected 4 labels"):
        open_set_noise(images, labels[:3], 0.5, torch.zeros(2, 3, 2), gen(0))


# ------------------------------------------------------------------------------------------
# user-supplied labels


def write_labels(path, labels: torch.Tensor) -> None:
    if path.suffix == ".npy":
        np.save(path, labels.numpy())
    elif path.suffix in (".pt", ".pth"):
        torch.save(labels, path)
    else:
        path.write_text("\n".join(str(v) for v in labels.tolist()) + "\n")


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".txt", ".csv"])
def test_load_noisy_labels_round_trips_files(tmp_path, suffix):
    labels = random_labels(0, 7, n=300)
    path = tmp_path / f"noisy{suffix}"
    write_labels(path, labels)
    for source in (path, str(path)):
        loaded = load_noisy_labels(source, 300, 7)
        assert loaded.dtype == torch.int64 and torch.equal(loaded, labels)
    with pytest.raises(ValueError, match="source: expected 301 labels"):
        load_noisy_labels(path, 301, 7)
    with pytest.raises(ValueError, match=r"source: label 6 at index \d+ .* outside \[0, 6\)"):
        load_noisy_labels(path, 300, 6)
    assert torch.equal(apply_noise(f"file:{path}", random_labels(1, 7, n=300), 7, None), labels)


def test_load_noisy_labels_from_memory_and_its_errors(tmp_path):
    expected = torch.tensor([0, 2, 1])
    for source in ([0, 2, 1], (0, 2, 1), np.array([0, 2, 1]), torch.tensor([0.0, 2.0, 1.0])):
        assert torch.equal(load_noisy_labels(source, 3, 3), expected)
    with pytest.raises(ValueError, match="source: labels must be integer class indices"):
        load_noisy_labels([0.0, 2.5, 1.0], 3, 3)
    with pytest.raises(ValueError, match="source: label -1 at index 1"):
        load_noisy_labels([0, -1, 1], 3, 3)
    with pytest.raises(ValueError, match="source: expected a flat sequence"):
        load_noisy_labels([[0], [1], [1]], 3, 3)
    with pytest.raises(TypeError, match="source: expected integer class indices"):
        load_noisy_labels([True, False, True], 3, 3)
    bad = tmp_path / "bad.txt"
    bad.write_text("1\n2\ncat\n")
    with pytest.raises(ValueError, match="source: line 3 of .* is not an integer label: 'cat'"):
        load_noisy_labels(bad, 3, 3)
    with pytest.raises(ValueError, match="source: unsupported file type '.json'"):
        load_noisy_labels(tmp_path / "labels.json", 3, 3)
    with pytest.raises(FileNotFoundError, match="source: no such file"):
        load_noisy_labels(tmp_path / "missing.npy", 3, 3)


# ------------------------------------------------------------------------------------------
# specs


@pytest.mark.parametrize("text, spec", [
    ("uniform:0.8", NoiseSpec("uniform", 0.8)),
    ("uniform-exclusive:0.8", NoiseSpec("uniform-exclusive", 0.8)),
    ("asymmetric:0.4", NoiseSpec("asymmetric", 0.4)),
    ("pairflip:0.45", NoiseSpec("pairflip", 0.45)),
    ("instance:0.4", NoiseSpec("instance", 0.4)),
    ("file:/data/noisy labels.npy", NoiseSpec("file", None, "/data/noisy labels.npy")),
    ("file:C:\\labels.pt", NoiseSpec("file", None, "C:\\labels.pt")),
    ("none", NoiseSpec("none", 0.0)),
    (" Uniform : 1 ", NoiseSpec("uniform", 1.0)),
    ("pairflip:0", NoiseSpec("pairflip", 0.0)),
])
def test_parse_noise_spec_accepts(text, spec):
    parsed = parse_noise_spec(text)
    assert parsed == spec
    assert parse_noise_spec(str(parsed)) == parsed


@pytest.mark.parametrize("text, message", [
    ("foo:0.3", r"noise: unknown kind 'foo'.*expected one of none, uniform"),
    ("", "noise: unknown kind ''"),
    ("symmetric:0.2", "noise: unknown kind 'symmetric'"),
    ("uniform", r"noise: 'uniform' needs a rate, e.g. 'uniform:0.4'"),
    ("pairflip:", "noise: 'pairflip' needs a rate"),
    ("uniform:1.5", r"noise: rate must be in \[0, 1\], got 1.5"),
    ("instance:-0.1", r"noise: rate must be in \[0, 1\]"),
    ("asymmetric:nan", r"noise: rate must be in \[0, 1\]"),
    ("uniform:high", r"noise: rate must be a number in \[0, 1\], got 'high'"),
    ("none:0.2", "noise: 'none' takes no rate"),
    ("file:", "noise: 'file' needs a path"),
])
def test_parse_noise_spec_rejects(text, message):
    with pytest.raises(ValueError, match=message):
        parse_noise_spec(text)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(sorted(set(NOISE_KINDS) - {"none", "file"})), rates)
def test_parse_noise_spec_round_trips_any_rate(kind, rate):
    spec = parse_noise_spec(f"{kind}:{rate!r}")
    assert spec == NoiseSpec(kind, rate) and parse_noise_spec(str(spec)) == spec


def test_noise_spec_validates_when_built_directly():
    with pytest.raises(ValueError, match=r"noise: rate must be in \[0, 1\]"):
        NoiseSpec("uniform", 2.0)
    with pytest.raises(ValueError, match="noise: unknown kind 'bogus'"):
        NoiseSpec("bogus", 0.1)
    with pytest.raises(ValueError, match="noise: 'file' needs a path"):
        NoiseSpec("file")


def test_apply_noise_dispatches_to_the_generators():
    labels = random_labels(0, 10, n=1000)
    features = torch.randn(1000, 6, generator=gen(1))
    expected = {
        "uniform:0.8": uniform_noise(labels, 0.8, 10, gen(2)),
        "uniform-exclusive:0.8": uniform_noise(labels, 0.8, 10, gen(2), include_true_class=False),
        "asymmetric:0.4": asymmetric_noise(labels, 0.4, CIFAR10_ASYMMETRIC_MAP, gen(2)),
        "pairflip:0.45": pair_flip_noise(labels, 0.45, 10, gen(2)),
        "instance:0.4": instance_dependent_noise(features, labels, 0.4, 10, gen(2)),
        "none": labels,
    }
    for text, noisy in expected.items():
        got = apply_noise(text, labels, 10, gen(2), features=features)
        assert torch.equal(got, noisy), text
        assert torch.equal(apply_noise(parse_noise_spec(text), labels, 10, gen(2),
                                       features=features), noisy)
    digits_map = {7: 1, 9: 4}
    assert torch.equal(apply_noise("asymmetric:0.4", labels, 10, gen(2), class_map=digits_map),
                       asymmetric_noise(labels, 0.4, digits_map, gen(2)))
    with pytest.raises(ValueError, match="features: instance-dependent noise needs"):
        apply_noise("instance:0.4", labels, 10, gen(2))
    with pytest.raises(ValueError, match="class_map: asymmetric noise on 5 classes needs"):
        apply_noise("asymmetric:0.4", labels % 5, 5, gen(2))
    with pytest.raises(TypeError, match="generator: expected a torch.Generator"):
        apply_noise("uniform:0.5", labels, 10, None)
    with pytest.raises(TypeError, match="spec: expected a NoiseSpec"):
        apply_noise(0.5, labels, 10, gen(2))
