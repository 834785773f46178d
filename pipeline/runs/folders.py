"""Run folders: what a run's folder is called, where a stage finds it, and what lies in it.

`outputs/<stage>/<dataset>/<run_name(overrides)>/` (conf/base.yaml's `hydra.run.dir`) holds `.hydra/`, the stage's
log, `run.json` (`pipeline.runs.identity`), `result.json` (RESULT_FILE), `checkpoints/{last,best}.pt`, `media/`,
`samples/` and `failures.jsonl`.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

RESULT_FILE = "result.json"  # a training run's outcome (pipeline.train.run), read by sweep summaries
CHECKPOINTS = "checkpoints"  # a training run's checkpoint folder
LAST, BEST = "last.pt", "best.pt"  # the latest checkpoint (resume) and the best by validation
MAX_NAME = 200  # characters of a run folder's name (file systems allow 255)

# Overrides that say where or how a run executes, not what it computes: they stay out of run-folder names.
# `dataset=NAME` is a folder level of its own, but keys inside it (split files, roots, features) and
# `paths.data` choose other data: they stay in the name, so different data never share a folder.
FOLDER_LEVELS = ("dataset",)
EXCLUDED_PREFIXES = ("paths.outputs", "paths.shared", "paths.models", "force_resume", "logger", "trainer", "hydra",
                     "num_workers", "shard", "num_shards",
                     "device", "resume", "overwrite", "zoo.",
                     "submit", "slurm", "action",  # the chain's: where its steps run, and what it is asked to do
                     "codebook.ckpt", "vocoder.ckpt")  # checkpoint paths: long, and chained by default


def run_name(overrides) -> str:
    """A folder name for one run, derived from the command-line overrides (`default` when there are none).

    Each kept `key=value` becomes `key-value`, sorted and joined by `+`, leaving out `FOLDER_LEVELS` (the data
    set is already a folder level) and `EXCLUDED_PREFIXES` (trainer/logger/output settings do not change what is
    computed). A value that is a path becomes its file name and a short hash of the whole path, so two split
    files of one name in different folders get different runs. No `=` or `,` appears, so a run's path can be
    passed unquoted as another stage's override (`codebook.ckpt=...`).
    Deterministic: a rerun or a SLURM requeue with the same overrides lands in the same folder and resumes.
    """
    if isinstance(overrides, str):
        overrides = [o for o in overrides.split(",") if o]
    kept = []
    for override in overrides or []:
        key, _, value = str(override).lstrip("+~").partition("=")
        if key in FOLDER_LEVELS or key.startswith(EXCLUDED_PREFIXES):
            continue
        if value in ("True", "False"):  # Hydra's sweeper writes a swept `false` back as `False`
            value = value.lower()
        if "/" in value:
            value = path_label(value)
        kept.append(f"{key}-{value}" if value else key)
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "-", "+".join(sorted(kept))).strip("-")
    if len(name) > MAX_NAME:  # cut, with a hash of the whole: two long override lists never share a folder
        name = f"{name[:MAX_NAME - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name or "default"


def path_label(path: str) -> str:
    """A path as a folder-name part: its last component and a short hash of the whole (`videos-1a2b3c4d`), so that
    two folders of one name in different places never share a folder."""
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "-", path.rstrip("/").rsplit("/", 1)[-1]).strip("-")
    return f"{name}-{hashlib.sha1(path.encode()).hexdigest()[:8]}"


def folder_label(path: str) -> str:
    """`path_label` of the absolute path (`${folder_label:${.root}}`): the same folder, named relatively or not,
    gets the same label."""
    return path_label(os.path.abspath(os.path.expanduser(str(path))))


def run_folder(given: str | Path | None = None, required: bool = True) -> Path | None:
    """A stage's run folder: `given`, else the one Hydra made for this run (`hydra.run.dir`, or a sweep job's
    subdir). Outside `@hydra.main` with none given: an error (None when not `required`)."""
    if given is not None:
        return Path(given)
    from hydra.core.hydra_config import HydraConfig

    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # HydraConfig was not set: not under @hydra.main
        if required:
            raise ValueError("no run folder: outside `python -m stages.NAME`, pass run_dir=PATH") from None
        return None


def checkpoint_dir(run_dir: str | Path) -> Path:
    """A training run's checkpoint folder."""
    return Path(run_dir) / CHECKPOINTS


def checkpoint_path(run_dir: str | Path, which: str = "best") -> Path:
    """`<run>/checkpoints/best.pt` (which="best") or `last.pt` (which="last")."""
    if which not in ("best", "last"):
        raise ValueError(f"which={which!r}: a run keeps a `best` and a `last` checkpoint")
    return checkpoint_dir(run_dir) / (BEST if which == "best" else LAST)


def stage_run_dir(outputs: str | Path, stage: str, dataset: str, overrides: Sequence[str] = ()) -> Path:
    """Where `python -m stages.<stage> dataset=<dataset> <overrides>` puts its run (conf/base.yaml's hydra.run.dir)."""
    return Path(outputs) / stage / dataset / run_name(list(overrides))


def run_checkpoint(outputs: str, stage: str, dataset: str, which: str = "best", *overrides: str) -> str:
    """The `${run_checkpoint:...}` resolver: the best (or last) checkpoint of another stage's run with `overrides`
    (none: its default run), the path every config that chains stages derives."""
    return str(checkpoint_path(stage_run_dir(outputs, stage, dataset, overrides), which))
