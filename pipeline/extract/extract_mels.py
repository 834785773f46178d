"""The `extract_mels` stage: every clip's (80, 860) mel and 10-s waveform, in the original's file layout.

VAS layout: `<features>/<class>/melspec_10s_22050hz/<id>_{mel,audio}.npy`; VGGSound layout:
`<features>/melspec_10s_22050hz/<clip>_{mel,audio}.npy`. Finished clips are skipped, failures (corrupt or
truncated files, no audio stream, silence) go to `<run folder>/failures.jsonl` while the run goes on, and
the stage exits non-zero with the summary when any clip failed.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from pipeline.data.layout import audio_path, mel_path
from pipeline.extract.clips import Clip, ClipError, dataset_clips, finish, run_clips, shard, split_file_of
from pipeline.files.writes import save_npy
from pipeline.media.mel import CHAINS, extract_mel_and_audio
from pipeline.runs.folders import run_folder
from pipeline.runs.lock import hold_run_folder

log = logging.getLogger(__name__)


def process_clip(clip: Clip, chain: str, length: int, spec_len: int, sample_rate: int, silence_peak: float,
                 save_audio: bool) -> None:
    """Mel (and waveform) of one clip, written atomically to `clip.outputs` (mel first, then audio)."""
    mel, wave, info = extract_mel_and_audio(clip.source, chain=chain, length=length, spec_len=spec_len,
                                            sr=sample_rate, start=clip.start)
    if info.peak < silence_peak:
        raise ClipError(f"silent: the audio of {clip.source} peaks at {info.peak:.2e} < {silence_peak:g}; "
                        "drop the clip from the split (a silent mel teaches nothing)")
    if info.looped:
        log.warning("%s lasts %.2f s < %.0f s: looped to full length, as the original does", clip.id,
                    info.duration, length / sample_rate)
    save_npy(clip.outputs[0], mel.astype(np.float32, copy=False))
    if save_audio:
        save_npy(clip.outputs[1], wave.astype(np.float32, copy=False))


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> None:
    """Extract mels for `cfg.split` (or every video when null) of `cfg.dataset`, shard `cfg.shard`.

    `run_dir` (for failures.jsonl) defaults to Hydra's run folder.
    """

    if cfg.chain not in CHAINS:
        raise ValueError(f"chain={cfg.chain!r} is unknown: use one of {CHAINS}")
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    dataset["features"] = str(cfg.features_dir)
    split_file = split_file_of(cfg)

    def outputs(clip_id: str) -> tuple[Path, ...]:
        mel = mel_path(dataset, clip_id)
        return (mel, audio_path(dataset, clip_id)) if cfg.save_audio else (mel,)

    clips = shard(dataset_clips(dataset, split_file, outputs), cfg.shard, cfg.num_shards)

    run_dir = run_folder(run_dir)
    log.info("%d clips (shard %d of %d), chain=%s -> %s", len(clips), cfg.shard, cfg.num_shards, cfg.chain,
             cfg.features_dir)
    process = functools.partial(process_clip, chain=cfg.chain, length=cfg.length, spec_len=cfg.spec_len,
                                sample_rate=cfg.sample_rate, silence_peak=cfg.silence_peak,
                                save_audio=cfg.save_audio)
    with hold_run_folder(run_dir, name=f"shard {cfg.shard} of {cfg.num_shards}"):  # shards share the folder
        summary = run_clips(clips, process, run_dir / "failures.jsonl", num_workers=cfg.num_workers,
                            desc=f"mels ({cfg.chain})")
    finish("extract_mels", summary, f"Mels in {cfg.features_dir} (<class>/melspec_10s_22050hz for the VAS layout, "
                                    f"melspec_10s_22050hz for VGGSound)", bool(cfg.fail_on_clip_errors))
