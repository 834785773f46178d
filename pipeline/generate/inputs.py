"""The sample stage's and the app's inputs, checked before a model loads or a run folder is made
(`pipeline.config.check.StageChecks` calls `check_inputs` / `check_model_inputs`; the sample stage calls
`check_inputs` first too): the checkpoints (files, log folders or released names), `sampling.top_k` against the
vocabulary a checkpoint of ours records, a user's video (missing, unreadable or truncated, as the extraction
stages judge it: `pipeline.media.source.check_source`), a features file (NaN, Inf, its width against the model's)
and a split's file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.checkpoints.released import model_files
from pipeline.data.conditions import check_features
from pipeline.data.layout import read_split
from pipeline.files.safe_pickle import load_pickle_array
from pipeline.generate.loading import read_meta
from pipeline.media.source import check_source
from pipeline.runs.inputs import require, require_checkpoint, unset

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v")
TRAIN_HINT = "train one with `python -m stages.train_transformer` (its run with no overrides is the default), or " \
             "pass transformer.ckpt=PATH or model=<a released model's name> (`python -m stages.download what=list`)"


def list_videos(path: Path) -> list[Path]:
    """The video of `video=`: the file, or every video file under the folder."""
    if path.is_dir():
        videos = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
        if not videos:
            raise FileNotFoundError(f"video={path}: no video files ({', '.join(VIDEO_SUFFIXES)}) in this folder")
        return videos
    if not path.is_file():
        raise FileNotFoundError(f"video={path} does not exist")
    return [path]


def recorded_model_args(cfg) -> dict[str, Any]:
    """model_args of the checkpoint the config names when it is one of ours (no tensors read), with `features`
    (the features config it records); else {}."""
    source = cfg.get("model") or cfg.transformer.ckpt
    path = Path(str(source)).expanduser()
    if not path.exists():
        return {}  # a released name: its settings come with it
    try:
        meta = read_meta(model_files(path, "transformer").checkpoint)
        return {**(meta.get("model_args") or {}), "features": meta.get("features")}
    except (FileNotFoundError, ValueError):
        return {}  # not ours (the original's log folder): read when it loads


def check_model_inputs(cfg) -> dict[str, Any]:
    """The checkpoint keys and `sampling.top_k` (at most the vocabulary); returns the recorded model_args."""
    key = "model" if cfg.get("model") else "transformer.ckpt"
    require_checkpoint(cfg.get("model") or cfg.transformer.ckpt, key, cfg, TRAIN_HINT)
    require_checkpoint(cfg.codebook.ckpt, "codebook.ckpt", cfg)
    require_checkpoint(cfg.vocoder.ckpt, "vocoder.ckpt", cfg, "train one with `python -m stages.train_vocoder`, or "
                                                              "leave it unset for Griffin-Lim")
    args = recorded_model_args(cfg)
    top_k, vocab = cfg.sampling.get("top_k"), args.get("vocab_size")
    if isinstance(top_k, int) and vocab and top_k > int(vocab):
        raise ValueError(f"sampling.top_k={top_k}: at most the model's vocabulary of {vocab} codes (or auto, or null "
                         f"for no top-k)")
    return args


def check_inputs(cfg) -> None:
    """Everything the sample stage reads: the checkpoints, then the video, the features file or the split."""
    args = check_model_inputs(cfg)
    if not unset(cfg.get("feature_weights")) and str(cfg.feature_weights) not in ("random", "packaged"):
        require(cfg.feature_weights, "feature_weights", folder=False)
    if not unset(cfg.get("video")):
        videos = list_videos(require(cfg.video, "video"))
        if len(videos) == 1 and Path(str(cfg.video)).is_file():
            check_source(videos[0])  # missing, unreadable or truncated: refused as the extraction stages do
    if not unset(cfg.get("features_file")):
        path = require(cfg.features_file, "features_file", folder=False)
        depth = args.get("feat_depth") if args.get("condition", "features") == "features" else None
        kind = str(cfg.features.name) if cfg.get("features") else (args.get("features") or {}).get("name")
        check_features(load_pickle_array(path), str(path), None if depth is None else int(depth), kind)
    if unset(cfg.get("video")) and unset(cfg.get("features_file")):
        splits = cfg.dataset.get("splits") or {}
        if cfg.split not in splits:
            raise ValueError(f"split={cfg.split}: not a split of dataset {cfg.dataset.name} ({', '.join(splits)})")
        if not read_split(str(splits[cfg.split])):
            raise ValueError(f"split={cfg.split}: its file {splits[cfg.split]} lists no clips")
