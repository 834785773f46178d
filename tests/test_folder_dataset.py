"""Any folder of videos as a data set (pipeline/data/folder.py): labels from class subfolders, clips and windows,
splits made once from path hashes, every unusable file skipped with its reason."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from pipeline.data.folder import assign_splits, index, window_starts, write_splits
from pipeline.data.layout import clip_source
from pipeline.extract.clips import dataset_clips
from pipeline.media.mel import LENGTH, extract_mel_and_audio
from pipeline.media.video import frame_times, sample_indices
from tests.helpers import SR, compose, video_folder, write_clip

CLIP_SECONDS = LENGTH / SR


def dataset_cfg(root: Path, *overrides: str) -> dict:
    cfg = compose("folder_dataset", f"dataset.root={root}", *overrides)
    return OmegaConf.to_container(cfg.dataset, resolve=True)


def quiet(*_args) -> None:
    pass


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    return video_folder(tmp_path_factory.mktemp("folder") / "my videos")


def test_class_subfolders_give_labels_and_every_unusable_file_is_skipped_with_its_reason(videos, outputs):
    dataset = dataset_cfg(videos)
    record = index(dataset, CLIP_SECONDS, log=quiet)
    assert record["classes"] == ["chirp circle", "noise square"]
    assert sorted(record["clips"]) == [f"{c}/clip {k}" for c in ("chirp circle", "noise square") for k in range(4)]
    skipped = {rel: e["skipped"] for rel, e in record["videos"].items() if e["skipped"]}
    assert sorted(skipped) == ["chirp circle/broken clip.mp4", "chirp circle/no sound.mp4"]
    assert skipped["chirp circle/broken clip.mp4"]["kind"] == "unreadable"
    assert "truncated or corrupt" in skipped["chirp circle/broken clip.mp4"]["reason"]
    assert skipped["chirp circle/no sound.mp4"]["reason"].startswith("no sound")
    # one valid clip per class of 4 (shares.valid 0.25), the rest train; the paths are the videos'
    for label in record["classes"]:
        splits = [c["split"] for c in record["clips"].values() if c["label"] == label]
        assert sorted(splits) == ["train", "train", "train", "valid"]
    path, start = clip_source(dataset, "chirp circle/clip 2")
    assert path == videos / "chirp circle" / "clip 2.mp4" and start == 0.0
    # a second index of the same folder elsewhere: the same splits (from the paths' hashes), nothing probed again
    other = dataset_cfg(videos, "paths.outputs=" + str(outputs / "elsewhere"))
    again = index(other, CLIP_SECONDS, log=quiet)
    assert {c: e["split"] for c, e in again["clips"].items()} == {c: e["split"] for c, e in record["clips"].items()}


def test_splits_are_made_once_and_later_videos_join_train(tmp_path, outputs):
    root = tmp_path / "videos"
    for k in range(4):
        write_clip(root / "dog" / f"{k}.mp4", 1.5)
    dataset = dataset_cfg(root)
    first = index(dataset, CLIP_SECONDS, log=quiet)
    splits = {c: e["split"] for c, e in first["clips"].items()}
    for k in range(4, 10):
        write_clip(root / "dog" / f"{k}.mp4", 1.5)
    write_clip(root / "cat" / "a.mp4", 1.5)  # a new class is split on its own
    write_clip(root / "cat" / "b.mp4", 1.5)
    second = index(dataset, CLIP_SECONDS, log=quiet)
    assert {c: second["clips"][c]["split"] for c in splits} == splits  # no clip moved
    assert all(second["clips"][f"dog/{k}"]["split"] == "train" for k in range(4, 10))
    assert sorted(second["clips"][f"cat/{n}"]["split"] for n in "ab") == ["train", "valid"]
    with pytest.raises(ValueError, match=r"dataset.shares: \{'valid': 0.25\} there, \{'valid': 0.5\} now"):
        index(dataset_cfg(root, "dataset.shares.valid=0.5"), CLIP_SECONDS, log=quiet)


def test_assign_splits_is_stratified_and_keeps_one_train_video():
    by_class = {"a": [f"a/{i}" for i in range(10)], "b": ["b/0", "b/1"], "c": ["c/0"]}
    splits = assign_splits(by_class, {"valid": 0.2, "test": 0.1}, {})
    count = {label: sorted(splits[v] for v in videos) for label, videos in by_class.items()}
    assert count["a"] == ["test"] + ["train"] * 7 + ["valid"] * 2
    assert count["b"] == ["train", "valid"] and count["c"] == ["train"]


def test_a_long_video_gives_its_windows_and_a_flat_folder_is_one_class(tmp_path, outputs):
    root = tmp_path / "holiday"
    long = write_clip(root / "long walk.mp4", 25.0, audio="chirp")
    write_clip(root / "short.mp4", 2.0)
    (root / "notes.txt").write_text("not a video")
    dataset = dataset_cfg(root)
    record = index(dataset, CLIP_SECONDS, log=quiet)
    assert record["classes"] == ["holiday"]
    assert sorted(record["clips"]) == ["holiday/long walk@0s", "holiday/long walk@10s", "holiday/short"]
    assert record["videos"]["short.mp4"]["note"].endswith("looped to 10 s, as the original loops short clips")
    assert record["videos"]["notes.txt"]["skipped"]["kind"] == "unreadable"
    assert window_starts(25.0, 10.0, None) == [0.0, 10.0] and window_starts(45.0, 10.0, 2) == [0.0, 30.0]
    # the window's sound is the full decode's, from 10 s on
    clips = {c.id: c for c in dataset_clips(dataset)}
    window = clips["holiday/long walk@10s"]
    assert window.source == long and window.start == 10.0
    _, wave, info = extract_mel_and_audio(long, start=10.0)
    _, whole, _ = extract_mel_and_audio(long, length=25 * SR)
    assert not info.looped and np.array_equal(wave, whole[10 * SR: 20 * SR])
    # its frames: those of the video's 10-20 s
    times = frame_times(long)
    idx = sample_indices(times, 21.5, start=10.0, span=10.0)
    assert len(idx) == 215 and 9.9 <= times[idx[0]] <= 10.05 and times[idx[-1]] < 20.0
    assert np.array_equal(sample_indices(times, 21.5, span=10.0), sample_indices(times, 21.5)[:215])


def test_split_files_list_the_clips_extraction_made_and_the_manifest_the_rest(tmp_path, outputs):
    root = tmp_path / "videos"
    for k in range(3):
        write_clip(root / "dog" / f"{k}.mp4", 1.5)
    write_clip(root / "dog" / "silent.mp4", 1.5, audio="silent")
    dataset = dataset_cfg(root)
    record = index(dataset, CLIP_SECONDS, log=quiet)
    made = {c for c in record["clips"] if c != "dog/silent"}
    failures = Path(dataset["runs"]) / "extract_mels" / "failures.jsonl"
    failures.parent.mkdir(parents=True)
    failures.write_text(json.dumps({"item": "dog/silent", "reason": "silent: peaks at 0", "kind": "unusable"}) + "\n")
    for clip in made:
        (tmp_path / "made" / clip).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "made" / clip).touch()
    rows = write_splits(dataset, lambda c: [tmp_path / "made" / c], [failures], log=quiet)
    assert sorted(rows["train"] + rows["valid"]) == sorted(made)
    assert Path(dataset["splits"]["train"]).read_text().splitlines() == sorted(rows["train"])
    skipped = json.loads(Path(dataset["skipped"]).read_text())["skipped"]
    assert skipped == [{"file": "dog/silent.mp4", "clip": "dog/silent", "kind": "unusable",
                        "reason": "silent: peaks at 0", "step": "extract_mels"}]
    shutil.rmtree(tmp_path / "made")
    with pytest.raises(RuntimeError, match="run the extraction stages first"):
        write_splits(dataset, lambda c: [tmp_path / "made" / c], [failures], log=quiet)


def test_a_window_deep_in_a_video_decodes_the_same_frames_after_a_seek(tmp_path):
    import av

    from pipeline.media.video import SEEK_AFTER, stream_frames

    video = write_clip(tmp_path / "long.mp4", 40.0, fps=10)  # 400 frames, a keyframe every 250 (x264's default)
    with av.open(str(video)) as container:
        every = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    wanted = sample_indices(frame_times(video), 21.5, start=30.0, span=10.0)
    assert wanted[0] > SEEK_AFTER
    got = list(stream_frames(video, wanted))
    assert len(got) == len(wanted) and all(np.array_equal(g, every[i]) for g, i in zip(got, wanted))


def _video(path: Path, codec: str, audio_codec: str, rate: int, seconds: float = 2.0, fps: int = 12) -> Path:
    """A small stereo video in any container PyAV writes (the suffix picks it)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        video = out.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = 48, 32, "yuv420p"
        sound = out.add_stream(audio_codec, rate=rate, layout="stereo")
        for i in range(round(seconds * fps)):
            out.mux(video.encode(av.VideoFrame.from_ndarray(np.full((32, 48, 3), 9 * i % 256, np.uint8), "rgb24")))
        out.mux(video.encode())
        t = np.arange(int(seconds * rate)) / rate
        wave = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 660 * t)]).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout="stereo")
        frame.sample_rate = rate
        out.mux(sound.encode(frame))
        out.mux(sound.encode(None))
    return path


def test_any_container_rate_and_channel_count_gives_clips(tmp_path, outputs):
    root = tmp_path / "mixed"
    made = [_video(root / "a" / "one.mkv", "libx264", "aac", 48000),
            _video(root / "a" / "two.avi", "mpeg4", "mp3", 44100),
            _video(root / "b" / "three.mov", "libx264", "aac", 32000)]
    dataset = dataset_cfg(root)
    record = index(dataset, CLIP_SECONDS, log=quiet)
    assert sorted(record["clips"]) == ["a/one", "a/two", "b/three"] and not any(e["skipped"] for e in
                                                                               record["videos"].values())
    for clip in dataset_clips(dataset):
        assert clip.source in made
        mel, wave, info = extract_mel_and_audio(clip.source)
        assert mel.shape == (80, 860) and wave.shape == (LENGTH,) and info.looped and 0.2 < info.peak < 0.6


def test_an_unlabelled_folder_has_no_class_targets():
    from pipeline.evaluate.model_checks import targets

    rows = targets({"chance": 1.0, "real_class_match_rate": 1.0, "class_match_rate": 1.0, "num_fakes": 40,
                    "shuffled_class_match_rate": 1.0})
    classes = [r for r in rows if "class" in r["measure"]]
    assert len(classes) == 3 and all(r["met"] is None and r["note"].startswith("one class") for r in classes)
