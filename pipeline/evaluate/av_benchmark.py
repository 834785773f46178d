"""Samples of a split in the layout av-benchmark reads (github.com/hkchengrex/av-benchmark, MMAudio's evaluation:
FD with PaSST / PANNs / VGGish, KL, ISc, IB-score, DeSync), beside the matching real clips.

    <out>/gt_audio/<name>.wav                the real clip's own sound (decoded from its video, 22050 Hz mono)
    <out>/videos/<name>.mp4                  the real clip (for extract_video.py: IB-score and DeSync)
    <out>/pred_audio/sample_<k>/<name>.wav   sample k of the clip (one folder per k: av-benchmark pairs files
                                             one to one by name)
    <out>/README.md                          the commands to run

av-benchmark lists each folder flat and pairs ground truth, predictions and videos by file name without the
extension, so `<name>` is the clip id with `/` replaced by `__` (VAS `dog/video_02677` -> `dog__video_02677`;
VGGSound ids are already flat and keep the names of MMAudio's precomputed VGGSound caches).
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.layout import audio_path, clip_source
from pipeline.files.writes import atomic_write
from pipeline.media.audio import SR, load_audio, save_wav


def flat_name(clip_id: str) -> str:
    """av-benchmark's file stem of a clip: its id with `/` replaced by `__`."""
    return clip_id.replace("/", "__")


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link when src and dst share a file system (no extra space), else a copy; replaces dst."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def real_audio(dataset_cfg: Mapping[str, Any], clip_id: str) -> np.ndarray:
    """The clip's own sound at 22050 Hz: decoded from its video, else the stored 10-s waveform (`_audio.npy`)."""

    video, start = clip_source(dataset_cfg, clip_id) if dataset_cfg.get("videos") else (None, 0.0)
    if video is not None and video.is_file() and not start:  # a window of a longer video: its stored sound
        return load_audio(video, sr=SR, mono=True)
    stored = audio_path(dataset_cfg, clip_id)
    if stored.is_file():
        return np.load(stored).astype(np.float32)
    raise FileNotFoundError(f"no real audio for clip {clip_id!r}: neither its video {video} nor {stored} exists; "
                            f"check dataset.videos / dataset.features or run `python -m stages.extract_mels`")


def write_av_benchmark(dataset_cfg: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], samples_dir: Path,
                       out: Path, samples_per_clip: int) -> Path:
    """Lay out the manifest rows' wavs (relative to `samples_dir`) and their real clips under `out`.

    Rows without a wav (write_wav=false) are an error: av-benchmark reads audio. Existing real files are kept
    (a rerun only adds what is missing); prediction links are refreshed. Returns `out`.
    """

    missing = [r["npy"] for r in rows if not r.get("wav")]
    if missing:
        raise ValueError(f"av_benchmark=true needs the samples' wavs, but {len(missing)} have none (e.g. "
                         f"{missing[0]}): sample with write_wav=true")
    out = Path(out)
    videos_missing = 0
    for clip_id in sorted({str(r["clip_id"]) for r in rows}):
        name = flat_name(clip_id)
        gt = out / "gt_audio" / f"{name}.wav"
        if not gt.exists():
            save_wav(gt, real_audio(dataset_cfg, clip_id), SR, subtype="PCM_16")
        video, start = clip_source(dataset_cfg, clip_id) if dataset_cfg.get("videos") else (None, 0.0)
        if video is not None and video.is_file() and not start:  # a window of a longer video has no file of its own
            _link_or_copy(video, out / "videos" / f"{name}.mp4")
        else:
            videos_missing += 1
    for r in rows:
        _link_or_copy(Path(samples_dir) / str(r["wav"]), out / "pred_audio" / f"sample_{r['k']}" /
                      f"{flat_name(str(r['clip_id']))}.wav")
    _write_readme(out, samples_per_clip, videos_missing)
    return out


def _write_readme(out: Path, samples_per_clip: int, videos_missing: int) -> None:

    note = (f"\n{videos_missing} clip(s) have no video here: IB-score and DeSync skip them.\n"
            if videos_missing else "")
    text = f"""# SpecVQGAN samples for av-benchmark

Made by `python -m stages.sample ... av_benchmark=true`. Evaluate with av-benchmark
(https://github.com/hkchengrex/av-benchmark, installed and with its weights, on a GPU):

```bash
cd av-benchmark
# once: visual features of the real clips (IB-score, DeSync)
python extract_video.py --gt_cache {out}/gt_cache --video_path {out}/videos --audio_length=8
# per sample index k in 0..{samples_per_clip - 1}: FD (PaSST, PANNs, VGGish), KL, ISc, IB-score, DeSync
python evaluate.py --gt_audio {out}/gt_audio --gt_cache {out}/gt_cache \\
    --pred_audio {out}/pred_audio/sample_0 --pred_cache {out}/pred_cache/sample_0 --audio_length=8
```

Samples are 9.85 s (848 mel frames); MMAudio's results are on 8 s, so `--audio_length=8` compares like with like.
Files pair by name (`<class>__<video id>` for VAS, the clip id for VGGSound).{note}
"""
    with atomic_write(out / "README.md", "w") as f:
        f.write(text)
