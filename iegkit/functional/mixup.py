"""MixUp with the probe batch (IEG eq. 6; the official ``MixMode('xxy.yxy')``)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["mix_coefficients", "mixup_batch", "resample"]


def mix_coefficients(n: int, generator: torch.Generator | None = None, *, kind: str = "official",
                     alpha: float = 0.5, dtype=torch.float32, device=None) -> Tensor:
    """Per-sample mixing factors m, shape (n,).

    kind="official": m = 1 - U^2/2 with U ~ U(0, 1), so m in [0.5, 1] and the anchor dominates
    (1 - m = Beta(0.5, 1)/2; the official code; docs/method.md, spec §4.2).
    kind="beta": m ~ Beta(alpha, alpha) as the paper writes (alpha = 0.5); the anchor can lose.
    kind="beta_max": max(b, 1 - b) with b ~ Beta(alpha, alpha), MixMatch's variant.
    """
    if kind == "official":
        u = torch.rand(n, generator=generator, dtype=dtype, device=device)
        return 1.0 - u.square() / 2.0
    if kind in ("beta", "beta_max"):
        if alpha <= 0:
            raise ValueError(f"alpha: expected > 0, got {alpha}")
        # Beta(a, a) = X / (X + Y) with X, Y ~ Gamma(a): drawn from the generator for reproducibility
        if generator is None:
            generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
        gamma = _gamma(alpha, (2, n), generator)
        b = (gamma[0] / (gamma[0] + gamma[1])).to(dtype=dtype, device=device)
        return torch.maximum(b, 1.0 - b) if kind == "beta_max" else b
    raise ValueError(f"kind: expected 'official', 'beta' or 'beta_max', got {kind!r}")


def _gamma(alpha: float, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    # Marsaglia-Tsang with the generator (torch's Gamma sampler takes no generator); alpha < 1 via
    # Gamma(a) = Gamma(a + 1) * U^(1/a).
    boost = alpha < 1.0
    a = alpha + 1.0 if boost else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / (9.0 * d) ** 0.5
    n = int(torch.tensor(shape).prod())
    out = torch.empty(n, dtype=torch.float64)
    filled = 0
    while filled < n:
        m = 2 * (n - filled) + 8
        x = torch.randn(m, generator=generator, dtype=torch.float64)
        u = torch.rand(m, generator=generator, dtype=torch.float64)
        v = (1.0 + c * x) ** 3
        ok = (v > 0) & (torch.log(u.clamp_min(1e-300)) < 0.5 * x * x + d - d * v
                        + d * torch.log(v.clamp_min(1e-300)))
        accepted = (d * v)[ok][: n - filled]
        out[filled:filled + accepted.numel()] = accepted
        filled += accepted.numel()
    if boost:
        out = out * torch.rand(n, generator=generator, dtype=torch.float64) ** (1.0 / alpha)
    return out.reshape(shape)


def resample(n: int, population: int, generator: torch.Generator | None = None,
             device=None) -> Tensor:
    """n indices drawn uniformly with replacement from range(population) (official probe pool)."""
    if population < 1:
        raise ValueError("population: expected at least one example to resample from")
    return torch.randint(0, population, (n,), generator=generator, device=device)


def mixup_batch(inputs: Tensor, targets: Tensor, coefficients: Tensor,
                permutation: Tensor) -> tuple[Tensor, Tensor]:
    """x~ = m x + (1 - m) x[perm], y~ = m y + (1 - m) y[perm], with one m per sample.

    Shapes: inputs (N, ...), targets (N, C) distributions, coefficients (N,), permutation (N,).
    Mixed targets stay distributions (convex combinations).
    """
    n = inputs.shape[0]
    if targets.shape[0] != n or coefficients.shape != (n,) or permutation.shape != (n,):
        raise ValueError(
            f"mixup_batch: expected targets ({n}, C), coefficients ({n},), permutation ({n},); "
            f"got {tuple(targets.shape)}, {tuple(coefficients.shape)}, {tuple(permutation.shape)}"
        )
    m_x = coefficients.to(inputs.dtype).reshape(n, *([1] * (inputs.dim() - 1)))
    m_y = coefficients.to(targets.dtype)[:, None]
    return (m_x * inputs + (1 - m_x) * inputs[permutation],
            m_y * targets + (1 - m_y) * targets[permutation])
