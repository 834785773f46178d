"""The training loop every training stage shares, on HuggingFace Accelerate.

A stage hands a `Task` to `Trainer`. The task says what to build (modules, optimisers, data sets), what one
train step and one validation step compute, and what media to log; the trainer owns devices and processes
(one CPU process, one GPU, or several GPUs through `accelerate launch` / torchrun), mixed precision, gradient
accumulation, validation and early stopping, checkpoints (every N steps, best and last; atomic; main process
only), automatic resume from `<run>/checkpoints/last.pt`, the non-finite-loss guard and logging.

Preemption: on SIGTERM (SLURM's preemption, requeue and time limit), SIGUSR2 (submitit's early warning, asked
for with `--signal`) or SIGINT the trainer finishes the optimiser step it is in, saves `last.pt` and exits
(status 128 + signal); for SIGUSR2 it then hands over to the handler that was there before (submitit's, which
requeues the job). A requeued or rerun job resumes at that step, so a signal between checkpoints loses no step.
"""
from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipeline.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from pipeline.train.logger import Logger

log = logging.getLogger(__name__)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; training stopped and the last good checkpoint was left in place."""


class Task:
    """What one training stage trains. Subclasses fill in the hooks; the trainer calls them.

    After `build`, `self.modules` maps names to trainable modules and `self.optimizers` names to their
    optimisers (and optionally `self.schedulers`); the trainer prepares them for the devices in place, so in
    the step hooks `self.modules[name]` may be a DDP wrapper and `self.trainer.unwrap(name)` the bare module.
    """

    kind: str = "model"           # written into checkpoints; `pipeline.pretrained` dispatches on it
    monitor: str = "val/loss"     # validation metric for best.pt and early stopping
    monitor_mode: str = "min"

    def __init__(self) -> None:
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        self.trainer: Trainer | None = None

    # --- what to build -------------------------------------------------------------------------------
    def build(self) -> None:
        raise NotImplementedError

    def train_dataset(self) -> Dataset:
        raise NotImplementedError

    def val_dataset(self) -> Dataset | None:
        return None

    def collate_fn(self):
        return None

    # --- what to compute -----------------------------------------------------------------------------
    def train_step(self, batch: Any, step: int) -> Mapping[str, torch.Tensor | float]:
        """One micro-batch: losses, `self.trainer.backward(loss)`, optimiser steps. Returns scalars to log."""
        raise NotImplementedError

    def val_step(self, batch: Any) -> Mapping[str, torch.Tensor | float]:
        """Batch means of validation metrics (averaged over the whole validation set by the trainer)."""
        raise NotImplementedError

    def log_media(self, batch: Any, logger: Logger, step: int, split: str) -> None:
        """Spectrogram images and audio for one batch (main process, eval mode, no grad)."""

    def on_validation_start(self) -> None:
        """Reset any tally that validation summarises (e.g. codebook usage)."""

    def validation_summary(self) -> dict[str, float]:
        """Metrics computed over the whole validation pass rather than per batch (e.g. codebook usage)."""
        return {}

    # --- what to save --------------------------------------------------------------------------------
    def model_args(self) -> dict[str, Any]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The trained modules in the original's key layout (what `pipeline.pretrained` loads)."""
        raise NotImplementedError

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def extra_checkpoint(self) -> dict[str, Any]:
        """Anything else a loader needs (e.g. the codebook a transformer was trained with)."""
        return {}


def scaled_lr(base_lr: float, batch_size: int, grad_accum: int, num_processes: int) -> float:
    """The original's effective learning rate: accumulation x processes x batch x base (train.py)."""
    return float(base_lr) * int(batch_size) * int(grad_accum) * int(num_processes)


def _scalar(value: torch.Tensor | float) -> float:
    return float(value.detach().float().mean().item()) if torch.is_tensor(value) else float(value)


class Trainer:
    """Runs a `Task` to `max_steps` optimiser steps, resuming from `<run_dir>/checkpoints/last.pt`."""

    def __init__(self, task: Task, cfg: Mapping[str, Any], run_dir: str | Path,
                 logger_cfg: Mapping[str, Any] | None = None, config: dict | None = None, seed: int = 0,
                 batch_size: int = 1):
        from accelerate import Accelerator, DataLoaderConfiguration
        from accelerate.utils import DistributedDataParallelKwargs, set_seed

        self.task, self.cfg = task, dict(cfg)
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.config = config
        self.batch_size = int(batch_size)
        precision = str(self.cfg.get("mixed_precision", "no"))
        device = str(self.cfg.get("device", "auto"))
        if precision == "fp16" and (device == "cpu" or not torch.cuda.is_available()):
            raise ValueError("trainer.mixed_precision=fp16 needs a CUDA GPU; use bf16 or no on CPU")
        self.accelerator = Accelerator(
            cpu=device == "cpu",
            mixed_precision=precision,
            gradient_accumulation_steps=int(self.cfg.get("grad_accum", 1)),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
            kwargs_handlers=[DistributedDataParallelKwargs(
                find_unused_parameters=bool(self.cfg.get("find_unused_parameters", False)))],
        )
        self.seed = seed
        set_seed(seed)
        self.logger = Logger(logger_cfg, self.run_dir, config, enabled=self.accelerator.is_main_process)
        self.step = 0
        self.epoch = 0
        self.batches_into_epoch = 0
        self.best: float | None = None
        self.bad_evals = 0
        self.stopped_early = False
        self.stop_signal: int | None = None   # set by a preemption signal; the loop saves and exits
        task.trainer = self

    # --- helpers for tasks ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    def scaled_lr(self, base_lr: float) -> float:
        """`base_lr` scaled by this run's batch, accumulation and processes, as the original does; logged."""
        lr = scaled_lr(base_lr, self.batch_size, int(self.cfg.get("grad_accum", 1)), self.num_processes)
        log.info("learning rate %.3g (base %.3g x batch x accumulation x processes)", lr, base_lr)
        return lr

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def unwrap(self, name: str) -> nn.Module:
        return self.accelerator.unwrap_model(self.task.modules[name])

    def autocast(self):
        return self.accelerator.autocast()

    @property
    def sync_gradients(self) -> bool:
        return self.accelerator.sync_gradients

    def clip_grad(self, name: str) -> None:
        """Clip a module's gradients to `trainer.grad_clip` (off when null)."""
        limit = self.cfg.get("grad_clip")
        if limit and self.accelerator.sync_gradients:
            self.accelerator.clip_grad_norm_(self.task.modules[name].parameters(), float(limit))

    # --- the loop ------------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=train, drop_last=train,
                          num_workers=int(self.cfg.get("num_workers", 0)), generator=generator,
                          collate_fn=self.task.collate_fn(), persistent_workers=False)

    def _prepare(self) -> tuple[DataLoader, DataLoader | None]:
        task = self.task
        task.build()
        train_ds, val_ds = task.train_dataset(), task.val_dataset()
        if len(train_ds) < self.batch_size * self.num_processes:
            raise ValueError(f"the training set has {len(train_ds)} items, fewer than one batch "
                             f"({self.batch_size} x {self.num_processes} processes): lower the batch size "
                             f"or check the split files")
        names, opt_names = list(task.modules), list(task.optimizers)
        prepared = self.accelerator.prepare(*task.modules.values(), *task.optimizers.values())
        prepared = prepared if isinstance(prepared, tuple) else (prepared,)
        task.modules = dict(zip(names, prepared[:len(names)]))
        task.optimizers = dict(zip(opt_names, prepared[len(names):]))
        train_loader = self.accelerator.prepare(self._loader(train_ds, train=True))
        val_loader = self.accelerator.prepare(self._loader(val_ds, train=False)) if val_ds is not None else None
        return train_loader, val_loader

    def fit(self) -> dict[str, float]:
        """Train until `max_steps` (or `max_epochs`, or early stopping); returns the last validation metrics."""
        train_loader, val_loader = self._prepare()
        self._remove_stale_temp_files()
        self._maybe_resume()
        max_steps = int(self.cfg.get("max_steps") or 0)
        max_epochs = self.cfg.get("max_epochs")
        if not max_steps and not max_epochs:
            raise ValueError("set trainer.max_steps or trainer.max_epochs")
        max_steps = max_steps or math.inf
        val_every = int(self.cfg.get("val_every", 0) or 0)
        ckpt_every = int(self.cfg.get("ckpt_every", 0) or 0)
        log_every = max(1, int(self.cfg.get("log_every", 10)))
        metrics: dict[str, float] = {}
        running: dict[str, list[float]] = defaultdict(list)
        tic, samples = time.perf_counter(), 0
        previous_handlers = self._catch_stop_signals()
        try:
            while self.step < max_steps and not self.stopped_early:
                if max_epochs is not None and self.epoch >= int(max_epochs):
                    break
                loader = self._epoch_loader(train_loader)
                for batch in loader:
                    self.batches_into_epoch += 1
                    for module in self.task.modules.values():
                        module.train()
                    with self.accelerator.accumulate(*self.task.modules.values()):
                        logs = self.task.train_step(batch, self.step)
                    for key, value in logs.items():
                        value = _scalar(value)
                        if not math.isfinite(value):
                            raise NonFiniteLossError(
                                f"{key} = {value} at step {self.step}: training stopped; the last good "
                                f"checkpoint is left in {self.ckpt_dir} (try a lower learning rate, "
                                f"trainer.mixed_precision=no, or trainer.grad_clip)")
                        running[key].append(value)
                    samples += self.batch_size * self.num_processes
                    if not self.accelerator.sync_gradients:
                        continue
                    self.step += 1
                    if self.step % log_every == 0 or self.step == 1:
                        elapsed = time.perf_counter() - tic
                        out = {f"train/{k}" if "/" not in k else k: sum(v) / len(v) for k, v in running.items()}
                        out["train/samples_per_s"] = samples / max(elapsed, 1e-9)
                        out["epoch"] = self.epoch
                        for name, opt in self.task.optimizers.items():
                            out[f"lr/{name}"] = opt.param_groups[0]["lr"]
                        self.logger.log_metrics(out, self.step)
                        log.info("step %d %s", self.step, " ".join(f"{k}={v:.4g}" for k, v in out.items()))
                        running.clear()
                        tic, samples = time.perf_counter(), 0
                    if self.logger.media_due(self.step):
                        self._log_media(batch, "train")
                    if val_loader is not None and val_every and self.step % val_every == 0:
                        metrics = self.validate(val_loader)
                    if ckpt_every and self.step % ckpt_every == 0:
                        self.save("last.pt")
                    if self._stop_requested():
                        self.save("last.pt")
                        log.warning("stopped by %s at step %d; resume from %s", signal.Signals(self.stop_signal).name,
                                    self.step, self.ckpt_dir / "last.pt")
                        break
                    if self.step >= max_steps or self.stopped_early:
                        break
                else:
                    self.epoch += 1
                    self.batches_into_epoch = 0
                if self.stop_signal is not None:
                    break
            if self.stop_signal is not None:
                return metrics
            if val_loader is not None and (not val_every or self.step % val_every != 0):
                metrics = self.validate(val_loader)
            if not ckpt_every or self.step % ckpt_every != 0 or not (self.ckpt_dir / "last.pt").exists():
                self.save("last.pt")
        finally:
            self._restore_signal_handlers(previous_handlers)
            self.accelerator.wait_for_everyone()
            self.logger.finish()
            if self.stop_signal is not None:
                self._exit_after_stop(previous_handlers)
        return metrics

    # --- preemption ----------------------------------------------------------------------------------
    def _catch_stop_signals(self) -> dict[int, Any]:
        """Install the stop handlers (main thread only); returns the handlers they replace."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, self._on_stop_signal)
        return previous

    def _on_stop_signal(self, signum: int, frame) -> None:
        if self.stop_signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C does not wait for the checkpoint
        if self.stop_signal is None:
            log.warning("caught %s: saving a checkpoint after this step, then exiting", signal.Signals(signum).name)
            self.stop_signal = signum

    def _stop_requested(self) -> bool:
        """Whether any process caught a stop signal (all processes agree, so they save the same step)."""
        if self.num_processes > 1:
            flag = torch.tensor(int(self.stop_signal or 0), device=self.device)
            flag = int(self.accelerator.reduce(flag, "max").item())
            if flag and self.stop_signal is None:
                self.stop_signal = flag
        return self.stop_signal is not None

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _exit_after_stop(self, previous: dict[int, Any]) -> None:
        """SIGUSR2 goes on to the handler it interrupted (submitit's checkpoint-and-requeue); then exit."""
        handler = previous.get(self.stop_signal)
        if self.stop_signal == signal.SIGUSR2 and callable(handler):
            handler(self.stop_signal, None)
        if self.stop_signal == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + int(self.stop_signal))

    def _remove_stale_temp_files(self) -> None:
        """Temporary files of a checkpoint write that was killed (pipeline.io.atomic_write's `.<name>.*.tmp`)."""
        if self.accelerator.is_main_process and self.ckpt_dir.is_dir():
            for tmp in self.ckpt_dir.glob(".*.tmp"):
                log.info("removing %s, left by an interrupted checkpoint write", tmp)
                tmp.unlink(missing_ok=True)
        self.accelerator.wait_for_everyone()

    def _epoch_loader(self, loader) -> Iterable:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(self.epoch)
        if self.batches_into_epoch:
            skipped = self.batches_into_epoch
            log.info("resuming inside epoch %d: skipping its first %d batches", self.epoch, skipped)
            return self.accelerator.skip_first_batches(loader, skipped)
        return loader

    @torch.no_grad()
    def validate(self, val_loader) -> dict[str, float]:
        for module in self.task.modules.values():
            module.eval()
        self.task.on_validation_start()
        sums: dict[str, torch.Tensor] = {}
        count = torch.zeros((), device=self.device)
        first_batch = None
        for batch in val_loader:
            first_batch = batch if first_batch is None else first_batch
            logs = self.task.val_step(batch)
            n = _batch_len(batch)
            for key, value in logs.items():
                value = torch.as_tensor(_scalar(value), device=self.device, dtype=torch.float64)
                sums[key] = sums.get(key, torch.zeros((), device=self.device, dtype=torch.float64)) + value * n
            count += n
        count = self.accelerator.reduce(count, "sum")
        metrics = {k: float(self.accelerator.reduce(v, "sum") / count) for k, v in sums.items()}
        metrics.update(self.task.validation_summary())
        metrics = {k if k.startswith("val/") else f"val/{k}": v for k, v in metrics.items()}
        self.logger.log_metrics(metrics, self.step)
        log.info("validation at step %d: %s", self.step, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        if first_batch is not None and self.logger.enabled and self.logger.media_every:
            self._log_media(first_batch, "val")
        self._early_stopping(metrics)
        return metrics

    def _early_stopping(self, metrics: dict[str, float]) -> None:
        key = self.task.monitor
        if key not in metrics:
            return
        value = metrics[key]
        better = self.best is None or (value < self.best if self.task.monitor_mode == "min" else value > self.best)
        if better:
            self.best, self.bad_evals = value, 0
            self.save("best.pt")
            return
        self.bad_evals += 1
        patience = self.cfg.get("early_stop_patience")
        if patience is not None and self.bad_evals > int(patience):
            log.info("early stopping: %s has not improved for %d validations", key, self.bad_evals)
            self.stopped_early = True

    def _log_media(self, batch, split: str) -> None:
        if not self.accelerator.is_main_process:
            return
        for module in self.task.modules.values():
            module.eval()
        with torch.no_grad():
            self.task.log_media(batch, self.logger, self.step, split)

    # --- checkpoints ---------------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        task = self.task
        return {
            "kind": task.kind,
            "model_args": task.model_args(),
            "state_dict": {k: v.detach().cpu() for k, v in task.state_dict().items()},
            **task.extra_checkpoint(),
            "train_state": {
                "step": self.step,
                "epoch": self.epoch,
                "batches_into_epoch": self.batches_into_epoch,
                "best": self.best,
                "bad_evals": self.bad_evals,
                "stopped_early": self.stopped_early,
                "optimizers": {k: o.state_dict() for k, o in task.optimizers.items()},
                "schedulers": {k: s.state_dict() for k, s in task.schedulers.items()},
                "rng": rng_state(),
                "num_processes": self.num_processes,
            },
            "config": self.config,
        }

    def save(self, name: str) -> None:
        """Write `checkpoints/<name>` atomically from the main process; everyone waits for it."""
        state = self.checkpoint()
        if self.accelerator.is_main_process:
            save_checkpoint(self.ckpt_dir / name, state)
            log.info("saved %s at step %d", self.ckpt_dir / name, self.step)
        self.accelerator.wait_for_everyone()

    def _maybe_resume(self) -> None:
        path = self.ckpt_dir / "last.pt"
        if not path.exists():
            return
        ckpt = load_checkpoint(path, map_location="cpu")
        if ckpt.get("kind") != self.task.kind:
            raise ValueError(f"{path} holds a {ckpt.get('kind')} checkpoint, not a {self.task.kind}: "
                             f"this run folder belongs to another stage")
        self.task.load_state_dict(ckpt["state_dict"])
        state = ckpt["train_state"]
        for name, opt in self.task.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        for name, sched in self.task.schedulers.items():
            sched.load_state_dict(state["schedulers"][name])
        self.step, self.epoch = state["step"], state["epoch"]
        self.batches_into_epoch = state["batches_into_epoch"]
        self.best, self.bad_evals = state["best"], state["bad_evals"]
        self.stopped_early = state.get("stopped_early", False)
        set_rng_state(state["rng"])
        log.info("resumed from %s at step %d (epoch %d)", path, self.step, self.epoch)


def _batch_len(batch: Any) -> int:
    if torch.is_tensor(batch):
        return batch.shape[0]
    if isinstance(batch, Mapping):
        return _batch_len(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)):
        return _batch_len(batch[0]) if batch and not isinstance(batch[0], str) else len(batch)
    return 1
