"""Users' own networks for the bring-your-own-model tests (``--model tests.byo_models:NAME``).

Small enough to prune, export and time in a second: a residual CNN for 8x8 grey digits,
and two that the study must refuse before creating anything.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyResNet(nn.Module):
    """Stem, one residual block, a strided conv, a classifier: two stages (8x8 and 4x4)."""

    def __init__(self, num_classes: int = 10, in_chs: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chs, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
        )
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.down(x).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def tiny_resnet(num_classes: int = 10) -> nn.Module:
    return TinyResNet(num_classes)


class _ThroughNumpy(TinyResNet):
    """Its features leave torch through numpy: Torch-Pruning's graph cannot see that the
    classifier reads the strided conv's channels, so a pruned copy no longer runs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.from_numpy(self.features(x).detach().numpy()))


def through_numpy(num_classes: int = 10) -> nn.Module:
    return _ThroughNumpy(num_classes)


class _CumulativeMax(TinyResNet):
    """A running maximum along the channels: prunable, but ONNX (opset 17) has no such operator."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cummax(self.features(x), dim=1).values)


def cumulative_max(num_classes: int = 10) -> nn.Module:
    return _CumulativeMax(num_classes)


class _FixedWidth(TinyResNet):
    """Its forward pass spells out a width (32) that pruning changes: a pruned copy no longer runs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).reshape(len(x), 32))


def fixed_width(num_classes: int = 10) -> nn.Module:
    return _FixedWidth(num_classes)
