"""Training the mel-spectrogram classifiers (spec §6): VGGish-ish and Melception, cross-entropy, no augmentation.

Inputs are the stored [0, 1] mels, centre-cropped to 848 frames and normalised per mel bin with (x - mean) / std
(`StandardNormalizeAudio`). The statistics come from `classifier.stats` (VGGSound's file), or, when that file is
missing or null, from the training split with the original's recipe (the mean over clips of each clip's per-bin
time mean, and the mean over clips of each clip's per-bin time std), written atomically to the run folder. They
are also stored in the checkpoint, so evaluation normalises exactly as training did.

Melception: the original computed main CE + 0.4 x aux CE and then overwrote the sum with the main CE (spec
§11.13); we train on the main logits' CE only, which is what it effectively did (the aux head stays untrained).
Validation reports the loss and, over the whole split, top-1 / top-5 accuracy, mAP and mAUC
(`pipeline.evaluate.metrics`).

Precise BatchNorm (`classifier.bn_recalibration_batches`, 0 = off, as the original): a narrow Melception trained
for a few dozen steps keeps running statistics far from its activations' (they start at var 1 and move by 10 %
a step), so in eval mode it puts every clip in one class. With N > 0 the running statistics are re-estimated
before each validation (and so before best.pt / last.pt, which follow validations) as the plain average of N
training batches' statistics (`recalibrate_bn`); the checkpoints hold these statistics.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset

from models.melception import Melception
from models.vggishish import VGGishish
from pipeline.data.datasets import SpectrogramDataset
from pipeline.data.normalization import Normalize, resolve_stats
from pipeline.evaluate.metrics import classifier_metrics
from pipeline.media.images import spectrogram_image
from pipeline.train.loop import Task
from pipeline.train.run import train

log = logging.getLogger(__name__)

ARCHS = ("melception", "vggishish")


class TimeBlurred(Dataset):
    """Training mels mixed with their moving average in time: (1 - a) x + a blur_w(x), a ~ U(0, 1) and the width w
    drawn from `widths` (frames) per item, from torch's generator (`classifier.time_blur`; not in the original).
    Generated mels are blurrier than real ones (a codebook rounds every 16 x 16 patch to a code): a classifier that
    saw only real ones read a tiny codebook's faithful clicks (gaps between clicks at 0.15 instead of 0.05) as noise,
    and judges a generator by what survives a blur when trained with one."""

    def __init__(self, base: SpectrogramDataset, widths: Sequence[int]):
        if not widths or any(w < 1 or w % 2 == 0 for w in widths):
            raise ValueError(f"classifier.time_blur={list(widths)}: use odd moving-average widths in frames, e.g. "
                             f"[3, 5]")
        self.base, self.widths = base, list(widths)
        self.classes = base.classes

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.base[index])
        x = torch.as_tensor(item["image"])[None]  # (1, 80, T)
        width = self.widths[int(torch.randint(len(self.widths), ()))]
        share = float(torch.rand(()))
        blur = F.avg_pool1d(x, width, stride=1, padding=width // 2, count_include_pad=False)
        item["image"] = ((1 - share) * x + share * blur)[0].numpy()
        return item


# ------------------------------------------------------------------------------------------ models
def build_classifier(model_cfg: Mapping[str, Any], num_classes: int) -> tuple[nn.Module, dict[str, Any]]:
    """The model and its constructor arguments (with `arch`, as our checkpoints store them)."""
    args = dict(model_cfg)
    arch = args.pop("arch", None)
    if arch not in ARCHS:
        raise ValueError(f"classifier.model.arch={arch!r} is unknown: use one of {ARCHS}")
    args["num_classes"] = int(num_classes)
    if arch == "melception":

        model = Melception(**args)
    else:

        if "pool_hw" in args:
            args["pool_hw"] = tuple(args["pool_hw"])
        model = VGGishish(**args)
    return model, {"arch": arch, **args}


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Precise BatchNorm: reset every BN layer's running statistics and set them to the plain (cumulative,
    momentum=None) average over `batches` of the model's inputs, run in train mode without gradients; the
    momenta and the train/eval mode are restored. Returns the number of batches seen (0: nothing changed)."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not layers:
        return 0
    saved = [(m, m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in layers]
    was_training = model.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    seen = 0
    try:
        for x in batches:
            model(x)
            seen += 1
    finally:
        model.train(was_training)
        for m, momentum, mean, var, count in saved:
            m.momentum = momentum
            if not seen:  # no data: keep the old statistics rather than the reset (0, 1)
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
    return seen


class ClassifierTask(Task):
    """One classifier ("model"), Adam, CE on the main logits; val/loss picks best.pt and stops early."""

    kind = "classifier"
    monitor = "val/loss"
    monitor_mode = "min"

    def __init__(self, cfg: DictConfig):
        super().__init__()
        self.cfg = cfg
        self.ccfg = cfg.classifier
        self.batch_size = int(self.ccfg.optim.batch_size)
        self._logits: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    def build(self) -> None:
        train = self.train_dataset()
        self.classes = train.classes
        model, self.args = build_classifier(OmegaConf.to_container(self.ccfg.model, resolve=True), len(self.classes))
        mean, std = resolve_stats(self.ccfg.get("stats"), self.cfg.dataset, self.cfg.data.train_split,
                                  self.trainer.run_dir, int(self.cfg.data.spec_len),
                                  write=self.trainer.accelerator.is_main_process)
        self.normalize = Normalize(mean, std).to(self.trainer.device)
        optim = self.ccfg.optim
        self.modules = {"model": model}
        self.optimizers = {"model": torch.optim.Adam(model.parameters(), lr=self.trainer.learning_rate(optim),
                                                     betas=tuple(optim.betas), weight_decay=float(optim.weight_decay),
                                                     **self.trainer.optimizer_options())}
        log.info("%s: %.2f M parameters, %d classes", self.args["arch"],
                 sum(p.numel() for p in model.parameters()) / 1e6, len(self.classes))

    def _dataset(self, split: str) -> SpectrogramDataset:
        data = self.cfg.data
        return SpectrogramDataset(self.cfg.dataset, split, spec_len=int(data.spec_len), crop_len=int(data.crop_len),
                                  random_crop=False)  # centre crop, no augmentation, as the original

    def train_dataset(self) -> Dataset:
        dataset = self._dataset(self.cfg.data.train_split)
        widths = self.ccfg.get("time_blur")
        return TimeBlurred(dataset, [int(w) for w in widths]) if widths else dataset

    def val_dataset(self) -> SpectrogramDataset:
        return self._dataset(self.cfg.data.val_split)

    def _logits_of(self, model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        out = model(self.normalize(batch["image"]))
        return out.logits if isinstance(out, tuple) else out  # Melception in training: (logits, aux_logits)

    def train_step(self, batch: Mapping[str, Any], step: int) -> dict[str, torch.Tensor]:
        with self.trainer.autocast():
            out = self.modules["model"](self.normalize(batch["image"]))
        logits, aux = (out.logits, out.aux_logits) if isinstance(out, tuple) else (out, None)
        # main-logit CE only: the original's aux loss was computed and then overwritten (spec §11.13)
        loss = F.cross_entropy(logits.float(), batch["target"])
        if aux is not None:  # zero gradient (the aux head stays untrained), but DDP sees every parameter used
            loss = loss + 0.0 * aux.float().sum()
        self.trainer.backward(loss)
        self.optimizers["model"].step()
        self.optimizers["model"].zero_grad(set_to_none=True)
        accuracy = (logits.argmax(1) == batch["target"]).float().mean()
        return {"train/loss": loss.detach(), "train/accuracy_1": accuracy}

    def on_validation_start(self) -> None:
        self._logits, self._targets = [], []
        batches = int(self.ccfg.bn_recalibration_batches)
        if batches > 0:
            self.recalibrate(batches)

    def recalibrate(self, batches: int) -> None:
        """`recalibrate_bn` on up to `batches` shuffled whole training batches per process (centre crops, a
        fresh seeded draw at each step); with several processes their statistics are averaged, so every copy
        of the model and the saved checkpoint agree."""
        trainer = self.trainer
        acc = trainer.accelerator
        dataset = self._dataset(self.cfg.data.train_split)  # the clips as they are: eval mode sees them so
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(trainer.seed + trainer.step))
        per_batch = trainer.batch_size
        model = trainer.unwrap("model")  # the bare module: no DDP collectives in a process-local pass

        def inputs() -> Iterable[torch.Tensor]:
            for b in range(min(batches, len(dataset) // (per_batch * acc.num_processes))):  # whole batches only
                first = (b * acc.num_processes + acc.process_index) * per_batch
                idx = order[first:first + per_batch].tolist()
                image = torch.stack([torch.as_tensor(dataset[i]["image"]) for i in idx]).to(trainer.device)
                yield self.normalize(image)

        devices = [trainer.device] if trainer.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), trainer.autocast():  # dropout's draws leave training's RNG alone
            seen = recalibrate_bn(model, inputs())
        if acc.num_processes > 1:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                    m.running_mean.copy_(acc.reduce(m.running_mean, "mean"))
                    m.running_var.copy_(acc.reduce(m.running_var, "mean"))
        log.info("BatchNorm statistics re-estimated from %d training batches", seen * acc.num_processes)

    def val_step(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        logits = self._logits_of(self.modules["model"], batch).float()
        loss = F.cross_entropy(logits, batch["target"])
        logits_all, targets_all = self.trainer.accelerator.gather_for_metrics((logits, batch["target"]))
        self._logits.append(logits_all.cpu())
        self._targets.append(targets_all.cpu())
        return {"loss": loss}

    def validation_summary(self) -> dict[str, float]:

        if not self._logits:
            return {}
        metrics = classifier_metrics(torch.cat(self._logits), torch.cat(self._targets))
        return {f"val/{k}": v for k, v in metrics.items()}

    def log_media(self, batch, logger, step: int, split: str) -> None:

        logits = self._logits_of(self.trainer.unwrap("model"), batch)
        for i in range(min(2, logits.shape[0])):
            true, pred = self.classes[int(batch["target"][i])], self.classes[int(logits[i].argmax())]
            logger.log_image(f"{split}/input_{i}", spectrogram_image(batch["image"][i].float().cpu().numpy()), step,
                             caption=f"true {true}, predicted {pred}")

    def model_args(self) -> dict[str, Any]:
        return dict(self.args)

    def extra_checkpoint(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "version": 1,
                "normalization": {"mean": self.normalize.mean.flatten().cpu(),
                                  "std": self.normalize.std.flatten().cpu()}}



__all__ = ["ClassifierTask", "build_classifier", "recalibrate_bn"]


def run(cfg: DictConfig) -> dict[str, float]:
    """`python -m stages.train_classifier`: train in the run folder (a rerun with the same overrides resumes); returns
    the last metrics."""
    return train(ClassifierTask(cfg), cfg)
