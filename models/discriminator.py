"""The pix2pix PatchGAN discriminator the codebook is trained against (spec §3.5, `NLayerDiscriminator`).

Keys `main.N.*` equal the original's: with n_layers 3 the convs sit at main.{0,2,5,8,11} and BatchNorms at
main.{3,6,9}. An 80 x 848 input gives a (B, 1, 8, 104) map of logits.
"""
from __future__ import annotations

from torch import nn


class NLayerDiscriminator(nn.Module):
    """conv(s2)+LeakyReLU, (n_layers - 1) x [conv(s2), BN, LeakyReLU], conv(s1), BN, LeakyReLU, conv(s1) -> 1 ch.

    Convs followed by BatchNorm have no bias; kernel 4, padding 1, LeakyReLU slope 0.2.
    """

    def __init__(self, input_nc: int = 1, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        kw, padw = 4, 1
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, kw, stride=2, padding=padw), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1  # the last of these keeps the resolution
            layers += [nn.Conv2d(ndf * prev, ndf * mult, kw, stride=stride, padding=padw, bias=False),
                       nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, kw, stride=1, padding=padw))
        self.main = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The original's weights_init: conv weights N(0, 0.02); BN weight N(1, 0.02), bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        return self.main(x)  # (B, 1, H', W') patch logits
