"""Where a clip's files lie and what its label is, for the two on-disk layouts (spec §8).

VAS layout (VAS and the generated demo set): split rows are `<class>/<id>`, files lie under
`<features>/<class>/<kind>/<id>...`. VGGSound layout: split rows are clip ids `<YTID>_<start_ms>_<end_ms>`,
files lie under `<features>/<kind>/<clip>...`, labels come from the headerless `vggsound.csv`.
A data set with a clip index (`dataset.clips`: a folder of videos, pipeline/data/folder.py) says there where each
clip's video lies and where in it the clip starts (`clip_source`).
"""
from __future__ import annotations

import csv
import functools
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

MEL_FOLDER = "melspec_10s_22050hz"  # the only mel folder name the original accepts
LAYOUTS = ("vas", "vggsound")


def _get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = cfg.get(key, default)
    return default if value is None else value


def layout_of(dataset_cfg: Mapping[str, Any]) -> str:
    layout = dataset_cfg.get("layout")
    if layout not in LAYOUTS:
        raise ValueError(f"dataset.layout={layout!r} is unknown: use one of {LAYOUTS}")
    return layout


def kind_path(dataset_cfg: Mapping[str, Any], kind: str, clip_id: str, suffix: str) -> Path:
    """`<features>/<class>/<kind>/<id><suffix>` (VAS) or `<features>/<kind>/<clip><suffix>` (VGGSound)."""
    features = Path(str(dataset_cfg["features"]))
    if layout_of(dataset_cfg) == "vas":
        if "/" not in clip_id:
            raise ValueError(f"clip id {clip_id!r} has no class: VAS-layout split rows are `<class>/<id>`")
        label, name = clip_id.split("/", 1)
        return features / label / kind / f"{name}{suffix}"
    return features / kind / f"{clip_id}{suffix}"


def mel_path(dataset_cfg: Mapping[str, Any], clip_id: str) -> Path:
    """The (80, 860) mel spectrogram in [0, 1] of a clip (`<id>_mel.npy`)."""
    return kind_path(dataset_cfg, MEL_FOLDER, clip_id, "_mel.npy")


def audio_path(dataset_cfg: Mapping[str, Any], clip_id: str) -> Path:
    """The 10-s 22050-Hz waveform (220500 samples) stored next to the mel (`<id>_audio.npy`)."""
    return kind_path(dataset_cfg, MEL_FOLDER, clip_id, "_audio.npy")


def feature_path(dataset_cfg: Mapping[str, Any], folder: str, clip_id: str) -> Path:
    """One feature stream of a clip (`<folder>/<id>.pkl`, a pickled (T, D) array)."""
    return kind_path(dataset_cfg, folder, clip_id, ".pkl")


def split_ids(dataset_cfg: Mapping[str, Any], split: str) -> list[str]:
    """Clip ids of `split` (a key of dataset.splits), in file order."""
    splits = dataset_cfg.get("splits") or {}
    if split not in splits:
        raise KeyError(f"split {split!r} is not in dataset.splits ({sorted(splits)}) of data set "
                       f"{dataset_cfg.get('name')!r}")
    return read_split(str(splits[split]))


def read_vggsound_csv(path: str | os.PathLike) -> dict[str, str]:
    """YouTube id -> label from the headerless `vggsound.csv` (YTID, start_seconds, label, split).

    Labels with commas are quoted with `"`. An id on several rows keeps the label of the last row,
    as the original's dict does.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: VGGSound labels come from dataset.meta_csv "
                                f"(vggsound.csv from the VGGSound site, placed at that path)")
    labels: dict[str, str] = {}
    with open(path, newline="") as f:
        for line, row in enumerate(csv.reader(f, quotechar='"'), start=1):
            if not row:
                continue
            if len(row) < 3:
                raise ValueError(f"{path}:{line}: expected `YTID,start_seconds,label,split`, got {row!r}")
            labels[row[0].strip()] = row[2].strip()
    if not labels:
        raise ValueError(f"{path} has no rows: expected headerless `YTID,start_seconds,label,split` rows")
    return labels


class Labels:
    """Class names (sorted -> targets) and each clip's label, for either layout.

    VAS layout: `dataset.classes` when given, else the sorted classes of every split file (one mapping for all
    splits, so a class missing from one split cannot shift the targets of another; the original built it per
    split, which gives the same mapping whenever every split has every class). VGGSound: `dataset.classes`
    when given, else the sorted unique labels of `dataset.meta_csv`; a clip's label comes from its first 11
    characters (the YouTube id).
    """

    def __init__(self, dataset_cfg: Mapping[str, Any]):
        self.layout = layout_of(dataset_cfg)
        self._by_ytid: dict[str, str] = {}
        classes = dataset_cfg.get("classes")
        if self.layout == "vggsound":
            meta = dataset_cfg.get("meta_csv")
            if meta:
                self._by_ytid = read_vggsound_csv(str(meta))
            elif not classes:
                raise ValueError("dataset.meta_csv is not set: VGGSound-layout labels need vggsound.csv")
            if not classes:
                classes = sorted(set(self._by_ytid.values()))
        elif not classes:
            ids: list[str] = []
            for split in (dataset_cfg.get("splits") or {}):
                ids += split_ids(dataset_cfg, split)
            classes = sorted({self._vas_label(i) for i in ids})
        self.classes: list[str] = [str(c) for c in classes]
        self.target_of: dict[str, int] = {c: t for t, c in enumerate(self.classes)}

    @staticmethod
    def _vas_label(clip_id: str) -> str:
        if "/" not in clip_id:
            raise ValueError(f"clip id {clip_id!r} has no class: VAS-layout split rows are `<class>/<id>`")
        return clip_id.split("/", 1)[0]

    def label(self, clip_id: str) -> str:
        if self.layout == "vas":
            return self._vas_label(clip_id)
        try:
            return self._by_ytid[clip_id[:11]]
        except KeyError:
            raise KeyError(f"clip {clip_id!r}: YouTube id {clip_id[:11]!r} is not in dataset.meta_csv"
                           ) from None

    def target(self, clip_id: str) -> int:
        label = self.label(clip_id)
        try:
            return self.target_of[label]
        except KeyError:
            more = "..." if len(self.classes) > 10 else ""
            raise KeyError(f"clip {clip_id!r} has label {label!r}, which is not in the classes "
                           f"{self.classes[:10]}{more}: check dataset.classes") from None


def require_files(paths: Iterable[Path], what: str, fix: str) -> None:
    """Raise one error listing how many of `paths` are missing and the first few, with the fix."""
    missing = [p for p in paths if not p.exists()]
    if missing:
        shown = "\n  ".join(str(p) for p in missing[:5])
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileNotFoundError(f"{len(missing)} {what} missing:\n  {shown}{more}\n{fix}")


def read_split(path: str | os.PathLike) -> list[str]:
    """Clip ids of a split file, one per line (blank lines ignored)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"split file {path} does not exist: check dataset.splits in the config")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def video_path(videos_dir: str | os.PathLike, clip_id: str, layout: str) -> Path:
    """Where a clip's video lies: `<videos>/<class>/<id>.mp4` (VAS layout) or `<videos>/<id>.mp4` (VGGSound)."""
    if layout not in ("vas", "vggsound"):
        raise ValueError(f"unknown dataset layout {layout!r}: use 'vas' or 'vggsound'")
    return Path(videos_dir) / f"{clip_id}.mp4"


@functools.lru_cache(maxsize=4)
def _clip_index(path: str, mtime_ns: int) -> dict[str, dict[str, Any]]:
    return json.loads(Path(path).read_text())["clips"]


def clip_index(dataset_cfg: Mapping[str, Any]) -> dict[str, dict[str, Any]] | None:
    """{clip id: {"video", "start", "split", "label"}} of a data set with a clip index (`dataset.clips`), else None."""
    table = dataset_cfg.get("clips")
    if not table:
        return None
    path = Path(str(table))
    if not path.is_file():
        raise FileNotFoundError(f"dataset.clips={path} does not exist: index the folder first (`python -m "
                                f"stages.folder_dataset part=index dataset.root=...`, or `python -m stages.chain`)")
    return _clip_index(str(path), path.stat().st_mtime_ns)


def clip_source(dataset_cfg: Mapping[str, Any], clip_id: str) -> tuple[Path, float]:
    """(video file, start in seconds) of a clip: from the clip index when the data set has one, else
    `video_path` at 0."""
    index = clip_index(dataset_cfg)
    if index is None:
        return video_path(dataset_cfg["videos"], clip_id, layout_of(dataset_cfg)), 0.0
    if clip_id not in index:
        raise KeyError(f"clip {clip_id!r} is not in the clip index {dataset_cfg['clips']}: index the folder again")
    entry = index[clip_id]
    return Path(str(dataset_cfg["videos"])) / entry["video"], float(entry["start"])
