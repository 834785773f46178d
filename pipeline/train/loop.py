"""The training loop every training stage shares, on HuggingFace Accelerate.

A stage hands a `Task` to `Trainer`. The task says what to check first (`preflight`), what to build (modules,
optimisers, data sets) at which batch size (`batch_size`), what one train step and one validation step compute,
and what media to log; a one-module task inherits its checkpoint hooks. The trainer owns devices and processes
(one CPU process, one GPU, or several GPUs through `accelerate launch` / torchrun), mixed precision, gradient
accumulation, validation (every `val_every` steps; null: once per epoch) and early stopping, checkpoints (every
`ckpt_every` steps, null: at each validation; best and last; atomic; main process only), automatic resume from
`<run>/checkpoints/last.pt`, the non-finite-loss guard, logging and progress (`step N of TOTAL (P%, R steps/s,
H:MM:SS left)` every `log_every` steps; a tqdm bar as well on an interactive terminal).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipeline.checkpoints.format import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from pipeline.config.device import forces_cpu
from pipeline.config.schemas import TrainerSchema
from pipeline.runs.folders import BEST, LAST, checkpoint_dir
from pipeline.train.draws import TRAIN_STREAM, VAL_STREAM, SeededItems, kept_rng
from pipeline.train.logger import Logger

log = logging.getLogger(__name__)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)


def trainer_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """`trainer.*` checked against its schema (conf/trainer/, `pipeline.config.schemas.TrainerSchema`): every key
    present and typed, none unknown; the defaults are the YAML's, never repeated here."""
    node = OmegaConf.merge(OmegaConf.structured(TrainerSchema), dict(cfg))
    return OmegaConf.to_container(node, throw_on_missing=True)


def speed_up(modules: Iterable[nn.Module], settings: Mapping[str, Any]) -> None:
    """The trainer's speed options (`trainer.channels_last`, `.compile`, `.tf32`) applied in place: convolution
    weights in NHWC, each module's forward compiled (`nn.Module.compile`: the state dict keeps its keys), TF32
    for fp32 matrix products and convolutions (process-wide; on only when asked). The same calls for the loop
    and `make bench-gpu`."""
    torch.backends.cuda.matmul.allow_tf32 = bool(settings["tf32"])
    torch.backends.cudnn.allow_tf32 = bool(settings["tf32"])
    for module in modules:
        if settings["channels_last"]:
            module.to(memory_format=torch.channels_last)
        if settings["compile"]:
            module.compile()


def optimizer_options(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments every task gives its Adam / AdamW: `fused=True` with `trainer.fused_optimizer`."""
    return {"fused": True} if settings["fused_optimizer"] else {}


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; training stopped and the last good checkpoint was left in place."""


class Task:
    """What one training stage trains. Subclasses fill in the hooks; the trainer calls them.

    After `build`, `self.modules` maps names to trainable modules and `self.optimizers` names to their
    optimisers (and optionally `self.schedulers`); the trainer prepares them for the devices in place, so in
    the step hooks `self.modules[name]` may be a DDP wrapper and `self.trainer.unwrap(name)` the bare module.
    """

    kind: str = "model"           # written into checkpoints; `pipeline.build` dispatches on it
    monitor: str = "val/loss"     # validation metric for best.pt and early stopping
    monitor_mode: str = "min"
    batch_size: int = 1           # items per process and micro-batch (a task sets it from its preset's optim)

    def __init__(self) -> None:
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        self.trainer: Trainer | None = None

    # --- what to check and build --------------------------------------------------------------------------
    def preflight(self, run_dir: Path) -> None:
        """Check the config against the files (checkpoints it starts from, a run being resumed) before any work;
        called once by the trainer, first."""

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
        """The trained modules in the original's key layout (what `pipeline.build` loads); by default the
        one module's own state dict (a task of several modules says how they share the file)."""
        return dict(self.trainer.unwrap(self._only_module()).state_dict())

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        self.trainer.unwrap(self._only_module()).load_state_dict(dict(state_dict), strict=True)

    def _only_module(self) -> str:
        if len(self.modules) != 1:
            raise NotImplementedError(f"{type(self).__name__} trains {len(self.modules)} modules "
                                      f"({', '.join(self.modules)}): it must define state_dict / load_state_dict")
        return next(iter(self.modules))

    def extra_checkpoint(self) -> dict[str, Any]:
        """Anything else a loader needs (e.g. the codebook a transformer was trained with)."""
        return {}

    def train_state(self) -> dict[str, Any]:
        """What the task itself carries from step to step (tensors and plain values), saved with `train_state` so a
        resumed run continues exactly (e.g. the codebook's usage tally since its last restart)."""
        return {}

    def load_train_state(self, state: Mapping[str, Any]) -> None:
        """Restore `train_state()` when resuming."""


def scaled_lr(base_lr: float, batch_size: int, grad_accum: int, num_processes: int) -> float:
    """The original's effective learning rate: accumulation x processes x batch x base (train.py)."""
    return float(base_lr) * int(batch_size) * int(grad_accum) * int(num_processes)


def _scalar(value: torch.Tensor | float) -> float:
    return float(value.detach().float().mean().item()) if torch.is_tensor(value) else float(value)


@dataclass(frozen=True)
class Limits:
    """When a run stops and what it does on the way (trainer.*); `total_steps` counts the epoch limit in."""

    max_steps: float           # math.inf without a step limit
    max_epochs: int | None
    total_steps: float         # the step the run ends at unless it stops early (math.inf: unknown)
    val_every: int
    ckpt_every: int
    log_every: int


class Progress:
    """Where a run is: `of TOTAL (P%, R steps/s, H:MM:SS left)` after each logged step number, the running means
    of the logged metrics, and a tqdm bar on an interactive terminal (main process only; the log lines then go
    through the bar so it stays at the bottom)."""

    def __init__(self, total: float, start: int, enabled: bool = True):
        import sys

        self.total, self.step = total, start
        self.running: dict[str, list[float]] = defaultdict(list)
        self.samples, self.tic, self.tic_step = 0, time.perf_counter(), start
        self.rate: float | None = None  # optimiser steps per second over the last log interval
        self.bar = self._redirect = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self.bar = tqdm(total=None if math.isinf(total) else int(total), initial=start, unit="step",
                            dynamic_ncols=True)
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()

    def add(self, key: str, value: float) -> None:
        self.running[key].append(value)

    def advance(self, step: int) -> None:
        self.step = step
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def metrics(self, epoch: int, extra: Mapping[str, float]) -> dict[str, float]:
        """The running means since the last call, samples/s, the epoch and `extra`; starts the next interval."""
        elapsed = max(time.perf_counter() - self.tic, 1e-9)
        out = {f"train/{k}" if "/" not in k else k: sum(v) / len(v) for k, v in self.running.items()}
        out["train/samples_per_s"] = self.samples / elapsed
        out["epoch"] = epoch
        out.update(extra)
        self.rate = (self.step - self.tic_step) / elapsed
        self.running.clear()
        self.samples, self.tic, self.tic_step = 0, time.perf_counter(), self.step
        return out

    def position(self) -> str:
        """`of 600 (20%, 3.1 steps/s, 0:02:09 left)`; the parts not known yet are left out."""
        parts = []
        if not math.isinf(self.total) and self.total > 0:
            parts.append(f"{100 * self.step / self.total:.0f}%")
        if self.rate:
            parts.append(f"{self.rate:.3g} steps/s")
            if not math.isinf(self.total):
                left = max(0, round((self.total - self.step) / self.rate))
                parts.append(f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d} left")
        head = "" if math.isinf(self.total) else f"of {int(self.total)} "
        return f"{head}({', '.join(parts)})" if parts else head.strip()

    def close(self) -> None:
        if self.bar is not None:
            self._redirect.__exit__(None, None, None)
            self.bar.close()
            self.bar = None


class Trainer:
    """Runs a `Task` to `max_steps` optimiser steps, resuming from `<run_dir>/checkpoints/last.pt`."""

    def __init__(self, task: Task, cfg: Mapping[str, Any], run_dir: str | Path,
                 logger_cfg: Mapping[str, Any] | None = None, config: dict | None = None, seed: int = 0):
        from accelerate import Accelerator, DataLoaderConfiguration
        from accelerate.utils import DistributedDataParallelKwargs, set_seed

        self.task, self.cfg = task, trainer_settings(cfg)
        self.run_dir = Path(run_dir)
        task.preflight(self.run_dir)  # before any work: a wrong file or size fails here
        self.ckpt_dir = checkpoint_dir(self.run_dir)
        self.config = config
        self.batch_size = int(task.batch_size)
        precision, device = str(self.cfg["mixed_precision"]), str(self.cfg["device"])
        if precision == "fp16" and forces_cpu(device):
            raise ValueError("trainer.mixed_precision=fp16 needs a CUDA GPU; use bf16 or no on CPU")
        self.accelerator = Accelerator(
            cpu=forces_cpu(device),
            mixed_precision=precision,
            gradient_accumulation_steps=int(self.cfg["grad_accum"]),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=int(seed)),
            kwargs_handlers=[DistributedDataParallelKwargs(
                find_unused_parameters=bool(self.cfg["find_unused_parameters"]))],
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
        self.train_items: SeededItems | None = None  # the training set; its epoch seeds each item's draws
        task.trainer = self

    # --- helpers for tasks ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    def learning_rate(self, optim: Mapping[str, Any]) -> float:
        """A preset's `optim.lr`, scaled by this run's batch, accumulation and processes when `optim.scale_lr` (the
        original's rule for the codebook and the transformer); logged."""
        if not optim["scale_lr"]:
            log.info("learning rate %.3g", float(optim["lr"]))
            return float(optim["lr"])
        lr = scaled_lr(optim["lr"], self.batch_size, int(self.cfg["grad_accum"]), self.num_processes)
        log.info("learning rate %.3g (base %.3g x batch x accumulation x processes)", lr, float(optim["lr"]))
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
        limit = self.cfg["grad_clip"]
        if limit and self.accelerator.sync_gradients:
            self.accelerator.clip_grad_norm_(self.task.modules[name].parameters(), float(limit))

    # --- the loop ------------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        """Items drawing from their own seeded generator (`pipeline.train.draws.SeededItems`), in an order drawn from
        (seed, epoch) by Accelerate's seedable sampler: both follow the data position, never the global RNG."""
        items = SeededItems(dataset, self.seed, TRAIN_STREAM if train else VAL_STREAM)
        if train:
            self.train_items = items
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(items, batch_size=self.batch_size, shuffle=train, drop_last=train,
                          num_workers=int(self.cfg["num_workers"]), generator=generator,
                          collate_fn=self.task.collate_fn(), persistent_workers=False)

    def optimizer_options(self) -> dict[str, Any]:
        """What a task passes to its optimisers (`optimizer_options`)."""
        return optimizer_options(self.cfg)

    def _prepare(self) -> tuple[DataLoader, DataLoader | None]:
        task = self.task
        task.build()
        speed_up(task.modules.values(), self.cfg)
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
        limits = self._limits(train_loader)
        metrics: dict[str, float] = {}
        progress = Progress(limits.total_steps, self.step, enabled=self.accelerator.is_main_process)
        previous_handlers = self._catch_stop_signals()
        try:
            while not self._finished(limits):
                for batch in self._epoch_loader(train_loader):
                    if not self._train_batch(batch, progress):
                        continue  # accumulating gradients: no optimiser step yet
                    metrics = self._after_step(batch, val_loader, limits, progress) or metrics
                    if self.stop_signal is not None or self.step >= limits.max_steps or self.stopped_early:
                        break
                else:
                    self.epoch, self.batches_into_epoch = self.epoch + 1, 0
                if self.stop_signal is not None:
                    return metrics
            if val_loader is not None and (not limits.val_every or self.step % limits.val_every != 0):
                metrics = self.validate(val_loader)
            if not limits.ckpt_every or self.step % limits.ckpt_every != 0 or not (self.ckpt_dir / LAST).exists():
                self.save(LAST)
        finally:
            progress.close()
            self._restore_signal_handlers(previous_handlers)
            self.accelerator.wait_for_everyone()
            self.logger.finish()
            if self.stop_signal is not None:
                self._exit_after_stop(previous_handlers)
        return metrics

    def _limits(self, train_loader) -> Limits:
        max_steps = int(self.cfg["max_steps"] or 0)
        max_epochs = self.cfg["max_epochs"]
        if not max_steps and not max_epochs:
            raise ValueError("set trainer.max_steps or trainer.max_epochs")
        steps_per_epoch = math.ceil(len(train_loader) / int(self.cfg["grad_accum"]))
        total = min(max_steps or math.inf, int(max_epochs) * steps_per_epoch if max_epochs is not None else math.inf)
        val_every = self.cfg["val_every"]  # 0: only at the end; null: once per epoch
        if val_every is None:
            val_every = steps_per_epoch
            log.info("validating every epoch (%d steps)", steps_per_epoch)
        ckpt_every = self.cfg["ckpt_every"]  # 0: only at the end; null: at every validation
        return Limits(max_steps or math.inf, None if max_epochs is None else int(max_epochs), total, int(val_every),
                      int(val_every if ckpt_every is None else ckpt_every), max(1, int(self.cfg["log_every"])))

    def _finished(self, limits: Limits) -> bool:
        return (self.step >= limits.max_steps or self.stopped_early
                or (limits.max_epochs is not None and self.epoch >= limits.max_epochs))

    def _train_batch(self, batch, progress: Progress) -> bool:
        """One micro-batch through the task; whether it completed an optimiser step."""
        self.batches_into_epoch += 1
        for module in self.task.modules.values():
            module.train()
        with self.accelerator.accumulate(*self.task.modules.values()):
            logs = self.task.train_step(batch, self.step)
        for key, value in logs.items():
            value = _scalar(value)
            if not math.isfinite(value):
                raise NonFiniteLossError(f"{key} = {value} at step {self.step}: training stopped; the last good "
                                         f"checkpoint is left in {self.ckpt_dir} (try a lower learning rate, "
                                         f"trainer.mixed_precision=no, or trainer.grad_clip)")
            progress.add(key, value)
        progress.samples += self.batch_size * self.num_processes
        if not self.accelerator.sync_gradients:
            return False
        self.step += 1
        progress.advance(self.step)
        return True

    def _after_step(self, batch, val_loader, limits: Limits, progress: Progress) -> dict[str, float] | None:
        """Logging, media, validation, checkpoints and the stop-signal check due after optimiser step `self.step`;
        the validation metrics when it validated."""
        metrics = None
        if self.step % limits.log_every == 0 or self.step == 1:
            out = progress.metrics(self.epoch, {f"lr/{name}": opt.param_groups[0]["lr"]
                                                for name, opt in self.task.optimizers.items()})
            self.logger.log_metrics(out, self.step)
            shown = " ".join([progress.position(), *(f"{k}={v:.4g}" for k, v in out.items())]).strip()
            log.info("step %d %s", self.step, shown)
        if self.logger.media_due(self.step):
            self._log_media(batch, "train")
        if val_loader is not None and limits.val_every and self.step % limits.val_every == 0:
            metrics = self.validate(val_loader)
        if limits.ckpt_every and self.step % limits.ckpt_every == 0:
            self.save(LAST)
        if self._stop_requested():
            self.save(LAST)
            log.warning("stopped by %s at step %d; resume from %s", signal.Signals(self.stop_signal).name,
                        self.step, self.ckpt_dir / LAST)
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
        """Temporary files of a checkpoint write that was killed (`pipeline.files.writes.atomic_write`'s
        `.<name>.*.tmp`)."""
        if self.accelerator.is_main_process and self.ckpt_dir.is_dir():
            for tmp in self.ckpt_dir.glob(".*.tmp"):
                log.info("removing %s, left by an interrupted checkpoint write", tmp)
                tmp.unlink(missing_ok=True)
        self.accelerator.wait_for_everyone()

    def _epoch_loader(self, loader) -> Iterable:
        self.train_items.epoch = self.epoch  # before the iterator exists: loader workers copy it
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(self.epoch)
        if self.batches_into_epoch:
            skipped = self.batches_into_epoch
            log.info("resuming inside epoch %d: skipping its first %d batches", self.epoch, skipped)
            return self.accelerator.skip_first_batches(loader, skipped)
        return loader

    @torch.no_grad()
    def validate(self, val_loader) -> dict[str, float]:
        """The validation metrics (logged, early stopping, best.pt); its draws leave training's RNG as it was."""
        with kept_rng(self.device):
            metrics = self._validation_metrics(val_loader)
        self._early_stopping(metrics)
        return metrics

    def _validation_metrics(self, val_loader) -> dict[str, float]:
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
            tic = time.perf_counter()
            log.info("logging validation media at step %d ...", self.step)  # sampling a transformer takes a while
            self._log_media(first_batch, "val")
            log.info("validation media logged in %.1f s", time.perf_counter() - tic)
        return metrics

    def _early_stopping(self, metrics: dict[str, float]) -> None:
        key = self.task.monitor
        if key not in metrics:
            return
        value = metrics[key]
        better = self.best is None or (value < self.best if self.task.monitor_mode == "min" else value > self.best)
        if better:
            self.best, self.bad_evals = value, 0
            self.save(BEST)
            return
        self.bad_evals += 1
        patience = self.cfg["early_stop_patience"]
        if patience is not None and self.bad_evals > int(patience):
            log.info("early stopping: %s has not improved for %d validations", key, self.bad_evals)
            self.stopped_early = True

    def _log_media(self, batch, split: str) -> None:
        if not self.accelerator.is_main_process:
            return
        for module in self.task.modules.values():
            module.eval()
        with torch.no_grad(), kept_rng(self.device):
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
                "task": task.train_state(),
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
        path = self.ckpt_dir / LAST
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
        self.task.load_train_state(state.get("task") or {})
        log.info("resumed from %s at step %d (epoch %d)", path, self.step, self.epoch)


def _batch_len(batch: Any) -> int:
    if torch.is_tensor(batch):
        return batch.shape[0]
    if isinstance(batch, Mapping):
        return _batch_len(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)):
        return _batch_len(batch[0]) if batch and not isinstance(batch[0], str) else len(batch)
    return 1
