"""The generated demo data set: VAS layout, decodable audio, determinism, sound events that show on screen."""
from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.data.layout import Labels
from pipeline.demo.make_demo_data import run
from pipeline.extract.clips import list_clips
from tests.helpers import compose, demo_spec

TINY = ["num_classes=2", "clips_per_class=2", "seconds=2", "size=64"]


def make(outputs: Path, *overrides: str):
    cfg = compose("make_demo_data", *TINY, f"paths.outputs={outputs}", *overrides)
    return cfg, run(cfg)


def decode(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(frames (T, H, W, 3) uint8, mono audio float32, stream facts) of an mp4."""
    with av.open(str(path)) as container:
        v, a = container.streams.video[0], container.streams.audio[0]
        info = {"vcodec": v.codec_context.name, "pix_fmt": v.codec_context.pix_fmt,
                "fps": float(v.average_rate),
                "acodec": a.codec_context.name, "rate": a.codec_context.sample_rate,
                "channels": a.codec_context.channels}
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with av.open(str(path)) as container:
        audio = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    return frames, audio.mean(axis=0), info


def onsets(active: np.ndarray) -> np.ndarray:
    """Indices where a boolean sequence turns on."""
    active = np.asarray(active, dtype=bool)
    return np.flatnonzero(active & ~np.concatenate([[False], active[:-1]]))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_outputs")
    cfg, result = make(out)
    return cfg, result, out


def test_vas_layout(demo):
    cfg, result, out = demo
    root = out / "demo_data"
    assert result["written"] == 4 and Path(cfg.dataset.root) == root
    train = (root / "demo_train.txt").read_text().split()
    valid = (root / "demo_valid.txt").read_text().split()
    classes = (root / "classes.txt").read_text().split()
    assert len(classes) == 2 and classes == sorted(classes)
    assert train == [f"{c}/video_00000" for c in classes] and valid == [f"{c}/video_00001" for c in classes]
    clips = list_clips(cfg.dataset.videos, "vas")  # what the extraction stages will see
    assert sorted(c.id for c in clips) == sorted(train + valid) and all(c.source.exists() for c in clips)
    assert Labels(cfg.dataset).classes == classes
    assert (root / "README.md").read_text().count("|") > 8
    assert not list(root.rglob("*.tmp"))


def test_audio_and_video_tracks_decode(demo):
    cfg, _, _ = demo
    frames, audio, info = decode(Path(cfg.dataset.videos) / "00_chirp_circle" / "video_00000.mp4")
    assert info == {"vcodec": "h264", "pix_fmt": "yuv420p", "fps": 25.0, "acodec": "aac", "rate": 22050,
                    "channels": 1}
    assert frames.shape == (50, 64, 64, 3)
    assert abs(audio.size - 2 * 22050) < 2048  # AAC pads to whole 1024-sample frames
    assert np.sqrt(np.mean(audio ** 2)) > 0.01 and np.abs(audio).max() <= 1.0


def test_events_coincide_in_sound_and_picture(demo):
    """Each sound starts on the sample events.json gives, on a code column of the models' window; the object is
    bright on exactly the frames whose middle lies inside a sound."""
    from pipeline.data.conditions import center_offset
    from pipeline.media.mel import FRAMES_PER_COLUMN, HOP

    cfg, _, out = demo
    events = json.loads((out / "demo_data" / "events.json").read_text())
    fps, sr, grid = 25, 22050, cfg.grid
    for clip_id, expected in events["onsets_s"].items():
        frames, audio, _ = decode(Path(cfg.dataset.videos) / f"{clip_id}.mp4")
        bright = frames.reshape(len(frames), -1).max(axis=1) > 170  # the object lights up only during events
        seen = onsets(bright) / fps
        loud = np.abs(audio) > 0.1  # background noise stays near 0.004
        # an audio event starts where the signal gets loud after >= 0.1 s of quiet
        quiet = np.convolve(loud, np.ones(int(0.1 * sr)), mode="full")[: loud.size]
        heard = np.flatnonzero(loud & (np.concatenate([[0], quiet[:-1]]) == 0)) / sr
        assert len(seen) == len(heard) == len(expected) >= 1, clip_id
        assert np.abs(seen - np.asarray(expected)).max() <= 0.5 / fps + 1e-9, (clip_id, seen, expected)
        # within two mel hops: the 10 ms attack, and a low band of noise takes a few ms more to reach 0.1
        assert np.abs(heard - np.asarray(expected)).max() < 0.02, (clip_id, heard, expected)
        frame = np.asarray(expected) * sr / HOP - center_offset(grid.spec_len, grid.crop_len) - 1
        np.testing.assert_allclose(frame, np.round(frame), atol=1e-6)
        assert np.all(np.round(frame).astype(int) % FRAMES_PER_COLUMN == 0), (clip_id, frame)  # a column start
        event_len = events["event_seconds"][clip_id.split("/")[0]]
        assert abs(bright.sum() - len(expected) * event_len * fps) <= len(expected), clip_id


def test_deterministic_and_skips_existing(demo, tmp_path):
    cfg, _, _out = demo
    cfg_b, result = make(tmp_path)
    assert result["written"] == 4
    a, b = Path(cfg.dataset.root), Path(cfg_b.dataset.root)
    for name in ("demo_train.txt", "demo_valid.txt", "classes.txt", "events.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for clip in (a / "demo_train.txt").read_text().split() + (a / "demo_valid.txt").read_text().split():
        fa, aa, _ = decode(a / "videos" / f"{clip}.mp4")
        fb, ab, _ = decode(b / "videos" / f"{clip}.mp4")
        assert np.array_equal(fa, fb) and np.array_equal(aa, ab), clip
    mtime = (b / "videos" / f"{clip}.mp4").stat().st_mtime_ns
    assert make(tmp_path)[1]["written"] == 0
    assert (b / "videos" / f"{clip}.mp4").stat().st_mtime_ns == mtime
    assert make(tmp_path, "overwrite=true")[1]["written"] == 4
    _, other = make(tmp_path / "seed", "seed=7")
    # the same clip names, other events
    assert Path(other["train"]).read_bytes() == (a / "demo_train.txt").read_bytes()
    assert (other["root"] / "events.json").read_bytes() != (a / "events.json").read_bytes()
    with pytest.raises(ValueError, match=r"seed: 7 there, 1337 now.*overwrite=true"):
        make(tmp_path / "seed")  # another seed's clips never join these
    assert make(tmp_path / "seed", "seed=7", "clips_per_class=3")[1]["written"] == 2  # more clips of the same seed


def test_refuses_a_real_dataset(tmp_path):
    with pytest.raises(ValueError, match="demo data set"):
        make(tmp_path, "dataset=vas")



def test_the_idle_object_is_silent_and_clips_have_their_events():
    """The hiss between events sits at the mel floor (no random texture for a codebook to copy), and a 10-s clip
    has events_per_clip events."""
    from pipeline.demo.make_demo_data import clip_audio, plan
    from pipeline.media.mel import mel_spectrogram

    spec = demo_spec(num_classes=4, clips_per_class=2)
    p = plan(spec)[0]
    quiet = clip_audio(p, spec)[: p.onsets[0]]  # before the first event (onsets are samples)
    assert mel_spectrogram(quiet).mean() < 0.01
    assert all(4 <= len(q.onsets) <= 6 for q in plan(spec))
    with pytest.raises(ValueError, match="events_per_clip"):
        demo_spec(events_per_clip=(3, 2))
