"""The condition of a user's clip: its video's length (refused under MIN_SECONDS), its features (extracted with
the network the model was trained on, or read from a file, or given), a class id, or the No-Feats random vector;
and for mode=half the tokens of the video's own sound."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.data.conditions import FEAT_CROP_LEN, FEAT_LEN, center_offset, check_features, condition_rows
from pipeline.extract.visual import Preprocessing, extract_clip_features
from pipeline.files.safe_pickle import load_pickle_array
from pipeline.generate.loading import UserModels, feature_network
from pipeline.generate.settings import SamplingSettings
from pipeline.media.mel import CROP_LEN, extract_mel
from pipeline.media.source import check_source
from pipeline.media.video import clip_duration, frame_times

MIN_SECONDS = 1.0  # shortest video accepted: shorter clips would be tiled to 10 s from a few frames (a flicker)


def video_seconds(path: Path) -> float:
    """The duration of a video from its frames; errors for a missing, unreadable or truncated file (as the extraction
    stages judge it: `check_source`), no frames and clips under MIN_SECONDS."""
    check_source(Path(path))
    seconds = clip_duration(frame_times(path))  # ClipError: not a video / no video stream / no frames
    if seconds < MIN_SECONDS:
        raise ValueError(f"{path} is {seconds:.2f} s long: sampling needs at least {MIN_SECONDS:g} s of video "
                         f"(shorter clips would be tiled to 10 s from a handful of frames)")
    return seconds


def condition_from_features(feats: np.ndarray, fcfg: Mapping[str, Any], model_args: Mapping[str, Any],
                            source: str) -> torch.Tensor:
    """(T, D) features -> (1, D, S): padded / cut to feat_len, centre-cropped to feat_crop_len, resampled, as
    the data layer does for training; a depth that is not the model's raises an error naming `source`."""
    feats = np.asarray(feats, dtype=np.float32)
    depth = int(model_args["feat_depth"])
    if feats.ndim != 2 or feats.shape[1] != depth or feats.shape[0] == 0:
        kind = fcfg.get("name") if fcfg else "?"
        raise ValueError(f"{source}: features of shape {feats.shape}, but the model was trained on (frames, {depth}) "
                         f"{kind} features: extract them with `python -m stages.extract_features features={kind}` "
                         f"or pass the matching transformer.ckpt")
    check_features(feats, source, depth)  # NaN / Inf, naming the file
    feat_len, crop = int(fcfg.get("feat_len", FEAT_LEN)), int(fcfg.get("feat_crop_len", FEAT_CROP_LEN))  # no config
    sampled = condition_rows(feats, feat_len, crop, int(model_args["feat_sample_size"]))  # (S, D)
    return torch.from_numpy(np.ascontiguousarray(sampled.T))[None]  # (1, D, S)


def user_condition(models: UserModels, video: Path | None, features: np.ndarray | Path | None,
                    class_id: int | None, seed: int) -> torch.Tensor:
    args, fcfg, device = models.args, models.fcfg, models.device
    if models.condition == "class":
        if class_id is None:
            raise ValueError("this transformer is class-conditioned: pass class_id=N (the data set's class index)")
        return torch.tensor([int(class_id)], device=device)
    if models.condition == "none":
        S, depth = int(args["feat_sample_size"]), int(args["feat_depth"])
        return torch.rand(1, depth, S, generator=torch.Generator().manual_seed(int(seed))).to(device)
    if isinstance(features, (str, Path)):
        feats, source = load_pickle_array_checked(Path(features)), str(features)
    elif features is not None:
        feats, source = features, "the given features"
    else:
        if video is None:
            raise ValueError("sampling from features needs a video or a features file")
        feats = extract_clip_features(video, str(fcfg["name"]), feature_network(models), Preprocessing.from_cfg(fcfg),
                                      batch_size=int(fcfg.get("batch_size", 64)), device=device)
        source = f"{video} ({fcfg['name']} features)"
    return condition_from_features(feats, fcfg or {}, args, source).to(device)


def load_pickle_array_checked(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"features_file={path} does not exist")
    return load_pickle_array(path)


def priming_tokens(model, video: Path | None, settings: SamplingSettings, cols: int,
                    device) -> torch.Tensor | None:
    """mode=half primes with the video's own sound (first 130 tokens of its 10-s mel); one window only."""
    if settings.mode != "half":
        return None
    if video is None or cols != model.first_stage_permuter.W:
        raise ValueError("sampling.mode=half primes with the video's own sound: it needs a video of at most 10 s "
                         "(or max_seconds=10); use sampling.mode=nopix otherwise")
    return model.encode_to_tokens(own_sound_image(video, device))


def own_sound_image(video: Path, device: torch.device) -> torch.Tensor:
    """The video's own sound as the model's input: (1, 80, 848) in [-1, 1] (its 10-s mel, centre-cropped)."""
    mel = extract_mel(video, chain="direct")  # (80, 860) in [0, 1]; ClipError without an audio stream
    x = 2 * mel[:, center_offset(mel.shape[1], CROP_LEN):][:, :CROP_LEN] - 1
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None].to(device)
