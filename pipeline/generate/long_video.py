"""Sound for a whole video of any length (issue 12, item 1): its condition and its decoding; the sample stage's
`pipeline.generate.user_clip.user_clip_steps` samples it.

Past the model's 10-s window (53 code columns, 9.85 s) the sound is sampled with the sliding 5 x 53 window of
`pipeline.generate.sampling` (`slide_cond=True`): the condition follows the picture, every window is conditioned on the
feature frames under it rather than on the first 10 s. Memory stays flat in the video's length:

* frames are decoded in order and only those at the feature rate (21.5 fps) are kept, each resized and cropped
  at once and encoded in batches of `batch_size` (`frame_features`): the video is never held in memory, only
  its (T, D) features;
* the condition covers the whole output: `round(feat_crop_len * cols / 53)` feature frames (4 per column for
  the paper's 212 frames per 53 columns; zero rows past the video's end, as training pads short clips), resampled
  to `feat_sample_size * cols / 53` positions, so each window gets its own `feat_sample_size` frames
  (`long_condition`);
* the tokens are decoded window by window (53 columns, 6 shared with the next) and the windows' mels joined
  with the codec's crossfade (`pipeline.codec.transcode.crossfade_join`), so the decoder never sees more than 53
  columns.

The RGB feature kinds (resnet50, efficientnet_lite0) are streamed;
BN-Inception's two-stream features loop clips to 10 s by definition and are refused with the reason.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.codec.transcode import crossfade_join, window_layout
from pipeline.data.conditions import FEAT_CROP_LEN, pad_or_truncate, resample_frames
from pipeline.extract.visual import Preprocessing, imagenet_input
from pipeline.generate.loading import UserModels, feature_network
from pipeline.media.mel import FRAMES_PER_COLUMN, unit_mel
from pipeline.media.source import ClipError
from pipeline.media.video import (
    center_crop,
    clip_duration,
    frame_times,
    resize_short_side,
    sample_indices,
    stream_frames,
)

STREAMED_KINDS = ("resnet50", "efficientnet_lite0")
DECODE_OVERLAP_COLUMNS = 6  # code columns shared by consecutive decoding windows (the codec's 96-frame crossfade)


def frame_features(video: str | Path, kind: str, model, prep, *, seconds: float | None = None,
                   batch_size: int = 64, device: str | torch.device = "cpu") -> np.ndarray:
    """(T, D) float32 features of the video's frames at `prep.fps` over its first `seconds` (default: all),
    decoded in order (`pipeline.media.video.stream_frames`) and encoded in batches; no more than one batch of
    frames is held at a time."""
    if kind not in STREAMED_KINDS:
        raise ValueError(f"long videos stream {', '.join(STREAMED_KINDS)} features; {kind} loops every clip to "
                         f"10 s by definition: sample the first 10 s (max_seconds=10) or use a model trained on "
                         f"RGB features")
    times = frame_times(video)
    span = clip_duration(times) if seconds is None else min(float(seconds), clip_duration(times))
    indices = sample_indices(times, prep.fps)[: max(1, math.floor(span * prep.fps + 0.5))]  # (T,) into times
    device = torch.device(device)
    batch: list[np.ndarray] = []
    out: list[np.ndarray] = []

    def flush() -> None:
        with torch.inference_mode():
            out.append(model(imagenet_input(np.stack(batch), device)).float().cpu().numpy())
        batch.clear()

    def geometry(image: np.ndarray) -> np.ndarray:
        return center_crop(resize_short_side(image, prep.short_side), prep.crop)

    for image in stream_frames(video, indices, geometry):
        batch.append(image)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    feats = np.concatenate(out)
    if not np.all(np.isfinite(feats)):
        raise ClipError(f"{video}: non-finite {kind} features")
    return feats


def long_condition(feats: np.ndarray, cols: int, model_args: dict[str, Any], fcfg: dict[str, Any],
                   window_cols: int) -> tuple[torch.Tensor, int]:
    """(T, D) frame features -> ((1, D, S_total) condition over `cols` columns, S frames per window).

    The output's columns are covered by `round(feat_crop_len * cols / window_cols)` feature frames (zero rows
    past the video's end), resampled to S_total = round(S * cols / window_cols) positions as the data layer
    resamples 212 frames to S; `pipeline.generate.sampling` gives window js the S positions from
    round(js * S_total / cols)."""

    depth, S = int(model_args["feat_depth"]), int(model_args["feat_sample_size"])
    feats = np.asarray(feats, dtype=np.float32)
    if feats.ndim != 2 or feats.shape[1] != depth:
        raise ValueError(f"features of shape {feats.shape}, but the model was trained on (frames, {depth})")
    frames = max(1, round(int(fcfg.get("feat_crop_len", FEAT_CROP_LEN)) * cols / window_cols))
    total = max(S, round(S * cols / window_cols))
    sampled = pad_or_truncate(feats, frames)[resample_frames(frames, total)]  # (S_total, D)
    return torch.from_numpy(np.ascontiguousarray(sampled.T))[None], S


def decode_long(model, tokens: torch.Tensor, overlap_columns: int = DECODE_OVERLAP_COLUMNS) -> np.ndarray:
    """Tokens (1, H * cols) of any length -> (80, 16 cols) mel in [0, 1] (unclamped), decoded 53 columns at a
    time and joined with the codec's crossfade."""

    H, W = model.first_stage_permuter.H, model.first_stage_permuter.W
    cols = tokens.shape[1] // H
    if cols <= W:
        return unit_mel(model.decode_to_spec(tokens)[0, 0].float()).cpu().numpy()
    layout = window_layout(cols * FRAMES_PER_COLUMN * 256, W * FRAMES_PER_COLUMN, FRAMES_PER_COLUMN, False,
                           overlap_columns * FRAMES_PER_COLUMN)  # (first frame, width) in mel frames
    mels = []
    with torch.no_grad():
        for start, width in layout:
            c0, c1 = start // FRAMES_PER_COLUMN, (start + width) // FRAMES_PER_COLUMN
            spec = model.decode_to_spec(tokens[:, c0 * H:c1 * H])  # (1, 1, 80, 16 (c1 - c0))
            mels.append(unit_mel(spec[0, 0].float()).cpu().numpy())
    return crossfade_join(mels, layout)


def streamed_condition(models: UserModels, video: Path, cols: int, span: float) -> tuple[torch.Tensor, dict]:
    """The condition of a video sampled past one window with the condition following the picture: ((1, D, S_total)
    condition over `cols` columns, the sampler's window options {slide_cond, cond_frames}); frames decoded as
    needed (`frame_features`) over its first `span` seconds."""
    fcfg = models.fcfg or {}
    prep = Preprocessing.from_cfg(fcfg)
    feats = frame_features(video, str(fcfg.get("name")), feature_network(models), prep, seconds=span,
                           batch_size=int(fcfg.get("batch_size", 64)), device=models.device)
    cond, frames_per_window = long_condition(feats, cols, models.args, fcfg, models.model.first_stage_permuter.W)
    return cond.to(models.device), {"slide_cond": True, "cond_frames": frames_per_window}
