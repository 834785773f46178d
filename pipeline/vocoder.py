"""Mel -> waveform for every sound-making stage: the MelGAN vocoder, or Griffin-Lim when there is none.

    vocode = load_vocoder_or_griffinlim(cfg.vocoder.ckpt)        # None -> Griffin-Lim
    wave = vocode(mel01)       # np (80, T) -> np float32 (256 * T,);  tensor (B, 80, T) -> tensor (B, 256 * T)

The input is the [0, 1] mel the models produce ((x + 1) / 2 of their [-1, 1] output, spec §5.5); it is fed to
MelGAN as is (no de-normalisation, no clamping, as the original). Output is 22050 Hz audio in [-1, 1].
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.nn.utils import parametrize

from pipeline.audio import SR, fit_to_length
from pipeline.mel import HOP


class Vocoder:
    """Callable mel -> waveform. `generator` None means Griffin-Lim (`pipeline.mel.inverse_mel`).

    Args:
        generator: a MelGAN Generator (eval mode) or None.
        fast: synthesise with `generator.for_inference()` (weight norm folded, time-major matrix products,
            equal to the Generator's output to ~1e-6; 2x faster on CPU, where it is used). It is a snapshot
            of the weights at construction. False runs the Generator itself.
        device: where the generator runs ("cpu", "cuda", ...); defaults to its parameters' device.
        batch_size: mels per generator call when given a larger batch (bounds memory on long inputs).
        n_iter: Griffin-Lim iterations (the original's 32).
    """

    sample_rate = SR
    hop_length = HOP

    def __init__(self, generator: torch.nn.Module | None = None, device: str | torch.device | None = None,
                 batch_size: int = 16, n_iter: int = 32, fast: bool = True):
        self.generator = generator
        self.batch_size = batch_size
        self.n_iter = n_iter
        self.fast = None
        if generator is not None:
            self.device = torch.device(device) if device is not None else next(generator.parameters()).device
            self.generator = generator.to(self.device).eval()
            if fast and hasattr(generator, "for_inference"):
                self.fast = generator.for_inference()
        else:
            self.device = torch.device("cpu")

    @property
    def name(self) -> str:
        return "melgan" if self.generator is not None else "griffinlim"

    def to(self, device: str | torch.device) -> Vocoder:
        if self.generator is not None:
            self.device = torch.device(device)
            self.generator.to(self.device)
            if self.fast is not None:
                self.fast.to(self.device)
        return self

    @torch.no_grad()
    def _melgan(self, mel: torch.Tensor) -> torch.Tensor:
        out = []
        with parametrize.cached():  # weight-normed weights computed once per call, not once per chunk
            for chunk in mel.split(self.batch_size):
                chunk = chunk.to(self.device, torch.float32)
                use_fast = self.fast is not None and self.device.type == "cpu"  # GPUs: cuDNN's convs
                wave = self.fast(chunk) if use_fast else self.generator(chunk)  # (b, 1, 256 * T)
                out.append(wave.squeeze(1).float())
        return torch.cat(out)  # (B, 256 * T)

    def _griffinlim(self, mel: np.ndarray) -> np.ndarray:
        from pipeline.mel import inverse_mel

        wave = inverse_mel(mel, sr=SR, n_iter=self.n_iter)  # (256 * (T - 1),)
        return fit_to_length(wave, HOP * mel.shape[-1]).astype(np.float32, copy=False)

    def __call__(self, mel: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """np (80, T) -> np float32 (256 T,); tensor (B, 80, T) or (80, T) -> tensor (B, 256 T) or (256 T,)."""
        is_tensor = isinstance(mel, torch.Tensor)
        x = mel if is_tensor else torch.from_numpy(np.asarray(mel, dtype=np.float32))
        single = x.dim() == 2
        if single:
            x = x.unsqueeze(0)  # (1, 80, T)
        if x.dim() != 3 or x.shape[1] != 80:
            raise ValueError(f"the vocoder wants a [0, 1] mel (80, T) or (B, 80, T), got {tuple(x.shape)}")
        if self.generator is not None:
            wave = self._melgan(x)
        else:
            mels = x.detach().cpu().float().numpy()
            wave = torch.from_numpy(np.stack([self._griffinlim(m) for m in mels]))
        if is_tensor:
            wave = wave.to(mel.device)
            return wave[0] if single else wave
        wave = wave.cpu().numpy()
        return wave[0] if single else wave


def load_vocoder_or_griffinlim(ckpt: str | os.PathLike | None, device: str | torch.device = "cpu",
                               zoo_cfg=None, **kwargs) -> Vocoder:
    """A Vocoder from a MelGAN checkpoint (ours or the original's netG, a file or folder, or a released name such
    as `melgan`, fetched into the stage config `zoo_cfg`'s paths.models), or Griffin-Lim when `ckpt` is None/''."""
    if ckpt in (None, ""):
        return Vocoder(None, **kwargs)
    from pipeline.pretrained import load_vocoder
    from pipeline.zoo import resolve

    ckpt = resolve(ckpt, cfg=zoo_cfg)

    return Vocoder(load_vocoder(ckpt, map_location="cpu"), device=device, **kwargs)
