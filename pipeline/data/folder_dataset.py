"""The `folder_dataset` stage: a folder of videos as a data set (pipeline/data/folder.py).

    python -m stages.folder_dataset dataset.root=DIR part=index    the clips, their splits and the skipped files
    python -m stages.folder_dataset dataset.root=DIR part=splits   after extraction: the split files of usable clips

`python -m stages.chain` runs both around the extraction stages.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.data.folder import index, write_splits
from pipeline.data.layout import feature_path, mel_path

PARTS = ("index", "splits")


def run(cfg: DictConfig) -> Any:
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    if not dataset.get("clips"):
        raise ValueError(f"dataset={dataset.get('name')} has no clip index (dataset.clips): folder_dataset indexes "
                         f"a folder of videos, use dataset=folder dataset.root=DIR")
    if cfg.part == "index":
        return index(dataset, clip_seconds=int(cfg.clip.length) / int(cfg.clip.sample_rate))
    if cfg.part == "splits":
        folders = [str(f) for f in cfg.features.folders]

        def outputs(clip_id: str) -> list[Path]:
            return [mel_path(dataset, clip_id), *(feature_path(dataset, f, clip_id) for f in folders)]

        failures = sorted(Path(str(dataset["runs"])).glob("**/failures.jsonl"))
        return write_splits(dataset, outputs, failures)
    raise ValueError(f"part={cfg.part!r}: use one of {PARTS}")
