"""OmegaConf resolvers, the config schemas and run-folder naming shared by every stage.

Importing this module registers the resolvers and the schemas (`pipeline.schemas`), so every stage imports it
before `@hydra.main` composes.
"""
from __future__ import annotations

import hashlib
import re

from omegaconf import OmegaConf

from pipeline.schemas import register as register_schemas

# Overrides that say where or how a run executes, not what it computes: they stay out of run-folder names.
# `dataset=NAME` is a folder level of its own, but keys inside it (split files, roots, features) and
# `paths.data` choose other data: they stay in the name, so different data never share a folder.
FOLDER_LEVELS = ("dataset",)
EXCLUDED_PREFIXES = ("paths.outputs", "paths.shared", "paths.models", "force_resume", "logger", "trainer", "hydra",
                     "num_workers", "shard", "num_shards",
                     "device", "resume", "overwrite", "zoo.",
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
            value = f"{value.rstrip('/').rsplit('/', 1)[-1]}-{hashlib.sha1(value.encode()).hexdigest()[:8]}"
        kept.append(f"{key}-{value}" if value else key)
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "-", "+".join(sorted(kept))).strip("-")
    return name[:200] or "default"


def register_resolvers() -> None:
    resolvers = {
        "run_name": run_name,
        "sum": lambda *xs: sum(xs),
        "floordiv": lambda a, b: a // b,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()
register_schemas()
