"""WRN-28-10 as in the AutoAugment repository's ``wrn.py``, the network of the official IEG code.

The spec (ieg-official-code.md section 6.5):

* a 3x3 stem convolution with 16 channels, then 3 stages of 4 pre-activation blocks with widths
  160 / 320 / 640 (``wrn_size`` 160 = 16 x 10) and strides 1, 2, 2;
* in the first block of stage 1 the BN-ReLU is applied before *both* the branch and the shortcut
  ("activate before residual"); every other block pre-activates only its branch;
* when the channel counts differ the shortcut is an average pool (kernel = stride) plus symmetric
  zero-padding of the channels: no 1x1 convolution;
* an extra residual from each stage's input is added at the end of the stage, and a final one from
  the stem output (average-pooled by 4, zero-padded 16 -> 640) after the last stage;
* then BN, ReLU, global average pool and a linear layer;
* init: conv weights normal with std sqrt(2 / (k^2 * C_out)), no conv biases; the linear layer's
  weights uniform in +-1/sqrt(num_classes) (the repo's ``ops.fc`` uses ``num_units_out``), bias 0.

Batch norm uses PyTorch's defaults (momentum 0.1, eps 1e-5), which is TF's decay 0.9 / eps 1e-5 of
the IEG code (section 6.4). 36.2M parameters at ``wrn_size=160`` (no 1x1 shortcut
convolutions); ``wrn_size=32`` is WRN-28-2 (1.5M).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["WRN28", "wrn28_10", "wrn28_2"]


def _shortcut(x: Tensor, in_filters: int, out_filters: int, stride: int) -> Tensor:
    """The repo's ``_res_add`` shortcut: avg-pool by ``stride`` and zero-pad the channels."""
    if in_filters == out_filters:
        return x
    if stride > 1:
        x = F.avg_pool2d(x, stride, stride)  # TF 'SAME' with kernel == stride: no padding needed
    pad = (out_filters - in_filters) // 2
    return F.pad(x, (0, 0, 0, 0, pad, out_filters - in_filters - pad))


class _Block(nn.Module):
    """``residual_block``: BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3, plus the (padded) shortcut."""

    def __init__(self, in_filters: int, out_filters: int, stride: int,
                 activate_before_residual: bool) -> None:
        super().__init__()
        self.in_filters, self.out_filters, self.stride = in_filters, out_filters, stride
        self.activate_before_residual = activate_before_residual
        self.bn1 = nn.BatchNorm2d(in_filters)
        self.conv1 = nn.Conv2d(in_filters, out_filters, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_filters)
        self.conv2 = nn.Conv2d(out_filters, out_filters, 3, stride=1, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.activate_before_residual:
            x = F.relu(self.bn1(x))
            orig = x
            branch = x
        else:
            orig = x
            branch = F.relu(self.bn1(x))
        branch = self.conv1(branch)
        branch = self.conv2(F.relu(self.bn2(branch)))
        return branch + _shortcut(orig, self.in_filters, self.out_filters, self.stride)


class WRN28(nn.Module):
    """The AutoAugment-repo wide ResNet with 28 layers (4 blocks per stage); see the module doc."""

    def __init__(self, num_classes: int = 10, wrn_size: int = 160, in_channels: int = 3,
                 blocks_per_stage: int = 4) -> None:
        super().__init__()
        self.filters = [min(wrn_size, 16), wrn_size, wrn_size * 2, wrn_size * 4]
        self.strides = [1, 2, 2]
        self.stem = nn.Conv2d(in_channels, self.filters[0], 3, padding=1, bias=False)
        stages = []
        for s in range(3):
            blocks = [_Block(self.filters[s], self.filters[s + 1], self.strides[s],
                             activate_before_residual=(s == 0))]
            blocks += [_Block(self.filters[s + 1], self.filters[s + 1], 1, False)
                       for _ in range(1, blocks_per_stage)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.bn = nn.BatchNorm2d(self.filters[3])
        self.fc = nn.Linear(self.filters[3], num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                k = module.kernel_size[0] * module.kernel_size[1]
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / (k * module.out_channels)))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        bound = 1.0 / math.sqrt(self.fc.out_features)
        nn.init.uniform_(self.fc.weight, -bound, bound)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        first = x  # residual from the beginning
        orig = x  # residual from the previous stage
        for s, stage in enumerate(self.stages):
            x = stage(x)
            x = x + _shortcut(orig, self.filters[s], self.filters[s + 1], self.strides[s])
            orig = x
        stride = self.strides[0] * self.strides[1] * self.strides[2]
        x = x + _shortcut(first, self.filters[0], self.filters[3], stride)
        x = F.relu(self.bn(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def wrn28_10(num_classes: int = 10) -> WRN28:
    """WRN-28-10 of the paper (wrn_size 160)."""
    return WRN28(num_classes, wrn_size=160)


def wrn28_2(num_classes: int = 10) -> WRN28:
    """WRN-28-2 (wrn_size 32), the paper's EG network in Table 6."""
    return WRN28(num_classes, wrn_size=32)
