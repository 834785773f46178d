"""LPAPS: the LPIPS-style perceptual distance on a VGGish-ish trunk used by the codebook loss (spec §3.5).

Keys equal the original's: `scaling_layer.{shift,scale}` (1, 1, n_mels, 1) buffers, `net.slice1..5.N.*` (the
VGGish-ish `features` convs at their original indices) and `lin0..4.model.1.weight` (Dropout, then a 1x1 conv
without bias). The module is frozen; as in the original release its weights are whatever is loaded into it
(random when nothing is, see spec §11.1).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.vggishish import VGGISHISH_LAYERS, make_features


class ScalingLayer(nn.Module):
    """(x - shift) / scale per mel bin, with shift = 2 mean - 1 and scale = 2 std (stats of [0, 1] mels).

    Args:
        mean, std: (n_mels,) statistics of [0, 1]-scaled mels; None makes placeholders (0 and 1) of `n_mels`
            bins, to be overwritten by a checkpoint's buffers.
    """

    def __init__(self, mean: torch.Tensor | None = None, std: torch.Tensor | None = None, n_mels: int = 80):
        super().__init__()
        if mean is None or std is None:
            mean, std = torch.full((n_mels,), 0.5), torch.full((n_mels,), 0.5)
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        self.register_buffer("shift", (2 * mean - 1)[None, None, :, None])  # (1, 1, n_mels, 1)
        self.register_buffer("scale", (2 * std)[None, None, :, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class NetLinLayer(nn.Module):
    """Dropout (when used) then a 1x1 conv C -> 1 without bias, as `model`."""

    def __init__(self, chn_in: int, chn_out: int = 1, use_dropout: bool = True):
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout()] if use_dropout else []
        layers.append(nn.Conv2d(chn_in, chn_out, 1, stride=1, padding=0, bias=False))
        self.model = nn.Sequential(*layers)


class VGGishishSlices(nn.Module):
    """The VGGish-ish `features` stack cut before every max-pool into slice1..sliceN (module indices kept)."""

    def __init__(self, conv_layers: Sequence = VGGISHISH_LAYERS):
        super().__init__()
        features = make_features(conv_layers)
        cuts = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)] + [len(features)]
        start, self.channels = 0, []
        for k, end in enumerate(cuts, 1):
            s = nn.Sequential()
            for i in range(start, end):
                s.add_module(str(i), features[i])
            setattr(self, f"slice{k}", s)
            self.channels.append([m.out_channels for m in s if isinstance(m, nn.Conv2d)][-1])
            start = end
        self.n_slices = len(cuts)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for k in range(1, self.n_slices + 1):
            x = getattr(self, f"slice{k}")(x)
            outs.append(x)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 for the paper trunk
        return outs


def normalize_tensor(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit-normalise over channels."""
    return x / (torch.sqrt(torch.sum(x ** 2, dim=1, keepdim=True)) + eps)


class LPAPS(nn.Module):
    """Perceptual distance (B, 1, F, T) x 2 -> (B, 1, 1, 1); frozen (no parameter requires grad).

    Args:
        mean, std: (n_mels,) per-bin statistics of [0, 1] mels (the rows of
            train_means_stds_melspec_10s_22050hz.txt); None for placeholders a checkpoint will overwrite.
        conv_layers: the trunk's layout (paper: VGGISHISH_LAYERS); smaller ones for tests.
        use_dropout: Dropout(0.5) before each lin head (the original; active in train mode).
    """

    def __init__(self, mean: torch.Tensor | None = None, std: torch.Tensor | None = None, n_mels: int = 80,
                 conv_layers: Sequence = VGGISHISH_LAYERS, use_dropout: bool = True):
        super().__init__()
        self.scaling_layer = ScalingLayer(mean, std, n_mels)
        self.net = VGGishishSlices(conv_layers)
        self.chns = list(self.net.channels)
        for k, c in enumerate(self.chns):
            setattr(self, f"lin{k}", NetLinLayer(c, use_dropout=use_dropout))
        for p in self.parameters():
            p.requires_grad = False

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        outs0 = self.net(self.scaling_layer(input))
        outs1 = self.net(self.scaling_layer(target))
        val = 0
        for k, (f0, f1) in enumerate(zip(outs0, outs1)):
            diff = (normalize_tensor(f0) - normalize_tensor(f1)) ** 2  # (B, C_k, F_k, T_k)
            val = val + getattr(self, f"lin{k}").model(diff).mean([2, 3], keepdim=True)  # (B, 1, 1, 1)
        return val
