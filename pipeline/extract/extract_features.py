"""`python -m stages.extract_features`: every (unfinished) clip of a data set -> its feature pickles
(`pipeline.extract.visual`), sharded, in worker processes, with a failures manifest."""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from pipeline.config.device import resolve_device
from pipeline.data.layout import feature_path, layout_of
from pipeline.extract.clips import Clip, dataset_clips, finish, run_clips, shard, split_file_of
from pipeline.extract.visual import RANDOM_MARKER, STREAMS, Preprocessing, check_kind, extract_streams, load_model
from pipeline.files.writes import atomic_write, save_json, save_pickle
from pipeline.media.audio import SR
from pipeline.media.mel import LENGTH
from pipeline.runs.folders import run_folder
from pipeline.runs.lock import hold_run_folder

log = logging.getLogger(__name__)


CLIP_SECONDS = LENGTH / SR  # a clip's window: frames past it are never decoded (a long video's windows)
_MODELS: dict[tuple, nn.Module] = {}  # one network per worker process, loaded on first use


@dataclass(frozen=True)
class ClipJob:
    """Extract one clip and write its pickles; plain data, so that worker processes can receive it."""

    kind: str
    weights: str
    width: float | None
    prep: Preprocessing
    batch_size: int
    device: str
    outputs: tuple[str, ...]  # stream names, in the order of each clip's output paths
    threads: int = 0  # torch threads per worker process (0: leave torch's default)

    def model(self) -> nn.Module:
        key = (self.kind, self.weights, self.width, self.device)
        if key not in _MODELS:
            _MODELS[key] = load_model(self.kind, self.weights, width=self.width, device=self.device)
        return _MODELS[key]

    def __call__(self, clip: Clip) -> None:
        if self.threads:  # worker processes share the cores: no oversubscription by torch or OpenCV
            import cv2

            torch.set_num_threads(self.threads)
            cv2.setNumThreads(self.threads)
        streams = extract_streams(clip.source, self.kind, self.model(), self.prep,
                                  batch_size=self.batch_size, device=self.device, start=clip.start,
                                  span=CLIP_SECONDS)
        for name, path in zip(self.outputs, clip.outputs):
            if self.weights == "random":
                mark_random(path.parent)
            save_pickle(path, streams[name])


def mark_random(folder: Path) -> None:
    """A `WEIGHTS_RANDOM` file beside features made with random weights (written before the features)."""
    marker = folder / RANDOM_MARKER
    if not marker.exists():
        with atomic_write(marker, "w") as f:
            f.write("These features were extracted with features.weights=random (tests only): they carry no "
                    "visual information. Re-extract with real weights before training.\n")


def run(cfg, run_dir: str | os.PathLike | None = None) -> None:
    """`stages.extract_features`: every (unfinished) clip of the data set -> its feature pickles.

    The run folder (failures.jsonl, summary.json) is Hydra's output dir unless `run_dir` is given (tests).
    """

    run_dir = run_folder(run_dir)
    fcfg = cfg.features
    kind = str(fcfg.name)
    check_kind(kind)
    folders = [str(f) for f in fcfg.folders]
    streams = STREAMS[kind]
    if len(folders) != len(streams):
        raise ValueError(f"features.folders has {len(folders)} entries but {kind} writes {len(streams)} "
                         f"streams {streams}: one folder per stream, in that order")
    width = fcfg.get("width")
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    dataset["features"] = str(cfg.features_dir)
    layout_of(dataset)
    clips = dataset_clips(dataset, split_file_of(cfg), lambda cid: [feature_path(dataset, f, cid) for f in folders])
    clips = shard(clips, int(cfg.shard), int(cfg.num_shards))
    device = resolve_device(cfg.device)
    job = ClipJob(kind, str(fcfg.weights), None if width is None else float(width), Preprocessing.from_cfg(fcfg),
                  int(fcfg.batch_size), str(device), streams,
                  threads=max(1, (os.cpu_count() or 1) // int(cfg.num_workers)) if int(cfg.num_workers) > 0 else 0)
    job.model()  # fail on bad weights before any clip is touched
    log.info("extracting %s features of %d clips on %s into %s", kind, len(clips), device, cfg.features_dir)
    with hold_run_folder(run_dir, name=f"shard {cfg.shard} of {cfg.num_shards}"):  # shards share the folder
        summary = run_clips(clips, job, run_dir / "failures.jsonl", int(cfg.num_workers), desc=f"{kind} features")
    save_json(run_dir / "summary.json", {**dataclasses.asdict(summary), "kind": kind, "weights": job.weights,
                                          "folders": folders, "device": str(device)})
    finish(f"extract_features {kind}", summary, f"Features in {cfg.features_dir}" + (
        f" [features.weights=random: test features only, marked with {RANDOM_MARKER}]"
        if job.weights == "random" else ""), bool(cfg.fail_on_clip_errors))
