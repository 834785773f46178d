"""Sound events and audio-visual synchrony on mel spectrograms.

A sound onset is a sharp rise of a mel frame's energy: the [0, 1] mel is turned back into power
(`20 log10 |m| = 100 mel - 80`, the inverse of `pipeline.media.mel.mel_spectrogram`), summed over the 80 bins and
taken in dB; a frame is an onset when it rises at least `ONSET_RISE_DB` above the quietest of the
`ONSET_LAG` frames before it, is the peak of that rise (librosa's peak-picking rule, `peak_pick`, at most one onset per
`ONSET_WAIT` frames) and the sound it starts reaches `ONSET_MIN_DB` within `ONSET_WAIT` frames (so faint blips in
near-silence do not count; a blurred onset's steepest rise comes a few frames before its sound is loud: the
demo codebook's chirps rise from -60 dB through -24 dB to -12 dB, and a test at the rise's own frame missed 60% of
them in reconstructions of real clips, whose energy rises by 35 dB). On the demo's
real mels this finds every event within 1 frame (and any loop seam of the mel stage that is a real energy rise).

The video's events come from the demo data set's `events.json` (each clip's onsets in seconds of the video).
Clips shorter than 10 s are looped by the mel stage (`pipeline.media.mel.loop_period`: the clip followed by silence
up to whole AAC frames), so their events repeat every loop period; `clip_events` expands them the same way and
maps them into the frames of the centre-cropped 848-frame window the models see.

Synchrony = the share of events with a detected onset within `tolerance` frames (one codebook column: 16 mel
frames, 0.19 s).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.conditions import center_offset
from pipeline.media.audio import SR, load_audio, source_rate
from pipeline.media.mel import CROP_LEN, FRAMES_PER_COLUMN, HOP, LENGTH, SPEC_LEN, loop_period

ONSET_RISE_DB = 6.0   # a rise of at least 4x the power: far above the frame-to-frame jitter of noise (~1 dB)
ONSET_LAG = 3         # frames the rise may take (generated mels are blurrier than real ones)
ONSET_WAIT = 8        # frames between two onsets at least (0.09 s)
ONSET_MIN_DB = -20.0  # and its sound must get this loud (demo events reach about +13 dB, near-silence -80)


def frame_energy_db(mel01: np.ndarray) -> np.ndarray:
    """(T,) frame energies in dB of a [0, 1] mel (80, T); values outside [0, 1] are clipped first."""
    mel = np.clip(np.asarray(mel01, dtype=np.float64), 0.0, 1.0)
    if mel.ndim != 2:
        raise ValueError(f"expected a mel (bins, frames), got shape {mel.shape}")
    return 10.0 * np.log10(np.sum(10.0 ** ((100.0 * mel - 80.0) / 10.0), axis=0))


def onset_strength(mel01: np.ndarray, lag: int = ONSET_LAG) -> np.ndarray:
    """(T,) dB rise of each frame over the quietest of the `lag` frames before it (0 where it falls)."""
    energy = frame_energy_db(mel01)
    padded = np.concatenate([np.full(lag, energy[0]), energy])
    before = np.min(np.stack([padded[i:i + len(energy)] for i in range(lag)]), axis=0)
    return np.maximum(energy - before, 0.0)


def onset_frames(mel01: np.ndarray, rise_db: float = ONSET_RISE_DB, lag: int = ONSET_LAG,
                 wait: int = ONSET_WAIT, min_db: float = ONSET_MIN_DB) -> np.ndarray:
    """Frame indices of the sound onsets of a [0, 1] mel (80, T), ascending."""
    strength = onset_strength(mel01, lag)
    peaks = peak_pick(strength, pre=lag, post=lag + 1, delta=rise_db, wait=wait)
    if not peaks.size:
        return peaks
    energy = frame_energy_db(mel01)
    loudest = np.array([energy[n:n + wait + 1].max() for n in peaks])  # the sound each rise starts
    return peaks[loudest >= min_db]


def peak_pick(x: np.ndarray, pre: int, post: int, delta: float, wait: int) -> np.ndarray:
    """Indices n where x[n] is the maximum of x[n - pre : n + post], at least `delta` above the mean of that
    window, and more than `wait` after the previous peak: librosa.util.peak_pick with pre_max = pre_avg = pre
    and post_max = post_avg = post (windows cut at the ends). Written out because librosa's numba kernel
    crashed (segmentation fault) in a fresh virtual environment on this machine kind; T is a clip's frames."""
    x = np.asarray(x, dtype=np.float64)
    peaks: list[int] = []
    for n in range(len(x)):
        window = x[max(0, n - pre):n + post]
        if x[n] > 0 and x[n] == window.max() and x[n] >= window.mean() + delta and (
                not peaks or n > peaks[-1] + wait):
            peaks.append(n)
    return np.asarray(peaks, dtype=np.int64)


# ---------------------------------------------------------------------------------------------- events
def read_events(path: str | Path) -> dict[str, list[float]]:
    """clip id -> event onsets in seconds, from the demo data set's `events.json`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: it is written by `python -m stages.make_demo_data`")
    data = json.loads(path.read_text())
    if not isinstance(data, Mapping) or not isinstance(data.get("onsets_s"), Mapping):
        raise ValueError(f"{path} holds no `onsets_s` mapping (clip id -> onsets in seconds)")
    return {str(k): [float(t) for t in v] for k, v in data["onsets_s"].items()}


def loop_period_samples(video: str | Path, sr: int = SR) -> int | None:
    """Samples per repetition when the mel stage (chain=direct) loops this clip's audio to 10 s; None when the
    clip is long enough not to be looped."""

    wave = load_audio(video, sr=sr, mono=True, pcm16=True)
    if len(wave) >= LENGTH:
        return None
    return len(loop_period(wave, sr, source_rate(video)))


def clip_events(onsets_s: Sequence[float], period_samples: int | None, stored_frames: int = SPEC_LEN,
                window: int = CROP_LEN, sr: int = SR, hop: int = HOP) -> np.ndarray:
    """Event frames inside the centre-cropped `window` of a stored mel: the onsets repeated every loop period
    (None: not looped) up to the stored length, shifted by the crop offset; ascending floats."""

    starts = np.asarray(sorted(onsets_s), dtype=np.float64) * sr  # samples
    frames = []
    repeats = 1 if not period_samples else int(np.ceil(stored_frames * hop / period_samples)) + 1
    for r in range(repeats):
        shift = r * (period_samples or 0)
        frames.extend((starts + shift) / hop)
    frames = np.asarray(frames) - center_offset(stored_frames, window)
    return np.sort(frames[(frames >= 0) & (frames < window)])


def event_hits(events: np.ndarray, onsets: np.ndarray, tolerance: float = FRAMES_PER_COLUMN) -> np.ndarray:
    """(len(events),) bool: has each event an onset within `tolerance` frames?"""
    events, onsets = np.asarray(events, dtype=np.float64), np.asarray(onsets, dtype=np.float64)
    if onsets.size == 0 or events.size == 0:
        return np.zeros(events.shape, dtype=bool)
    return np.abs(events[:, None] - onsets[None, :]).min(axis=1) <= tolerance


def synchrony(pairs: Sequence[tuple[np.ndarray, np.ndarray]], tolerance: float = FRAMES_PER_COLUMN,
              window: int = CROP_LEN) -> dict[str, Any]:
    """Share of events with an onset within `tolerance`, over (events, mel) pairs; plus onsets per second.

    Returns {"rate", "events", "hits", "onsets_per_second"}; rate is None (with "reason") without events.
    """
    hits = total = onsets_total = 0
    for events, mel in pairs:
        onsets = onset_frames(mel)
        onsets_total += len(onsets)
        hit = event_hits(events, onsets, tolerance)
        hits, total = hits + int(hit.sum()), total + len(hit)
    seconds = len(pairs) * window * HOP / SR
    out: dict[str, Any] = {"rate": hits / total if total else None, "events": total, "hits": hits,
                           "onsets_per_second": onsets_total / seconds if seconds else None}
    if not total:
        out["reason"] = "no events inside the evaluated windows"
    return out
