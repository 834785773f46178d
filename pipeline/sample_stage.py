"""`stages.sample`: spectrograms, waveforms and videos from a trained transformer.

Two modes (conf/sample.yaml):

(a) a data set split (`split=valid`): `samples_per_clip` samples of every clip, batched, sharded over processes
    (`accelerate launch -m stages.sample ...`: each process takes its own contiguous share of the clips, without
    the padding duplicates of a DistributedSampler), resumable (a sample whose files exist is skipped). Layout,
    as the original's generate_samples.py (spec §7.1), so the evaluation stage reads it unchanged:
        <run>/samples/<split>/cls_<target>/<name>_sample_<k>.npy   float32 (80, 848) = (x + 1) / 2, not clamped
        <run>/samples/<split>/cls_<target>/<name>_sample_<k>.wav   22050 Hz (MelGAN, else Griffin-Lim)
        <run>/samples/<split>/manifest.csv                        clip_id, label, target, k, npy, wav
        <run>/samples/<split>/sampling.json                       the checkpoint and the sampling settings
    `<name>` is the mel file's stem for the VAS layout (`video_02677_mel`) and the clip id for VGGSound, as the
    original. A rerun with other sampling settings in the same folder is refused (`overwrite=true` redoes it).
    `condition_shuffle=true` gives every clip the visual condition of another clip (a fixed derangement,
    `condition_derangement`, recorded in the manifest's `condition_clip`), same seeds otherwise: the baseline that
    shows how much the video drives the sound. `av_benchmark=true` also lays the samples and the real clips out
    for av-benchmark (`pipeline.av_benchmark`).

(b) a user's own video file or folder (`video=...`) or pre-extracted features (`features_file=....pkl`): the
    features the model was trained on are extracted with `pipeline.features` (kind, preprocessing and weights
    recorded in the transformer checkpoint; `feature_weights=PATH` or `+features=KIND` override them), then
    sampled, decoded and vocoded; writes `<run>/<stem>_sample_<k>.{npy,wav}` and, with a video,
    `<stem>_sample_<k>.mp4` (the original picture, the new sound).
    Rules: a video needs frames and at least MIN_SECONDS (1 s): shorter clips would be tiled to 10 s from a few
    frames, so the condition would be a flicker. Up to 10 s (848 mel frames, 9.85 s) the model's own window is
    used, and the sound is cut to the video's length. Longer videos get sound for their whole length
    (`max_seconds` caps it) from the sliding 5 x 53 window (5 x ceil(seconds * 86.13 / 16) tokens) with the
    condition following the picture, frames decoded only as needed (`pipeline.long_video`); a model on
    BN-Inception features (whose clips loop to 10 s by definition) or mode=half keeps the first 10 s'
    condition throughout, as the original's tool does.
"""
from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from pipeline.audio import save_wav
from pipeline.io import FailureManifest, atomic_write, save_json, save_npy

log = logging.getLogger(__name__)

SR = 22050
HOP = 256
MEL_FPS = SR / HOP                 # 86.13 mel frames per second
FRAMES_PER_COLUMN = 16             # mel frames per token column
MIN_SECONDS = 1.0                  # shortest video accepted (module docstring)
VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v")
SETTINGS = ("transformer_ckpt", "codebook_ckpt", "mode", "temperature", "top_k", "top_p", "condition_shuffle")
AV_BENCHMARK_DIR = "av_benchmark"  # <run>/av_benchmark/<split>/{gt_audio,videos,pred_audio/sample_<k>}


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

    source = cfg.get("model") or cfg.transformer_ckpt  # model: a released name (pipeline/zoo.yaml) or a path
    path = resolve(source, cfg=cfg)
    if not path.exists():
        raise FileNotFoundError(f"transformer_ckpt={path} does not exist: train one with `python -m "
                                f"stages.train_transformer dataset={cfg.dataset.name}` (its run with no overrides is "
                                f"the default), pass transformer_ckpt=PATH or model=<a released model's name>")
    released = released_meta(source, cfg)  # the original's model: its backbone's features preset
    meta = released if released is not None else read_meta(model_files(path, "transformer").checkpoint)
    codebook = resolve(cfg.get("codebook_ckpt"), cfg=cfg)
    model = load_transformer(path, codebook_path=codebook).to(device).eval()
    meta["model_args"], meta["path"] = dict(model.model_args), str(path.resolve())
    return model, meta


def sampling_settings(cfg, meta: Mapping[str, Any], vocab: int) -> dict[str, Any]:
    """mode, temperature, top_k (`auto`: the checkpoint's preset, else half the vocabulary), top_p."""
    top_k = cfg.top_k
    if top_k == "auto":
        top_k = (meta.get("sampling") or {}).get("top_k") or vocab // 2
    return {"mode": str(cfg.mode), "temperature": float(cfg.temperature),
            "top_k": None if top_k is None else int(top_k), "top_p": None if cfg.top_p is None else float(cfg.top_p)}


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


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed) % (2 ** 63))


def generate(model, cond: torch.Tensor, settings: Mapping[str, Any], num_tokens: int = 265,
             gt_tokens: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Condition -> tokens (cached sampler) -> spectrograms (B, 80, 16 cols) in [0, 1] (unclamped, as the original)."""
    from pipeline.sampling import sample

    tokens = sample(model, cond, num_tokens=num_tokens, mode=settings["mode"], temperature=settings["temperature"],
                    top_k=settings["top_k"], top_p=settings["top_p"], gt_tokens=gt_tokens, generator=generator)
    spec = model.decode_to_spec(tokens)  # (B, 1, 80, 16 cols) in [-1, 1]-ish
    return ((spec[:, 0].float() + 1) / 2).cpu()  # (B, 80, T)


def run(cfg, run_dir: str | Path | None = None) -> dict[str, Any]:
    """The stage: a user's video / features (`video`, `features_file`) or a data set split."""
    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig

        run_dir = HydraConfig.get().runtime.output_dir
    run_dir = Path(run_dir)
    if cfg.get("video") or cfg.get("features_file"):
        return run_user(cfg, run_dir)
    return run_split(cfg, run_dir)


# ------------------------------------------------------------------------------------------ (a) a split
def sample_name(dataset_cfg: Mapping[str, Any], clip_id: str) -> str:
    """The original's file stem of a clip's samples: `<id>_mel` (VAS layout) or the clip id (VGGSound)."""
    from pipeline.data.layout import layout_of

    name = clip_id.split("/")[-1]
    return f"{name}_mel" if layout_of(dataset_cfg) == "vas" else name


def _check_settings(path: Path, settings: dict[str, Any], overwrite: bool) -> None:
    import json

    if path.exists() and not overwrite:
        old = json.loads(path.read_text())
        diffs = [f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in SETTINGS if old.get(k) != settings.get(k)]
        if diffs:
            raise ValueError(f"{path.parent} holds samples made with other settings ({'; '.join(diffs)}): pass "
                             f"overwrite=true to replace them, or change an override that names the run folder")


def condition_derangement(n: int, seed: int) -> list[int]:
    """cond_of[i]: the clip whose condition clip i gets; a single random cycle, so no clip keeps its own."""
    if n < 2:
        raise ValueError(f"condition_shuffle=true needs at least 2 clips in the split, it has {n}")
    order = np.random.RandomState(int(seed) % 2 ** 32).permutation(n)
    cond_of = [0] * n
    for j in range(n):
        cond_of[order[j]] = int(order[(j + 1) % n])
    return cond_of


def run_split(cfg, run_dir: Path) -> dict[str, Any]:
    from accelerate import PartialState

    from pipeline.data import ConditionedDataset
    from pipeline.tasks.transformer import batch_condition
    from pipeline.vocoder import load_vocoder_or_griffinlim

    state = PartialState(cpu=str(cfg.get("device", "auto")) == "cpu")
    model, meta = load_model(cfg, state.device)
    args = meta["model_args"]
    settings = sampling_settings(cfg, meta, int(args["vocab_size"]))
    split = str(cfg.split)
    out = run_dir / "samples" / split
    record = {"transformer_ckpt": meta["path"],
              "codebook_ckpt": cfg.get("codebook_ckpt"), **settings, "split": split,
              "samples_per_clip": int(cfg.samples_per_clip), "vocoder": cfg.get("vocoder_ckpt") or "griffinlim",
              "condition_shuffle": bool(cfg.get("condition_shuffle", False))}
    _check_settings(out / "sampling.json", record, bool(cfg.overwrite))
    condition = str(args.get("condition", "features"))
    fcfg = features_config(cfg, meta)
    if condition != "class" and fcfg is None:
        raise ValueError(f"{cfg.transformer_ckpt} records no features config: pass +features=KIND (conf/features)")
    if condition == "class":  # the data set needs a features config only for feature conditions
        fcfg = {"depth": 1, "feat_len": 215, "feat_crop_len": 212, "folders": []}
    ds = ConditionedDataset(cfg.dataset, fcfg, split, int(args.get("feat_sample_size") or 1), condition=condition)
    if condition != "class" and ds.depth != int(args["feat_depth"]):
        raise ValueError(f"features.depth {ds.depth} != the model's feat_depth {args['feat_depth']}")
    n, overwrite = int(cfg.samples_per_clip), bool(cfg.overwrite)
    cond_of = condition_derangement(len(ds), int(cfg.seed)) if record["condition_shuffle"] else list(range(len(ds)))

    def paths(i: int, k: int) -> tuple[Path, Path]:
        stem = out / f"cls_{ds.targets[i]}" / f"{sample_name(cfg.dataset, ds.ids[i])}_sample_{k}"
        return stem.with_suffix(".npy"), stem.with_suffix(".wav")

    def done(i: int, k: int) -> bool:
        npy, wav = paths(i, k)
        return not overwrite and npy.exists() and (wav.exists() or not cfg.write_wav)

    vocode = (load_vocoder_or_griffinlim(cfg.get("vocoder_ckpt"), device=state.device, zoo_cfg=cfg)
              if cfg.write_wav else None)
    torch.manual_seed(int(cfg.seed) + state.process_index)  # the No-Feats vectors of the data layer
    written = skipped = 0
    with state.split_between_processes(list(range(len(ds)))) as mine:
        for k in range(n):
            todo = [i for i in mine if not done(i, k)]
            skipped += len(mine) - len(todo)
            for start in range(0, len(todo), int(cfg.batch_size)):
                chunk = todo[start:start + int(cfg.batch_size)]
                batch = torch.utils.data.default_collate([ds[i] for i in chunk])
                if cond_of[chunk[0]] != chunk[0]:  # condition_shuffle: another clip's condition, own sound
                    batch = {**batch, **{key: value for key, value in torch.utils.data.default_collate(
                        [ds[cond_of[i]] for i in chunk]).items() if key in ("feature", "target")}}
                cond = batch_condition(batch, condition, state.device)
                gt = None
                if settings["mode"] == "half":
                    gt = model.encode_to_tokens(batch["image"].float().unsqueeze(1).to(state.device))
                gen = _generator(state.device, int(cfg.seed) * 1_000_003 + k * 100_003 + chunk[0])
                mels = generate(model, cond, settings, model.num_tokens, gt, gen)  # (B, 80, 848)
                waves = vocode(mels.to(state.device)).cpu().numpy() if vocode is not None else None
                for j, i in enumerate(chunk):
                    npy, wav = paths(i, k)
                    save_npy(npy, mels[j].numpy().astype(np.float32))
                    if waves is not None:
                        save_wav(wav, waves[j], SR, subtype="PCM_24")
                written += len(chunk)
                log.info("sample %d/%d: %d clips written (process %d)", k + 1, n, written, state.process_index)
    state.wait_for_everyone()
    if state.is_main_process:
        rows = []
        for i in range(len(ds)):
            for k in range(n):
                npy, wav = paths(i, k)
                if npy.exists():
                    rows.append({"clip_id": ds.ids[i], "label": ds.labels.label(ds.ids[i]), "target": ds.targets[i],
                                 "k": k, "npy": str(npy.relative_to(out)),
                                 "wav": str(wav.relative_to(out)) if wav.exists() else "",
                                 "condition_clip": ds.ids[cond_of[i]]})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["clip_id", "label", "target", "k", "npy", "wav", "condition_clip"])
        writer.writeheader()
        writer.writerows(rows)
        with atomic_write(out / "manifest.csv", "w") as f:
            f.write(buf.getvalue())
        save_json(out / "sampling.json", record)
        print(f"[sample] {split}: {written} samples written, {skipped} skipped (already there) on process 0 of "
              f"{state.num_processes}; {len(rows)} in {out / 'manifest.csv'}")
        if cfg.get("av_benchmark"):
            from pipeline.av_benchmark import write_av_benchmark

            bench = write_av_benchmark(cfg.dataset, rows, out, run_dir / AV_BENCHMARK_DIR / split, n)
            print(f"[sample] av-benchmark layout: {bench} (see its README.md)")
    state.wait_for_everyone()
    return {"written": written, "skipped": skipped, "out": out}


# ---------------------------------------------------------------------------------- (b) a user's video
def list_videos(path: Path) -> list[Path]:
    if path.is_dir():
        videos = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
        if not videos:
            raise FileNotFoundError(f"video={path}: no video files ({', '.join(VIDEO_SUFFIXES)}) in this folder")
        return videos
    if not path.is_file():
        raise FileNotFoundError(f"video={path} does not exist")
    return [path]


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
    from pipeline.data.features import FeatureSampler, center_offset, pad_or_truncate

    feats = np.asarray(feats, dtype=np.float32)
    depth = int(model_args["feat_depth"])
    if feats.ndim != 2 or feats.shape[1] != depth or feats.shape[0] == 0:
        kind = fcfg.get("name") if fcfg else "?"
        raise ValueError(f"{source}: features of shape {feats.shape}, but the model was trained on (frames, {depth}) "
                         f"{kind} features: extract them with `python -m stages.extract_features features={kind}` "
                         f"or pass the matching transformer_ckpt")
    feat_len, crop = int(fcfg.get("feat_len", 215)), int(fcfg.get("feat_crop_len", 212))
    feats = pad_or_truncate(feats, feat_len)
    feats = feats[center_offset(feat_len, crop):][:crop]  # (212, D)
    sampled = FeatureSampler(int(model_args["feat_sample_size"]), crop)(feats)  # (S, D)
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
    name: str = "transformer_ckpt"   # names the checkpoint in error messages
    cache: dict = field(default_factory=dict)  # feature networks, by (kind, weights, width)

    @property
    def args(self) -> dict[str, Any]:
        return self.meta["model_args"]

    @property
    def condition(self) -> str:
        return str(self.args.get("condition", "features"))


def load_user_models(cfg, device: torch.device | None = None) -> UserModels:
    """The transformer, its features config and the vocoder of a sample config (`transformer_ckpt`,
    `codebook_ckpt`, `vocoder_ckpt`, `feature_weights`, `+features`, `device`)."""
    from pipeline.vocoder import load_vocoder_or_griffinlim

    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() and cfg.get("device", "auto") != "cpu" else "cpu")
    model, meta = load_model(cfg, device)
    return UserModels(model, meta, features_config(cfg, meta), load_vocoder_or_griffinlim(cfg.get("vocoder_ckpt"),
                      device=device, zoo_cfg=cfg), device, str(cfg.get("model") or cfg.transformer_ckpt))


def sample_user_clip(models: UserModels, video: Path | None, outs: Sequence[Path], settings: Mapping[str, Any], *,
                     seed: int = 0, max_seconds: float | None = None, features: np.ndarray | Path | None = None,
                     class_id: int | None = None, seconds: float | None = None) -> list[dict[str, Any]]:
    """One sample per path of `outs` from a video (its features extracted) or `features` (a (T, D) array or a
    .pkl file): writes `<out>.npy`, `<out>.wav` and, with a video, `<out>.mp4` (its picture, the new sound).

    Returns per sample {"mel": (80, T) float32 in [0, 1], "wave": float32 at 22050 Hz, "npy", "wav", "mp4"
    (None without a video)}. Sample k is seeded by seed * 1_000_003 + k, as the stage does.
    """
    from pipeline.video import mux_audio

    if seconds is None and video is not None:
        seconds = video_seconds(video)
    model, device = models.model, models.device
    span = seconds if max_seconds is None or seconds is None else min(seconds, float(max_seconds))
    if _long_video_path(models, video, features, settings, span):
        from pipeline.long_video import sample_long_video

        return [sample_long_video(models, video, out, settings, seed=seed, max_seconds=span, class_id=class_id,
                                  sample_index=k) for k, out in enumerate(outs)]
    cond = _user_condition(models, video, features, class_id, seed)
    cols = model.first_stage_permuter.W
    if span is not None and span * MEL_FPS > cols * FRAMES_PER_COLUMN:
        cols = math.ceil(span * MEL_FPS / FRAMES_PER_COLUMN)  # sliding window past 10 s
    gt = _user_gt_tokens(model, video, settings, cols, device)
    results = []
    for k, out in enumerate(outs):
        gen = _generator(device, int(seed) * 1_000_003 + k)
        mel = generate(model, cond, settings, model.first_stage_permuter.H * cols, gt, gen)[0]  # (80, 16 cols)
        wave = np.asarray(models.vocode(mel.numpy()), dtype=np.float32)
        if span is not None:
            wave = wave[:round(span * SR)]  # the sound stops where the video (or max_seconds) does
        out = Path(out)
        save_npy(out.with_suffix(".npy"), mel.numpy())
        save_wav(out.with_suffix(".wav"), wave, SR, subtype="PCM_24")
        mp4 = mux_audio(video, wave, out.with_suffix(".mp4"), sr=SR) if video is not None else None
        results.append({"mel": mel.numpy(), "wave": wave, "npy": out.with_suffix(".npy"),
                        "wav": out.with_suffix(".wav"), "mp4": None if mp4 is None else Path(mp4)})
    return results


def _long_video_path(models: UserModels, video: Path | None, features, settings: Mapping[str, Any],
                     span: float | None) -> bool:
    """Whether a video is sampled past one 10-s window with the condition following the picture
    (`pipeline.long_video`): from scratch, features streamed from the video (RGB kinds) or no visual condition."""
    from pipeline.long_video import STREAMED_KINDS

    if video is None or features is not None or span is None or settings["mode"] != "nopix":
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


def run_user(cfg, run_dir: Path) -> dict[str, Any]:
    from pipeline.extraction import ClipError

    models = load_user_models(cfg)
    settings = sampling_settings(cfg, models.meta, int(models.args["vocab_size"]))
    if cfg.get("features_file"):
        if cfg.get("video") and len(list_videos(Path(str(cfg.video)))) != 1:
            raise ValueError("features_file goes with one video file (or none), not a folder")
        inputs = [(Path(str(cfg.video)) if cfg.get("video") else None, Path(str(cfg.features_file)))]
    else:
        inputs = [(v, None) for v in list_videos(Path(str(cfg.video)))]
    root = Path(str(cfg.video)) if cfg.get("video") and Path(str(cfg.video)).is_dir() else None
    failures = FailureManifest(run_dir / "failures.jsonl")
    written = skipped = 0
    for video, features_file in inputs:
        source = video or features_file
        try:
            seconds = video_seconds(video) if video is not None else None
            stem = source.relative_to(root).with_suffix("") if root is not None else Path(source.stem)
            outs = [run_dir / f"{stem}_sample_{k}" for k in range(int(cfg.samples_per_clip))]
            if not cfg.overwrite and all(o.with_suffix(".wav").exists() and
                                         (video is None or o.with_suffix(".mp4").exists()) for o in outs):
                skipped += len(outs)
                continue
            for result in sample_user_clip(models, video, outs, settings, seed=int(cfg.seed),
                                           max_seconds=cfg.max_seconds, features=features_file,
                                           class_id=cfg.get("class_id"), seconds=seconds):
                written += 1
                print(f"[sample] {source} -> {result['wav']}" + (f", {result['mp4']}" if video is not None else ""),
                      flush=True)
        except (ClipError, ValueError, FileNotFoundError) as error:
            if len(inputs) == 1:
                raise
            failures.add(str(source), str(error))
            log.warning("%s failed: %s", source, error)
    if failures.count:
        raise SystemExit(f"[sample] {written} written, {skipped} skipped, {failures.count} failed: see "
                         f"{failures.path}")
    return {"written": written, "skipped": skipped, "out": run_dir}


def _user_condition(models: UserModels, video: Path | None, features: np.ndarray | Path | None,
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


def _user_gt_tokens(model, video: Path | None, settings, cols: int, device) -> torch.Tensor | None:
    """mode=half primes with the video's own sound (first 130 tokens of its 10-s mel); one window only."""
    if settings["mode"] != "half":
        return None
    if video is None or cols != model.first_stage_permuter.W:
        raise ValueError("mode=half primes with the video's own sound: it needs a video of at most 10 s "
                         "(or max_seconds=10); use mode=nopix otherwise")
    return model.encode_to_tokens(_video_image(video, device))


def _video_image(video: Path, device: torch.device) -> torch.Tensor:
    """The video's own sound as the model's input: (1, 80, 848) in [-1, 1] (its 10-s mel, centre-cropped)."""
    from pipeline.data.features import center_offset
    from pipeline.mel import extract_mel

    mel = extract_mel(video, chain="direct")  # (80, 860) in [0, 1]; ClipError without an audio stream
    x = 2 * mel[:, center_offset(mel.shape[1], 848):][:, :848] - 1
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None].to(device)
