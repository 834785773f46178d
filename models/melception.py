"""Melception: torchvision's Inception3 on one-channel mel spectrograms (spec §6.1), in plain torch.

Parameter names equal torchvision's (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_mean`,
`AuxLogits.fc.weight`, `fc.bias`, ...), so the original's checkpoint loads strictly. Differences from the ImageNet
Inception3: `Conv2d_1a_3x3` takes 1 input channel, `maxpool1` / `maxpool2` are identities, no input transform.

`features(x)` is the evaluation wrapper of the original (`evaluation/feature_extractors/melception.py`): it
returns the pooled intermediate maps '64', '192', '768', the 2048-d pool '2048', the logits without fc bias
'logits_unbiased' and the logits 'logits'.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_NAMES: tuple[str, ...] = ("64", "192", "768", "2048", "logits_unbiased", "logits")


def scaled(channels: int, width: float = 1.0) -> int:
    """A layer's channel count under the width multiplier (1.0: torchvision's exact widths)."""
    return channels if width == 1.0 else max(1, round(channels * width))


class MelceptionOutputs(NamedTuple):
    logits: torch.Tensor
    aux_logits: torch.Tensor | None


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class InceptionA(nn.Module):
    """1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1; out = 224 + pool_features channels, same size."""

    def __init__(self, in_channels: int, pool_features: int, width: float = 1.0):
        super().__init__()
        c = lambda n: scaled(n, width)
        self.out_channels = c(64) + c(64) + c(96) + c(pool_features)
        self.branch1x1 = BasicConv2d(in_channels, c(64), kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, c(48), kernel_size=1)
        self.branch5x5_2 = BasicConv2d(c(48), c(64), kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, c(64), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, c(pool_features), kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """Grid reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2; out = 480 + in_channels channels."""

    def __init__(self, in_channels: int, width: float = 1.0):
        super().__init__()
        c = lambda n: scaled(n, width)
        self.out_channels = c(384) + c(96) + in_channels
        self.branch3x3 = BasicConv2d(in_channels, c(384), kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, c(64), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class InceptionC(nn.Module):
    """Factorised 7x7 branches; 768 channels out, same size."""

    def __init__(self, in_channels: int, channels_7x7: int, width: float = 1.0):
        super().__init__()
        c = lambda n: scaled(n, width)
        c7, c192 = c(channels_7x7), c(192)
        self.out_channels = 4 * c192
        self.branch1x1 = BasicConv2d(in_channels, c192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, c192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, c192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, c192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = conv(bd)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    """Grid reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2; out = 512 + in_channels channels."""

    def __init__(self, in_channels: int, width: float = 1.0):
        super().__init__()
        c = lambda n: scaled(n, width)
        self.out_channels = c(320) + c(192) + in_channels
        self.branch3x3_1 = BasicConv2d(in_channels, c(192), kernel_size=1)
        self.branch3x3_2 = BasicConv2d(c(192), c(320), kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, c(192), kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(c(192), c(192), kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(c(192), c(192), kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(c(192), c(192), kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class InceptionE(nn.Module):
    """Expanded filter bank with split 1x3 / 3x1 outputs; 2048 channels out, same size."""

    def __init__(self, in_channels: int, width: float = 1.0):
        super().__init__()
        c = lambda n: scaled(n, width)
        c384 = c(384)
        self.out_channels = c(320) + 4 * c384 + c(192)
        self.branch1x1 = BasicConv2d(in_channels, c(320), kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, c384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(c384, c384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(c384, c384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, c(448), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(c(448), c384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(c384, c384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(c384, c384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, c(192), kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)  # (B, 768, H, W)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)  # (B, 768, H, W)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b3, bd, bp], 1)


class InceptionAux(nn.Module):
    """Auxiliary head on Mixed_6e: avgpool 5/3 -> 1x1 128 -> 5x5 768 -> global pool -> fc."""

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0):
        super().__init__()
        c = lambda n: scaled(n, width)
        self.conv0 = BasicConv2d(in_channels, c(128), kernel_size=1)
        self.conv1 = BasicConv2d(c(128), c(768), kernel_size=5)
        self.conv1.stddev = 0.01  # init std read by Melception.reset_parameters (as torchvision)
        self.fc = nn.Linear(c(768), num_classes)
        self.fc.stddev = 0.001

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(x, kernel_size=5, stride=3)
        x = self.conv1(self.conv0(x))
        x = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)  # (B, 768)
        return self.fc(x)


class Melception(nn.Module):
    """(B, 80, T) normalised mel -> (B, num_classes) logits; in training with aux_logits, (logits, aux_logits).

    Args:
        num_classes: output classes (VGGSound 309).
        aux_logits: build the auxiliary head (`AuxLogits.*`), as the original (its checkpoint holds it).
        dropout: dropout before fc (torchvision's 0.5).
        init_weights: torchvision's init (truncated normal std 0.1 for convs / fc, BN 1 / 0).
        width: channel multiplier of every conv (1.0: the paper's Melception). A narrower Melception (e.g. 0.125
            for CPU tests and the demo) keeps the layers, names, strides and feature names; only the channel
            counts shrink, so its '2048' feature has fewer dimensions (`self.num_features`).
    """

    def __init__(self, num_classes: int = 309, aux_logits: bool = True, dropout: float = 0.5,
                 init_weights: bool = True, width: float = 1.0):
        super().__init__()
        c = lambda n: scaled(n, width)
        self.Conv2d_1a_3x3 = BasicConv2d(1, c(32), kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(c(32), c(32), kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(c(32), c(64), kernel_size=3, padding=1)
        self.maxpool1 = nn.Identity()  # Melception drops the ImageNet max-pools
        self.Conv2d_3b_1x1 = BasicConv2d(c(64), c(80), kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(c(80), c(192), kernel_size=3)
        self.maxpool2 = nn.Identity()
        self.Mixed_5b = InceptionA(c(192), pool_features=32, width=width)  # 256 channels at width 1
        self.Mixed_5c = InceptionA(self.Mixed_5b.out_channels, pool_features=64, width=width)  # 288
        self.Mixed_5d = InceptionA(self.Mixed_5c.out_channels, pool_features=64, width=width)  # 288
        self.Mixed_6a = InceptionB(self.Mixed_5d.out_channels, width=width)  # 768
        self.Mixed_6b = InceptionC(self.Mixed_6a.out_channels, channels_7x7=128, width=width)
        self.Mixed_6c = InceptionC(self.Mixed_6b.out_channels, channels_7x7=160, width=width)
        self.Mixed_6d = InceptionC(self.Mixed_6c.out_channels, channels_7x7=160, width=width)
        self.Mixed_6e = InceptionC(self.Mixed_6d.out_channels, channels_7x7=192, width=width)  # 768
        c6 = self.Mixed_6e.out_channels
        self.AuxLogits = InceptionAux(c6, num_classes, width=width) if aux_logits else None
        self.Mixed_7a = InceptionD(c6, width=width)  # 1280
        self.Mixed_7b = InceptionE(self.Mixed_7a.out_channels, width=width)  # 2048
        self.Mixed_7c = InceptionE(self.Mixed_7b.out_channels, width=width)  # 2048
        self.num_features = self.Mixed_7c.out_channels  # 2048 at width 1
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(self.num_features, num_classes)
        if init_weights:
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """torchvision 0.9's init: conv / linear N(0, std) truncated at +-2 std (std 0.1 unless set), BN 1 / 0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                std = float(getattr(m, "stddev", 0.1))
                nn.init.trunc_normal_(m.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    @staticmethod
    def _as_image(x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)  # (B, 1, F, T)
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"Melception expects a mel (B, F, T) or (B, 1, F, T), got {tuple(x.shape)}")
        return x

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, 80, 848) -> the '64' map (B, 64, 37, 421) and the '192' map (B, 192, 35, 419)."""
        x = self.Conv2d_1a_3x3(x)  # (B, 32, 39, 423)
        x = self.Conv2d_2a_3x3(x)  # (B, 32, 37, 421)
        x64 = self.maxpool1(self.Conv2d_2b_3x3(x))  # (B, 64, 37, 421)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x64))  # (B, 192, 35, 419)
        return x64, self.maxpool2(x)

    def _mixed6(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # (B, 288, 35, 419)
        x = self.Mixed_6a(x)  # (B, 768, 17, 209)
        return self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # (B, 768, 17, 209)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # (B, 2048, 8, 104)
        return torch.flatten(self.dropout(self.avgpool(x)), 1)  # (B, 2048)

    def forward(self, x: torch.Tensor) -> torch.Tensor | MelceptionOutputs:
        _, x = self._stem(self._as_image(x))
        x = self._mixed6(x)
        aux = self.AuxLogits(x) if self.AuxLogits is not None and self.training else None
        logits = self.fc(self._pool(x))  # (B, num_classes)
        if self.training and self.AuxLogits is not None:
            return MelceptionOutputs(logits, aux)
        return logits

    def features(self, x: torch.Tensor, names: Sequence[str] = FEATURE_NAMES) -> dict[str, torch.Tensor]:
        """The evaluation wrapper's outputs by name (any subset of FEATURE_NAMES; call in eval mode).

        '64', '192', '768': global average pools of the stem / Mixed_6e maps; '2048': the pooled features;
        'logits_unbiased': features @ fc.weight.T (no bias); 'logits': with the bias.
        """
        unknown = set(names) - set(FEATURE_NAMES)
        if unknown:
            raise ValueError(f"unknown Melception feature(s) {sorted(unknown)}; choose from {FEATURE_NAMES}")
        out: dict[str, torch.Tensor] = {}
        x64, x = self._stem(self._as_image(x))
        if "64" in names:
            out["64"] = F.adaptive_avg_pool2d(x64, (1, 1)).flatten(1)  # (B, 64)
        if "192" in names:
            out["192"] = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)  # (B, 192)
        if not set(names) - {"64", "192"}:
            return out
        x = self._mixed6(x)
        if "768" in names:
            out["768"] = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)  # (B, 768)
        if not set(names) - {"64", "192", "768"}:
            return out
        x = self._pool(x)
        if "2048" in names:
            out["2048"] = x
        unbiased = x.mm(self.fc.weight.T)  # (B, num_classes)
        if "logits_unbiased" in names:
            out["logits_unbiased"] = unbiased
        if "logits" in names:
            out["logits"] = unbiased + self.fc.bias.unsqueeze(0)
        return out
