"""`python -m stages.sample`: spectrograms, waveforms and videos from a trained transformer.

Two modes (conf/sample.yaml):

(a) a data set split (`split=valid`): `samples_per_clip` samples of every clip, batched, sharded over processes
    (`accelerate launch -m stages.sample ...`: each process takes its own contiguous share of the clips, without
    the padding duplicates of a DistributedSampler), resumable (a sample whose files exist is skipped). Layout,
    as the original's generate_samples.py (spec §7.1), so the evaluation stage reads it unchanged:
        <run>/samples/<split>/cls_<target>/<name>_sample_<k>.npy   float32 (80, 848) = (x + 1) / 2, not clamped
        <run>/samples/<split>/cls_<target>/<name>_sample_<k>.wav   22050 Hz (MelGAN, else Griffin-Lim)
        <run>/samples/<split>/manifest.csv                        clip_id, label, target, k, npy, wav
        <run>/samples/<split>/sampling.json                       checkpoints, sampling settings, the sampler
    `<name>` is the mel file's stem for the VAS layout (`video_02677_mel`) and the clip id for VGGSound, as the
    original. A rerun in the same folder with other settings (`SETTINGS`: the checkpoints, vocoder included, the
    sampling settings, the sampler's precision) is refused, naming them (`overwrite=true` redoes it).
    `condition_shuffle=true` gives every clip the visual condition of another clip (a fixed derangement,
    `condition_derangement`, recorded in the manifest's `condition_clip`), same seeds otherwise: the baseline that
    shows how much the video drives the sound. `av_benchmark=true` also lays the samples and the real clips out
    for av-benchmark (`pipeline.evaluate.av_benchmark`).

(b) a user's own video file or folder (`video=...`) or pre-extracted features (`features_file=....pkl`): the
    features the model was trained on are extracted with `pipeline.extract.visual` (kind, preprocessing and weights
    recorded in the transformer checkpoint; `feature_weights=PATH` or `+features=KIND` override them), then
    sampled, decoded and vocoded; writes `<run>/<stem>_sample_<k>.{npy,wav}` and, with a video,
    `<stem>_sample_<k>.mp4` (the original picture, the new sound); `<run>/sampling.json` as (a), with the same
    refusal: a video whose files exist is skipped only when they were made with the same settings.
    Rules of a user's clip (its length, the sliding window past 10 s): `pipeline.generate.user_clip`.
"""
from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.build.vocoder import load_vocoder_or_griffinlim
from pipeline.config.device import forces_cpu
from pipeline.data.datasets import ConditionedDataset, batch_condition
from pipeline.data.layout import layout_of
from pipeline.evaluate.av_benchmark import write_av_benchmark
from pipeline.files.writes import FailureManifest, atomic_write, save_json, save_npy
from pipeline.generate.decoding import TokenSampler, decoding_path, describe
from pipeline.generate.inputs import check_inputs, list_videos
from pipeline.generate.loading import (
    features_config,
    load_model,
    load_user_models,
    sampling_settings,
    seeded_generator,
)
from pipeline.generate.settings import FIELDS, SamplingSettings
from pipeline.generate.user_clip import generate, sample_user_clip, video_seconds
from pipeline.media.audio import SR, save_wav
from pipeline.media.source import ClipError
from pipeline.runs.folders import run_folder
from pipeline.runs.lock import hold_run_folder
from pipeline.runs.outcomes import Outcomes

log = logging.getLogger(__name__)

SETTINGS_FILE = "sampling.json"  # what made a run's samples: a rerun with other settings is refused
# every key that changes a sample but not the run folder's name (checkpoint paths are left out of it, `top_k: auto`
# and `precision: auto` resolve per model and device): compared with the recorded ones before anything is written
SETTINGS = ("transformer.ckpt", "codebook.ckpt", "vocoder.ckpt", *FIELDS, "precision", "sampler", "condition_shuffle")
EXACT = describe(decoding_path(torch.device("cpu"), "fp32", False))  # what sampled the runs recorded before their
# sampler was (the only path then)
AV_BENCHMARK_DIR = "av_benchmark"  # <run>/av_benchmark/<split>/{gt_audio,videos,pred_audio/sample_<k>}


def run(cfg, run_dir: str | Path | None = None) -> dict[str, Any]:
    """The stage: a user's video / features (`video`, `features_file`) or a data set split."""

    check_inputs(cfg)  # files, checkpoints, names: before any model loads or the run folder is made
    run_dir = run_folder(run_dir)
    with hold_run_folder(run_dir):  # one launch per run folder (its ranks share the clips: rank 0 holds it)
        if cfg.get("video") or cfg.get("features_file"):
            return run_user(cfg, run_dir)
        return run_split(cfg, run_dir)


# ------------------------------------------------------------------------------------------ (a) a split
def sample_name(dataset_cfg: Mapping[str, Any], clip_id: str) -> str:
    """The original's file stem of a clip's samples: `<id>_mel` (VAS layout) or the clip id (VGGSound)."""

    name = clip_id.split("/")[-1]
    return f"{name}_mel" if layout_of(dataset_cfg) == "vas" else name


def settings_record(cfg, meta: Mapping[str, Any], settings: SamplingSettings, sampler: TokenSampler) -> dict[str, Any]:
    """What makes the samples of a run (SETTINGS, resolved: the checkpoint's path, `top_k`, the sampler's dtype)."""
    return {"transformer.ckpt": meta["path"], "codebook.ckpt": cfg.codebook.ckpt,
            "vocoder.ckpt": cfg.vocoder.ckpt or "griffinlim", **settings.options(), "precision": sampler.path["dtype"],
            "sampler": str(sampler), "condition_shuffle": bool(cfg.condition_shuffle)}


def check_settings(path: Path, record: dict[str, Any], overwrite: bool) -> None:
    """Refuses a rerun whose SETTINGS differ from those recorded in `path` (unless `overwrite`), naming them."""
    if path.exists() and not overwrite:
        old = json.loads(path.read_text())
        old.setdefault("vocoder.ckpt", old.get("vocoder"))  # recorded as `vocoder` before
        old.setdefault("precision", "fp32")
        old.setdefault("sampler", EXACT)
        diffs = [f"{k}: {old.get(k)!r} -> {record.get(k)!r}" for k in SETTINGS if old.get(k) != record.get(k)]
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


    state = PartialState(cpu=forces_cpu(cfg.device))
    model, meta = load_model(cfg, state.device)
    sampler = TokenSampler.from_config(model, cfg.sampling)
    args = meta["model_args"]
    settings = sampling_settings(cfg, meta)
    split = str(cfg.split)
    out = run_dir / "samples" / split
    record = {**settings_record(cfg, meta, settings, sampler), "split": split,
              "samples_per_clip": int(cfg.samples_per_clip)}
    check_settings(out / SETTINGS_FILE, record, bool(cfg.overwrite))
    condition = str(args.get("condition", "features"))
    fcfg = features_config(cfg, meta)
    if condition != "class" and fcfg is None:
        raise ValueError(f"{cfg.transformer.ckpt} records no features config: pass +features=KIND (conf/features)")
    if condition == "class":  # the data set needs a features config only for feature conditions
        fcfg = {"depth": 1, "feat_len": int(cfg.clip.feat_len), "feat_crop_len": int(cfg.clip.feat_crop_len),
                "folders": []}
    ds = ConditionedDataset(cfg.dataset, fcfg, split, int(args.get("feat_sample_size") or 1), condition=condition,
                            spec_len=int(cfg.clip.spec_len), crop_len=int(cfg.clip.crop_len))
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

    vocode = (load_vocoder_or_griffinlim(cfg.vocoder.ckpt, device=state.device, zoo_cfg=cfg)
              if cfg.write_wav else None)
    torch.manual_seed(int(cfg.seed) + state.process_index)  # the No-Feats vectors of the data layer
    if state.is_main_process:  # before any sample: a rerun with other settings is refused even after a crash
        save_json(out / SETTINGS_FILE, record)
    print(f"[sample] {split}: tokens by {sampler}", flush=True)
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
                if settings.mode == "half":
                    gt = model.encode_to_tokens(batch["image"].float().unsqueeze(1).to(state.device))
                gen = seeded_generator(state.device, int(cfg.seed) * 1_000_003 + k * 100_003 + chunk[0])
                mels = generate(sampler, cond, settings, model.num_tokens, gt, gen)  # (B, 80, 848)
                waves = None
                if vocode is not None:
                    with sampler.autocast():
                        waves = vocode(mels.to(state.device)).cpu().numpy()
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
        done = Outcomes(f"sample {split}" + (f", process 0 of {state.num_processes}" if state.num_processes > 1
                                             else ""), per_item=False)
        done.add(written=written, skipped=skipped)
        done.finish(f"{out} ({len(rows)} samples in manifest.csv)")
        if cfg.get("av_benchmark"):

            bench = write_av_benchmark(cfg.dataset, rows, out, run_dir / AV_BENCHMARK_DIR / split, n)
            print(f"[sample] av-benchmark layout: {bench} (see its README.md)")
    state.wait_for_everyone()
    return {"written": written, "skipped": skipped, "out": out}


# ---------------------------------------------------------------------------------- (b) a user's video
def run_user(cfg, run_dir: Path) -> dict[str, Any]:

    models = load_user_models(cfg)
    settings = sampling_settings(cfg, models.meta)
    record = settings_record(cfg, models.meta, settings, models.sampler)
    check_settings(run_dir / SETTINGS_FILE, record, bool(cfg.overwrite))
    save_json(run_dir / SETTINGS_FILE, record)
    print(f"[sample] tokens by {models.sampler}", flush=True)
    if cfg.get("features_file"):
        if cfg.get("video") and len(list_videos(Path(str(cfg.video)))) != 1:
            raise ValueError("features_file goes with one video file (or none), not a folder")
        inputs = [(Path(str(cfg.video)) if cfg.get("video") else None, Path(str(cfg.features_file)))]
    else:
        inputs = [(v, None) for v in list_videos(Path(str(cfg.video)))]
    root = Path(str(cfg.video)) if cfg.get("video") and Path(str(cfg.video)).is_dir() else None
    failures = FailureManifest(run_dir / "failures.jsonl")
    done = Outcomes("sample")
    for video, features_file in inputs:
        source = video or features_file
        try:
            stem = source.relative_to(root).with_suffix("") if root is not None else Path(source.stem)
            outs = [run_dir / f"{stem}_sample_{k}" for k in range(int(cfg.samples_per_clip))]
            if not cfg.overwrite and all(o.with_suffix(".wav").exists() and
                                         (video is None or o.with_suffix(".mp4").exists()) for o in outs):
                for out in outs:  # overwrite=true samples again
                    done.skipped(out.with_suffix(".wav" if video is None else ".mp4"))
                continue
            seconds = video_seconds(video) if video is not None else None  # refuses a truncated video too
            for result in sample_user_clip(models, video, outs, settings, seed=int(cfg.seed),
                                           max_seconds=cfg.max_seconds, features=features_file,
                                           class_id=cfg.get("class_id"), seconds=seconds):
                done.written(f"{source} -> {result['wav']}" + (f", {result['mp4']}" if video is not None else ""))
        except (ClipError, ValueError, FileNotFoundError) as error:
            if len(inputs) == 1:
                raise
            failures.add(str(source), str(error))
            done.failed(source, error)
    done.finish(run_dir)
    if failures.count:
        raise SystemExit(f"[sample] {done.summary()}: see {failures.path}")
    return {"written": done.counts["written"], "skipped": done.counts["skipped"], "out": run_dir}
