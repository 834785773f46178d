"""ResNet50 in plain torch, with torchvision's parameter names, used as a per-frame feature extractor.

The original's ResNet50 condition (`v-iashin/video_features`, SpecVQGAN's `ExtractResNet50`) is torchvision's
ImageNet ResNet50 with `fc` replaced by an identity: one 2048-d vector per frame after the global average pool.
torchvision does not import here, so the network is rebuilt with exactly its module names
(`conv1`, `bn1`, `layer1.0.conv1`, `layer1.0.downsample.0`, ..., `fc`) so that torchvision's state dict loads
strictly. `fc` is kept (it is in the state dict) but `forward` stops before it.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride here, as torchvision >= 0.2 "ResNet v1.5") -> 1x1 expand, plus a shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet with bottleneck blocks; `forward` returns the pooled features (B, 8 * 4 * width).

    `layers=(3, 4, 6, 3)`, `width=64` is ResNet50 (2048-d features, 25.6 M parameters with `fc`); smaller
    values exist only for fast tests with random weights.
    """

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), width: int = 64, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = width
        for i, blocks in enumerate(layers):
            stage_width = width * 2**i
            stride = 1 if i == 0 else 2
            downsample = nn.Sequential(
                nn.Conv2d(in_channels, stage_width * Bottleneck.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(stage_width * Bottleneck.expansion),
            )
            stage = [Bottleneck(in_channels, stage_width, stride, downsample)]
            in_channels = stage_width * Bottleneck.expansion
            stage += [Bottleneck(in_channels, stage_width) for _ in range(blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        self.out_dim = in_channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) ImageNet-normalised RGB -> (B, out_dim) pooled features (the original's fc=Identity)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)  # (B, out_dim, 1, 1) -> (B, out_dim)
