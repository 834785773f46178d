"""Any folder of videos as a data set (`dataset=folder dataset.root=DIR`, conf/dataset/folder.yaml).

Class subfolders give the labels (`DIR/<class>/**/<video>`); a folder without subfolders is one unlabelled class,
named after the folder. Any container PyAV reads, at any resolution, frame rate, length, audio rate or channel
count: the extraction stages resample everything to the clip's sizes. Nothing is written into DIR: the index,
the splits and everything extracted lie under `dataset.data` (in the outputs).

`index` probes every file once (cached by size and modification time) and writes `dataset.clips`:
- a video of at most 10 s is one clip, looped to 10 s as the original loops short clips (noted); a longer one
  gives its full 10-s windows (`clips_per_video`: all of them, or that many spread evenly), one clip each, whose
  ids say where they start (`<class>/<name>@20s`);
- a file that cannot serve is skipped with its kind and reason: unreadable (not a video PyAV opens), corrupt
  (truncated), unusable (no sound track, no picture, shorter than `min_seconds`, outside the class subfolders);
- splits are made once, per class and per video (the windows of one video stay together): the videos of a class,
  ordered by a hash of their path relative to DIR, give their first `shares.<split>` to that split and the rest to
  train. Recorded in the index, they never change: a video added later joins train (a class seen for the first
  time is split as above), so no clip ever moves to another split.

`write_splits` (after extraction) writes the split files the training stages read: every indexed clip whose mel
and features exist; the others (silent sound, a decoding error) join the skipped files, with the extraction
stage's reason, in the one manifest `dataset.skipped`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.files.writes import save_bytes, save_json
from pipeline.media.source import ClipError, check_source

INDEX_VERSION = 1
SPLIT_KEYS = ("shares", "clips_per_video", "min_seconds")  # the keys an index is made with, recorded in it


@dataclass(frozen=True)
class FolderSettings:
    """How a folder becomes clips (from conf/dataset/folder.yaml and the clip node)."""

    root: Path
    clip_seconds: float             # the models' window: 10 s
    shares: dict[str, float]        # split -> share of each class's videos (the rest: train)
    clips_per_video: int | None     # None: every full window of a long video
    min_seconds: float              # shorter videos are skipped

    @classmethod
    def from_cfg(cls, dataset_cfg: Mapping[str, Any], clip_seconds: float) -> FolderSettings:
        root = dataset_cfg.get("root")
        if root in (None, "", "???"):
            raise ValueError("dataset.root is not set: pass dataset.root=/path/to/your/videos (a folder of videos, "
                             "in class subfolders for labels)")
        root = Path(str(root)).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"dataset.root={root} is not a folder: point it at a folder of videos")
        shares = {str(k): float(v) for k, v in (dataset_cfg.get("shares") or {}).items()}
        splits = set(dataset_cfg.get("splits") or {})
        for split, share in shares.items():
            if split == "train" or split not in splits:
                raise ValueError(f"dataset.shares.{split}: not a split of dataset.splits ({sorted(splits)}) other "
                                 f"than train (train gets the rest)")
            if not 0 <= share < 1:
                raise ValueError(f"dataset.shares.{split}={share}: use a share in [0, 1)")
        if sum(shares.values()) >= 1:
            raise ValueError(f"dataset.shares {shares} add up to {sum(shares.values()):g}: leave some for train")
        per_video = dataset_cfg.get("clips_per_video")
        if per_video is not None and int(per_video) < 1:
            raise ValueError(f"dataset.clips_per_video={per_video}: use null (every window) or a count >= 1")
        min_seconds = float(dataset_cfg.get("min_seconds") or 0.0)
        if not 0 <= min_seconds <= clip_seconds:
            raise ValueError(f"dataset.min_seconds={min_seconds}: use 0 to {clip_seconds:g} s (shorter clips loop)")
        return cls(root, float(clip_seconds), shares, None if per_video is None else int(per_video), min_seconds)

    def recorded(self) -> dict[str, Any]:
        return {"shares": self.shares, "clips_per_video": self.clips_per_video, "min_seconds": self.min_seconds}


# ------------------------------------------------------------------------------------------------- listing
def list_files(root: Path) -> dict[str, list[int]]:
    """{path relative to root (posix): [size, mtime_ns]} of every file under `root`, hidden ones left out."""
    found = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            path = Path(folder) / name
            stat = path.stat()
            found[path.relative_to(root).as_posix()] = [stat.st_size, stat.st_mtime_ns]
    return dict(sorted(found.items()))


def listing_digest(files: Mapping[str, Sequence[int]]) -> str:
    """A short digest of a folder listing (names, sizes, modification times): it changes when a video is added,
    removed or replaced."""
    return hashlib.sha1(json.dumps(sorted(files.items())).encode()).hexdigest()[:16]


def path_hash(rel: str) -> str:
    """The hash that orders a class's videos for the split (of the path relative to the root: the same on every
    machine)."""
    return hashlib.sha1(rel.encode()).hexdigest()


# ------------------------------------------------------------------------------------------------- probing
def probe(path: Path) -> float:
    """Seconds of a usable video; ClipError (kind unreadable, corrupt or unusable) naming the file otherwise."""
    import av

    try:
        container = av.open(str(path))
    except Exception as error:  # noqa: BLE001 - PyAV raises several error types for what it cannot read
        raise ClipError(f"unreadable: {path} cannot be opened as a video ({type(error).__name__}: {error}): a "
                        f"truncated or corrupt file, or not a video", kind="unreadable") from None
    with container:
        if not container.streams.video:
            raise ClipError(f"no picture: {path} has no video stream", kind="unusable")
        if not container.streams.audio:
            raise ClipError(f"no sound: {path} has no audio track (a video without sound cannot teach a sound "
                            f"model)", kind="unusable")
        seconds = container.duration / 1e6 if container.duration else None
        if seconds is None:
            stream = container.streams.audio[0]
            seconds = float(stream.duration * stream.time_base) if stream.duration else None
    check_source(path)  # truncated files: their data ends before their header says
    if seconds is None:
        raise ClipError(f"unusable: {path} declares no duration", kind="unusable")
    return float(seconds)


def window_starts(seconds: float, clip_seconds: float, clips_per_video: int | None) -> list[float]:
    """Starts of a video's clips: [0] up to one window (looped when shorter), else its full windows (all, or
    `clips_per_video` of them spread evenly)."""
    full = max(1, math.floor(seconds / clip_seconds + 1e-6))
    picked = range(full)
    if clips_per_video is not None and clips_per_video < full:
        picked = sorted({round(i * (full - 1) / max(1, clips_per_video - 1)) for i in range(clips_per_video)})
    return [float(i * clip_seconds) for i in picked]


def clip_name(rel_in_class: str, suffix_needed: bool) -> str:
    """A clip's name inside its class: its path under the class folder without the extension (sub-folders joined by
    `__`), with the extension when another video of the class has the same stem."""
    path = Path(rel_in_class)
    stem = path.as_posix() if suffix_needed else path.with_suffix("").as_posix()
    return stem.replace("/", "__")


# -------------------------------------------------------------------------------------------------- index
def _classify(files: Iterable[str], root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """({rel: class}, {rel: why it has none}): class subfolders when the root has any, else one class."""
    files = list(files)
    nested = any("/" in rel for rel in files)
    if not nested:
        name = root.resolve().name or "videos"
        return {rel: name for rel in files}, {}
    labelled, outside = {}, {}
    for rel in files:
        if "/" in rel:
            labelled[rel] = rel.split("/", 1)[0]
        else:
            outside[rel] = (f"unusable: {root / rel} lies beside the class subfolders: move it into its class's "
                            f"subfolder (the folder has class subfolders, so a video's label is its subfolder)")
    return labelled, outside


def _clip_ids(label: str, name: str, starts: Sequence[float]) -> list[str]:
    """`<class>/<name>` for a video of one clip, `<class>/<name>@<start>s` for each window of a longer one."""
    return [f"{label}/{name}"] if len(starts) == 1 else [f"{label}/{name}@{start:g}s" for start in starts]


def assign_splits(by_class: Mapping[str, Sequence[str]], shares: Mapping[str, float],
                  known: Mapping[str, str]) -> dict[str, str]:
    """{video: split}. Known videos keep their split; new videos of a known class join train; the videos of a new
    class, ordered by `path_hash`, give round(n * share) (at least one when the class has two or more videos and the
    share is above 0) to each split of `shares`, in order, and the rest to train (never fewer than one)."""
    out = {}
    for label, videos in sorted(by_class.items()):
        if any(v in known for v in videos):
            out.update({v: known.get(v, "train") for v in videos})
            continue
        order = sorted(videos, key=path_hash)
        i = 0
        for split, share in shares.items():
            count = math.floor(len(order) * share + 0.5)
            if share > 0 and len(order) >= 2:
                count = max(count, 1)
            count = max(0, min(count, len(order) - 1 - i))
            out.update({v: split for v in order[i:i + count]})
            i += count
        out.update({v: "train" for v in order[i:]})
    return out


def read_index(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: index the folder first (`python -m stages.folder_dataset "
                                f"part=index dataset=folder dataset.root=...`, or run `python -m stages.chain`)")
    return json.loads(path.read_text())


def index(dataset_cfg: Mapping[str, Any], clip_seconds: float, log=print) -> dict[str, Any]:
    """Probe the folder (new or changed files only), make the clips and the splits, write `dataset.clips`."""
    settings = FolderSettings.from_cfg(dataset_cfg, clip_seconds)
    out = Path(str(dataset_cfg["clips"]))
    old = json.loads(out.read_text()) if out.is_file() else {}
    now = json.loads(json.dumps(settings.recorded()))
    if old and old.get("settings") != now:
        then = old["settings"]
        changed = "; ".join(f"dataset.{k}: {then.get(k)} there, {now[k]} now" for k in SPLIT_KEYS
                            if then.get(k) != now[k])
        raise ValueError(f"{out} was made with other settings ({changed}): clips and splits are made once. Keep "
                         f"the recorded values, or delete {out.parent} to index the folder anew")
    files = list_files(settings.root)
    cached = old.get("videos", {})
    labelled, outside = _classify(files, settings.root)
    videos: dict[str, dict[str, Any]] = {}
    probed = 0
    for rel, (size, mtime) in files.items():
        entry = cached.get(rel)
        if entry and entry.get("size") == size and entry.get("mtime_ns") == mtime and rel not in outside:
            videos[rel] = entry
            continue
        entry = {"size": size, "mtime_ns": mtime, "seconds": None, "skipped": None}
        if rel in outside:
            entry["skipped"] = {"kind": "unusable", "reason": outside[rel]}
        else:
            probed += 1
            try:
                entry["seconds"] = probe(settings.root / rel)
                if entry["seconds"] < settings.min_seconds:
                    raise ClipError(f"too short: {settings.root / rel} lasts {entry['seconds']:.2f} s < "
                                    f"dataset.min_seconds={settings.min_seconds:g}", kind="unusable")
            except ClipError as error:
                entry["skipped"] = {"kind": error.kind, "reason": str(error)}
        videos[rel] = entry
    usable = {rel: labelled[rel] for rel, e in videos.items() if not e["skipped"]}
    by_class: dict[str, list[str]] = {}
    for rel, label in usable.items():
        by_class.setdefault(label, []).append(rel)
    known = {rel: e["split"] for rel, e in cached.items() if e.get("split")}
    splits = assign_splits(by_class, settings.shares, known)
    taken = {c for rel, e in cached.items() if rel in usable for c in e.get("clips", [])}
    clips: dict[str, dict[str, Any]] = {}
    for rel in sorted(usable, key=lambda r: (r not in cached, r)):  # known videos keep their ids first
        label, entry = usable[rel], videos[rel]
        entry["split"] = splits[rel]
        starts = window_starts(entry["seconds"], settings.clip_seconds, settings.clips_per_video)
        if rel in cached and cached[rel].get("clips") and len(cached[rel]["clips"]) == len(starts):
            ids = cached[rel]["clips"]
        else:
            in_class = rel.split("/", 1)[1] if "/" in rel else rel
            ids = _clip_ids(label, clip_name(in_class, False), starts)
            if taken.intersection(ids):  # another video of the class has this stem (a.mp4 beside a.mkv)
                ids = _clip_ids(label, clip_name(in_class, True), starts)
            taken.update(ids)
        entry["clips"] = ids
        entry["note"] = (f"{entry['seconds']:.2f} s < {settings.clip_seconds:g} s: looped to {settings.clip_seconds:g} "
                         f"s, as the original loops short clips" if entry["seconds"] < settings.clip_seconds else None)
        for clip, start in zip(ids, starts):
            clips[clip] = {"video": rel, "start": start, "split": entry["split"], "label": label}
    for rel, entry in videos.items():
        if entry["skipped"]:
            entry.pop("split", None)
            entry.pop("clips", None)
    record = {"version": INDEX_VERSION, "root": str(settings.root.resolve()), "settings": settings.recorded(),
              "listing": listing_digest(files), "clip_seconds": settings.clip_seconds,
              "classes": sorted(by_class), "videos": videos, "clips": dict(sorted(clips.items()))}
    save_json(out, record)
    skipped = {rel: e["skipped"] for rel, e in videos.items() if e["skipped"]}
    looped = sum(1 for e in videos.values() if e.get("note"))
    counts = {s: sum(1 for c in clips.values() if c["split"] == s) for s in ("train", *settings.shares)}
    log(f"[folder] {settings.root}: {len(files)} files ({probed} probed now), {len(usable)} videos in "
        f"{len(by_class)} class(es) -> {len(clips)} clips ({', '.join(f'{n} {s}' for s, n in counts.items())}); "
        f"{looped} shorter than {settings.clip_seconds:g} s (looped); {len(skipped)} skipped")
    for rel, why in skipped.items():
        log(f"  skipped {rel}: {why['reason']}")
    log(f"  index: {out}")
    return record


# ------------------------------------------------------------------------------------------------- splits
def _latest_failures(paths: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """clip id -> its latest extraction failure record, over the given failures.jsonl files."""
    latest: dict[str, dict[str, Any]] = {}
    for path in paths:
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    record = json.loads(line)
                    latest[record["item"]] = {**record, "from": str(path)}
    return latest


def write_splits(dataset_cfg: Mapping[str, Any], outputs_of, failure_files: Iterable[Path], log=print
                 ) -> dict[str, list[str]]:
    """Split files of the usable clips (every output of `outputs_of(clip id)` present), and `dataset.skipped`: the
    index's skipped files plus the clips extraction could not make, each with its reason."""
    record = read_index(dataset_cfg["clips"])
    failures = _latest_failures(failure_files)
    skipped = [{"file": rel, "kind": e["skipped"]["kind"], "reason": e["skipped"]["reason"], "step": "index"}
               for rel, e in record["videos"].items() if e["skipped"]]
    rows: dict[str, list[str]] = {split: [] for split in dataset_cfg["splits"]}
    for clip, entry in record["clips"].items():
        missing = [p for p in outputs_of(clip) if not Path(p).exists()]
        if not missing:
            rows.setdefault(entry["split"], []).append(clip)
            continue
        failure = failures.get(clip)
        reason = failure["reason"] if failure else f"not extracted: {missing[0]} does not exist"
        skipped.append({"file": entry["video"], "clip": clip, "kind": failure.get("kind", "error") if failure
                        else "missing", "reason": reason,
                        "step": Path(failure["from"]).parent.name if failure else "extraction"})
    if not any(rows.values()):
        raise RuntimeError(f"no clip of {record['root']} has its mel and features: run the extraction stages "
                           f"first (skipped files and reasons: {dataset_cfg['skipped']})")
    for split, ids in rows.items():
        if split not in dataset_cfg["splits"]:
            raise ValueError(f"the index has clips of split {split!r}, which dataset.splits does not name")
        save_bytes(dataset_cfg["splits"][split], "".join(f"{i}\n" for i in sorted(ids)).encode())
    save_json(dataset_cfg["skipped"], {"root": record["root"], "skipped": skipped})
    classes = sorted({record["clips"][c]["label"] for ids in rows.values() for c in ids})
    log(f"[folder] splits of {len(classes)} class(es): " + ", ".join(f"{split} {len(ids)}" for split, ids in
                                                                     rows.items()))
    for row in skipped:
        log(f"  skipped {row['file']}{' (' + row['clip'] + ')' if row.get('clip') else ''} [{row['kind']}, "
            f"{row['step']}]: {row['reason']}")
    log(f"  skipped files and reasons: {dataset_cfg['skipped']}")
    return rows
