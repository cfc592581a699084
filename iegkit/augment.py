"""Batched weak and strong image augmentation for IEG, on (B, C, H, W) float tensors.

``weak_augment()`` pads (black), random-crops and flips; ``strong_augment()`` runs AutoAugment
(per-image sub-policy), then pad-crop (gray), flip and a 16x16 gray cutout; ``policy=None`` skips
AutoAugment (IEG-7). The geometric and AutoAugment ops come from kornia (torch only, batched, any
device); :func:`cutout` is written here. Every callable is ``fn(images, generator=None)``, takes
``value_range`` (default ``(0, 1)``), and returns detached outputs of the input's shape and dtype.

docs/method.md, section "Augmentation (strong view)", has the details: the official code's views,
value ranges and fills, randomness with a generator, requirements (kornia, pillow), timings, and
every difference from the official code (policy set and draw, kornia's magnitudes).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["StrongAugment", "WeakAugment", "cutout", "strong_augment", "weak_augment"]

_POLICIES = ("cifar10", "imagenet", "svhn")


# --------------------------------------------------------------------------- helpers


def _kornia_augmentation() -> Any:
    try:
        import kornia.augmentation as K
    except ImportError as err:  # pragma: no cover - exercised only without kornia
        raise ImportError(
            "iegkit.augment.weak_augment/strong_augment need kornia: pip install 'kornia>=0.7.4'"
        ) from err
    return K


def _check_kornia_autoaugment() -> None:
    """kornia < 0.9 looks for PIL in its AutoAugment ops. Without pillow, it *prompts on stdin*
    to pip-install it, which hangs or fails in scripts and DataLoader workers. Fail early instead."""
    import kornia

    version = tuple(int(p) for p in re.findall(r"\d+", kornia.__version__)[:2])
    if version < (0, 9):
        try:
            import PIL  # noqa: F401
        except ImportError:
            raise ImportError(
                f"kornia {kornia.__version__} needs pillow for AutoAugment (without it kornia asks on stdin "
                "to install it): pip install pillow, or use kornia>=0.9"
            ) from None


def _check_images(images: Any, *, rgb: bool = False) -> None:
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a torch.Tensor of shape (B, C, H, W), got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(
            f"images must be a 4-D tensor (B, C, H, W), got {images.dim()}-D with shape {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise ValueError(f"images must be a floating-point tensor, got dtype {images.dtype}")
    if rgb and images.shape[1] != 3:
        raise ValueError(
            f"images must have 3 channels (RGB) for AutoAugment, got C={images.shape[1]} "
            f"(shape {tuple(images.shape)}); use policy=None for other channel counts"
        )


def _check_value_range(value_range: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"value_range must be a pair (lo, hi) of numbers, got {value_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"value_range must satisfy finite lo < hi, got {value_range!r}")
    return lo, hi


def _check_size(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value


def _check_fill(fill: Any, name: str = "fill") -> float | None:
    if fill is None:
        return None
    if isinstance(fill, bool) or not isinstance(fill, (int, float)) or not math.isfinite(fill):
        raise ValueError(f"{name} must be a finite number or None, got {fill!r}")
    return float(fill)


def _seeded(fn: Any, images: Tensor, generator: torch.Generator | None) -> Tensor:
    """Run ``fn(images)`` under a forked global RNG seeded from ``generator`` (see module doc)."""
    if generator is None:
        return fn(images)
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
    cuda = images.device.type == "cuda"
    index = (images.device.index if images.device.index is not None else torch.cuda.current_device()) if cuda else None
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        return fn(images)


def _check_in_range(images: Tensor, value_range: tuple[float, float]) -> None:
    """Refuse images outside ``value_range`` (beyond rounding): a mean/std-normalised batch would
    otherwise come back clamped to the range without a word."""
    lo, hi = value_range
    tolerance = 1e-3 * (hi - lo)
    low, high = float(images.min()), float(images.max())
    if low < lo - tolerance or high > hi + tolerance:
        raise ValueError(
            f"value_range: the images span [{low:.4g}, {high:.4g}] but the augmentation was built "
            f"for value_range={value_range}; pass the range your images are in (e.g. "
            "value_range=(-1, 1)), or augment before normalising"
        )


def _prepare(images: Tensor) -> tuple[Tensor, torch.dtype]:
    dtype = images.dtype
    if dtype in (torch.float16, torch.bfloat16):
        images = images.float()
    return images, dtype


# --------------------------------------------------------------------------- cutout


def cutout(
    images: Tensor,
    size: int = 16,
    fill: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Cutout (DeVries & Taylor 2017) as in the official IEG code, one square per image.

    Each image gets a ``size`` x ``size`` square of ``fill``. The centre ``(cy, cx)`` is drawn
    uniformly from the pixel grid ``{0..H-1} x {0..W-1}``. The square covers rows
    ``[cy - size//2, cy - size//2 + size)`` and the matching columns, clipped at the borders,
    so near an edge it is a smaller rectangle. For even ``size`` this matches the official
    ``create_cutout_mask``; for odd ``size`` the official code's square is ``size - 1`` wide.
    The fill covers every channel. kornia's ``RandomErasing`` keeps its box inside the image and
    draws a scale and an aspect ratio, so it cannot do this.

    Args:
        images: (B, C, H, W) float tensor. It is not modified.
        size: side of the square. 0 returns a copy of ``images``.
        fill: value written into the square, in the images' own value space. The official
            code uses 0 in [-1, 1] space (gray); that is 0.5 for [0, 1] images.
        generator: the centres are drawn from it (on its device), or from the global RNG if
            None. They are then moved to the images' device.

    Returns:
        A new tensor with the same shape, dtype and device as ``images``.
    """
    _check_images(images)
    _check_size("size", size)
    fill_value = _check_fill(fill)
    if fill_value is None:
        raise ValueError("fill must be a finite number, got None")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    b, _, h, w = images.shape
    if size == 0 or b == 0:
        return images.clone()
    gen_device = generator.device if generator is not None else torch.device("cpu")
    cy = torch.randint(h, (b,), generator=generator, device=gen_device).to(images.device)
    cx = torch.randint(w, (b,), generator=generator, device=gen_device).to(images.device)
    y0, x0 = cy - size // 2, cx - size // 2
    rows = torch.arange(h, device=images.device)
    cols = torch.arange(w, device=images.device)
    in_rows = (rows >= y0[:, None]) & (rows < (y0 + size)[:, None])  # (B, H)
    in_cols = (cols >= x0[:, None]) & (cols < (x0 + size)[:, None])  # (B, W)
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (B, 1, H, W)
    return images.masked_fill(mask, fill_value)


# --------------------------------------------------------------------------- weak view


class WeakAugment:
    """The weak view: constant pad and random crop back to (H, W), then a random horizontal flip.

    Build it with :func:`weak_augment`. Call it as ``fn(images, generator=None)``.
    """

    def __init__(
        self,
        pad: int = 4,
        flip: bool = True,
        *,
        fill: float | None = None,
        value_range: Sequence[float] = (0.0, 1.0),
    ) -> None:
        self.pad = _check_size("pad", pad)
        if not isinstance(flip, bool):
            raise ValueError(f"flip must be a bool, got {flip!r}")
        self.flip = flip
        self.value_range = _check_value_range(value_range)
        explicit = _check_fill(fill)
        self.fill = self.value_range[0] if explicit is None else explicit
        K = _kornia_augmentation()
        self._flip = K.RandomHorizontalFlip(p=0.5) if flip else None
        self._K = K
        self._crops: dict[tuple[int, int], Any] = {}

    def _crop(self, h: int, w: int) -> Any:
        if (h, w) not in self._crops:
            self._crops[(h, w)] = self._K.RandomCrop(
                (h, w), padding=self.pad, fill=self.fill, padding_mode="constant"
            )
        return self._crops[(h, w)]

    def _apply(self, x: Tensor) -> Tensor:
        if self.pad > 0:
            x = self._crop(x.shape[-2], x.shape[-1])(x)
        if self._flip is not None:
            x = self._flip(x)
        return x

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_images(images)
        if images.shape[0] == 0:
            return images.clone()
        _check_in_range(images, self.value_range)
        x, dtype = _prepare(images)
        with torch.no_grad():
            out = _seeded(self._apply, x.detach(), generator)
        return out.to(dtype)

    def __repr__(self) -> str:
        return (
            f"WeakAugment(pad={self.pad}, flip={self.flip}, fill={self.fill}, "
            f"value_range={self.value_range})"
        )


def weak_augment(
    pad: int = 4,
    flip: bool = True,
    *,
    fill: float | None = None,
    value_range: Sequence[float] = (0.0, 1.0),
) -> WeakAugment:
    """Weak view: pad by ``pad`` with a constant, random-crop back to (H, W), random h-flip (p = 1/2).

    Args:
        pad: padding on each side; 0 skips the pad-crop. The crop offsets are uniform on
            ``{0..2*pad}`` in each axis. The official CIFAR weak view pads 32 to 36, which is
            ``pad=2``. The default of 4 is the usual CIFAR setting.
        flip: whether to flip horizontally with probability 1/2.
        fill: value of the padding, in the images' space. None means black, ``value_range[0]``,
            which is the official TF weak view's zero padding in [0, 1] space.
        value_range: the range the images are in. Here it only sets the default fill.

    Returns:
        ``fn(images, generator=None) -> Tensor``. See the module docstring for how
        ``generator`` makes the result reproducible.
    """
    return WeakAugment(pad, flip, fill=fill, value_range=value_range)


# --------------------------------------------------------------------------- strong view


class StrongAugment:
    """The strong view: AutoAugment, then pad-crop, random h-flip and cutout.

    Build it with :func:`strong_augment`. Call it as ``fn(images, generator=None)``.
    """

    def __init__(
        self,
        policy: str | list | None = "cifar10",
        pad: int = 4,
        cutout: int = 16,
        *,
        flip: bool = True,
        fill: float | None = None,
        pad_fill: float | None = None,
        value_range: Sequence[float] = (0.0, 1.0),
        per_image_policy: bool = True,
    ) -> None:
        self.value_range = _check_value_range(value_range)
        lo, hi = self.value_range
        gray = (lo + hi) / 2
        explicit_fill = _check_fill(fill)
        explicit_pad_fill = _check_fill(pad_fill, "pad_fill")
        self.fill = gray if explicit_fill is None else explicit_fill
        self.pad_fill = gray if explicit_pad_fill is None else explicit_pad_fill
        self.cutout = _check_size("cutout", cutout)
        if not isinstance(per_image_policy, bool):
            raise ValueError(f"per_image_policy must be a bool, got {per_image_policy!r}")
        self.per_image_policy = per_image_policy
        self._geometric = WeakAugment(pad, flip, fill=self.pad_fill, value_range=self.value_range)
        self.pad, self.flip = self._geometric.pad, self._geometric.flip
        self.policy = policy
        self._aa: Any = None
        self._subpolicies: list[Any] = []
        if policy is None:
            return
        if isinstance(policy, str):
            if policy not in _POLICIES:
                raise ValueError(f"policy must be one of {_POLICIES}, a list of sub-policies, or None; got {policy!r}")
        elif not isinstance(policy, (list, tuple)) or len(policy) == 0:
            raise ValueError(f"policy must be one of {_POLICIES}, a non-empty list of sub-policies, or None; "
                             f"got {policy!r}")
        from kornia.augmentation.auto import AutoAugment

        _check_kornia_autoaugment()
        self._aa = AutoAugment(policy=list(policy) if isinstance(policy, tuple) else policy)
        self._subpolicies = list(self._aa.children())

    def _autoaugment(self, x: Tensor) -> Tensor:
        lo, hi = self.value_range
        unit = (x - lo) / (hi - lo) if (lo, hi) != (0.0, 1.0) else x
        if self.per_image_policy:
            idx = torch.randint(len(self._subpolicies), (unit.shape[0],))
            out = unit.clone()
            for k in torch.unique(idx).tolist():
                sel = (idx == k).nonzero().squeeze(1).to(unit.device)
                out[sel] = self._subpolicies[k](unit[sel])
        else:
            out = self._aa(unit)
        out = out.clamp(0.0, 1.0)
        return out * (hi - lo) + lo if (lo, hi) != (0.0, 1.0) else out

    def _apply(self, x: Tensor) -> Tensor:
        if self._aa is not None:
            x = self._autoaugment(x)
        x = self._geometric._apply(x)
        if self.cutout > 0:
            x = cutout(x, self.cutout, self.fill)
        return x

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_images(images, rgb=self._aa is not None)
        if images.shape[0] == 0:
            return images.clone()
        _check_in_range(images, self.value_range)
        x, dtype = _prepare(images)
        with torch.no_grad():
            out = _seeded(self._apply, x.detach(), generator)
        return out.to(dtype)

    def __repr__(self) -> str:
        policy = self.policy if self.policy is None or isinstance(self.policy, str) else "custom"
        return (
            f"StrongAugment(policy={policy!r}, pad={self.pad}, cutout={self.cutout}, flip={self.flip}, "
            f"fill={self.fill}, pad_fill={self.pad_fill}, value_range={self.value_range}, "
            f"per_image_policy={self.per_image_policy})"
        )


def strong_augment(
    policy: str | list | None = "cifar10",
    pad: int = 4,
    cutout: int = 16,
    *,
    flip: bool = True,
    fill: float | None = None,
    pad_fill: float | None = None,
    value_range: Sequence[float] = (0.0, 1.0),
    per_image_policy: bool = True,
) -> StrongAugment:
    """Strong view: AutoAugment ``policy``, then pad-crop, random h-flip and ``cutout`` x ``cutout``.

    Args:
        policy: ``"cifar10"`` (kornia's 25 CIFAR-10 sub-policies), ``"imagenet"``, ``"svhn"``,
            a list of sub-policies in kornia's format (``[[("invert", 0.1, None), ...], ...]``),
            or None for no AutoAugment, as in the paper's IEG-7 ablation. AutoAugment needs
            3-channel images.
        pad: padding on each side for the pad-crop; 0 skips it.
        cutout: side of the cutout square; 0 skips it. See :func:`cutout`.
        flip: whether to flip horizontally with probability 1/2.
        fill: value of the cutout square, in the images' space. None means gray,
            ``(lo + hi) / 2``, which is the official 0 in [-1, 1] space.
        pad_fill: value of the padding, in the images' space. None means gray, as the official
            strong-view pad.
        value_range: ``(lo, hi)`` the images are in, for example ``(0, 1)`` or ``(-1, 1)``. Images
            are mapped to [0, 1] for AutoAugment and the result is clamped to the range.
        per_image_policy: draw the AutoAugment sub-policy per image, as the official code does
            (True), or once per call, as kornia does (False, faster).

    Returns:
        ``fn(images, generator=None) -> Tensor``. See the module docstring for how
        ``generator`` makes the result reproducible and how this differs from the official code.
    """
    return StrongAugment(
        policy, pad, cutout, flip=flip, fill=fill, pad_fill=pad_fill,
        value_range=value_range, per_image_policy=per_image_policy,
    )
