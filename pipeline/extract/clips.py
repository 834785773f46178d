"""Data-set scale extraction: list clips, shard, skip finished ones, run in parallel, record failures.

Shared by `extract_mels` and `extract_features`. A stage gives a list of `Clip`s (where each clip's outputs
go) and a function that processes one clip and writes its outputs atomically. A clip whose outputs all exist
is skipped, so an interrupted or requeued job (or an array task of a rerun) does only what is missing.

Before a clip is processed its source is checked: absent ("missing"), unreadable or truncated ("corrupt": an
mp4 whose header declares 10 s but whose data ends at 4.9 s is not looped as if it were a short clip). A clip
that fails with `ClipError` or any other exception goes into the run's `failures.jsonl` with its reason, its
kind and the attempt (time, host, SLURM job) and the run goes on: every shard and every rerun of a run appends
to that one file, one record per clip and attempt. An output folder that cannot be written fails at start.
"""
from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import socket
import tempfile
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from omegaconf import OmegaConf
from tqdm import tqdm

from pipeline.data.layout import clip_index, read_split, video_path
from pipeline.files.writes import FailureManifest
from pipeline.media.source import ClipError, check_source
from pipeline.runs.outcomes import say

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Clip:
    """One clip: `id` as in split files (`dog/video_02677` for VAS, the clip id for VGGSound); its `source` video,
    where in it the clip starts (`start`, s: a window of a longer video) and the files it gives."""

    id: str
    source: Path
    outputs: tuple[Path, ...] = field(default=())
    start: float = 0.0

    @property
    def name(self) -> str:
        return self.id.rsplit("/", 1)[-1]

    @property
    def label(self) -> str | None:
        return self.id.split("/", 1)[0] if "/" in self.id else None

    def done(self) -> bool:
        return bool(self.outputs) and all(p.exists() for p in self.outputs)


@dataclass
class Summary:
    processed: int = 0
    skipped: int = 0
    failed: int = 0
    failures_path: Path | None = None
    kinds: dict[str, int] = field(default_factory=dict)  # failures by kind (missing, corrupt, ...)

    def __str__(self) -> str:
        text = f"{self.processed} written, {self.skipped} skipped (already there), {self.failed} failed"
        if self.failed:
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.kinds.items()))
            text += f" ({kinds}); reasons in {self.failures_path}"
        return text


def check_writable(clips: Iterable[Clip]) -> None:
    """Fail before any work when an output folder cannot be written (probed at its nearest existing parent)."""
    folders = {p.parent for clip in clips for p in clip.outputs}
    probed: set[Path] = set()
    for folder in sorted(folders):
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if existing in probed:
            continue
        probed.add(existing)
        try:
            if not existing.is_dir():
                raise NotADirectoryError(f"{existing} is a file")
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as error:
            raise PermissionError(f"output folder {folder} cannot be written ({error}): fix its permissions or "
                                  f"point the stage's output (features_dir / dataset.features) elsewhere") from None


def attempt() -> dict[str, Any]:
    """Who is trying now: recorded with each failure, so reruns and array tasks stay apart."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{job}_{os.environ.get('SLURM_ARRAY_TASK_ID')}" if job else os.environ.get("SLURM_JOB_ID")
    return {"id": uuid.uuid4().hex[:12], "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": socket.gethostname(), "pid": os.getpid(), "slurm_job": job}


def _checked(process: Callable[[Clip], None], clip: Clip) -> None:
    check_source(clip.source)
    process(clip)


def list_clips(
    videos_dir: str | os.PathLike,
    layout: str,
    split_file: str | os.PathLike | None = None,
    outputs: Callable[[str], Sequence[Path]] = lambda clip_id: (),
) -> list[Clip]:
    """Clips named by a split file, or every video under `videos_dir` when no split file is given; none is an
    error naming the split file or the folder (an empty extraction is never a success)."""
    videos_dir = Path(videos_dir)
    if split_file:
        ids = read_split(split_file)
        if not ids:
            raise EmptySplit(f"the split file {split_file} lists no clips: nothing to extract (fix the split file "
                             f"or pick another split)")
    else:
        if not videos_dir.is_dir():
            raise FileNotFoundError(f"videos folder {videos_dir} does not exist: check dataset.videos")
        pattern = "*/*.mp4" if layout == "vas" else "*.mp4"
        ids = sorted(str(p.relative_to(videos_dir).with_suffix("")) for p in videos_dir.glob(pattern))
        if not ids:
            raise EmptySplit(f"no videos ({pattern}) under {videos_dir}: nothing to extract (check dataset.videos)")
    return [Clip(i, video_path(videos_dir, i, layout), tuple(outputs(i))) for i in ids]


def dataset_clips(
    dataset_cfg: dict[str, Any],
    split_file: str | os.PathLike | None = None,
    outputs: Callable[[str], Sequence[Path]] = lambda clip_id: (),
) -> list[Clip]:
    """The clips of a data set config: from its clip index (`dataset.clips`: videos and starts) when it has one,
    else `list_clips` of its videos folder; only those of `split_file` when given."""
    index = clip_index(dataset_cfg)
    if index is None:
        return list_clips(dataset_cfg["videos"], dataset_cfg["layout"], split_file, outputs)
    ids = read_split(split_file) if split_file else sorted(index)
    if not ids:
        raise EmptySplit(f"{split_file or dataset_cfg['clips']} lists no clips: nothing to extract")
    unknown = [i for i in ids if i not in index]
    if unknown:
        raise KeyError(f"{len(unknown)} clip(s) of {split_file} are not in the clip index {dataset_cfg['clips']}, "
                       f"e.g. {unknown[0]!r}: index the folder again")
    videos = Path(str(dataset_cfg["videos"]))
    return [Clip(i, videos / index[i]["video"], tuple(outputs(i)), float(index[i]["start"])) for i in ids]


class EmptySplit(ValueError):
    """A split file that lists no clips, or a videos folder without videos."""


def split_file_of(cfg) -> str | None:
    """The split file of an extraction stage's `split` (null: every video under dataset.videos)."""
    if cfg.get("split") is None:
        return None
    splits = cfg.dataset.get("splits") or {}
    if cfg.split not in splits:
        raise ValueError(f"split={cfg.split!r} is not in dataset.splits ({sorted(splits)}); use one of them, or "
                         "split=null for every video under dataset.videos")
    return str(splits[cfg.split])


def check_inputs(cfg) -> None:
    """The extraction stages' inputs, before any work (pipeline.config.check.StageChecks): the split file (or the
    videos folder) lists clips, and the feature network's weights file exists."""
    dataset_clips(OmegaConf.to_container(cfg.dataset, resolve=True), split_file_of(cfg))
    weights = cfg.get("features", {}).get("weights") if cfg.get("features") is not None else None
    if weights not in (None, "random", "packaged", "???") and not Path(str(weights)).expanduser().is_file():
        raise FileNotFoundError(f"features.weights={weights}: no such file (the {cfg.features.name} network's "
                                f"weights; `random` for tests only)")


def finish(stage: str, summary: Summary, where: str = "", fail_on_clip_errors: bool = True) -> None:
    """Say what an extraction did (screen and log file); exit non-zero with that line when any clip failed (unless
    `fail_on_clip_errors` is false: the chain skips such clips, listed with their reasons)."""
    line = f"[{stage}] {summary}" + (f". {where}" if where else "")
    say(line, logging.WARNING if summary.failed else logging.INFO)
    if summary.failed and fail_on_clip_errors:
        raise SystemExit(line)


def shard(items: Sequence, index: int, count: int) -> list:
    """Every `count`-th item starting at `index`, so an array job of `count` tasks covers a data set once."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard={index} num_shards={count}: need 0 <= shard < num_shards")
    return list(items[index::count])


def run_clips(
    clips: Iterable[Clip],
    process: Callable[[Clip], None],
    failures_path: str | os.PathLike,
    num_workers: int = 0,
    desc: str = "clips",
) -> Summary:
    """Run `process` on every unfinished clip (after `check_source`); `num_workers` > 0 uses that many processes."""
    manifest = FailureManifest(failures_path)
    summary = Summary(failures_path=manifest.path)
    todo = []
    for clip in clips:
        if clip.done():
            summary.skipped += 1
        else:
            todo.append(clip)
    check_writable(todo)
    this_attempt = attempt()
    process = functools.partial(_checked, process)

    def record(clip: Clip, error: BaseException | None) -> None:
        if error is None:
            summary.processed += 1
            return
        summary.failed += 1
        reason = str(error) if isinstance(error, ClipError) else f"{type(error).__name__}: {error}"
        kind = error.kind if isinstance(error, ClipError) else "error"
        summary.kinds[kind] = summary.kinds.get(kind, 0) + 1
        say(f"[{desc}] failed: {clip.id} ({clip.source}): {reason}", logging.WARNING)
        manifest.add(clip.id, reason, kind=kind, source=str(clip.source), attempt=this_attempt)

    bar = tqdm(total=len(todo), desc=desc, unit="clip", dynamic_ncols=True)
    if not todo:
        say(f"[{desc}] all {summary.skipped} clip(s) of this shard are there already: skipped")
    if num_workers <= 0:
        for clip in todo:
            try:
                process(clip)
                record(clip, None)
            except Exception as error:  # noqa: BLE001 - every failure is recorded, the run goes on
                record(clip, error)
            bar.update()
    else:
        # spawned, not forked: a fork of a process whose OpenMP threads or CUDA context exist (a network already run
        # or loaded on a GPU) hangs or fails in the child; each worker imports afresh instead (a few seconds)
        with ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            pending = {pool.submit(process, clip): clip for clip in todo}
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    clip = pending.pop(future)
                    record(clip, future.exception())
                    bar.update()
    bar.close()
    return summary
