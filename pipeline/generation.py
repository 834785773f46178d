"""Sounds from a trained transformer: the model and its settings loaded from a checkpoint, `generate` (condition ->
tokens -> spectrograms) and a user's own video or features end to end (`sample_user_clip`), shared by the sample
stage (`pipeline/stages/sample.py`), the app (`pipeline/app.py`) and the long-video sampler (`pipeline.long_video`).

A user's clip: the features the model was trained on are extracted with `pipeline.features` (kind, preprocessing
and weights recorded in the transformer checkpoint; `feature_weights=PATH` or `+features=KIND` override them),
then sampled, decoded and vocoded; `<out>.{npy,wav}` and, with a video, `<out>.mp4` (the original picture, the new
sound).
Rules: a video needs frames and at least MIN_SECONDS (1 s): shorter clips would be tiled to 10 s from a few
frames, so the condition would be a flicker. Up to 10 s (848 mel frames, 9.85 s) the model's own window is
used, and the sound is cut to the video's length. Longer videos get sound for their whole length
(`max_seconds` caps it) from the sliding 5 x 53 window (5 x ceil(seconds * 86.13 / 16) tokens) with the
condition following the picture, frames decoded only as needed (`pipeline.long_video`); a model on
BN-Inception features (whose clips loop to 10 s by definition) or mode=half keeps the first 10 s'
condition throughout, as the original's tool does.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from pipeline.audio import SR, save_wav
from pipeline.data.features import FEAT_CROP_LEN, FEAT_LEN
from pipeline.io import save_npy
from pipeline.mel import FRAMES_PER_COLUMN, MEL_FPS
from pipeline.sampling_settings import SamplingSettings

log = logging.getLogger(__name__)

MIN_SECONDS = 1.0                  # shortest video accepted (module docstring)


# ------------------------------------------------------------------------------------------------ model
def read_meta(path: Path) -> dict[str, Any]:
    """Everything in one of our transformer checkpoints except its tensors (model_args, features, sampling...)."""
    from pipeline.checkpoints import read_checkpoint

    ckpt = read_checkpoint(path, mmap=True)
    return {k: v for k, v in ckpt.items() if k not in ("state_dict", "train_state")} if isinstance(ckpt, dict) else {}


def load_model(cfg, device: torch.device):
    """(wrapper in eval mode on `device`, checkpoint metadata)."""
    from pipeline.pretrained import load_transformer
    from pipeline.pretrained.released import model_files
    from pipeline.zoo import released_meta, resolve

    source = cfg.get("model") or cfg.transformer.ckpt  # model: a released name (pipeline/zoo.yaml) or a path
    path = resolve(source, cfg=cfg)
    if not path.exists():
        raise FileNotFoundError(f"transformer.ckpt={path} does not exist: train one with `python -m "
                                f"stages.train_transformer dataset={cfg.dataset.name}` (its run with no overrides is "
                                f"the default), pass transformer.ckpt=PATH or model=<a released model's name>")
    released = released_meta(source, cfg)  # the original's model: its backbone's features preset
    meta = released if released is not None else read_meta(model_files(path, "transformer").checkpoint)
    codebook = resolve(cfg.codebook.ckpt, cfg=cfg)
    model = load_transformer(path, codebook_path=codebook).to(device).eval()
    meta["model_args"], meta["path"] = dict(model.model_args), str(path.resolve())
    return model, meta


def sampling_settings(cfg, meta: Mapping[str, Any]) -> SamplingSettings:
    """The config's `sampling` group; `top_k: auto` is the checkpoint's preset, else half the vocabulary."""
    return SamplingSettings.from_config(cfg.sampling, meta.get("sampling"), int(meta["model_args"]["vocab_size"]))


def features_config(cfg, meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The features the model was trained on (`+features=KIND` replaces them, `feature_weights` the weights)."""
    fcfg = cfg.get("features")
    fcfg = OmegaConf.to_container(fcfg, resolve=True) if fcfg is not None else meta.get("features")
    if fcfg is None:
        return None
    fcfg = dict(fcfg)
    if cfg.get("feature_weights"):
        fcfg["weights"] = str(cfg.feature_weights)
    return fcfg


def seeded_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed) % (2 ** 63))


def generate(model, cond: torch.Tensor, settings: SamplingSettings, num_tokens: int,
             gt_tokens: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Condition -> tokens (cached sampler) -> spectrograms (B, 80, 16 cols) in [0, 1] (unclamped, as the original)."""
    from pipeline.sampling import sample

    tokens = sample(model, cond, num_tokens=num_tokens, **settings.options(), gt_tokens=gt_tokens, generator=generator)
    spec = model.decode_to_spec(tokens)  # (B, 1, 80, 16 cols) in [-1, 1]-ish
    return ((spec[:, 0].float() + 1) / 2).cpu()  # (B, 80, T)


def video_seconds(path: Path) -> float:
    """The duration of a video from its frames; errors for no frames and for clips under MIN_SECONDS."""
    from pipeline.video import clip_duration, frame_times

    seconds = clip_duration(frame_times(path))  # ClipError: not a video / no video stream / no frames
    if seconds < MIN_SECONDS:
        raise ValueError(f"{path} is {seconds:.2f} s long: sampling needs at least {MIN_SECONDS:g} s of video "
                         f"(shorter clips would be tiled to 10 s from a handful of frames)")
    return seconds


def condition_from_features(feats: np.ndarray, fcfg: Mapping[str, Any], model_args: Mapping[str, Any],
                            source: str) -> torch.Tensor:
    """(T, D) features -> (1, D, S): padded / cut to feat_len, centre-cropped to feat_crop_len, resampled, as
    the data layer does for training; a depth that is not the model's raises an error naming `source`."""
    from pipeline.data.features import condition_rows

    feats = np.asarray(feats, dtype=np.float32)
    depth = int(model_args["feat_depth"])
    if feats.ndim != 2 or feats.shape[1] != depth or feats.shape[0] == 0:
        kind = fcfg.get("name") if fcfg else "?"
        raise ValueError(f"{source}: features of shape {feats.shape}, but the model was trained on (frames, {depth}) "
                         f"{kind} features: extract them with `python -m stages.extract_features features={kind}` "
                         f"or pass the matching transformer.ckpt")
    feat_len, crop = int(fcfg.get("feat_len", FEAT_LEN)), int(fcfg.get("feat_crop_len", FEAT_CROP_LEN))  # no config
    sampled = condition_rows(feats, feat_len, crop, int(model_args["feat_sample_size"]))  # (S, D)
    return torch.from_numpy(np.ascontiguousarray(sampled.T))[None]  # (1, D, S)


def _extract(video: Path, fcfg: Mapping[str, Any], device: torch.device, cache: dict) -> np.ndarray:
    from pipeline.features import Preprocessing, extract_clip_features
    from pipeline.features import load_model as load_feature_model

    kind, weights = str(fcfg["name"]), fcfg.get("weights")
    if weights in (None, "", "???"):
        from pipeline.features import WEIGHTS_HELP

        raise ValueError(f"the model was trained on {kind} features and no weights for that network are given: pass "
                         f"feature_weights=PATH, a local file: {WEIGHTS_HELP.get(kind, kind)}")
    key = (kind, str(weights), fcfg.get("width"))
    if key not in cache:
        cache[key] = load_feature_model(kind, str(weights), width=fcfg.get("width"), device=device)
    return extract_clip_features(video, kind, cache[key], Preprocessing.from_cfg(fcfg),
                                 batch_size=int(fcfg.get("batch_size", 64)), device=device)


@dataclass
class UserModels:
    """What sampling a user's video needs, loaded once (the stage and the app share it)."""

    model: Any                       # the transformer wrapper (eval mode, on `device`)
    meta: dict[str, Any]             # the checkpoint's metadata (model_args, features, sampling)
    fcfg: dict[str, Any] | None      # the features the model was trained on
    vocode: Any                      # MelGAN, else Griffin-Lim: (80, T) mel -> waveform
    device: torch.device
    name: str = "transformer.ckpt"   # names the checkpoint in error messages
    cache: dict = field(default_factory=dict)  # feature networks, by (kind, weights, width)

    @property
    def args(self) -> dict[str, Any]:
        return self.meta["model_args"]

    @property
    def condition(self) -> str:
        return str(self.args.get("condition", "features"))


def load_user_models(cfg, device: torch.device | None = None) -> UserModels:
    """The transformer, its features config and the vocoder of a sample config (`transformer.ckpt`,
    `codebook.ckpt`, `vocoder.ckpt`, `feature_weights`, `+features`, `device`)."""
    from pipeline.vocoder import load_vocoder_or_griffinlim

    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() and cfg.get("device", "auto") != "cpu" else "cpu")
    model, meta = load_model(cfg, device)
    return UserModels(model, meta, features_config(cfg, meta), load_vocoder_or_griffinlim(cfg.vocoder.ckpt,
                      device=device, zoo_cfg=cfg), device, str(cfg.get("model") or cfg.transformer.ckpt))


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
        from pipeline.long_video import sample_long_video

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
    gt = _user_gt_tokens(model, video, settings, cols, models.device)
    return UserClip(cond, cols, model.first_stage_permuter.H, gt)


def sample_generator(models: UserModels, seed: int, k: int) -> torch.Generator:
    """The generator of a clip's sample k: seeded by seed * 1_000_003 + k (the stage and the app alike)."""
    return seeded_generator(models.device, int(seed) * 1_000_003 + k)


def write_user_sample(models: UserModels, out: Path, mel: np.ndarray, video: Path | None,
                      span: float | None) -> dict[str, Any]:
    """Vocode a sample's (80, T) mel and write `<out>.npy`, `<out>.wav` and, with a video, `<out>.mp4` (its
    picture, the new sound cut to `span` s); returns {"mel", "wave", "npy", "wav", "mp4"}."""
    from pipeline.video import mux_audio

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
    (`pipeline.long_video`): from scratch, features streamed from the video (RGB kinds) or no visual condition."""
    from pipeline.long_video import STREAMED_KINDS

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
    tokens = models.model.encode_to_tokens(_video_image(video, models.device))
    mel = ((models.model.decode_to_spec(tokens)[0, 0].float() + 1) / 2).cpu().numpy()  # (80, 848) in [0, 1]
    wave = np.asarray(models.vocode(mel), dtype=np.float32)[:round(seconds * SR)]
    save_wav(Path(out).with_suffix(".wav"), wave, SR, subtype="PCM_24")
    return {"mel": mel, "wave": wave, "wav": Path(out).with_suffix(".wav")}


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
        if fcfg is None:
            raise ValueError(f"{models.name} records no features config: pass +features=KIND")
        feats, source = _extract(video, fcfg, device, models.cache), f"{video} ({fcfg['name']} features)"
    return condition_from_features(feats, fcfg or {}, args, source).to(device)


def load_pickle_array_checked(path: Path) -> np.ndarray:
    from pipeline.safe_pickle import load_pickle_array

    if not path.is_file():
        raise FileNotFoundError(f"features_file={path} does not exist")
    return load_pickle_array(path)


def _user_gt_tokens(model, video: Path | None, settings: SamplingSettings, cols: int,
                    device) -> torch.Tensor | None:
    """mode=half primes with the video's own sound (first 130 tokens of its 10-s mel); one window only."""
    if settings.mode != "half":
        return None
    if video is None or cols != model.first_stage_permuter.W:
        raise ValueError("sampling.mode=half primes with the video's own sound: it needs a video of at most 10 s "
                         "(or max_seconds=10); use sampling.mode=nopix otherwise")
    return model.encode_to_tokens(_video_image(video, device))


def _video_image(video: Path, device: torch.device) -> torch.Tensor:
    """The video's own sound as the model's input: (1, 80, 848) in [-1, 1] (its 10-s mel, centre-cropped)."""
    from pipeline.data.features import center_offset
    from pipeline.mel import CROP_LEN, extract_mel

    mel = extract_mel(video, chain="direct")  # (80, 860) in [0, 1]; ClipError without an audio stream
    x = 2 * mel[:, center_offset(mel.shape[1], CROP_LEN):][:, :CROP_LEN] - 1
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None].to(device)
