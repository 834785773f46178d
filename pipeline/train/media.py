"""Spectrogram images and audio that training tasks log (input vs. output), shared by every task."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from pipeline.media.audio import SR
from pipeline.media.images import spectrogram_image
from pipeline.media.mel import unit_mel
from pipeline.train.logger import Logger


def log_spectrograms(logger: Logger, step: int, split: str, specs: Mapping[str, torch.Tensor],
                     vocode=None, max_items: int = 2, sample_rate: int = SR) -> None:
    """Log (B, F, T) or (B, 1, F, T) spectrograms in [-1, 1] as images, and as audio when `vocode` is given.

    `vocode` maps a [0, 1] mel (80, T) to a waveform (MelGAN or Griffin-Lim, `pipeline.build.vocoder`).
    """
    for name, spec in specs.items():
        spec = spec.detach().float().cpu().clamp(-1, 1)
        spec = spec.reshape(spec.shape[0], -1, spec.shape[-1])  # (B, F, T)
        for i in range(min(max_items, spec.shape[0])):
            logger.log_image(f"{split}/{name}_{i}", spectrogram_image(spec[i].numpy()), step)
            if vocode is not None:
                wave = vocode(unit_mel(spec[i]).numpy())
                logger.log_audio(f"{split}/{name}_{i}_audio", np.asarray(wave), sample_rate, step)
