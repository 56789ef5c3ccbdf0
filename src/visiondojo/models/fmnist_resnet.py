"""FMNIST-ResNet: a ~121k-parameter residual CNN for 28x28 grayscale images that trains fast on a CPU."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class ResidualBlock(nn.Module):
    """Two conv3x3 + BN with an identity skip."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = conv_bn(channels, channels)
        self.conv2 = conv_bn(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.conv1(x))
        return torch.relu(x + self.conv2(out))


class FMNISTResNet(nn.Module):
    """Stem 1->16 at 28x28, stride-2 stages 16->32 (14x14) and 32->64 (7x7), each with a residual block."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16):
        super().__init__()
        widths = (width, 2 * width, 4 * width)
        self.features = nn.Sequential(
            conv_bn(in_channels, widths[0]), nn.ReLU(inplace=True), ResidualBlock(widths[0]),
            conv_bn(widths[0], widths[1], stride=2), nn.ReLU(inplace=True), ResidualBlock(widths[1]),
            conv_bn(widths[1], widths[2], stride=2), nn.ReLU(inplace=True), ResidualBlock(widths[2]),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Linear(widths[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
