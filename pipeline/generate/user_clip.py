"""Sounds from a trained transformer: the model and its settings loaded from a checkpoint, `generate` (condition ->
tokens -> spectrograms) and a user's own video or features end to end (`sample_user_clip`), shared by the sample
stage (`pipeline/generate/sample.py`), the app (`pipeline/app/app.py`) and the long-video sampler
(`pipeline.generate.long_video`).

A user's clip: the features the model was trained on are extracted with `pipeline.extract.visual` (kind, preprocessing
and weights recorded in the transformer checkpoint; `feature_weights=PATH` or `+features=KIND` override them),
then sampled, decoded and vocoded; `<out>.{npy,wav}` and, with a video, `<out>.mp4` (the original picture, the new
sound).
Rules: a video needs frames and at least MIN_SECONDS (1 s): shorter clips would be tiled to 10 s from a few
frames, so the condition would be a flicker. Up to 10 s (848 mel frames, 9.85 s) the model's own window is
used, and the sound is cut to the video's length. Longer videos get sound for their whole length
(`max_seconds` caps it) from the sliding 5 x 53 window (5 x ceil(seconds * 86.13 / 16) tokens) with the
condition following the picture, frames decoded only as needed (`pipeline.generate.long_video`); a model on
BN-Inception features (whose clips loop to 10 s by definition) or mode=half keeps the first 10 s'
condition throughout, as the original's tool does.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.files.writes import save_npy
from pipeline.generate.conditions import own_sound_image, priming_tokens, user_condition, video_seconds
from pipeline.generate.loading import UserModels, sample_generator
from pipeline.generate.long_video import STREAMED_KINDS, sample_long_video
from pipeline.generate.sampling import sample
from pipeline.generate.settings import SamplingSettings
from pipeline.media.audio import SR, save_wav
from pipeline.media.mel import FRAMES_PER_COLUMN, MEL_FPS, unit_mel
from pipeline.media.video import mux_audio

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ model


def generate(model, cond: torch.Tensor, settings: SamplingSettings, num_tokens: int,
             gt_tokens: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Condition -> tokens (cached sampler) -> spectrograms (B, 80, 16 cols) in [0, 1] (unclamped, as the original)."""

    tokens = sample(model, cond, num_tokens=num_tokens, **settings.options(), gt_tokens=gt_tokens, generator=generator)
    spec = model.decode_to_spec(tokens)  # (B, 1, 80, 16 cols) in [-1, 1]-ish
    return unit_mel(spec[:, 0].float()).cpu()  # (B, 80, T)


def sample_user_clip(models: UserModels, video: Path | None, outs: Sequence[Path],
                     settings: SamplingSettings | Mapping[str, Any], *,
                     seed: int = 0, max_seconds: float | None = None, features: np.ndarray | Path | None = None,
                     class_id: int | None = None, seconds: float | None = None) -> list[dict[str, Any]]:
    """One sample per path of `outs` from a video (its features extracted) or `features` (a (T, D) array or a
    .pkl file): writes `<out>.npy`, `<out>.wav` and, with a video, `<out>.mp4` (its picture, the new sound).

    Returns per sample {"mel": (80, T) float32 in [0, 1], "wave": float32 at 22050 Hz, "npy", "wav", "mp4"
    (None without a video)}. Sample k is seeded by seed * 1_000_003 + k, as the stage does.
    """
    settings = SamplingSettings.coerce(settings)
    if seconds is None and video is not None:
        seconds = video_seconds(video)
    span = sound_span(seconds, max_seconds)
    if _long_video_path(models, video, features, settings, span):

        return [sample_long_video(models, video, out, settings, seed=seed, max_seconds=span, class_id=class_id,
                                  sample_index=k) for k, out in enumerate(outs)]
    clip = prepare_user_clip(models, video, settings, span, seed=seed, features=features, class_id=class_id)
    results = []
    for k, out in enumerate(outs):
        tic = time.perf_counter()
        log.info("%s: sample %d of %d (%d tokens) ...", video or "features", k + 1, len(outs), clip.num_tokens)
        mel = generate(models.model, clip.cond, settings, clip.num_tokens, clip.gt,
                       sample_generator(models, seed, k))[0]  # (80, 16 cols)
        log.info("sampled in %.1f s", time.perf_counter() - tic)
        results.append(write_user_sample(models, Path(out), mel.numpy(), video, span))
    return results


def sound_span(seconds: float | None, max_seconds: float | None) -> float | None:
    """Seconds of sound to make: the video's length, capped at `max_seconds` (None without a video)."""
    return seconds if max_seconds is None or seconds is None else min(seconds, float(max_seconds))


@dataclass
class UserClip:
    """What every sample of one user clip shares: its condition, how many code columns to sample (past 10 s: the
    sliding window) and, for mode=half, the tokens of its own sound that prime each sample."""

    cond: torch.Tensor
    cols: int
    rows: int
    gt: torch.Tensor | None

    @property
    def num_tokens(self) -> int:
        return self.rows * self.cols


def prepare_user_clip(models: UserModels, video: Path | None, settings: SamplingSettings, span: float | None, *,
                      seed: int, features: np.ndarray | Path | None = None,
                      class_id: int | None = None) -> UserClip:
    """The condition (extracted from the video, or `features`, or a class id), the columns for `span` seconds and
    the priming tokens: what the sample stage and the app's page compute once per clip."""
    model = models.model
    cond = user_condition(models, video, features, class_id, seed)
    cols = model.first_stage_permuter.W
    if span is not None and span * MEL_FPS > cols * FRAMES_PER_COLUMN:
        cols = math.ceil(span * MEL_FPS / FRAMES_PER_COLUMN)  # sliding window past 10 s
    gt = priming_tokens(model, video, settings, cols, models.device)
    return UserClip(cond, cols, model.first_stage_permuter.H, gt)


def write_user_sample(models: UserModels, out: Path, mel: np.ndarray, video: Path | None,
                      span: float | None) -> dict[str, Any]:
    """Vocode a sample's (80, T) mel and write `<out>.npy`, `<out>.wav` and, with a video, `<out>.mp4` (its
    picture, the new sound cut to `span` s); returns {"mel", "wave", "npy", "wav", "mp4"}."""

    wave = np.asarray(models.vocode(mel), dtype=np.float32)
    if span is not None:
        wave = wave[:round(span * SR)]  # the sound stops where the video (or max_seconds) does
    save_npy(out.with_suffix(".npy"), mel)
    save_wav(out.with_suffix(".wav"), wave, SR, subtype="PCM_24")
    mp4 = mux_audio(video, wave, out.with_suffix(".mp4"), sr=SR) if video is not None else None
    return {"mel": mel, "wave": wave, "npy": out.with_suffix(".npy"), "wav": out.with_suffix(".wav"),
            "mp4": None if mp4 is None else Path(mp4)}


def _long_video_path(models: UserModels, video: Path | None, features, settings: SamplingSettings,
                     span: float | None) -> bool:
    """Whether a video is sampled past one 10-s window with the condition following the picture
    (`pipeline.generate.long_video`): from scratch, features streamed from the video (RGB kinds) or no visual
    condition."""

    if video is None or features is not None or span is None or settings.mode != "nopix":
        return False
    if span * MEL_FPS <= models.model.first_stage_permuter.W * FRAMES_PER_COLUMN:
        return False
    return models.condition != "features" or str((models.fcfg or {}).get("name")) in STREAMED_KINDS


@torch.no_grad()
def reconstruct_user_clip(models: UserModels, video: Path, out: Path) -> dict[str, Any]:
    """The codebook's reconstruction of the video's own sound (its first 9.85 s), for comparison with samples:
    writes `<out>.wav`; returns {"mel": (80, 848), "wave", "wav"}."""
    seconds = video_seconds(video)
    tokens = models.model.encode_to_tokens(own_sound_image(video, models.device))
    mel = unit_mel(models.model.decode_to_spec(tokens)[0, 0].float()).cpu().numpy()  # (80, 848) in [0, 1]
    wave = np.asarray(models.vocode(mel), dtype=np.float32)[:round(seconds * SR)]
    save_wav(Path(out).with_suffix(".wav"), wave, SR, subtype="PCM_24")
    return {"mel": mel, "wave": wave, "wav": Path(out).with_suffix(".wav")}


