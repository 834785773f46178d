"""pipeline.media.video: frame times, 21.5 fps sampling by time, looping, geometry, writing and muxing mp4s."""
from __future__ import annotations

import av
import numpy as np
import pytest

from pipeline.media.source import ClipError
from pipeline.media.video import (
    FPS,
    center_crop,
    clip_duration,
    frame_times,
    mux_audio,
    read_clip_frames,
    read_frames,
    resize_short_side,
    sample_indices,
    write_video,
)


def _counting_video(path, n: int, fps: float, size=(48, 64)) -> None:
    """Frame i is uniformly grey at level 8 * (i % 32) (so its index can be read back after lossy coding)."""
    frames = np.stack([np.full((*size, 3), 8 * (i % 32), np.uint8) for i in range(n)])
    write_video(path, frames, fps)


def _index_of(frame: np.ndarray) -> int:
    return round(float(frame.mean()) / 8)


def test_frame_times_of_a_generated_clip(tmp_path):
    _counting_video(tmp_path / "c.mp4", 25, 25)
    times = frame_times(tmp_path / "c.mp4")
    np.testing.assert_allclose(times, np.arange(25) / 25, atol=1e-6)
    assert clip_duration(times) == pytest.approx(1.0)


def test_sampling_picks_the_frame_on_screen_at_each_output_time():
    times = np.arange(60) / 30.0  # 2 s at 30 fps
    idx = sample_indices(times, FPS)
    assert len(idx) == 43  # round(2 * 21.5)
    t = np.arange(43) / FPS
    np.testing.assert_array_equal(idx, np.floor(t * 30 + 1e-6).astype(int))  # nearest previous frame
    assert np.all(np.diff(idx) >= 1)  # 30 -> 21.5 fps drops frames, never repeats


def test_a_ten_second_clip_gives_215_frames_and_looping_wraps():
    assert len(sample_indices(np.arange(300) / 30.0)) == 215
    assert len(sample_indices(np.arange(251) / 25.0)) == 216  # 10.04 s
    times = np.arange(180) * 1001 / 30000  # the 6.006 s dog clip
    looped = sample_indices(times, FPS, loop_to=10.0)
    assert len(looped) == 215
    d = clip_duration(times)
    k = np.arange(215)
    np.testing.assert_array_equal(looped, np.searchsorted(times, (k / FPS) % d + 1e-6, side="right") - 1)
    assert looped[129] == 179 and looped[130] == 1  # t = 6.047 s wraps to 0.041 s
    extra = sample_indices(times, FPS, loop_to=10.0, extra=2)
    assert len(extra) == 217 and extra[-1] == extra[-2]  # past 10 s: the last frame stays
    np.testing.assert_array_equal(extra[:215], looped)


def test_a_long_clip_is_cut_when_looping():
    idx = sample_indices(np.arange(600) / 30.0, FPS, loop_to=10.0)
    assert len(idx) == 215 and idx[-1] == int(214 / FPS * 30)


def test_real_clip_frame_counts(vas_dir):
    """The original's ResNet50 period for dog/video_02677 (6.006 s) is 129 frames; gun/video_00819 is 8 s."""
    assert len(sample_indices(frame_times(vas_dir / "videos/dog/video_02677.mp4"))) == 129
    assert len(sample_indices(frame_times(vas_dir / "videos/gun/video_00819.mp4"))) == 172


def test_read_frames_returns_the_sampled_frames(tmp_path):
    path = tmp_path / "c.mp4"
    _counting_video(path, 30, 30)  # 1 s at 30 fps
    idx = sample_indices(frame_times(path), FPS, loop_to=2.0)
    frames = read_frames(path, idx)
    assert [_index_of(f) for f in frames] == idx.tolist()
    assert len(read_clip_frames(path, transform=lambda im: im[:8, :8])) == 22  # round(1 * 21.5)
    assert read_clip_frames(path, transform=lambda im: im[:8, :8])[0].shape == (8, 8, 3)


def test_geometry_short_side_and_centre_crop():
    image = np.zeros((224, 398, 3), np.uint8)
    assert resize_short_side(image, 256).shape == (256, 454, 3)  # int(256 * 398 / 224)
    assert resize_short_side(np.zeros((500, 300, 3), np.uint8), 256).shape == (426, 256, 3)
    ramp = np.tile(np.arange(300, dtype=np.uint8)[None, :, None], (256, 1, 3))
    crop = center_crop(ramp, 224)
    assert crop.shape == (224, 224, 3) and crop[0, 0, 0] == 38  # round((300 - 224) / 2)
    with pytest.raises(ValueError, match="cannot crop"):
        center_crop(np.zeros((100, 100, 3), np.uint8), 224)


def test_mux_audio_copies_video_and_adds_sound(tmp_path):
    path = tmp_path / "v.mp4"
    _counting_video(path, 43, FPS)
    sr = 22050
    wav = (0.3 * np.sin(2 * np.pi * 440 * np.arange(2 * sr) / sr)).astype(np.float32)
    out = mux_audio(path, wav, tmp_path / "out" / "with_sound.mp4", sr=sr)
    with av.open(str(out)) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
        assert c.streams.audio[0].rate == sr
        assert c.streams.video[0].codec_context.name == "h264"
    assert len(frame_times(out)) == 43
    assert sorted(p.name for p in out.parent.iterdir()) == ["with_sound.mp4"]  # no temporary left
    import soundfile as sf

    sf.write(tmp_path / "a.wav", wav, sr)
    mux_audio(path, tmp_path / "a.wav", tmp_path / "b.mp4")
    with pytest.raises(ValueError, match="sample rate"):
        mux_audio(path, wav, tmp_path / "c.mp4")


def test_corrupt_and_missing_videos_raise_clip_errors(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20)
    with pytest.raises(ClipError, match="bad.mp4"):
        frame_times(bad)
    with pytest.raises(ClipError, match="does not exist"):
        frame_times(tmp_path / "missing.mp4")
