"""MelGAN vocoder (spec §5): generator, multi-scale discriminator and their losses.

Module indices equal the original's (`model.1`, `model.4.block.2`, `model.disc_0.model.layer_1.0`, ...), so its
state dicts load after one renaming: the original used the legacy `torch.nn.utils.weight_norm` (keys `weight_g`,
`weight_v`); we use the parametrised weight norm (keys `parametrizations.weight.original0` / `original1`, same
tensors, same shapes). `from_legacy_weight_norm` / `to_legacy_weight_norm` convert between the two layouts.

The original's conv init (`weight.normal_(0, 0.02)` on weight-normed convs) touches only the derived weight, which
is recomputed at every forward, so it is a no-op (spec §11.14); we keep torch's default init and skip it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

RATIOS: tuple[int, ...] = (8, 8, 2, 2)  # upsampling per stage; product = hop 256

_LEGACY = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}


def WNConv1d(*args, **kwargs) -> nn.Module:
    return weight_norm(nn.Conv1d(*args, **kwargs))


def WNConvTranspose1d(*args, **kwargs) -> nn.Module:
    return weight_norm(nn.ConvTranspose1d(*args, **kwargs))


def from_legacy_weight_norm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename `*.weight_g` / `*.weight_v` (old-style weight norm) to the parametrised names; others unchanged."""
    out = {}
    for key, value in state_dict.items():
        prefix, _, leaf = key.rpartition(".")
        out[f"{prefix}.{_LEGACY[leaf]}" if leaf in _LEGACY and prefix else key] = value
    return out


def to_legacy_weight_norm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `from_legacy_weight_norm`: our keys -> the original's `weight_g` / `weight_v`."""
    inverse = {v: k for k, v in _LEGACY.items()}
    out = {}
    for key, value in state_dict.items():
        for new, old in inverse.items():
            if key.endswith("." + new):
                key = key[: -len(new)] + old
                break
        out[key] = value
    return out


class ResnetBlock(nn.Module):
    """x + f(x) with a weight-normed 1x1 shortcut: block = [LReLU, pad d, conv k3 dil d, LReLU, conv k1]."""

    def __init__(self, dim: int, dilation: int = 1):
        super().__init__()
        self.block = nn.Sequential(
            nn.LeakyReLU(0.2),
            nn.ReflectionPad1d(dilation),
            WNConv1d(dim, dim, kernel_size=3, dilation=dilation),
            nn.LeakyReLU(0.2),
            WNConv1d(dim, dim, kernel_size=1),
        )
        self.shortcut = WNConv1d(dim, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.block(x)


class Generator(nn.Module):
    """Mel (B, input_size, T) in [0, 1] -> waveform (B, 1, hop * T) in [-1, 1]; hop = prod(ratios) = 256.

    Args:
        input_size: mel bins (80).
        ngf: base width; the first conv has 2**len(ratios) * ngf channels (paper 32 -> 512), halved per stage.
        n_residual_layers: ResnetBlocks after each upsampling, with dilations 1, 3, 9, ... (paper 3).
        ratios: upsampling factors (paper [8, 8, 2, 2]).
    """

    def __init__(self, input_size: int = 80, ngf: int = 32, n_residual_layers: int = 3,
                 ratios: Sequence[int] = RATIOS):
        super().__init__()
        self.ratios = tuple(int(r) for r in ratios)
        self.hop_length = math.prod(self.ratios)
        mult = 2 ** len(self.ratios)
        model: list[nn.Module] = [nn.ReflectionPad1d(3), WNConv1d(input_size, mult * ngf, kernel_size=7)]
        for r in self.ratios:
            model += [
                nn.LeakyReLU(0.2),
                WNConvTranspose1d(mult * ngf, mult * ngf // 2, kernel_size=2 * r, stride=r,
                                  padding=r // 2 + r % 2, output_padding=r % 2),  # length x r exactly
            ]
            model += [ResnetBlock(mult * ngf // 2, dilation=3 ** j) for j in range(n_residual_layers)]
            mult //= 2
        model += [nn.LeakyReLU(0.2), nn.ReflectionPad1d(3), WNConv1d(ngf, 1, kernel_size=7), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.model(mel)  # (B, 1, hop * T)


class NLayerDiscriminator(nn.Module):
    """One scale: returns the list of all n_layers + 3 layer outputs (the last is the (B, 1, L') score map).

    Channels grow by `downsampling_factor` per strided layer up to 1024. The original builds the layer after the
    strided ones with the input width of the last strided layer instead of its output width; both agree for the
    paper's sizes (1024 = 1024), and we use the true width so smaller presets also work.
    """

    def __init__(self, ndf: int = 16, n_layers: int = 4, downsampling_factor: int = 4):
        super().__init__()
        model = nn.ModuleDict()
        model["layer_0"] = nn.Sequential(nn.ReflectionPad1d(7), WNConv1d(1, ndf, kernel_size=15),
                                         nn.LeakyReLU(0.2, True))
        nf, stride = ndf, downsampling_factor
        for n in range(1, n_layers + 1):
            nf_prev, nf = nf, min(nf * stride, 1024)
            model[f"layer_{n}"] = nn.Sequential(
                WNConv1d(nf_prev, nf, kernel_size=stride * 10 + 1, stride=stride, padding=stride * 5,
                         groups=nf_prev // 4),  # grouped: 4 input channels per group
                nn.LeakyReLU(0.2, True),
            )
        nf_out = min(nf * 2, 1024)
        model[f"layer_{n_layers + 1}"] = nn.Sequential(WNConv1d(nf, nf_out, kernel_size=5, padding=2),
                                                       nn.LeakyReLU(0.2, True))
        model[f"layer_{n_layers + 2}"] = WNConv1d(nf_out, 1, kernel_size=3, padding=1)
        self.model = model

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        results = []
        for layer in self.model.values():
            x = layer(x)
            results.append(x)
        return results


class Discriminator(nn.Module):
    """`num_D` NLayerDiscriminators on the waveform (B, 1, L) average-pooled by 2 between scales.

    Returns one list of layer outputs per scale (`model.disc_0` sees the full rate).
    """

    def __init__(self, num_D: int = 3, ndf: int = 16, n_layers: int = 4, downsampling_factor: int = 4):
        super().__init__()
        self.model = nn.ModuleDict({f"disc_{i}": NLayerDiscriminator(ndf, n_layers, downsampling_factor)
                                    for i in range(num_D)})
        self.downsample = nn.AvgPool1d(4, stride=2, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        results = []
        for disc in self.model.values():
            results.append(disc(x))
            x = self.downsample(x)  # (B, 1, L / 2)
        return results


# ----------------------------------------------------------------------------------------------- losses
def discriminator_hinge_loss(d_fake: list[list[torch.Tensor]], d_real: list[list[torch.Tensor]]) -> torch.Tensor:
    """D step: sum over scales of mean ReLU(1 + D(G(s))) + mean ReLU(1 - D(x)) on the last layer's scores.

    Pass `d_fake` computed from a detached generator output.
    """
    loss = d_fake[0][-1].new_zeros(())
    for fake, real in zip(d_fake, d_real):
        loss = loss + F.relu(1 + fake[-1]).mean() + F.relu(1 - real[-1]).mean()
    return loss


def generator_adversarial_loss(d_fake: list[list[torch.Tensor]]) -> torch.Tensor:
    """G step, adversarial part: sum over scales of -mean D(G(s))."""
    loss = d_fake[0][-1].new_zeros(())
    for fake in d_fake:
        loss = loss - fake[-1].mean()
    return loss


def feature_matching_loss(d_fake: list[list[torch.Tensor]], d_real: list[list[torch.Tensor]],
                          n_layers_D: int | None = None) -> torch.Tensor:
    """Sum over scales and all layers but the last of w * L1(fake feature, real feature detached).

    w = 4 / (n_layers_D + 1) / num_D (0.8 / 3 for the paper); n_layers_D defaults to len(layers) - 3.
    Multiply by lambda_feat (10) yourself, or use `generator_loss`.
    """
    num_D = len(d_fake)
    if n_layers_D is None:
        n_layers_D = len(d_fake[0]) - 3
    w = 4.0 / (n_layers_D + 1) / num_D
    loss = d_fake[0][-1].new_zeros(())
    for fake, real in zip(d_fake, d_real):
        for f, r in zip(fake[:-1], real[:-1]):
            loss = loss + w * F.l1_loss(f, r.detach())
    return loss


def generator_loss(d_fake: list[list[torch.Tensor]], d_real: list[list[torch.Tensor]],
                   lambda_feat: float = 10.0, n_layers_D: int | None = None) -> dict[str, torch.Tensor]:
    """The G objective: {'loss': adversarial + lambda_feat * feature matching, 'adversarial', 'feature_matching'}."""
    adv = generator_adversarial_loss(d_fake)
    fm = feature_matching_loss(d_fake, d_real, n_layers_D)
    return {"loss": adv + lambda_feat * fm, "adversarial": adv, "feature_matching": fm}
