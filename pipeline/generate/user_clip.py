"""Sounds from a trained transformer: `generate` (condition -> tokens -> spectrograms, the split's batches) and a
user's own video or features end to end (`user_clip_steps`, `sample_user_clip`), shared by the sample stage
(`pipeline/generate/sample.py`) and the app (`pipeline/app/app.py`, which shows the tokens as they come). Tokens
come from the models' one `TokenSampler` (`pipeline.generate.decoding`).

A user's clip: the features the model was trained on are extracted with `pipeline.extract.visual` (kind, preprocessing
and weights recorded in the transformer checkpoint; `feature_weights=PATH` or `+features=KIND` override them),
then sampled, decoded and vocoded; `<out>.{npy,wav}` and, with a video, `<out>.mp4` (the original picture, the new
sound).
Rules: a video needs frames and at least MIN_SECONDS (1 s): shorter clips would be tiled to 10 s from a few
frames, so the condition would be a flicker. Up to 10 s (848 mel frames, 9.85 s) the model's own window is
used, and the sound is cut to the video's length. Longer videos get sound for their whole length
(`max_seconds` caps it) from the sliding 5 x 53 window (5 x ceil(seconds * 86.13 / 16) tokens) with the
condition following the picture, frames decoded only as needed (`pipeline.generate.long_video`), a progress bar
in seconds of sound; a model on BN-Inception features (whose clips loop to 10 s by definition) or mode=half keeps
the first 10 s' condition throughout, as the original's tool does.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline.files.writes import save_npy
from pipeline.generate.conditions import own_sound_image, priming_tokens, user_condition, video_seconds
from pipeline.generate.decoding import TokenSampler
from pipeline.generate.loading import UserModels, sample_generator
from pipeline.generate.long_video import STREAMED_KINDS, decode_long, streamed_condition
from pipeline.generate.settings import SamplingSettings
from pipeline.media.audio import SR, save_wav
from pipeline.media.mel import FRAMES_PER_COLUMN, MEL_FPS, unit_mel
from pipeline.media.video import mux_audio

log = logging.getLogger(__name__)


def generate(sampler: TokenSampler, cond: torch.Tensor, settings: SamplingSettings, num_tokens: int,
             gt_tokens: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Condition -> tokens (the sampler) -> spectrograms (B, 80, 16 cols) in [0, 1] (unclamped, as the original)."""
    tokens = sampler.sample(cond, settings, num_tokens, gt_tokens=gt_tokens, generator=generator)
    with torch.no_grad(), sampler.autocast():
        spec = sampler.model.decode_to_spec(tokens)  # (B, 1, 80, 16 cols) in [-1, 1]-ish
    return unit_mel(spec[:, 0].float()).cpu()  # (B, 80, T)


def sound_span(seconds: float | None, max_seconds: float | None) -> float | None:
    """Seconds of sound to make: the video's length, capped at `max_seconds` (None without a video)."""
    return seconds if max_seconds is None or seconds is None else min(seconds, float(max_seconds))


@dataclass
class UserClip:
    """What every sample of one user clip shares: its condition, how many code columns to sample (past 10 s: the
    sliding window), the sampler's window options (`slide_cond`, `cond_frames`: the condition following the
    picture) and, for mode=half, the tokens of its own sound that prime each sample."""

    cond: torch.Tensor
    cols: int
    rows: int
    gt: torch.Tensor | None
    window: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return self.rows * self.cols


@dataclass
class Progress:
    """Sample `sample` has `done` of `total` tokens; `tokens` (1, total) is the sampler's buffer, updated in place
    (positions from `done` on hold 0)."""

    sample: int
    done: int
    total: int
    tokens: torch.Tensor


def prepare_user_clip(models: UserModels, video: Path | None, settings: SamplingSettings, span: float | None, *,
                      seed: int, features: np.ndarray | Path | None = None,
                      class_id: int | None = None) -> UserClip:
    """The condition (extracted from the video, or `features`, or a class id; past one window following the picture
    where the features allow), the columns for `span` seconds and the priming tokens: computed once per clip."""
    model = models.model
    H, W = model.first_stage_permuter.H, model.first_stage_permuter.W
    cols = W
    if span is not None and span * MEL_FPS > W * FRAMES_PER_COLUMN:
        cols = math.ceil(span * MEL_FPS / FRAMES_PER_COLUMN)  # sliding window past 10 s
    if _follows_the_picture(models, video, features, settings, cols):
        cond, window = streamed_condition(models, video, cols, span)
    else:
        cond, window = user_condition(models, video, features, class_id, seed), {}
    gt = priming_tokens(model, video, settings, cols, models.device)
    return UserClip(cond, cols, H, gt, window)


def user_clip_steps(models: UserModels, video: Path | None, outs: Sequence[Path],
                    settings: SamplingSettings | Mapping[str, Any], *, seed: int, max_seconds: float | None,
                    features: np.ndarray | Path | None = None, class_id: int | None = None,
                    seconds: float | None = None) -> Iterator[Progress | dict[str, Any]]:
    """One sample per path of `outs` from a video (its features extracted) or `features` (a (T, D) array or a .pkl
    file), writing `<out>.npy`, `<out>.wav` and, with a video, `<out>.mp4` (its picture, the new sound): yields a
    `Progress` after every token and each sample's result when it is written: {"mel": (80, T) float32 in [0, 1],
    "wave": float32 at 22050 Hz, "npy", "wav", "mp4" (None without a video), "tokens" (1, N), "clip": the
    `UserClip`}. Sample k is seeded by seed * 1_000_003 + k. `seconds`: the video's length, when known."""
    settings = SamplingSettings.coerce(settings)
    if seconds is None and video is not None:
        seconds = video_seconds(video)
    span = sound_span(seconds, max_seconds)
    clip = prepare_user_clip(models, video, settings, span, seed=seed, features=features, class_id=class_id)
    long = clip.cols > models.model.first_stage_permuter.W
    seconds_per_column = FRAMES_PER_COLUMN / MEL_FPS
    for k, out in enumerate(outs):
        tic = time.perf_counter()
        log.info("%s: sample %d of %d (%d tokens, %s) ...", video or "features", k + 1, len(outs), clip.num_tokens,
                 models.sampler)
        bar = tqdm(total=span, unit="s", desc=f"sound for {Path(video or 'features').name}", disable=not long,
                   bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]")
        try:
            for done, tokens in models.sampler.steps(clip.cond, settings, clip.num_tokens, gt_tokens=clip.gt,
                                                     generator=sample_generator(models, seed, k), **clip.window):
                if long and done % clip.rows == 0:
                    bar.update(min(done // clip.rows * seconds_per_column, span) - bar.n)
                yield Progress(k, done, clip.num_tokens, tokens)
        finally:
            bar.close()
        with models.sampler.autocast():
            mel = decode_long(models.model, tokens)  # (80, 16 cols)
        log.info("sampled in %.1f s", time.perf_counter() - tic)
        yield {**write_user_sample(models, Path(out), mel, video, span), "tokens": tokens.clone(), "clip": clip}


def sample_user_clip(models: UserModels, video: Path | None, outs: Sequence[Path],
                     settings: SamplingSettings | Mapping[str, Any], *, seed: int, max_seconds: float | None,
                     features: np.ndarray | Path | None = None, class_id: int | None = None,
                     seconds: float | None = None) -> list[dict[str, Any]]:
    """`user_clip_steps` to its end (same arguments): the samples' results."""
    return [item for item in user_clip_steps(models, video, outs, settings, seed=seed, max_seconds=max_seconds,
                                             features=features, class_id=class_id, seconds=seconds)
            if not isinstance(item, Progress)]


def write_user_sample(models: UserModels, out: Path, mel: np.ndarray, video: Path | None,
                      span: float | None) -> dict[str, Any]:
    """Vocode a sample's (80, T) mel and write `<out>.npy`, `<out>.wav` and, with a video, `<out>.mp4` (its
    picture, the new sound cut to `span` s); returns {"mel", "wave", "npy", "wav", "mp4"}."""
    with models.sampler.autocast():
        wave = np.asarray(models.vocode(mel), dtype=np.float32)
    if span is not None:
        wave = wave[:round(span * SR)]  # the sound stops where the video (or max_seconds) does
    save_npy(out.with_suffix(".npy"), mel)
    save_wav(out.with_suffix(".wav"), wave, SR, subtype="PCM_24")
    mp4 = mux_audio(video, wave, out.with_suffix(".mp4"), sr=SR) if video is not None else None
    return {"mel": mel, "wave": wave, "npy": out.with_suffix(".npy"), "wav": out.with_suffix(".wav"),
            "mp4": None if mp4 is None else Path(mp4)}


def _follows_the_picture(models: UserModels, video: Path | None, features, settings: SamplingSettings,
                         cols: int) -> bool:
    """Whether a video sampled past one 10-s window gets a condition that follows the picture
    (`pipeline.generate.long_video`): from scratch, features streamed from the video (RGB kinds) or no visual
    condition to follow (a class id, No Feats: the same condition throughout)."""
    if video is None or features is not None or settings.mode != "nopix":
        return False
    if cols <= models.model.first_stage_permuter.W:
        return False
    return models.condition == "features" and str((models.fcfg or {}).get("name")) in STREAMED_KINDS


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


