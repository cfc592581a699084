"""MixUp: the pure functions at their edges, the Beta coefficients' own Gamma sampler, and the
probe pool's threshold split (the part against its reference is in tests/test_part_references.py,
the pool's layout in tests/test_ieg_parts.py).

The Beta coefficients come from iegkit's own Gamma sampler (Marsaglia & Tsang 2000, with the
boost Gamma(a) = Gamma(a + 1) U^(1/a) for a < 1), because torch's Gamma sampler takes no generator.
The mean and variance of Beta(0.5, 0.5), which many wrong samplers share, are not enough; here the
Gamma draws are checked against the Gamma CDF itself (Kolmogorov-Smirnov, fixed seeds, so nothing
depends on chance at test time), and the draws must come from the given generator only.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from iegkit.functional.mixup import _gamma, mix_coefficients, mixup_batch, resample
from iegkit.parts.probe_mixup import probe_mixup_pool


def randn(seed, *shape, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- mixup_batch, resample and the coefficients at their edges ------------------------------------
# Found by mutation testing (docs/mutation.md): the dtypes of the result, errors that name the
# argument, and draws without a generator.


def test_mixup_keeps_the_dtypes_of_inputs_and_targets():
    x = randn(0, 4, 3, dtype=torch.float32)
    y = torch.softmax(randn(1, 4, 2), -1)  # float64
    mx, my = mixup_batch(x, y, torch.full((4,), 0.75, dtype=torch.float64), torch.arange(4).flip(0))
    assert mx.dtype == torch.float32 and my.dtype == torch.float64
    mx, my = mixup_batch(x, y.float(), torch.full((4,), 0.75, dtype=torch.float64),
                         torch.arange(4).flip(0))
    assert my.dtype == torch.float32


def test_mixup_names_each_mismatched_shape():
    x, y = randn(0, 4, 3), torch.softmax(randn(1, 4, 2), -1)
    m, perm = torch.full((4,), 0.75, dtype=torch.float64), torch.arange(4)
    for args in ((x, y[:3], m, perm), (x, y, m[:3], perm), (x, y, m, perm[:3])):
        with pytest.raises(ValueError, match="mixup_batch"):
            mixup_batch(*args)


def test_resample_from_one_example_and_refuses_none():
    assert resample(5, 1, torch.Generator().manual_seed(0)).tolist() == [0] * 5
    with pytest.raises(ValueError, match="population"):
        resample(5, 0)


def test_coefficient_dtype_alpha_and_generator_free_draws():
    for kind in ("official", "beta", "beta_max"):
        assert mix_coefficients(8, torch.Generator().manual_seed(0), kind=kind,
                                dtype=torch.float32).dtype == torch.float32
        assert mix_coefficients(8, torch.Generator().manual_seed(0), kind=kind,
                                dtype=torch.float64).dtype == torch.float64
    for alpha in (0.0, -1.0):
        with pytest.raises(ValueError, match="alpha"):
            mix_coefficients(4, torch.Generator(), kind="beta", alpha=alpha)
    with pytest.raises(ValueError, match="kind"):
        mix_coefficients(4, torch.Generator(), kind="uniform")
    # without a generator: reproducible from the global seed, and a fresh stream on every call
    torch.manual_seed(0)
    draws = [mix_coefficients(3, None, kind="beta", dtype=torch.float64) for _ in range(200)]
    torch.manual_seed(0)
    assert torch.equal(mix_coefficients(3, None, kind="beta", dtype=torch.float64), draws[0])
    assert len({tuple(d.tolist()) for d in draws}) == 200


# --- The Gamma sampler, the generator's draws, the probe pool's threshold -------------------------
# Found by mutation testing (docs/mutation.md); see the module docstring.


def ks_distance_to_gamma(samples: torch.Tensor, alpha: float) -> float:
    """sup_x |F_n(x) - F(x)| against the Gamma(alpha, 1) CDF (the regularised incomplete gamma)."""
    x, _ = torch.sort(samples.double())
    n = x.numel()
    cdf = torch.special.gammainc(torch.full_like(x, alpha), x.clamp_min(0))
    upper = torch.arange(1, n + 1, dtype=torch.float64) / n - cdf
    lower = cdf - torch.arange(0, n, dtype=torch.float64) / n
    return float(torch.maximum(upper, lower).max())


@pytest.mark.parametrize("alpha", [0.3, 0.5, 1.0, 1.7, 4.0])
def test_gamma_draws_follow_the_gamma_distribution(alpha):
    n = 100_000
    samples = _gamma(alpha, (2, n // 2), torch.Generator().manual_seed(1234))
    assert samples.shape == (2, n // 2) and samples.dtype == torch.float64
    assert bool(torch.isfinite(samples).all()) and bool((samples > 0).all())
    # the 99.999% point of the KS statistic for n = 1e5 is about 0.0078; a true sampler with this
    # seed lands far below it, and the samplers mutation testing produced land far above it
    assert ks_distance_to_gamma(samples.reshape(-1), alpha) < 0.008
    assert abs(float(samples.mean()) - alpha) < 6 * (alpha / n) ** 0.5  # E = alpha, Var = alpha
    assert not torch.equal(samples, samples.float().double())  # drawn in float64, not float32


def test_beta_coefficients_have_full_float64_precision():
    m = mix_coefficients(1000, torch.Generator().manual_seed(0), kind="beta", alpha=0.7,
                         dtype=torch.float64)
    assert m.dtype == torch.float64
    assert not torch.equal(m, m.float().double())  # not float32 values cast up


@pytest.mark.parametrize("kind,alpha", [("official", 0.5), ("beta", 0.5), ("beta", 2.5),
                                        ("beta_max", 0.4), ("beta_max", 3.0)])
def test_draws_come_from_the_generator_only(kind, alpha):
    """The same generator seed gives the same coefficients whatever the global RNG did, and a draw
    leaves the global RNG alone (each part's draws are its own: docs/architecture.md)."""
    torch.manual_seed(1)
    first = mix_coefficients(64, torch.Generator().manual_seed(7), kind=kind, alpha=alpha,
                             dtype=torch.float64)
    torch.manual_seed(2)
    before = torch.random.get_rng_state()
    second = mix_coefficients(64, torch.Generator().manual_seed(7), kind=kind, alpha=alpha,
                              dtype=torch.float64)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(first, second)


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_every_coefficient_is_drawn(alpha):
    """No entry is left uninitialised (torch.empty is NaN-filled in deterministic mode)."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for n in (1, 2, 5, 33):
            m = mix_coefficients(n, torch.Generator().manual_seed(n), kind="beta", alpha=alpha,
                                 dtype=torch.float64)
            assert bool(torch.isfinite(m).all()) and bool(((m >= 0) & (m <= 1)).all())
    finally:
        torch.use_deterministic_algorithms(previous)


def test_pool_threshold_is_inclusive_and_keeps_every_class():
    """omega*_i >= T keeps onehot(y_i) (the paper's I(omega* < T) marks the rest unlabeled), and
    the one-hot rows have C columns even when the batch lacks the last class."""
    b, c = 4, 5
    gen = torch.Generator().manual_seed(0)
    weak = torch.randn(b, 2, generator=gen, dtype=torch.float64)
    strong = torch.randn(b, 2, generator=gen, dtype=torch.float64)
    probe_x = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    probe_y = torch.tensor([0, 1, 1])
    pseudo = torch.softmax(torch.randn(b, c, generator=gen, dtype=torch.float64), -1)
    y = torch.tensor([1, 0, 2, 1])  # no label 3 or 4 in this batch
    weights = torch.tensor([0.25, 0.5, 0.125, 0.125], dtype=torch.float64)
    _, targets = probe_mixup_pool(probe_x, probe_y, weak, strong, pseudo, y, weights=weights,
                                  threshold=0.25, generator=torch.Generator().manual_seed(0))
    assert targets.shape == (3 * b, c)
    expected = torch.stack([F.one_hot(y[0], c).double(), F.one_hot(y[1], c).double(),
                            pseudo[2], pseudo[3]])
    torch.testing.assert_close(targets[b:2 * b], expected, rtol=0, atol=0)
    torch.testing.assert_close(targets[2 * b:], expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="weights"):
        probe_mixup_pool(probe_x, probe_y, weak, strong, pseudo, y, threshold=0.25)
