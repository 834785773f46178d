"""VGGish-ish: the VGG16-style mel-spectrogram classifier of SpecVQGAN (spec §6.1).

Parameter names equal the original's (`features.N.*` conv stack, `classifier.{0,2,4}.*` head), so its
checkpoints load strictly. The same `features` stack is the LPAPS trunk (models/lpaps.py).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# the paper's conv stack: channel counts and "MP" (2x2 max-pool); 13 convs, 4 pools -> /16 in both axes
VGGISHISH_LAYERS: tuple = (64, 64, "MP", 128, 128, "MP", 256, 256, 256, "MP", 512, 512, 512, "MP", 512, 512, 512)


def make_features(conv_layers: Sequence = VGGISHISH_LAYERS, use_bn: bool = False,
                  in_channels: int = 1) -> nn.Sequential:
    """The conv trunk: 3x3 convs (pad 1) with ReLU (and BatchNorm when `use_bn`), "MP" = MaxPool 2x2."""
    layers: list[nn.Module] = []
    for v in conv_layers:
        if v == "MP":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(in_channels, int(v), kernel_size=3, padding=1))
        if use_bn:
            layers.append(nn.BatchNorm2d(int(v)))
        layers.append(nn.ReLU(inplace=True))
        in_channels = int(v)
    return nn.Sequential(*layers)


class VGGishish(nn.Module):
    """(B, 80, T) mel in -> (B, num_classes) logits.

    Args:
        conv_layers: the trunk's channel list with "MP" for max-pools (paper: VGGISHISH_LAYERS).
        use_bn: BatchNorm after each conv (the paper: False).
        num_classes: output classes (VGGSound: 309).
        pool_hw: the adaptive average pool's output (F, T); the paper's (5, 10).
        hidden: width of the two hidden Linear layers (paper 4096).
    """

    def __init__(self, conv_layers: Sequence = VGGISHISH_LAYERS, use_bn: bool = False, num_classes: int = 309,
                 pool_hw: tuple[int, int] = (5, 10), hidden: int = 4096):
        super().__init__()
        self.features = make_features(conv_layers, use_bn)
        last = [int(v) for v in conv_layers if v != "MP"][-1]
        self.avgpool = nn.AdaptiveAvgPool2d(tuple(pool_hw))
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(last * pool_hw[0] * pool_hw[1], hidden),
            nn.ReLU(True),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Linear(hidden, num_classes),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The original's init: conv Kaiming-normal (fan_out, relu), BN 1/0, Linear N(0, 0.01); biases 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 80, T) -> the pooled, flattened trunk features (B, C * pool_F * pool_T)."""
        x = x.unsqueeze(1)  # (B, 1, F, T)
        x = self.features(x)  # (B, 512, F/16, T/16), e.g. (B, 512, 5, 53) for 80 x 848
        x = self.avgpool(x)  # (B, 512, 5, 10)
        return self.flatten(x)  # (B, 25600)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))  # (B, num_classes)
