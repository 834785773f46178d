"""Audio I/O: decode any file PyAV reads, loop short clips, write wavs atomically, find the pinned ffmpeg.

Decoding goes through PyAV (libavformat + libswresample), so no system ffmpeg is needed. The faithful
reproduction of the original's data (`pipeline.media.mel`, chain "original") needs the old ffmpeg 4.2.2 binary that
the `imageio-ffmpeg==0.4.3` wheel ships; `ffmpeg_binary()` finds it.
"""
from __future__ import annotations

import glob
import importlib.util
import os
from pathlib import Path

import numpy as np

from pipeline.files.writes import atomic_write
from pipeline.media.source import ClipError

SR = 22050  # the rate of every waveform in the pipeline (the original's): mels, vocoders, samples, the codec


def load_audio(path: str | os.PathLike, sr: int = SR, mono: bool = True,
               pcm16: bool = False, start: float = 0.0, duration: float | None = None) -> np.ndarray:
    """Decode the first audio stream of `path` (wav, flac, mp3, mp4...) and resample it with libswresample.

    Returns float32, shape (samples,) when `mono`, else (channels, samples). `pcm16` mimics the original's
    `ffmpeg -f wav` demux: samples are first stored as 16-bit at the source rate and layout (clipping
    overshoots at +-1, which AAC decoders produce), then down-mixed and resampled to 16-bit, and read
    back as int / 32768 like librosa does. `start` / `duration` (s) cut a window out of the decoded sound (decoding
    stops past its end). Raises `ClipError` naming the file when it is missing, has no audio stream, or cannot be
    decoded.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise ClipError(f"missing file: {path} does not exist (check the data set paths)")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as error:
        raise ClipError(f"corrupt file: {path} cannot be opened ({error}); re-download or re-encode it"
                        ) from None
    with container:
        if not container.streams.audio:
            raise ClipError(f"no audio stream: {path} has no audio track (a silent video); "
                            "drop it from the split")
        stream = container.streams.audio[0]
        fmt = "s16" if pcm16 else "flt"
        # pcm16: the wav demux step (16-bit at the source rate and layout), then mono / sr as `-ac 1 -ar sr`
        stages = [av.AudioResampler(format="s16")] if pcm16 else []
        stages.append(av.AudioResampler(format=fmt, layout="mono" if mono else None, rate=sr))
        chunks: list[np.ndarray] = []

        def push(frames: list, i: int) -> None:
            if i == len(stages):
                chunks.extend(f.to_ndarray() for f in frames if f is not None)
                return
            for frame in frames:
                push(stages[i].resample(frame), i + 1)

        try:
            for frame in container.decode(stream):
                push([frame], 0)
                if duration is not None and frame.time is not None and frame.time > start + duration + 1.0:
                    break  # past the window (1 s of margin for the resamplers' delay)
            for i in range(len(stages)):  # flush each resampler's delay line in order
                push(stages[i].resample(None), i + 1)
        except (av.error.FFmpegError, OSError, ValueError) as error:
            raise ClipError(f"corrupt file: decoding the audio of {path} failed ({error})") from None
    if not chunks:
        raise ClipError(f"corrupt file: {path} has an audio stream but no decodable samples")
    # packed "flt" frames are (1, samples * channels), interleaved
    channels = 1 if mono else stream.codec_context.channels
    wave = np.concatenate([c.reshape(-1) for c in chunks])
    wave = wave.astype(np.float32) / 32768.0 if pcm16 else wave.astype(np.float32, copy=False)
    wave = wave if mono else wave.reshape(-1, channels).T.copy()  # (channels, samples)
    if start or duration is not None:
        first = round(start * sr)
        wave = wave[..., first:None if duration is None else first + round(duration * sr)]
    return wave


def source_rate(path: str | os.PathLike) -> int:
    """The sample rate of the first audio stream of `path` (header only, nothing decoded)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise ClipError(f"no audio stream: {path} has no audio track")
            return int(container.streams.audio[0].sample_rate)
    except (av.error.FFmpegError, OSError, ValueError) as error:
        raise ClipError(f"corrupt file: {path} cannot be opened ({error})") from None


def loop_to_length(wave: np.ndarray, n: int) -> np.ndarray:
    """Cycle `wave` (last axis = time) until it has `n` samples, then cut: a 2 s clip becomes 0-2-4-... s."""
    length = wave.shape[-1]
    if length == 0:
        raise ValueError("cannot loop an empty waveform")
    reps = -(-n // length)  # ceil
    tiled = np.tile(wave, (1,) * (wave.ndim - 1) + (reps,))
    return tiled[..., :n]


def fit_to_length(wave: np.ndarray, n: int) -> np.ndarray:
    """Zero-pad at the end or truncate to `n` samples (the original's `get_spectrogram` copy into zeros)."""
    out = np.zeros(wave.shape[:-1] + (n,), dtype=np.float32)
    m = min(n, wave.shape[-1])
    out[..., :m] = wave[..., :m]
    return out


def save_wav(path: str | os.PathLike, wave: np.ndarray, sr: int, subtype: str | None = None) -> None:
    """Write `wave` (samples,) or (channels, samples) atomically; the suffix picks the format (wav, flac)."""
    import soundfile

    path = Path(path)
    fmt = path.suffix.lstrip(".").upper() or "WAV"
    data = np.asarray(wave)
    if data.ndim == 2:
        data = data.T  # soundfile wants (samples, channels)
    with atomic_write(path) as f:
        soundfile.write(f, data, sr, format=fmt, subtype=subtype)


def ffmpeg_binary() -> str:
    """Path of the ffmpeg 4.2.2 static binary shipped by the `imageio-ffmpeg==0.4.3` wheel.

    The package is not imported (it needs `pkg_resources`); its folder is located and searched instead.
    """
    spec = importlib.util.find_spec("imageio_ffmpeg")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("imageio-ffmpeg is not installed: `pip install imageio-ffmpeg==0.4.3` "
                                "(its ffmpeg 4.2.2 binary is needed for chain=original)")
    for folder in spec.submodule_search_locations:
        found = sorted(glob.glob(os.path.join(folder, "binaries", "ffmpeg-*4.2.2*")))
        found = [p for p in found if os.access(p, os.X_OK) or p.endswith(".exe")]
        if found:
            return found[0]
    raise FileNotFoundError(
        f"no ffmpeg 4.2.2 binary under {list(spec.submodule_search_locations)}/binaries: install exactly "
        "imageio-ffmpeg==0.4.3 (other versions ship another ffmpeg and change the AAC numbers), "
        "or use chain=direct")
