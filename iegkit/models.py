"""Reference networks for the demo and benchmarks: a small BatchNorm CNN and the paper's ResNet-29."""

from __future__ import annotations

import torch
from einops import reduce
from torch import Tensor, nn

__all__ = ["SmallCNN", "PreActBottleneck", "ResNet29"]


class SmallCNN(nn.Module):
    """Conv-BN-ReLU blocks, global average pool, linear.

    ``blocks=3`` (default, the original model): widths ``width, 2 width, 2 width``, strides
    1, 2, 2. ``blocks=n >= 4``: the width doubles at every block after the first (``width, 2 width,
    4 width, ...``), strides 1, 2, 2, ...: the added parameters sit at low resolution, so they cost
    little compute (``width=26, blocks=4``: 26-52-104-208, 0.26M parameters, about 10M
    multiply-adds per 32x32 image, the benchmarks' ``--config cpu10k``; ``width=32``: 0.39M).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32,
                 blocks: int = 3) -> None:
        super().__init__()
        if int(blocks) != blocks or blocks < 3:
            raise ValueError(f"blocks: expected an integer >= 3, got {blocks!r}")
        if int(width) != width or width < 1:
            raise ValueError(f"width: expected an integer >= 1, got {width!r}")

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=False),
            )

        widths = [width, 2 * width, 2 * width] if blocks == 3 else [width * 2 ** i
                                                                     for i in range(blocks)]
        layers, cin = [], in_channels
        for i, cout in enumerate(widths):
            layers.append(block(cin, cout, 1 if i == 0 else 2))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(reduce(self.features(x), "b c h w -> b c", "mean"))


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck (He et al. 2016, ResNet-v2): BN-ReLU-conv1x1-BN-ReLU-conv3x3-..."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.shortcut = (
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
            if stride != 1 or cin != cout else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        out = self.conv3(torch.relu(self.bn3(out)))
        return out + shortcut


class ResNet29(nn.Module):
    """The pre-activation ResNet-29 of the IEG paper (Keras ResNet-v2, 3 stages x 3 bottlenecks,
    9 x 3 + 2 = 29 layers) for 32x32 inputs."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, base_width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, base_width, 3, padding=1, bias=False)
        layers = []
        cin = base_width
        for stage, width in enumerate((base_width, 2 * base_width, 4 * base_width)):
            for i in range(3):
                stride = 2 if (stage > 0 and i == 0) else 1
                layers.append(PreActBottleneck(cin, width, stride))
                cin = width * PreActBottleneck.expansion
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.blocks(self.stem(x))
        out = torch.relu(self.bn(out))
        return self.head(reduce(out, "b c h w -> b c", "mean"))
