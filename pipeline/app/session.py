"""What the app's page calls, usable without gradio: `AppSampler` holds the models (loaded once) and turns one press
of "Generate" into previews of the spectrogram as the tokens arrive and, at the end, the sounds, videos,
spectrograms, the last step's attention over the video's time and Melception's top-5 classes.

Sampling is the sample stage's own (`pipeline.generate.user_clip.user_clip_steps`: the same condition, long
videos included, lengths, priming, seeds, sampler and files; tests hold the two equal); the page only watches
the tokens as they come. Files go to `<run>/requests/<n>_<stem>/`.
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.build.classifier import load_melception
from pipeline.checkpoints.zoo import resolve
from pipeline.codec.transcode import codebook_identity, round_trip_file
from pipeline.data.layout import feature_path, layout_of, split_ids, video_path
from pipeline.generate.loading import UserModels, sampling_settings
from pipeline.generate.long_video import decode_long
from pipeline.generate.sampling import last_step_attention
from pipeline.generate.settings import SamplingSettings
from pipeline.generate.user_clip import (
    Progress,
    UserClip,
    reconstruct_user_clip,
    user_clip_steps,
    video_seconds,
)
from pipeline.media.mel import FRAMES_PER_COLUMN, MEL_FPS

log = logging.getLogger(__name__)


@dataclass
class Preview:
    """One streamed update: sample `sample` has `done` of `total` tokens; `mel` (80, T) its spectrogram so far
    (the columns not sampled yet at 0); `seconds` of sound those tokens make."""

    sample: int
    done: int
    total: int
    mel: np.ndarray
    seconds: float


@dataclass
class Result:
    """What one press of "Generate" made: per sample a wave, a mel, a wav, (with a video) an mp4, the last step's
    attention over the condition frames with each frame's time, and (with a classifier) the top-5 classes."""

    folder: Path
    video_seconds: float | None                      # the input video's length (None: features or a class)
    waves: list[np.ndarray] = field(default_factory=list)
    mels: list[np.ndarray] = field(default_factory=list)
    wavs: list[Path] = field(default_factory=list)
    mp4s: list[Path | None] = field(default_factory=list)
    attention: list[np.ndarray] = field(default_factory=list)  # per sample (S,) weights
    attention_seconds: list[np.ndarray] = field(default_factory=list)  # per sample (S,) each frame's time
    top5: list[dict[str, float] | None] = field(default_factory=list)  # per sample {class name: probability}
    reconstruction: dict[str, Any] | None = None     # {"mel", "wave", "wav"} of the video's own sound


def condition_seconds(clip: UserClip, window_columns: int, frames: int) -> np.ndarray:
    """The time in the video (s) of each of the `frames` condition positions of the window that sampled the clip's
    last token: the window's 9.85 s (the clip's last `window_columns` columns when the condition follows the
    picture, else the first 10 s, which the condition covers), frames evenly over it."""
    column_seconds = FRAMES_PER_COLUMN / MEL_FPS
    start = max(0, clip.cols - window_columns) * column_seconds if clip.window.get("slide_cond") else 0.0
    return start + (np.arange(frames) + 0.5) * window_columns * column_seconds / frames


@dataclass
class AppSampler:
    """The models of the page (`models`: `pipeline.generate.loading.load_user_models` of the app's config), its
    configuration and run folder, and what each control of the page calls."""

    cfg: Any
    run_dir: Path
    models: UserModels
    _count: Any = field(default_factory=itertools.count)

    def __post_init__(self):
        self.run_dir = Path(self.run_dir)
        self.defaults = sampling_settings(self.cfg, self.models.meta)  # the page's initial settings: the config's
        self.classifier = self._load_classifier()
        self._codebook_identity = None

    def _load_classifier(self):
        """(Melception, Normalize, class names) of `classifier.ckpt`, or None without one."""
        ckpt = self.cfg.classifier.ckpt
        if not ckpt:
            return None
        stats = resolve(self.cfg.classifier.stats, cfg=self.cfg)
        model, normalize, classes = load_melception(str(resolve(ckpt, cfg=self.cfg)),
                                                    None if stats is None else str(stats), self.models.device)
        n = model.fc.out_features
        if classes is None:
            names = list(self.cfg.dataset.get("classes") or [])
            classes = names if len(names) == n else [f"class {i}" for i in range(n)]
        return model.eval(), normalize, list(classes)

    @torch.no_grad()
    def top_classes(self, mel: np.ndarray, k: int = 5) -> dict[str, float] | None:
        """Melception's k most probable classes {name: probability} for a (80, T) [0, 1] mel (None without one)."""
        if self.classifier is None:
            return None
        model, normalize, classes = self.classifier
        x = torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))[None].to(self.models.device)
        probs = torch.softmax(model(normalize(x, zero_one=True)).float(), dim=-1)[0].cpu()
        values, order = probs.topk(min(k, probs.numel()))
        return {classes[int(i)]: float(v) for v, i in zip(values, order)}

    # --- the data set's clips ------------------------------------------------------------------------------
    def clips(self) -> list[str]:
        """Clip ids of the configured split (`split`) whose video or features are on this machine ([] if none)."""
        try:
            ids = split_ids(self.cfg.dataset, str(self.cfg.split))
        except (FileNotFoundError, KeyError) as error:
            log.warning("no data set clips to pick: %s", error)
            return []
        return [i for i in ids if any(p is not None and p.exists() for p in self.clip_inputs(i))]

    def clip_inputs(self, clip_id: str) -> tuple[Path | None, Path | None]:
        """(video, features file) of a data set clip; the features only for a single-stream features config."""
        video = video_path(self.cfg.dataset.videos, clip_id, layout_of(self.cfg.dataset))
        folders = list((self.models.fcfg or {}).get("folders") or [])
        features = feature_path(self.cfg.dataset, str(folders[0]), clip_id) if len(folders) == 1 else None
        if features is not None and not features.exists():
            features = None
        return (video if video.exists() else None), features

    # --- one press of the button ---------------------------------------------------------------------------
    def stream(self, video: str | Path | None, clip_id: str | None, settings: SamplingSettings, *, samples: int,
               max_seconds: float | None, seed: int, class_id: int | None,
               reconstruct: bool) -> Iterator[Preview | Result]:
        """Samples for an uploaded `video` or a data set clip (`clip_id`; its stored features are used when
        present, no feature network needed), as `stages.sample video=...` makes them (`max_seconds` None: the
        whole video). Yields a `Preview` every `preview_columns` code columns of each sample and the `Result`."""
        features = None
        if video:
            video = Path(video)
        elif clip_id:
            video, features = self.clip_inputs(clip_id)
            if video is None and features is None:
                raise FileNotFoundError(f"clip {clip_id}: neither its video nor its features are on this machine")
        elif self.models.condition == "features":
            raise ValueError("upload a video or pick a clip of the data set")
        if reconstruct and video is None:
            raise ValueError("the codebook reconstruction needs the clip's video (its own sound)")
        stem = Path(video).stem if video is not None else (clip_id or "sample").split("/")[-1]
        folder = self.run_dir / "requests" / f"{next(self._count):04d}_{stem}"
        seconds = video_seconds(video) if video is not None else None
        outs = [folder / f"{stem}_sample_{k}" for k in range(max(1, int(samples)))]
        every = max(1, int(self.cfg.preview_columns))
        model = self.models.model
        H, W = model.first_stage_permuter.H, model.first_stage_permuter.W
        result, shown = Result(folder, seconds), None  # shown: the columns of the last preview
        for item in user_clip_steps(self.models, video, outs, settings, seed=int(seed), max_seconds=max_seconds,
                                    features=features, class_id=class_id, seconds=seconds):
            if isinstance(item, Progress):
                if item.done < item.total and shown is not None and item.done // H - shown < every:
                    continue
                shown = None if item.done == item.total else item.done // H  # the next sample starts afresh
                yield Preview(item.sample, item.done, item.total, self._partial_mel(item.tokens, item.done),
                              item.done // H * FRAMES_PER_COLUMN / MEL_FPS)
                continue
            clip = item["clip"]
            result.waves.append(item["wave"])
            result.mels.append(item["mel"])
            result.wavs.append(item["wav"])
            result.mp4s.append(item["mp4"])
            attention = last_step_attention(model, clip.cond, item["tokens"], **clip.window)[0].cpu().numpy()
            result.attention.append(attention)
            result.attention_seconds.append(condition_seconds(clip, W, attention.size))
            result.top5.append(self.top_classes(item["mel"]))
        if reconstruct:
            result.reconstruction = reconstruct_user_clip(self.models, video, folder / f"{stem}_reconstruction")
        yield result

    def _partial_mel(self, tokens: torch.Tensor, done: int) -> np.ndarray:
        """The (80, 16 cols) mel of the tokens sampled so far; the columns not yet sampled are left at 0 (dark)."""
        with self.models.sampler.autocast():
            mel = decode_long(self.models.model, tokens.clone()).clip(0, 1)
        mel[:, (done // self.models.model.first_stage_permuter.H) * FRAMES_PER_COLUMN:] = 0
        return mel

    # --- the codec tab -------------------------------------------------------------------------------------
    def codec_round_trip(self, audio: str | Path):
        """Any audio file through the transformer's codebook and the vocoder: `pipeline.codec.transcode.Report`."""
        if not audio:
            raise ValueError("upload an audio file for the codec")
        codebook = self.models.model.first_stage_model
        if self._codebook_identity is None:
            self._codebook_identity = codebook_identity(codebook)
        out = self.run_dir / "codec" / f"{next(self._count):04d}_{Path(audio).stem}"
        return round_trip_file(codebook, audio, out, self.models.vocode, identity=self._codebook_identity)
