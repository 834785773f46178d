"""The original's mel spectrogram (spec section 1.2), its Griffin-Lim inverse, and the two audio chains.

`mel_spectrogram` is the transform of `feature_extraction/extract_mel_spectrogram.py` with librosa 0.8's
defaults restored (reflect padding); `MelTransform` is the same chain in torch, for batches on a device (the
vocoder's training). `extract_mel` turns a video (or any audio file) into the (80, 860) mel
the original stored, through one of two chains:

- "original": the original's ffmpeg pipeline (spec section 1.1: demux, align, loop, cut to 10 s with two AAC
  re-encodes, mono 22050 Hz), run with the ffmpeg 4.2.2 binary that reproduces its files to ~1e-6;
- "direct": PyAV decode + libswresample to mono 22050 Hz + cycling short clips to 10 s (fast, no
  subprocess; mean |diff| about 0.01 against the original's files because the AAC re-encodes are skipped).
"""
from __future__ import annotations

import functools
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.media.audio import (
    SR,
    ffmpeg_binary,
    fit_to_length,
    load_audio,
    loop_to_length,
    source_rate,
)
from pipeline.media.source import ClipError

N_FFT = 1024        # STFT size = window length
HOP = 256           # STFT hop (the vocoder's upsampling factor)
N_MELS = 80         # mel bins
FMIN, FMAX = 125, 7600
LENGTH = 220500     # 10 s at 22050 Hz
SPEC_LEN = 860      # stored frames (862 are computed, the last 2 dropped); conf/base.yaml clip.spec_len
CROP_LEN = 848      # frames the models see: the centre crop, 53 code columns of 16; conf/base.yaml clip.crop_len
MEL_FPS = SR / HOP  # 86.13 mel frames per second
FRAMES_PER_COLUMN = 16  # mel frames per code column (the codebook's 16x time downsampling)
CHAINS = ("original", "direct")


def unit_mel(spec):
    """The models' [-1, 1] spectrogram as the [0, 1] mel that files, vocoders and classifiers take: (x + 1) / 2, not
    clamped (spec §5.5; numpy arrays and tensors alike)."""
    return (spec + 1) / 2


@functools.lru_cache(maxsize=8)
def mel_basis(sr: int = SR, n_fft: int = N_FFT, n_mels: int = N_MELS, fmin: float = FMIN,
              fmax: float = FMAX) -> np.ndarray:
    """Slaney-scale, Slaney-normalised mel filterbank (n_mels, 1 + n_fft // 2), float32; cached, read-only."""
    import librosa

    basis = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=False,
                                norm="slaney").astype(np.float32)
    basis.setflags(write=False)
    return basis


@functools.lru_cache(maxsize=8)
def _mel_pinv(sr: int, n_fft: int) -> np.ndarray:
    return np.linalg.pinv(mel_basis(sr, n_fft)).astype(np.float32)  # (1 + n_fft // 2, n_mels)


def mel_spectrogram(wave: np.ndarray, sr: int = SR) -> np.ndarray:
    """The original's mel of a mono waveform: float32 (80, 1 + len // 256) in [0, 1].

    |STFT| (n_fft 1024, hop 256, Hann, centred with reflect padding) -> slaney mel (80 bins, 125-7600 Hz)
    -> clip((20 log10(max(m, 1e-5)) - 20 + 100) / 100, 0, 1).
    """
    import librosa

    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"mel_spectrogram wants a mono waveform (samples,), got shape {wave.shape}")
    # librosa >= 0.10 pads with zeros by default; the original (librosa 0.8) reflected
    stft = librosa.stft(wave, n_fft=N_FFT, hop_length=HOP, win_length=N_FFT, window="hann", center=True,
                        pad_mode="reflect")                      # (513, frames) complex64
    mel = mel_basis(sr) @ np.abs(stft)                          # (80, frames) float32
    mel = 20.0 * np.log10(np.maximum(mel, 1e-5, dtype=np.float32)) - 20.0
    return np.clip((mel + 100.0) / 100.0, 0.0, 1.0).astype(np.float32, copy=False)


class MelTransform(nn.Module):
    """The original's mel chain in torch (spec §1.2): waveform (B, N) or (B, 1, N) -> (B, 80, 1 + N // 256).

    |STFT| (n_fft 1024, hop 256, periodic Hann, centred, reflect padding) -> librosa's Slaney mel basis (a buffer)
    -> clip((20 log10(max(m, 1e-5)) - 20 + 100) / 100, 0, 1). Computed in float64 (a float32 torch STFT differs
    from librosa's by up to 2e-5 after the log; float64 agrees to ~1e-7) and returned as float32; the cost is
    negligible next to the discriminator.
    """

    def __init__(self, sr: int = SR, n_fft: int = N_FFT, hop: int = HOP):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        basis = torch.from_numpy(np.array(mel_basis(sr, n_fft), dtype=np.float64))  # (80, 1 + n_fft // 2)
        self.register_buffer("basis", basis, persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True, dtype=torch.float64),
                             persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() == 3:
            wave = wave.squeeze(1)  # (B, N)
        stft = torch.stft(wave.double(), self.n_fft, hop_length=self.hop, win_length=self.n_fft,
                          window=self.window, center=True, pad_mode="reflect", return_complex=True)
        mel = torch.matmul(self.basis, stft.abs())  # (B, 80, frames)
        mel = 20.0 * torch.log10(mel.clamp_min(1e-5)) - 20.0
        return ((mel + 100.0) / 100.0).clamp(0.0, 1.0).float()


def inverse_mel(mel01: np.ndarray, sr: int = SR, n_iter: int = 32) -> np.ndarray:
    """Griffin-Lim audio from a [0, 1] mel (80, T): the original's `inv_transforms`, for logging only.

    The magnitude is recovered with the mel basis' pseudo-inverse (clamped at 0) instead of librosa's NNLS
    `mel_to_stft`: 10-50x faster and audibly the same for a preview. Returns float32 (T - 1) * 256 samples.
    """
    import librosa

    mel01 = np.asarray(mel01, dtype=np.float32)
    if mel01.ndim != 2 or mel01.shape[0] != N_MELS:
        raise ValueError(f"inverse_mel wants a mel of shape (80, T), got {mel01.shape}")
    mel = np.power(10.0, (mel01 * 100.0 - 100.0 + 20.0) / 20.0, dtype=np.float32)  # undo the dB mapping
    magnitude = np.maximum(_mel_pinv(sr, N_FFT) @ mel, 0.0)    # (513, T)
    wave = librosa.griffinlim(magnitude, n_iter=n_iter, hop_length=HOP, win_length=N_FFT, n_fft=N_FFT,
                              window="hann", center=True, random_state=0)
    return wave.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------------------------
# the original's ffmpeg chain


def _ffmpeg(args: list[str], what: str, source: Path) -> str:
    cmd = [ffmpeg_binary(), "-nostdin", "-hide_banner", *args]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        stderr = result.stderr.strip()[-2000:]
        no_audio = "does not contain any stream" in stderr or "matches no streams" in stderr
        reason = "no audio stream" if no_audio else "corrupt file"
        raise ClipError(f"{reason}: ffmpeg failed to {what} for {source} (exit {result.returncode}): "
                        f"{stderr}")
    return result.stderr


def _probe_duration(path: Path, source: Path) -> str:
    """The 'Duration: hh:mm:ss.xx' string ffmpeg prints (the original parsed exactly this, 2 decimals)."""
    cmd = [ffmpeg_binary(), "-nostdin", "-hide_banner", "-i", str(path)]
    # exits 1 (no output file given) after printing the header we want
    text = subprocess.run(cmd, check=False, capture_output=True, text=True).stderr
    match = re.search(r"Duration: (\d+:\d+:\d+(?:\.\d+)?)", text)
    if not match:
        raise ClipError(f"corrupt file: ffmpeg reports no duration for the audio of {source}: {text[-500:]}")
    return match.group(1)


def original_chain_audio(path: str | os.PathLike, duration: int = 10, sr: int = SR,
                         workdir: str | os.PathLike | None = None, small_video: bool = True
                         ) -> tuple[np.ndarray, float]:
    """The original's `extract_audio_and_video.py` steps 1-7 with ffmpeg 4.2.2; returns (wave, seconds).

    `wave` is the mono `sr` Hz float32 waveform of the 10-s cut (samples / 32768, as librosa reads it);
    `seconds` is the source audio's duration as ffmpeg reported it (short clips were looped).
    """
    import soundfile

    source = Path(path)
    if not source.is_file():
        raise ClipError(f"missing file: {source} does not exist (check the data set paths)")
    with tempfile.TemporaryDirectory(prefix="specvqgan_ffmpeg_", dir=workdir) as tmp:
        tmp = Path(tmp)
        quiet = ["-loglevel", "error", "-y"]
        audio_ori, aligned = tmp / "audio_ori.wav", tmp / "aligned.mp4"
        repeat, cut = tmp / "repeat.mp4", tmp / "cut.mp4"
        audio_cut, audio_sr = tmp / "audio_10s.wav", tmp / "audio_sr.wav"
        # 1. demux the original audio
        _ffmpeg(["-i", str(source), *quiet, "-f", "wav", "-vn", str(audio_ori)], "demux the audio", source)
        # 2. its duration, as the original parsed it
        stamp = _probe_duration(audio_ori, source)
        hours, minutes, seconds = (float(x) for x in stamp.split(":"))
        seconds = 3600 * hours + 60 * minutes + seconds
        if seconds <= 0:
            raise ClipError(f"corrupt file: the audio of {source} lasts {stamp}")
        # the audio never depends on the picture, only on the video stream's timestamps, which a smaller
        # picture keeps; `small_video` re-encodes 32-px-high frames instead of full size (5-10x faster)
        small = ["-vf", "scale=-2:32"] if small_video else []
        encode = [*small, "-c:v", "libx264", "-c:a", "aac", "-strict", "experimental", "-b:a", "98k"]
        # 3. align the video to the audio's duration (first AAC re-encode)
        _ffmpeg(["-ss", "0", "-t", stamp, "-i", str(source), *quiet, *encode, str(aligned)],
                "align the video to the audio", source)
        # 4. loop floor(10 / dur) + 1 extra times, stream copy
        n_repeat = int(duration // seconds + 1)
        _ffmpeg(["-stream_loop", str(n_repeat), "-i", str(aligned), *quiet, "-c", "copy",
                 "-fflags", "+genpts", str(repeat)], "loop the clip", source)
        # 5. cut to 10 s (second AAC re-encode)
        _ffmpeg(["-ss", "0", "-t", str(duration), "-i", str(repeat), *quiet, *encode, str(cut)],
                "cut the clip to 10 s", source)
        # 6-7. demux, then mono at `sr` Hz
        _ffmpeg(["-i", str(cut), *quiet, "-f", "wav", "-vn", str(audio_cut)], "demux the 10-s audio", source)
        _ffmpeg(["-i", str(audio_cut), *quiet, "-ac", "1", "-ab", "16k", "-ar", str(sr), str(audio_sr)],
                "resample the audio", source)
        wave, file_sr = soundfile.read(str(audio_sr), dtype="float32", always_2d=False)
    if file_sr != sr:
        raise ClipError(f"ffmpeg wrote {file_sr} Hz instead of {sr} Hz for {source}")
    return wave, seconds


# ----------------------------------------------------------------------------------------------------------
# one clip


def loop_period(wave: np.ndarray, sr: int, src_rate: int, aac_frame: int = 1024) -> np.ndarray:
    """One period of the original's video-level loop, modelled on the decoded audio.

    The original cut the clip to its duration printed with 2 decimals and re-encoded it to AAC; the stream
    copy loop then repeats every AAC packet including the encoder's 1024-sample priming, so each period is
    the cut audio followed by silence up to ceil((1024 + samples) / 1024) frames at the source rate. This
    halves the direct chain's error on looped clips (dog/video_02677: mean |diff| 0.022 -> 0.009).
    """
    seconds = np.floor(len(wave) / sr * 100 + 1e-6) / 100         # ffmpeg's "Duration: ...ss.xx"
    n_src = round(seconds * src_rate)
    period_src = -(-(aac_frame + n_src) // aac_frame) * aac_frame   # ceil to whole AAC frames
    period = round(period_src * sr / src_rate)
    content = wave[: min(len(wave), round(seconds * sr), period)]
    return np.concatenate([content, np.zeros(period - len(content), dtype=np.float32)])


@dataclass(frozen=True)
class MelInfo:
    """What happened to one clip: its source duration (s), whether it was looped, its peak amplitude."""

    chain: str
    duration: float
    looped: bool
    peak: float


def extract_mel_and_audio(path: str | os.PathLike, chain: str = "direct", length: int = LENGTH,
                          spec_len: int = SPEC_LEN, sr: int = SR, start: float = 0.0
                          ) -> tuple[np.ndarray, np.ndarray, MelInfo]:
    """(mel (80, spec_len) float32, the `length`-sample float32 waveform it came from, MelInfo) of the clip that
    starts `start` s into the file (a window of a longer video: chain=direct)."""
    if start and chain != "direct":
        raise ValueError(f"{path}: a clip starting at {start:g} s (a window of a longer video) needs chain=direct; "
                         f"the original's chain always starts at 0")
    if chain == "original":
        source_rate(path)  # a clear ClipError for a missing, corrupt or silent-video file before ffmpeg runs
        wave, duration = original_chain_audio(path, duration=round(length / sr), sr=sr)
        looped = duration < length / sr
    elif chain == "direct":
        wave = load_audio(path, sr=sr, mono=True, pcm16=True, start=start, duration=length / sr if start else None)
        duration = len(wave) / sr
        looped = len(wave) < length
        if looped and len(wave):
            wave = loop_to_length(loop_period(wave, sr, source_rate(path)), length)
    else:
        raise ValueError(f"unknown chain {chain!r}: use one of {CHAINS}")
    wave = fit_to_length(wave, length)  # zero-pad / trim, as the original's get_spectrogram
    mel = mel_spectrogram(wave, sr=sr)[:, :spec_len]
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    return mel, wave, MelInfo(chain=chain, duration=float(duration), looped=bool(looped), peak=peak)


def extract_mel(path: str | os.PathLike, chain: str = "direct", length: int = LENGTH,
                spec_len: int = SPEC_LEN) -> np.ndarray:
    """The (80, spec_len) float32 mel of one video or audio file, as the original stored it.

    chain="original" reproduces the original's files (needs ffmpeg 4.2.2, ~1-2 s per clip);
    chain="direct" decodes with PyAV only (fast, mean |diff| ~0.01).
    """
    return extract_mel_and_audio(path, chain=chain, length=length, spec_len=spec_len)[0]
