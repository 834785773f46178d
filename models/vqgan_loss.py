"""The codebook's training loss, VQLPAPSWithDiscriminator (spec §3.5): L1 + perceptual, VQ loss and a PatchGAN.

`forward(codebook_loss, inputs, reconstructions, optimizer_idx, global_step, last_layer, split)` returns
(loss, log dict) for the generator (optimizer_idx 0) or the discriminator (optimizer_idx 1) with the original's
log keys. Submodules `discriminator` and `perceptual_loss` (absent when perceptual_weight is 0) give the
original's `loss.*` state-dict layout when the loss is kept as `VQModel.loss`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.discriminator import NLayerDiscriminator
from models.lpaps import LPAPS
from models.vggishish import VGGISHISH_LAYERS


def adopt_weight(weight: float, global_step: int, threshold: int = 0, value: float = 0.0) -> float:
    """`value` before `threshold` steps, `weight` from then on (how disc_start switches the GAN terms on)."""
    return value if global_step < threshold else weight


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.mean(F.relu(1.0 - logits_real)) + torch.mean(F.relu(1.0 + logits_fake)))


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.mean(F.softplus(-logits_real)) + torch.mean(F.softplus(logits_fake)))


class VQLPAPSWithDiscriminator(nn.Module):
    """Args (the original's names; paper values in conf/codebook/*.yaml):
        disc_start: global step from which the GAN terms count (disc_factor is 0 before).
        codebook_weight: weight of the VQ loss in the generator total.
        pixelloss_weight: accepted for config compatibility; unused, as in the original.
        disc_num_layers, disc_in_channels, disc_ndf: the PatchGAN's size.
        disc_factor: the GAN terms' factor once past disc_start.
        disc_weight: multiplies the (clamped) adaptive weight.
        perceptual_weight: weight of LPAPS in the reconstruction term; 0 builds no LPAPS at all.
        disc_loss: "hinge" or "vanilla".
        min_adapt_weight, max_adapt_weight: clamp of the adaptive weight (paper [1, 1]: lambda = disc_weight).
        lpaps_mean, lpaps_std: (n_mels,) stats of [0, 1] mels for LPAPS's scaling layer (None: placeholders that a
            checkpoint overwrites).
        lpaps_layers: the LPAPS trunk layout (paper: the VGGish-ish 16-layer stack).
        n_mels: mel bins (LPAPS scaling buffers).
    """

    def __init__(self, disc_start: int, codebook_weight: float = 1.0, pixelloss_weight: float = 1.0,
                 disc_num_layers: int = 3, disc_in_channels: int = 1, disc_factor: float = 1.0,
                 disc_weight: float = 1.0, perceptual_weight: float = 1.0, use_actnorm: bool = False,
                 disc_conditional: bool = False, disc_ndf: int = 64, disc_loss: str = "hinge",
                 min_adapt_weight: float = 0.0, max_adapt_weight: float = 1e4,
                 lpaps_mean: torch.Tensor | None = None, lpaps_std: torch.Tensor | None = None,
                 lpaps_layers: Sequence = VGGISHISH_LAYERS, n_mels: int = 80):
        super().__init__()
        if disc_loss not in ("hinge", "vanilla"):
            raise ValueError(f"disc_loss must be 'hinge' or 'vanilla', not {disc_loss!r}")
        if use_actnorm or disc_conditional:
            raise NotImplementedError("use_actnorm / disc_conditional are off in every SpecVQGAN config and "
                                      "not implemented here; set them to false")
        self.config = {  # the constructor kwargs (without the stats tensors, which live in buffers)
            "disc_start": disc_start, "codebook_weight": codebook_weight, "pixelloss_weight": pixelloss_weight,
            "disc_num_layers": disc_num_layers, "disc_in_channels": disc_in_channels, "disc_factor": disc_factor,
            "disc_weight": disc_weight, "perceptual_weight": perceptual_weight, "disc_ndf": disc_ndf,
            "disc_loss": disc_loss, "min_adapt_weight": min_adapt_weight, "max_adapt_weight": max_adapt_weight,
            "lpaps_layers": list(lpaps_layers), "n_mels": n_mels,
        }
        self.codebook_weight = codebook_weight
        self.pixel_weight = pixelloss_weight
        self.perceptual_weight = perceptual_weight
        if perceptual_weight > 0:  # frozen; its Dropout follows train()/eval() as in the original
            self.perceptual_loss = LPAPS(lpaps_mean, lpaps_std, n_mels=n_mels, conv_layers=lpaps_layers)
        self.discriminator = NLayerDiscriminator(disc_in_channels, disc_ndf, disc_num_layers)
        self.discriminator_iter_start = disc_start
        self.disc_loss = hinge_d_loss if disc_loss == "hinge" else vanilla_d_loss
        self.disc_factor = disc_factor
        self.discriminator_weight = disc_weight
        self.min_adapt_weight, self.max_adapt_weight = min_adapt_weight, max_adapt_weight
        self.exact_adaptive_grads = False  # True: compute the gradients even when the clamp fixes the value

    def calculate_adaptive_weight(self, nll_loss: torch.Tensor, g_loss: torch.Tensor,
                                  last_layer: torch.Tensor) -> torch.Tensor:
        """||d nll / dW|| / (||d g / dW|| + 1e-4), clamped, detached, times disc_weight (W = decoder.conv_out).

        When the clamp is a single point (the paper's [1, 1]) the ratio cannot matter: the two gradient passes
        (through LPAPS and the discriminator) are skipped and the same value is returned, unless
        `exact_adaptive_grads` asks for the original's computation.
        """
        if self.min_adapt_weight == self.max_adapt_weight and not self.exact_adaptive_grads:
            return torch.tensor(float(self.min_adapt_weight) * self.discriminator_weight, device=nll_loss.device)
        nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
        g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        d_weight = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
        d_weight = torch.clamp(d_weight, self.min_adapt_weight, self.max_adapt_weight).detach()
        return d_weight * self.discriminator_weight

    def forward(self, codebook_loss: torch.Tensor, inputs: torch.Tensor, reconstructions: torch.Tensor,
                optimizer_idx: int, global_step: int, last_layer: torch.Tensor | None = None,
                cond: torch.Tensor | None = None, split: str = "train") -> tuple[torch.Tensor, dict]:
        inputs, reconstructions = inputs.contiguous(), reconstructions.contiguous()
        disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
        if optimizer_idx == 0:
            rec_loss = torch.abs(inputs - reconstructions)  # (B, 1, F, T)
            if self.perceptual_weight > 0:
                p_loss = self.perceptual_loss(inputs, reconstructions)  # (B, 1, 1, 1), broadcasts over pixels
                rec_loss = rec_loss + self.perceptual_weight * p_loss
            else:
                p_loss = torch.zeros((), device=inputs.device)
            nll_loss = torch.mean(rec_loss)
            logits_fake = self.discriminator(reconstructions)
            g_loss = -torch.mean(logits_fake)
            if self.training and torch.is_grad_enabled() and last_layer is not None and last_layer.requires_grad:
                d_weight = self.calculate_adaptive_weight(nll_loss, g_loss, last_layer)
            else:  # validation: no gradients to compare, as the original's failed grad call
                d_weight = torch.zeros((), device=inputs.device)
            loss = nll_loss + d_weight * disc_factor * g_loss + self.codebook_weight * codebook_loss.mean()
            log = {
                f"{split}/total_loss": loss.detach().mean(),
                f"{split}/quant_loss": codebook_loss.detach().mean(),
                f"{split}/nll_loss": nll_loss.detach(),
                f"{split}/rec_loss": rec_loss.detach().mean(),
                f"{split}/p_loss": p_loss.detach().mean(),
                f"{split}/d_weight": d_weight.detach(),
                f"{split}/disc_factor": torch.tensor(float(disc_factor)),
                f"{split}/g_loss": g_loss.detach(),
            }
            return loss, log
        if optimizer_idx == 1:
            logits_real = self.discriminator(inputs.detach())
            logits_fake = self.discriminator(reconstructions.detach())
            d_loss = disc_factor * self.disc_loss(logits_real, logits_fake)
            log = {
                f"{split}/disc_loss": d_loss.detach(),
                f"{split}/logits_real": logits_real.detach().mean(),
                f"{split}/logits_fake": logits_fake.detach().mean(),
            }
            return d_loss, log
        raise ValueError(f"optimizer_idx must be 0 (generator) or 1 (discriminator), not {optimizer_idx!r}")
