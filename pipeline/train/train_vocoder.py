"""Training the MelGAN vocoder (spec §5.4): generator vs. multi-scale discriminator on waveform crops.

Each step takes 8192-sample crops of peak-normalised, randomly attenuated waveforms (`WaveformDataset`),
computes their mels on the fly with the original's chain (`pipeline.media.mel.MelTransform`, a torch copy of
`pipeline.media.mel.mel_spectrogram`), and trains, as the original, first the discriminator (hinge) and then the
generator (-mean D + lambda_feat x feature matching; no reconstruction loss). The mel L1 between the input mel
and the mel of the generated audio is the monitor; `loss.lambda_mel` > 0 also makes it a generator loss term
(0 in the paper presets, as the original; the tiny preset needs it: with only the GAN terms a narrow MelGAN
trained for minutes gives one waveform whatever the mel). The original picked its "best" generator from
the running mel L1 of training batches (spec §11.14); we compute it on the validation split instead, so best.pt
is chosen on clips the vocoder never trained on.

Checkpoints keep the generator in the original's bare `best_netG.pt` layout (`model.N.weight_g/weight_v/bias`)
and the discriminator under `netD.` (its own original layout), so `load_vocoder` reads them directly.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset, Subset

from models.melgan import (
    Discriminator,
    Generator,
    discriminator_hinge_loss,
    from_legacy_weight_norm,
    generator_loss,
    to_legacy_weight_norm,
)
from pipeline.data.datasets import WaveformDataset
from pipeline.media.audio import SR
from pipeline.media.mel import HOP, N_FFT, MelTransform
from pipeline.train.loop import Task
from pipeline.train.media import log_spectrograms
from pipeline.train.run import train

log = logging.getLogger(__name__)

D_PREFIX = "netD."  # the discriminator's keys in our checkpoints; the generator's are bare, as best_netG.pt


def spectral_loss(fake: torch.Tensor, real: torch.Tensor, window: torch.Tensor, n_fft: int = N_FFT,
                  hop: int = HOP) -> torch.Tensor:
    """Spectral convergence (||S_real - S_fake|| / ||S_real||, linear magnitudes) plus the L1 of the magnitudes in
    dB / 100 (floored at -100 dB, the mel chain's 1e-5), over the whole band of one STFT (Parallel WaveGAN's
    spectral term). Unlike the [0, 1] mel it sees the level of every bin: the DC offset, the band above 7.6 kHz
    and sound below -80 dB, where the mel is clipped to 0 and passes no gradient."""
    def magnitude(wave: torch.Tensor) -> torch.Tensor:
        wave = wave.squeeze(1) if wave.dim() == 3 else wave
        return torch.stft(wave.float(), n_fft, hop_length=hop, win_length=n_fft, window=window.float(),
                          center=True, pad_mode="reflect", return_complex=True).abs()

    fake_mag, real_mag = magnitude(fake), magnitude(real)
    convergence = torch.linalg.norm(real_mag - fake_mag) / torch.linalg.norm(real_mag).clamp_min(1e-5)
    decibels = F.l1_loss(0.2 * torch.log10(fake_mag.clamp_min(1e-5)), 0.2 * torch.log10(real_mag.clamp_min(1e-5)))
    return convergence + decibels


def frames_of(mel: torch.Tensor, samples: int, hop: int = HOP) -> torch.Tensor:
    """Keep the first samples // hop frames: 8192 samples -> 33 frames -> 32, as the original's seq_len / 256."""
    return mel[..., : samples // hop]


class VocoderTask(Task):
    """MelGAN generator ("netG") against its multi-scale discriminator ("netD"), one Adam each."""

    kind = "vocoder"
    monitor_mode = "min"  # `vocoder.monitor` on the validation split; the original used training batches (spec §11.14)

    def __init__(self, cfg: DictConfig):
        super().__init__()
        self.cfg = cfg
        self.vcfg = cfg.vocoder
        self.batch_size = int(self.vcfg.optim.batch_size)
        self.mel: MelTransform | None = None
        self.monitor = f"val/{self.vcfg.monitor}"  # best.pt by it (conf/vocoder/*.yaml says which and why)

    # --- build -------------------------------------------------------------------------------------
    def build(self) -> None:
        model = self.vcfg.model
        netG = Generator(**OmegaConf.to_container(model.netG, resolve=True))
        netD = Discriminator(**OmegaConf.to_container(model.netD, resolve=True))
        optim = self.vcfg.optim
        betas = tuple(optim.betas)
        self.modules = {"netG": netG, "netD": netD}
        lr = self.trainer.learning_rate(optim)
        fused = self.trainer.optimizer_options()
        self.optimizers = {"netG": torch.optim.Adam(netG.parameters(), lr=lr, betas=betas, **fused),
                           "netD": torch.optim.Adam(netD.parameters(), lr=lr, betas=betas, **fused)}
        self.mel = MelTransform().to(self.trainer.device)
        self.hop = netG.hop_length
        log.info("vocoder: generator %.2f M, discriminator %.2f M parameters",
                 sum(p.numel() for p in netG.parameters()) / 1e6, sum(p.numel() for p in netD.parameters()) / 1e6)

    def train_dataset(self) -> Dataset:
        return WaveformDataset(self.cfg.dataset, self.cfg.data.train_split, segment=int(self.vcfg.seq_len),
                               train=True, sound_crops=float(self.vcfg.sound_crops))

    def val_dataset(self) -> Dataset | None:
        ds = WaveformDataset(self.cfg.dataset, self.cfg.data.val_split, train=False)
        n = self.cfg.data.get("val_max_clips")
        return Subset(ds, range(min(int(n), len(ds)))) if n else ds  # the first N: the same clips every time

    # --- steps ---------------------------------------------------------------------------------------
    def _mel_of(self, wave: torch.Tensor) -> torch.Tensor:
        return frames_of(self.mel(wave), wave.shape[-1], self.hop)  # (B, 80, N // 256)

    def train_step(self, batch: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        netG = self.modules["netG"]
        x = batch  # (B, 1, seq_len)
        with torch.no_grad():
            s = self._mel_of(x)  # (B, 80, seq_len / 256) in [0, 1]
        with self.trainer.autocast():
            x_pred = netG(s)  # (B, 1, seq_len)
        with torch.no_grad():
            mel_l1 = F.l1_loss(self._mel_of(x_pred.detach()), s)  # the original's monitor (a loss if lambda_mel > 0)
        logs = {"train/mel_l1": mel_l1}
        loss = self._reconstruction_loss(x_pred, x, s)
        if step >= int(self.vcfg.loss.disc_start):  # the GAN: from the first step in the paper presets
            adversarial, gan_logs = self._gan_losses(x_pred, x)
            loss, logs = loss + adversarial, {**logs, **gan_logs}
        self.trainer.backward(loss)
        self.optimizers["netG"].step()
        self.optimizers["netG"].zero_grad(set_to_none=True)
        return logs

    def _reconstruction_loss(self, x_pred: torch.Tensor, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The generator's reconstruction terms (none in the paper presets, as the original): the mel L1 through the
        differentiable mel chain (float64, as the monitor) and the whole band's spectral term."""
        loss = x_pred.new_zeros(())
        lambda_mel = float(self.vcfg.loss.lambda_mel)
        if lambda_mel > 0:
            loss = loss + lambda_mel * F.l1_loss(self._mel_of(x_pred.float()), s)
        lambda_spectral = float(self.vcfg.loss.lambda_spectral)
        if lambda_spectral > 0:
            loss = loss + lambda_spectral * spectral_loss(x_pred, x, self.mel.window)
        return loss

    def _gan_losses(self, x_pred: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The discriminator's step (hinge) and the generator's GAN terms against the updated discriminator."""
        netD = self.modules["netD"]
        n = x.shape[0]
        with self.trainer.autocast():  # fake (detached) and real in one forward through the prepared module
            d_both = netD(torch.cat([x_pred.detach(), x]))  # scales x layers, each (2B, C, L)
        d_fake_det = [[f[:n] for f in scale] for scale in d_both]
        d_real = [[f[n:].detach() for f in scale] for scale in d_both]
        loss_d = discriminator_hinge_loss(d_fake_det, [[f[n:] for f in scale] for scale in d_both])
        self.trainer.backward(loss_d)
        self.optimizers["netD"].step()
        self.optimizers["netD"].zero_grad(set_to_none=True)
        # generator: the updated discriminator judges, frozen; its real features are the pre-update ones
        # (detached), as the original's
        bare_d = self.trainer.unwrap("netD")
        bare_d.requires_grad_(False)
        try:
            with self.trainer.autocast():
                g = generator_loss(bare_d(x_pred), d_real, lambda_feat=float(self.vcfg.loss.lambda_feat),
                                   n_layers_D=int(self.vcfg.model.netD.n_layers))
        finally:
            bare_d.requires_grad_(True)
        return g["loss"], {"train/discriminator": loss_d.detach(), "train/generator": g["adversarial"].detach(),
                           "train/feature_matching": g["feature_matching"].detach()}

    def val_step(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        x = batch[..., : batch.shape[-1] // self.hop * self.hop]  # (B, 1, N) with N a multiple of the hop
        s = self._mel_of(x)
        x_pred = self.trainer.unwrap("netG")(s)
        rms = lambda w: w.double().square().mean().sqrt().clamp_min(1e-12)  # noqa: E731
        metrics = {"mel_l1": F.l1_loss(self._mel_of(x_pred), s),
                   "level_error_db": (20 * torch.log10(rms(x_pred) / rms(x))).abs()}  # how loud, against the clip
        if float(self.vcfg.loss.lambda_spectral) > 0:
            metrics["spectral"] = spectral_loss(x_pred, x, self.mel.window)
        return metrics

    def log_media(self, batch: torch.Tensor, logger, step: int, split: str) -> None:
        x = batch[:2, :, : batch.shape[-1] // self.hop * self.hop].to(self.trainer.device)
        s = self._mel_of(x)
        x_pred = self.trainer.unwrap("netG")(s)
        log_spectrograms(logger, step, split, {"mel": 2 * s - 1, "mel_of_generated": 2 * self._mel_of(x_pred) - 1})
        for i in range(x.shape[0]):
            logger.log_audio(f"{split}/real_{i}", x[i, 0].float().cpu().numpy(), SR, step)
            logger.log_audio(f"{split}/generated_{i}", x_pred[i, 0].float().cpu().numpy(), SR, step)

    # --- checkpoints ---------------------------------------------------------------------------------
    def model_args(self) -> dict[str, Any]:
        return OmegaConf.to_container(self.vcfg.model, resolve=True)  # {"netG": {...}, "netD": {...}}

    def extra_checkpoint(self) -> dict[str, Any]:
        return {"loss_args": {"lambda_feat": float(self.vcfg.loss.lambda_feat),
                              "lambda_mel": float(self.vcfg.loss.lambda_mel)}, "sample_rate": SR,
                "hop_length": self.hop, "version": 1}

    def state_dict(self) -> dict[str, torch.Tensor]:
        netG, netD = self.trainer.unwrap("netG"), self.trainer.unwrap("netD")
        state = to_legacy_weight_norm(dict(netG.state_dict()))  # model.N.{weight_g, weight_v, bias}
        state.update({D_PREFIX + k: v for k, v in to_legacy_weight_norm(dict(netD.state_dict())).items()})
        return state

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        netG, netD = self.trainer.unwrap("netG"), self.trainer.unwrap("netD")
        g = {k: v for k, v in state_dict.items() if not k.startswith(D_PREFIX)}
        d = {k[len(D_PREFIX):]: v for k, v in state_dict.items() if k.startswith(D_PREFIX)}
        netG.load_state_dict(from_legacy_weight_norm(g), strict=True)
        netD.load_state_dict(from_legacy_weight_norm(d), strict=True)


def run(cfg: DictConfig) -> dict[str, float]:
    """`python -m stages.train_vocoder`: train in the run folder (a rerun with the same overrides resumes); returns
    the last metrics."""
    return train(VocoderTask(cfg), cfg)
