"""Data-set scale extraction: list clips, shard, skip finished ones, run in parallel, record failures.

Shared by `extract_mels` and `extract_features`. A stage gives a list of `Clip`s (where each clip's outputs
go) and a function that processes one clip and writes its outputs atomically. A clip whose outputs all exist
is skipped, so an interrupted or requeued job resumes. A clip that fails with `ClipError` (corrupt file, no
audio, silence...) or any other exception goes into `failures.jsonl` with its reason and the run goes on.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from tqdm import tqdm

from pipeline.io import FailureManifest

log = logging.getLogger(__name__)


class ClipError(RuntimeError):
    """A clip cannot be processed; the message says why and names the file."""


@dataclass(frozen=True)
class Clip:
    """One clip: `id` as in split files (`dog/video_02677` for VAS, the clip id for VGGSound)."""

    id: str
    source: Path
    outputs: tuple[Path, ...] = field(default=())

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

    def __str__(self) -> str:
        text = f"{self.processed} processed, {self.skipped} skipped (already done), {self.failed} failed"
        if self.failed:
            text += f"; reasons in {self.failures_path}"
        return text


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


def list_clips(
    videos_dir: str | os.PathLike,
    layout: str,
    split_file: str | os.PathLike | None = None,
    outputs: Callable[[str], Sequence[Path]] = lambda clip_id: (),
) -> list[Clip]:
    """Clips named by a split file, or every video under `videos_dir` when no split file is given."""
    videos_dir = Path(videos_dir)
    if split_file:
        ids = read_split(split_file)
    else:
        if not videos_dir.is_dir():
            raise FileNotFoundError(f"videos folder {videos_dir} does not exist: check dataset.videos")
        pattern = "*/*.mp4" if layout == "vas" else "*.mp4"
        ids = sorted(str(p.relative_to(videos_dir).with_suffix("")) for p in videos_dir.glob(pattern))
    return [Clip(i, video_path(videos_dir, i, layout), tuple(outputs(i))) for i in ids]


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
    """Run `process` on every unfinished clip; `num_workers` > 0 uses that many processes."""
    manifest = FailureManifest(failures_path)
    summary = Summary(failures_path=manifest.path)
    todo = []
    for clip in clips:
        if clip.done():
            summary.skipped += 1
        else:
            todo.append(clip)

    def record(clip: Clip, error: BaseException | None) -> None:
        if error is None:
            summary.processed += 1
            return
        summary.failed += 1
        reason = str(error) if isinstance(error, ClipError) else f"{type(error).__name__}: {error}"
        log.warning("failed %s (%s): %s", clip.id, clip.source, reason)
        manifest.add(clip.id, reason, source=str(clip.source))

    bar = tqdm(total=len(todo), desc=desc, unit="clip", dynamic_ncols=True)
    if num_workers <= 0:
        for clip in todo:
            try:
                process(clip)
                record(clip, None)
            except Exception as error:  # noqa: BLE001 - every failure is recorded, the run goes on
                record(clip, error)
            bar.update()
    else:
        with ProcessPoolExecutor(num_workers) as pool:
            pending = {pool.submit(process, clip): clip for clip in todo}
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    clip = pending.pop(future)
                    record(clip, future.exception())
                    bar.update()
    bar.close()
    return summary
