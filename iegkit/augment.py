"""Batched weak and strong image augmentation for IEG, on (B, C, H, W) float tensors.

``weak_augment()`` pads (black), random-crops and flips; ``strong_augment()`` runs AutoAugment
(per-image sub-policy), then pad-crop (gray), flip and a 16x16 gray cutout; ``policy=None`` skips
AutoAugment (IEG-7). The pad-crop and flip come from kornia (torch only, batched, any device).
The CIFAR-10 AutoAugment ops are written here, batched, with the official code's magnitudes (PIL
``augmentation_transforms.py``), because kornia's AutoAugment reads the levels on other scales;
equalize and sharpness use kornia's ports of PIL. :func:`cutout` is written here. Every callable is
``fn(images, generator=None)``, takes ``value_range`` (default ``(0, 1)``), and returns detached
outputs of the input's shape and dtype.

docs/method.md, section "Augmentation (strong view)", has the details: the official code's views,
value ranges and fills, randomness with a generator, requirements (kornia, pillow), timings, the
table of AutoAugment magnitudes (official, kornia, iegkit), and every remaining difference from the
official code (policy set, 8-bit rounding).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["FittedStrongAugment", "StrongAugment", "WeakAugment", "cutout", "strong_augment",
           "weak_augment"]

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


# --------------------------------------------------------------------------- AutoAugment, official magnitudes
#
# The official IEG code (google-research ieg/dataset_utils/augmentation_transforms.py, a copy of
# tensorflow/models research/autoaugment/augmentation_transforms.py) runs each op through PIL on a
# 32x32 RGBA image. A level L in 0..PARAMETER_MAX (10) maps to one fixed magnitude, with a random
# sign for the geometric ops. kornia's AutoAugment reads L as a bin of its own signed scales instead
# (docs/method.md, "Augmentation (strong view)", has the table), so the ops are written here.

_PARAMETER_MAX = 10  # official augmentation_transforms.PARAMETER_MAX
_REFERENCE_SIZE = 32  # official IMAGE_SIZE: a translation level is a number of pixels of a 32x32 image
_AA_FILL = 0.5  # official pil_unwrap: pixels a geometric op exposed (alpha 0) become 0 in [-1, 1] (gray)

# The 25 sub-policies of the AutoAugment paper's CIFAR-10 policy, as kornia lists them
# (kornia.augmentation.auto.autoaugment.cifar10_policy); ops without a magnitude have level None.
_CIFAR10_POLICY: tuple[tuple[tuple[str, float, int | None], ...], ...] = (
    (("invert", 0.1, None), ("contrast", 0.2, 6)),
    (("rotate", 0.7, 2), ("translate_x", 0.3, 9)),
    (("sharpness", 0.8, 1), ("sharpness", 0.9, 3)),
    (("shear_y", 0.5, 8), ("translate_y", 0.7, 9)),
    (("auto_contrast", 0.5, None), ("equalize", 0.9, None)),
    (("shear_y", 0.2, 7), ("posterize", 0.3, 7)),
    (("color", 0.4, 3), ("brightness", 0.6, 7)),
    (("sharpness", 0.3, 9), ("brightness", 0.7, 9)),
    (("equalize", 0.6, None), ("equalize", 0.5, None)),
    (("contrast", 0.6, 7), ("sharpness", 0.6, 5)),
    (("color", 0.7, 7), ("translate_x", 0.5, 8)),
    (("equalize", 0.3, None), ("auto_contrast", 0.4, None)),
    (("translate_y", 0.4, 3), ("sharpness", 0.2, 6)),
    (("brightness", 0.9, 6), ("color", 0.2, 8)),
    (("solarize", 0.5, 2), ("invert", 0.0, None)),
    (("equalize", 0.2, None), ("auto_contrast", 0.6, None)),
    (("equalize", 0.2, None), ("equalize", 0.6, None)),
    (("color", 0.9, 9), ("equalize", 0.6, None)),
    (("auto_contrast", 0.8, None), ("solarize", 0.2, 8)),
    (("brightness", 0.1, 3), ("color", 0.7, 0)),
    (("solarize", 0.4, 5), ("auto_contrast", 0.9, None)),
    (("translate_y", 0.9, 9), ("translate_y", 0.7, 9)),
    (("auto_contrast", 0.9, None), ("solarize", 0.8, 3)),
    (("equalize", 0.8, None), ("invert", 0.1, None)),
    (("translate_y", 0.7, 9), ("auto_contrast", 0.9, None)),
)


def _int_parameter(level: float, maxval: float) -> int:
    """Official ``int_parameter``: ``int(level * maxval / PARAMETER_MAX)``."""
    return int(level * maxval / _PARAMETER_MAX)


def _float_parameter(level: float, maxval: float) -> float:
    """Official ``float_parameter``: ``level * maxval / PARAMETER_MAX``."""
    return float(level) * maxval / _PARAMETER_MAX


def _enhance_factor(level: float) -> float:
    """Official ``_enhancer_impl``: ``level / 10 * 1.8 + 0.1`` (no random sign)."""
    return _float_parameter(level, 1.8) + 0.1


# Each op works on (n, 4, H, W): RGB in [0, 1] plus an alpha plane (1 = image, 0 = exposed by a
# geometric op), with one signed magnitude per image in ``m`` (float64, on the images' device).


def _pil_affine(x: Tensor, coeffs: Tensor) -> Tensor:
    """PIL ``Image.transform(AFFINE, (a, b, c, d, e, f), NEAREST)``, batched: the output pixel
    (i, j) reads input pixel ``(floor(d*(j+.5) + e*(i+.5) + f), floor(a*(j+.5) + b*(i+.5) + c))``;
    reads outside the image give 0 in every plane (alpha too). ``coeffs`` is (n, 6)."""
    n, c, h, w = x.shape
    ys = torch.arange(h, device=x.device, dtype=torch.float64).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=x.device, dtype=torch.float64).view(1, 1, w) + 0.5
    a, b, cc, d, e, f = (v.view(n, 1, 1) for v in coeffs.unbind(1))
    sx = torch.floor(a * xs + b * ys + cc)
    sy = torch.floor(d * xs + e * ys + f)
    valid = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    index = (sy.clamp(0, h - 1) * w + sx.clamp(0, w - 1)).long().view(n, 1, h * w).expand(n, c, h * w)
    out = x.flatten(2).gather(2, index).view(n, c, h, w)
    return out * valid.view(n, 1, h, w).to(x.dtype)


def _affine_coeffs(m: Tensor, which: str, h: int, w: int) -> Tensor:
    one, zero = torch.ones_like(m), torch.zeros_like(m)
    if which == "translate_x":  # official (1, 0, level, 0, 1, 0), level in pixels of a 32-px image
        rows = (one, zero, m * (w / _REFERENCE_SIZE), zero, one, zero)
    elif which == "translate_y":
        rows = (one, zero, zero, zero, one, m * (h / _REFERENCE_SIZE))
    elif which == "shear_x":  # official (1, level, 0, 0, 1, 0): shears about the top-left corner
        rows = (one, m, zero, zero, one, zero)
    elif which == "shear_y":
        rows = (one, zero, zero, m, one, zero)
    else:  # rotate: PIL Image.rotate(degrees) about (w/2, h/2), counter-clockwise
        rad = -torch.deg2rad(m)
        cos, sin = torch.cos(rad), torch.sin(rad)
        cx, cy = w / 2.0, h / 2.0
        rows = (cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy)
    return torch.stack(rows, 1)


def _geometric(which: str) -> Any:
    def op(x: Tensor, m: Tensor) -> Tensor:
        return _pil_affine(x, _affine_coeffs(m, which, x.shape[-2], x.shape[-1]))
    return op


def _rgb_op(fn: Any) -> Any:
    """An op that PIL runs on ``convert('RGB')`` and converts back: it sees exposed pixels as
    black, and its output is fully opaque (alpha 1)."""
    def op(x: Tensor, m: Tensor) -> Tensor:
        rgb = fn(x[:, :3], m.to(x.dtype).view(-1, 1, 1, 1))
        return torch.cat([rgb, torch.ones_like(x[:, 3:])], 1)
    return op


def _enhance_op(degenerate: Any) -> Any:
    """PIL ``ImageEnhance``: ``blend(degenerate, image, factor)``, clipped; alpha is kept."""
    def op(x: Tensor, m: Tensor) -> Tensor:
        rgb = x[:, :3]
        factor = m.to(x.dtype).view(-1, 1, 1, 1)
        base = degenerate(rgb)
        return torch.cat([(base + factor * (rgb - base)).clamp(0.0, 1.0), x[:, 3:]], 1)
    return op


def _gray(rgb: Tensor) -> Tensor:
    """PIL ``convert('L')``: ITU-R 601-2 luma."""
    return (0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3]).expand_as(rgb)


def _contrast_degenerate(rgb: Tensor) -> Tensor:
    """PIL ``ImageEnhance.Contrast``: the mean luma, rounded to an 8-bit level."""
    mean = _gray(rgb)[:, :1].mean((-2, -1), keepdim=True)
    return (torch.floor(mean * 255 + 0.5) / 255).expand_as(rgb)


def _sharpness(x: Tensor, m: Tensor) -> Tensor:
    """PIL ``ImageEnhance.Sharpness`` (kornia's port: 3x3 SMOOTH kernel, border kept); alpha kept."""
    import kornia.enhance

    if min(x.shape[-2:]) < 3:
        return x
    return torch.cat([kornia.enhance.sharpness(x[:, :3], m.to(x.dtype)), x[:, 3:]], 1)


def _auto_contrast(rgb: Tensor, _: Tensor) -> Tensor:
    """PIL ``ImageOps.autocontrast``: per channel, stretch [min, max] to [0, 1]; flat channels kept."""
    lo = rgb.amin((-2, -1), keepdim=True)
    hi = rgb.amax((-2, -1), keepdim=True)
    scale = torch.where(hi > lo, 1.0 / (hi - lo).clamp_min(1e-12), torch.ones_like(hi))
    return torch.where(hi > lo, (rgb - lo) * scale, rgb).clamp(0.0, 1.0)


def _equalize(rgb: Tensor, _: Tensor) -> Tensor:
    """PIL ``ImageOps.equalize`` (kornia's port, on 8-bit levels)."""
    import kornia.enhance

    return kornia.enhance.equalize(rgb.clamp(0.0, 1.0))


def _solarize(rgb: Tensor, threshold: Tensor) -> Tensor:
    """PIL ``ImageOps.solarize``: invert the 8-bit levels ``>= threshold``, i.e. ``x >= threshold/255``."""
    return torch.where(rgb * 255 >= threshold, 1.0 - rgb, rgb)


def _posterize(rgb: Tensor, bits: Tensor) -> Tensor:
    """PIL ``ImageOps.posterize``: keep the top ``bits`` of the (truncated) 8-bit level."""
    step = torch.pow(2.0, 8 - bits)
    levels = torch.floor((rgb * 255).clamp(0, 255))
    return torch.floor(levels / step) * step / 255


# name -> (op, level -> unsigned official magnitude or None, random sign)
_AA_OPS: dict[str, tuple[Any, Any, bool]] = {
    "rotate": (_geometric("rotate"), lambda lv: float(_int_parameter(lv, 30)), True),  # degrees
    "shear_x": (_geometric("shear_x"), lambda lv: _float_parameter(lv, 0.3), True),
    "shear_y": (_geometric("shear_y"), lambda lv: _float_parameter(lv, 0.3), True),
    "translate_x": (_geometric("translate_x"), lambda lv: float(_int_parameter(lv, 10)), True),  # px of 32
    "translate_y": (_geometric("translate_y"), lambda lv: float(_int_parameter(lv, 10)), True),
    "invert": (_rgb_op(lambda rgb, _: 1.0 - rgb), None, False),
    "auto_contrast": (_rgb_op(_auto_contrast), None, False),
    "equalize": (_rgb_op(_equalize), None, False),
    "solarize": (_rgb_op(_solarize), lambda lv: float(256 - _int_parameter(lv, 256)), False),  # 8-bit
    "posterize": (_rgb_op(_posterize), lambda lv: float(4 - _int_parameter(lv, 4)), False),  # bits
    "color": (_enhance_op(_gray), _enhance_factor, False),
    "contrast": (_enhance_op(_contrast_degenerate), _enhance_factor, False),
    "brightness": (_enhance_op(torch.zeros_like), _enhance_factor, False),
    "sharpness": (_sharpness, _enhance_factor, False),
}
_AA_NAMES = tuple(_AA_OPS)


def _aa_magnitude(name: str, level: float) -> float | None:
    """The official (unsigned) magnitude of op ``name`` at ``level``: degrees, shear coefficient,
    pixels of a 32x32 image, 8-bit solarize threshold, posterize bits or enhance factor."""
    to_magnitude = _AA_OPS[name][1]
    return None if to_magnitude is None else to_magnitude(level)


class _OfficialAutoAugment:
    """AutoAugment sub-policies ``(name, probability, level)`` run with the official PIL magnitudes.

    Each image gets a sub-policy index (one for the whole batch if ``per_image`` is False); each op
    of it is applied with its probability, drawn per image, in order. Images that run the same op
    are processed together. Randomness comes from the global torch RNG (CPU).
    """

    def __init__(self, policy: Sequence[Sequence[Sequence[Any]]]) -> None:
        rows = []
        for k, sub in enumerate(policy):
            if isinstance(sub, (str, bytes)) or not isinstance(sub, Sequence) or len(sub) == 0:
                raise ValueError(f"policy: sub-policy {k} must be a non-empty list of (name, probability, level), "
                                 f"got {sub!r}")
            row = []
            for entry in sub:
                if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or len(entry) != 3:
                    raise ValueError(f"policy: sub-policy {k}: each op must be (name, probability, level), "
                                     f"got {entry!r}")
                name, prob, level = entry
                if name not in _AA_OPS:
                    raise ValueError(f"policy: sub-policy {k}: unknown op {name!r}; known ops: {_AA_NAMES}")
                if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0 <= prob <= 1:
                    raise ValueError(f"policy: sub-policy {k}: probability of {name!r} must be in [0, 1], "
                                     f"got {prob!r}")
                magnitude = 0.0
                if _AA_OPS[name][1] is not None:
                    if isinstance(level, bool) or not isinstance(level, (int, float)) or not (
                        0 <= level <= _PARAMETER_MAX
                    ):
                        raise ValueError(f"policy: sub-policy {k}: level of {name!r} must be a number in "
                                         f"[0, {_PARAMETER_MAX}], got {level!r}")
                    magnitude = _aa_magnitude(name, level)
                row.append((_AA_NAMES.index(name), float(prob), magnitude))
            rows.append(row)
        slots = max(len(r) for r in rows)
        pad = (-1, 0.0, 0.0)  # no op, never applied
        rows = [r + [pad] * (slots - len(r)) for r in rows]
        self.codes = torch.tensor([[c for c, _, _ in r] for r in rows], dtype=torch.long)
        self.probs = torch.tensor([[p for _, p, _ in r] for r in rows], dtype=torch.float64)
        self.magnitudes = torch.tensor([[m for _, _, m in r] for r in rows], dtype=torch.float64)
        self.symmetric = torch.tensor([_AA_OPS[n][2] for n in _AA_NAMES])

    def __len__(self) -> int:
        return self.codes.shape[0]

    def __call__(self, x: Tensor, per_image: bool = True) -> Tensor:
        """``x``: (B, 3, H, W) in [0, 1]. Returns the augmented batch, exposed pixels gray."""
        b = x.shape[0]
        idx = torch.randint(len(self), (b,) if per_image else (1,)).expand(b)
        out = torch.cat([x, torch.ones_like(x[:, :1])], 1)  # RGB + alpha
        for slot in range(self.codes.shape[1]):
            codes = self.codes[idx, slot]
            applied = torch.rand(b, dtype=torch.float64) < self.probs[idx, slot]
            negate = torch.rand(b, dtype=torch.float64) > 0.5  # official: random.random() > 0.5
            magnitudes = self.magnitudes[idx, slot]
            magnitudes = torch.where(negate & self.symmetric[codes.clamp_min(0)], -magnitudes, magnitudes)
            for code in torch.unique(codes[applied]).tolist():
                sel = (applied & (codes == code)).nonzero().squeeze(1)
                m = magnitudes[sel].to(x.device)
                sel = sel.to(x.device)
                out[sel] = _AA_OPS[_AA_NAMES[code]][0](out[sel], m)
        return torch.where(out[:, 3:] == 0, torch.full_like(x, _AA_FILL), out[:, :3])


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
        self._official: _OfficialAutoAugment | None = None  # cifar10 and custom lists
        self._aa: Any = None  # kornia's AutoAugment: "imagenet", "svhn"
        self._subpolicies: list[Any] = []
        if policy is None:
            return
        if isinstance(policy, str):
            if policy not in _POLICIES:
                raise ValueError(f"policy must be one of {_POLICIES}, a list of sub-policies, or None; got {policy!r}")
        elif not isinstance(policy, (list, tuple)) or len(policy) == 0:
            raise ValueError(f"policy must be one of {_POLICIES}, a non-empty list of sub-policies, or None; "
                             f"got {policy!r}")
        if policy == "cifar10" or not isinstance(policy, str):
            self._official = _OfficialAutoAugment(_CIFAR10_POLICY if policy == "cifar10" else policy)
            return
        from kornia.augmentation.auto import AutoAugment

        _check_kornia_autoaugment()
        self._aa = AutoAugment(policy=policy)
        self._subpolicies = list(self._aa.children())

    def _autoaugment(self, x: Tensor) -> Tensor:
        lo, hi = self.value_range
        unit = (x - lo) / (hi - lo) if (lo, hi) != (0.0, 1.0) else x
        if self._official is not None:
            out = self._official(unit.clamp(0.0, 1.0), self.per_image_policy)
        elif self.per_image_policy:
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
        if self._aa is not None or self._official is not None:
            x = self._autoaugment(x)
        x = self._geometric._apply(x)
        if self.cutout > 0:
            x = cutout(x, self.cutout, self.fill)
        return x

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_images(images, rgb=self._aa is not None or self._official is not None)
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


class FittedStrongAugment:
    """The recipes' default strong view: :class:`StrongAugment` with sizes and policy that follow
    the images it is given, so one default serves grayscale and RGB, 8 or 224 pixels.

    For images of C channels and S pixels: AutoAugment's CIFAR-10 policy only for RGB (it needs
    three channels; ``autoaugment=False`` never), a flip only for RGB (grayscale datasets such as
    digits are not mirror-symmetric), a pad-crop of ``max(1, S // 8)`` and a cutout of
    ``max(1, S // 2)``; for 32x32 RGB that is exactly ``strong_augment("cifar10")``. One view is
    built per (C, S) and reused.
    """

    def __init__(self, *, autoaugment: bool = True, value_range: Sequence[float] = (0.0, 1.0),
                 per_image_policy: bool = True) -> None:
        self.autoaugment = bool(autoaugment)
        self.value_range = _check_value_range(value_range)
        self.per_image_policy = per_image_policy
        self._views: dict[tuple[int, int], StrongAugment] = {}

    def view_for(self, channels: int, size: int) -> StrongAugment:
        """The strong view this default uses for images of ``channels`` x ``size`` x ``size``."""
        key = (channels, size)
        if key not in self._views:
            rgb = channels == 3
            self._views[key] = StrongAugment(
                "cifar10" if rgb and self.autoaugment else None, pad=max(1, size // 8),
                cutout=max(1, size // 2), flip=rgb, value_range=self.value_range,
                per_image_policy=self.per_image_policy)
        return self._views[key]

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if not isinstance(images, Tensor) or images.dim() != 4:
            raise ValueError(f"images: expected a (B, C, H, W) tensor, got "
                             f"{getattr(images, 'shape', type(images))}")
        return self.view_for(images.shape[1], images.shape[-1])(images, generator=generator)

    def __repr__(self) -> str:
        return (f"FittedStrongAugment(autoaugment={self.autoaugment}, "
                f"value_range={self.value_range}, per_image_policy={self.per_image_policy})")


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
        policy: ``"cifar10"`` (the AutoAugment paper's 25 CIFAR-10 sub-policies, as kornia lists
            them), a list of sub-policies ``[[(name, probability, level), ...], ...]`` with kornia's
            op names (``"invert"``, ``"translate_y"``, ...), or None for no AutoAugment, as in the
            paper's IEG-7 ablation. ``"cifar10"`` and lists run iegkit's ops with the official
            magnitudes: a level in [0, 10] means what it means in the official PIL code (e.g.
            ``("translate_y", p, 9)`` shifts by +/-9 px of 32, ``("solarize", p, 2)`` inverts
            levels >= 205/255), and pixels that a geometric op exposes are gray. ``"imagenet"``
            and ``"svhn"`` are kornia's ``AutoAugment`` as is (kornia's magnitude bins, black
            fill). AutoAugment needs 3-channel images.
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
            (True), or once per call, as kornia does (False, a little faster). Each op's
            probability and sign are drawn per image either way.

    Returns:
        ``fn(images, generator=None) -> Tensor``. See the module docstring for how
        ``generator`` makes the result reproducible and how this differs from the official code.
    """
    return StrongAugment(
        policy, pad, cutout, flip=flip, fill=fill, pad_fill=pad_fill,
        value_range=value_range, per_image_policy=per_image_policy,
    )
