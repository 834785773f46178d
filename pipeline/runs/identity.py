"""Which run a run folder belongs to: `<run>/run.json` holds the resolved config of the run's first start and,
per start, the git commit (with a dirty flag), host, time and SLURM job.

A later start whose config differs from the recorded one beyond what may change on resume (`RESUMABLE`: step
limits, logging, device, workers) refuses before anything is written, naming the keys: resuming would mix two
runs' work in one folder. Folders made before this record existed are checked against `last.pt`'s config.
"""
from __future__ import annotations

import fnmatch
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

from pipeline import ROOT
from pipeline.checkpoints.format import load_checkpoint
from pipeline.files.writes import save_json
from pipeline.runs.folders import checkpoint_path

RECORD = "run.json"
FORCE_KEY = "force_resume"   # conf/base.yaml; true resumes a folder whose recorded config differs
# Keys that may change between starts of one run (glob patterns over dotted keys).
RESUMABLE = ("trainer.max_steps", "trainer.max_epochs", "*.schedule.max_steps", "*.schedule.max_epochs",
             "trainer.val_every", "*.schedule.val_every",
             "trainer.log_every", "trainer.ckpt_every", "trainer.num_workers", "trainer.device", "logger", "logger.*",
             "media_samples", "vocoder.ckpt", "zoo.*", FORCE_KEY,
             "trainer.compile", "trainer.fused_optimizer", "trainer.channels_last", "trainer.tf32")  # speed only


# Keys renamed since a run could have recorded them (old spelling -> new): compared under their new names.
RENAMED = {"codebook.optim.base_learning_rate": "codebook.optim.lr",
           "transformer.optim.base_learning_rate": "transformer.optim.lr",
           "transformer.optim.early_stop_patience": "transformer.schedule.early_stop_patience"}
# Keys added since: a record made before they existed lacks them, and its run computed what their values say.
ADDED = ("*.optim.scale_lr", "*.schedule.max_epochs", "*.schedule.early_stop_patience", "trainer.max_epochs",
         "trainer.early_stop_patience", "codebook.ckpt", "vocoder.ckpt", "classifier.ckpt", "*.init_from",
         "transformer.trainable", "*.sampling.precision", "*.sampling.compile")


class RunFolderMismatch(ValueError):
    """The run folder holds another run: its recorded config differs in keys that change what is computed."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b.c": leaf} for nested mappings; lists stay whole leaves."""
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: tree}


def differing_keys(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (recorded, current)} for keys that differ and are not `RESUMABLE`."""
    old = {RENAMED.get(key, key): value for key, value in flatten(recorded).items()}
    new = flatten(current)
    missing = object()
    diff = {}
    for key in sorted(set(old) | set(new)):
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in RESUMABLE):
            continue
        a, b = old.get(key, missing), new.get(key, missing)
        if a is missing and any(fnmatch.fnmatchcase(key, pattern) for pattern in ADDED):
            continue
        if a != b:
            diff[key] = ("<absent>" if a is missing else a, "<absent>" if b is missing else b)
    return diff


def git_state(root: Path = ROOT) -> dict[str, Any]:
    """{"commit": sha or None, "dirty": whether tracked files differ from it}."""
    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30,
                                    check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def recorded_config(run_dir: Path) -> tuple[dict | None, str]:
    """The config this folder was started with and where it was read from (None for a fresh folder)."""
    import json

    record = run_dir / RECORD
    if record.exists():
        return json.loads(record.read_text())["config"], str(record)
    last = checkpoint_path(run_dir, "last")
    if last.exists():

        return load_checkpoint(last).get("config"), str(last)
    return None, ""


def check_run_folder(run_dir: str | Path, config: Mapping[str, Any]) -> dict | None:
    """Refuse (RunFolderMismatch) a start whose config differs from the folder's; returns the record (or None)."""
    import json

    run_dir = Path(run_dir)
    recorded, source = recorded_config(run_dir)
    if recorded is None:
        return None
    diff = differing_keys(recorded, config)
    if diff and not config.get(FORCE_KEY):
        shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in list(diff.items())[:12])
        more = f" (and {len(diff) - 12} more)" if len(diff) > 12 else ""
        raise RunFolderMismatch(
            f"run folder {run_dir} holds a run started with another configuration ({source}): {shown}{more}. "
            f"Resuming would mix two runs. Give this run its own folder (an override that names it, e.g. "
            f"+run_tag=NAME, or hydra.run.dir=PATH), or resume anyway with {FORCE_KEY}=true")
    return json.loads((run_dir / RECORD).read_text()) if (run_dir / RECORD).exists() else None


def record_start(run_dir: str | Path, config: Mapping[str, Any], record: dict | None) -> None:
    """Write or extend `<run>/run.json` (main process only)."""
    start = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(), **git_state(),
             "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
             "slurm_restart": int(os.environ.get("SLURM_RESTART_COUNT", 0)) if "SLURM_JOB_ID" in os.environ else None}
    if record is None or config.get(FORCE_KEY):
        record = {"config": dict(config), "starts": (record or {}).get("starts", [])}
    record["starts"].append(start)
    save_json(Path(run_dir) / RECORD, record)
