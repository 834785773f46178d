"""Run a training task from a stage's Hydra config: the run folder (held by one process: pipeline.runs.lock; its
identity checked and recorded in run.json, its outcome in result.json), seeding, logging, the trainer."""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline.files.writes import save_json
from pipeline.runs.folders import RESULT_FILE, checkpoint_path, run_folder
from pipeline.runs.identity import check_run_folder, record_start
from pipeline.runs.lock import hold_run_folder
from pipeline.runs.outcomes import Outcomes, say
from pipeline.train.loop import Task, Trainer

log = logging.getLogger(__name__)


def train(task: Task, cfg: DictConfig) -> dict[str, float]:
    """Train `task` (at its own batch size) under `cfg.trainer` in the Hydra run folder; prints where the
    checkpoints are."""
    if OmegaConf.select(cfg, f"{task.kind}.ckpt", default=None) is not None:
        raise ValueError(f"{task.kind}.ckpt={cfg[task.kind].ckpt}: that key gives the chain a trained {task.kind} "
                         f"instead of training one; this stage trains one: drop it (or use it in the later stages)")
    folder = run_folder()
    with hold_run_folder(folder):  # a second process on this folder refuses here, naming the holder
        return _train(task, cfg, folder)


def _train(task: Task, cfg: DictConfig, folder: Path) -> dict[str, float]:
    config = OmegaConf.to_container(cfg, resolve=True)
    record = check_run_folder(folder, config)  # every process refuses a folder that holds another run
    trainer = Trainer(task, OmegaConf.to_container(cfg.trainer, resolve=True), folder,
                      logger_cfg=OmegaConf.to_container(cfg.logger, resolve=True),
                      config=config, seed=int(cfg.seed))
    if trainer.accelerator.is_main_process:
        record_start(folder, config, record)
    metrics = trainer.fit()
    if trainer.accelerator.is_main_process:
        best, last = checkpoint_path(folder, "best"), checkpoint_path(folder, "last")
        save_json(Path(folder) / RESULT_FILE, {
            "step": trainer.step, "metrics": metrics, "stopped_early": trainer.stopped_early,
            "best": str(best) if best.exists() else None, "last": str(last) if last.exists() else None})
        say(f"[{task.kind}] step {trainer.step}; " + " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
        done = Outcomes(task.kind)
        for path in (best, last, Path(folder) / RESULT_FILE):
            if path.exists():
                done.written(path)
        done.finish()
    return metrics
