"""Training the Spectrogram VQGAN (the codebook): autoencoder + VQ loss + LPAPS + PatchGAN, two optimisers."""
from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from accelerate.utils import broadcast
from omegaconf import DictConfig, OmegaConf

from pipeline.build.codebook import build_codebook, build_loss
from pipeline.build.vocoder import load_vocoder_or_griffinlim
from pipeline.data.datasets import SpectrogramDataset
from pipeline.train.init_from import InitSource, codebook_source, starts_fresh
from pipeline.train.loop import Task
from pipeline.train.media import log_spectrograms
from pipeline.train.run import train

log = logging.getLogger(__name__)

DISC_STEPS = ("original", "fast")  # codebook.optim.disc_step: see CodebookTask
INITS = ("original", "data")  # codebook.init: how the codes start


class CodebookTask(Task):
    """Encoder/quantiser/decoder ("model") against a PatchGAN inside the loss ("loss"), as the original.

    The generator step runs the discriminator with its parameters frozen, so only the autoencoder's gradients
    exist there; the discriminator step runs through the (possibly DDP-wrapped) loss module.

    `codebook.optim.disc_step` says what the discriminator judges (DISC_STEPS):
    - `original`: the reconstruction of the autoencoder as updated by this step's `opt_ae.step()`, as the original
      (PyTorch Lightning 1.2 calls `training_step` once per optimiser, so its second call runs the forward pass
      again after the autoencoder's update). Costs one more forward pass (without gradients) per step.
    - `fast`: the reconstruction made before that update (one forward pass per step).
    """

    kind = "codebook"
    monitor = "val/rec_loss"

    def __init__(self, cfg: DictConfig):
        super().__init__()
        self.cfg = cfg
        self.codebook_cfg = cfg.codebook
        self.batch_size = int(self.codebook_cfg.optim.batch_size)
        self.collapse_share = float(cfg.collapse_dead_share)
        self.disc_step = str(self.codebook_cfg.optim.disc_step)
        if self.disc_step not in DISC_STEPS:
            raise ValueError(f"codebook.optim.disc_step={self.disc_step!r} is unknown: use original (the discriminator "
                             f"judges the reconstruction after the autoencoder's update, as the original) or fast "
                             f"(the one from before it, saving a forward pass)")
        self.source: InitSource | None = None  # codebook.init_from's weights, read by preflight for a new run

    def preflight(self, run_dir) -> None:
        """`codebook.init_from` (a new run only): read and checked against codebook.model / codebook.loss here, before
        any work (`pipeline.train.init_from`)."""
        if self.codebook_cfg.init_from and starts_fresh(run_dir):
            self.source = codebook_source(self.cfg)

    def build(self) -> None:
        model = build_codebook(self.codebook_cfg.model)
        init = str(self.codebook_cfg.get("init", "original"))
        if init not in INITS:
            raise ValueError(f"codebook.init={init!r} is unknown: use original (uniform codes, as the paper) or data "
                             f"(k-means of the first encoder outputs)")
        if init == "data":
            self.init_codes(model)
        loss = build_loss(self.codebook_cfg.loss)
        if self.source is not None:  # a new run from another codebook's weights (and its discriminator's)
            state = self.source.state_dict
            model.load_state_dict({k: v for k, v in state.items() if not k.startswith("loss.")}, strict=True)
            disc = {k[len("loss.discriminator."):]: v for k, v in state.items() if k.startswith("loss.discriminator.")}
            if disc:
                loss.discriminator.load_state_dict(disc, strict=True)
            log.info("starting from the weights of %s", self.source.describe())
            self.source = None
        optim = self.codebook_cfg.optim
        lr = self.trainer.learning_rate(optim)
        betas = tuple(optim.betas)
        self.modules = {"model": model, "loss": loss}
        self.optimizers = {
            "ae": torch.optim.Adam(model.autoencoder_parameters(), lr=lr, betas=betas,
                                   **self.trainer.optimizer_options()),
            "disc": torch.optim.Adam(loss.discriminator.parameters(), lr=lr, betas=betas,
                                     **self.trainer.optimizer_options()),
        }
        self.vocode = None
        self._train_hits = torch.zeros(model.n_embed, dtype=torch.long)  # codes used since the last restart

    @torch.no_grad()
    def init_codes(self, model, clips: int = 16) -> None:
        """The codes by k-means of the untrained encoder's outputs on up to `clips` training clips (centre crops,
        chosen by the run's seed): silence and every kind of event get codes of their own from the first step."""
        dataset = self._dataset(self.cfg.data.train_split, train=False)
        generator = torch.Generator().manual_seed(int(self.cfg.seed))
        chosen = torch.randperm(len(dataset), generator=generator)[:clips].tolist()
        z = []
        for start in range(0, len(chosen), self.batch_size):
            x = torch.stack([torch.as_tensor(dataset[i]["image"]) for i in chosen[start:start + self.batch_size]])
            h = model.quant_conv(model.encoder(model.get_input(x)))  # (b, embed_dim, F', T')
            z.append(h.permute(0, 2, 3, 1).reshape(-1, h.shape[1]))
        model.quantize.init_from_data(torch.cat(z), generator)
        log.info("codebook: %d codes from k-means of the encoder's outputs on %d training clips", model.n_embed,
                 len(chosen))

    @torch.no_grad()
    def restart_unused_codes(self, x: torch.Tensor, step: int) -> None:
        """Every `codebook.restart_every` steps (off when null), over the first three quarters of the run: codes that
        no training input used since the last restart move onto this batch's encoder outputs that the codebook
        represents worst (`VectorQuantizer.restart`); the last quarter trains the decoder on the codes it keeps.
        With several processes the usage is summed and the main process's codes are everyone's."""
        every = self.codebook_cfg.get("restart_every")
        if not every or (step + 1) % int(every) or step + 1 > 0.75 * float(self.trainer.cfg["max_steps"] or 0):
            return
        acc, bare = self.trainer.accelerator, self.trainer.unwrap("model")
        unused = torch.nonzero(acc.reduce(self._train_hits.to(self.trainer.device), "sum") == 0).flatten().cpu()
        self._train_hits.zero_()
        if not len(unused):
            return
        z = bare.quant_conv(bare.encoder(x))
        generator = torch.Generator().manual_seed(int(self.cfg.seed) * 100_003 + step)
        bare.quantize.restart(unused, z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]), generator)
        if acc.num_processes > 1:
            bare.quantize.embedding.weight.copy_(broadcast(bare.quantize.embedding.weight.data, from_process=0))
        log.info("step %d: %d unused codes restarted on encoder outputs", step + 1, len(unused))

    def train_state(self) -> dict[str, Any]:
        """The code usage since the last restart, summed over the processes (every process builds the checkpoint)."""
        return {"code_hits": self.trainer.accelerator.reduce(self._train_hits.to(self.trainer.device), "sum").cpu()}

    def load_train_state(self, state: Mapping[str, Any]) -> None:
        if "code_hits" in state:  # the sum goes to the main process, so that the next restart's sum is the same
            if self.trainer.accelerator.is_main_process:
                self._train_hits.copy_(state["code_hits"])
            else:
                self._train_hits.zero_()

    def _dataset(self, split: str, train: bool) -> SpectrogramDataset:
        data = self.cfg.data
        return SpectrogramDataset(self.cfg.dataset, split, spec_len=data.spec_len, crop_len=data.crop_len,
                                  random_crop=bool(data.random_crop) and train)

    def train_dataset(self):
        return self._dataset(self.cfg.data.train_split, train=True)

    def val_dataset(self):
        return self._dataset(self.cfg.data.val_split, train=False)

    def train_step(self, batch: Mapping[str, Any], step: int) -> dict[str, torch.Tensor]:
        model, loss_module = self.modules["model"], self.modules["loss"]
        loss = self.trainer.unwrap("loss")
        bare = self.trainer.unwrap("model")
        x = bare.get_input(batch)
        counts = bare.code_counts.clone()
        with self.trainer.autocast():
            xrec, qloss = model(x)
        self._train_hits += (bare.code_counts - counts).cpu()  # this batch's codes
        # generator: the discriminator judges, frozen, so its weights get no gradient from this step
        loss.discriminator.requires_grad_(False)
        try:
            with self.trainer.autocast():
                ae_loss, logs = loss(qloss, x, xrec, 0, step, last_layer=bare.get_last_layer(), split="train")
            self.trainer.backward(ae_loss)
        finally:
            loss.discriminator.requires_grad_(True)
        self.optimizers["ae"].step()
        self.optimizers["ae"].zero_grad(set_to_none=True)
        self.restart_unused_codes(x, step)
        # discriminator: real vs. the detached reconstruction (original: of the autoencoder just updated)
        if self.disc_step == "original":
            with torch.no_grad(), self.trainer.autocast():
                xrec, qloss = bare(x)
        with self.trainer.autocast():
            d_loss, d_logs = loss_module(qloss, x, xrec.detach(), 1, step, split="train")
        self.trainer.backward(d_loss)
        self.optimizers["disc"].step()
        self.optimizers["disc"].zero_grad(set_to_none=True)
        return {**logs, **d_logs, "train/aeloss": ae_loss.detach(), "train/discloss": d_loss.detach()}

    def val_step(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        bare, loss = self.trainer.unwrap("model"), self.trainer.unwrap("loss")
        x = bare.get_input(batch)
        xrec, qloss = bare(x)
        step = self.trainer.step
        _, logs = loss(qloss, x, xrec, 0, step, last_layer=None, split="val")
        _, d_logs = loss(qloss, x, xrec, 1, step, split="val")
        return {**logs, **d_logs}

    def on_validation_start(self) -> None:
        self.trainer.unwrap("model").reset_code_usage()

    def validation_summary(self) -> dict[str, float]:
        usage = self.trainer.unwrap("model").code_usage()
        n_embed = self.trainer.unwrap("model").n_embed
        if usage["count"] and usage["dead_share"] >= self.collapse_share:
            log.warning("codebook collapse: only %d of %d codes used on the validation split (perplexity %.2f); "
                        "the original collapsed like this on VAS. Consider a higher learning rate warm-up, "
                        "fewer codes, or restarting from an earlier checkpoint.",
                        round(n_embed * (1 - usage["dead_share"])), n_embed, usage["perplexity"])
        return {"val/code_perplexity": usage["perplexity"], "val/dead_code_share": usage["dead_share"]}

    def log_media(self, batch, logger, step: int, split: str) -> None:
        if self.vocode is None:

            self.vocode = load_vocoder_or_griffinlim(self.cfg.vocoder.ckpt)
        bare = self.trainer.unwrap("model")
        x = bare.get_input(batch)[:2]
        xrec, _ = bare(x)
        log_spectrograms(logger, step, split, {"inputs": x, "reconstructions": xrec}, vocode=self.vocode)

    def model_args(self) -> dict[str, Any]:
        return OmegaConf.to_container(self.codebook_cfg.model, resolve=True)

    def extra_checkpoint(self) -> dict[str, Any]:
        return {"loss_args": self.trainer.unwrap("loss").config, "version": 1}

    def state_dict(self) -> dict[str, torch.Tensor]:
        model, loss = self.trainer.unwrap("model"), self.trainer.unwrap("loss")
        state = dict(model.state_dict())
        state.update({f"loss.{k}": v for k, v in loss.state_dict().items()})
        return state

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        model, loss = self.trainer.unwrap("model"), self.trainer.unwrap("loss")
        model.load_state_dict({k: v for k, v in state_dict.items() if not k.startswith("loss.")}, strict=True)
        loss.load_state_dict({k[5:]: v for k, v in state_dict.items() if k.startswith("loss.")}, strict=True)


def run(cfg: DictConfig) -> dict[str, float]:
    """`python -m stages.train_codebook`: train in the run folder (a rerun with the same overrides resumes); returns
    the last metrics."""
    return train(CodebookTask(cfg), cfg)
