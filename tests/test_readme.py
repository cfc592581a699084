"""The README's loop runs as printed, on grayscale and on RGB images of any size: the recipes'
default strong view follows the images it is given (``augment.FittedStrongAugment``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import iegkit
from iegkit.augment import FittedStrongAugment, strong_augment
from iegkit.models import SmallCNN

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_loop() -> str:
    """The python block of the README's "In your loop" section, verbatim."""
    section = README.read_text().split("## In your loop", 1)[1]
    return section.split("```python", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("channels,size", [(1, 8), (3, 16)], ids=["grayscale-8px", "rgb-16px"])
def test_the_readme_loop_runs_as_printed(channels, size):
    torch.manual_seed(0)
    model = SmallCNN(in_channels=channels, num_classes=4, width=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images, labels = torch.rand(32, channels, size, size), torch.randint(0, 4, (32,))
    namespace = {"iegkit": iegkit, "model": model, "optimizer": optimizer, "epochs": 2,
                 "noisy_loader": [(images[:16], labels[:16]), (images[16:], labels[16:])],
                 "trusted_images": torch.rand(8, channels, size, size),
                 "trusted_labels": torch.arange(8) % 4}
    exec(compile(readme_loop(), str(README), "exec"), namespace)
    assert namespace["step"] == 3 and torch.isfinite(namespace["out"].loss)
    namespace["pipeline"].close()


def test_the_default_strong_view_follows_the_images():
    fitted = FittedStrongAugment()
    rgb = torch.rand(4, 3, 32, 32)
    got = fitted(rgb, generator=torch.Generator().manual_seed(0))
    want = strong_augment("cifar10")(rgb, generator=torch.Generator().manual_seed(0))
    assert torch.equal(got, want)  # 32x32 RGB: exactly the CIFAR-10 strong view
    gray = fitted.view_for(1, 8)
    assert (gray.policy, gray.pad, gray.cutout, gray.flip) == (None, 1, 4, False)
    assert FittedStrongAugment(autoaugment=False).view_for(3, 32).policy is None
    assert fitted.view_for(1, 8) is gray  # built once per shape
    with pytest.raises(ValueError, match=r"images: expected a \(B, C, H, W\) tensor"):
        fitted(torch.rand(3, 8, 8))
