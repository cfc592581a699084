"""Weak/strong augmentation (iegkit.augment): shapes, ranges, determinism, flip/crop/cutout laws."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("kornia")

from iegkit.augment import cutout, strong_augment, weak_augment  # noqa: E402

INVERT_ALWAYS = [("invert", 1.0, None)]
INVERT_NEVER = [("invert", 0.0, None)]


def _images(b=8, c=3, h=16, w=16, seed=0, lo=0.0, hi=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (lo + (hi - lo) * torch.rand(b, c, h, w, generator=g, dtype=torch.float64)).to(dtype)


def _shifted(x: torch.Tensor, dy: int, dx: int, fill: float) -> torch.Tensor:
    """out[..., i, j] = x[..., i + dy, j + dx], and fill where that falls outside."""
    h, w = x.shape[-2:]
    out = torch.full_like(x, fill)
    ys, yd = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h + min(-dy, 0))
    xs, xd = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w + min(-dx, 0))
    out[..., yd, xd] = x[..., ys, xs]
    return out


def _geometric_match(src: torch.Tensor, out: torch.Tensor, pad: int, fill: float) -> torch.Tensor:
    """(B,) bool: out[i] equals some shift (|dy|, |dx| <= pad) of src[i] or of its h-flip,
    ignoring pixels of out equal to ``fill`` (padding or cutout)."""
    keep = out != fill
    found = torch.zeros(src.shape[0], dtype=torch.bool)
    for base in (src, src.flip(-1)):
        for dy in range(-pad, pad + 1):
            for dx in range(-pad, pad + 1):
                cand = _shifted(base, dy, dx, fill)
                found |= ((cand == out) | ~keep).flatten(1).all(1)
    return found


# ----------------------------------------------------------------------------- shapes, dtypes, ranges


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("hw", [(16, 16), (12, 20)])
def test_shape_dtype_device_preserved(dtype, hw):
    x = _images(b=5, h=hw[0], w=hw[1], dtype=dtype)
    for fn in (weak_augment(), strong_augment(), strong_augment(policy=None)):
        y = fn(x, torch.Generator().manual_seed(0))
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
        assert not y.requires_grad


def test_empty_batch_and_input_untouched():
    x = _images(b=4)
    x0 = x.clone()
    strong_augment()(x)
    weak_augment()(x)
    assert torch.equal(x, x0)
    empty = torch.zeros(0, 3, 8, 8)
    assert strong_augment()(empty).shape == empty.shape
    assert weak_augment()(empty).shape == empty.shape


@pytest.mark.parametrize("value_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_strong_values_stay_in_range(value_range):
    lo, hi = value_range
    x = _images(b=64, lo=lo, hi=hi, seed=1)
    for per_image in (True, False):
        fn = strong_augment(value_range=value_range, per_image_policy=per_image)
        for seed in range(2):
            y = fn(x, torch.Generator().manual_seed(seed))
            assert float(y.min()) >= lo and float(y.max()) <= hi


def test_weak_values_are_input_values_or_fill():
    x = _images(b=16, lo=0.25, hi=1.0)
    y = weak_augment(value_range=(-1, 1))(x, torch.Generator().manual_seed(0))
    allowed = torch.cat([x.flatten(), torch.tensor([-1.0])])
    assert bool(torch.isin(y, allowed).all())
    assert bool((y == -1.0).any())  # default weak pad is black: value_range[0]


def test_default_fills_follow_value_range():
    x = torch.ones(32, 3, 16, 16)
    y = strong_augment(policy=None, value_range=(-1, 1))(x, torch.Generator().manual_seed(0))
    assert set(torch.unique(y).tolist()) == {0.0, 1.0}  # gray pad and gray cutout = 0 in [-1, 1]
    y = strong_augment(policy=None, fill=-0.5, pad_fill=0.25)(x, torch.Generator().manual_seed(0))
    assert set(torch.unique(y).tolist()) == {-0.5, 0.25, 1.0}


# ----------------------------------------------------------------------------- randomness


@pytest.mark.parametrize("make", [
    lambda: weak_augment(),
    lambda: strong_augment(),
    lambda: strong_augment(per_image_policy=False),
    lambda: strong_augment(policy=None),
])
def test_reproducible_with_generator_and_global_rng_untouched(make):
    fn = make()
    x = _images(b=16, seed=2)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = fn(x, torch.Generator().manual_seed(7))
    b = make()(x, torch.Generator().manual_seed(7))  # a fresh callable, same generator state
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)
    g = torch.Generator().manual_seed(7)
    first, second = fn(x, g), fn(x, g)  # the generator advances between calls
    assert torch.equal(first, a) and not torch.equal(first, second)
    assert not torch.equal(a, fn(x, torch.Generator().manual_seed(8)))


def test_without_generator_uses_global_rng():
    fn = strong_augment()
    x = _images(b=8)
    torch.manual_seed(5)
    state_before = torch.get_rng_state()
    a = fn(x)
    assert not torch.equal(torch.get_rng_state(), state_before)  # the global RNG advanced
    torch.manual_seed(5)
    assert torch.equal(a, fn(x))


def test_flip_happens_about_half_the_time():
    n = 4000
    x = _images(b=n, c=1, h=4, w=4, seed=3)
    y = weak_augment(pad=0, flip=True)(x, torch.Generator().manual_seed(0))
    same = (y == x).flatten(1).all(1)
    flipped = (y == x.flip(-1)).flatten(1).all(1)
    assert bool((same ^ flipped).all())  # each image is either untouched or mirrored
    frac = flipped.double().mean().item()
    assert abs(frac - 0.5) < 4 * (0.25 / n) ** 0.5
    assert torch.equal(weak_augment(pad=0, flip=False)(x), x)


def test_pad_crop_is_a_shift_within_pad_and_covers_every_offset():
    pad, n = 3, 1500
    x = _images(b=n, c=1, h=8, w=8, lo=0.1, seed=4)
    y = weak_augment(pad=pad, flip=False)(x, torch.Generator().manual_seed(1))
    seen = torch.zeros(n, dtype=torch.bool)
    offsets = set()
    for dy in range(-pad, pad + 1):
        for dx in range(-pad, pad + 1):
            hit = (_shifted(x, dy, dx, 0.0) == y).flatten(1).all(1)
            if bool(hit.any()):
                offsets.add((dy, dx))
            seen |= hit
    assert bool(seen.all())
    assert len(offsets) == (2 * pad + 1) ** 2  # offsets uniform on {0..2*pad}^2 (kornia)


# ----------------------------------------------------------------------------- cutout


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(1, 4),
    h=st.integers(1, 24),
    w=st.integers(1, 24),
    size=st.integers(1, 20),
    seed=st.integers(0, 2**31 - 1),
)
def test_cutout_is_one_clipped_square(b, h, w, size, seed):
    x = torch.ones(b, 2, h, w)
    y = cutout(x, size=size, fill=0.0, generator=torch.Generator().manual_seed(seed))
    assert y.shape == x.shape
    assert set(torch.unique(y).tolist()) <= {0.0, 1.0}
    for img in y:
        assert torch.equal(img[0], img[1])  # all channels filled alike
        mask = img[0] == 0
        rows = mask.any(1).nonzero().squeeze(1)
        cols = mask.any(0).nonzero().squeeze(1)
        assert rows.numel() > 0  # the centre lies in the image, so the square is never empty
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        # contiguous axis-aligned rectangle
        assert int(mask.sum()) == (r1 - r0) * (c1 - c0)
        assert bool(mask[r0:r1, c0:c1].all())
        assert (r1 - r0) * (c1 - c0) <= size * size
        for lo_, hi_, extent in ((r0, r1, h), (c0, c1, w)):
            side = hi_ - lo_
            assert side <= size
            if lo_ > 0 and hi_ < extent:
                assert side == size  # only the borders clip it
            assert side >= min(size - size // 2, extent)  # centre anywhere on the grid


def test_cutout_16_on_cifar_sized_images():
    x = torch.ones(2000, 1, 32, 32)
    y = cutout(x, 16, fill=0.0, generator=torch.Generator().manual_seed(0))
    area = (y == 0).flatten(1).sum(1)
    assert int(area.max()) == 256 and int(area.min()) >= 64
    # centre uniform over the grid: a clipped square is common (about 44% of images unclipped)
    frac_full = (area == 256).double().mean().item()
    assert abs(frac_full - (17 / 32) ** 2) < 0.05


def test_cutout_zero_size_and_fill_value():
    x = _images(b=3)
    assert torch.equal(cutout(x, 0), x)
    y = cutout(x, 4, fill=0.5, generator=torch.Generator().manual_seed(0))
    changed = y != x
    assert bool((y[changed] == 0.5).all())


# ----------------------------------------------------------------------------- AutoAugment


def test_strong_without_policy_has_no_autoaugment():
    pad = 2
    x = _images(b=32, h=12, w=12, lo=0.55, seed=5)  # values away from the gray fill 0.5
    y = strong_augment(policy=None, pad=pad, cutout=6)(x, torch.Generator().manual_seed(0))
    assert bool(_geometric_match(x, y, pad, 0.5).all())  # only shift, flip, pad and cutout
    y_aa = strong_augment(pad=pad, cutout=6)(x, torch.Generator().manual_seed(0))
    assert not bool(_geometric_match(x, y_aa, pad, 0.5).all())  # AA changed some images


def test_policy_is_drawn_per_image_or_per_batch():
    policy = [INVERT_ALWAYS, INVERT_NEVER]
    x = _images(b=64, seed=6)
    kw = dict(pad=0, cutout=0, flip=False)
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        y = strong_augment(policy, per_image_policy=True, **kw)(x, g)
        inverted = torch.isclose(y, 1 - x).flatten(1).all(1)
        kept = torch.equal(y[~inverted], x[~inverted])
        assert kept and 0.2 < inverted.double().mean().item() < 0.8
        y = strong_augment(policy, per_image_policy=False, **kw)(x, g)
        inverted = torch.isclose(y, 1 - x).flatten(1).all(1)
        assert bool(inverted.all()) or torch.equal(y, x)  # one sub-policy for the whole batch


def test_autoaugment_runs_in_unit_range_and_maps_back():
    x = _images(b=4, lo=-1.0, hi=1.0)
    fn = strong_augment([INVERT_ALWAYS], pad=0, cutout=0, flip=False, value_range=(-1, 1))
    # invert in [0, 1] space is u -> 1 - u, which is x -> -x in [-1, 1] space
    assert torch.allclose(fn(x), -x, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_and_determinism():
    x = _images(b=16).cuda()
    for fn in (weak_augment(), strong_augment()):
        a = fn(x, torch.Generator().manual_seed(3))
        b = fn(x, torch.Generator().manual_seed(3))
        assert a.device == x.device and torch.equal(a, b)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("bad, match", [
    ([[0.0]], "images must be a torch.Tensor"),
    (torch.zeros(3, 8, 8), "images must be a 4-D tensor"),
    (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "images must be a floating-point"),
])
def test_bad_images_raise(bad, match):
    for fn in (weak_augment(), strong_augment(), strong_augment(policy=None)):
        with pytest.raises(ValueError, match=match):
            fn(bad)
    with pytest.raises(ValueError, match=match):
        cutout(bad)


def test_autoaugment_needs_rgb():
    with pytest.raises(ValueError, match="images must have 3 channels"):
        strong_augment()(torch.rand(2, 1, 8, 8))
    assert strong_augment(policy=None)(torch.rand(2, 1, 8, 8)).shape == (2, 1, 8, 8)


@pytest.mark.parametrize("kwargs, match", [
    (dict(policy="cifar100"), "policy must be one of"),
    (dict(policy=[]), "policy must be one of"),
    (dict(pad=-1), "pad must be"),
    (dict(cutout=2.5), "cutout must be"),
    (dict(value_range=(1, 0)), "value_range"),
    (dict(value_range=3), "value_range"),
    (dict(fill=float("nan")), "fill"),
    (dict(pad_fill="gray"), "pad_fill"),
    (dict(per_image_policy="yes"), "per_image_policy"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        strong_augment(**kwargs)


def test_old_kornia_without_pillow_fails_early(monkeypatch):
    import sys

    import kornia

    monkeypatch.setattr(kornia, "__version__", "0.8.1")
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `import PIL` raise ImportError
    with pytest.raises(ImportError, match="pillow"):
        strong_augment(policy="imagenet")  # kornia's AutoAugment module
    strong_augment(policy=None)  # no AutoAugment, no pillow needed
    strong_augment()  # cifar10 runs iegkit's own ops, no kornia AutoAugment, no pillow needed


def test_bad_generator_raises():
    with pytest.raises(ValueError, match="generator"):
        weak_augment()(torch.rand(2, 3, 8, 8), generator=0)
    with pytest.raises(ValueError, match="flip"):
        weak_augment(flip=1)


# ----------------------------------------------------------------------------- AutoAugment magnitudes
# The official ops (google-research ieg/dataset_utils/augmentation_transforms.py, as in tensorflow/models
# research/autoaugment) map a level L (PARAMETER_MAX = 10) to: rotate int(3L) deg, shear 0.03L,
# translate int(L) px of 32, solarize threshold 256 - int(25.6L), posterize 4 - int(0.4L) bits,
# color/contrast/brightness/sharpness factor 0.18L + 0.1; geometric ops get a random sign.


def _one_op(name, level, **kw):
    return strong_augment([[(name, 1.0, level)]], pad=0, cutout=0, flip=False, **kw)


def _fit_slope(mask: torch.Tensor) -> float:
    """Least-squares slope dy/dx of the marked pixels of an (H, W) mask."""
    ys, xs = (v.double() for v in mask.nonzero(as_tuple=True))
    xc = xs - xs.mean()
    return float((xc * (ys - ys.mean())).sum() / (xc * xc).sum())


def test_cifar10_policy_is_kornias_list():
    from kornia.augmentation.auto.autoaugment.autoaugment import cifar10_policy

    from iegkit.augment import _CIFAR10_POLICY

    # same 25 sub-policies, ops, probabilities and levels: only the reading of the level changed
    assert [tuple(map(tuple, sp)) for sp in cifar10_policy] == [tuple(sp) for sp in _CIFAR10_POLICY]


def test_official_magnitude_table():
    from iegkit.augment import _aa_magnitude

    expected = {  # the official formulas, evaluated by hand at the levels of the CIFAR-10 policy
        ("rotate", 2): 6, ("shear_y", 7): 0.21, ("shear_y", 8): 0.24,
        ("translate_x", 8): 8, ("translate_x", 9): 9, ("translate_y", 3): 3, ("translate_y", 9): 9,
        ("solarize", 2): 205, ("solarize", 3): 180, ("solarize", 5): 128, ("solarize", 8): 52,
        ("posterize", 7): 2, ("color", 0): 0.1, ("sharpness", 1): 0.28, ("contrast", 6): 1.18,
        ("brightness", 7): 1.36, ("color", 9): 1.72,
    }
    for (name, level), value in expected.items():
        assert _aa_magnitude(name, level) == pytest.approx(value, abs=1e-12), (name, level)


@pytest.mark.parametrize("name, level, size, pixels", [
    ("translate_y", 9, 32, 9),  # kornia 0.9 bin 9: 12.8 to 15.5 px, always the same way
    ("translate_y", 3, 32, 3),
    ("translate_x", 8, 32, 8),
    ("translate_y", 8, 16, 4),  # other sizes: the same fraction of the side (level / 32)
])
def test_translate_shifts_official_pixels_both_ways_gray_fill(name, level, size, pixels):
    x = _images(b=64, h=size, w=size, lo=0.6, seed=7)  # values away from the gray fill
    y = _one_op(name, level)(x, torch.Generator().manual_seed(0))
    dy, dx = (pixels, 0) if name == "translate_y" else (0, pixels)
    # nearest-neighbour by an integer number of pixels: exact equality, exposed pixels gray (official)
    plus = (y == _shifted(x, dy, dx, 0.5)).flatten(1).all(1)
    minus = (y == _shifted(x, -dy, -dx, 0.5)).flatten(1).all(1)
    assert bool((plus ^ minus).all())
    assert 0.25 < plus.double().mean().item() < 0.75  # random sign per image (about 1/2)


@pytest.mark.parametrize("name, level, expected", [
    ("rotate", 2, 6.0),  # degrees; kornia 0.9 bin 2: 12 to 18 degrees, one way
    ("shear_y", 8, 0.24),  # shear coefficient; kornia 0.9 bin 8: 0.63 to 0.94, one way
    ("shear_y", 7, 0.21),
])
def test_rotate_and_shear_official_magnitude(name, level, expected):
    x = torch.zeros(32, 3, 32, 32)
    x[:, :, 16, 4:28] = 1.0  # a horizontal segment through the centre
    y = _one_op(name, level)(x, torch.Generator().manual_seed(0))
    slopes = torch.tensor([_fit_slope(img[0] == 1.0) for img in y])
    measured = torch.rad2deg(torch.atan(slopes)) if name == "rotate" else -slopes
    # Nearest-neighbour resampling moves each pixel of the 24-px segment by at most 0.5 px, which
    # biases the fitted slope slightly (measured: 5.91 deg for 6, 0.238 for 0.24). The tolerances
    # (0.5 deg, 0.01) are far below the gap to the next level (3 deg, 0.03).
    tol = 0.5 if name == "rotate" else 0.01
    assert bool(((measured.abs() - expected).abs() < tol).all())
    assert bool((measured > 0).any() and (measured < 0).any())  # random sign


@pytest.mark.parametrize("level, threshold", [(2, 205), (3, 180), (5, 128), (8, 52)])
def test_solarize_official_threshold(level, threshold):
    ramp = (torch.arange(256.0) / 255).view(1, 1, 16, 16).expand(2, 3, 16, 16).contiguous()
    levels = torch.arange(256).view(1, 1, 16, 16).expand_as(ramp)
    y = _one_op("solarize", level)(ramp)  # kornia 0.9 bin 2: a threshold of 0.2 to 0.3
    inverted = y != ramp
    # exact, no tolerance: the 8-bit level i is inverted (1 - x) iff i >= threshold, as PIL does
    assert torch.equal(inverted, levels >= threshold)
    assert torch.allclose(y[inverted], 1 - ramp[inverted], atol=1e-6, rtol=0)


def test_posterize_official_bits():
    ramp = (torch.arange(256.0) / 255).view(1, 1, 16, 16).expand(2, 3, 16, 16).contiguous()
    y = _one_op("posterize", 7)(ramp)  # official: 4 - int(2.8) = 2 bits; kornia 0.9: 7 bits
    assert set(torch.round(y * 255).unique().tolist()) == {0.0, 64.0, 128.0, 192.0}


@pytest.mark.parametrize("name", ["brightness", "contrast", "color", "sharpness"])
@pytest.mark.parametrize("level", [0, 3, 6, 9])
def test_enhance_official_factor(name, level):
    # An image where the op's "degenerate" image is known, so factor = (out - deg) / (in - deg)
    # at one probe pixel. No 8-bit rounding here, so float32 precision (1e-4) is the tolerance.
    x = torch.full((1, 3, 8, 8), 0.3)
    if name == "brightness":  # degenerate: black
        probe, deg = (0, 0, 0, 0), 0.0
    elif name == "contrast":  # degenerate: mean luma, here 0.4 (= 102/255, an 8-bit level)
        x[..., :4] = 0.5
        probe, deg = (0, 0, 0, 0), 0.4
    elif name == "color":  # degenerate: luma of (0.6, 0.4, 0.2)
        x = torch.tensor([0.6, 0.4, 0.2]).view(1, 3, 1, 1).repeat(1, 1, 8, 8)
        probe, deg = (0, 0, 0, 0), 0.299 * 0.6 + 0.587 * 0.4 + 0.114 * 0.2
    else:  # degenerate: 3x3 smoothing (centre weight 5/13) of an impulse 0.5 on 0.3
        x[..., 4, 4] = 0.5
        probe, deg = (0, 0, 4, 4), 0.3 + 0.2 * 5 / 13
    y = _one_op(name, level)(x)
    factor = (y[probe] - deg) / (x[probe] - deg)
    assert float(factor) == pytest.approx(0.18 * level + 0.1, abs=1e-4)  # kornia: a bin [v_L, v_L+1]


def test_official_ops_match_pil():
    """Each op of the CIFAR-10 policy, at each of its levels, against the official PIL code."""
    pytest.importorskip("PIL")
    import numpy as np
    from PIL import Image, ImageEnhance, ImageOps

    from iegkit.augment import _CIFAR10_POLICY, _aa_magnitude

    def official(img, name, m):  # augmentation_transforms.py, with the signed magnitude m
        affine = {"shear_x": (1, m, 0, 0, 1, 0), "shear_y": (1, 0, 0, m, 1, 0),
                  "translate_x": (1, 0, m, 0, 1, 0), "translate_y": (1, 0, 0, 0, 1, m)}
        if name == "rotate":
            return img.rotate(m)
        if name in affine:
            return img.transform((32, 32), Image.AFFINE, affine[name])
        rgb = {"invert": ImageOps.invert, "auto_contrast": ImageOps.autocontrast, "equalize": ImageOps.equalize,
               "solarize": lambda i: ImageOps.solarize(i, int(m)), "posterize": lambda i: ImageOps.posterize(i, int(m))}
        if name in rgb:
            return rgb[name](img.convert("RGB")).convert("RGBA")
        enhance = {"color": ImageEnhance.Color, "contrast": ImageEnhance.Contrast,
                   "brightness": ImageEnhance.Brightness, "sharpness": ImageEnhance.Sharpness}
        return enhance[name](img).enhance(m)

    def unwrap(img):  # official pil_unwrap, in [0, 1] space: pixels with alpha 0 become gray
        a = torch.from_numpy(np.asarray(img).astype(np.float32) / 255).permute(2, 0, 1)
        return torch.where(a[3:] == 0, torch.tensor(0.5), a[:3])

    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (12, 32, 32, 3), generator=g, dtype=torch.uint8)
    u8[6:] = u8[6:] // 4 + 60  # low-contrast images, so equalize and auto_contrast do something
    x = u8.permute(0, 3, 1, 2).float() / 255
    pairs = sorted({(name, level) for sub in _CIFAR10_POLICY for name, _, level in sub}, key=str)
    for name, level in pairs:
        y = _one_op(name, level)(x, torch.Generator().manual_seed(1))
        m = _aa_magnitude(name, level) if level is not None else 0.0
        signs = (1, -1) if name in ("rotate", "shear_y", "translate_x", "translate_y") else (1,)
        # PIL rounds to 8 bits after every op (blend truncates, luma and mean are rounded), iegkit
        # does not: the enhance ops and auto_contrast differ by < 1.5/255 (measured 1.35). The others
        # (geometric, invert, solarize, posterize, equalize) agree exactly; 1e-6 absorbs float error.
        tol = 1.5 / 255 if name in ("color", "contrast", "brightness", "sharpness", "auto_contrast") else 1e-6
        for i in range(len(x)):
            img = Image.fromarray(u8[i].numpy()).convert("RGBA")
            diffs = [float((y[i] - unwrap(official(img, name, s * m))).abs().max()) for s in signs]
            assert min(diffs) <= tol, (name, level, i, diffs)


def test_bad_custom_policy_raises():
    for policy, match in [
        ([[("blur", 0.5, 3)]], "unknown op"),
        ([[("rotate", 1.5, 3)]], "probability"),
        ([[("rotate", 0.5, 11)]], "level"),
        ([[("rotate", 0.5, None)]], "level"),
        ([[]], "non-empty"),
        ([[("rotate", 0.5)]], "name, probability, level"),
    ]:
        with pytest.raises(ValueError, match=match):
            strong_augment(policy)
