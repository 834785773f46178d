"""The mel transform and both audio chains against the mels the original pipeline made of real VAS clips."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.media.audio import fit_to_length, load_audio, loop_to_length, save_wav
from pipeline.media.mel import (
    extract_mel,
    inverse_mel,
    mel_basis,
    mel_spectrogram,
    original_chain_audio,
)
from pipeline.media.source import ClipError

CLIPS = ["baby/video_01951", "cough/video_00331", "dog/video_02677", "dog/video_02754", "drum/video_02480",
         "drum/video_02542", "fireworks/video_02997", "fireworks/video_03051", "gun/video_00819",
         "hammer/video_00323"]
EXACT = {"dog/video_02677", "drum/video_02480"}  # the original's files come back to float32 rounding


def _paths(vas_dir: Path, clip: str) -> tuple[Path, np.ndarray]:
    label, name = clip.split("/")
    reference = np.load(vas_dir / "features" / label / "melspec_10s_22050hz" / f"{name}_mel.npy")
    return vas_dir / "videos" / label / f"{name}.mp4", reference


@pytest.mark.parametrize("clip", CLIPS)
def test_original_chain(vas_dir, clip):
    video, reference = _paths(vas_dir, clip)
    mel = extract_mel(video, chain="original")
    assert mel.shape == (80, 860) and mel.dtype == np.float32
    diff = np.abs(mel - reference)
    assert diff.mean() <= 0.011, f"{clip}: mean |diff| {diff.mean():.4f}"
    if clip in EXACT:
        assert diff.max() < 1e-5, f"{clip}: max |diff| {diff.max():.2e}"


@pytest.mark.parametrize("clip", CLIPS)
def test_direct_chain(vas_dir, clip):
    video, reference = _paths(vas_dir, clip)
    mel = extract_mel(video, chain="direct")
    assert mel.shape == (80, 860) and mel.dtype == np.float32
    assert np.abs(mel - reference).mean() <= 0.025


def test_small_video_reencode_keeps_the_audio(vas_dir):
    """The chain re-encodes 32-px video to save time; the audio must equal the full-size re-encode's."""
    video, _ = _paths(vas_dir, "drum/video_02542")
    small, seconds = original_chain_audio(video, small_video=True)
    full, _ = original_chain_audio(video, small_video=False)
    assert seconds == pytest.approx(10.03) and np.array_equal(small, full)


def test_mel_spectrogram_reflect_padding_and_range():
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(22050)).astype(np.float32)
    mel = mel_spectrogram(wave)
    assert mel.shape == (80, 1 + 22050 // 256) and mel.dtype == np.float32
    assert 0.0 <= mel.min() and mel.max() <= 1.0
    # reflect padding (librosa 0.8) vs librosa 0.10's zeros: the edge frames differ, the middle ones do not
    import librosa

    zero_pad = np.abs(librosa.stft(wave, n_fft=1024, hop_length=256, center=True, pad_mode="constant"))
    other = np.clip((20 * np.log10(np.maximum(mel_basis() @ zero_pad, 1e-5)) + 80) / 100, 0, 1)
    assert np.abs(other[:, 0] - mel[:, 0]).max() > 1e-3
    np.testing.assert_allclose(other[:, 5:-5], mel[:, 5:-5], atol=1e-5)
    assert mel_basis() is mel_basis()  # cached
    with pytest.raises(ValueError, match="mono"):
        mel_spectrogram(np.zeros((2, 100), np.float32))


def test_inverse_mel_roundtrip(vas_dir):
    _, reference = _paths(vas_dir, "drum/video_02480")
    wave = inverse_mel(reference[:, :200], n_iter=16)
    assert wave.dtype == np.float32 and wave.shape == (199 * 256,)
    again = mel_spectrogram(wave)
    assert np.abs(again[:, 4:-4] - reference[:, 4:196]).mean() < 0.06


def test_load_audio_errors_and_formats(tmp_path, vas_dir):
    with pytest.raises(ClipError, match="missing file.*nope.wav"):
        load_audio(tmp_path / "nope.wav")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(ClipError, match="corrupt file.*bad.mp4"):
        load_audio(bad)
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 16000)).astype(np.float32)
    for suffix in (".wav", ".flac"):
        path = tmp_path / f"tone{suffix}"
        save_wav(path, np.stack([tone, tone]), 16000)
        assert not list(tmp_path.glob(".*.tmp"))  # atomic: no temporary left behind
        stereo = load_audio(path, sr=16000, mono=False)
        assert stereo.shape == (2, 8000) and np.abs(stereo[0] - tone).max() < 1e-3
        resampled = load_audio(path, sr=22050)
        assert resampled.ndim == 1 and abs(len(resampled) - 11025) <= 64


def test_loop_and_fit():
    wave = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(loop_to_length(wave, 12), [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1])
    np.testing.assert_array_equal(fit_to_length(wave, 7), [0, 1, 2, 3, 4, 0, 0])
    np.testing.assert_array_equal(fit_to_length(wave, 3), [0, 1, 2])
    assert loop_to_length(np.ones((2, 3), np.float32), 7).shape == (2, 7)
    with pytest.raises(ValueError):
        loop_to_length(np.zeros(0, np.float32), 4)
