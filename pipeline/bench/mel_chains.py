"""Clips per second of the two mel chains on the real VAS clips (../shared/data/vas), as ratios to `direct`.

Also times the original chain with full-size video re-encoding (what the original ran) against the 32-px
re-encode that gives the same audio, and the mel transform alone against librosa's melspectrogram.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from pipeline.media.audio import SR
from pipeline.media.mel import (
    FMAX,
    FMIN,
    HOP,
    LENGTH,
    N_FFT,
    N_MELS,
    extract_mel,
    mel_spectrogram,
    original_chain_audio,
)


def _clips() -> list[Path]:
    shared = Path(os.environ.get("SPECVQGAN_SHARED", Path(__file__).resolve().parents[3] / "shared"))
    clips = sorted((shared / "data" / "vas" / "videos").glob("*/*.mp4"))
    if not clips:
        raise SystemExit(f"no VAS clips under {shared}/data/vas/videos: set SPECVQGAN_SHARED")
    return clips


def _rate(fn, items) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - start)


def main() -> None:
    import librosa
    import torch


    torch.set_num_threads(1)
    clips = _clips()
    extract_mel(clips[0], chain="direct")  # warm up librosa / numba
    direct = _rate(lambda c: extract_mel(c, chain="direct"), clips)
    original = _rate(lambda c: extract_mel(c, chain="original"), clips)
    print(f"direct:   {direct:6.2f} clips/s (baseline)")
    print(f"original: {original:6.2f} clips/s = {original / direct:.3f}x direct")

    few = clips[:3]
    small = _rate(lambda c: original_chain_audio(c, small_video=True), few)
    full = _rate(lambda c: original_chain_audio(c, small_video=False), few)
    print(f"ffmpeg chain, 32-px video re-encode: {small / full:.1f}x the full-size re-encode "
          f"({len(few)} clips)")

    wave = np.random.default_rng(0).standard_normal(LENGTH).astype(np.float32) * 0.1
    ours = _rate(lambda _: mel_spectrogram(wave), range(20))

    def reference(_) -> np.ndarray:
        return librosa.feature.melspectrogram(y=wave, sr=SR, n_fft=N_FFT, hop_length=HOP, power=1,
                                              n_mels=N_MELS, fmin=FMIN, fmax=FMAX, pad_mode="reflect")

    ref = _rate(reference, range(20))
    print(f"mel transform: {ours / ref:.2f}x librosa.feature.melspectrogram (cached basis)")


if __name__ == "__main__":
    main()
