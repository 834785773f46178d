"""Training the mel-spectrogram classifiers (spec §6): VGGish-ish and Melception, cross-entropy, no augmentation.

Inputs are the stored [0, 1] mels, centre-cropped to 848 frames and normalised per mel bin with (x - mean) / std
(`StandardNormalizeAudio`). The statistics come from `classifier.stats` (VGGSound's file), or, when that file is
missing or null, from the training split with the original's recipe (the mean over clips of each clip's per-bin
time mean, and the mean over clips of each clip's per-bin time std), written atomically to the run folder. They
are also stored in the checkpoint, so evaluation normalises exactly as training did.

Melception: the original computed main CE + 0.4 x aux CE and then overwrote the sum with the main CE (spec
§11.13); we train on the main logits' CE only, which is what it effectively did (the aux head stays untrained).
Validation reports the loss and, over the whole split, top-1 / top-5 accuracy, mAP and mAUC (`pipeline.metrics`).

Precise BatchNorm (`classifier.bn_recalibration_batches`, 0 = off, as the original): a narrow Melception trained
for a few dozen steps keeps running statistics far from its activations' (they start at var 1 and move by 10 %
a step), so in eval mode it puts every clip in one class. With N > 0 the running statistics are re-estimated
before each validation (and so before best.pt / last.pt, which follow validations) as the plain average of N
training batches' statistics (`recalibrate_bn`); the checkpoints hold these statistics.
"""
from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from pipeline.data import SpectrogramDataset, split_ids
from pipeline.io import atomic_write
from pipeline.train import Task

log = logging.getLogger(__name__)

STATS_NAME = "train_means_stds_melspec_10s_22050hz.txt"  # the original's file name for these mels
ARCHS = ("melception", "vggishish")


# ------------------------------------------------------------------------------------- normalisation
def read_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std), each (80,), from the original's text file (80 rows of `mean std`)."""
    path = Path(path)
    try:
        table = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read normalisation statistics from {path} ({e}): expected 80 rows of "
                         f"`mean std`, as {STATS_NAME}") from e
    if table.shape[1] != 2 or (table[:, 1] <= 0).any():
        raise ValueError(f"{path}: expected rows of `mean std` with std > 0, got shape {table.shape}")
    return table[:, 0], table[:, 1]


def save_stats(path: str | Path, mean: np.ndarray, std: np.ndarray) -> None:
    """Write (mean, std) in the original's format (`%0.8f`, one mel bin per row), atomically."""
    buffer = io.StringIO()
    np.savetxt(buffer, np.stack([mean, std], axis=1), fmt="%0.8f")
    with atomic_write(path, "w") as f:
        f.write(buffer.getvalue())


def compute_stats(dataset_cfg: Mapping[str, Any], split: str, spec_len: int = 860) -> tuple[np.ndarray, np.ndarray]:
    """The original's recipe over a split's stored mels: mean of per-clip bin means, mean of per-clip bin stds."""
    ds = SpectrogramDataset(dataset_cfg, split, spec_len=spec_len, crop_len=spec_len)
    means, stds = [], []
    for i in range(len(ds)):
        mel = ds.load_mel(i).astype(np.float64)  # (80, spec_len) in [0, 1]
        means.append(mel.mean(axis=1))
        stds.append(mel.std(axis=1))
    if not means:
        raise ValueError(f"split {split!r} of data set {dataset_cfg.get('name')!r} is empty: no statistics")
    mean, std = np.mean(means, axis=0), np.mean(stds, axis=0)
    return mean, np.maximum(std, 1e-8)  # a constant bin (silence) would divide by zero


def resolve_stats(stats_path: str | None, dataset_cfg: Mapping[str, Any], split: str, out_dir: str | Path,
                  spec_len: int = 860, write: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Read `stats_path`; if it is null or missing, compute from `split` and write `<out_dir>/STATS_NAME`
    (when `write`: the main process only)."""
    if stats_path and Path(stats_path).is_file():
        log.info("normalisation statistics from %s", stats_path)
        return read_stats(stats_path)
    if stats_path:
        log.warning("normalisation statistics %s do not exist: computing them from the %s split as the "
                    "original does", stats_path, split)
    mean, std = compute_stats(dataset_cfg, split, spec_len)
    out = Path(out_dir) / STATS_NAME
    if write:
        save_stats(out, mean, std)
    log.info("normalisation statistics of the %s split written to %s", split, out)
    return mean, std


class Normalize(nn.Module):
    """[-1, 1] model image (80, T) -> (mel01 - mean_f) / std_f per mel bin (StandardNormalizeAudio)."""

    def __init__(self, mean: np.ndarray | torch.Tensor, std: np.ndarray | torch.Tensor):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean), dtype=torch.float32).view(-1, 1))
        self.register_buffer("std", torch.as_tensor(np.asarray(std), dtype=torch.float32).view(-1, 1))

    def forward(self, image: torch.Tensor, zero_one: bool = False) -> torch.Tensor:
        mel01 = image.float() if zero_one else (image.float() + 1.0) / 2.0  # (B, 80, T)
        return (mel01 - self.mean) / self.std


# ------------------------------------------------------------------------------------------ models
def build_classifier(model_cfg: Mapping[str, Any], num_classes: int) -> tuple[nn.Module, dict[str, Any]]:
    """The model and its constructor arguments (with `arch`, as our checkpoints store them)."""
    args = dict(model_cfg)
    arch = args.pop("arch", None)
    if arch not in ARCHS:
        raise ValueError(f"classifier.model.arch={arch!r} is unknown: use one of {ARCHS}")
    args["num_classes"] = int(num_classes)
    if arch == "melception":
        from models.melception import Melception

        model = Melception(**args)
    else:
        from models.vggishish import VGGishish

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
        self.optimizers = {"model": torch.optim.Adam(model.parameters(), lr=float(optim.lr), betas=tuple(optim.betas),
                                                     weight_decay=float(optim.weight_decay))}
        log.info("%s: %.2f M parameters, %d classes", self.args["arch"],
                 sum(p.numel() for p in model.parameters()) / 1e6, len(self.classes))

    def _dataset(self, split: str) -> SpectrogramDataset:
        data = self.cfg.data
        return SpectrogramDataset(self.cfg.dataset, split, spec_len=int(data.spec_len), crop_len=int(data.crop_len),
                                  random_crop=False)  # centre crop, no augmentation, as the original

    def train_dataset(self) -> SpectrogramDataset:
        return self._dataset(self.cfg.data.train_split)

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
        batches = int(self.ccfg.get("bn_recalibration_batches") or 0)
        if batches > 0:
            self.recalibrate(batches)

    def recalibrate(self, batches: int) -> None:
        """`recalibrate_bn` on up to `batches` shuffled whole training batches per process (centre crops, a
        fresh seeded draw at each step); with several processes their statistics are averaged, so every copy
        of the model and the saved checkpoint agree."""
        trainer = self.trainer
        acc = trainer.accelerator
        dataset = self.train_dataset()
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
        from pipeline.metrics import classifier_metrics

        if not self._logits:
            return {}
        metrics = classifier_metrics(torch.cat(self._logits), torch.cat(self._targets))
        return {f"val/{k}": v for k, v in metrics.items()}

    def log_media(self, batch, logger, step: int, split: str) -> None:
        from pipeline.train.logger import spectrogram_image

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

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.trainer.unwrap("model").state_dict())  # the original's names (features.* / Mixed_*)

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        self.trainer.unwrap("model").load_state_dict(state_dict, strict=True)


def train_classifier(cfg: DictConfig) -> dict[str, float]:
    """The stage: validation once per epoch unless `classifier.schedule.val_every` says otherwise, then train."""
    from accelerate import PartialState

    from pipeline.tasks.run import train

    if cfg.trainer.get("val_every") is None:
        batch = int(cfg.classifier.optim.batch_size) * PartialState().num_processes
        # drop_last, as the original
        steps_per_epoch = max(1, len(split_ids(cfg.dataset, cfg.data.train_split)) // batch)
        cfg.trainer.val_every = steps_per_epoch
        log.info("validating every epoch (%d steps)", steps_per_epoch)
    if not cfg.trainer.get("ckpt_every"):
        cfg.trainer.ckpt_every = cfg.trainer.val_every  # last.pt at every validation
    if cfg.trainer.get("max_steps") is None and cfg.trainer.get("max_epochs") is None:
        raise ValueError("set classifier.schedule.max_steps or classifier.schedule.max_epochs")
    return train(ClassifierTask(cfg), cfg)


__all__ = ["ClassifierTask", "Normalize", "build_classifier", "compute_stats", "read_stats", "recalibrate_bn",
           "resolve_stats", "save_stats", "train_classifier"]
